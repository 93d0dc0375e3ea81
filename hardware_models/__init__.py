"""Hardware latency and energy models: what a torch network costs on the ZCU104 DPU, the Raspberry Pi,
or (measured) this machine.

    from hardware_models import estimate
    estimate(model, (3, 224, 224), "zcu104")          # -> {"latency_ms": ..., "energy_mj": ..., ...}

Targets: `list_targets()` (zcu104, zcu102, kv260, rpi4, rpi5, host) or the path of a calibrated profile JSON
(`python -m hardware_models.calibrate`). Networks from spec strings: `build_network("torchvision:resnet18")`.
"""

from __future__ import annotations

from hardware_models.api import estimate
from hardware_models.api import resolve_profile
from hardware_models.graph.executed import Network
from hardware_models.graph.executed import extract
from hardware_models.graph.specs import build_network
from hardware_models.graph.specs import list_schemes
from hardware_models.graph.specs import register_scheme
from hardware_models.graph.trace import UnsupportedLayerError
from hardware_models.targets import get_target
from hardware_models.targets import list_targets

__all__ = [
    "Network",
    "UnsupportedLayerError",
    "build_network",
    "estimate",
    "extract",
    "get_target",
    "list_schemes",
    "list_targets",
    "register_scheme",
    "resolve_profile",
]
