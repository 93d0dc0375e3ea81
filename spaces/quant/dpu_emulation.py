"""A float network transformed into what the ZCU104's DPU computes (torch.fx), with inspectable fix positions.

`emulate(model)` folds BatchNorm into the convolutions, traces the network and returns a GraphModule that
computes the DPU's arithmetic (`spaces.quant.dpu_arithmetic`):
- the input, every weight and bias, and every tensor the DPU requantizes get a fix-point quantizer: the output
  of each convolution / linear layer, of each residual add (its own fix position) and of each average pool;
  where a ReLU / ReLU6 follows one of these, the quantizer sits after it (the DPU fuses the activation and
  requantizes once);
- a concatenation has one fix position: the quantizers of its inputs are the concatenation's own (vai_q makes
  the producers write at the concat's position), as in SqueezeNet's fire modules;
- max pooling, flattening, dropout (eval) and standalone ReLUs pass codes through unchanged;
- average pooling uses the DPU's 1/area factor; LeakyReLU, hard-sigmoid and hard-swish their DPU versions.

`calibrate(emulated, batches)` sets every fix position on the calibration split (weights and biases from their
values, activations per batch and modal, as vai_q), then lowers each bias position to the accumulator's.
`fix_positions(emulated)` names every quantized tensor and its position. Modules keep the float model's names
(`layer1.0.conv1`), so per-layer tools (`spaces.quant.bias_correction`, `spaces.quant.adaround`) pair them by name.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from spaces.quant.dpu_arithmetic import FixCalibration
from spaces.quant.dpu_arithmetic import FixQuantizer
from spaces.quant.dpu_arithmetic import RoundMode
from spaces.quant.dpu_arithmetic import bias_fix_pos
from spaces.quant.dpu_arithmetic import code_range
from spaces.quant.dpu_arithmetic import dpu_avg_pool
from spaces.quant.dpu_arithmetic import dpu_global_avg_pool
from spaces.quant.dpu_arithmetic import dpu_hardsigmoid
from spaces.quant.dpu_arithmetic import dpu_hardswish
from spaces.quant.dpu_arithmetic import dpu_leaky_relu
from spaces.quant.dpu_arithmetic import fix_pos_for
from spaces.quant.quantization import fold_batchnorm

QUANT_PREFIX = "dpu_q_"  # names of the activation quantizers the transform adds to the GraphModule
ADDS = (operator.add, operator.iadd, torch.add)
CATS = (torch.cat, torch.concat)
RELUS = (nn.ReLU, nn.ReLU6)
RELU_FUNCTIONS = (F.relu, F.relu6, torch.relu)


@dataclass(frozen=True, kw_only=True)
class DpuConfig:
    """Bit-widths and calibration of the DPU arithmetic; the defaults are what the ZCU104 runs."""

    weight_bits: int = 8
    act_bits: int = 8
    bias_bits: int = 8
    method: FixCalibration = FixCalibration.DIFFS
    bias_constraint: bool = True  # lower each bias position to the accumulator's (weight + input)

    def __post_init__(self) -> None:
        for name in ("weight_bits", "act_bits", "bias_bits"):
            code_range(getattr(self, name), narrow=True)
        object.__setattr__(self, "method", FixCalibration(self.method))


# --- layers ------------------------------------------------------------------------------------------------


class _FixParameters:
    """The weight and bias as the DPU stores them (mixed into the layer classes)."""

    weight_quant: FixQuantizer
    bias_quant: FixQuantizer

    def fixed_parameters(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.weight_quant(self.weight), None if self.bias is None else self.bias_quant(self.bias)


class DpuConv2d(_FixParameters, nn.Conv2d):
    """A Conv2d whose weight and bias pass through fix-point quantizers (class swapped in place)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, *self.fixed_parameters())


class DpuLinear(_FixParameters, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, *self.fixed_parameters())


DPU_LAYERS: dict[type[nn.Module], type[nn.Module]] = {nn.Conv2d: DpuConv2d, nn.Linear: DpuLinear}
DPU_LAYER_TYPES = tuple(DPU_LAYERS.values())


class DpuAvgPool2d(nn.Module):
    """AvgPool2d / AdaptiveAvgPool2d(1) with the DPU's 1/area factor."""

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.pool, nn.AdaptiveAvgPool2d):
            return dpu_global_avg_pool(x)
        return dpu_avg_pool(x, self.pool.kernel_size, self.pool.stride, self.pool.padding)


