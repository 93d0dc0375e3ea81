"""Xilinx DPUCZDX8G (B512..B4096) latency: per-layer cycles from the engine's fixed parallelism.

Each cycle a B4096 core computes 8 output pixels (along a row) x 16 input channels x 16 output
channels (PG338). A layer's ideal cycles therefore use channel counts rounded *up* to 16 and row widths
rounded up to 8 - which is why pruning 64 -> 60 channels saves nothing on this engine. With channel
augmentation (enabled in the reference designs) a layer with fewer than 16 input channels packs the
kernel width into the channel dimension (the RGB stem no longer wastes 13/16 of the array).

Depthwise convolutions and pooling do not use that array: they run on the ALU engine, and elementwise
operations on the eltwise engine, each ALU_PP pixels x ICP channels per cycle with ALU_PP = PP / 2 (PG338
v4.1 "DepthwiseConv (ALU)": depthwise conv runs on the ALU like pooling, ALU parallelism 1..PP, PP/2
recommended; Vitis AI's target_factory: DPUCZDX8G_ISA1_B4096 lists alu_engine and eltwise_engine with
pixel_parallel 4, B512 with 2). Depthwise and pooling therefore share one engine and one efficiency: a
network with depthwise layers is priced by what every network's pooling layers say about the ALU, not by a
depthwise factor that only MobileNets constrain (held out, that factor fell back to its prior and the
MobileNets were predicted 19-31% slow).

Per layer: time = max(compute, DDR traffic) + a fixed per-layer cost, because the DPU's LOAD, CONV and
SAVE engines run concurrently (a roofline), while each layer boundary drains the pipeline. The summed
form (compute + traffic, `combine="sum"`) was also fitted: it pins the conv engine at 100% of its peak
and predicts held-out rows worse (benchmarks/hardware_accuracy.py prints both), so the roofline stays. Fitted
parameters are cycle-count divisors per engine (conv, ALU, elementwise, fully connected), the DDR
bandwidth, the per-layer overhead and the fixed cost of one runtime call (VART C++; VART Python adds
its own). Latency is batch 1 on one core, as the thesis and the Model Zoo's single-thread FPS measure it.

Other sizes (B512..B3136) differ only in that parallelism (PG338 Table 1, read from data/dpu_facts.csv);
`dpu_config` builds any size / core count / clock, and a profile JSON names its configuration. Only
the ZCU104's 2 x B4096 @ 300 MHz has measurements: the engine efficiencies fitted there are assumed to
carry over, and estimate() widens the interval of every configuration that was never measured.
"""

from __future__ import annotations

import csv
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from hardware_models.estimators.costmodel import Case
from hardware_models.estimators.costmodel import CostModel
from hardware_models.estimators.costmodel import LayerTable
from hardware_models.estimators.costmodel import Prediction
from hardware_models.fitting.least_squares import ParamSpec
from hardware_models.graph.ops import Kind
from hardware_models.graph.trace import Layer


@dataclass(frozen=True, kw_only=True)
class DpuBoard:
    """A board's DPU configuration (PG338 and the Vitis AI reference designs; data/dpu_facts.csv)."""

    name: str
    arch: str
    clock_mhz: float
    cores: int
    pixel_parallelism: int = 8
    input_channel_parallelism: int = 16
    output_channel_parallelism: int = 16
    alu_pixel_parallelism: int = 4   # ALU (depthwise, pooling) and eltwise engines: PP / 2
    channel_augmentation: bool = True


@functools.cache
def dpu_archs() -> dict[str, tuple[int, int, int]]:
    """(pixel, input-channel, output-channel) parallelism of every DPUCZDX8G size (PG338 Table 1, dpu_facts.csv)."""
    text = resources.files("hardware_models").joinpath("data/dpu_facts.csv").read_text()
    return {row["key"]: (int(row["pixel_parallelism"]), int(row["input_channel_parallelism"]),
                         int(row["output_channel_parallelism"]))
            for row in csv.DictReader(text.splitlines()) if row["fact_group"] == "architecture"}


