"""search.bundle.writer."""
