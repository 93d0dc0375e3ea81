"""The registry of built-in targets: which cost model, which board, which data calibrates it.

A new board is one decorated function returning a `TargetSpec`; the contract tests iterate over this
registry. Targets without measurements of their own (ZCU102, KV260) are calibrated on a sibling board's
rows - each row interpreted with the board it was measured on - and then transferred, with the assumption
written into the profile. The Raspberry Pi 5 is fitted on its own ncnn rows; its onnxruntime parameters
(no Pi 5 onnxruntime measurement exists) are the Pi 4 fit moved by the Pi 5 / Pi 4 speed ratio that ncnn
measured on both boards (`hardware_models.estimators.board_ratio`), and the profile says so.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass

from hardware_models.capability import POWER_OF_TWO
from hardware_models.capability import Capability
from hardware_models.capability import Deployment
from hardware_models.capability import OperatorLimits
from hardware_models.capability import Precision
from hardware_models.capability import RuntimeSupport
from hardware_models.capability import deploy
from hardware_models.estimators.arm import ARM_BOARDS
from hardware_models.estimators.arm import ArmModel
from hardware_models.estimators.board_ratio import SpeedRatio
from hardware_models.estimators.board_ratio import move_params
from hardware_models.estimators.board_ratio import packaged_speed_ratio
from hardware_models.estimators.costmodel import CostModel
from hardware_models.estimators.dpu import DPU_ACTIVATIONS
from hardware_models.estimators.dpu import DPU_BOARDS
from hardware_models.estimators.dpu import RUNTIMES as DPU_RUNTIMES
from hardware_models.estimators.dpu import DpuModel
from hardware_models.estimators.dpu import config_of
from hardware_models.estimators.int8_speed import transferred
from hardware_models.fitting.intervals import borrow_interval
from hardware_models.graph.executed import Network
from hardware_models.power import BUILTIN_POWER
from hardware_models.power import PowerModel
from hardware_models.profiles import Profile
from hardware_models.profiles import load_builtin
from hardware_models.registry import register_once


@dataclass(frozen=True, kw_only=True)
class TargetSpec:
    name: str
    family: str                      # "dpu", "arm" or "host"
    board: str
    description: str
    default_runtime: str = ""
    default_threads: int = 1
    default_precision: str = "int8"
    measurements: tuple[str, ...] = ()   # packaged calibration files (data/...), fitted as one table
    transfer: Callable[[Profile], Profile] | None = None


TARGETS: dict[str, TargetSpec] = {}


def register_target(builder: Callable[[], TargetSpec]) -> Callable[[], TargetSpec]:
    spec = builder()
    register_once(TARGETS, spec.name, spec, "target")
    return builder


def get_target(name: str) -> TargetSpec:
    try:
        return TARGETS[name]
    except KeyError:
        raise KeyError(f"unknown target {name!r}; built-in targets: {', '.join(list_targets())}, "
                       "or the path of a calibrated profile JSON") from None


def list_targets(pattern: str = "*") -> list[str]:
    return sorted(n for n in TARGETS if fnmatch.fnmatch(n, pattern))


def cost_model(family: str, board: str, builds: tuple[str, ...] = (), combine: str | None = None) -> CostModel:
    """The family's model; `combine` (how compute and memory time add up) defaults to the fitted choice."""
    if family == "dpu":
        return DpuModel(DPU_BOARDS[board], combine or "max")
    if family == "arm":
        return ArmModel(ARM_BOARDS[board], builds, combine or "sum")
    raise KeyError(f"no analytical cost model for family {family!r}")


def builtin_power(target: str) -> PowerModel:
    return BUILTIN_POWER[target]()


# -- transfers to boards without measurements -------------------------------------------------------
# The rule the Pi 5 transfer used before the ncnn ratio (kept for comparison, benchmarks.rpi5_transfer): the
# A76 gets no per-cycle credit over the A72, memory scales by the nominal LPDDR4X-4267 / LPDDR4-3200 rates,
# fixed costs by the clock. It predicts the measured Pi 5 ncnn rows about 4x too slow.
RPI5_COMPUTE_PER_CYCLE = 1.0
RPI5_MEMORY_RATIO = 4267.0 / 3200.0
# Runtimes the packaged data measures on the Pi 5 itself: never overwritten by a transfer from the Pi 4 (a
# user's Pi 5 table adapts the built-in rpi5 profile, whose ncnn groups are those measured ones).
RPI5_MEASURED_RUNTIMES = ("ncnn.",)


