"""Networks named in the calibration data that torchvision does not provide.

MobileNetV1 (the Vitis AI Model Zoo and ncnn rows) and the NAS-Bench-201 cell networks (the HW-NAS-Bench
Raspberry Pi 4 rows). Weights are random: only the shapes matter for cost modelling. NAS-Bench-201's
`none` operation is a module of its own (`Zero`) so that the layer extractor can see that it cannot affect
the output and drop it, as a real runtime's graph optimiser does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

NB201_OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")

# Howard et al. 2017, Table 1: (output channels, stride) of each depthwise-separable block.
_MOBILENET_V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def mobilenet_v1(alpha: float = 1.0, num_classes: int = 1000) -> nn.Sequential:
    """MobileNetV1 with width multiplier `alpha` (channels `max(8, int(c * alpha))`)."""

    def width(c: int) -> int:
        return max(8, int(c * alpha))

    layers: list[nn.Module] = [_conv_bn_relu(3, width(32), 3, 2)]
    cin = width(32)
    for cout, stride in _MOBILENET_V1_BLOCKS:
        layers.append(_conv_bn_relu(cin, cin, 3, stride, groups=cin))
        layers.append(_conv_bn_relu(cin, width(cout), 1, 1))
        cin = width(cout)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


class Zero(nn.Module):
    """NAS-Bench-201's `none` edge: multiplies by zero, so it can never affect the output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


class ReLUConvBN(nn.Sequential):
    """NAS-Bench-201's `nor_conv_kxk`: pre-activation ReLU, convolution, batch norm."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
            nn.BatchNorm2d(cout),
        )


def _nb201_op(name: str, channels: int) -> nn.Module:
    builders = {
        "none": Zero,
        "skip_connect": nn.Identity,
        "nor_conv_1x1": lambda: ReLUConvBN(channels, channels, 1, 1),
        "nor_conv_3x3": lambda: ReLUConvBN(channels, channels, 3, 1),
        "avg_pool_3x3": lambda: nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
    }
    if name not in builders:
        raise KeyError(f"unknown NAS-Bench-201 operation {name!r}; known: {', '.join(NB201_OPS)}")
    return builders[name]()


def parse_nb201(arch: str) -> tuple[tuple[tuple[str, int], ...], ...]:
    """`|op~0|+|op~0|op~1|+|op~0|op~1|op~2|` -> per node, the (operation, input node) pairs."""
    nodes = []
    for part in arch.strip().split("+"):
        edges = []
        for token in filter(None, part.strip().strip("|").split("|")):
            op, _, source = token.partition("~")
            if not source.isdigit():
                raise ValueError(f"bad NAS-Bench-201 edge {token!r} in {arch!r}; expected OP~INDEX")
            edges.append((op, int(source)))
        nodes.append(tuple(edges))
    if len(nodes) != 3 or [len(n) for n in nodes] != [1, 2, 3]:
        raise ValueError(f"NAS-Bench-201 cell {arch!r} must have nodes with 1, 2 and 3 incoming edges")
    return tuple(nodes)


class NB201Cell(nn.Module):
    """A NAS-Bench-201 cell: node j is the sum of its incoming edges; node 3 is the output."""

    def __init__(self, genotype: Sequence[Sequence[tuple[str, int]]], channels: int) -> None:
        super().__init__()
        self.genotype = tuple(tuple(node) for node in genotype)
        self.edges = nn.ModuleDict()
        for j, node in enumerate(self.genotype, start=1):
            for op, source in node:
                self.edges[f"{j}_{source}"] = _nb201_op(op, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for j, node in enumerate(self.genotype, start=1):
            terms = [self.edges[f"{j}_{source}"](nodes[source]) for _, source in node]
            total = terms[0]
            for term in terms[1:]:
                total = total + term
            nodes.append(total)
        return nodes[-1]


class NB201Reduction(nn.Module):
    """The residual block with stride 2 between NAS-Bench-201 stages."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(cin, cout, 3, 2)
        self.conv_b = ReLUConvBN(cout, cout, 3, 1)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(cin, cout, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_b(self.conv_a(x)) + self.downsample(x)


def nb201_network(arch: str, channels: int = 16, cells: int = 5, num_classes: int = 10) -> nn.Sequential:
    """The NAS-Bench-201 macro skeleton (C=16, N=5, three stages) around the given cell."""
    genotype = parse_nb201(arch)
    layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)]
    width = channels
    for stage in range(3):
        if stage:
            layers.append(NB201Reduction(width, width * 2))
            width *= 2
        layers += [NB201Cell(genotype, width) for _ in range(cells)]
    layers += [nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
               nn.Linear(width, num_classes)]
    return nn.Sequential(*layers)
