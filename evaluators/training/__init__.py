"""evaluators.training.loop."""
