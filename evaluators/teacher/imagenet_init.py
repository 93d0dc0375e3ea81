"""`[teacher] init`: start the teacher from torchvision's ImageNet weights instead of random ones.

Why: the thesis's teacher is an ImageNet-pretrained ResNet-50 fine-tuned on CIFAR-10 (about 93% at 224 px); from
scratch on a CPU the same network needs many hours for much less. Nothing is ever downloaded: the weights are read
from the torch hub cache (`$TORCH_HOME/hub/checkpoints/`, where `torchvision` itself keeps them) or from a file the
study names, with `torch.load(weights_only=True)`. Every backbone tensor must fit; the classifier (ImageNet's 1000
classes, the thesis's 2048-256-10 head) stays freshly initialised.

- `init = "scratch"` (the default): random initial weights.
- `init = "imagenet"`: torchvision's weights for the teacher's architecture; missing, one line names the file and
  the folder to put it in.
- `init = "imagenet_if_present"`: those weights when they are in the hub cache, else from scratch (said once): the
  `paper` profile's setting, the thesis's where the user has the file.
- any other value: the path of a weights file (relative to the study file).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from evaluators.teacher.checkpoint import read_checkpoint
from spaces.models.user_models import split_name
from spaces.validated import ConfigError

SCRATCH = "scratch"
IMAGENET = "imagenet"
IMAGENET_IF_PRESENT = "imagenet_if_present"
TORCHVISION_SCHEME = "torchvision:"
INIT_NAMES = ("", SCRATCH, IMAGENET, IMAGENET_IF_PRESENT)  # any other `init` is a file path


@dataclass(frozen=True)
class Init:
    """What the teacher starts from: `source` "scratch" or a weights file, with its content digest (the cache key
    holds the digest, not the path: the same file anywhere is the same teacher)."""

    source: str = SCRATCH
    path: str = ""
    sha256: str = ""

    @property
    def key(self) -> str:
        return SCRATCH if not self.path else f"{self.source}:{self.sha256}"


def torchvision_name(arch: str) -> str:
    """The torchvision model an architecture is built from: `torchvision:<name>` or a registered thesis network
    (`resnet50` is torchvision's ResNet-50 with the thesis's head)."""
    base, _ = split_name(arch)
    return base[len(TORCHVISION_SCHEME) :] if base.startswith(TORCHVISION_SCHEME) else base


def hub_files(arch: str) -> list[Path]:
    """Where torchvision keeps each of `arch`'s ImageNet weights in the hub cache, its default weights first."""
    try:
        weights = torchvision.models.get_model_weights(torchvision_name(arch))
    except (ValueError, KeyError):
        return []
    ordered = [weights.DEFAULT, *(w for w in weights if w != weights.DEFAULT)]
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return [folder / Path(w.url).name for w in ordered if "IMAGENET" in w.name]


def resolve_init(init: str, arch: str) -> Init:
    """The initial weights `init` names for `arch`; a missing or unusable file is a one-line ConfigError."""
    if init in ("", SCRATCH):
        return Init()
    if init in (IMAGENET, IMAGENET_IF_PRESENT):
        files = hub_files(arch)
        found = next((f for f in files if f.is_file()), None)
        if found is not None:
            return Init(IMAGENET, str(found), _digest(found))
        if init == IMAGENET_IF_PRESENT:
            return Init()
        if not files:
            raise ConfigError(
                f"teacher.init = 'imagenet': torchvision has no ImageNet weights for {arch!r}; use "
                "init = 'scratch' or the path of a weights file"
            )
        raise ConfigError(
            f"teacher.init = 'imagenet': {files[0].name} is not in the torch hub cache; put it in "
            f"{files[0].parent}/ (from {_url(arch)}) or set $TORCH_HOME, or give its path as "
            "teacher.init"
        )
    path = Path(init)
    if not path.is_file():
        raise ConfigError(
            f"teacher.init: weights file {path} does not exist; give the path of a .pth state dict, "
            "'imagenet' or 'scratch'"
        )
    return Init("file", str(path), _digest(path))


def _url(arch: str) -> str:
    return torchvision.models.get_model_weights(torchvision_name(arch)).DEFAULT.url


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def load_init(model: nn.Module, init: Init) -> int:
    """Copy `init`'s weights into `model` (nothing for scratch) and return how many tensors were copied. Every
    tensor of the network must be in the file with its shape, except the classifier's (`fc`, `classifier`), which
    keeps its fresh initialisation; anything else is a one-line ConfigError."""
    if not init.path:
        return 0
    path = Path(init.path)
    state = read_checkpoint(path)
    own = model.state_dict()
    head = ("fc.", "classifier.")
    usable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    missing = [k for k in own if k not in usable and not k.startswith(head) and not k.endswith("num_batches_tracked")]
    if missing:
        raise ConfigError(
            f"teacher.init: {path} does not fit the teacher's network: {len(missing)} tensors missing "
            f"or of another shape ({', '.join(missing[:3])}); use weights of the same architecture "
            "(3 input channels)"
        )
    model.load_state_dict(usable, strict=False)
    return len(usable)
