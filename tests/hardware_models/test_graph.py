"""Layer extraction and what a runtime does with the graph (dead code, zero edges, folding)."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from hardware_models import build_network
from hardware_models import estimate
from hardware_models.graph.executed import Status
from hardware_models.graph.executed import extract
from hardware_models.graph.executed import with_policy
from hardware_models.graph.ops import Kind

torch.set_num_threads(1)

ALL_CONV = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def nb201(arch: str):
    return extract(build_network(f"nb201:{arch}", device="meta"), (3, 32, 32))


def convs(network) -> int:
    return sum(layer.kind is Kind.CONV for layer in network.computed())


def test_layers_and_shapes() -> None:
    network = extract(build_network("torchvision:resnet18", device="meta"), (3, 224, 224))
    conv1 = network.layers[1]
    assert (conv1.name, conv1.kind, conv1.kernel, conv1.stride) == ("conv1", Kind.CONV, (7, 7), (2, 2))
    assert conv1.out_shape == (64, 112, 112)
    adds = [layer for layer in network.computed() if layer.kind is Kind.ELTWISE]
    assert len(adds) == 8  # residual additions, traced as functions


def test_batch_norm_and_relu_are_folded_into_convolutions() -> None:
    network = extract(build_network("torchvision:mobilenet_v2", device="meta"), (3, 224, 224))
    statuses = {layer.kind: set() for layer in network.layers}
    for layer, status in zip(network.layers, network.status, strict=True):
        statuses[layer.kind].add(status)
    assert statuses[Kind.BN] == {Status.FUSED}
    assert Status.FUSED in statuses[Kind.ACT]


@pytest.mark.parametrize("target", ["rpi4", "zcu104"])
def test_a_network_with_batch_norm_folded_away_costs_the_same(target: str) -> None:
    """Quantization folds BN into the conv and leaves an nn.Identity: the ReLU after it still fuses."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()).eval()
    folded = nn.Sequential(model[0], nn.Identity(), nn.ReLU(), model[3], nn.Identity(), nn.ReLU()).eval()
    both = [estimate(m, (3, 64, 64), target, precision="int8") for m in (model, folded)]
    assert both[0]["latency_ms"] == pytest.approx(both[1]["latency_ms"])
    assert both[1]["layers"].get("computed") == 2


def test_zero_edges_and_unused_nodes_are_removed() -> None:
    full = nb201(ALL_CONV)
    # node 2 is computed but unused: node 3 reads only node 0 and node 1 through real ops
    dead = nb201("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|none~2|")
    assert convs(full) == 15 * 6 + 7  # cells + stem, reduction blocks (2 x 3)
    assert convs(dead) == 15 * 3 + 7
    assert Status.REMOVED in dead.status
    assert full.macs == full.macs_literal
    assert dead.macs < dead.macs_literal < full.macs_literal


def test_disconnected_cells_make_the_output_constant() -> None:
    arch = "|avg_pool_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|none~0|none~1|none~2|"
    network = nb201(arch)
    assert network.output_is_constant and network.macs == 0 and not network.computed()
    result = estimate(build_network(f"nb201:{arch}", device="meta"), (3, 32, 32), "zcu104")
    assert result["macs"] == 0 and any("constant" in a for a in result["assumptions"])


def test_graph_policies() -> None:
    arch = "|none~0|+|nor_conv_3x3~0|none~1|+|skip_connect~0|nor_conv_3x3~1|none~2|"
    optimised = nb201(arch)  # node 1 is zero: conv3x3(node 1) is a constant
    no_fold = with_policy(optimised, "no_fold")
    literal = with_policy(optimised, "literal")
    assert convs(optimised) < convs(no_fold) <= convs(literal)
    with pytest.raises(KeyError, match="known: optimised"):
        with_policy(optimised, "magic")


def test_functional_zero_multiplication_is_recognised() -> None:
    class Branches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(x) * 0

    network = extract(Branches(), (3, 16, 16))
    assert [layer.name for layer in network.computed() if layer.kind is Kind.CONV] == ["a"]


def test_tracing_leaves_the_model_untouched() -> None:
    model = build_network("torchvision:resnet18", device="cpu").train()
    before = model.bn1.running_mean.clone()
    extract(model, (3, 32, 32), use_cache=False)
    assert model.training and torch.equal(model.bn1.running_mean, before)
    assert model.bn1.num_batches_tracked.item() == 0


def test_extraction_is_cached_by_structure() -> None:
    a = build_network("torchvision:resnet18", device="meta")
    b = build_network("torchvision:resnet18", device="meta")
    assert extract(a, (3, 64, 64)) is extract(b, (3, 64, 64))
    b.fc = nn.Linear(512, 7)
    assert extract(b, (3, 64, 64)) is not extract(a, (3, 64, 64))


def test_estimate_of_a_200_layer_network_is_fast() -> None:
    model = build_network("torchvision:efficientnet_b0", device="cpu")
    assert len(extract(model, (3, 224, 224), use_cache=False).layers) >= 200
    for target in ("zcu104", "rpi4"):
        start = time.perf_counter()
        estimate(model, (3, 224, 224), target, use_cache=False)
        assert time.perf_counter() - start < 2.0, target  # well under 0.5 s idle; loose for a busy CI machine
