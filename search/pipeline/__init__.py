"""search.pipeline."""
