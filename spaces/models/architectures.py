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

import torchvision
from torch import nn

from hardware_models.graph.networks import attach_thesis_head
from hardware_models.graph.networks import hidden_head
from hardware_models.graph.specs import register_scheme
from hardware_models.registry import register_once
from spaces.models import user_models
from spaces.models.network import Architecture
from spaces.models.network import Builder
from spaces.models.network import Stem
from spaces.models.network import StemRule
from spaces.models.network import first_conv_for

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
        return user_models.resolve(name)  # imports the user's code only when asked for, and only where trusted
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


@register_scheme("arch")
def _arch_spec(argument: str) -> nn.Module:
    """`arch:NAME` for the hardware models' spec strings: a network of this registry with torchvision's stem,
    `arch:NAME@STEM` with the one named (`cifar`: its small stem, or a small stem's own name, which is what bundles
    write), whatever the input size. Registry names only: a spec comes from a file, so it never imports code.
    Registered here, so `hardware_models` needs no import of the project's networks: importing this module (the
    commands that read measurement tables do) makes the scheme known."""
    name, _, stem = argument.partition("@")
    if name not in ARCHITECTURES:
        raise KeyError(f"spec 'arch:{argument}': {name!r} is not a registered network; known: "
                       f"{', '.join(sorted(ARCHITECTURES))}; or torchvision:NAME, onnx:FILE")
    return create_model(name, num_classes=10, stem=stem or "imagenet")
