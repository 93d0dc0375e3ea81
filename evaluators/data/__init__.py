"""evaluators.data.config."""
