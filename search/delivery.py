"""One selected recipe of a finished study, delivered as a deployment bundle: its F3 model (the run's checkpoint,
or rebuilt at F3), adapted to the deploy resolution where the study declared a proxy, costed per target, and
written by `search.bundle.writer` with the study's Pareto plot marking it. `python -m search.export` and
`StudyResult.export()` both call `export_selected`."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from evaluators.candidate import Fidelity
from evaluators.candidate import estimate_targets
from evaluators.metric_names import column
from evaluators.metric_names import latency
from search.analysis.selection import Selected
from search.analysis.selection import read_run
from search.bundle.deploy_resolution import DeployResolution
from search.bundle.deploy_resolution import adapt
from search.bundle.run_checkpoint import checkpoint_path
from search.bundle.run_checkpoint import load_f3
from search.bundle.writer import write_bundle
from search.config import StudyConfig
from search.config import config_as_json
from search.pipeline.context import Context
from search.report.plots import pareto_plot
from spaces.recipe import TEACHER


def load_model(selected: Selected, run: Path, ctx: Context) -> torch.nn.Module:
    model = load_f3(run, selected.recipe, ctx.config.teacher.network)  # tensors + recipe, never a pickled module
    if model is not None:
        print(f"model: F3 checkpoint {checkpoint_path(run, selected.recipe)}", flush=True)
        return model
    print("model: no F3 checkpoint for this recipe; rebuilding it at F3 (the search's final budget)", flush=True)
    return ctx.evaluator.build(selected.recipe, Fidelity.F3).model


def export_selected(ctx: Context, run: Path, selected: Selected, out: str | Path | None, *,
                    test_images: int | None = None, requantize: bool = False) -> Path:
    """Write the bundle of `selected` (a recipe of the study at `run`) and return its folder.

    By default the test images are those F3 scored, so metrics.json sets the recipe's F3 test accuracy
    beside what each exported file measures on the very same images."""
    config = ctx.config
    print(f"exporting {selected.how}: {selected.recipe.to_json()}", flush=True)
    model = load_model(selected, run, ctx).eval()
    batcher = ctx.evaluator.batcher
    resolution = DeployResolution.of(batcher.resolution, config.hardware.deploy_resolution)
    searched = selected.metrics.get("f3_test_accuracy")
    searched = searched if isinstance(searched, (int, float)) and searched == searched else None
    adapted: dict = {"note": resolution.note()}
    if resolution.proxy:
        steps = config.hardware.deploy_finetune_steps
        print(f"{resolution.note()}: fine-tuning {steps} steps at {resolution.deployed}px", flush=True)
        result = adapt(model, selected.recipe, ctx.splits, resolution, steps, device=ctx.evaluator.device)
        model, batcher = result.model, result.batcher
        adapted = {**result.record, "searched_f3_test_at_proxy_resolution": searched}
        searched = None  # the F3 number is for the proxy size: the bundle's own accuracy is measured below
    shape = (ctx.splits.info.channels, batcher.resolution, batcher.resolution)
    predicted = estimate_targets(model, selected.recipe, shape, config.hardware)
    out = Path(out or run / "bundles" / selected.recipe.hash())
    out.mkdir(parents=True, exist_ok=True)
    png = out.parent / f".{out.name}-pareto.png"
    _plot(run, config, selected, png)
    extra = {"study": config.name, "profile": config.profile, "study_source": config.source, "selected": selected.how,
             "trial": selected.trial, "study_config": config_as_json(config), "resolution": adapted,
             "predicted_input_shape": list(shape),
             "search_metrics": {k: v for k, v in selected.metrics.items() if k[:3] in ("f1_", "f2_", "f3_")}}
    network = config.teacher.network if selected.recipe.student == TEACHER else selected.recipe.student
    metrics = write_bundle(model, selected.recipe, ctx.splits, batcher, out, predicted=predicted,
                           network=network, searched_accuracy=searched,
                           extra_metrics=json.loads(json.dumps(extra, default=str)), pareto_png=png,
                           test_images=config.fidelity.f3.test_images if test_images is None else test_images,
                           requantize=requantize)
    png.unlink(missing_ok=True)
    print(f"bundle written to {out}", flush=True)
    print(json.dumps(metrics.get("accuracy", {}), indent=1))
    return out


def _plot(run: Path, config: StudyConfig, selected: Selected, png: Path) -> None:
    trials, front = read_run(run)
    base = pd.read_csv(run / "baselines.csv") if (run / "baselines.csv").stat().st_size > 1 else pd.DataFrame()
    m = selected.metrics
    point = {"accuracy": m.get("f3_test_accuracy", m.get("f2_accuracy")),
             **{latency(t): m.get(column("f3", latency(t)), m.get(column("f2", latency(t))))
                for t in config.hardware.names}}
    pareto_plot(png, trials, front, base, config.hardware.names, title=f"{config.name}: {selected.how}",
                highlight={k: float(v) for k, v in point.items() if v is not None and v == v})
