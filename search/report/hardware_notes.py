"""report.md's "Hardware model notes": what a CPU target's modelled numbers rest on where it can move a ranking.

An int8 recipe beats an fp32 one on a CPU target only by the int8 speed the profile credits. onnxruntime's int8
speed on a Raspberry Pi was never measured in the public data: the built-in profiles assume the fp32 kernels'
work per cycle (a factor of 1), and the report says so next to the front, as the bundle's metrics.json does per
target (`int8_speed`). A profile calibrated on the user's own rows of both precisions states the fitted factor
instead. The Raspberry Pi 5's onnxruntime parameters are the Pi 4's moved by a speed ratio: said here as well.
"""

from __future__ import annotations

from pathlib import Path

from evaluators.candidate import HardwareConfig
from hardware_models import resolve_profile
from hardware_models.estimators.int8_speed import describe
from hardware_models.estimators.int8_speed import of_profile


def _transfer_line(name: str, runtime: str, transfer: dict) -> list[str]:
    moved = [g for g in transfer.get("groups", ()) if g.startswith(f"{runtime}.")]
    if not moved:
        return []
    ratios = ", ".join(f"{p} x{r:.2f}" for p, r in transfer["ratio"].items())
    return [
        f"- {name}: {runtime} was never measured on this board: its parameters are the {transfer['from']} "
        f"fit moved by the {transfer['from']} / {transfer['to']} latency ratio {transfer['runtime']} measured "
        f"on both boards ({ratios}), likely optimistic (see the profile's assumptions)"
    ]


def hardware_notes(hardware: HardwareConfig) -> list[str]:
    """Markdown lines, empty when no target has anything to say."""
    lines = []
    for name, target in zip(hardware.names, hardware.targets, strict=True):
        profile = resolve_profile(target)
        if profile.family != "arm":
            continue
        speed = of_profile(profile.calibration, hardware.cpu_runtime)
        if speed:
            lines.append(f"- {name}: {describe(hardware.cpu_runtime, speed)}")
        lines += _transfer_line(name, hardware.cpu_runtime, dict(profile.calibration.get("transfer", {})))
    if not lines:
        return []
    return [
        "## Hardware model notes",
        "",
        "What the CPU targets' modelled latencies rest on where it decides between int8 and fp32 recipes "
        "(each target's full list: `assumptions` in a bundle's metrics.json).",
        "",
        *lines,
        "",
    ]


def append_hardware_notes(path: Path, hardware: HardwareConfig) -> None:
    """Add the section to an already written report.md (nothing when there is nothing to say)."""
    lines = hardware_notes(hardware)
    if lines:
        path.write_text(path.read_text().rstrip("\n") + "\n\n" + "\n".join(lines))
