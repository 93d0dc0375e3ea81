"""Per-family estimators behind `estimate()`: DPU and ARM predict from a profile, host measures."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import nn

from hardware_models.estimators import arm
from hardware_models.estimators import dpu
from hardware_models.estimators import host
from hardware_models.estimators import int8_speed
from hardware_models.estimators.costmodel import Case
from hardware_models.estimators.costmodel import LayerTable
from hardware_models.estimators.costmodel import Prediction
from hardware_models.estimators.registry import Estimator
from hardware_models.estimators.registry import Options
from hardware_models.estimators.registry import get_estimator
from hardware_models.estimators.registry import register_estimator
from hardware_models.fitting.intervals import latency_interval
from hardware_models.graph.executed import Network
from hardware_models.graph.executed import signature
from hardware_models.graph.precision import PrecisionPlan
from hardware_models.graph.precision import resolve
from hardware_models.profiles import Profile


def _per_layer(table: LayerTable, prediction: Prediction) -> list[dict[str, Any]]:
    return [{"name": n, "kind": k, "latency_ms": float(t), "compute_ms": float(c), "memory_ms": float(m),
             "bound": b}
            for n, k, t, c, m, b in zip(table.names, table.kinds, prediction.layer_ms, prediction.compute_ms,
                                        prediction.memory_ms, prediction.bound, strict=True)]


def _timing(latency_ms: float, watts: float, source: str) -> dict[str, Any]:
    return {"latency_ms": latency_ms, "fps": 1000.0 / latency_ms if latency_ms > 0 else float("inf"),
            "power_w": watts, "energy_mj": watts * latency_ms, "energy_source": source}


def _interval(latency_ms: float, profile: Profile, group: str, unmeasured: list[str], macs: int) -> dict[str, Any]:
    """`latency_ms_low`/`_high` (90%) from the profile's held-out residuals, and the note that says how."""
    if profile.target != profile.calibration.get("calibrated_board", profile.target) and not unmeasured:
        unmeasured = [f"{profile.target} is transferred from {profile.calibration['calibrated_board']}"]
    band = latency_interval(latency_ms, profile.calibration, group, unmeasured, macs)
    return {"latency_ms_low": band.low, "latency_ms_high": band.high, "interval_level": band.level,
            "interval_note": band.note}


def _unmeasured_dpu(board: dpu.DpuBoard, profile: Profile, options: Options) -> list[str]:
    """What about this DPU configuration no calibration row covers (each widens the interval)."""
    measured = profile.calibration.get("calibrated_config") or dpu.config_of(dpu.DPU_BOARDS["zcu104"])
    clock = options.clock_ghz * 1e3 if options.clock_ghz else board.clock_mhz
    reasons = []
    if board.arch != measured["arch"]:
        reasons.append(f"DPU size {board.arch} never measured (calibrated on {measured['arch']})")
    if abs(clock - float(measured["clock_mhz"])) > 1e-6:
        reasons.append(f"DPU clock {clock:.0f} MHz never measured (calibrated at "
                       f"{float(measured['clock_mhz']):.0f} MHz)")
    if not reasons and board.name != measured["name"]:
        reasons.append(f"{board.name} board never measured (same DPU as the {measured['name']}; "
                       "its DDR may differ)")
    return reasons


def _not_int8(bits: dict[str, int]) -> list[str]:
    return [f"{name} ({b}-bit)" for name, b in bits.items() if b != 8]


