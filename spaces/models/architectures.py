"""Registry of the networks a study can use as teacher or student.

A new architecture is one decorated builder (as in timm's `@register_model`); tests iterate over the
registry, so it is covered the moment it is registered. Every network is built with `weights=None`:
no pretrained weights can be downloaded, so teachers are trained by the tool itself.

Stems: torchvision's networks downsample 32x before their last stage (a stride-2 convolution, a max-pool,
then strided stages), which is right at 224 px and leaves one cell at CIFAR's 32 px: MobileNetV2 and
SqueezeNet then end in 1x1 feature maps. A network may declare a small-input ("CIFAR") stem, and its
`StemRule` picks it below a resolution; the choice is made here, from the input resolution, never per study.
Which students get one, and why, is measured by `python -m benchmarks.stems` (docs/results/stems/README.md).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import torchvision
from torch import nn

from hardware_models.graph.networks import attach_thesis_head
from hardware_models.graph.networks import hidden_head
from hardware_models.registry import register_once

Builder = Callable[[int, int], nn.Module]
StemEdit = Callable[[nn.Module], None]  # turns a freshly built network's ImageNet stem into the small one, in place


class Stem(StrEnum):
    """The kind of stem a rule picks; a built network records the exact one (`model_stem`: "imagenet" or the
    name of a `SMALL_STEMS` edit), so that a later change of a rule cannot change what a saved network was."""

    IMAGENET = "imagenet"  # torchvision's, as published: what every network without a StemRule is built with
    CIFAR = "cifar"  # the architecture's small-input stem (the first downsampling removed)


# Below this many pixels torchvision's 32x downsampling leaves a single cell for the last stage (at 64 px it
# leaves 2x2): the stems of the thesis's 224 px networks stop making sense there.
SMALL_INPUT_BELOW = 64
# The attribute a network built with a small stem carries; absent means torchvision's stem (every network
# built before stems existed, and every network without a StemRule).
STEM_ATTRIBUTE = "compress_stem"


@dataclass(frozen=True)
class StemRule:
    """The small-input stem a network has (a `SMALL_STEMS` name), and the resolution below which it is used."""

    small: str
    below: int = SMALL_INPUT_BELOW

    def __post_init__(self) -> None:
        if self.small not in SMALL_STEMS:
            raise KeyError(f"unknown small stem {self.small!r}; known: {', '.join(sorted(SMALL_STEMS))}")
        if self.below < 1:
            raise ValueError(f"StemRule.below must be a resolution >= 1, got {self.below}")

    def stem_for(self, resolution: int) -> Stem:
        return Stem.CIFAR if resolution < self.below else Stem.IMAGENET


@dataclass(frozen=True)
class Architecture:
    name: str
    builder: Builder
    description: str
    # The input size the network was designed for; CIFAR-10 at 32 and the thesis's 224 both work for CNNs.
    default_resolution: int
    # Fixed-input networks (the MLP) only accept exactly this resolution.
    fixed_resolution: bool = False
    # None: one stem at every resolution (the teacher, user and torchvision: networks, the MLP, small_cnn).
    stem_rule: StemRule | None = None

    def stem_for(self, resolution: int | None = None) -> str:
        """The stem this network is built with for `resolution`-px inputs (None: its default resolution):
        "imagenet" or the name of its small stem."""
        if self.stem_rule is None:
            return Stem.IMAGENET.value
        kind = self.stem_rule.stem_for(self.default_resolution if resolution is None else resolution)
        return self.stem_rule.small if kind == Stem.CIFAR else Stem.IMAGENET.value

    def build(self, num_classes: int, in_channels: int, stem: str) -> nn.Module:
        """`stem`: "imagenet", "cifar" (this architecture's small stem) or the name of any `SMALL_STEMS` edit."""
        model = self.builder(num_classes, in_channels)
        if stem == Stem.IMAGENET:
            return model
        if stem == Stem.CIFAR:
            if self.stem_rule is None:
                raise ValueError(f"architecture {self.name!r} has no cifar stem; it has only its own")
            stem = self.stem_rule.small
        if stem not in SMALL_STEMS:
            raise KeyError(f"unknown stem {stem!r}; known: imagenet, cifar, {', '.join(sorted(SMALL_STEMS))}")
        SMALL_STEMS[stem](model)  # edits keep each layer's input channels: greyscale stems stay greyscale
        setattr(model, STEM_ATTRIBUTE, stem)  # travels with copies and pickles: bundles record it
        return model


ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(name: str, *, description: str, default_resolution: int = 32,
                          fixed_resolution: bool = False,
                          stem_rule: StemRule | None = None) -> Callable[[Builder], Builder]:
    def decorate(builder: Builder) -> Builder:
        register_once(ARCHITECTURES, name, Architecture(name, builder, description, default_resolution,
                                                        fixed_resolution, stem_rule), "architecture")
        return builder

    return decorate


def get_architecture(name: str) -> Architecture:
    """A registered network, or one named by a scheme (`torchvision:<name>`, `package.module:factory`; see
    `spaces.models.user_models`), resolved once per process so that every worker builds the same network."""
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    if ":" in name:
        from spaces.models.user_models import resolve  # lazily: imports the user's code only when asked for

        return resolve(name)
    raise KeyError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}, "
                   "torchvision:<model name> or package.module:factory")


