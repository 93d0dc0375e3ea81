"""The numerical core the cost models and their calibration share: least squares on relative error, and
prediction intervals from held-out residuals. Below both, so neither imports the other to use it."""
