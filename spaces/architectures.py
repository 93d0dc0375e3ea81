"""Registry of the networks a study can use as teacher or student.

A new architecture is one decorated builder (as in timm's `@register_model`); tests iterate over the
registry, so it is covered the moment it is registered. Every network is built with `weights=None`:
no pretrained weights can be downloaded, so teachers are trained by the tool itself.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

import torchvision
from torch import nn

from hardware_models.networks import attach_thesis_head
from hardware_models.networks import hidden_head

Builder = Callable[[int, int], nn.Module]


@dataclass(frozen=True)
class Architecture:
    name: str
    builder: Builder
    description: str
    # The input size the network was designed for; CIFAR-10 at 32 and the thesis's 224 both work for CNNs.
    default_resolution: int
    # Fixed-input networks (the MLP) only accept exactly this resolution.
    fixed_resolution: bool = False


ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(name: str, *, description: str, default_resolution: int = 32,
                          fixed_resolution: bool = False) -> Callable[[Builder], Builder]:
    def decorate(builder: Builder) -> Builder:
        if name in ARCHITECTURES:
            raise ValueError(f"architecture {name!r} is registered twice")
        ARCHITECTURES[name] = Architecture(name, builder, description, default_resolution, fixed_resolution)
        return builder

    return decorate


def get_architecture(name: str) -> Architecture:
    """A registered network, or one named by a scheme (`torchvision:<name>`, `package.module:factory`; see
    `spaces.user_models`), resolved once per process so that every worker builds the same network."""
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    if ":" in name:
        from spaces.user_models import resolve  # lazily: imports the user's code only when asked for

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


def create_model(name: str, *, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Build a freshly initialised network by registry name."""
    return get_architecture(name).builder(num_classes, in_channels)


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
for _name, (_description, _hidden) in THESIS_HEADS.items():
    register_architecture(_name, description=_description)(_thesis(_name, _hidden))


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
