"""search.sizing.plan."""
