"""Marker nodes that stand for a quantizer in an ONNX export (`Mode.EXPORT` in `spaces.quant.fake_quant`).

A quantizer cannot write its own QuantizeLinear/DequantizeLinear nodes from inside a traced forward: its scale
and zero point are module buffers, which a traced `torch.autograd.Function` cannot read. So each quantizer emits
`ecs::Act`, `ecs::Weight` or `ecs::Bias` named after itself, and `search.bundle.qdq` replaces every marker by that
quantizer's own parameters after the export.
"""

from __future__ import annotations

import torch

MARK_DOMAIN = "ecs"  # the custom ONNX domain of the export markers
BIAS_BOUND = 2**31 - 256  # int32 bias codes saturate here (the largest float32 below 2^31, so both sides agree)


class ExportMark(torch.autograd.Function):
    """One quantizer in an ONNX export: `ecs::<kind>(x)` named `name`.

    The trace needs shapes only, and the quantizer's own buffers cannot be read inside a traced Function, so the
    forward passes `x` through; `search.bundle.qdq` writes the quantizer's arithmetic in place of the marker."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor, kind: str, name: str) -> torch.Tensor:  # noqa: ARG004
        return x.clone()

    @staticmethod
    def symbolic(g: object, x: object, kind: str, name: str) -> object:
        out = g.op(f"{MARK_DOMAIN}::{kind}", x, name_s=name)  # type: ignore[attr-defined]
        out.setType(x.type())  # type: ignore[attr-defined]
        return out


def export_mark(x: torch.Tensor, kind: str, name: str) -> torch.Tensor:
    if not name:
        raise RuntimeError(f"an {kind} quantizer has no export name: search.bundle.qdq names them before exporting")
    return ExportMark.apply(x, kind, name)
