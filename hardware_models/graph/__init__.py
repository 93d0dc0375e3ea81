"""hardware_models.graph.executed."""