@register_estimator("dpu")
def _dpu(model: nn.Module, network: Network, profile: Profile, options: Options) -> dict[str, Any]:
    plan = resolve(options.precision, "int8")
    odd = _not_int8(plan.weight_bits(network))
    runtime = options.runtime or profile.default_runtime
    if runtime not in dpu.RUNTIMES:
        raise ValueError(f"unknown DPU runtime {runtime!r}; known: {', '.join(dpu.RUNTIMES)}")
    notes = [*profile.assumptions, *profile.power.notes]
    base = {"measured": False, "precision": plan.label(network), "threads": 1, "runtime": runtime}
    if odd and not options.as_int8:
        reason = (f"the DPUCZDX8G runs only INT8, but {len(odd)} layers are not 8-bit (e.g. {odd[0]}); quantize "
                  "to INT8 or pass as_int8=True to cost it as INT8 (the thesis saw 5-bit models run as 8-bit)")
        return {**base, "deployable": False, "reason": reason, "latency_ms": None, "latency_ms_low": None,
                "latency_ms_high": None, "interval_level": None, "interval_note": None, "fps": None,
                "fps_multi_thread": None, "energy_mj": None, "power_w": None, "energy_source": None,
                "assumptions": notes}
    if odd:
        notes.append(f"{len(odd)} non-8-bit layers are costed as INT8 (as_int8=True): the DPU stores and runs "
                     "sub-8-bit weights as 8-bit, so they are not faster")
    if any(b > 8 for b in plan.weight_bits(network).values()) and options.as_int8:
        notes.append("layers above 8 bits (fp16/fp32) are quantized to INT8 by Vitis AI for the DPU: the board "
                     "runs them in INT8, so accuracy measured with them in float is optimistic there")
    board = dpu.board_from(profile.board, profile.config)
    cost = dpu.DpuModel(board, boards={profile.board: board})
    cost.require(profile.params, f"profile {profile.target!r}")
    case = Case(network=network, board=profile.board, threads=1, precision="int8", runtime=runtime,
                clock_ghz=options.clock_ghz or 0.0)
    table = cost.table(case)
    prediction = cost.predict(profile.params, table)
    latency = float(prediction.totals(table)[0])
    fps_multi = float(cost.multi_core_fps(profile.params, table)[0])
    unsupported = cost.unsupported(case)
    if unsupported:
        notes.append(f"{len(unsupported)} layers ({', '.join(unsupported[:3])}...) are not DPU operations; "
                     "Vitis AI would run them on the ARM cores - costed here as DPU elementwise passes")
    band = _interval(latency, profile, "", _unmeasured_dpu(board, profile, options), network.macs)
    notes.append(band["interval_note"])
    result = {**base, "deployable": True, "reason": None, **_timing(latency, profile.power.watts(1),
                                                                     profile.power.source), **band,
              "fps_multi_thread": fps_multi,
              "energy_mj_multi_thread": profile.power.watts(board.cores) / fps_multi * 1e3,
              "assumptions": notes}
    if options.per_layer:
        result["per_layer"] = _per_layer(table, prediction)
    return result


def _arm_precision(plan: PrecisionPlan, network: Network) -> tuple[str, dict[str, str], list[str]]:
    """Kernels per layer: int8 for <= 8-bit weights, fp32 otherwise; the network's own precision (its call
    overhead and its error interval) is that of most MACs. onnxruntime runs a mixed QDQ graph layer by layer."""
    bits = plan.weight_bits(network)
    kernels = {n: "int8" if b <= 8 else "fp32" for n, b in bits.items()}
    macs = {layer.name: layer.macs for layer in network.computed()}
    low = sum(macs.get(n, 0) for n, k in kernels.items() if k == "int8")
    total = max(sum(macs.get(n, 0) for n in bits), 1)
    precision = "int8" if (low / total >= 0.5 if bits else plan.default_bits <= 8) else "fp32"
    notes = []
    if len(set(kernels.values())) > 1:
        notes.append(f"mixed precision: each layer is costed with its own kernels ({low / total:.0%} of the MACs "
                     "int8, the rest fp32); the Quantize/DequantizeLinear pairs at each precision boundary are not "
                     "costed")
    if any(b < 8 for b in bits.values()):
        notes.append("sub-8-bit weights run with int8 kernels on the CPU: no faster than int8")
    if any(8 < b < 32 for b in bits.values()):
        notes.append("16-bit weights are costed with fp32 kernels (no fp16 arithmetic on the Cortex-A72)")
    return precision, kernels, notes


def _unmeasured_threads(profile: Profile, group: str, threads: int) -> list[str]:
    """A thread count the group's rows never ran at: its speed-up and per-layer costs are extrapolated."""
    measured = profile.calibration.get("threads_measured", {}).get(group)
    if not measured or threads in measured:
        return []
    return [f"{group.strip('.').replace('.', ' ')} was measured at {', '.join(map(str, measured))} thread(s) "
            f"only: {threads} thread(s) extrapolates its multi-thread speed-up and per-layer costs"]