def to_rpi5_params(params: Mapping[str, float]) -> dict[str, float]:
    """A Pi 4 parameter set moved to the Pi 5 by the clock/memory rule above (clock via the case, memory, fixed
    costs): the old transfer, kept as the comparison for the ncnn-ratio one."""
    clock_ratio = ARM_BOARDS["rpi4"].clock_ghz / ARM_BOARDS["rpi5"].clock_ghz
    out = {}
    for name, value in params.items():
        if name.endswith("_gbps"):
            value *= RPI5_MEMORY_RATIO
        elif name.endswith(("_us", "_ms")):
            value *= clock_ratio           # fixed costs are CPU work: they shrink with the clock
        elif name.endswith("_per_cycle"):
            value *= RPI5_COMPUTE_PER_CYCLE
        out[name] = value
    return out


def fitted_or_borrowed(profile: Profile) -> set[str]:
    """Parameter groups a profile has values for other than physical defaults."""
    return {*profile.calibration.get("fitted_groups", ()), *profile.calibration.get("unmeasured_groups", {})}


def group_precision(profile: Profile, group: str) -> str:
    """The precision whose rows a group's parameters were fitted on: a borrowed group's source's."""
    origin = profile.calibration.get("unmeasured_groups", {}).get(group, [group])[0]
    return origin.split(".")[1]


def to_rpi5_by_ratio(rpi4: Profile, groups: Sequence[str], ratio: SpeedRatio) -> dict[str, float]:
    """The Pi 4 parameters of `groups`, each moved by the ncnn ratio of the precision it was fitted at."""
    out = {}
    for group in groups:
        mine = {n: v for n, v in rpi4.params.items() if n.startswith(group)}
        out.update(move_params(mine, ratio.of(group_precision(rpi4, group))))
    return out


def _ratio_text(ratio: SpeedRatio) -> str:
    return "; ".join(f"{p} x{r:.2f} (geometric mean of {ratio.pairs[p]} pairs, {ratio.low[p]:.1f}x-"
                     f"{ratio.high[p]:.1f}x)" for p, r in ratio.ratio.items())


def _complete_rpi5(profile: Profile) -> Profile:
    """The Pi 5 fit (its own ncnn rows) completed with the built-in Pi 4 profile's other runtimes, moved by the
    Pi 5 / Pi 4 speed ratio ncnn measured on both boards (`board_ratio`).

    Measured Pi 5 rows beat a transfer where they exist: fitted directly, the Pi 5 ncnn rows score about 20%
    leave-family-out. onnxruntime has no Pi 5 rows: its parameters are the Pi 4 onnxruntime fit divided by the
    ncnn ratio (the profile says so, and its interval is widened); the per-runtime thread scaling is kept.
    """
    rpi4, ratio = load_builtin("rpi4"), packaged_speed_ratio()
    cal = dict(profile.calibration)
    fitted = set(cal.get("fitted_groups", ()))
    groups = sorted(fitted_or_borrowed(rpi4) - fitted - set(cal.get("unmeasured_groups", {}))
                    - {g for g in fitted_or_borrowed(rpi4) if g.startswith(RPI5_MEASURED_RUNTIMES)})
    params = dict(profile.params)
    params.update({n: v for n, v in to_rpi5_by_ratio(rpi4, groups, ratio).items() if n in params})
    unmeasured = dict(cal.get("unmeasured_groups", {}))
    for group in groups:
        why = rpi4.calibration.get("unmeasured_groups", {}).get(group, [group, ""])[1]
        unmeasured[group] = [group, f"no {group.strip('.').replace('.', ' ')} measurement on a Raspberry Pi 5: "
                             f"the Pi 4 fit is moved by the Pi 5 / Pi 4 {ratio.runtime} speed ratio "
                             f"(x{ratio.of(group_precision(rpi4, group)):.2f}){'; ' + why if why else ''}"]
    cal["unmeasured_groups"] = unmeasured
    cal["threads_measured"] = {**cal.get("threads_measured", {}),
                               **{g: t for g, t in rpi4.calibration.get("threads_measured", {}).items() if g in groups}}
    cal["transfer"] = {**ratio.to_json(), "groups": groups}
    moved = [g.partition(".")[0] for g in groups if g.endswith(".int8.")]
    cal["int8_speed"] = {**transferred(rpi4.calibration.get("int8_speed", {}), moved, "the Raspberry Pi 4's, moved "
                                       f"to the Pi 5 by the {ratio.runtime} ratio"), **cal.get("int8_speed", {})}
    if "interval" in cal and "interval" in rpi4.calibration:
        cal["interval"] = borrow_interval(cal["interval"], {g: g for g in groups}, rpi4.calibration["interval"])
    notes = (f"Raspberry Pi 5 {', '.join(g.strip('.') for g in sorted(fitted))} parameters are fitted on its own "
             f"rows ({cal.get('measurements', '?')}); "
             f"{', '.join(g.strip('.') for g in groups)} have no Pi 5 measurement and are the Raspberry Pi 4 "
             f"profile moved by the Pi 5 / Pi 4 latency ratio {ratio.runtime} measured on both boards "
             f"({_ratio_text(ratio)}; every term of a Pi 4 prediction divided by it). The ratio carries more than "
             "the board: benchncnn computes fp32 models in fp16 on the Pi 5's Cortex-A76 (not on the Pi 4's A72), "
             "which onnxruntime's fp32 kernels do not, and the Pi 5 rows come from a newer ncnn; expect the "
             "transferred predictions to be optimistic (python -m benchmarks.rpi5_transfer)",)
    return dataclasses.replace(profile, params=params, calibration=cal, assumptions=profile.assumptions + notes,
                               runtimes=tuple(sorted({*profile.runtimes, *rpi4.runtimes})))


