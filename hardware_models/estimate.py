"""`python -m hardware_models.estimate ...`: see hardware_models/cli.py.

`hardware_models.estimate` is also the API function. Importing this submodule would rebind the package
attribute to the module, so the module is made callable: `hardware_models.estimate(model, ...)` keeps
working either way.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from hardware_models.api import estimate as _estimate
from hardware_models.cli import estimate_main
from spaces.models import architectures  # noqa: F401  (registers the arch: spec scheme)


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _estimate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(estimate_main())
