"""Measurement tables and honest scores on them: the CSV reader, architecture families, held-out folds.

Below the estimators and the calibration, which both read tables; it imports neither."""
