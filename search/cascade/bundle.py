"""Write and verify a cascade bundle: one ordinary bundle per stage (stage1/, stage2/, ...: ONNX files, Vitis AI
scripts for the DPU stage, model.pt), `policy.json`, the standalone runner `run_cascade.py`, the ZCU104 runner
`zcu104/run_cascade_vart.py`, `metrics.json` and one manifest over everything.

What the bundle promises is measured on the bundle itself: metrics.json records the cascade as fitted
(PyTorch probabilities, validation fit, test report) and as its runner executes it (the stages' deployed ONNX
files with onnxruntime on the same test images); `verify_cascade` re-runs the runner and checks both.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from evaluators.data.batches import Batcher
from evaluators.data.splits import Splits
from hardware_models.api import estimate
from search.bundle.manifest import check_manifest
from search.bundle.manifest import check_named
from search.bundle.scripts import run_cascade as runner
from search.bundle.writer import FORMAT
from search.bundle.writer import SCRIPTS
from search.bundle.writer import _read_json
from search.bundle.writer import _write_json
from search.bundle.writer import manifest
from search.bundle.writer import write_bundle
from search.cascade.cost import CascadeCost
from search.cascade.cost import StageCost
from search.cascade.cost import expected_cost
from search.cascade.cost import placement
from search.cascade.fit import Fitted
from search.cascade.fit import labels_of
from search.cascade.fit import report_on_test
from search.cascade.model import CascadeError
from spaces.quant.fake_quant import float_mode
from spaces.recipe import Recipe

POLICY_FILE = "policy.json"
REQUIRED = (POLICY_FILE, "metrics.json", "run_cascade.py", "zcu104/run_cascade_vart.py", "stage1/metrics.json",
            "stage2/metrics.json")
TOLERANCE = 0.5  # points, for accuracy and escalation rate (in percent of inputs)
BENCHMARK_RUNS = 200


@dataclass(frozen=True)
class StageModel:
    """A stage to export: its model, the recipe it was built from, and its predictions per target."""

    name: str
    model: nn.Module
    recipe: Recipe
    network: str
    predicted: dict[str, dict[str, Any]]


def stage_cost(target: str, stage: StageModel, precision: str, shape: tuple[int, ...]) -> StageCost:
    """Where the target's placement runs this stage, and what it costs there."""
    where = placement(target).where(precision)
    result = stage.predicted.get(target, {})
    if result.get("latency_ms") is None:
        raise CascadeError(f"stage {stage.name!r} has no cost on {target} ({result.get('reason') or 'not predicted'}): "
                           "a cascade is costed only on targets every stage runs on")
    if where != target:  # e.g. the ZCU104's float stage on its Cortex-A53 cores, at the size the target was costed
        with float_mode(stage.model):
            result = estimate(stage.model, tuple(result.get("input_shape", shape)), where, precision="fp32")
    label = where if where == target else f"{Path(where).stem} (modelled from {target}'s placement)"
    return StageCost(float(result["latency_ms"]), float(result["energy_mj"]), label)


def cascade_costs(stages: Sequence[StageModel], precisions: Sequence[str], reach: Sequence[float],
                  targets: Sequence[str], shape: tuple[int, ...]) -> dict[str, CascadeCost]:
    return {t: expected_cost(t, [stage_cost(t, s, p, shape) for s, p in zip(stages, precisions, strict=True)],
                             reach) for t in targets}


def write_cascade_bundle(stages: Sequence[StageModel], fitted: Fitted, splits: Splits, batcher: Batcher,
                         out_dir: Path, *, targets: Sequence[str], test_images: int = 0,
                         extra_metrics: dict | None = None) -> dict[str, Any]:
    """Write the cascade bundle into an empty `out_dir`; returns the metrics written."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: a bundle is written into a new or empty folder only")
    test = splits.test.first(test_images)
    folders, precisions = _write_stages(stages, splits, batcher, out, test_images)
    info = splits.info
    shape = (info.channels, batcher.resolution, batcher.resolution)
    cascade = fitted.cascade
    policy = _write_policy(out, fitted, folders, precisions, splits, shape)
    searched = report_on_test(cascade, [s.model for s in stages], test, batcher)
    pixels = test.take(slice(None)).numpy()
    measured = runner.evaluate(out, pixels, labels_of(test), bench=min(BENCHMARK_RUNS, len(test)))
    metrics = {"kind": "cascade", "cascade": cascade.to_json(), "policy_file": POLICY_FILE,
               "input_shape": list(shape), "num_classes": info.num_classes, "data_fingerprint": splits.fingerprint,
               "fit": {"split": "val", "goal": {"kind": fitted.goal.kind, "value": fitted.goal.value},
                       "outcome": fitted.val.as_json(), "expected_cost": fitted.val_cost},
               "searched": searched.as_json(),
               "measured": {"split": "test", "runner": "run_cascade.py (onnxruntime, 1 thread)", **measured},
               "predicted": {t: c.as_json() for t, c in
                             cascade_costs(stages, precisions, searched.reach, targets, shape).items()},
               "predicted_note": "expected cost per inference with the escalation rates measured on the test split "
                                 "(searched); p95 is the latency of the deepest path at least 5% of inputs take"}
    clash = sorted(set(extra_metrics or {}) & set(metrics))
    if clash:
        raise ValueError(f"extra_metrics would overwrite measured entries {clash}; rename them")
    metrics.update(extra_metrics or {})
    _write_json(out / "metrics.json", metrics)
    (out / "README.md").write_text(_readme(metrics, policy))
    _write_json(out / "manifest.json", manifest(out))
    return metrics


def _write_stages(stages: Sequence[StageModel], splits: Splits, batcher: Batcher, out: Path,
                  test_images: int) -> tuple[list[str], list[str]]:
    """One ordinary bundle per stage; returns each stage's deployed file (relative to `out`) and its precision."""
    folders, precisions = [], []
    for k, stage in enumerate(stages, 1):
        stage_metrics = write_bundle(stage.model, stage.recipe, splits, batcher, out / f"stage{k}",
                                     predicted=stage.predicted, network=stage.network, test_images=test_images)
        folders.append(f"stage{k}/{stage_metrics['deployed_file']}")
        precisions.append("int8" if "int8" in stage_metrics["deployed_file"] else "fp32")
    return folders, precisions