def _to_dpu(target: str) -> Callable[[Profile], Profile]:
    """Reuse the ZCU104 fit on another DPU configuration (size, cores, clock from DPU_BOARDS)."""

    def transfer(profile: Profile) -> Profile:
        board = DPU_BOARDS[target]
        notes = (
            f"{board.name} has NO latency measurements in the calibration data: the ZCU104 fit (cycle-level "
            "efficiencies, per-layer cycles, VART call overheads) is reused with "
            f"{board.cores} x {board.arch} at {board.clock_mhz:g} MHz; DDR bandwidth per core is assumed "
            "equal to the ZCU104's",
        )
        return dataclasses.replace(profile, target=target, board=target, power=builtin_power(target),
                                   config=config_of(board), assumptions=profile.assumptions + notes)

    return transfer


@register_target
def _zcu104() -> TargetSpec:
    return TargetSpec(name="zcu104", family="dpu", board="zcu104",
                      description="ZCU104, DPUCZDX8G 2 x B4096 @ 300 MHz, INT8", default_runtime="vart-python",
                      default_threads=1, default_precision="int8", measurements=("data/zcu104_dpu.csv",))


@register_target
def _zcu102() -> TargetSpec:
    return TargetSpec(name="zcu102", family="dpu", board="zcu104",
                      description="ZCU102, DPUCZDX8G 3 x B4096 @ 281 MHz, INT8 (transferred)",
                      default_runtime="vart-python", default_threads=1, default_precision="int8",
                      measurements=("data/zcu104_dpu.csv",), transfer=_to_dpu("zcu102"))


@register_target
def _kv260() -> TargetSpec:
    return TargetSpec(name="kv260", family="dpu", board="zcu104",
                      description="Kria KV260, DPUCZDX8G 1 x B4096 @ 300 MHz, INT8 (transferred)",
                      default_runtime="vart-python", default_threads=1, default_precision="int8",
                      measurements=("data/zcu104_dpu.csv",), transfer=_to_dpu("kv260"))


@register_target
def _rpi4() -> TargetSpec:
    return TargetSpec(name="rpi4", family="arm", board="rpi4",
                      description="Raspberry Pi 4 B, 4 x Cortex-A72 @ 1.8 GHz (onnxruntime, as the bundle runs)",
                      default_runtime="onnxruntime", default_threads=4, default_precision="fp32",
                      measurements=("data/rpi.csv", "data/rpi_runtimes.csv"))


@register_target
def _rpi5() -> TargetSpec:
    return TargetSpec(name="rpi5", family="arm", board="rpi5",
                      description="Raspberry Pi 5, 4 x Cortex-A76 @ 2.4 GHz (ncnn measured; onnxruntime "
                                  "transferred from the Pi 4)",
                      default_runtime="onnxruntime", default_threads=4, default_precision="fp32",
                      measurements=("data/rpi_runtimes.csv",), transfer=_complete_rpi5)


@register_target
def _host() -> TargetSpec:
    return TargetSpec(name="host", family="host", board="host",
                      description="this machine, onnxruntime CPU, measured (not modelled)",
                      default_runtime="onnxruntime", default_threads=1, default_precision="fp32")


# -- what each target executes (hardware_models.capability: the rules that use it) ---------------------------
# Data, one declaration per target, kept apart from the TargetSpec builders above so that a change of a
# board's default runtime and a change of what it executes are separate edits.
CAPABILITIES: dict[str, Capability] = {}

