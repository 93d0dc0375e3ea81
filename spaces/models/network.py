"""What a network of the space is, before any registry: its builder, its stem (torchvision's or a small-input one),
and the small-stem edits. Both the registry (`spaces.models.architectures`) and the user's own networks
(`spaces.models.user_models`) describe networks with these, so neither imports the other to do so.

Stems: torchvision's networks downsample 32x before their last stage, which is right at 224 px and leaves one cell
at CIFAR's 32 px. A network may declare a small-input ("CIFAR") stem, and its `StemRule` picks it below a
resolution (docs/results/stems/README.md says which students get one, and why).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from torch import nn

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
