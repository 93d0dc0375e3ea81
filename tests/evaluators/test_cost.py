"""Cost model: exact byte counts under each storage rule, MACs against published values, BOPs and sparsity."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from evaluators.cost import STORAGE_RULES
from evaluators.cost import model_cost
from spaces.models.architectures import create_model
from spaces.quant.quantization import quantizable_layers
from spaces.quant.quantization import quantize_model
from spaces.quant.quantization import resolve_bits
from spaces.recipe import Quantization

MLP_MACS = 784 * 64 + 64 * 64 + 64 * 10


pytestmark = pytest.mark.usefixtures("one_thread")


def _bias_free() -> nn.Module:
    """Weights only (no biases, no BN), so stored size is exactly the weight bytes."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, bias=False), nn.ReLU(), nn.Conv2d(16, 32, 3, groups=2, bias=False),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10, bias=False))


def _uniform(model: nn.Module, wbits: int, abits: int = 8) -> dict[str, tuple[int, int]]:
    return dict.fromkeys(quantizable_layers(model), (wbits, abits))


# --- storage --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("storage, wbits, saving", [
    ("packed", 8, 0.75), ("packed", 4, 0.875), ("packed", 2, 0.9375),
    ("dpu_int8", 8, 0.75), ("dpu_int8", 5, 0.75), ("dpu_int8", 4, 0.75),
])
def test_quantized_weights_save_exactly_the_expected_fraction(storage: str, wbits: int, saving: float) -> None:
    model = _bias_free()
    fp32 = model_cost(model, (3, 16, 16), storage="fp32")
    quantized = quantize_model(model, Quantization(kind="ptq", weight_bits=wbits, act_bits=8))
    cost = model_cost(quantized, (3, 16, 16), storage=storage)  # bits read from the quantized model
    assert fp32.size_bytes == fp32.weight_bytes == 4 * fp32.params
    assert cost.size_bytes == cost.weight_bytes  # scale overhead is outside the headline size
    assert 1 - cost.weight_bytes / fp32.weight_bytes == saving
    assert model_cost(model, (3, 16, 16), storage=storage, bits=_uniform(model, wbits)).size_bytes == cost.size_bytes


def test_biases_stay_fp32_and_scales_are_counted_separately() -> None:
    model = create_model("mlp", in_channels=1)
    cost = model_cost(model, (1, 28, 28), storage="packed", bits=_uniform(model, 4, 8))
    weights, biases = MLP_MACS, 64 + 64 + 10
    assert cost.params == weights + biases
    assert cost.size_bytes == weights // 2 + 4 * biases
    # per output channel one fp32 weight scale, per layer an activation scale + zero point
    assert cost.size_bytes_with_scales - cost.size_bytes == 4 * (64 + 64 + 10) + 4 * 2 * 3
    per_tensor = quantize_model(model, Quantization(kind="ptq", weight_bits=4, per_channel=False))
    cost = model_cost(per_tensor, (1, 28, 28))
    assert cost.size_bytes_with_scales - cost.size_bytes == 4 * 3 * 3


def test_16_and_32_bit_layers_are_stored_as_given_even_by_the_dpu_rule() -> None:
    model = _bias_free()
    numel = sum(p.numel() for p in model.parameters())
    assert model_cost(model, (3, 16, 16), storage="dpu_int8", bits=_uniform(model, 16)).size_bytes == 2 * numel
    assert model_cost(model, (3, 16, 16), storage="dpu_int8").size_bytes == 4 * numel


