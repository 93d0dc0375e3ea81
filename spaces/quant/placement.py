"""Place a scheme's extra quantizers in a fake-quantized network (tensor-level, from its traced data flow).

`spaces.quant.quantization.quantize_model` gives each quantized Conv/Linear an input and a weight quantizer. A
runtime like onnxruntime also requantizes conv outputs and residual Adds/Concats (`spaces.quant.scheme`), and
holds one scale per tensor: two layers reading one tensor read the same codes. `place_quantizers` reproduces
that on the PyTorch model, from a torch.fx trace of each module (blocks are traced on their own, so an Add
inside a torchvision block, which is no module, is found as the block's output):

- every quantized layer of the scheme's `output_layers` gets an `out_quant` (8 bits), except one of its
  `float_outputs` types whose output is the network's (the logits stay float); a ReLU/ReLU6 that alone
  consumes it (through a folded BatchNorm's Identity) is absorbed into it;
- every block a `BlockRule` matches gets an `out_quant` on its output (a forward hook: the Add is not a module);
- a layer whose input is already on a grid of the same width (a producer's `out_quant`, through max-pool,
  flatten, identity or a ReLU that cannot change it) has its `act_quant` tied to that grid.

The placement is a function of the network and its bit-widths only, so a bundle rebuilds the same quantizers
from its architecture before loading their saved scales. A module torch.fx cannot trace (data-dependent
control flow) keeps the layer-level quantizers, with an `out_quant` on each of its output layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from spaces.quant.fake_quant import QUANT_LAYERS
from spaces.quant.fake_quant import ActQuantizer
from spaces.quant.fake_quant import WeightQuantizer
from spaces.quant.scheme import CONTAINER_BITS
from spaces.quant.scheme import QuantScheme
from spaces.recipe import INT_BITS

_SHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, F.dropout}
_SHAPE_METHODS = {"flatten", "view", "reshape", "squeeze", "unsqueeze", "contiguous"}
_RELU_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6"}
_RELU_METHODS = {"relu": "relu", "relu_": "relu"}
_FOLDED = (nn.Identity, nn.Dropout)  # what sits between a conv and its activation once BN is folded


@dataclass(frozen=True)
class Grid:
    """A tensor held as a quantizer's codes: `non_negative` when its zero point is 0 by construction (an absorbed
    ReLU), `within_six` when its range is inside ReLU6's."""

    owner: ActQuantizer
    non_negative: bool = False
    within_six: bool = False


@dataclass
class Placement:
    """What `place_quantizers` added, by module path (for reports and tests)."""

    scheme: str
    outputs: list[str] = field(default_factory=list)  # layers with an out_quant
    absorbed: dict[str, str] = field(default_factory=dict)  # layer -> activation its out_quant absorbed
    blocks: list[str] = field(default_factory=list)  # blocks with an out_quant
    ties: dict[str, str] = field(default_factory=dict)  # layer -> the quantizer its act_quant is tied to
    untraced: list[str] = field(default_factory=list)  # modules torch.fx could not trace (fallback used)