class DpuFunction(nn.Module):
    """An activation replaced by its DPU version (hard-swish, hard-sigmoid, LeakyReLU)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return DPU_FUNCTIONS[self.name](x)

    def extra_repr(self) -> str:
        return self.name


DPU_FUNCTIONS = {"hardswish": dpu_hardswish, "hardsigmoid": dpu_hardsigmoid, "leaky_relu": dpu_leaky_relu}
DPU_MODULES: dict[type[nn.Module], str] = {
    nn.Hardswish: "hardswish",
    nn.Hardsigmoid: "hardsigmoid",
    nn.LeakyReLU: "leaky_relu",
}


def _is_global_pool(pool: nn.Module) -> bool:
    """AvgPool2d, or an AdaptiveAvgPool2d to 1x1 (the only adaptive pool the DPU runs)."""
    if not isinstance(pool, nn.AdaptiveAvgPool2d):
        return True
    size = pool.output_size
    return size in (1, (1, 1), [1, 1])


def _to_one(node: torch.fx.Node) -> bool:
    size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
    return size in (1, (1, 1), [1, 1])


@dataclass
class _Builder:
    gm: torch.fx.GraphModule
    config: DpuConfig
    inputs: dict[str, str] = field(default_factory=dict)  # layer -> the quantizer of its input

    def module(self, node: torch.fx.Node) -> nn.Module | None:
        return self.gm.get_submodule(node.target) if node.op == "call_module" else None

    def swap_layers(self) -> None:
        for node in self.gm.graph.nodes:
            module = self.module(node)
            if type(module) in DPU_LAYERS:
                module.__class__ = DPU_LAYERS[type(module)]
                c = self.config
                module.weight_quant = FixQuantizer(
                    c.weight_bits, round_mode=RoundMode.STD, narrow=True, method=c.method
                )
                module.bias_quant = FixQuantizer(c.bias_bits, round_mode=RoundMode.STD, narrow=True, method=c.method)
            elif isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)) and _is_global_pool(module):
                self.gm.set_submodule(node.target, DpuAvgPool2d(module))
            elif type(module) in DPU_MODULES:
                self.gm.set_submodule(node.target, DpuFunction(DPU_MODULES[type(module)]))
            elif node.op == "call_function" and node.target is F.adaptive_avg_pool2d and _to_one(node):
                node.target, node.args, node.kwargs = dpu_global_avg_pool, node.args[:1], {}

    def requantizes(self, node: torch.fx.Node) -> bool:
        module = self.module(node)
        if module is not None:
            return isinstance(module, (*DPU_LAYER_TYPES, DpuAvgPool2d, DpuFunction))
        return node.op == "call_function" and (
            node.target in ADDS
            or node.target in CATS
            or node.target in (dpu_global_avg_pool, F.adaptive_avg_pool2d, F.avg_pool2d)
        )

    def fused_activation(self, node: torch.fx.Node) -> torch.fx.Node:
        """The ReLU/ReLU6 that consumes `node` alone (the DPU requantizes after it), else `node` itself. A folded
        BatchNorm's `nn.Identity` between them is looked through, as vai_q fuses conv + BN + ReLU."""
        while len(node.users) == 1:
            user = next(iter(node.users))
            module = self.module(user)
            if isinstance(module, nn.Identity):
                node = user
                continue
            if not (isinstance(module, RELUS) or (user.op == "call_function" and user.target in RELU_FUNCTIONS)):
                break
            node = user
        return node

    def add_quantizer(self, after: torch.fx.Node, round_mode: RoundMode = RoundMode.HALF_UP) -> torch.fx.Node:
        name = QUANT_PREFIX + after.name
        self.gm.add_submodule(
            name, FixQuantizer(self.config.act_bits, round_mode=round_mode, method=self.config.method)
        )
        with self.gm.graph.inserting_after(after):
            quant = self.gm.graph.call_module(name, (after,))
        after.replace_all_uses_with(quant, delete_user_cb=lambda user: user is not quant)
        return quant

    def insert_quantizers(self) -> None:
        for node in list(self.gm.graph.nodes):
            if node.op == "placeholder":
                self.add_quantizer(node, RoundMode.STD)
            elif self.requantizes(node):
                self.add_quantizer(self.fused_activation(node))

    def share_concat_positions(self) -> None:
        """Each concat input that feeds only the concat is written at the concat's fix position."""
        for node in self.gm.graph.nodes:
            if node.op != "call_function" or node.target not in CATS:
                continue
            out = next(iter(node.users))
            for arg in node.args[0]:
                if self.is_quantizer(arg) and len(arg.users) == 1:
                    arg.target = out.target
        self.gm.delete_all_unused_submodules()

    def is_quantizer(self, node: object) -> bool:
        return (
            isinstance(node, torch.fx.Node) and node.op == "call_module" and isinstance(self.module(node), FixQuantizer)
        )

    def input_quantizer(self, node: torch.fx.Node) -> str | None:
        """The quantizer whose codes reach `node` through pass-through ops (max pool, flatten, dropout)."""
        while isinstance(node, torch.fx.Node):
            if self.is_quantizer(node):
                return node.target
            if not node.args:
                return None
            node = node.args[0]
        return None

    def record_inputs(self) -> None:
        for node in self.gm.graph.nodes:
            if isinstance(self.module(node), DPU_LAYER_TYPES) and node.args:
                source = self.input_quantizer(node.args[0])
                if source is not None:
                    self.inputs[node.target] = source