def test_sparse_storage_picks_the_cheapest_index_per_layer() -> None:
    model = nn.Sequential(nn.Linear(64, 64, bias=False), nn.Linear(64, 64, bias=False), nn.Linear(64, 64, bias=False))
    with torch.no_grad():
        model[0].weight[:, 32:] = 0  # 50% zero: 2048 bytes of values + 512-byte bitmap
        model[1].weight[:, 1:] = 0  # 1 non-zero per row: 64 values + CSR (64 x 2-byte index + 65 x 4-byte rows)
    cost = model_cost(model, (64,), storage="packed_sparse", bits=_uniform(model, 8))
    assert [c.weight_bytes for c in cost.per_layer] == [2048 + 512, 64 + 64 * 2 + 65 * 4, 4096]  # dense: no index
    assert cost.sparsity == pytest.approx((2048 + 4032) / (3 * 4096))
    assert cost.sparse_macs == 2048 + 64 + 4096 and cost.macs == 3 * 4096


def test_unknown_storage_rule_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known: " + ", ".join(sorted(STORAGE_RULES))):
        model_cost(_bias_free(), (3, 16, 16), storage="int3_magic")


def test_bits_for_unknown_layers_are_rejected() -> None:
    with pytest.raises(ValueError, match="not conv/linear layers"):
        model_cost(_bias_free(), (3, 16, 16), bits={"nope": (4, 4)})


# --- MACs and BOPs -----------------------------------------------------------------------------------------

def test_mlp_and_small_cnn_macs_match_hand_counts() -> None:
    mlp = model_cost(create_model("mlp", in_channels=1), (1, 28, 28))
    assert mlp.macs == MLP_MACS
    assert mlp.bops == MLP_MACS * 32 * 32
    cnn = model_cost(create_model("small_cnn", in_channels=1), (1, 28, 28))
    assert cnn.macs == 28 * 28 * 16 * 9 + 14 * 14 * 32 * 16 * 9 + 7 * 7 * 64 * 32 * 9 + 64 * 10
    assert cnn.params == 16 * 9 + 32 + 32 * 16 * 9 + 64 + 64 * 32 * 9 + 128 + 64 * 10 + 10  # + BN unfolded


def test_grouped_and_depthwise_convolutions_are_exact() -> None:
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 16, 3, stride=2, groups=2))
    per_layer = model_cost(model, (8, 10, 10)).per_layer
    assert [c.macs for c in per_layer] == [10 * 10 * 8 * 9, 4 * 4 * 16 * 4 * 9]


TORCHVISION = {"resnet18": "ResNet18_Weights", "resnet50": "ResNet50_Weights", "mobilenet_v2": "MobileNet_V2_Weights",
               "squeezenet1_0": "SqueezeNet1_0_Weights", "squeezenet1_1": "SqueezeNet1_1_Weights"}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_networks_match_published_macs_and_params(name: str) -> None:
    meta = getattr(torchvision.models, TORCHVISION[name]).DEFAULT.meta  # published GMACs ("_ops") at 224
    cost = model_cost(getattr(torchvision.models, name)(weights=None), (3, 224, 224))
    assert round(cost.macs / 1e9, 3) == meta["_ops"]
    assert cost.params == meta["num_params"]


def test_registry_resnet18_differs_from_torchvision_only_by_the_thesis_head() -> None:
    ours = model_cost(create_model("resnet18", resolution=224), (3, 224, 224)).macs
    reference = model_cost(torchvision.models.resnet18(weights=None), (3, 224, 224)).macs
    assert ours == reference - 512 * 1000 + 512 * 256 + 256 * 10
    assert 1.81e9 < ours < 1.82e9


def test_bops_use_each_layers_bits_and_quantized_models_report_their_own() -> None:
    model = create_model("mlp", in_channels=1)
    quant = Quantization(kind="ptq", weight_bits=4, act_bits=8, layer_bits=(("head", 8, 8), ("stem", 2, 32)))
    expected = 784 * 64 * 2 * 32 + 64 * 64 * 4 * 8 + 64 * 10 * 8 * 8
    assert model_cost(model, (1, 28, 28), bits=resolve_bits(model, quant)).bops == expected
    quantized = quantize_model(model, quant)  # uncalibrated is fine: cost needs shapes only
    quantized.train()
    assert model_cost(quantized, (1, 28, 28)).bops == expected
    assert quantized.training  # counting does not leave the model in eval mode
