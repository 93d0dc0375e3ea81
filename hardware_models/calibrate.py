"""`python -m hardware_models.calibrate`: the calibration command (see `hardware_models.calibration.fit`)."""

from __future__ import annotations

from hardware_models.calibration.fit import main

if __name__ == "__main__":
    main()
