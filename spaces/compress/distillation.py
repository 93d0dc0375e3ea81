"""Distillation losses: Hinton's soft logits and FitNets' feature hints, as `train()` loss functions.

Everything learnable that a loss owns (the FitNets adapters) is created once, in `setup_distillation`, and
returned as `extra_params` for the optimizer: the thesis's code built its adapters inside the batch loop,
so they were re-initialised every step and never trained.

Teacher logits and augmentation. Logit distillation is the common case and the teacher (ResNet-50) costs
more per image than most students, so its logits are cached on disk, per training image, keyed by the
teacher's weights and the exact training images. A cached logit is only right for the un-augmented image,
so: without augmentation (the default budget: short fine-tunes gain little from it) logits come from the
cache, computed once per image the first time it is seen; with augmentation the teacher runs on each
augmented batch. Feature distillation always runs the teacher (it needs its feature maps anyway).
The cache finds a batch's images through their indices, which the training set carries as labels
(`indexed`), so cached steps stay exactly reproducible and resumable like any other.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from evaluators.data.batches import Batcher
from evaluators.data.datasets import ImageSet
from evaluators.data.files import atomic_save
from evaluators.training.loop import LossFn
from spaces.recipe import Distillation
from spaces.recipe import DistillKind

# The last feature map before global pooling (the hidden layer for the MLP): FitNets' hint and guided layers.
HINT_LAYERS: dict[str, str] = {
    "resnet18": "layer4", "resnet50": "layer4", "mobilenet_v2": "features",
    "squeezenet1_0": "features", "squeezenet1_1": "features", "small_cnn": "10", "mlp": "4",
}


def default_pairs(student_arch: str, teacher_arch: str) -> tuple[tuple[str, str], ...]:
    """The (student layer, teacher layer) pair FitNets-style distillation matches for registered networks."""
    missing = [a for a in (student_arch, teacher_arch) if a not in HINT_LAYERS]
    if missing:
        raise KeyError(f"no hint layer known for {missing[0]!r}; known: {', '.join(sorted(HINT_LAYERS))}")
    return ((HINT_LAYERS[student_arch], HINT_LAYERS[teacher_arch]),)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.: KL(teacher || student) of temperature-softened outputs, times T^2 to keep gradients level."""
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    q = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * temperature**2


def hinton_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                distill: Distillation) -> torch.Tensor:
    soft = kd_loss(student_logits, teacher_logits, distill.temperature)
    return distill.alpha * soft + (1.0 - distill.alpha) * F.cross_entropy(student_logits, labels)


class FeatureTap:
    """Forward hooks keeping the latest output of named modules (features for the hint loss)."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.names, self.outputs = names, {}
        self.handles = [model.get_submodule(n).register_forward_hook(self._keep(n)) for n in names]

    def _keep(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            self.outputs[name] = output
        return hook

    def take(self) -> list[torch.Tensor]:
        """The outputs of the last forward pass, in `names` order (and forget them)."""
        return [self.outputs.pop(n) for n in self.names]

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _match(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring both features to one shape family: common spatial size, or vectors when either is flat."""
    if student.dim() != 4 or teacher.dim() != 4:
        flat = [t.flatten(2).mean(2) if t.dim() == 4 else t.flatten(1) for t in (student, teacher)]
        return flat[0], flat[1]
    size = (min(student.shape[2], teacher.shape[2]), min(student.shape[3], teacher.shape[3]))
    return F.adaptive_avg_pool2d(student, size), F.adaptive_avg_pool2d(teacher, size)


def make_adapter(student: torch.Tensor, teacher: torch.Tensor) -> nn.Module:
    """FitNets' regressor: a 1x1 convolution (a linear map for flat features) onto the teacher's channels."""
    s, t = _match(student, teacher)
    if s.dim() == 4:
        return nn.Conv2d(s.shape[1], t.shape[1], kernel_size=1, bias=False)
    return nn.Linear(s.shape[1], t.shape[1], bias=False)


