"""`python -m search.export --study NAME [--trial N | --pick knee | --pick RULE] [--out DIR]`: one recipe of a
finished study as a deployment bundle; `python -m search.export --verify DIR` re-checks a bundle.

The model is the recipe's F3 build: its checkpoint from the study when the final stage saved one, else
rebuilt now at F3 (deterministic, so the same network). See `search.bundle` for what the folder holds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from evaluators.candidate import Fidelity
from evaluators.candidate import estimate_targets
from evaluators.datasets import DataError
from search.api import RunOptions
from search.api import Study
from search.api import config_as_json
from search.bundle import FALLBACK_FILE
from search.bundle import verify_bundle
from search.bundle import write_bundle
from search.cascade import CascadeError
from search.cascade_bundle import is_cascade_bundle
from search.cascade_bundle import verify_cascade
from search.cascade_export import CascadeSpec
from search.cascade_export import cascade_of
from search.cascade_export import export_cascade
from search.config import ConfigError
from search.config import StudyConfig
from search.config import from_json
from search.config import load_study
from search.context import Context
from search.deploy_resolution import DeployResolution
from search.deploy_resolution import adapt
from search.plots import pareto_plot
from search.selection import Selected
from search.selection import SelectionError
from search.selection import read_run
from search.selection import select
from spaces.recipe import TEACHER

EXIT_USAGE, EXIT_FAILED = 2, 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m search.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--study", help="the study that was run (name in studies/ or a .toml path)")
    p.add_argument("--profile", default=None, help="its profile (default: as search.run chooses)")
    p.add_argument("--run", default=None, help="the study's run folder (default: runs/<study>/<profile>/); alone, "
                   "its config.json names the study")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trial", type=int, default=None, help="export this trial number (see trials.csv)")
    which.add_argument("--pick", default=None,
                       help="'knee' (default), 'cascade' (the front's most accurate cascade), or "
                            "'max|min METRIC [with METRIC OP NUMBER [and ...]]', e.g. "
                            "'max accuracy with latency_zcu104 <= 5' (applied to the front's F3 validation numbers)")
    p.add_argument("--out", default=None, help="bundle folder (default: <run>/bundles/<recipe hash>/); must be empty")
    p.add_argument("--verify", default=None, metavar="DIR",
                   help="re-check a bundle: checksums, then each ONNX file's accuracy on the test split")
    p.add_argument("--data-root", default=None, help="dataset folder (default: as search.run finds it)")
    p.add_argument("--cache-dir", default=None, help="teacher cache (default: as search.run)")
    p.add_argument("--test-images", type=int, default=None,
                   help="test images measured (default: the count the study's F3 stage scored, so the bundle's "
                        "accuracies compare image for image with the recipe's F3 test accuracy; 0: the whole split)")
    p.add_argument("--requantize", action="store_true",
                   help=f"also write the fallback {FALLBACK_FILE}: onnxruntime's own int8 calibration of the "
                        "float network (not the searched quantization)")
    c = p.add_argument_group("cascade", "export the chosen recipe and the teacher as a cascade (search.cascade)")
    c.add_argument("--cascade", action="store_true", help="stage 1 the chosen recipe, stage 2 the study's teacher")
    c.add_argument("--cascade-policy", default="confidence", help="confidence (default), budget or priority")
    c.add_argument("--cascade-score", default="max_softmax", help="max_softmax (default) or margin")
    c.add_argument("--cascade-within", type=float, default=0.5,
                   help="fit: the cheapest thresholds within this many points of the teacher on validation")
    c.add_argument("--cascade-budget", type=float, default=0.0, help="budget policy: expected cost per inference")
    c.add_argument("--cascade-metric", default="", help="the cost fitted: energy_<target> (default: first target) "
                   "or latency_<target>")
    c.add_argument("--cascade-classes", default="", help="priority policy: comma-separated class indices")
    c.add_argument("--cascade-stages", default="teacher",
                   help="the stages after the chosen recipe: 'teacher' (default), 'float' (its float counterpart) "
                        "or 'float,teacher' (a triple)")
    return p.parse_args(argv)


def cascade_spec(args: argparse.Namespace) -> CascadeSpec:
    classes = tuple(int(c) for c in args.cascade_classes.split(",") if c.strip())
    return CascadeSpec(policy=args.cascade_policy, score=args.cascade_score, within=args.cascade_within,
                       budget=args.cascade_budget, metric=args.cascade_metric, classes=classes,
                       later=tuple(s.strip() for s in args.cascade_stages.split(",") if s.strip()))


def load_model(selected: Selected, run: Path, ctx: Context) -> torch.nn.Module:
    path = run / "checkpoints" / f"{selected.recipe.hash()}.pt"
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=False)  # our own file: a pickled module
        print(f"model: F3 checkpoint {path}", flush=True)
        return saved["model"]
    print("model: no F3 checkpoint for this recipe; rebuilding it at F3 (the search's final budget)", flush=True)
    return ctx.evaluator.build(selected.recipe, Fidelity.F3).model


def run_config(args: argparse.Namespace) -> StudyConfig:
    """The study's config: from `--study` (a file), else the resolved `config.json` the run wrote."""
    if args.study:
        return load_study(args.study, args.profile)
    if args.run and (Path(args.run) / "config.json").is_file():
        path = Path(args.run) / "config.json"
        return from_json(json.loads(path.read_text()), str(path))
    raise ConfigError("--study is required (or --run DIR of a finished study, or --verify DIR)")


