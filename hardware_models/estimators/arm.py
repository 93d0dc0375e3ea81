"""ARM Cortex-A CPU latency (Raspberry Pi 4 / 5): a per-layer roofline of compute and memory.

Each executed layer costs compute (work / (throughput per cycle x clock x thread speed-up)) plus memory
(activation and weight bytes over an effective bandwidth) plus a fixed per-layer cost (kernel dispatch,
thread wake-up). Throughput is per layer class, because CPU inference libraries run them with different
kernels: 3x3 stride-1 convolutions with Winograd, 1x1 convolutions as a plain GEMM, other convolutions
through im2col, depthwise convolutions with direct loops, fully connected layers as GEMV, elementwise/
activation passes, pooling windows and pure data movement (concat, channel shuffle). Pooling is its own
class (nn-Meter's per-kernel split): a 3x3 window reads nine inputs per output, so its work is the elements
the window reads, not in + out elements, and sharing one rate with ReLUs and adds made every pooling layer
cost as little as an add (NAS-Bench-201 cells with three pooling edges came out 10-15% fast). The memory term is
*added*, not max()-ed: fitted on the ncnn rows both ways, the sum fits better (the A72's small out-of-order window
hides little memory latency behind NEON arithmetic; `combine="max"` is the strict roofline, and
benchmarks/hardware_accuracy.py prints the fit error of both).

Parameters are fitted per (runtime, precision): ncnn's fp32 and int8 kernels, onnxruntime's CPU execution
provider and PyTorch/qnnpack behave too differently to share rates (resnet18, fp32, 4 threads on a Pi 4: 123 ms
with ncnn, 275 ms with onnxruntime in the data). Multi-thread speed-up is 1 + (threads - 1) x
parallel_efficiency on the compute term only - memory bandwidth is shared. Rows measured with an older build
of the same runtime get a build factor on their compute rates (ncnn's 1.5 GHz rows come from an older commit).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hardware_models.estimators.costmodel import Case
from hardware_models.estimators.costmodel import CostModel
from hardware_models.estimators.costmodel import LayerTable
from hardware_models.estimators.costmodel import Prediction
from hardware_models.fitting.least_squares import ParamSpec
from hardware_models.graph.ops import Kind
from hardware_models.graph.trace import Layer


@dataclass(frozen=True, kw_only=True)
class ArmBoard:
    name: str
    core: str
    cores: int
    clock_ghz: float
    memory: str


ARM_BOARDS: dict[str, ArmBoard] = {
    "rpi4": ArmBoard(name="Raspberry Pi 4 B", core="Cortex-A72", cores=4, clock_ghz=1.8, memory="LPDDR4-3200, 32-bit"),
    "rpi5": ArmBoard(name="Raspberry Pi 5", core="Cortex-A76", cores=4, clock_ghz=2.4, memory="LPDDR4X-4267, 32-bit"),
    # The ZCU104's processing system, where a cascade's float stage runs beside the DPU
    # (hardware_models/estimators/a53.py).
    "zcu104_a53": ArmBoard(name="ZCU104 PS (Zynq UltraScale+ APU)", core="Cortex-A53", cores=4, clock_ghz=1.2,
                           memory="DDR4-2666, 64-bit"),
}

CLASSES = ("winograd", "gemm1x1", "conv", "dwconv", "fc", "eltwise", "move", "pool")
# Physical guesses (the weak prior of the fit), per core per cycle for fp32 on a Cortex-A72: two 128-bit
# NEON FMA pipes peak at 8 MAC/cycle; Winograd F(4,3) saves ~4x multiplies; GEMV and depthwise loops are
# load-bound; elementwise passes move an element or two per cycle; a pooling window's reads are contiguous
# vector loads and adds (about two per cycle). int8 kernels: 1.5x (SMLAL widening).
_CLASS_DEFAULTS = (8.0, 4.0, 2.0, 1.0, 1.0, 0.5, 1.0, 2.0)
_MAC_CLASSES = 5  # classes below this index count MACs as work; the others count elements
_INT8_SPEEDUP = 1.5
# Activations ncnn and qnnpack fuse into the preceding convolution (TFLite fuses the clamp-like ones).
_CPU_FUSED = frozenset({"silu", "SiLU", "hardswish", "Hardswish", "sigmoid", "Sigmoid", "hardsigmoid",
                        "Hardsigmoid", "mish", "Mish"})
BYTES = {"fp32": 4.0, "int8": 1.0}
RUNTIMES = ("ncnn", "pytorch", "onnxruntime")
_WEIGHTED = (Kind.CONV, Kind.DWCONV, Kind.FC)
PRECISIONS = ("fp32", "int8")
# Words in a measurement row's runtime column -> runtime key; the first match wins, no match is ncnn.
_RUNTIME_WORDS = (("onnxruntime", "onnxruntime"), ("pytorch", "pytorch"), ("qnnpack", "pytorch"))
# Runtimes whose int8 kernels have no measurement on a Pi anywhere in the public data: their int8 parameters
# are the fp32 fit's (no int8 speed-up credited; tensors are 1 byte), and the profile and every interval say
# so. onnxruntime's int8 GEMMs are fastest with the dot-product instructions the Pi 4's A72 lacks.
INT8_FROM_FP32 = ("onnxruntime",)


def runtime_of(text: str) -> str:
    """`ncnn (benchncnn, ...)` -> ncnn; `onnxruntime 1.17 (python)` -> onnxruntime; `PyTorch qnnpack ...` ->
    pytorch; empty -> ncnn."""
    lowered = text.lower()
    return next((key for word, key in _RUNTIME_WORDS if word in lowered), "ncnn")


def borrow_unmeasured(values: Mapping[str, float], fitted_groups: Sequence[str]
                      ) -> tuple[dict[str, float], dict[str, tuple[str, str]]]:
    """Parameters of the INT8_FROM_FP32 runtimes' int8 groups taken from their fitted fp32 group.

    Returns the completed parameters and, per borrowed group, (the group it comes from, why): the profile
    stores both, and every prediction that uses a borrowed group gets a widened interval.
    """
    out, reasons = dict(values), {}
    for runtime in INT8_FROM_FP32:
        source, target = f"{runtime}.fp32.", f"{runtime}.int8."
        if source not in fitted_groups or target in fitted_groups:
            continue
        for name, value in values.items():
            if name.startswith(source):
                out[target + name[len(source):]] = value
        reasons[target] = (source, f"no public {runtime} int8 measurement on a Raspberry Pi exists: the {runtime} "
                           "fp32 fit is used (no int8 speed-up credited, 1-byte tensors); measure your own with "
                           "rpi/run_onnx.py --benchmark and recalibrate")
    return out, reasons


def build_of(source: str) -> str:
    """The commit a measurement row came from (`github:owner/repo@<sha>:...`), shortened."""
    match = re.search(r"@([0-9a-f]{7,40})", source)
    return match.group(1)[:8] if match else ""


def _class_of(layer: Layer, layers: tuple[Layer, ...]) -> int | None:
    kind = layer.kind
    if kind is Kind.CONV:
        dense = layer.groups == 1
        if dense and layer.kernel == (3, 3) and layer.stride == (1, 1) and min(layer.in_channels,
                                                                             layer.out_channels) >= 16:
            return 0
        return 1 if dense and layer.kernel == (1, 1) else 2
    if kind is Kind.DWCONV:
        return 3
    if kind is Kind.FC:
        return 4
    if kind in (Kind.CONCAT, Kind.COPY):
        return 6
    if kind is Kind.ACT and layer.op in _CPU_FUSED and len(layer.inputs) == 1 and \
            layers[layer.inputs[0]].kind in (Kind.CONV, Kind.DWCONV, Kind.FC, Kind.BN):
        return None
    if kind is Kind.POOL:
        return 7
    if kind in (Kind.ELTWISE, Kind.ACT, Kind.BN):
        return 5
    return None


def _work(layer: Layer, cls: int) -> float:
    """MACs for the arithmetic classes; elements read and written for the others, where a pooling layer reads
    its whole window per output (a global pool reads each input once)."""
    if cls < _MAC_CLASSES:
        return float(layer.macs)
    if CLASSES[cls] == "pool":
        return float(max(layer.in_elements, layer.out_elements * layer.kernel[0] * layer.kernel[1])
                     + layer.out_elements)
    return float(layer.in_elements + layer.out_elements)


def param_specs(runtime: str, precision: str) -> tuple[ParamSpec, ...]:
    prefix = f"{runtime}.{precision}."
    boost = _INT8_SPEEDUP if precision == "int8" else 1.0
    rates = tuple(ParamSpec(prefix + f"{c}_per_cycle", v * boost, 0.0,
                            "MAC/cycle/core" if i < _MAC_CLASSES else "elem/cycle/core",
                            f"{c} throughput per core per cycle")
                  for i, (c, v) in enumerate(zip(CLASSES, _CLASS_DEFAULTS, strict=True)))
    return rates + (
        ParamSpec(prefix + "activation_gbps", 2.0, 0.0, "GB/s", "effective bandwidth for activations"),
        ParamSpec(prefix + "weight_gbps", 4.0, 0.0, "GB/s", "effective bandwidth for weights"),
        ParamSpec(prefix + "layer_overhead_us", 50.0, 0.0, "us", "per layer, one thread"),
        ParamSpec(prefix + "layer_overhead_mt_us", 100.0, 0.0, "us", "per layer, several threads"),
        ParamSpec(prefix + "parallel_efficiency", 0.4, 0.0, "", "each extra thread adds this much speed"),
        ParamSpec(prefix + "call_overhead_ms", 0.05, 0.0, "ms", "per inference (framework call)"),
    )


def layer_kernels(case: Case) -> dict[int, str]:
    """Kernel precision per layer index: the case's map for layers with weights; a layer without weights
    (pooling, add, activation) runs at the precision of the tensor it reads, as in an onnxruntime QDQ graph,
    where an op between two int8 layers is int8 and one fed by an fp32 layer stays fp32."""
    default = case.precision if case.precision in PRECISIONS else "fp32"
    named = {name: p if p in PRECISIONS else "fp32" for name, p in case.layer_precision}
    kernels: dict[int, str] = {}
    for layer in case.network.layers:
        inherited = kernels.get(layer.inputs[0], default) if layer.inputs else default
        kernels[layer.index] = named.get(layer.name, default if layer.kind in _WEIGHTED else inherited)
    return kernels


def _conversion(layer: Layer, kernels: Mapping[int, str]) -> tuple[tuple, ...]:
    """A layer with weights whose input arrives at another precision first converts it: DequantizeLinear in front
    of a float layer behind an int8 one, QuantizeLinear in front of an int8 layer behind a float one. One fp32
    elementwise pass over the input (read and write), as onnxruntime runs the Q/DQ nodes it could not fuse; without
    the fitted per-layer overhead (count 0), which prices a convolution's dispatch, buffers and thread wake-up."""
    if layer.kind not in _WEIGHTED or not layer.inputs or kernels[layer.index] == kernels[layer.inputs[0]]:
        return ()
    elements = 2.0 * layer.in_elements
    return ((CLASSES.index("eltwise"), "fp32", elements, elements, 0.0, f"{layer.name}:convert", 0.0),)


