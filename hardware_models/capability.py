"""What a target really executes, and what a recipe becomes there: `deploy(capability, bits) -> Deployment`.

A recipe asks each layer for a (weight_bits, act_bits) pair; a board runs what its runtime has kernels for.
The rules, one per precision class a layer can ask for:

- integer codes (2..8 bits, weights and activations): every target here runs them with int8 kernels. A
  4-bit layer is stored and run as 8-bit (the thesis saw this on the ZCU104 DPU; ncnn, onnxruntime and
  qnnpack have no sub-byte kernels either), so it is costed at 8 bits and earns no speed or energy.
- fp16: native where the runtime has fp16 arithmetic (ncnn on the Pi 5's ARMv8.2 Cortex-A76); widened to
  fp32 where the CPU has none (the Pi 4's ARMv8.0 Cortex-A72, this machine's onnxruntime): deployable, but
  no faster than fp32. The DPU has no float datapath at all: refused.
- fp32: native on the CPUs. On the DPU a network that is float *everywhere* (quantization kind `none`) is
  what the standard Vitis AI flow starts from: `vai_q` quantizes all of it to INT8, so it deploys and runs as
  int8 (its accuracy was measured in fp32: the note says so). A float layer inside a quantized recipe is a
  choice the DPU cannot honour: Vitis AI would cut the graph there and run that layer on the ARM cores, with
  DDR round trips the DPU model does not cost - so the recipe is not deployable on the DPU.

"Deployable" therefore means: the whole network runs on the engine the target's cost model describes, at
the precision reported in `runs_as`. The same reasoning refuses DPU graphs with operators outside its
instruction set or beyond its kernel/stride/channel limits (UG1414 Table 1): they would be split as well.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from enum import StrEnum

from hardware_models.graph.executed import Network
from hardware_models.graph.ops import Kind
from hardware_models.graph.trace import Layer

# The integer arithmetic a target computes a quantized network with (`Capability.arithmetic`); the names are
# `spaces.quant.ptq_steps.Arithmetic`'s, which emulates each: onnxruntime's per-channel int8 and the DPU's
# power-of-two per-tensor int8 (vai_q's fix positions).
PER_CHANNEL = "per_channel"
POWER_OF_TWO = "dpu"
ARITHMETICS = (PER_CHANNEL, POWER_OF_TWO)

NO_WEIGHTS = "no weight layers"  # runs_as of a network without convolutions or linear layers
Bits = tuple[int, int]  # (weight_bits, act_bits), as spaces.quant.quantization.bit_widths gives them


class Precision(StrEnum):
    """What a layer executes at; the order of the members is the order of `runs_as` labels."""

    INT8 = "int8"
    FP16 = "fp16"
    FP32 = "fp32"

    @property
    def bits(self) -> int:
        return {"int8": 8, "fp16": 16, "fp32": 32}[self.value]


def requested(bits: Bits) -> Precision:
    """The precision class a layer asks for: integer only when weights *and* activations are integer codes
    (weight-only quantization still multiplies in float); otherwise the widest float of the two."""
    weight, act = bits
    if weight <= 8 and act <= 8:
        return Precision.INT8
    return Precision.FP32 if 32 in (weight, act) or max(weight, act) > 16 else Precision.FP16


@dataclass(frozen=True, kw_only=True)
class RuntimeSupport:
    """The precisions one runtime executes natively on one board, and the source of that claim."""

    runtime: str
    executes: frozenset[Precision]
    why: str

    def __post_init__(self) -> None:
        if not self.executes:
            raise ValueError(f"runtime {self.runtime!r} must execute at least one precision")


@dataclass(frozen=True, kw_only=True)
class OperatorLimits:
    """A fixed-function engine's operator set and shape limits (the DPUCZDX8G: Vitis AI UG1414 3.0, Table 1,
    column DPUCZDX8G_ISA1_B4096: channel_parallel 16, bank_depth 2048, conv2d kernel w,h in [1, 16], strides
    w,h in [1, 8], kernel_w * kernel_h * ceil(input_channel / channel_parallel) <= bank_depth,
    output_channel <= 256 * channel_parallel). Depthwise and pooling limits are not checked: not verified here."""

    activations: frozenset[str]
    channel_parallel: int = 16
    bank_depth: int = 2048
    kernel_max: int = 16
    stride_max: int = 8

    def __post_init__(self) -> None:
        if min(self.channel_parallel, self.bank_depth, self.kernel_max, self.stride_max) < 1:
            raise ValueError("operator limits must all be >= 1")

    def violations(self, network: Network) -> list[str]:
        """One line per executed layer the engine cannot run."""
        out = []
        for layer in network.computed():
            problem = self._problem(layer)
            if problem:
                out.append(f"{layer.name}: {problem}")
        return out

    def _problem(self, layer: Layer) -> str | None:
        if layer.kind is Kind.ACT and layer.op not in self.activations:
            return f"activation {layer.op!r} is not a DPU operation"
        if layer.kind is Kind.DWCONV and layer.out_channels > 256 * self.channel_parallel:
            return f"{layer.out_channels} output channels > {256 * self.channel_parallel}"
        if layer.kind is not Kind.CONV:
            return None
        kh, kw = layer.kernel
        sh, sw = layer.stride
        cin = layer.in_channels // max(layer.groups, 1)
        if max(kh, kw) > self.kernel_max:
            return f"kernel {kh}x{kw} > {self.kernel_max}"
        if max(sh, sw) > self.stride_max:
            return f"stride {sh}x{sw} > {self.stride_max}"
        if kh * kw * math.ceil(cin / self.channel_parallel) > self.bank_depth:
            return f"kernel {kh}x{kw} x {cin} input channels exceeds the weight bank ({self.bank_depth})"
        if layer.out_channels > 256 * self.channel_parallel:
            return f"{layer.out_channels} output channels > {256 * self.channel_parallel}"
        return None


@dataclass(frozen=True, kw_only=True)
class Capability:
    """What one target executes, as data (declared next to each target in `hardware_models.targets`).

    `fp16_fallback`: what an fp16 layer runs as where no runtime has fp16 kernels (None: refused).
    `float_network`: what a network that is float everywhere runs as when the target has no float
    datapath (the DPU: INT8, because Vitis AI quantizes it; None: it runs as it is).
    `arithmetic`: how the target's integer kernels quantize (one of `ARITHMETICS`): a study whose targets differ
    here scores each recipe's accuracy under each (`evaluators.candidate`, `accuracy_<target>`).
    """

    target: str
    runtimes: tuple[RuntimeSupport, ...]
    fp16_fallback: Precision | None = None
    float_network: Precision | None = None
    operators: OperatorLimits | None = None
    toolchain: str = ""  # what turns the recipe into the deployed model (named in notes and reasons)
    notes: tuple[str, ...] = ()
    arithmetic: str = PER_CHANNEL

    def __post_init__(self) -> None:
        if self.arithmetic not in ARITHMETICS:
            raise ValueError(f"{self.target}: arithmetic {self.arithmetic!r} is not one of {', '.join(ARITHMETICS)}")
        names = [r.runtime for r in self.runtimes]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"{self.target}: capabilities need at least one runtime, each listed once; got {names}")
        if self.fp16_fallback is Precision.FP16:
            raise ValueError(f"{self.target}: fp16_fallback must be another precision than fp16")

    def support(self, runtime: str) -> RuntimeSupport:
        for r in self.runtimes:
            if r.runtime == runtime.partition("@")[0]:
                return r
        raise KeyError(f"{self.target} has no capability entry for runtime {runtime!r}; known: "
                       f"{', '.join(r.runtime for r in self.runtimes)}")

    def native_bits(self, runtime: str) -> frozenset[int]:
        """Bit widths a recipe may ask for and get exactly that on this runtime: 8 for int8 (integer codes
        below 8 are widened), 16 for fp16, 32 for fp32 layers inside a quantized network."""
        return frozenset(p.bits for p in self.support(runtime).executes)

    def runs_float_network(self, runtime: str) -> bool:
        """A network left in fp32 (quantization kind none) deploys here, natively or re-quantized."""
        return Precision.FP32 in self.support(runtime).executes or self.float_network is not None


@dataclass(frozen=True, kw_only=True)
class Deployment:
    """A recipe on one target: whether it deploys, at what precision each layer really runs, and why."""

    target: str
    runtime: str
    deployable: bool
    runs_as: str  # "int8", "fp32", "int8/fp32", "fp16" ...; "" when not deployable
    reasons: tuple[str, ...] = ()  # why it does not deploy (empty when it does)
    notes: tuple[str, ...] = ()  # what the target changes (widened layers, re-quantization)
    effective: tuple[tuple[str, int, int], ...] = ()  # (layer, weight_bits, act_bits) as executed
    requested: tuple[tuple[str, int, int], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.deployable == bool(self.reasons):
            raise ValueError("a deployable result has no reasons; a refused one has at least one")

    @property
    def effective_bits(self) -> dict[str, Bits]:
        return {name: (w, a) for name, w, a in self.effective}

    def precision_map(self) -> dict[str, int]:
        """{layer: bits} for `estimate(..., precision=...)`: the widths the board executes, not the recipe's."""
        return {name: w for name, w, _ in self.effective}

    @property
    def reason(self) -> str:
        """One line for a trial's reason column: the first refusal and how many more there are."""
        if not self.reasons:
            return ""
        more = f" (and {len(self.reasons) - 1} more)" if len(self.reasons) > 1 else ""
        return f"not deployable on {self.target}: {self.reasons[0]}{more}"

    def widened(self) -> list[str]:
        """Layers that run at more weight bits than they asked for (sub-8-bit as int8, fp16 as fp32)."""
        asked = {name: w for name, w, _ in self.requested}
        return [name for name, w, _ in self.effective if asked.get(name, w) < w]