def is_known(name: str) -> bool:
    try:
        get_architecture(name)
    except KeyError:
        return False
    return True


def list_architectures(pattern: str = "*") -> list[str]:
    return sorted(n for n in ARCHITECTURES if fnmatch.fnmatch(n, pattern))


def create_model(name: str, *, num_classes: int = 10, in_channels: int = 3, resolution: int | None = None,
                 stem: str | None = None) -> nn.Module:
    """Build a freshly initialised network by registry name, with the stem its rule picks for `resolution`-px
    inputs (None: the architecture's default resolution). `stem` overrides the rule (see `Architecture.build`):
    a bundle rebuilds the stem it was saved with, whatever the rule says today."""
    arch = get_architecture(name)
    return arch.build(num_classes, in_channels, arch.stem_for(resolution) if stem is None else stem)


def stem_of(name: str, resolution: int | None = None) -> str:
    """The stem `create_model(name, resolution=resolution)` builds ("imagenet" or a small stem's name).
    Networks named by a scheme (torchvision:, the user's factory) have no rule, so this never imports user code."""
    arch = ARCHITECTURES.get(name)
    return Stem.IMAGENET.value if arch is None else arch.stem_for(resolution)


def small_stems_at(resolution: int) -> dict[str, str]:
    """The registered networks built with a small stem at `resolution`, and which one: part of the keys of
    cached results, so that none computed with another stem is reused (empty, so keys stay as they were, where
    every network keeps torchvision's stem)."""
    return {name: arch.stem_for(resolution) for name, arch in sorted(ARCHITECTURES.items())
            if arch.stem_for(resolution) != Stem.IMAGENET}


def model_stem(model: nn.Module) -> str:
    """The stem a built network has: what `create_model` recorded on it, "imagenet" when nothing was."""
    return str(getattr(model, STEM_ATTRIBUTE, Stem.IMAGENET.value))


def first_conv_for(model: nn.Module, in_channels: int) -> nn.Module:
    """Swap the stem convolution for one taking `in_channels` (MNIST is greyscale)."""
    if in_channels == 3:
        return model
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(parent, child_name, nn.Conv2d(in_channels, child.out_channels, child.kernel_size,
                                                      child.stride, child.padding, bias=child.bias is not None))
                return model
    raise ValueError(f"{type(model).__name__} has no convolution to adapt to {in_channels} channels")


SMALL_STEMS: dict[str, StemEdit] = {}


def small_stem(name: str) -> Callable[[StemEdit], StemEdit]:
    """Register a named small-input stem edit (the benchmark measures every one; a StemRule uses one)."""
    def decorate(edit: StemEdit) -> StemEdit:
        register_once(SMALL_STEMS, name, edit, "small stem")
        return edit

    return decorate


@small_stem("resnet_3x3")
def resnet_3x3(model: nn.Module) -> None:
    """He et al. (2016, sec. 4.2)'s CIFAR ResNet stem: conv1 3x3 stride 1, no max-pool (total stride 8, not 32)."""
    conv = model.conv1
    model.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's own init
    model.maxpool = nn.Identity()


