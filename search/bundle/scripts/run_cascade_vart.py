#!/usr/bin/env python3
"""Run a cascade on the ZCU104: the INT8 stage on the DPU with VART, the float stage(s) on the Cortex-A53
cores with onnxruntime, as the cascade's ZCU104 cost was modelled.

On the board, after ../stage1/zcu104/compile.sh has written ../stage1/zcu104/compiled/model.xmodel:

    python3 run_cascade_vart.py --images images.npy --labels labels.npy [--benchmark 200]

Fallback: when VART is not installed or the xmodel is missing, stage 1 runs its ONNX file on the CPU instead
(said on stderr): the decisions are the same, the latency is not the DPU's. The policy (thresholds, classes,
score) is read from ../policy.json and applied by the same code as ../run_cascade.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BUNDLE = HERE.parent
sys.path[:0] = [str(BUNDLE), str(BUNDLE / "stage1" / "zcu104")]

import run_cascade  # noqa: E402  (the bundle's own runner: policy and preprocessing)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, required=True, help=".npy of raw pixels, N x C x H x W")
    p.add_argument("--labels", type=Path, default=None)
    p.add_argument("--xmodel", type=Path, default=BUNDLE / "stage1" / "zcu104" / "compiled" / "model.xmodel")
    p.add_argument("--threads", type=int, default=4, help="onnxruntime threads for the A53 stages")
    p.add_argument("--benchmark", type=int, default=0, metavar="N")
    return p.parse_args(argv)


class DpuStage:
    """Stage 1 on the DPU: logits of one NCHW float image."""

    def __init__(self, xmodel: Path) -> None:
        import run_vart  # the DPU stage's own VART runner (stage1/zcu104/run_vart.py)

        self.dpu = run_vart.Dpu(xmodel)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.dpu.timed_run(np.ascontiguousarray(x[0].transpose(1, 2, 0)))[0][None]


class OnnxStage:
    def __init__(self, path: Path, threads: int) -> None:
        self.session = run_cascade.make_session(path, threads)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.session.get_inputs()[0].name: x})[0]


def first_stage(args: argparse.Namespace, policy: dict):  # noqa: ANN201 - DpuStage | OnnxStage
    try:
        if not args.xmodel.is_file():
            raise FileNotFoundError(args.xmodel)
        return DpuStage(args.xmodel)
    except (ImportError, FileNotFoundError) as error:
        print(f"fallback: stage 1 runs {policy['stages'][0]['model']} on the CPU ({type(error).__name__}: {error})",
              file=sys.stderr)
        return OnnxStage(BUNDLE / policy["stages"][0]["model"], 1)


def classify(stages: list, x: np.ndarray, rule: dict) -> tuple[int, int]:
    """(prediction, deepest stage) of one normalized image, batch 1."""
    for k, stage in enumerate(stages):
        probs = run_cascade.softmax(stage(x))
        if k == len(stages) - 1 or not run_cascade.escalates(probs, rule, k)[0]:
            return int(probs.argmax()), k
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    policy = run_cascade.load_policy(BUNDLE)
    stages = [first_stage(args, policy)] + [OnnxStage(BUNDLE / s["model"], args.threads)
                                            for s in policy["stages"][1:]]
    x = run_cascade.normalize(np.load(args.images, allow_pickle=False), policy)
    labels = np.load(args.labels, allow_pickle=False).astype(np.int64) if args.labels else None
    preds, depth, times = [], [], []
    for i in range(len(x)):
        t0 = time.perf_counter()
        p, d = classify(stages, x[i:i + 1], policy["policy"])
        times.append((time.perf_counter() - t0) * 1e3)
        preds.append(p)
        depth.append(d)
    result = run_cascade.summarize(np.asarray(preds), np.asarray(depth), labels, len(stages))
    if args.benchmark:
        t = np.asarray(times[: args.benchmark])
        result["latency"] = {"mean_ms": float(t.mean()), "p95_ms": float(np.percentile(t, 95)), "runs": int(t.size)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
