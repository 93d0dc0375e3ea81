"""hardware_models.estimators.families."""
