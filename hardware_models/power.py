"""Board power, from the published measurements in data/board_power.csv: energy = power x time.

Power is modelled as idle board power plus a per-busy-unit increment (a DPU core, a CPU core). Every
number says where it came from; where no measurement exists the assumption is stated and the result is
marked `energy_source: assumed`. In particular no measurement of the ZCU104 during DPU inference was
found: its figures are the ZCU102 reference design's.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from dataclasses import field
from importlib import resources
from typing import Any


@dataclass(frozen=True, kw_only=True)
class PowerModel:
    idle_w: float
    per_unit_w: float
    units: int
    unit: str                                   # "DPU core" / "CPU core"
    source: str                                 # "measured" | "derived" | "assumed"
    notes: tuple[str, ...] = field(default=())

    def watts(self, busy_units: float) -> float:
        return self.idle_w + self.per_unit_w * min(max(busy_units, 0.0), self.units)

    def to_json(self) -> dict[str, Any]:
        return {"idle_w": self.idle_w, "per_unit_w": self.per_unit_w, "units": self.units, "unit": self.unit,
                "source": self.source, "notes": list(self.notes)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PowerModel:
        return cls(idle_w=float(data["idle_w"]), per_unit_w=float(data["per_unit_w"]), units=int(data["units"]),
                   unit=str(data["unit"]), source=str(data["source"]), notes=tuple(data.get("notes", ())))


@functools.cache
def _board_power() -> tuple[dict[str, str], ...]:
    text = resources.files("hardware_models").joinpath("data/board_power.csv").read_text()
    return tuple(csv.DictReader(text.splitlines()))


def _watts(board: str, configuration: str, state: str) -> float:
    for row in _board_power():
        if row["board"].startswith(board) and configuration in row["configuration"] and row["state"] == state:
            return float(row["power"])
    raise KeyError(f"no power row for {board} / {configuration} / {state} in data/board_power.csv")


def zcu102_power() -> PowerModel:
    idle = _watts("ZCU102", "LOWPOWER_DISABLE", "static_after_boot")
    running = _watts("ZCU102", "LOWPOWER_DISABLE", "dynamic_running")
    return PowerModel(idle_w=idle, per_unit_w=(running - idle) / 3, units=3, unit="DPU core", source="derived", notes=(
        f"ZCU102 board power measured by the Vitis AI reference design: {idle} W idle, {running} W with "
        "3 B4096 DPUs running (README_DPUCZ_Vitis.md, LOWPOWER_DISABLE)",
        "per-core increment = (running - idle) / 3, assuming it scales with busy cores; single-thread "
        "inference keeps one core busy",
    ))


def zcu104_power() -> PowerModel:
    ref = zcu102_power()
    kv260 = _watts("KV260", "same", "12V DC input, DPU load") - _watts("KV260", "same", "12V DC input, idle")
    return PowerModel(idle_w=ref.idle_w, per_unit_w=ref.per_unit_w, units=2, unit="DPU core", source="assumed", notes=(
        "NO measurement of ZCU104 power during DPU inference was found; these are the ZCU102 reference "
        f"design's figures ({ref.idle_w} W idle + {ref.per_unit_w:.3f} W per busy B4096 core), assumed to "
        "carry over to the ZCU104 (same DPU, similar evaluation board)",
        f"for scale: a KV260 measured +{kv260:.2f} W at its 12 V input for one B4096 under load (Simfero), "
        "so the per-core figure may be pessimistic",
    ))


def kv260_power() -> PowerModel:
    idle = _watts("KV260", "same", "12V DC input, idle")
    loaded = _watts("KV260", "same", "12V DC input, DPU load")
    return PowerModel(idle_w=idle, per_unit_w=loaded - idle, units=1, unit="DPU core", source="measured", notes=(
        f"KV260 measured at its 12 V input (Simfero, shunt + DMM): {idle} W idle, {loaded} W with one B4096 "
        "running inference",
    ))


def rpi4_power() -> PowerModel:
    idle = _watts("Raspberry Pi 4", "pidramble", "idle")
    loaded = _watts("Raspberry Pi 4", "pidramble", "400% CPU load (stress --cpu 4)")
    return PowerModel(idle_w=idle, per_unit_w=(loaded - idle) / 4, units=4, unit="CPU core", source="derived", notes=(
        f"Raspberry Pi 4 B measured with a USB power meter (pidramble): {idle} W idle, {loaded} W with "
        "stress --cpu 4; inference at 4 threads is assumed to draw what stress draws",
        "per-core increment = (loaded - idle) / 4 for fewer threads",
    ))


def rpi5_power() -> PowerModel:
    ref = rpi4_power()
    return PowerModel(idle_w=ref.idle_w, per_unit_w=ref.per_unit_w, units=4, unit="CPU core", source="assumed", notes=(
        "NO Raspberry Pi 5 power measurement is in the calibration data; the Raspberry Pi 4's figures "
        f"({ref.idle_w} W idle, +{ref.per_unit_w:.3f} W per busy core) are assumed, which likely "
        "underestimates the Pi 5 (faster cores at a higher clock)",
    ))


def host_power(cores: int) -> PowerModel:
    return PowerModel(idle_w=0.0, per_unit_w=10.0, units=cores, unit="CPU core", source="assumed", notes=(
        "no power sensor is readable on this host (no RAPL); energy assumes 10 W per busy core and no idle "
        "share - a placeholder to rank candidates, not a measurement",
    ))


BUILTIN_POWER = {"zcu104": zcu104_power, "zcu102": zcu102_power, "kv260": kv260_power, "rpi4": rpi4_power,
                 "rpi5": rpi5_power}
