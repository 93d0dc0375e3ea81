"""search.analysis."""
