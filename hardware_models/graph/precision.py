"""What precision each layer runs at, from `estimate(..., precision=...)`.

Accepted: a name (`fp32`, `fp16`, `int8`, `int5`, ...), a bit width (8), or a mapping from layer name to
bits/name with an optional `"*"` default - the per-layer bit map a mixed-precision quantisation recipe
produces. Only layers with weights (convolutions, linear) carry a precision.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field

from hardware_models.graph.executed import Network
from hardware_models.graph.ops import Kind

PrecisionSpec = str | int | Mapping[str, str | int] | None


def bits_of(value: str | int) -> int:
    if isinstance(value, int):
        if not 1 <= value <= 64:
            raise ValueError(f"bit width {value} is out of range 1..64")
        return value
    match = re.fullmatch(r"(fp|float|int|uint|bf)?(\d+)", value.strip().lower())
    if not match:
        raise ValueError(f"unknown precision {value!r}: use fp32, fp16, int8, int4, ... or a bit width")
    return int(match.group(2))


@dataclass(frozen=True)
class PrecisionPlan:
    default_bits: int
    per_layer: Mapping[str, int] = field(default_factory=dict)

    def bits(self, layer_name: str) -> int:
        return self.per_layer.get(layer_name, self.default_bits)

    def weight_bits(self, network: Network) -> dict[str, int]:
        """Bits of every executed layer that has weights."""
        return {layer.name: self.bits(layer.name) for layer in network.computed()
                if layer.kind in (Kind.CONV, Kind.DWCONV, Kind.FC)}

    def label(self, network: Network) -> str:
        widths = sorted(set(self.weight_bits(network).values())) or [self.default_bits]
        return "/".join(_name(b) for b in widths)


def _name(bits: int) -> str:
    return "fp32" if bits == 32 else "fp16" if bits == 16 else f"int{bits}"


def resolve(spec: PrecisionSpec, default: str) -> PrecisionPlan:
    if spec is None:
        return PrecisionPlan(bits_of(default))
    if isinstance(spec, (str, int)):
        return PrecisionPlan(bits_of(spec))
    per_layer = {str(k): bits_of(v) for k, v in spec.items() if k != "*"}
    return PrecisionPlan(bits_of(spec.get("*", default)), per_layer)


def unknown_layers(plan: PrecisionPlan, network: Network) -> list[str]:
    """Names in the bit map that are not layers of the network (a typo would silently do nothing)."""
    names = {layer.name for layer in network.layers}
    return sorted(set(plan.per_layer) - names)
