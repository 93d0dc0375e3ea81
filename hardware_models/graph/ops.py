"""What each torch operation is, for cost modelling: a registry of module types and function names.

Hardware cost depends on the kind of work (a dense convolution, a depthwise one, a pooling window, an
elementwise pass over memory), not on the Python class, so every supported operation maps to one
`Kind`. Modules are looked up along their MRO (a QAT `Conv2d` subclass is a convolution); functions by
name. Anything else that carries tensors is rejected with an error naming it, rather than silently costed
as zero.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import torch
import torchvision
from torch import nn

from hardware_models.graph.zoo import Zero


class Kind(enum.StrEnum):
    INPUT = "input"
    CONV = "conv"            # dense or grouped convolution
    DWCONV = "dwconv"        # depthwise convolution (groups == in_channels)
    FC = "fc"                # fully connected / matrix multiply
    POOL = "pool"            # max / average / global pooling, spatial means
    ELTWISE = "eltwise"      # binary elementwise arithmetic (residual add, SE scaling)
    ACT = "act"              # unary activation / normalisation that is not folded
    BN = "bn"                # batch norm: folded into the preceding conv on deployment
    CONCAT = "concat"        # channel concatenation
    COPY = "copy"            # a real memory copy (e.g. channel shuffle's contiguous())
    ZERO = "zero"            # multiplies by zero: cannot affect the output
    FREE = "free"            # views, identity, dropout at inference, flatten


# Activations that every target fuses into the preceding convolution (a clamp on the accumulator).
FUSIBLE_ACTIVATIONS = frozenset({"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_",
                                 "clamp", "clamp_", "clip", "ReLU", "ReLU6", "LeakyReLU", "Hardtanh"})

_FUNCTION_KINDS: dict[Kind, tuple[str, ...]] = {
    Kind.ELTWISE: ("add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__rsub__",
                   "__isub__", "mul", "mul_", "__mul__", "__rmul__", "__imul__", "div", "div_", "__truediv__",
                   "__itruediv__", "maximum", "minimum"),
    Kind.ACT: ("relu", "relu_", "relu6", "hardtanh", "hardtanh_", "hardswish", "hardswish_", "hardsigmoid",
               "hardsigmoid_", "sigmoid", "sigmoid_", "silu", "silu_", "gelu", "tanh", "tanh_", "leaky_relu",
               "leaky_relu_", "elu", "elu_", "softmax", "log_softmax", "clamp", "clamp_", "clip", "mish",
               "layer_norm", "group_norm", "instance_norm", "local_response_norm"),
    Kind.BN: ("batch_norm",),
    Kind.POOL: ("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "mean", "amax"),
    Kind.CONCAT: ("cat", "concat", "concatenate", "stack"),
    Kind.CONV: ("conv2d",),
    Kind.FC: ("linear", "matmul", "mm", "addmm", "bmm", "__matmul__"),
    Kind.COPY: ("clone",),
    Kind.FREE: ("view", "reshape", "flatten", "squeeze", "unsqueeze", "permute", "transpose", "t", "__getitem__",
                "chunk", "split", "unbind", "narrow", "expand", "expand_as", "view_as", "reshape_as", "dropout",
                "dropout2d", "alpha_dropout", "feature_alpha_dropout", "detach", "to", "float", "type_as",
                "contiguous", "__get__", "requires_grad_", "identity", "unflatten"),
}
FUNCTION_KINDS: dict[str, Kind] = {name: kind for kind, names in _FUNCTION_KINDS.items() for name in names}
IN_PLACE_NAMES = frozenset(n for n in FUNCTION_KINDS if (n.endswith("_") and not n.startswith("__"))
                           or n.startswith("__i"))

ModuleRule = Callable[[nn.Module], dict[str, Any]]
MODULE_KINDS: dict[type, tuple[Kind, ModuleRule]] = {}


def register_module_kind(kind: Kind, *types: type) -> Callable[[ModuleRule], ModuleRule]:
    """Register the attribute extractor of a leaf module type (decorator)."""

    def decorate(rule: ModuleRule) -> ModuleRule:
        for t in types:
            MODULE_KINDS[t] = (kind, rule)
        return rule

    return decorate


def module_kind(module: nn.Module) -> tuple[Kind, ModuleRule] | None:
    for cls in type(module).__mro__:
        if cls in MODULE_KINDS:
            return MODULE_KINDS[cls]
    return None


def _pair(value: int | Sequence[int] | None, default: int = 1) -> tuple[int, int]:
    if value is None:
        return default, default
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[-1])


@register_module_kind(Kind.CONV, nn.Conv2d)
def _conv(m: nn.Module) -> dict[str, Any]:
    assert isinstance(m, nn.Conv2d)
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel": _pair(m.kernel_size),
            "stride": _pair(m.stride), "groups": m.groups, "dilation": _pair(m.dilation)[0],
            "weights": m.weight.numel()}


@register_module_kind(Kind.CONV, torch.ao.nn.quantized.Conv2d)
def _quantized_conv(m: nn.Module) -> dict[str, Any]:
    """Converted int8 modules keep their weight behind a method, not a Parameter."""
    weight = m.weight()  # type: ignore[operator]
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel": _pair(m.kernel_size),
            "stride": _pair(m.stride), "groups": m.groups, "dilation": _pair(m.dilation)[0],
            "weights": weight.numel()}


@register_module_kind(Kind.FC, torch.ao.nn.quantized.Linear)
def _quantized_linear(m: nn.Module) -> dict[str, Any]:
    weight = m.weight()  # type: ignore[operator]
    return {"in_channels": m.in_features, "out_channels": m.out_features, "weights": weight.numel()}


@register_module_kind(Kind.FC, nn.Linear)
def _linear(m: nn.Module) -> dict[str, Any]:
    assert isinstance(m, nn.Linear)
    return {"in_channels": m.in_features, "out_channels": m.out_features, "weights": m.weight.numel()}


@register_module_kind(Kind.POOL, nn.MaxPool2d, nn.AvgPool2d)
def _pool(m: nn.Module) -> dict[str, Any]:
    kernel = getattr(m, "kernel_size", 1)
    stride = getattr(m, "stride", None) or kernel
    return {"kernel": _pair(kernel), "stride": _pair(stride)}


@register_module_kind(Kind.POOL, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
def _adaptive_pool(m: nn.Module) -> dict[str, Any]:
    return {}  # window follows from the input and output sizes


@register_module_kind(Kind.BN, nn.BatchNorm1d, nn.BatchNorm2d, torchvision.ops.FrozenBatchNorm2d)
def _batch_norm(m: nn.Module) -> dict[str, Any]:
    return {}


@register_module_kind(Kind.ACT, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
                      nn.SiLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.ELU, nn.Mish, nn.Softmax, nn.LogSoftmax,
                      nn.PReLU, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
def _activation(m: nn.Module) -> dict[str, Any]:
    return {}


@register_module_kind(Kind.FREE, nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.Flatten,
                      nn.Unflatten, torchvision.ops.StochasticDepth, torch.ao.quantization.QuantStub,
                      torch.ao.quantization.DeQuantStub, torch.ao.quantization.FakeQuantizeBase,
                      torch.ao.quantization.ObserverBase, torch.ao.nn.quantized.Quantize,
                      torch.ao.nn.quantized.DeQuantize)
def _free(m: nn.Module) -> dict[str, Any]:
    return {}


@register_module_kind(Kind.ZERO, Zero)
def _zero(m: nn.Module) -> dict[str, Any]:
    return {}


def is_zero_multiplication(name: str, args: Sequence[Any]) -> bool:
    """`x.mul(0.)` / `x * 0`: the NAS-Bench-201 `none` edge written as a function call."""
    if name not in ("mul", "mul_", "__mul__", "__rmul__", "__imul__"):
        return False
    return any(isinstance(a, (int, float)) and a == 0 for a in args)


def _pool_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    rounding = math.ceil if ceil_mode else math.floor
    out = int(rounding((size + 2 * padding - kernel) / stride)) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def fast_output_shape(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Size | None:
    """Output shape of cheap operations without running them (meta kernels of these are slow in Python)."""
    first = args[0] if args else None
    if not isinstance(first, torch.Tensor):
        return None
    kind = FUNCTION_KINDS.get(name)
    if kind in (Kind.ACT, Kind.BN) or name in ("dropout", "dropout2d", "clone"):
        return first.shape
    if kind is Kind.ELTWISE:
        other = args[1] if len(args) > 1 else kwargs.get("other")
        return torch.broadcast_shapes(first.shape, other.shape) if isinstance(other, torch.Tensor) else first.shape
    if name in ("adaptive_avg_pool2d", "adaptive_max_pool2d"):
        out = _pair(args[1] if len(args) > 1 else kwargs["output_size"])
        return torch.Size((*first.shape[:-2], *(o or s for o, s in zip(out, first.shape[-2:], strict=True))))
    if name in ("max_pool2d", "avg_pool2d"):
        return _window_shape(name, first, args, kwargs)
    return None


def _window_shape(name: str, x: torch.Tensor, args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Size | None:
    order = ("kernel_size", "stride", "padding", "dilation", "ceil_mode") if name == "max_pool2d" \
        else ("kernel_size", "stride", "padding", "ceil_mode")
    options = dict(zip(order, args[1:], strict=False))
    options.update({k: v for k, v in kwargs.items() if k in order})
    if _pair(options.get("dilation"))[0] != 1:
        return None
    kernel = _pair(options["kernel_size"])
    stride = _pair(options.get("stride") or kernel)
    padding = _pair(options.get("padding"), 0)
    ceil_mode = bool(options.get("ceil_mode", False))
    windows = zip(x.shape[-2:], kernel, stride, padding, strict=True)
    sizes = [_pool_size(s, k, st, p, ceil_mode) for s, k, st, p in windows]
    return torch.Size((*x.shape[:-2], *sizes))
