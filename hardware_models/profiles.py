"""Calibrated profiles: the fitted parameters of one target, with where they came from.

A profile is plain JSON (hardware_models/profiles/*.json for the built-in targets, or any path a user
calibrated), so a result can always be traced to the measurement file (by SHA-256) and the fit errors
that back it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from importlib import resources
from pathlib import Path
from typing import Any

from hardware_models.power import PowerModel

PROFILE_DIR = "profiles"


@dataclass(frozen=True, kw_only=True)
class Profile:
    """Everything needed to predict on one target."""

    target: str                          # name of the target this profile describes
    family: str                          # cost model family: "dpu" or "arm"
    board: str                           # board key in that family's registry
    params: Mapping[str, float]
    power: PowerModel
    default_runtime: str = ""
    default_threads: int = 1
    default_precision: str = "int8"
    runtimes: tuple[str, ...] = ()
    graph_policy: str = "optimised"
    assumptions: tuple[str, ...] = ()
    calibration: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)   # DPU: {"name", "arch", "cores", "clock_mhz"}

    def to_json(self) -> dict[str, Any]:
        config = {"config": dict(self.config)} if self.config else {}
        return {
            "target": self.target, "family": self.family, "board": self.board, **config,
            "default_runtime": self.default_runtime, "default_threads": self.default_threads,
            "default_precision": self.default_precision, "runtimes": list(self.runtimes),
            "graph_policy": self.graph_policy,
            "params": {k: _round(v) for k, v in sorted(self.params.items())},
            "power": _rounded(self.power.to_json()), "assumptions": list(self.assumptions),
            "calibration": _rounded(dict(self.calibration)),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Profile:
        missing = {"target", "family", "board", "params", "power"} - set(data)
        if missing:
            raise ValueError(f"profile is missing {sorted(missing)}; regenerate it with "
                             "python -m hardware_models.calibrate")
        return cls(
            target=str(data["target"]), family=str(data["family"]), board=str(data["board"]),
            params={k: float(v) for k, v in data["params"].items()},
            power=PowerModel.from_json(data["power"]),
            default_runtime=str(data.get("default_runtime", "")),
            default_threads=int(data.get("default_threads", 1)),
            default_precision=str(data.get("default_precision", "int8")),
            runtimes=tuple(data.get("runtimes", ())), graph_policy=str(data.get("graph_policy", "optimised")),
            assumptions=tuple(data.get("assumptions", ())),
            calibration=dict(data.get("calibration", {})), config=dict(data.get("config", {})))


def _round(value: float) -> float:
    """Six significant digits: stable across platforms, far below the models' error."""
    return float(f"{value:.6g}")


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return _round(value)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def dumps(profile: Profile) -> str:
    return json.dumps(profile.to_json(), indent=1, sort_keys=False) + "\n"


def save_profile(profile: Profile, path: str | Path) -> None:
    Path(path).write_text(dumps(profile))


def load_profile(path: str | Path) -> Profile:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"profile {path} does not exist; create it with "
                                "python -m hardware_models.calibrate --out PATH") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"profile {path} is not valid JSON ({error})") from None
    return Profile.from_json(data)


def builtin_profile_path(target: str) -> Path:
    return Path(str(resources.files("hardware_models").joinpath(f"{PROFILE_DIR}/{target}.json")))


def load_builtin(target: str) -> Profile:
    return load_profile(builtin_profile_path(target))
