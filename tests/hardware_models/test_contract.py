"""The contract every hardware target must honour, parametrized over the target registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hardware_models import UnsupportedLayerError
from hardware_models import estimate
from hardware_models import list_targets

torch.set_num_threads(1)


def cnn(width: int) -> nn.Module:
    """A small CNN whose cost grows with `width` on any hardware."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 10),
    ).eval()


SHAPE = (3, 32, 32)
NUMBERS = ("latency_ms", "fps", "energy_mj", "power_w")


@pytest.fixture(scope="module")
def results() -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for target in list_targets():
        widths = (16, 128) if target == "host" else (16, 64, 256)
        out[target] = {w: estimate(cnn(w), SHAPE, target) for w in widths}
    return out


def test_registry_has_the_issue_targets() -> None:
    assert {"zcu104", "zcu102", "rpi4", "rpi5", "host"} <= set(list_targets())


@pytest.mark.parametrize("target", list_targets())
def test_results_are_finite_and_non_negative(results: dict, target: str) -> None:
    for result in results[target].values():
        assert result["deployable"] is True
        for key in NUMBERS:
            assert math.isfinite(result[key]) and result[key] >= 0, (target, key, result[key])
        assert result["latency_ms"] > 0
        assert result["fps"] == pytest.approx(1000.0 / result["latency_ms"])
        assert result["energy_mj"] == pytest.approx(result["power_w"] * result["latency_ms"])
        assert isinstance(result["measured"], bool) and result["basis"]
        assert result["energy_source"] in ("measured", "derived", "assumed")
        assert result["assumptions"], "every result states its assumptions"


@pytest.mark.parametrize("target", list_targets())
def test_cost_grows_with_channel_width(results: dict, target: str) -> None:
    by_width = results[target]
    widths = sorted(by_width)
    latencies = [by_width[w]["latency_ms"] for w in widths]
    energies = [by_width[w]["energy_mj"] for w in widths]
    assert latencies == sorted(latencies) and latencies[-1] > 1.5 * latencies[0], latencies
    assert energies == sorted(energies)
    assert [by_width[w]["macs"] for w in widths] == sorted(by_width[w]["macs"] for w in widths)


@pytest.mark.parametrize("target", list_targets())
def test_repeated_calls_agree(results: dict, target: str) -> None:
    again = estimate(cnn(64 if target != "host" else 16), SHAPE, target)
    first = results[target][64 if target != "host" else 16]
    assert again["latency_ms"] == first["latency_ms"]
    assert again["energy_mj"] == first["energy_mj"]


@pytest.mark.parametrize("target", list_targets())
def test_per_layer_breakdown(target: str) -> None:
    result = estimate(cnn(16), SHAPE, target, per_layer=True)
    assert isinstance(result["per_layer"], list)
    if not result["measured"]:
        total = sum(layer["latency_ms"] for layer in result["per_layer"])
        assert 0 < total <= result["latency_ms"] + 1e-9
        assert {"name", "kind", "latency_ms", "bound"} <= set(result["per_layer"][0])


def test_unknown_target_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="unknown target 'zcu105'.*zcu104"):
        estimate(cnn(8), SHAPE, "zcu105")


def test_missing_profile_path_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        estimate(cnn(8), SHAPE, str(tmp_path / "nope.json"))


@pytest.mark.parametrize("layer, name", [
    (nn.Conv3d(3, 4, 1), "Conv3d"),
    (nn.Upsample(scale_factor=2), "interpolate"),
])
def test_unsupported_layer_is_named(layer: nn.Module, name: str) -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 1), layer)
    with pytest.raises(UnsupportedLayerError, match=name) as error:
        estimate(model, SHAPE, "zcu104")
    assert "'1'" in str(error.value)  # the layer's name in the model


def test_bad_input_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(C, H, W\) or \(1, C, H, W\)"):
        estimate(cnn(8), (3, 32), "rpi4")


@pytest.mark.parametrize("target", ["zcu104", "rpi4"])
def test_input_shape_with_batch_one_is_the_same_estimate(target: str) -> None:
    model = cnn(8)
    plain = estimate(model, (3, 32, 32), target)
    batched = estimate(model, (1, 3, 32, 32), target)
    assert batched["latency_ms"] == plain["latency_ms"] and batched["energy_mj"] == plain["energy_mj"]


def test_input_shape_with_another_batch_is_rejected_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"batch 8 is not supported.*\(1, 3, 32, 32\)"):
        estimate(cnn(8), (8, 3, 32, 32), "zcu104")


@pytest.mark.parametrize("target", list_targets())
def test_every_estimate_carries_an_interval(results: dict, target: str) -> None:
    for result in results[target].values():
        low, mid, high = result["latency_ms_low"], result["latency_ms"], result["latency_ms_high"]
        assert 0 < low <= mid <= high and math.isfinite(high), (target, low, mid, high)
        assert 0 < result["interval_level"] < 1 and result["interval_note"]


def test_intervals_widen_where_nothing_was_measured() -> None:
    """A transferred board or a runtime/precision without rows gets a wider band, and says why."""
    from hardware_models import build_network

    model, shape = build_network("torchvision:resnet18", device="meta"), (3, 224, 224)

    def ratio(result: dict) -> float:
        return result["latency_ms_high"] / result["latency_ms"]

    zcu104, zcu102 = estimate(model, shape, "zcu104"), estimate(model, shape, "zcu102")
    assert ratio(zcu102) > ratio(zcu104) and "widened" in zcu102["interval_note"]
    assert "widened" not in zcu104["interval_note"]
    measured = estimate(model, shape, "rpi4", runtime="pytorch", precision="int8")
    unmeasured = estimate(model, shape, "rpi4", runtime="pytorch", precision="fp32")
    assert ratio(unmeasured) > ratio(measured) and "widened" in unmeasured["interval_note"]
    assert any("widened" in a for a in unmeasured["assumptions"])


def test_tiny_networks_are_flagged_as_extrapolations() -> None:
    """The MNIST MLP is ~1000x smaller than any calibrated rpi4 network: its interval says so and widens."""
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10)).eval()
    result = estimate(mlp, (1, 28, 28), "rpi4", precision="int8")
    assert "far below the smallest calibrated network" in result["interval_note"]
    assert result["latency_ms_high"] / result["latency_ms"] > 1.5
