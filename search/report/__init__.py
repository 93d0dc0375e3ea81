"""search.report."""
