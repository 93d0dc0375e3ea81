"""`python -m search.export --study NAME [--trial N | --pick knee | --pick RULE] [--out DIR]`: one recipe of a
finished study as a deployment bundle; `python -m search.export --verify DIR` re-checks a bundle.

The model is the recipe's F3 build: its checkpoint from the study when the final stage saved one, else
rebuilt now at F3 (deterministic, so the same network). See `search.bundle.writer` for what the folder holds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from evaluators.data.config import prepare_data
from evaluators.data.datasets import DataError
from search.analysis.selection import SelectionError
from search.analysis.selection import read_run
from search.analysis.selection import select
from search.api import RunOptions
from search.api import Study
from search.bundle.model_file import BundleModelError
from search.bundle.writer import FALLBACK_FILE
from search.bundle.writer import verify_bundle
from search.cascade.bundle import is_cascade_bundle
from search.cascade.bundle import verify_cascade
from search.cascade.export import CascadeSpec
from search.cascade.export import cascade_of
from search.cascade.export import export_cascade
from search.cascade.model import CascadeError
from search.config import ConfigError
from search.config import StudyConfig
from search.config import check_study_code
from search.config import config_as_json
from search.config import config_of_run
from search.config import from_json
from search.config import json_object
from search.config import load_study
from search.config import trust_study
from search.delivery import export_selected
from search.delivery import load_model
from spaces.models.code_trust import grant
from spaces.models.user_models import add_code_path

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
    p.add_argument("--code", default=None, metavar="DIR",
                   help="folder holding your own package, when the run's config.json (or, with --verify, the bundle's "
                        "model.pt) names your 'package.module:factory' (a name read from a file is imported only then)")
    p.add_argument("--data-root", default=None, help="dataset folder (default: as search.run finds it)")
    p.add_argument("--cache-dir", default=None, help="teacher cache (default: as search.run)")
    p.add_argument("--test-images", type=int, default=None,
                   help="test images measured (default: the count the study's F3 stage scored, so the bundle's "
                        "accuracies compare image for image with the recipe's F3 test accuracy; 0: the whole split)")
    p.add_argument("--requantize", action="store_true",
                   help=f"also write the fallback {FALLBACK_FILE}: onnxruntime's own int8 calibration of the "
                        "float network (not the searched quantization)")
    c = p.add_argument_group("cascade", "export the chosen recipe and the teacher as a cascade (search.cascade.model)")
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


def run_config(args: argparse.Namespace) -> StudyConfig:
    """The run's config: its own `config.json` (the teacher and budgets its plan sized: never the profile's unsized
    values, which would name another teacher and train it), found by `--run` or by `--study` and `--profile`. That
    file is data: the code it names is imported only with `--code DIR`, or when `--study` names the user's own file."""
    grant(folders=(args.code,) if args.code else ())
    if not (args.run or args.study):
        raise ConfigError("--study is required (or --run DIR of a finished study, or --verify DIR)")
    study = load_study(args.study, args.profile) if args.study else None
    if study is not None:
        trust_study(study)
    run = Path(args.run) if args.run else Path("runs") / study.name / study.profile
    config = config_of_run(run, args.study, args.profile)
    if args.code:
        config = dataclasses.replace(config, teacher=dataclasses.replace(config.teacher,
                                                                         code=str(Path(args.code).resolve())))
    return config


def export(args: argparse.Namespace) -> int:
    config = run_config(args)
    check_study_code(config)  # code named by config.json runs only with --code or --study: refused before any read
    run = Path(args.run or Path("runs") / config.name / config.profile)
    read_run(run)  # an empty or missing study fails before any data is read
    selected = select(run, config.hardware.names, trial=args.trial, pick=args.pick)
    spec = cascade_spec(args) if args.cascade else cascade_of(selected)
    study = Study(config, RunOptions(out=str(run), data_root=args.data_root, cache_dir=args.cache_dir,
                                     device="cpu", progress=True))
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


def verify(args: argparse.Namespace) -> int:
    """Integrity, then each file's accuracy and the deployed file's agreement with model.pt's network, which is
    rebuilt: a bundle whose network is the user's own `package.module:factory` needs `--code DIR` for that."""
    grant(folders=(args.code,) if args.code else ())
    add_code_path(args.code)
    folder = Path(args.verify)
    metrics_path = folder / "metrics.json"
    if not folder.is_dir() or not (folder / "manifest.json").is_file():
        raise SelectionError(f"{folder} is not a bundle (no manifest.json); give the folder search.export wrote")
    check = verify_cascade if is_cascade_bundle(folder) else verify_bundle
    broken = check(folder)  # integrity (search.bundle.manifest) before any file of the bundle is parsed
    if broken:
        return _report(folder, broken, "")
    metrics = json_object(metrics_path)
    if not isinstance(metrics.get("study_config"), dict):
        raise ConfigError(f"{metrics_path}: no study_config (a bundle from an older version): its checksums match; "
                          "re-export it to verify its accuracy")
    config = from_json(metrics["study_config"], f"{metrics_path} (study_config)")  # data: no code it names runs
    splits, batcher = prepare_data(config.data, args.data_root, allow_download=False, cache_dir=_cache(args))
    if is_cascade_bundle(folder):
        return _report(folder, verify_cascade(folder, splits), "the cascade runner reproduces its accuracy and "
                       "escalation rate within 0.5 points of metrics.json and of the searched cascade")
    dpu = " (model_dpu.onnx: with the emulated DPU model and its recorded fix positions)" if metrics.get("dpu") else ""
    return _report(folder, verify_bundle(folder, splits, batcher), "every ONNX file reproduces its test accuracy and "
                   f"the deployed one agrees with the searched model on at least 99% of the test predictions{dpu}")


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
    except (ConfigError, CascadeError, DataError, SelectionError, FileExistsError, BundleModelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