def hint_loss(adapters: nn.ModuleList, student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    losses = []
    for adapter, s, t in zip(adapters, student, teacher, strict=True):
        s, t = _match(s, t)
        losses.append(F.mse_loss(adapter(s), t.detach()))
    return torch.stack(losses).mean()


# --- teacher logits, cached per training image ---------------------------------------------------------------

_DIGESTS: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def weights_digest(model: nn.Module, *, memo: bool = True) -> str:
    """sha256 of every tensor in the state dict.

    Memoized per module by default (teachers are never modified); `memo=False` for a network that is still
    being changed in place (a student between pruning and quantization), whose digest must be recomputed.
    """
    if memo and model in _DIGESTS:
        return _DIGESTS[model]
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    if memo:
        _DIGESTS[model] = h.hexdigest()
    return h.hexdigest()


def data_digest(data: ImageSet, resolution: int) -> str:
    h = hashlib.sha256(str(resolution).encode())
    h.update(data.digest())
    h.update(data.labels.contiguous().numpy().tobytes())
    return h.hexdigest()


def indexed(data: ImageSet) -> ImageSet:
    """The same images with their positions as labels, so a loss can look up per-image cached values."""
    return ImageSet(data.images, torch.arange(len(data)))


class LogitCache:
    """Teacher logits of un-augmented training images, filled lazily and kept on disk between runs."""

    def __init__(self, teacher: nn.Module, data: ImageSet, batcher: Batcher, cache_dir: Path | None) -> None:
        self.teacher, self.labels = teacher, data.labels
        key = hashlib.sha256((weights_digest(teacher) + data_digest(data, batcher.resolution)).encode())
        self.path = None if cache_dir is None else Path(cache_dir) / "teacher_logits" / f"{key.hexdigest()[:24]}.pt"
        self.logits: torch.Tensor | None = None
        self.known = torch.zeros(len(data), dtype=torch.bool)
        self.dirty = False
        if self.path is not None and self.path.exists():
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
            if saved["known"].shape == self.known.shape:
                self.logits, self.known = saved["logits"], saved["known"]

    @torch.no_grad()
    def get(self, index: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits for the images at `index` (whose normalized, un-augmented pixels are `x`)."""
        missing = ~self.known[index]
        if missing.any():
            self.teacher.eval()
            fresh = self.teacher(x[missing]).float().cpu()
            if self.logits is None:
                self.logits = torch.zeros(len(self.known), fresh.shape[1])
            self.logits[index[missing]] = fresh
            self.known[index[missing]] = True
            self.dirty = True
        return self.logits[index].to(x.device)

    def save(self) -> None:
        if self.path is not None and self.dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_save({"logits": self.logits, "known": self.known}, self.path)
            self.dirty = False


# --- losses for train() ----------------------------------------------------------------------------------------

@dataclass
class DistillSetup:
    """A loss for `train()`, the parameters it owns, the training set to pass, and what to close afterwards."""

    loss_fn: LossFn
    extra_params: list[nn.Parameter]
    data: ImageSet
    closers: list[Callable[[], None]]
    adapters: nn.ModuleList | None = None

    def close(self) -> None:
        for close in self.closers:
            close()


def _plain(distill: Distillation, student: nn.Module, teacher: nn.Module, data: ImageSet, batcher: Batcher,
           augment: bool, cache_dir: Path | None) -> DistillSetup:
    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y)
    return DistillSetup(loss, [], data, [])


def _logit(distill: Distillation, student: nn.Module, teacher: nn.Module, data: ImageSet, batcher: Batcher,
           augment: bool, cache_dir: Path | None) -> DistillSetup:
    if augment:  # augmented images have no cached logits: run the teacher on each batch
        def live(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                target = teacher.eval()(x)
            return hinton_loss(model(x), target, y, distill)
        return DistillSetup(live, [], data, [])
    cache = LogitCache(teacher, data, batcher, cache_dir)

    def cached(model: nn.Module, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return hinton_loss(model(x), cache.get(index.cpu(), x), cache.labels[index.cpu()].to(x.device), distill)
    return DistillSetup(cached, [], indexed(data), [cache.save])


def _feature(distill: Distillation, student: nn.Module, teacher: nn.Module, data: ImageSet, batcher: Batcher,
             augment: bool, cache_dir: Path | None) -> DistillSetup:
    s_tap = FeatureTap(student, [s for s, _ in distill.feature_pairs])
    t_tap = FeatureTap(teacher, [t for _, t in distill.feature_pairs])
    probe = next(batcher.eval_batches(data, 2))[0].to(next(student.parameters()).device)
    was_training = student.training
    with torch.no_grad():
        student.eval()(probe)
        teacher.eval()(probe)
    student.train(was_training)
    adapters = nn.ModuleList(make_adapter(s, t) for s, t in zip(s_tap.take(), t_tap.take(), strict=True))
    adapters.to(probe.device)

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        with torch.no_grad():
            target = teacher.eval()(x)
        hint = hint_loss(adapters, s_tap.take(), t_tap.take())
        return hinton_loss(logits, target, y, distill) + distill.feature_weight * hint
    return DistillSetup(loss, list(adapters.parameters()), data, [s_tap.close, t_tap.close], adapters)


DISTILLERS: dict[DistillKind, Callable[..., DistillSetup]] = {
    DistillKind.NONE: _plain,
    DistillKind.LOGIT: _logit,
    DistillKind.FEATURE: _feature,
}


def setup_distillation(distill: Distillation, student: nn.Module, teacher: nn.Module, data: ImageSet,
                       batcher: Batcher, *, augment: bool, cache_dir: Path | None = None) -> DistillSetup:
    """Build the loss for training `student` on `data`; call `.close()` when that training phase ends.

    Create it again whenever the student's shape changes (after a pruning step): adapters are sized to
    the student's current feature maps.
    """
    return DISTILLERS[distill.kind](distill, student, teacher, data, batcher, augment, cache_dir)