def _write_policy(out: Path, fitted: Fitted, folders: list[str], precisions: list[str], splits: Splits,
                  shape: tuple[int, ...]) -> dict[str, Any]:
    """policy.json and the two runners that read it."""
    info = splits.info
    policy = {"stages": [{"name": s.name, "model": f, "precision": p}
                         for s, f, p in zip(fitted.cascade.stages, folders, precisions, strict=True)],
              "policy": fitted.cascade.policy.to_json(), "input_shape": list(shape), "num_classes": info.num_classes,
              "mean": list(info.mean), "std": list(info.std), "labels": list(info.classes)}
    _write_json(out / POLICY_FILE, policy)
    shutil.copyfile(SCRIPTS / "run_cascade.py", out / "run_cascade.py")
    (out / "zcu104").mkdir(exist_ok=True)
    shutil.copyfile(SCRIPTS / "run_cascade_vart.py", out / "zcu104" / "run_cascade_vart.py")
    return policy


def _readme(metrics: dict[str, Any], policy: dict[str, Any]) -> str:
    stages = " -> ".join(f"{s['name']} ({s['model']})" for s in policy["stages"])
    m, s = metrics["measured"], metrics["searched"]
    lines = [f"# Cascade bundle: {stages}", "",
             f"Policy: {policy['policy']['kind']}, score {policy['policy']['score']}, thresholds "
             f"{policy['policy']['thresholds']}, classes {policy['policy']['classes']} (fitted on the validation "
             "split; reported on the test split).", "",
             f"Test ({m['images']} images): accuracy {m['accuracy']:.2f}% with the ONNX runner "
             f"({s['accuracy']:.2f}% as searched), escalation rate {100 * m['escalation_rate']:.1f}%.", "",
             "Run: `python3 run_cascade.py --images X.npy --labels Y.npy --benchmark 200` (numpy + onnxruntime).",
             "ZCU104: compile stage1 with stage1/zcu104/compile.sh, then `python3 zcu104/run_cascade_vart.py "
             "--images X.npy` (DPU for stage 1, the A53 cores for the float stages; falls back to the CPU).", ""]
    return "\n".join(lines)


def is_cascade_bundle(folder: Path) -> bool:
    return (Path(folder) / POLICY_FILE).is_file()


def verify_cascade(out_dir: Path, splits: Splits | None = None, tolerance: float = TOLERANCE) -> list[str]:
    """Problems (empty: none): checksums, then the runner re-run on the recorded test images must reproduce the
    recorded accuracy and escalation rate, and stay within `tolerance` points of the searched cascade."""
    out = Path(out_dir)
    problems = check_manifest(out, REQUIRED, FORMAT)  # containment, unlisted files, checksums: before any parsing
    if not problems:  # the stages the runner loads are the files it deploys: each must be listed
        policy, problems = _read_json(out, POLICY_FILE)
        stages = policy.get("stages") if isinstance(policy, dict) else None
        stages = stages if isinstance(stages, list) and stages else [None]
        models = [s.get("model") if isinstance(s, dict) else None for s in stages]
        problems += check_named(out, POLICY_FILE, models)
    if splits is None or problems:
        return problems
    metrics, more = _read_json(out, "metrics.json")
    if metrics is None:
        return more
    if metrics.get("data_fingerprint") not in (None, splits.fingerprint):
        return [f"metrics.json: measured on data {metrics['data_fingerprint']}, given {splits.fingerprint}"]
    recorded, searched = metrics["measured"], metrics["searched"]
    test = splits.test.first(int(recorded["images"]))
    again = runner.evaluate(out, test.take(slice(None)).numpy(), labels_of(test))
    for key, scale in (("accuracy", 1.0), ("escalation_rate", 100.0)):
        for name, ref in (("metrics.json (measured)", recorded), ("the searched cascade", searched)):
            if abs(again[key] - ref[key]) * scale > tolerance:
                problems.append(f"{POLICY_FILE}: runner {key} {again[key] * scale:.2f} on {len(test)} test images, "
                                f"{name} says {ref[key] * scale:.2f} (tolerance {tolerance} points)")
    return problems
