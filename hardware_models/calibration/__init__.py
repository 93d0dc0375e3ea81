"""hardware_models.calibration."""
