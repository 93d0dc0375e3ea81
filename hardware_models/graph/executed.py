"""What a deployment runtime actually executes: dead-code elimination, constant folding, fusion.

A compiler for the DPU (Vitis AI), ncnn, TFLite or onnxruntime does not execute a graph literally:
- an operation whose result cannot reach the output is removed (e.g. a NAS-Bench-201 cell node that no
  edge reads, or everything upstream of a `none` edge that is the only way to the output);
- `x * 0` is a constant zero, and adding a zero is the identity;
- an operation whose inputs are all constants is folded at compile time;
- batch norm after a convolution is folded into its weights, and a ReLU-like clamp is fused into the
  convolution's output stage.
Every layer gets one status: computed, fused, identity, removed (dead) or folded (constant).
"""

from __future__ import annotations

import enum
import functools
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from hardware_models.graph.ops import FUSIBLE_ACTIVATIONS
from hardware_models.graph.ops import Kind
from hardware_models.graph.trace import Layer
from hardware_models.graph.trace import trace_layers


class Status(enum.StrEnum):
    COMPUTED = "computed"
    FUSED = "fused"          # folded batch norm / fused activation: no separate pass
    IDENTITY = "identity"    # e.g. an add whose other terms are all zero
    REMOVED = "removed"      # cannot reach the output
    FOLDED = "folded"        # does not depend on the input: a compile-time constant
    FREE = "free"            # views, flatten, identity, dropout


class _Value(enum.Enum):
    LIVE = "live"
    CONST = "const"
    ZERO = "zero"


_ZERO_PRESERVING = (Kind.FREE, Kind.COPY, Kind.CONCAT, Kind.POOL)
_COSTLESS = (Kind.INPUT, Kind.FREE)


@dataclass(frozen=True, kw_only=True)
class GraphPolicy:
    """Which graph optimisations the deployment runtime applies (all of them by default).

    `literal` (no folding, no dead-code elimination; `none` edges still skipped) and `no_fold` exist
    because some measurement pipelines evidently ran ops on all-zero tensors; a profile may pick the
    policy its data support (see calibrate.py).
    """

    fold_constants: bool = True
    remove_dead: bool = True


POLICIES: dict[str, GraphPolicy] = {
    "optimised": GraphPolicy(fold_constants=True, remove_dead=True),
    "no_fold": GraphPolicy(fold_constants=False, remove_dead=True),
    "literal": GraphPolicy(fold_constants=False, remove_dead=False),
}


@dataclass(frozen=True)
class Network:
    """The layers of one network for one input shape, with what a runtime does with each."""

    input_shape: tuple[int, ...]
    layers: tuple[Layer, ...]
    status: tuple[Status, ...]
    output_is_constant: bool
    outputs: tuple[int, ...] = ()
    policy: str = "optimised"

    def computed(self) -> list[Layer]:
        return [layer for layer, s in zip(self.layers, self.status, strict=True) if s is Status.COMPUTED]

    @property
    def macs(self) -> int:
        """MACs the runtime executes (after removing dead and constant work)."""
        return sum(layer.macs for layer in self.computed())

    @property
    def macs_literal(self) -> int:
        """MACs of every convolution and linear layer, as a FLOP counter would report them."""
        return sum(layer.macs for layer in self.layers)

    @property
    def weights(self) -> int:
        return sum(layer.weights for layer in self.computed())


def _value_of(layer: Layer, values: Sequence[_Value], fold: bool = True) -> _Value:
    if layer.kind is Kind.INPUT:
        return _Value.LIVE
    inputs = [values[i] for i in layer.inputs]
    if layer.kind is Kind.ZERO or layer.zero_multiplication or (
            layer.kind is Kind.ELTWISE and layer.op.startswith(("mul", "__mul", "__rmul", "__imul"))
            and _Value.ZERO in inputs):
        return _Value.ZERO
    if layer.kind is Kind.ELTWISE and layer.op.lstrip("_").startswith(("add", "radd", "iadd", "sub", "isub")):
        inputs = [v for v in inputs if v is not _Value.ZERO]
        if not inputs:
            return _Value.ZERO
    if _Value.LIVE in inputs:
        return _Value.LIVE
    if inputs and all(v is _Value.ZERO for v in inputs) and layer.kind in _ZERO_PRESERVING:
        return _Value.ZERO
    if not fold and inputs:
        return _Value.LIVE  # the runtime does not know the input is constant: it computes the op
    return _Value.CONST


def _needed(layers: Sequence[Layer], values: Sequence[_Value], outputs: Sequence[int]) -> list[bool]:
    needed = [False] * len(layers)
    stack = [i for i in outputs if values[i] is _Value.LIVE]
    while stack:
        i = stack.pop()
        if needed[i]:
            continue
        needed[i] = True
        stack.extend(j for j in layers[i].inputs if values[j] is _Value.LIVE)
    return needed


def _base_status(layer: Layer, value: _Value, needed: bool, live_inputs: int) -> Status:
    if value is not _Value.LIVE:
        return Status.FOLDED
    if not needed:
        return Status.REMOVED
    if layer.kind in _COSTLESS:
        return Status.FREE
    if layer.kind is Kind.ELTWISE and live_inputs <= 1 and layer.op.lstrip("_").startswith(("add", "radd",
                                                                                               "iadd")):
        return Status.IDENTITY  # the other terms were zero (or the operand is a folded constant bias)
    return Status.COMPUTED


