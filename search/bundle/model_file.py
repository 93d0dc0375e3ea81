"""A bundle's `model.pt`: the searched model as tensors + recipe, rebuilt without unpickling any code.

A bundle is a file from outside once it leaves the machine that wrote it, so it is read with
`torch.load(weights_only=True)`: only tensors and plain containers (`spaces.compress.model_record`; a run's F3
checkpoints are the same format). The network is rebuilt from its architecture name (the registry,
`torchvision:<name>`, or the user's `package.module:factory` where they opted in: `spaces.models.code_trust`),
reshaped to the channel counts the state dict holds (what pruning left), with the stem it was trained with (`stem`,
recorded because the bundle's input size need not be the training size the registry's rule picked it for; files
without it predate small stems and have torchvision's), with BatchNorms that were folded and residual blocks that
were removed turned into `nn.Identity`, and the recipe's fake quantizers attached at the recorded bit-widths, with
the quantization scheme's quantizers between layers (`quant_scheme`, placed from the rebuilt network as the search
placed them); then the state dict (weights, trained or calibrated scales) is loaded strictly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from spaces.compress.model_record import FORMAT
from spaces.compress.model_record import model_record
from spaces.models.architectures import create_model
from spaces.models.code_trust import grant
from spaces.models.network import Stem
from spaces.quant.quantization import attach_layer_quantizers
from spaces.quant.scheme import DEFAULT_SCHEME
from spaces.recipe import TEACHER
from spaces.recipe import Calibration
from spaces.recipe import Recipe

STALE = "bundles written before format 2 pickled the module: re-export them with search.export"
OUTDATED = "re-export it with search.export"


class BundleModelError(RuntimeError):
    """model.pt cannot be read or rebuilt; the message names the file and the fix."""


def save_model(path: Path, model: nn.Module, recipe: Recipe, *, network: str, input_shape: tuple[int, ...],
               num_classes: int, dataset: str, mean: tuple[float, ...], std: tuple[float, ...],
               quant_scheme: str = DEFAULT_SCHEME) -> None:
    torch.save({**model_record(model, recipe, network=network, input_shape=input_shape, num_classes=num_classes,
                               quant_scheme=quant_scheme),
                "dataset": dataset, "mean": list(mean), "std": list(std)}, path)


def read_model_file(path: Path, stale: str = STALE, outdated: str = OUTDATED) -> dict[str, Any]:
    """The tensors and plain values of a model file; `stale` says what to do with a file that pickled its module,
    `outdated` with a format-2 file (written before the quantizers between layers)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BundleModelError(f"{path}: no such file; give the model.pt of a bundle") from None
    except Exception as error:  # noqa: BLE001 - torch raises several types for a file it cannot read safely
        raise BundleModelError(f"{path}: not a tensors-only model file ({type(error).__name__}); {stale}") from None
    if isinstance(saved, dict) and saved.get("format") == 2:
        raise BundleModelError(f"{path}: a format-2 model file (no quantizers between layers: its int8 file ran "
                               f"mostly in float); {outdated} (format {FORMAT})")
    if not isinstance(saved, dict) or saved.get("format") != FORMAT or "state_dict" not in saved:
        raise BundleModelError(f"{path}: not a format-{FORMAT} model file; {stale}")
    return saved


def load_model(path: Path, *, teacher: str | None = None, trust_code: bool = False,
               stale: str = STALE, outdated: str = OUTDATED) -> tuple[nn.Module, Recipe]:
    """The model of a bundle or a run's F3 checkpoint (eval mode) and its recipe, from tensors only.

    `teacher` is the network a file's `teacher` stands for (a run's checkpoints record the recipe's student);
    `trust_code=True` lets the file's network be the caller's own `package.module:factory`
    (spaces.models.code_trust)."""
    saved = read_model_file(path, stale, outdated)
    recipe = Recipe.from_json(saved["recipe"])
    state: dict[str, torch.Tensor] = saved["state_dict"]
    network = str(saved["network"])
    network = teacher if network == TEACHER and teacher else network
    if trust_code:
        grant(factories=(network,))
    try:
        net = create_model(network, num_classes=int(saved["num_classes"]),
                           in_channels=int(saved["input_shape"][0]), stem=str(saved.get("stem", Stem.IMAGENET)))
    except (KeyError, ImportError, ValueError) as error:
        why = error.args[0] if error.args else error
        raise BundleModelError(f"{path}: cannot build its network {network!r} ({why})") from None
    _drop_absent(net, state)
    for name, module in list(net.named_modules()):
        _reshape(net, name, module, state)
    bits = {name: (int(w), int(a)) for name, (w, a) in saved["bit_widths"].items()}
    try:
        attach_layer_quantizers(net, bits, per_channel=recipe.quant.per_channel,
                                method=Calibration(recipe.quant.calibration),
                                scheme=str(saved.get("quant_scheme", DEFAULT_SCHEME)))
    except KeyError as error:
        raise BundleModelError(f"{path}: {error.args[0]}") from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise BundleModelError(f"{path}: the rebuilt {network} does not match the saved weights "
                               f"({str(error).splitlines()[0]})") from None
    return net.eval(), recipe


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _drop_absent(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Modules with weights of which the state dict holds nothing were folded (BN) or removed (blocks)."""
    prefixes = {key.rsplit(".", 1)[0] for key in state}
    kept = {p for key in prefixes for p in _ancestors(key)}
    for name, module in list(net.named_modules()):
        if name and _has_state(module) and name not in kept and _parent_kept(name, kept):
            net.set_submodule(name, nn.Identity())


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _parent_kept(name: str, kept: set[str]) -> bool:
    parent = name.rpartition(".")[0]
    return not parent or parent in kept


def _reshape(net: nn.Module, name: str, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give a Conv2d/Linear/BatchNorm2d the shape of its saved weights (what channel pruning left)."""
    weight = state.get(f"{name}.weight")
    has_bias = f"{name}.bias" in state
    if isinstance(module, nn.Conv2d) and weight is not None:
        out_ch, per_group = weight.shape[:2]
        depthwise = module.groups > 1 and module.groups == module.in_channels
        groups = out_ch if depthwise and per_group == 1 else module.groups
        if (tuple(weight.shape) != tuple(module.weight.shape) or has_bias != (module.bias is not None)):
            net.set_submodule(name, nn.Conv2d(per_group * groups, out_ch, module.kernel_size, module.stride,
                                              module.padding, module.dilation, groups, bias=has_bias,
                                              padding_mode=module.padding_mode))
    elif isinstance(module, nn.Linear) and weight is not None:
        if tuple(weight.shape) != tuple(module.weight.shape) or has_bias != (module.bias is not None):
            net.set_submodule(name, nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias))
    elif isinstance(module, nn.BatchNorm2d) and f"{name}.running_mean" in state:
        features = state[f"{name}.running_mean"].shape[0]
        if features != module.num_features:
            net.set_submodule(name, nn.BatchNorm2d(features, module.eps, module.momentum, module.affine,
                                                   module.track_running_stats))
