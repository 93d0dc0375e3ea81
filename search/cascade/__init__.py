"""search.cascade.model."""