def deploy(capability: Capability, bits: Mapping[str, Bits], *, runtime: str, float_network: bool = False,
           network: Network | None = None) -> Deployment:
    """`bits` (per layer, as `spaces.quant.quantization.bit_widths` gives them) on `capability` with `runtime`.

    `float_network`: the recipe leaves the whole network unquantized (kind `none`), which a target without
    a float datapath may re-quantize as its toolchain does. `network`, when given, is checked against the
    target's operator limits.
    """
    support = capability.support(runtime)
    reasons: list[str] = []
    runs: dict[str, Precision] = {}
    for name, pair in bits.items():
        target, why = _layer_precision(capability, support, requested(pair), float_network)
        if target is None:
            reasons.append(f"{name} ({pair[0]}/{pair[1]}-bit): {why}")
        else:
            runs[name] = target
    if network is not None and capability.operators is not None:
        reasons += capability.operators.violations(network)
    order = [p for p in Precision if p in set(runs.values())]
    deployable = not reasons
    return Deployment(target=capability.target, runtime=support.runtime, deployable=deployable,
                      runs_as=("/".join(p.value for p in order) or NO_WEIGHTS) if deployable else "",
                      reasons=tuple(reasons), notes=_notes(capability, support, bits, runs, float_network),
                      effective=tuple((n, p.bits, p.bits) for n, p in runs.items()) if deployable else (),
                      requested=tuple((n, w, a) for n, (w, a) in bits.items()))


