"""Networks named by a scheme rather than registered: any torchvision classifier, or the user's own factory.

A study names its teacher `torchvision:efficientnet_b0` or `mypackage.models:build_net`, with keyword arguments in
`[teacher.kwargs]`. A factory is imported only where the user opted in to their own code (`spaces.models.code_trust`): a
name read from a bundle, a run folder or a table is data. The name and the arguments together (`canonical_name`)
are the whole recipe for the network: every process, a Ray worker included, rebuilds the same network from that
string alone, and every place that builds networks by name (pruning facts, bit-width groups, students) works
unchanged. Nothing is downloaded: torchvision models are built with `weights=None`; the trained weights come from
the user's checkpoint.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torchvision
from torch import nn

from spaces.models.code_trust import check_factory
from spaces.models.code_trust import check_folder
from spaces.models.network import Architecture
from spaces.models.network import first_conv_for

KWARGS_MARK = "{"


def canonical_name(arch: str, kwargs: tuple[tuple[str, Any], ...] | dict[str, Any] = ()) -> str:
    """`arch`, followed by its keyword arguments as sorted JSON when there are any."""
    args = dict(kwargs)
    if not args:
        return arch
    return arch + json.dumps(args, sort_keys=True, separators=(",", ":"))


def split_name(name: str) -> tuple[str, dict[str, Any]]:
    if KWARGS_MARK not in name:
        return name, {}
    base, _, rest = name.partition(KWARGS_MARK)
    return base, json.loads(KWARGS_MARK + rest)


def add_code_path(folder: str | Path | None) -> None:
    """Make the user's own code importable (`--code DIR` / `[teacher] code`), in this process; only a folder the
    user trusted (`spaces.models.code_trust.grant`): a folder first on the import path can replace any module."""
    if not folder:
        return
    path = str(Path(folder).resolve())
    if not Path(path).is_dir():
        raise KeyError(f"code folder {folder} does not exist; give the folder that holds your package")
    check_folder(path)
    if path not in sys.path:
        sys.path.insert(0, path)


def _torchvision(model_name: str, kwargs: dict[str, Any]) -> Callable[[int, int], nn.Module]:
    known = torchvision.models.list_models(module=torchvision.models)
    if model_name not in known:
        close = [k for k in known if k.startswith(model_name[:4])][:8]
        raise KeyError(f"torchvision has no classification model {model_name!r}"
                       + (f"; similar: {', '.join(close)}" if close else "; see torchvision.models.list_models()"))

    def build(num_classes: int, in_channels: int) -> nn.Module:
        model = torchvision.models.get_model(model_name, weights=None, **{"num_classes": num_classes, **kwargs})
        return first_conv_for(model, in_channels)

    return build


def _factory(target: str, kwargs: dict[str, Any]) -> Callable[[int, int], nn.Module]:
    module_name, _, attr = target.partition(":")
    check_factory(target)  # before anything is imported: the module's own code runs on import
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise KeyError(f"cannot import {module_name!r} for architecture {target!r} ({err}); put the folder that "
                       "holds it on PYTHONPATH or pass --code DIR") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise KeyError(f"{module_name} has no callable {attr!r}; name a function or class that returns the network")
    params = inspect.signature(factory).parameters

    def build(num_classes: int, in_channels: int) -> nn.Module:
        extra = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels))
                 if k in params and k not in kwargs}
        model = factory(**kwargs, **extra)
        if not isinstance(model, nn.Module):
            raise TypeError(f"{target} returned {type(model).__name__}, not a torch.nn.Module")
        return model

    return build


INSTANCES: dict[str, nn.Module] = {}


def register_instance(model: nn.Module) -> str:
    """A name for a network handed over in memory (the Python API): building it gives a fresh copy, with
    the requested class count ignored (the model already has its head). It exists in this process only."""
    name = f"instance:{type(model).__name__}@{id(model):x}"
    INSTANCES[name.partition(":")[2]] = model
    return name


def _instance(key: str, kwargs: dict[str, Any]) -> Callable[[int, int], nn.Module]:
    if key not in INSTANCES:
        raise KeyError(f"model {key} was given in memory in another process; to run on Ray workers, save its "
                       "state_dict and name it in [teacher] checkpoint with its arch")
    model = INSTANCES[key]
    return lambda num_classes, in_channels: copy.deepcopy(model)


SCHEMES: dict[str, Callable[[str, dict[str, Any]], Callable[[int, int], nn.Module]]] = {
    "torchvision": _torchvision,
    "instance": _instance,
}


def factory_target(name: str) -> str | None:
    """`package.module:callable` of a name that imports the user's code (its keyword arguments dropped); None for
    registry names and the schemes this tool resolves itself (`torchvision:`, `instance:`)."""
    base, _, _ = name.partition(KWARGS_MARK)
    scheme, _, rest = base.partition(":")
    return base if rest and scheme not in SCHEMES else None


@functools.cache
def resolve(name: str) -> Architecture:
    """The Architecture behind a scheme name; raises KeyError with the fix when it cannot be built."""
    base, kwargs = split_name(name)
    scheme, _, rest = base.partition(":")
    if not rest:
        raise KeyError(f"architecture {name!r}: expected scheme:name, e.g. torchvision:resnet18 or mypkg.models:build")
    builder = SCHEMES[scheme](rest, kwargs) if scheme in SCHEMES else _factory(base, kwargs)
    return Architecture(name, builder, f"{base} (user-named)", default_resolution=224)
