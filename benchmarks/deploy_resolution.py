"""`python -m benchmarks.deploy_resolution --run RUN`: what a declared proxy resolution costs at export.

A study that searches at its training size (32) but deploys at another (`[hardware] deploy_resolution`, e.g.
224) must fine-tune the chosen recipe at the deploy size before its bundle is written
(`search.bundle.deploy_resolution.adapt`). This measures, for the knee of a finished run (or `--trial N`):
the accuracy at the deploy size without that fine-tune and after `--steps` steps, and the seconds per step,
so the cost of the full `deploy_finetune_steps` can be read off. Accuracy is on the first `--images` test
images (reported only; nothing is selected on it).

    python -m benchmarks.deploy_resolution --run runs/resnet50_cifar10/smoke --deploy 224 --steps 4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from evaluators.metrics import accuracy
from search.analysis.selection import select
from search.api import RunOptions
from search.api import Study
from search.bundle.deploy_resolution import DeployResolution
from search.bundle.deploy_resolution import adapt
from search.bundle.run_checkpoint import load_f3
from search.config import from_json


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.deploy_resolution", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a finished study's run folder (with checkpoints/)")
    p.add_argument("--trial", type=int, default=None, help="the trial to adapt (default: the knee)")
    p.add_argument("--deploy", type=int, default=224, help="the deploy resolution (default 224)")
    p.add_argument("--steps", type=int, default=4, help="fine-tune steps to time (default 4)")
    p.add_argument("--images", type=int, default=200, help="test images scored (default 200)")
    args = p.parse_args(argv)
    run = Path(args.run)
    config = from_json(json.loads((run / "config.json").read_text()), str(run / "config.json"))
    ctx = Study(config, RunOptions(out=str(run), device="cpu", progress=False)).context()
    selected = select(run, config.hardware.names, trial=args.trial, pick=None if args.trial is not None else "knee")
    model = load_f3(run, selected.recipe, config.teacher.network)  # the run's own F3 checkpoint (tensors only)
    if model is None:
        raise SystemExit(f"error: {run} has no F3 checkpoint for {selected.how}; run the study's final stage first")
    resolution = DeployResolution(ctx.evaluator.batcher.resolution, args.deploy)
    test = ctx.splits.test.first(args.images)
    searched = accuracy(model, test, ctx.evaluator.batcher)
    rows = []
    for steps in (0, args.steps):
        t0 = time.monotonic()
        adapted = adapt(model, selected.recipe, ctx.splits, resolution, steps, calib_images=256, progress=False)
        seconds = time.monotonic() - t0
        rows.append((steps, seconds, accuracy(adapted.model, test, adapted.batcher)))
    per_step = (rows[1][1] - rows[0][1]) / max(args.steps, 1)
    print(f"{selected.how} ({selected.recipe.hash()}), test accuracy on the first {len(test)} images: "
          f"{searched:.1f}% at {resolution.searched} px")
    print("| fine-tune steps at deploy size | seconds (incl. calibration) | test accuracy at deploy size |")
    print("|---|---|---|")
    for steps, seconds, acc in rows:
        print(f"| {steps} | {seconds:.1f} | {acc:.1f}% |")
    print(f"about {per_step:.1f} s per step at {resolution.deployed} px: {config.hardware.deploy_finetune_steps} "
          f"steps take about {per_step * config.hardware.deploy_finetune_steps / 60:.0f} min on this machine")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
