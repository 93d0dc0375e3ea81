"""`python -m hardware_models.calibrate`: the calibration command (see `hardware_models.calibration.fit`).

A command line is where the project's own networks join the hardware models: importing
`spaces.models.architectures` registers the `arch:NAME` spec scheme that a table's rows may use (registry names
only). The library below never imports the tool above it (import-linter contract `hardware`)."""

from __future__ import annotations

from hardware_models.calibration.fit import main
from spaces.models import architectures  # noqa: F401  (registers the arch: spec scheme)

if __name__ == "__main__":
    main()