def _through_free(layers: Sequence[Layer], status: list[Status], consumers: dict[int, int], source: Layer) -> Layer:
    """The producer behind a chain of free single-use layers: a BN folded into its conv leaves an nn.Identity
    between the conv and its ReLU, and the ReLU still fuses into the conv on deployment."""
    while status[source.index] is Status.FREE and len(source.inputs) == 1 and consumers.get(source.index, 0) == 1:
        source = layers[source.inputs[0]]
    return source


def _fuse(layers: Sequence[Layer], status: list[Status]) -> None:
    """Fold BN into the conv it follows, and fuse clamp-like activations into the conv (or folded BN)."""
    consumers: dict[int, int] = {}
    for layer, s in zip(layers, status, strict=True):
        if s in (Status.COMPUTED, Status.IDENTITY, Status.FREE):
            for i in layer.inputs:
                consumers[i] = consumers.get(i, 0) + 1
    for layer in layers:
        if status[layer.index] is not Status.COMPUTED or len(layer.inputs) != 1:
            continue
        source = _through_free(layers, status, consumers, layers[layer.inputs[0]])
        if consumers.get(source.index, 0) != 1 or status[source.index] not in (Status.COMPUTED, Status.FUSED):
            continue
        conv_like = source.kind in (Kind.CONV, Kind.DWCONV, Kind.FC)
        if layer.kind is Kind.BN and conv_like:
            status[layer.index] = Status.FUSED
        elif layer.kind is Kind.ACT and layer.op in FUSIBLE_ACTIVATIONS and (conv_like or (
                source.kind is Kind.BN and status[source.index] is Status.FUSED)):
            status[layer.index] = Status.FUSED


def analyse(layers: Sequence[Layer], outputs: Sequence[int], input_shape: Sequence[int],
            policy: str = "optimised") -> Network:
    rules = POLICIES[policy]
    values: list[_Value] = []
    for layer in layers:
        values.append(_value_of(layer, values, rules.fold_constants))
    needed = _needed(layers, values, outputs) if rules.remove_dead else [v is _Value.LIVE for v in values]
    status = [_base_status(layer, values[layer.index], needed[layer.index],
                           sum(values[i] is _Value.LIVE for i in layer.inputs)) for layer in layers]
    _fuse(layers, status)
    constant = not any(values[i] is _Value.LIVE for i in outputs)
    return Network(tuple(input_shape), tuple(layers), tuple(status), constant, tuple(outputs), policy)


def with_policy(network: Network, policy: str) -> Network:
    """The same traced layers under another runtime policy (cheap: no re-tracing)."""
    if policy not in POLICIES:
        raise KeyError(f"unknown graph policy {policy!r}; known: {', '.join(POLICIES)}")
    if policy == network.policy:
        return network
    return analyse(network.layers, network.outputs, network.input_shape, policy)


# -- cached extraction -----------------------------------------------------------------------------
_CACHE: OrderedDict[tuple, Network] = OrderedDict()
_CACHE_SIZE = 256
_SCALARS = (bool, int, float, str, tuple, type(None))


def _module_signature(module: nn.Module) -> tuple:
    attributes = tuple(sorted((k, v) for k, v in vars(module).items()
                              if not k.startswith("_") and k != "training" and isinstance(v, _SCALARS)))
    shapes = tuple((k, tuple(p.shape)) for k, p in module._parameters.items() if p is not None)
    return type(module).__qualname__, attributes, shapes


def signature(model: nn.Module, input_shape: Sequence[int]) -> tuple:
    """Everything the traced graph depends on: module types, their configuration, parameter shapes."""
    return tuple(input_shape), tuple((name, _module_signature(m)) for name, m in model.named_modules())


def extract(model: nn.Module, input_shape: Sequence[int], *, use_cache: bool = True) -> Network:
    """Layers and runtime statuses of `model` at C x H x W; cached by structure (search trials repeat)."""
    shape = tuple(int(s) for s in input_shape)
    key = signature(model, shape) if use_cache else None
    if key is not None and key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    layers, outputs = trace_layers(model, shape)
    network = analyse(layers, outputs, shape)
    if key is not None:
        _CACHE[key] = network
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return network


@functools.lru_cache(maxsize=64)
def extract_spec(spec: str, input_shape: tuple[int, ...]) -> Network:
    """Layers of a spec-string network (built on the meta device: no weights are allocated)."""
    from hardware_models.graph.specs import build_network

    return extract(build_network(spec, device="meta"), input_shape, use_cache=False)


def parse_input(text: str) -> tuple[int, ...]:
    """`3x224x224` -> (3, 224, 224)."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"bad input shape {text!r}: expected CxHxW, e.g. 3x224x224") from None
    if not shape or any(s <= 0 for s in shape) or math.prod(shape) == 0:
        raise ValueError(f"bad input shape {text!r}: expected positive CxHxW, e.g. 3x224x224")
    return shape
