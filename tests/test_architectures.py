"""The architecture registry: every registered network builds, runs and has the head the thesis used."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spaces.architectures import create_model
from spaces.architectures import get_architecture
from spaces.architectures import list_architectures


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
