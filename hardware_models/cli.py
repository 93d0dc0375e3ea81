"""Command line: `python -m hardware_models.estimate --target zcu104 --model torchvision:resnet50 --input 3x224x224`.

Prints the result of `estimate()` as JSON. Errors are one line naming the problem and the fix, with a
non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

import torch

from hardware_models.api import estimate
from hardware_models.api import resolve_profile
from hardware_models.graph.executed import parse_input
from hardware_models.graph.specs import build_network
from hardware_models.graph.specs import list_schemes
from hardware_models.graph.trace import UnsupportedLayerError
from hardware_models.targets import list_targets


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hardware_models.estimate",
                                     description="Latency and energy of one network on one target, as JSON.")
    parser.add_argument("--target", required=True,
                        help=f"{', '.join(list_targets())}, or the path of a profile JSON")
    parser.add_argument("--model", required=True,
                        help=f"network spec SCHEME:ARG (schemes: {', '.join(list_schemes())})")
    parser.add_argument("--input", required=True, help="C x H x W (or 1 x C x H x W), e.g. 3x224x224")
    parser.add_argument("--precision", help="fp32, int8, int5, ... (target default if omitted)")
    parser.add_argument("--threads", type=int, help="CPU threads (CPU targets)")
    parser.add_argument("--runtime", help="vart-python / vart-cpp (DPU); onnxruntime (default), ncnn, pytorch "
                        "(Raspberry Pi)")
    parser.add_argument("--clock-ghz", type=float, help="override the board clock")
    parser.add_argument("--as-int8", action="store_true", help="cost non-8-bit layers as INT8 on the DPU")
    parser.add_argument("--per-layer", action="store_true", help="add the per-layer breakdown")
    return parser


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def estimate_main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        profile = resolve_profile(args.target)
        shape = parse_input(args.input)
        model = build_network(args.model, device="cpu" if profile.family == "host" else "meta")
        result = estimate(model, shape, args.target, precision=args.precision, per_layer=args.per_layer,
                          threads=args.threads, runtime=args.runtime, as_int8=args.as_int8,
                          clock_ghz=args.clock_ghz)
    except (KeyError, ValueError, FileNotFoundError, RuntimeError, UnsupportedLayerError) as error:
        message = error.args[0] if error.args else str(error)
        parser.exit(2, f"error: {message}\n")
    json.dump(_jsonable({"model": args.model, "input": list(shape), **result}), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0