def _notes(capability: Capability, support: RuntimeSupport, bits: Mapping[str, Bits], runs: Mapping[str, Precision],
           float_network: bool) -> tuple[str, ...]:
    """What the target changes about the recipe: re-quantization, widened layers."""
    notes = []
    if float_network and capability.float_network is not None and bits:
        notes.append(f"the float network is quantized to {capability.float_network.value} by "
                     f"{capability.toolchain or 'the target toolchain'}; its accuracy was measured in fp32")
    low = [n for n, (w, a) in bits.items() if w < 8 and a <= 8]
    if low:
        notes.append(f"{len(low)} sub-8-bit layers run as int8 on {capability.target}: no faster and no less "
                     "energy than 8-bit (only the stored size can shrink)")
    halves = [n for n, p in runs.items() if requested(bits[n]) is Precision.FP16 and p is not Precision.FP16]
    if halves:
        notes.append(f"{len(halves)} fp16 layers run as {runs[halves[0]].value} on {capability.target} "
                     f"({support.runtime} has no fp16 kernels there): no faster than fp32")
    return (*notes, *capability.notes)


def _layer_precision(capability: Capability, support: RuntimeSupport, asked: Precision,
                     float_network: bool) -> tuple[Precision | None, str]:
    """What one layer runs as (None: refused) and, when refused, why."""
    if asked in support.executes:
        return asked, ""
    if asked is Precision.FP16 and capability.fp16_fallback in support.executes:
        return capability.fp16_fallback, ""
    if asked is Precision.FP32 and float_network and capability.float_network in support.executes:
        return capability.float_network, ""
    executes = ", ".join(p.value for p in Precision if p in support.executes)
    if asked is Precision.FP32:
        return None, (f"a float layer in a quantized network; {capability.target} ({support.runtime}) executes "
                      f"only {executes} ({capability.toolchain or 'its toolchain'} would run it on the CPU beside it, "
                      "which is not costed)")
    return None, f"{capability.target} ({support.runtime}) executes only {executes}"
