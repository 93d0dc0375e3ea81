"""The ZCU104's own CPU: 4 x Cortex-A53 at 1.2 GHz in the Zynq UltraScale+ PS, where a cascade's float stage
runs while the DPU runs the INT8 one.

No public measurement of a CNN on the ZCU104's A53 cores is in the calibration data, so this profile is the
Raspberry Pi 4 (Cortex-A72) onnxruntime fit transferred by a stated rule, as the Pi 5 profile is:

- clock: 1.2 GHz (the ZCU104's APU), applied through the board, so compute time scales by 1.8 / 1.2;
- work per cycle x A53_PER_CYCLE = 0.5: the A53 is in-order and dual-issue with one 64-bit-wide NEON pipe
  (a 128-bit FMA takes two cycles), the A72 is out-of-order with two 128-bit NEON pipes: half the A72's
  sustained rate per cycle is the usual figure for GEMM-bound kernels, and optimistic for depthwise loops;
- fixed costs (per-layer and per-call overheads, scalar framework code) x (1.8 / 1.2) / A53_PER_CYCLE: the
  same in-order penalty at the lower clock;
- memory bandwidth x A53_MEMORY_RATIO = 1.0: the PS has 64-bit DDR4-2666 (twice the Pi 4's nominal rate), but
  an in-order A53 keeps few misses in flight; we credit none of the wider bus;
- power: the ZCU104 board's idle power (the DPU idling) + A53_CORE_W per busy core, an assumption from the
  order of magnitude Xilinx's power estimator gives for the APU at 1.2 GHz; no measurement.

`python -m hardware_models.estimators.a53` rewrites the packaged profile; a test checks the file equals the derivation.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from hardware_models.estimators.arm import ARM_BOARDS
from hardware_models.power import PowerModel
from hardware_models.power import zcu104_power
from hardware_models.profiles import Profile
from hardware_models.profiles import dumps
from hardware_models.profiles import load_builtin

BOARD = "zcu104_a53"
A53_PER_CYCLE = 0.5
A53_MEMORY_RATIO = 1.0
A53_CORE_W = 0.35
PROFILE_PATH = Path(__file__).parents[1] / "profiles" / f"{BOARD}.json"


def a53_power() -> PowerModel:
    board = zcu104_power()
    return PowerModel(idle_w=board.idle_w, per_unit_w=A53_CORE_W, units=4, unit="CPU core", source="assumed", notes=(
        f"NO measurement of the ZCU104's Cortex-A53 cores under inference load: board idle {board.idle_w} W (the "
        f"ZCU102 reference figure the zcu104 target uses) + {A53_CORE_W} W per busy A53 core, an assumption",))


def transfer_params(params: dict[str, float]) -> dict[str, float]:
    """Raspberry Pi 4 parameters moved to the ZCU104's A53 cores by the rule in the module docstring."""
    clock_ratio = ARM_BOARDS["rpi4"].clock_ghz / ARM_BOARDS[BOARD].clock_ghz
    out = {}
    for name, value in params.items():
        if name.endswith("_per_cycle"):
            value *= A53_PER_CYCLE
        elif name.endswith(("_us", "_ms")):
            value *= clock_ratio / A53_PER_CYCLE
        elif name.endswith("_gbps"):
            value *= A53_MEMORY_RATIO
        out[name] = value
    return out


def a53_profile() -> Profile:
    rpi4 = load_builtin("rpi4")
    note = (f"ZCU104 Cortex-A53 x4 @ {ARM_BOARDS[BOARD].clock_ghz} GHz: NO measurements; the Raspberry Pi 4 fit "
            f"transferred (work per cycle x{A53_PER_CYCLE}: in-order core with one 64-bit NEON pipe; fixed costs "
            f"x clock ratio / {A53_PER_CYCLE}; memory bandwidth x{A53_MEMORY_RATIO}); expect errors well beyond the "
            "Pi 4's own")
    return dataclasses.replace(rpi4, target=BOARD, board=BOARD, params=transfer_params(dict(rpi4.params)),
                               power=a53_power(), default_runtime="onnxruntime", default_threads=4,
                               default_precision="fp32", assumptions=(note, *rpi4.assumptions))


def main() -> int:
    PROFILE_PATH.write_text(dumps(a53_profile()))
    print(f"wrote {PROFILE_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