def export(args: argparse.Namespace) -> int:
    config = run_config(args)
    run = Path(args.run or Path("runs") / config.name / config.profile)
    read_run(run)  # an empty or missing study fails before any data is read
    selected = select(run, config.hardware.names, trial=args.trial, pick=args.pick)
    spec = cascade_spec(args) if args.cascade else cascade_of(selected)
    study = Study(config, RunOptions(out=str(run), data_root=args.data_root, cache_dir=args.cache_dir,
                                     device="cpu", progress=False))
    if spec is not None:
        ctx = study.context()
        out = Path(args.out or run / "bundles" / f"cascade-{selected.recipe.hash()}")
        extra = {"study": config.name, "profile": config.profile, "selected": selected.how,
                 "study_config": json.loads(json.dumps(config_as_json(config), default=str))}
        export_cascade(ctx, selected, load_model(selected, run, ctx).eval(), out, spec,
                       config.fidelity.f3.test_images if args.test_images is None else args.test_images, extra)
        return 0
    export_selected(study.context(), run, selected, args.out, test_images=args.test_images,
                    requantize=args.requantize)
    return 0


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


def _plot(run: Path, config, selected: Selected, png: Path) -> None:  # noqa: ANN001 - a StudyConfig
    import pandas as pd

    trials, front = read_run(run)
    base = pd.read_csv(run / "baselines.csv") if (run / "baselines.csv").stat().st_size > 1 else pd.DataFrame()
    m = selected.metrics
    point = {"accuracy": m.get("f3_test_accuracy", m.get("f2_accuracy")),
             **{f"latency_{t}": m.get(f"f3_latency_{t}", m.get(f"f2_latency_{t}")) for t in config.hardware.names}}
    pareto_plot(png, trials, front, base, config.hardware.names, title=f"{config.name}: {selected.how}",
                highlight={k: float(v) for k, v in point.items() if v is not None and v == v})


def verify(args: argparse.Namespace) -> int:
    folder = Path(args.verify)
    metrics_path = folder / "metrics.json"
    if not metrics_path.exists():
        raise SelectionError(f"{folder} is not a bundle (no metrics.json)")
    metrics = json.loads(metrics_path.read_text())
    if "study_config" in metrics:
        config = from_json(metrics["study_config"], f"{metrics_path} (study_config)")
    else:  # bundles written before the config was stored in them
        source = metrics.get("study_source") or ""
        config = load_study(source if Path(source).is_file() else metrics["study"], metrics["profile"])
    from evaluators.data import prepare_data

    splits, batcher = prepare_data(config.data, args.data_root, allow_download=False, cache_dir=_cache(args))
    if is_cascade_bundle(folder):
        return _report(folder, verify_cascade(folder, splits), "the cascade runner reproduces its accuracy and "
                       "escalation rate within 0.5 points of metrics.json and of the searched cascade")
    return _report(folder, verify_bundle(folder, splits, batcher), "every ONNX file reproduces its test accuracy and "
                   "the deployed one agrees with the searched model on at least 99% of the test predictions")


def _report(folder: Path, problems: list[str], what: str) -> int:
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    if problems:
        return EXIT_FAILED
    print(f"bundle {folder} verified: every checksum matches, {what}")
    return 0


def _cache(args: argparse.Namespace) -> Path | None:
    return Path(args.cache_dir) if args.cache_dir else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return verify(args) if args.verify else export(args)
    except (ConfigError, CascadeError, DataError, SelectionError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