_INT8 = frozenset({Precision.INT8})
_INT8_FP32 = frozenset({Precision.INT8, Precision.FP32})
_INT8_FP16_FP32 = frozenset({Precision.INT8, Precision.FP16, Precision.FP32})
_VART = "DPUCZDX8G computes INT8 only (PG338: 'INT8 for both weights and activations'); VART runs the xmodel"
_A72 = ("Cortex-A72 is ARMv8.0-A: no fp16 arithmetic, so fp16 weights are widened to fp32; int8 and fp32 kernels "
        "in ncnn, onnxruntime (MLAS) and qnnpack")
_A76_NCNN = "Cortex-A76 is ARMv8.2-A with fp16 arithmetic; ncnn uses fp16 kernels there (opt.use_fp16_arithmetic)"
_A76_OTHER = "onnxruntime's CPU provider and qnnpack have int8 and fp32 kernels; fp16 runs as fp32"


def register_capability(builder: Callable[[], Capability]) -> Callable[[], Capability]:
    cap = builder()
    if cap.target not in TARGETS:
        raise ValueError(f"capability for unknown target {cap.target!r}")
    register_once(CAPABILITIES, cap.target, cap, "capability of target")
    return builder


def capability(target: str) -> Capability:
    """What `target` executes; KeyError lists the targets that declare it."""
    try:
        return CAPABILITIES[target]
    except KeyError:
        raise KeyError(f"no capability declared for target {target!r}; declared: "
                       f"{', '.join(sorted(CAPABILITIES))}") from None


def deployment(target: str, bits: Mapping[str, tuple[int, int]], *, runtime: str | None = None,
               float_network: bool = False, network: Network | None = None) -> Deployment:
    """What a recipe with per-layer (weight_bits, act_bits) becomes on `target` (its default runtime unless
    `runtime` is given): deployable or not and why, `runs_as`, and the per-layer bits the board executes."""
    return deploy(capability(target), bits, runtime=runtime or get_target(target).default_runtime,
                  float_network=float_network, network=network)


def common_native_bits(targets: Sequence[str]) -> frozenset[int]:
    """Bit widths every target in `targets` executes as asked (8 for int8, 16 for fp16, 32 for a float layer
    in a quantized network), each on its default runtime. Integer codes below 8 are never native: they run
    as int8 everywhere."""
    sets = [capability(t).native_bits(get_target(t).default_runtime) for t in targets]
    return frozenset.intersection(*sets) if sets else frozenset()


def _dpu_capability(target: str) -> Capability:
    board = DPU_BOARDS[target]
    support = tuple(RuntimeSupport(runtime=r, executes=_INT8, why=_VART) for r in DPU_RUNTIMES)
    return Capability(target=target, runtimes=support, fp16_fallback=None, float_network=Precision.INT8,
                      toolchain="Vitis AI (vai_q quantizer, vai_c_xir compiler)", arithmetic=POWER_OF_TWO,
                      operators=OperatorLimits(activations=DPU_ACTIVATIONS,
                                               channel_parallel=board.input_channel_parallelism),
                      notes=("the DPU has no float datapath: a float layer in a quantized network would run on the "
                             "ARM cores (not costed), so such a recipe is refused",))


@register_capability
def _zcu104_capability() -> Capability:
    return _dpu_capability("zcu104")


@register_capability
def _zcu102_capability() -> Capability:
    return _dpu_capability("zcu102")


@register_capability
def _kv260_capability() -> Capability:
    return _dpu_capability("kv260")


@register_capability
def _rpi4_capability() -> Capability:
    return Capability(target="rpi4", fp16_fallback=Precision.FP32,
                      runtimes=tuple(RuntimeSupport(runtime=r, executes=_INT8_FP32, why=_A72)
                                     for r in ("ncnn", "onnxruntime", "pytorch")))


@register_capability
def _rpi5_capability() -> Capability:
    return Capability(target="rpi5", fp16_fallback=Precision.FP32,
                      runtimes=(RuntimeSupport(runtime="ncnn", executes=_INT8_FP16_FP32, why=_A76_NCNN),
                                *(RuntimeSupport(runtime=r, executes=_INT8_FP32, why=_A76_OTHER)
                                  for r in ("onnxruntime", "pytorch"))),
                      notes=("fp16 layers are costed with the fp32 kernels' rates (no fp16 measurements exist): a "
                             "conservative estimate",))


@register_capability
def _host_capability() -> Capability:
    return Capability(target="host", fp16_fallback=Precision.FP32,
                      runtimes=(RuntimeSupport(runtime="onnxruntime", executes=_INT8_FP32,
                                               why="onnxruntime CPU provider: int8 (QDQ) and fp32 kernels"),))