def dpu_config(name: str, arch: str, cores: int, clock_mhz: float) -> DpuBoard:
    """A DPU configuration: size (B512..B4096), core count and clock; parallelism from PG338."""
    archs = dpu_archs()
    if arch not in archs:
        raise KeyError(f"unknown DPU size {arch!r}; known: {', '.join(archs)}")
    if cores < 1 or clock_mhz <= 0:
        raise ValueError(f"a DPU needs at least one core and a positive clock, got {cores} cores @ {clock_mhz} MHz")
    pp, icp, ocp = archs[arch]
    return DpuBoard(name=name, arch=arch, clock_mhz=float(clock_mhz), cores=int(cores), pixel_parallelism=pp,
                    input_channel_parallelism=icp, output_channel_parallelism=ocp,
                    alu_pixel_parallelism=max(pp // 2, 1))


def config_of(board: DpuBoard) -> dict[str, Any]:
    """What a profile JSON stores to name its DPU configuration."""
    return {"name": board.name, "arch": board.arch, "cores": board.cores, "clock_mhz": board.clock_mhz}


def board_from(key: str, config: Mapping[str, Any]) -> DpuBoard:
    """The profile's configuration when it names one, else the registered board `key`."""
    if not config:
        return DPU_BOARDS[board_of(key)]
    return dpu_config(str(config.get("name", key)), str(config["arch"]), int(config["cores"]),
                      float(config["clock_mhz"]))


# Board configurations of dpu_facts.csv (board_dpu_config rows). Only the ZCU104 has latency measurements.
DPU_BOARDS: dict[str, DpuBoard] = {
    "zcu104": dpu_config("ZCU104", "B4096", 2, 300.0),
    "zcu102": dpu_config("ZCU102", "B4096", 3, 281.0),
    "kv260": dpu_config("KV260", "B4096", 1, 300.0),
    "ultra96": dpu_config("Ultra96", "B1600", 1, 287.0),
}

RUNTIMES = ("vart-python", "vart-cpp")
# Engines with their own cycle factor; depthwise convolution and pooling share the ALU.
ENGINES = ("conv", "alu", "eltwise", "fc")
# Operations the DPUCZDX8G executes itself; anything else is split off to the ARM cores by Vitis AI.
DPU_ACTIVATIONS = frozenset({"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_",
                             "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "clamp", "clamp_",
                             "ReLU", "ReLU6", "LeakyReLU", "Hardtanh", "Hardswish", "Hardsigmoid"})


def runtime_of(text: str) -> str:
    """Map a measurement table's runtime description to one of RUNTIMES."""
    return "vart-python" if "python" in text.lower() else "vart-cpp"


def board_of(text: str) -> str:
    key = text.strip().lower()
    if key not in DPU_BOARDS:
        raise KeyError(f"unknown DPU board {text!r}; known: {', '.join(sorted(DPU_BOARDS))}")
    return key


def _rows(board: DpuBoard, layer: Layer) -> tuple[int, float] | None:
    """(engine index in ENGINES, ideal cycles) of one executed layer, or None when the DPU does it for free."""
    pp, icp, ocp = board.pixel_parallelism, board.input_channel_parallelism, board.output_channel_parallelism
    h, w = layer.out_hw
    pixels = h * math.ceil(w / pp)
    alu_pixels = h * math.ceil(w / board.alu_pixel_parallelism)
    kh, kw = layer.kernel
    if layer.kind is Kind.CONV:
        g = max(layer.groups, 1)
        cin = layer.in_channels // g
        if board.channel_augmentation and cin < icp:
            per_pixel = kh * math.ceil(cin * kw / icp)
        else:
            per_pixel = kh * kw * math.ceil(cin / icp)
        return 0, g * per_pixel * math.ceil(layer.out_channels / g / ocp) * pixels
    if layer.kind is Kind.FC:  # one "pixel": 7 of the 8 pixel lanes idle; weights stream from DDR
        return 3, math.ceil(layer.in_channels / icp) * math.ceil(layer.out_channels / ocp)
    if layer.kind is Kind.DWCONV:  # ALU: one kernel tap of ALU_PP pixels x ICP channels per cycle
        return 1, kh * kw * math.ceil(layer.out_channels / icp) * alu_pixels
    channels = layer.out_shape[0] if len(layer.out_shape) >= 3 else max(layer.out_elements, 1)
    if layer.kind is Kind.POOL:  # ALU, like a depthwise convolution with a fixed kernel
        ih, iw = layer.in_hw
        if layer.kernel == (1, 1) and (ih, iw) != (h, w):
            kh, kw = max(ih // max(h, 1), 1), max(iw // max(w, 1), 1)
        return 1, kh * kw * math.ceil(channels / icp) * alu_pixels
    if layer.kind in (Kind.ELTWISE, Kind.ACT, Kind.BN):
        return 2, max(len(layer.inputs), 1) * math.ceil(channels / icp) * alu_pixels
    return None  # concat (written in place), copies and views


def _fused_into_eltwise(layer: Layer, layers: tuple[Layer, ...]) -> bool:
    """A ReLU-like activation right after an elementwise add: the DPU's elementwise engine applies it in the
    same pass (XIR's eltwise-fix op carries a `nonlinear` attribute: RELU, RELU6, LEAKYRELU...), so the
    ResNet block's post-add ReLU costs no second pass over the tensor."""
    if layer.kind is not Kind.ACT or layer.op not in DPU_ACTIVATIONS or len(layer.inputs) != 1:
        return False
    source = layers[layer.inputs[0]]
    return source.kind is Kind.ELTWISE and source.op.lstrip("_").startswith(("add", "radd", "iadd"))


class DpuModel(CostModel):
    family = "dpu"
    # Defaults are physical guesses, not fits (they are the weak prior of the calibration): ~80% conv
    # efficiency, the ALU and elementwise engines at half their PP/2 x ICP peak (the same per-element rate
    # as the earlier prior of a quarter of the 8-pixel array), 8 of the ZCU104's ~19 GB/s DDR4, a few
    # microseconds per layer, a fraction of a millisecond per runtime call.
    params = (
        ParamSpec("conv_cycle_factor", 1.25, 1.0, "x", "conv engine cycles / ideal cycles (1 = peak)"),
        ParamSpec("alu_cycle_factor", 2.0, 1.0, "x",
                  "ALU engine (depthwise conv, pooling) cycles / ideal cycles at PP/2 x ICP per cycle"),
        ParamSpec("eltwise_cycle_factor", 2.0, 1.0, "x", "elementwise engine cycles / ideal cycles"),
        ParamSpec("fc_cycle_factor", 1.25, 1.0, "x", "fully connected layer cycles / ideal cycles"),
        ParamSpec("ddr_gbps", 8.0, 0.0, "GB/s", "DDR bandwidth one core attains"),
        ParamSpec("layer_overhead_cycles", 2000.0, 0.0, "cycles", "pipeline fill/drain per layer"),
        ParamSpec("call_overhead_ms", 0.2, 0.0, "ms", "one VART execute_async+wait call (C++)"),
        ParamSpec("python_overhead_ms", 0.2, 0.0, "ms", "extra cost of the call from VART's Python API"),
        ParamSpec("memory_contention", 0.5, 0.0, "x", "share of DDR time added per extra busy core"),
    )

    def __init__(self, board: DpuBoard, combine: str = "max", boards: Mapping[str, DpuBoard] | None = None) -> None:
        if combine not in ("max", "sum"):
            raise ValueError(f"combine must be 'max' (roofline) or 'sum', not {combine!r}")
        self.board = board
        self.combine = combine
        self.boards = DPU_BOARDS if boards is None else boards

    def table(self, case: Case) -> LayerTable:
        board = self.boards.get(case.board, self.board)
        engine, cycles, traffic, names, kinds = [], [], [], [], []
        layers = case.network.layers
        for layer in case.network.computed():
            row = None if _fused_into_eltwise(layer, layers) else _rows(board, layer)
            if row is None:
                continue
            engine.append(row[0])
            cycles.append(row[1])
            traffic.append(layer.weights + layer.in_elements + layer.out_elements)  # INT8: one byte each
            names.append(layer.name)
            kinds.append(layer.kind.value)
        clock = case.clock_ghz * 1e3 if case.clock_ghz else board.clock_mhz
        return LayerTable(
            columns={"engine": np.array(engine, int), "cycles": np.array(cycles, float),
                     "bytes": np.array(traffic, float)},
            case=np.zeros(len(engine), int),
            case_columns={"clock_mhz": np.array([clock]), "cores": np.array([float(board.cores)]),
                          "python": np.array([1.0 if case.runtime == "vart-python" else 0.0])},
            names=tuple(names), kinds=tuple(kinds))

    def _layer_times(self, values: Mapping[str, float], table: LayerTable,
                     memory_scale: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        factors = np.array([values[f"{e}_cycle_factor"] for e in ENGINES])
        cycles_per_ms = table.per_layer_case("clock_mhz") * 1e3
        compute = table["cycles"] * factors[table["engine"]] / cycles_per_ms
        memory = table["bytes"] * memory_scale / (values["ddr_gbps"] * 1e6)
        overhead = values["layer_overhead_cycles"] / cycles_per_ms
        return compute, memory, overhead

    def predict(self, values: Mapping[str, float], table: LayerTable) -> Prediction:
        compute, memory, overhead = self._layer_times(values, table, 1.0)
        fixed = values["call_overhead_ms"] + values["python_overhead_ms"] * table.case_columns["python"]
        layer = np.maximum(compute, memory) if self.combine == "max" else compute + memory
        return Prediction(layer + overhead, fixed, compute, memory)

    def multi_core_fps(self, values: Mapping[str, float], table: LayerTable) -> np.ndarray:
        """Throughput with every core busy: host call overhead overlaps, DDR bandwidth is shared."""
        cores = table.case_columns["cores"]
        scale = 1.0 + values["memory_contention"] * (cores[table.case] - 1.0)
        compute, memory, overhead = self._layer_times(values, table, scale)
        per_image = np.bincount(table.case, np.maximum(compute, memory) + overhead, minlength=table.n_cases)
        return cores / np.maximum(per_image, 1e-9) * 1e3

    def group_params(self, key: str) -> list[int]:
        # memory_contention only affects multi-core throughput; it is fitted on fps_multi_thread.
        return [i for i, s in enumerate(self.params) if s.name != "memory_contention"]

    def unsupported(self, case: Case) -> list[str]:
        """Executed layers the DPU cannot run (Vitis AI would place them on the ARM cores)."""
        return [layer.name for layer in case.network.computed()
                if layer.kind is Kind.ACT and layer.op not in DPU_ACTIVATIONS]
