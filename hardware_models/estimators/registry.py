"""The registry of estimator families (dpu, arm, host) and the options every one of them takes.

Families register by decorating their function (`hardware_models.estimators.families`); `estimate()` looks them
up by the profile's `family`. The registry sits below both, so neither imports the other to find it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from hardware_models.graph.executed import Network
from hardware_models.graph.precision import PrecisionSpec
from hardware_models.profiles import Profile


@dataclass(frozen=True, kw_only=True)
class Options:
    """Keyword options of `estimate`, validated once."""

    precision: PrecisionSpec = None
    per_layer: bool = False
    threads: int | None = None
    runtime: str | None = None
    as_int8: bool = False
    clock_ghz: float | None = None
    use_cache: bool = True


Estimator = Callable[[nn.Module, Network, Profile, Options], dict[str, Any]]
ESTIMATORS: dict[str, Estimator] = {}


def register_estimator(family: str) -> Callable[[Estimator], Estimator]:
    def decorate(fn: Estimator) -> Estimator:
        ESTIMATORS[family] = fn
        return fn

    return decorate


def get_estimator(profile: Profile) -> Estimator:
    """The family's estimator; a KeyError-like ValueError that lists the known families."""
    if profile.family not in ESTIMATORS:
        raise ValueError(f"profile for {profile.target!r} has unknown family {profile.family!r}; "
                         f"known: {', '.join(sorted(ESTIMATORS))}")
    return ESTIMATORS[profile.family]
