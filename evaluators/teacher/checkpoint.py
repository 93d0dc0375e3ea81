"""The user's trained teacher, read from their checkpoint file without trusting it.

A checkpoint comes from outside: it is read with `torch.load(weights_only=True)`, which refuses arbitrary
pickled objects. It may hold a bare state dict, the `{"state_dict": ...}` of Lightning, the `{"model": ...}`
of timm and many training scripts, with `module.` (DataParallel), `model.` (Lightning) or `_orig_mod.`
(torch.compile) prefixes; a whole pickled module is read only when the user's own study sets `allow_pickle`
(granted in `spaces.models.code_trust`: the same flag read from a run folder's config.json is refused). Every way
the file can fail to fit the network and the data is one line that says what to change.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spaces.models.code_trust import pickle_allowed
from spaces.validated import ConfigError

PREFIXES = ("module.", "model.", "_orig_mod.", "net.", "backbone.")
NESTED_KEYS = ("state_dict", "model", "model_state_dict", "net", "weights")


class CheckpointError(ConfigError):
    """The teacher checkpoint cannot be used as it is; the message says what to do."""


def read_checkpoint(path: Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, as a flat state dict."""
    if not path.is_file():
        raise CheckpointError(f"teacher checkpoint {path} does not exist; set [teacher] checkpoint to your .pt file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise CheckpointError(f"{path} is not a PyTorch checkpoint ({_first_line(err)}); save one with "
                                  "torch.save(model.state_dict(), path)") from None
        if not allow_pickle:
            raise CheckpointError(f"{path} holds pickled Python objects (a whole module?), which can run code when "
                                  "loaded; save model.state_dict() instead, or set [teacher] allow_pickle = true if "
                                  "you trust the file") from None
        if not pickle_allowed(path):
            raise CheckpointError(f"{path} holds pickled Python objects and allow_pickle was not set by you (it came "
                                  "from a file that is data); give your own study file with --study, or "
                                  "trust_code=True in the Python API") from None
        loaded = torch.load(path, map_location="cpu", weights_only=False)  # the user's explicit allow_pickle
    except Exception as err:  # noqa: BLE001 - whatever the unpickler trips on, the file is no checkpoint
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({_first_line(err)}); save one with "
                              "torch.save(model.state_dict(), path)") from None
    return _state_dict(loaded, path)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:160]


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in NESTED_KEYS:
            if key in obj:
                return _state_dict(obj[key], path)
        keys = ", ".join(map(str, list(obj)[:6]))
        raise CheckpointError(f"{path} holds a dict (keys: {keys}) with no state dict under "
                              f"{', '.join(NESTED_KEYS)}; save torch.save(model.state_dict(), path)")
    raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict or a module; save "
                          "torch.save(model.state_dict(), path)")


def _strip_prefixes(state: dict[str, torch.Tensor], wanted: set[str]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes (`module.`, `model.`, ...) while that makes more keys match the network's."""
    while True:
        matched = len(wanted & set(state))
        for prefix in PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                stripped = {k[len(prefix):]: v for k, v in state.items()}
                if len(wanted & set(stripped)) > matched:
                    state = stripped
                    break
        else:
            return state


def _names(keys: list[str], limit: int = 3) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_into(model: nn.Module, state: dict[str, torch.Tensor], *, path: Path, arch: str, num_classes: int,
              in_channels: int) -> None:
    """Load `state` into `model`, explaining a class-count, channel or key mismatch in one line."""
    own = model.state_dict()
    state = _strip_prefixes(state, set(own))
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = ([f"missing keys {_names(missing)}"] if missing else []) + \
                ([f"unexpected keys {_names(unexpected)}"] if unexpected else [])
        raise CheckpointError(f"{path} does not fit architecture {arch}: {'; '.join(parts)}; set [teacher] arch (and "
                              "kwargs) to the network the checkpoint was saved from")
    for key, tensor in own.items():
        got = state[key]
        if got.shape == tensor.shape:
            continue
        if tensor.ndim >= 1 and got.ndim == tensor.ndim and got.shape[0] != tensor.shape[0] \
                and tensor.shape[0] == num_classes and got.shape[1:] == tensor.shape[1:]:
            raise CheckpointError(f"{path}: class count mismatch: the checkpoint's {key} has {got.shape[0]} outputs "
                                  f"but the data has {num_classes} classes; use data with the classes the teacher "
                                  "was trained on")
        if tensor.ndim == 4 and got.ndim == 4 and got.shape[1] != tensor.shape[1] and tensor.shape[1] == in_channels:
            raise CheckpointError(f"{path}: input-channel mismatch: the checkpoint's {key} takes {got.shape[1]} "
                                  f"channels but the data has {in_channels}; set [data] channels = {got.shape[1]}")
        raise CheckpointError(f"{path} does not fit architecture {arch}: {key} is {tuple(got.shape)} in the checkpoint "
                              f"but {tuple(tensor.shape)} in the network; check [teacher] arch and kwargs")
    model.load_state_dict(state)


def check_outputs(model: nn.Module, *, path: Path, num_classes: int, in_channels: int, resolution: int) -> None:
    """One forward pass: the network must take the data's images and give one score per class."""
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, in_channels, resolution, resolution))
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the teacher cannot take {in_channels}x{resolution}x{resolution} images "
                              f"({_first_line(err)}); check [data] channels and resolution") from None
    if out.ndim != 2 or out.shape[1] != num_classes:
        raise CheckpointError(f"{path}: class count mismatch: the teacher gives {tuple(out.shape)[1:]} outputs but "
                              f"the data has {num_classes} classes; use data with the classes the teacher was "
                              "trained on")