@small_stem("mobilenet_v2_conv")
def mobilenet_v2_conv(model: nn.Module) -> None:
    """The first convolution at stride 1 (total stride 16: a 2x2 last stage at 32 px)."""
    model.features[0][0].stride = (1, 1)


@small_stem("mobilenet_v2_conv_block")
def mobilenet_v2_conv_block(model: nn.Module) -> None:
    """The first convolution and the first strided inverted residual (16->24) at stride 1 (total stride 8), as
    in the CIFAR MobileNetV2s of kuangliu/pytorch-cifar."""
    mobilenet_v2_conv(model)
    model.features[2].conv[1][0].stride = (1, 1)  # its depthwise 3x3


@small_stem("squeezenet_conv_pool")
def squeezenet_conv_pool(model: nn.Module) -> None:
    """The first convolution at stride 1 and no first max-pool (total stride 8); the later pools stay."""
    model.features[0].stride = (1, 1)
    model.features[2] = nn.Identity()


def _thesis(base: str, hidden: list[int]) -> Builder:
    # Zero-initialising each residual branch's last BN makes deep ResNets train fast from scratch (Goyal et
    # al. 2017), which matters here: there are no pretrained weights, and the smoke teacher gets minutes.
    options = {"zero_init_residual": True} if base.startswith("resnet") else {}

    def build(num_classes: int, in_channels: int) -> nn.Module:
        model = getattr(torchvision.models, base)(weights=None, **options)
        return first_conv_for(attach_thesis_head(model, hidden, num_classes), in_channels)

    return build


THESIS_HEADS = {
    "resnet50": ("ResNet-50 with the thesis's 2048-256-10 head (the thesis's teacher)", [256]),
    "resnet18": ("ResNet-18 with the thesis's 512-256-10 head", [256]),
    "mobilenet_v2": ("MobileNetV2 with the thesis's 1280-128-10 head", [128]),
    "squeezenet1_0": ("SqueezeNet 1.0; keeps its 512->classes 1x1 conv classifier", []),
    "squeezenet1_1": ("SqueezeNet 1.1; keeps its 512->classes 1x1 conv classifier", []),
}
# The students' small stems below SMALL_INPUT_BELOW px, as `python -m benchmarks.stems` chose them
# (docs/results/stems/README.md): more accurate than torchvision's stem beyond the 95% interval, and still faster
# than the teacher on every target.
# - The teacher (resnet50) keeps torchvision's stem at every resolution: a small stem would cost it about 16x the
#   MACs, change every cached teacher and break the comparison with the thesis's ResNet-50.
# - ResNet-18 keeps torchvision's: its 3x3 stem is 8 points more accurate but costs 15x the MACs and predicts
#   2.2x the teacher's latency on the Pi 4 (a student slower than its teacher compresses nothing there).
# - Both SqueezeNets with torchvision's stem stayed at chance after 600 steps; with their small stems they did not.
SMALL_STEM_OF = {
    "mobilenet_v2": "mobilenet_v2_conv_block",
    "squeezenet1_0": "squeezenet_conv_pool",
    "squeezenet1_1": "squeezenet_conv_pool",
}
for _name, (_description, _hidden) in THESIS_HEADS.items():
    _rule = StemRule(SMALL_STEM_OF[_name]) if _name in SMALL_STEM_OF else None
    register_architecture(_name, description=_description, stem_rule=_rule)(_thesis(_name, _hidden))


@register_architecture("mlp", description="The thesis's MNIST MLP: 784-64-64-10", default_resolution=28,
                       fixed_resolution=True)
def _mlp(num_classes: int, in_channels: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), *hidden_head(in_channels * 28 * 28, [64, 64], num_classes))


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@register_architecture("small_cnn", description="A small VGG-style CNN (16-32-64 channels) for MNIST/CIFAR")
def _small_cnn(num_classes: int, in_channels: int) -> nn.Module:
    return nn.Sequential(
        *_conv_bn(in_channels, 16), nn.MaxPool2d(2),
        *_conv_bn(16, 32), nn.MaxPool2d(2),
        *_conv_bn(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(64, num_classes),
    )