class ArmModel(CostModel):
    family = "arm"

    def __init__(self, board: ArmBoard, builds: tuple[str, ...] = (), combine: str = "sum") -> None:
        if combine not in ("max", "sum"):
            raise ValueError(f"combine must be 'sum' or 'max' (strict roofline), not {combine!r}")
        self.combine = combine
        self.board = board
        self.builds = builds
        specs: list[ParamSpec] = []
        for runtime in RUNTIMES:
            for precision in PRECISIONS:
                specs += param_specs(runtime, precision)
                specs += [ParamSpec(f"{runtime}.{precision}.build_{b}", 1.0, 0.0, "x",
                                    f"compute speed of build {b} relative to the reference build")
                          for b in builds]
        self.params = tuple(specs)
        layout: dict[str, list] = {}
        for runtime in RUNTIMES:
            for precision in PRECISIONS:
                prefix = f"{runtime}.{precision}."
                for spec in param_specs(runtime, precision):
                    layout.setdefault(spec.name[len(prefix):], []).append(spec.name)
                layout.setdefault("builds", []).append([f"{prefix}build_{b}" for b in builds])
        self._layout = layout

    def table(self, case: Case) -> LayerTable:
        cls, work, act, weights, names, kinds, prec = [], [], [], [], [], [], []
        layers = case.network.layers
        kernels = layer_kernels(case)
        count = []
        for layer in case.network.computed():
            c = _class_of(layer, layers)
            if c is None:
                continue
            for row in ((c, kernels[layer.index], _work(layer, c), layer.in_elements + layer.out_elements,
                         layer.weights, layer.name, 1.0), *_conversion(layer, kernels)):
                cls.append(row[0])
                prec.append(PRECISIONS.index(row[1]))
                work.append(row[2])
                act.append(row[3])
                weights.append(row[4])
                names.append(row[5])
                count.append(row[6])
                kinds.append(CLASSES[row[0]])
        precision = case.precision if case.precision in PRECISIONS else "fp32"
        return LayerTable(
            columns={"cls": np.array(cls, int), "work": np.array(work, float), "act": np.array(act, float),
                     "weights": np.array(weights, float), "count": np.array(count, float), "prec": np.array(prec, int)},
            case=np.zeros(len(cls), int),
            case_columns={"threads": np.array([float(max(case.threads, 1))]),
                          "clock_ghz": np.array([case.clock_ghz or self.board.clock_ghz]),
                          "group": np.array([self.group_index(case.runtime, precision, "")]),
                          "build": np.array([self.build_index(case.runtime)])},
            names=tuple(names), kinds=tuple(kinds))

    def compact(self, table: LayerTable) -> LayerTable:
        """Every term is linear in the per-class sums, so one row per (case, class) gives the same totals."""
        if self.combine != "sum":
            return table  # max() is per layer: no aggregation
        key = (table.case * len(PRECISIONS) + table["prec"]) * len(CLASSES) + table["cls"]
        unique, inverse = np.unique(key, return_inverse=True)

        def total(column: np.ndarray) -> np.ndarray:
            return np.bincount(inverse, column, minlength=unique.size)

        columns = {"cls": unique % len(CLASSES), "work": total(table["work"]), "act": total(table["act"]),
                   "weights": total(table["weights"]), "count": total(table["count"]),
                   "prec": (unique // len(CLASSES)) % len(PRECISIONS)}
        return LayerTable(columns, unique // (len(CLASSES) * len(PRECISIONS)), table.case_columns,
                          n_cases=table.n_cases)

    def group_key(self, case: Case) -> str:
        precision = case.precision if case.precision in PRECISIONS else "fp32"
        return f"{(case.runtime or 'ncnn').partition('@')[0]}.{precision}."

    def group_params(self, key: str) -> list[int]:
        return [i for i, s in enumerate(self.params) if s.name.startswith(key)]

    def group_index(self, runtime: str, precision: str, _: str) -> int:
        return RUNTIMES.index((runtime or "ncnn").partition("@")[0]) * len(PRECISIONS) + PRECISIONS.index(precision)

    def build_index(self, runtime: str) -> int:
        """Runtime strings may carry a build (`ncnn@d9e45ec7`); -1 is the reference build."""
        _, _, build = runtime.partition("@")
        return self.builds.index(build) if build in self.builds else -1

    def _group_values(self, values: Mapping[str, float]) -> dict[str, np.ndarray]:
        """Parameter arrays indexed by group (runtime x precision)."""
        values = {**self.defaults(), **values}  # a profile written before a runtime existed lacks its group
        return {short: np.array([values[n] for n in names] if short != "builds" else
                                [[values[n] for n in row] + [1.0] for row in names], float)
                for short, names in self._layout.items()}

    def predict(self, values: Mapping[str, float], table: LayerTable) -> Prediction:
        g = self._group_values(values)
        group = table.case_columns["group"].astype(int)
        case_group = group[table.case]  # runtime x the case's precision; each layer swaps in its own kernels
        layer_group = case_group - case_group % len(PRECISIONS) + table["prec"]
        rates = np.stack([g[f"{c}_per_cycle"] for c in CLASSES], axis=1)[layer_group, table["cls"]]
        build = g["builds"][layer_group, table.case_columns["build"].astype(int)[table.case]]
        threads = table.per_layer_case("threads")
        speedup = 1.0 + (threads - 1.0) * g["parallel_efficiency"][layer_group]
        cycles_per_ms = table.per_layer_case("clock_ghz") * 1e6
        compute = table["work"] / (rates * build * speedup * cycles_per_ms)
        width = np.where(layer_group % len(PRECISIONS) == 1, BYTES["int8"], BYTES["fp32"])
        memory = (table["act"] * width / g["activation_gbps"][layer_group]
                  + table["weights"] * width / g["weight_gbps"][layer_group]) * 1e-6
        overhead = np.where(threads > 1, g["layer_overhead_mt_us"][layer_group],
                            g["layer_overhead_us"][layer_group]) * 1e-3 * (self.board.clock_ghz * 1e6 /
                                                                            cycles_per_ms) * table["count"]
        layer = compute + memory if self.combine == "sum" else np.maximum(compute, memory)
        return Prediction(layer + overhead, g["call_overhead_ms"][group], compute, memory)