def quantize_block_output(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook of a block with an output quantizer (module level: a quantized model pickles)."""
    return module.out_quant(output)


class _Tracer(torch.fx.Tracer):
    """Blocks of the scheme, quantized layers and quantizers are leaves: each block is analysed on its own."""

    def __init__(self, scheme: QuantScheme) -> None:
        super().__init__()
        self.scheme = scheme

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            isinstance(m, (*QUANT_LAYERS, ActQuantizer, WeightQuantizer))
            or self.scheme.is_block(m)
            or super().is_leaf_module(m, module_qualified_name)
        )


def integer_layer(module: nn.Module) -> bool:
    return (
        isinstance(module, QUANT_LAYERS) and module.weight_quant.bits in INT_BITS and module.act_quant.bits in INT_BITS
    )


def place_quantizers(model: nn.Module, scheme: QuantScheme) -> Placement:
    """Add `scheme`'s output quantizers and ties to a model whose layer quantizers are attached (in place)."""
    placer = _Placer(model, scheme)
    placer.run(model, "", None)
    return placer.placement


class _Placer:
    def __init__(self, model: nn.Module, scheme: QuantScheme) -> None:
        self.scheme = scheme
        self.placement = Placement(scheme=scheme.name)
        self.names: dict[int, str] = {}  # id(quantizer) -> its path, for the report

    def run(self, module: nn.Module, prefix: str, in_grid: Grid | None) -> Grid | None:
        try:
            graph = _Tracer(self.scheme).trace(module)
        except Exception:  # noqa: BLE001 - any tracing failure -> layer-level quantizers, outputs quantized
            return self._fallback(module, prefix)
        grids: dict[torch.fx.Node, Grid | None] = {}
        placeholders = 0
        for node in graph.nodes:
            if node.op == "placeholder":
                grids[node] = in_grid if placeholders == 0 else None
                placeholders += 1
            elif node.op == "output":
                result = node.args[0]
                return grids.get(result) if isinstance(result, torch.fx.Node) else None
            else:
                grids[node] = self._visit(node, module, prefix, grids)
        return None

    def _visit(
        self, node: torch.fx.Node, module: nn.Module, prefix: str, grids: dict[torch.fx.Node, Grid | None]
    ) -> Grid | None:
        first = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
        grid = grids.get(first) if first is not None else None
        if node.op == "call_module":
            sub = module.get_submodule(node.target)
            path = prefix + node.target
            if isinstance(sub, QUANT_LAYERS):
                return self._layer(node, module, sub, path, first, grids, top=not prefix)
            if self.scheme.is_block(sub):
                return self._block(sub, path, grid)
            if isinstance(sub, self.scheme.grid_preserving):
                return grid
            activation = self.scheme.absorbed.get(type(sub))
            return _through_activation(grid, activation) if activation else None
        if node.op == "call_function":
            if node.target in _SHAPE_FUNCTIONS:
                return grid
            return (
                _through_activation(grid, _RELU_FUNCTIONS.get(node.target)) if node.target in _RELU_FUNCTIONS else None
            )
        if node.op == "call_method":
            if node.target in _SHAPE_METHODS:
                return grid
            return _through_activation(grid, _RELU_METHODS.get(node.target)) if node.target in _RELU_METHODS else None
        return None

    def _layer(
        self,
        node: torch.fx.Node,
        module: nn.Module,
        layer: nn.Module,
        path: str,
        first: torch.fx.Node | None,
        grids: dict[torch.fx.Node, Grid | None],
        *,
        top: bool,
    ) -> Grid | None:
        aq = layer.act_quant
        grid = grids.get(first) if first is not None else None
        if grid is not None and grid.owner.bits == aq.bits and aq.bits in INT_BITS:
            aq.tie(grid.owner)
            self.placement.ties[path] = self.names.get(id(grid.owner), "?")
        elif first is not None and aq.bits in INT_BITS:
            grids[first] = Grid(aq)  # one scale per tensor: a later reader of this tensor ties to this one
            self.names[id(aq)] = f"{path}.act_quant"
        if not (isinstance(layer, self.scheme.output_layers) and integer_layer(layer)) or (
            top and isinstance(layer, self.scheme.float_outputs) and _is_network_output(node)
        ):
            return None
        activation = _absorbable(node, module, self.scheme)
        out = self._add_output(layer, path, activation)
        self.placement.outputs.append(path)
        if activation:
            self.placement.absorbed[path] = activation
        return Grid(out, non_negative=bool(activation), within_six=activation == "relu6")

    def _add_output(self, module: nn.Module, path: str, activation: str) -> ActQuantizer:
        existing = module._modules.get("out_quant")
        if existing is not None:  # placed before (a copy of a placed model): keep it
            self.names[id(existing)] = f"{path}.out_quant"
            return existing
        out = self.scheme.make_quantizer(CONTAINER_BITS)
        out.activation = activation
        module.out_quant = out
        self.names[id(out)] = f"{path}.out_quant"
        return out

    def _block(self, block: nn.Module, path: str, in_grid: Grid | None) -> Grid | None:
        inner = self.run(block, path + ".", in_grid)
        rule = self.scheme.block_rule(block)
        if rule is None:
            return inner
        had = "out_quant" in block._modules
        out = self._add_output(block, path, "")
        if not had:
            block.register_forward_hook(quantize_block_output)
        self.placement.blocks.append(path)
        return Grid(out, non_negative=rule.non_negative)

    def _fallback(self, module: nn.Module, prefix: str) -> None:
        self.placement.untraced.append(prefix.rstrip(".") or "<model>")
        for name, layer in module.named_modules():
            if isinstance(layer, self.scheme.output_layers) and integer_layer(layer):
                self._add_output(layer, prefix + name, "")
                self.placement.outputs.append(prefix + name)
        return None


def _is_network_output(node: torch.fx.Node) -> bool:
    """Whether a top-level node's value is the network's output, through shape-only operations."""
    current = node
    while len(current.users) == 1:
        user = next(iter(current.users))
        if user.op == "output":
            return True
        if not (
            user.op == "call_function"
            and user.target in _SHAPE_FUNCTIONS
            or user.op == "call_method"
            and user.target in _SHAPE_METHODS
        ):
            return False
        current = user
    return False


def _through_activation(grid: Grid | None, activation: str | None) -> Grid | None:
    """A ReLU leaves a zero-point-0 grid unchanged, a ReLU6 one whose range is inside [0, 6]; else float."""
    if grid is None or activation is None:
        return None
    keeps = grid.within_six if activation == "relu6" else grid.non_negative
    return grid if keeps else None


def _absorbable(node: torch.fx.Node, module: nn.Module, scheme: QuantScheme) -> str:
    """The activation that alone consumes a layer's output (through folded-BN Identities), or ''."""
    current = node
    while len(current.users) == 1:
        user = next(iter(current.users))
        if user.op == "call_module":
            sub = module.get_submodule(user.target)
            if isinstance(sub, _FOLDED):
                current = user
                continue
            return scheme.absorbed.get(type(sub), "")
        if user.op == "call_function" and user.target in _RELU_FUNCTIONS and len(user.args) == 1:
            return _RELU_FUNCTIONS[user.target]
        return ""
    return ""
