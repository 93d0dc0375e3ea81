"""Spec strings -> torch modules: `SCHEME:ARGUMENT`, one registered builder per scheme.

The calibration tables name their networks this way (see data/README.md), and the CLI takes the same
strings, so a measurement row and a command line resolve to exactly the same module.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from hardware_models.graph.networks import attach_thesis_head
from hardware_models.graph.zoo import mobilenet_v1
from hardware_models.graph.zoo import nb201_network
from hardware_models.registry import register_once

SchemeBuilder = Callable[[str], nn.Module]
SCHEMES: dict[str, SchemeBuilder] = {}

# torchvision networks whose auxiliary heads only exist for training; the deployed graph has none.
_NO_AUX = {"inception_v3", "googlenet"}


def register_scheme(name: str) -> Callable[[SchemeBuilder], SchemeBuilder]:
    def decorate(builder: SchemeBuilder) -> SchemeBuilder:
        register_once(SCHEMES, name, builder, "spec scheme")
        return builder

    return decorate


def list_schemes() -> list[str]:
    return sorted(SCHEMES)


def build_network(spec: str, *, device: str | torch.device = "cpu") -> nn.Module:
    """Build the network a spec string names, in eval mode; on `meta` no memory is allocated.

    Cost modelling only needs shapes, so the calibration builds on `meta` (a VGG-16 in milliseconds);
    the host target needs real weights and builds on `cpu`.
    """
    scheme, sep, argument = spec.partition(":")
    if not sep or not argument:
        raise ValueError(f"bad network spec {spec!r}: expected SCHEME:ARGUMENT, e.g. torchvision:resnet18")
    if scheme not in SCHEMES:
        raise KeyError(f"unknown network scheme {scheme!r} in {spec!r}; known schemes: {', '.join(list_schemes())}")
    try:
        with torch.device(device):
            model = SCHEMES[scheme](argument)
    except NotImplementedError:
        # A few builders compute their widths with tensors (RegNet), which `meta` cannot read back.
        if torch.device(device).type != "meta":
            raise
        model = SCHEMES[scheme](argument)
    return model.eval()


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    return text


def _parse_query(argument: str) -> tuple[str, dict[str, Any]]:
    name, _, query = argument.partition("?")
    kwargs: dict[str, Any] = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"bad option {item!r} in {argument!r}: expected key=value")
        kwargs[key] = _parse_value(value)
    return name, kwargs


@register_scheme("torchvision")
def _torchvision(argument: str) -> nn.Module:
    name, kwargs = _parse_query(argument)
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise KeyError(f"unknown torchvision classification model {name!r}; see torchvision.models.list_models()")
    if name in _NO_AUX:
        kwargs = {"aux_logits": False, "init_weights": False, **kwargs}
    return torchvision.models.get_model(name, weights=None, **kwargs)


@register_scheme("mobilenet_v1")
def _mobilenet_v1(argument: str) -> nn.Module:
    return mobilenet_v1(alpha=float(argument))


@register_scheme("nb201")
def _nb201(argument: str) -> nn.Module:
    return nb201_network(argument)


@functools.cache
def thesis_architectures() -> dict[str, Any]:
    """The packaged copy of thesis_architectures.json (exact pruned channel counts)."""
    text = resources.files("hardware_models").joinpath("data/thesis_architectures.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def _next_sibling_batchnorm(model: nn.Module, name: str) -> tuple[nn.Module, str] | None:
    """The BatchNorm registered right after `name` in its parent (conv1->bn1, Sequential[i]->[i+1])."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    names = [n for n, _ in parent.named_children()]
    index = names.index(child)
    if index + 1 < len(names) and isinstance(getattr(parent, names[index + 1]), nn.modules.batchnorm._BatchNorm):
        return parent, names[index + 1]
    return None


def _resize_layer(model: nn.Module, name: str, cin: int, cout: int) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = model.get_submodule(name)
    if isinstance(old, nn.Conv2d):
        cin = cin or old.in_channels
        groups = cin if old.groups == old.in_channels and old.groups > 1 else old.groups
        new: nn.Module = nn.Conv2d(cin, cout, old.kernel_size, old.stride, old.padding, old.dilation, groups,
                                   bias=old.bias is not None)
    elif isinstance(old, nn.Linear):
        new = nn.Linear(cin, cout, bias=old.bias is not None)
    else:
        raise TypeError(f"thesis layer {name!r} is a {type(old).__name__}, not Conv2d/Linear")
    setattr(parent, child, new)
    follower = _next_sibling_batchnorm(model, name)
    if follower is not None:
        bn_parent, bn_name = follower
        setattr(bn_parent, bn_name, nn.BatchNorm2d(cout) if isinstance(new, nn.Conv2d) else nn.BatchNorm1d(cout))


@register_scheme("thesis")
def _thesis(argument: str) -> nn.Module:
    networks = thesis_architectures()
    if argument not in networks:
        raise KeyError(f"unknown thesis network {argument!r}; known: {', '.join(sorted(networks))}")
    entry = networks[argument]
    base = build_network(entry["base"], device=torch.get_default_device())
    model = attach_thesis_head(base, entry["hidden"], entry["num_classes"])
    for name, (cin, cout) in entry["layers"].items():
        _resize_layer(model, name, int(cin), int(cout))
    return model


@register_scheme("onnx")
def _onnx(argument: str) -> nn.Module:
    """The layers of an ONNX file (a bundle's model.onnx or model_int8.onnx, pruned or not)."""
    from hardware_models.graph.onnx_network import OnnxNetwork

    if not Path(argument).is_file():
        raise FileNotFoundError(f"spec onnx:{argument}: no such file (in a measurement table the path is relative "
                                "to the table's folder: keep the CSV next to the bundle it measured)")
    return OnnxNetwork(argument)