@register_estimator("arm")
def _arm(model: nn.Module, network: Network, profile: Profile, options: Options) -> dict[str, Any]:
    precision, kernels, notes = _arm_precision(resolve(options.precision, profile.default_precision), network)
    runtime = options.runtime or profile.default_runtime
    board = arm.ARM_BOARDS[profile.board]
    threads = options.threads or profile.default_threads
    if runtime not in arm.RUNTIMES:
        raise ValueError(f"unknown CPU runtime {runtime!r}; known: {', '.join(arm.RUNTIMES)}")
    if not 1 <= threads <= board.cores:
        raise ValueError(f"threads must be 1..{board.cores} on {board.name}, got {threads}")
    group = f"{runtime}.{precision}."
    borrowed = profile.calibration.get("unmeasured_groups", {}).get(group)
    if borrowed:
        notes += [] if borrowed[1] in profile.assumptions else [borrowed[1]]
    elif group not in profile.calibration.get("fitted_groups", []):
        notes.append(f"no {runtime} {precision} measurements were in the calibration data: these "
                     "parameters are uncalibrated physical defaults")
    cost = arm.ArmModel(board, tuple(profile.calibration.get("builds", ())))
    cost.require(profile.params, f"profile {profile.target!r}")
    table = cost.table(Case(network=network, board=profile.board, threads=threads, precision=precision,
                            runtime=runtime, clock_ghz=options.clock_ghz or 0.0,
                            layer_precision=tuple(sorted(kernels.items()))))
    prediction = cost.predict(profile.params, table)
    watts = profile.power.watts(threads)
    latency = float(prediction.totals(table)[0])
    band = _interval(latency, profile, group, _unmeasured_threads(profile, group, threads), network.macs)
    mixed = "/".join(p for p in arm.PRECISIONS[::-1] if p in kernels.values()) if len(set(kernels.values())) > 1 \
        else precision
    result = {"measured": False, "deployable": True, "reason": None, "precision": mixed,
              "threads": threads, "runtime": runtime, **_timing(latency, watts, profile.power.source), **band,
              "assumptions": [*profile.assumptions, *profile.power.notes, *notes, band["interval_note"]]}
    speed = int8_speed.of_profile(profile.calibration, runtime) if "int8" in (precision, *kernels.values()) else None
    if speed:  # measured by the user's rows, or the assumption metrics.json and report.md then repeat
        result["int8_speed"] = speed
    if options.per_layer:
        result["per_layer"] = _per_layer(table, prediction)
    return result


_HOST_CACHE: OrderedDict[tuple, host.HostMeasurement] = OrderedDict()


@register_estimator("host")
def _host(model: nn.Module, network: Network, profile: Profile, options: Options) -> dict[str, Any]:
    host.require_real_weights(model)
    plan = resolve(options.precision, "fp32")
    bits = plan.weight_bits(network) or {"*": plan.default_bits}
    precision = "int8" if max(bits.values()) <= 8 else "fp32"
    threads = options.threads or profile.default_threads
    key = (signature(model, network.input_shape), precision, threads)
    cached = options.use_cache and key in _HOST_CACHE
    measurement = _HOST_CACHE[key] if cached else host.measure(model, network.input_shape, precision=precision,
                                                                threads=threads)
    if options.use_cache:
        _HOST_CACHE[key] = measurement
        while len(_HOST_CACHE) > 64:
            _HOST_CACHE.popitem(last=False)
    watts = profile.power.watts(threads)
    notes = [*profile.power.notes, f"measured with onnxruntime {measurement.onnxruntime} on {measurement.cpu}, "
             f"{threads} thread(s), median of {measurement.runs} runs after {measurement.warmup} warm-up runs"]
    if cached:
        notes.append("repeated call: the measurement of this network structure is reused (use_cache=False "
                     "to measure again)")
    result = {"measured": True, "deployable": True, "reason": None, "precision": precision,
              "threads": threads, "runtime": "onnxruntime", **_timing(measurement.latency_ms, watts, "assumed"),
              "latency_p10_ms": measurement.p10_ms, "latency_p90_ms": measurement.p90_ms,
              "latency_ms_low": measurement.p10_ms, "latency_ms_high": measurement.p90_ms, "interval_level": 0.8,
              "interval_note": "measured: the 10th-90th percentile of the timed runs (run-to-run spread, "
                               "not a model error)",
              "runs": measurement.runs, "cpu": measurement.cpu, "cached": cached, "assumptions": notes}
    if options.per_layer:
        result["per_layer"] = []
        result["assumptions"].append("no per-layer breakdown for the measured target")
    return result


def estimator(profile: Profile) -> Estimator:
    """The estimator of the profile's family; importing this module is what registers the families above."""
    return get_estimator(profile)