def emulate(model: nn.Module, config: DpuConfig | None = None) -> torch.fx.GraphModule:
    """A BN-folded, traced copy of `model` that computes the DPU's arithmetic once `calibrate`d. The float model
    is not modified. Raises a one-line error naming the problem where the network cannot be traced."""
    config = config or DpuConfig()
    folded = fold_batchnorm(model).eval()
    try:
        gm = torch.fx.symbolic_trace(folded)
    except Exception as err:  # noqa: BLE001 - any tracing failure is the same problem for the user
        raise ValueError(
            f"cannot trace {type(model).__name__} for the DPU emulation ({type(err).__name__}: "
            f"{err}); the network's forward must be traceable by torch.fx"
        ) from None
    builder = _Builder(gm, config)
    builder.swap_layers()
    builder.insert_quantizers()
    builder.share_concat_positions()
    builder.record_inputs()
    gm.graph.lint()
    gm.recompile()
    gm.dpu_inputs = dict(builder.inputs)
    gm.dpu_config = config
    return gm.eval()


# --- calibration and inspection ----------------------------------------------------------------------------------


def layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, DPU_LAYER_TYPES)}


def activation_quantizers(model: nn.Module) -> dict[str, FixQuantizer]:
    return {name: m for name, m in model.named_children() if name.startswith(QUANT_PREFIX)}


@torch.no_grad()
def calibrate_parameters(model: nn.Module) -> None:
    """Weight and bias fix positions from their values (no data needed)."""
    for layer in layers(model).values():
        for quant, tensor in ((layer.weight_quant, layer.weight), (layer.bias_quant, layer.bias)):
            if tensor is not None:
                quant.set_fix_pos(
                    fix_pos_for(tensor, quant.bits, quant.method, round_mode=quant.round_mode, narrow=quant.narrow)
                )


@torch.no_grad()
def calibrate(model: torch.fx.GraphModule, batches: Iterable[torch.Tensor | tuple[torch.Tensor, ...]]) -> None:
    """Every fix position of an `emulate`d model, from the calibration split only.

    Weights and biases first (from their values); then the activations observe the batches with quantized
    weights and float activations, one fix position per batch, the modal one kept; then biases are lowered to
    their accumulator's position where the config says so.
    """
    model.eval()
    calibrate_parameters(model)
    quantizers = activation_quantizers(model)
    for q in quantizers.values():
        q.observing, q.seen = True, []
    seen = 0
    try:
        for batch in batches:
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
            seen += 1
    finally:
        for q in quantizers.values():
            q.observing = False
    if seen == 0:
        raise ValueError("calibrate() got no batches; pass the calibration split")
    for q in quantizers.values():
        q.finish()
    if model.dpu_config.bias_constraint:
        constrain_biases(model)


def constrain_biases(model: torch.fx.GraphModule) -> None:
    for name, layer in layers(model).items():
        source = model.dpu_inputs.get(name)
        if layer.bias is not None and source is not None:
            position = bias_fix_pos(
                layer.bias_quant.position(), layer.weight_quant.position(), model.get_submodule(source).position()
            )
            layer.bias_quant.set_fix_pos(position)


def fix_positions(model: nn.Module) -> dict[str, int]:
    """Every quantized tensor's fix position: `<layer>.weight`, `<layer>.bias`, and `dpu_q_<node>` for the
    activations (named after the traced node they follow: `dpu_q_x` is the input, `dpu_q_add` a residual add)."""
    out: dict[str, int] = {}
    for name, layer in layers(model).items():
        out[f"{name}.weight"] = layer.weight_quant.position()
        if layer.bias is not None:
            out[f"{name}.bias"] = layer.bias_quant.position()
    out.update({name: q.position() for name, q in activation_quantizers(model).items()})
    return out


def set_fix_positions(model: nn.Module, positions: dict[str, int]) -> None:
    """Load positions from `fix_positions` (a file, a QAT export); every name must exist in the model."""
    quantizers = {f"{n}.weight": m.weight_quant for n, m in layers(model).items()}
    quantizers.update({f"{n}.bias": m.bias_quant for n, m in layers(model).items() if m.bias is not None})
    quantizers.update(activation_quantizers(model))
    unknown = sorted(set(positions) - set(quantizers))
    if unknown:
        raise KeyError(
            f"no quantized tensor named {', '.join(unknown[:5])}; known: {', '.join(sorted(quantizers)[:8])}..."
        )
    for name, position in positions.items():
        quantizers[name].set_fix_pos(int(position))
