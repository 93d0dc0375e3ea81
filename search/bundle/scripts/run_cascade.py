#!/usr/bin/env python3
"""Run a cascade bundle: the cheap stage on every image, the next stage only when policy.json says so.

Standalone: needs numpy and onnxruntime only. Images are a .npy array of raw pixels (N x C x H x W, 0..255,
at the model's input size), as calibration/images.npy in each stage folder is:

    python3 run_cascade.py --images test.npy --labels labels.npy            # accuracy and escalation rate
    python3 run_cascade.py --images test.npy --benchmark 200                # batch-1 mean and p95 latency too
    python3 run_cascade.py --images test.npy --labels labels.npy --json out.json

The rule (the same for every policy kind, see policy.json): after stage k, an image escalates when its
confidence score (max softmax, or the margin between the two most likely classes) is below thresholds[k], or
when stage k predicts a class in `classes`. Preprocessing: pixels / 255, minus the mean, over the std.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
POLICY = "policy.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, required=True, help=".npy of raw pixels, N x C x H x W")
    p.add_argument("--labels", type=Path, default=None, help=".npy of class indices (for accuracy)")
    p.add_argument("--bundle", type=Path, default=HERE, help="the cascade bundle (default: this script's folder)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads per stage")
    p.add_argument("--benchmark", type=int, default=0, metavar="N", help="time the first N images at batch 1")
    p.add_argument("--warmup", type=int, default=10, help="untimed batch-1 runs before the benchmark")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def load_policy(bundle: Path) -> dict:
    with open(bundle / POLICY, encoding="utf-8") as f:
        return json.load(f)


def make_session(path: Path, threads: int):  # noqa: ANN201 - onnxruntime.InferenceSession
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def sessions(bundle: Path, policy: dict, threads: int = 1) -> list:
    return [make_session(bundle / stage["model"], threads) for stage in policy["stages"]]


def normalize(pixels: np.ndarray, policy: dict) -> np.ndarray:
    mean = np.asarray(policy["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(policy["std"], np.float32).reshape(1, -1, 1, 1)
    return ((pixels.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def score(probs: np.ndarray, kind: str) -> np.ndarray:
    if kind == "max_softmax":
        return probs.max(axis=1)
    if kind == "margin":
        top = np.sort(probs, axis=1)[:, -2:]
        return top[:, 1] - top[:, 0]
    raise SystemExit(f"policy.json: unknown score {kind!r}; this runner knows max_softmax and margin")


def escalates(probs: np.ndarray, rule: dict, boundary: int) -> np.ndarray:
    out = np.zeros(len(probs), dtype=bool)
    if rule.get("thresholds"):
        out |= score(probs, rule["score"]) < float(rule["thresholds"][boundary])
    if rule.get("classes"):
        out |= np.isin(probs.argmax(axis=1), np.asarray(rule["classes"], dtype=np.int64))
    return out


def _run(session, x: np.ndarray) -> np.ndarray:  # noqa: ANN001
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def cascade(runners: list, x: np.ndarray, rule: dict, batch: int = 250) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, deepest stage index reached per image) for normalized images `x`, in batches: each stage
    runs only on the images that escalated to it, so the decisions are those of one-at-a-time inference."""
    preds = np.zeros(len(x), dtype=np.int64)
    depth = np.zeros(len(x), dtype=np.int64)
    for start in range(0, len(x), batch):
        active = np.arange(start, min(start + batch, len(x)))
        for k, runner in enumerate(runners):
            probs = softmax(_run(runner, x[active]))
            preds[active] = probs.argmax(axis=1)
            depth[active] = k
            if k == len(runners) - 1:
                break
            active = active[escalates(probs, rule, k)]
            if not active.size:
                break
    return preds, depth


def summarize(preds: np.ndarray, depth: np.ndarray, labels: np.ndarray | None, stages: int) -> dict:
    n = max(len(preds), 1)
    reach = [float((depth >= k).sum()) / n for k in range(stages)]
    out = {"images": int(len(preds)), "escalation_rate": reach[1], "reach": reach}
    if labels is not None:
        out["accuracy"] = 100.0 * float((preds == labels).sum()) / n
    return out


def benchmark(runners: list, x: np.ndarray, rule: dict, runs: int, warmup: int) -> dict:
    """Batch-1 wall time of the whole cascade per image (stage runs, softmax and decision), on real images: the
    latency depends on which images escalate, so timing one random tensor would miss the point."""
    for i in range(warmup):
        cascade(runners, x[i % len(x)][None], rule, 1)
    times = []
    for i in range(min(runs, len(x))):
        t0 = time.perf_counter_ns()
        cascade(runners, x[i][None], rule, 1)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    t = np.asarray(times)
    return {"runs": int(t.size), "mean_ms": float(t.mean()), "p95_ms": float(np.percentile(t, 95)),
            "median_ms": float(np.median(t)), "batch": 1}


def evaluate(bundle: Path, pixels: np.ndarray, labels: np.ndarray | None, *, threads: int = 1,
             bench: int = 0, warmup: int = 10) -> dict:
    policy = load_policy(bundle)
    shape = list(policy["input_shape"])
    if list(pixels.shape[1:]) != shape:
        raise SystemExit(f"images are {list(pixels.shape[1:])}, the cascade takes {shape}: resize them first")
    runners = sessions(bundle, policy, threads)
    x = normalize(pixels, policy)
    preds, depth = cascade(runners, x, policy["policy"])
    result = summarize(preds, depth, labels, len(runners))
    if bench > 0:
        result["latency"] = benchmark(runners, x, policy["policy"], bench, warmup)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pixels = np.load(args.images, allow_pickle=False)
    labels = np.load(args.labels, allow_pickle=False).astype(np.int64) if args.labels else None
    result = evaluate(args.bundle, pixels, labels, threads=args.threads, bench=args.benchmark, warmup=args.warmup)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
