"""The architecture registry: every registered network builds, runs and has the head the thesis used."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from benchmarks.stems import CANDIDATES
from benchmarks.stems import last_feature_map
from spaces.models.architectures import create_model
from spaces.models.architectures import get_architecture
from spaces.models.architectures import list_architectures
from spaces.models.architectures import small_stems_at
from spaces.models.architectures import stem_of
from spaces.models.network import SMALL_INPUT_BELOW
from spaces.models.network import Stem
from spaces.models.network import StemRule
from spaces.models.network import model_stem


@pytest.mark.parametrize("name", list_architectures())
def test_every_architecture_builds_and_classifies(name: str) -> None:
    arch = get_architecture(name)
    channels = 1 if arch.fixed_resolution else 3
    model = create_model(name, num_classes=10, in_channels=channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, arch.default_resolution, arch.default_resolution))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_required_architectures_are_registered() -> None:
    assert {"resnet50", "resnet18", "mobilenet_v2", "squeezenet1_0", "squeezenet1_1", "mlp", "small_cnn"} <= set(
        list_architectures())
    assert list_architectures("squeeze*") == ["squeezenet1_0", "squeezenet1_1"]


@pytest.mark.parametrize(("name", "widths"), [
    ("resnet50", [(2048, 256), (256, 10)]),
    ("resnet18", [(512, 256), (256, 10)]),
    ("mobilenet_v2", [(1280, 128), (128, 10)]),
    ("mlp", [(784, 64), (64, 64), (64, 10)]),
])
def test_thesis_heads(name: str, widths: list[tuple[int, int]]) -> None:
    model = create_model(name, in_channels=1 if name == "mlp" else 3)
    linears = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == widths


def test_squeezenet_keeps_its_conv_classifier_and_mnist_cnns_take_one_channel() -> None:
    model = create_model("squeezenet1_0")
    assert isinstance(model.classifier[1], nn.Conv2d) and model.classifier[1].out_channels == 10
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    cnn = create_model("small_cnn", in_channels=1)
    assert cnn(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_unknown_architecture_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="unknown architecture 'vgg99'; known: .*resnet18"):
        create_model("vgg99")


def _geometry(model: nn.Module) -> list[tuple]:
    """Kernel, stride and padding of every convolution and max-pool, in order: what makes a stem, whatever the
    channel counts and head."""
    return [(type(m).__name__, m.kernel_size, m.stride, m.padding) for m in model.modules()
            if isinstance(m, (nn.Conv2d, nn.MaxPool2d))]


SMALL_STEMMED = [n for n in list_architectures() if get_architecture(n).stem_rule is not None]


def test_the_students_have_small_stems_and_the_teacher_does_not() -> None:
    # what benchmarks.stems measured (docs/results/stems/README.md)
    assert set(SMALL_STEMMED) == {"mobilenet_v2", "squeezenet1_0", "squeezenet1_1"}
    assert stem_of("resnet50", 32) == stem_of("resnet18", 32) == stem_of("torchvision:mobilenet_v2", 32) \
        == Stem.IMAGENET


@pytest.mark.parametrize("name", SMALL_STEMMED)
def test_the_rule_picks_the_stem_by_input_resolution(name: str) -> None:
    torchvision_net = getattr(torchvision.models, name)(weights=None)
    big = create_model(name, resolution=SMALL_INPUT_BELOW)
    assert model_stem(big) == Stem.IMAGENET and _geometry(big) == _geometry(torchvision_net)
    assert _geometry(create_model(name, resolution=224)) == _geometry(torchvision_net)
    small = create_model(name, resolution=SMALL_INPUT_BELOW - 1)
    assert model_stem(small) == get_architecture(name).stem_rule.small
    assert _geometry(small) != _geometry(torchvision_net)
    assert last_feature_map(create_model(name, resolution=32), 32) > 1
    assert last_feature_map(create_model(name, resolution=224), 32) == 1  # torchvision's stem fed 32 px: a single cell


def test_mobilenet_v2_keeps_a_4x4_map_at_32_px_and_torchvisions_7x7_at_224() -> None:
    assert last_feature_map(create_model("mobilenet_v2", resolution=32), 32) == 4
    assert last_feature_map(create_model("mobilenet_v2", resolution=224), 224) == 7


def test_the_teacher_keeps_torchvisions_stem_at_32_px() -> None:
    assert _geometry(create_model("resnet50", resolution=32)) == _geometry(torchvision.models.resnet50(weights=None))
    with pytest.raises(ValueError, match="'resnet50' has no cifar stem"):
        create_model("resnet50", stem=Stem.CIFAR)


def test_a_small_stem_keeps_greyscale_input() -> None:
    model = create_model("mobilenet_v2", in_channels=1, resolution=28)
    assert model_stem(model) == "mobilenet_v2_conv_block" and model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_stem_rules_validate_and_key_results_only_where_a_small_stem_is_built() -> None:
    with pytest.raises(ValueError, match="below must be a resolution >= 1"):
        StemRule("resnet_3x3", below=0)
    with pytest.raises(KeyError, match="unknown small stem 'resnet_7x7'; known: .*resnet_3x3"):
        StemRule("resnet_7x7")
    assert small_stems_at(224) == {}
    assert small_stems_at(32)["mobilenet_v2"] == "mobilenet_v2_conv_block"


@pytest.mark.parametrize(("name", "stem"), [(a, s) for a, stems in CANDIDATES.items() for s in stems])
def test_every_measured_small_stem_builds_and_keeps_more_than_one_cell_at_32_px(name: str, stem: str) -> None:
    model = create_model(name, stem=stem)
    assert model_stem(model) == stem and last_feature_map(model, 32) > 1
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
