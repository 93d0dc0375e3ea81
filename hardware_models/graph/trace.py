"""Run a network once and record every layer with its shapes and its data flow.

Leaf modules are recorded by forward hooks; functional operations between them (residual adds, concats,
`x.mul(0.)`) by a `TorchFunctionMode`. Each recorded node knows which earlier nodes produced its inputs,
so `graph.py` can do what a deployment runtime does: drop branches that cannot affect the output and
fold batch norms into convolutions.

The forward runs on `meta` tensors: no arithmetic, no memory, no side effects on the real parameters or
batch-norm statistics. Slow meta kernels of cheap operations are skipped by computing the output shape
directly. Networks that need real values (data-dependent control flow) fall back to one real forward on a
copy of the network in eval mode.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from hardware_models.graph.ops import FUNCTION_KINDS
from hardware_models.graph.ops import IN_PLACE_NAMES
from hardware_models.graph.ops import Kind
from hardware_models.graph.ops import fast_output_shape
from hardware_models.graph.ops import is_zero_multiplication
from hardware_models.graph.ops import module_kind

# Functions that never create a data-flow edge worth recording.
_BOOKKEEPING = frozenset({"dim", "size", "numel", "_set_grad_enabled", "is_contiguous", "stride", "__len__",
                          "__bool__", "__format__", "element_size", "get_device", "is_floating_point"})


class UnsupportedLayerError(TypeError):
    """A layer or operation the cost models do not know; the message names it."""


@dataclass(frozen=True, slots=True)
class Layer:
    """One recorded operation. Shapes exclude the batch dimension (batch is 1)."""

    index: int
    name: str
    op: str
    kind: Kind
    inputs: tuple[int, ...]          # indices of the layers whose outputs this one reads
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    in_channels: int = 0
    out_channels: int = 0
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    groups: int = 1
    dilation: int = 1
    weights: int = 0
    macs: int = 0
    in_elements: int = 0
    out_elements: int = 0
    zero_multiplication: bool = False

    @property
    def out_hw(self) -> tuple[int, int]:
        return _spatial(self.out_shape)

    @property
    def in_hw(self) -> tuple[int, int]:
        return _spatial(self.in_shape)


def _spatial(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) >= 3:
        return shape[-2], shape[-1]
    return 1, 1


def _tensors(value: Any) -> list[torch.Tensor]:
    """Tensors in a value, its lists/tuples and dicts, two levels deep (enough for cat/split calls)."""
    if isinstance(value, torch.Tensor):
        return [value]
    found: list[torch.Tensor] = []
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for item in items:
        if isinstance(item, torch.Tensor):
            found.append(item)
        elif isinstance(item, (list, tuple, dict)):
            found.extend(_tensors(item))
    return found


def _to_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.device.type != "meta":
        return torch.empty(value.shape, dtype=value.dtype, device="meta")
    if isinstance(value, (list, tuple)):
        return type(value)(_to_meta(v) for v in value)
    return value


class _Tracer(TorchFunctionMode):
    """Records nodes; `meta=True` also keeps every operation on the meta device."""

    def __init__(self, meta: bool) -> None:
        super().__init__()
        self.meta = meta
        self.layers: list[Layer] = []
        self.producer: dict[int, int] = {}       # id(tensor) -> layer index
        self.keep: list[Any] = []                # keeps traced tensors alive so ids stay unique
        self.scope: list[str] = []               # names of the modules currently running
        self.leaf_depth = 0
        self.pending: list[torch.Tensor] = []   # inputs of the recorded module now running
        self.calls: dict[str, int] = {}

    # -- nodes -------------------------------------------------------------------------------------
    def unique(self, name: str) -> str:
        count = self.calls.get(name, 0)
        self.calls[name] = count + 1
        return name if count == 0 else f"{name}#{count + 1}"

    def add(self, name: str, op: str, kind: Kind, inputs: Sequence[torch.Tensor], output: Any,
            **attrs: Any) -> None:
        outputs = _tensors(output)
        if not outputs:
            return
        sources = tuple(dict.fromkeys(self.producer[id(t)] for t in inputs if id(t) in self.producer))
        in_shape = tuple(inputs[0].shape[1:]) if inputs else ()
        out_shape = tuple(outputs[0].shape[1:])
        attrs.setdefault("in_elements", sum(math.prod(t.shape[1:]) for t in inputs if id(t) in self.producer))
        attrs.setdefault("out_elements", sum(math.prod(t.shape[1:]) for t in outputs))
        layer = Layer(len(self.layers), self.unique(name), op, kind, sources, in_shape, out_shape, **attrs)
        self.layers.append(_with_macs(layer))
        for t in outputs:
            self.producer[id(t)] = layer.index
        self.keep.append((inputs, outputs))

    # -- functional operations ---------------------------------------------------------------------
    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        output = self._run(func, name, args, kwargs)
        if self.leaf_depth == 0:
            self._record(name, args, kwargs, output)
        return output

    def _run(self, func: Any, name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        if not self.meta:
            return func(*args, **kwargs)
        if name in IN_PLACE_NAMES or kwargs.get("inplace") is True:
            if args and isinstance(args[0], torch.Tensor):
                return args[0]
        shape = fast_output_shape(name, args, kwargs)
        if shape is not None:
            return torch.empty(shape, dtype=args[0].dtype, device="meta")
        return func(*_to_meta(tuple(args)), **{k: _to_meta(v) for k, v in kwargs.items()})

    def _record(self, name: str, args: Sequence[Any], kwargs: dict[str, Any], output: Any) -> None:
        if not isinstance(output, (torch.Tensor, list, tuple)) or name in _BOOKKEEPING:
            return
        producer = self.producer
        inputs = [t for t in _tensors(args) if id(t) in producer]
        if kwargs:
            inputs += [t for t in _tensors(kwargs) if id(t) in producer]
        if not inputs or not _tensors(output):
            return
        kind = FUNCTION_KINDS.get(name)
        where = f" in layer {self.scope[-1]!r}" if self.scope and self.scope[-1] else ""
        if kind is None:
            raise UnsupportedLayerError(f"unsupported operation torch.{name}{where}; the cost models know "
                                        f"{len(FUNCTION_KINDS)} functions (see hardware_models/graph/ops.py)")
        if name == "contiguous" and not inputs[0].is_contiguous():
            kind = Kind.COPY
        attrs = _function_attrs(kind, name, args)
        prefix = f"{self.scope[-1]}." if self.scope and self.scope[-1] else ""
        self.add(prefix + name, name, kind, inputs, output, **attrs)

    # -- modules -----------------------------------------------------------------------------------
    def hook(self, model: nn.Module) -> list[Any]:
        handles = []
        for name, module in model.named_modules():
            leaf = next(module.children(), None) is None
            # Registered types are atomic even with children (a QAT Conv2d owns its weight fake-quantizer).
            entry = module_kind(module)
            if leaf and entry is None and any(True for _ in module.parameters(recurse=False)):
                raise UnsupportedLayerError(
                    f"unsupported layer {name!r} ({type(module).__name__}); supported layer types are "
                    "convolutions, linear, pooling, batch norm, activations and identity-like layers")
            handles.append(module.register_forward_pre_hook(self._pre(name, entry is not None)))
            handles.append(module.register_forward_hook(self._post(name, entry)))
        return handles

    def _pre(self, name: str, recorded: bool) -> Any:
        def pre(module: nn.Module, args: Any) -> None:
            self.scope.append(name)
            if recorded:
                if self.leaf_depth == 0:
                    self.pending = [t for t in _tensors(args) if id(t) in self.producer]
                self.leaf_depth += 1

        return pre

    def _post(self, name: str, entry: Any) -> Any:
        def post(module: nn.Module, args: Any, output: Any) -> None:
            self.scope.pop()
            if entry is None:
                return
            self.leaf_depth -= 1
            if self.leaf_depth == 0 and self.pending:
                kind, rule = entry
                attrs = rule(module)
                if kind is Kind.CONV and attrs["groups"] == attrs["in_channels"] and attrs["groups"] > 1:
                    kind = Kind.DWCONV
                self.add(name, type(module).__name__, kind, self.pending, output, **attrs)

        return post


def _function_attrs(kind: Kind, name: str, args: Sequence[Any]) -> dict[str, Any]:
    if kind is Kind.CONV and len(args) > 1 and isinstance(args[1], torch.Tensor):
        w = args[1]
        groups = int(args[6]) if len(args) > 6 else 1
        stride = args[3] if len(args) > 3 else 1
        kind_attrs = {"in_channels": w.shape[1] * groups, "out_channels": w.shape[0], "groups": groups,
                      "kernel": (w.shape[-2], w.shape[-1]), "weights": w.numel()}
        kind_attrs["stride"] = (stride, stride) if isinstance(stride, int) else tuple(stride)
        return kind_attrs
    if kind is Kind.FC and len(args) > 1 and isinstance(args[1], torch.Tensor):
        w = args[1]
        if name == "linear":
            return {"in_channels": w.shape[-1], "out_channels": w.shape[0], "weights": w.numel()}
        return {"in_channels": w.shape[-2] if w.dim() > 1 else w.shape[0], "out_channels": w.shape[-1]}
    return {"zero_multiplication": is_zero_multiplication(name, args)}


def _with_macs(layer: Layer) -> Layer:
    """Multiply-accumulates of convolutions and matrix products (per sample)."""
    if layer.kind in (Kind.CONV, Kind.DWCONV):
        per_output = (layer.in_channels // max(layer.groups, 1)) * layer.kernel[0] * layer.kernel[1]
        return _replace(layer, macs=layer.out_elements * per_output)
    if layer.kind is Kind.FC:
        return _replace(layer, macs=layer.out_elements * layer.in_channels)
    return layer


def _replace(layer: Layer, **changes: Any) -> Layer:
    fields = {f: getattr(layer, f) for f in Layer.__dataclass_fields__}
    fields.update(changes)
    return Layer(**fields)


def trace_layers(model: nn.Module, input_shape: Sequence[int]) -> tuple[list[Layer], tuple[int, ...]]:
    """Record the layers of `model` for one input of shape C x H x W; returns (layers, output layers)."""
    try:
        return _trace(model, input_shape, meta=True)
    except UnsupportedLayerError:
        raise
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as meta_error:
        if any(p.device.type == "meta" for p in model.parameters()):
            raise RuntimeError(f"cannot trace {type(model).__name__} on the meta device: {meta_error}") \
                from meta_error
        clone = copy.deepcopy(model).eval()
        return _trace(clone, input_shape, meta=False)


def _trace(model: nn.Module, input_shape: Sequence[int], meta: bool) -> tuple[list[Layer], tuple[int, ...]]:
    tracer = _Tracer(meta)
    device = "meta" if meta else next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros((1, *input_shape), device=device)
    tracer.add("input", "input", Kind.INPUT, [], x)
    handles = tracer.hook(model)
    try:
        with torch.no_grad(), tracer:
            output = model(x)
    finally:
        for handle in handles:
            handle.remove()
    outputs = tuple(dict.fromkeys(tracer.producer[id(t)] for t in _tensors(output) if id(t) in tracer.producer))
    return tracer.layers, outputs
