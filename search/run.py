"""`python -m search.run --study NAME`: run a compression study end to end.

It resolves the study, prepares the data and the teacher, writes the baseline every compressed candidate
is compared against, then searches (`search.study`) and writes trials.csv, pareto.csv, pareto.png and
report.md. The optuna storage makes every run resumable: the same command continues it. Errors a user can fix are one
line on stderr with a non-zero exit; Ctrl-C or SIGTERM saves progress, and rerunning continues.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from evaluators.datasets import DATA_ROOT_ENV
from evaluators.datasets import DataError
from evaluators.teacher import CACHE_ENV
from search.config import ConfigError
from search.config import StudyConfig
from search.config import available_studies
from search.config import load_study
from search.context import Context
from search.context import RunSpec
from search.context import load_context
from search.context import make_plan
from search.engine import StudyMismatch
from search.study import Backend
from search.study import run_study
from search.study import storage_url
from search.study import study_name

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def default_profile() -> str:
    """`paper` needs a GPU to finish in reasonable time; without one the `cpu` profile is the default."""
    return "paper" if torch.cuda.is_available() else "cpu"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m search.run",
        description="Find the best way to compress a trained CNN for an edge board: runs one study.",
    )
    p.add_argument("--study", required=True,
                   help=f"study name in studies/ or path to a .toml file (available: {', '.join(available_studies())})")
    p.add_argument("--profile", default=None,
                   help="smoke (minutes, for tests), cpu (about an hour on 2 cores) or paper (224x224, the "
                        "thesis's schedule, for a GPU); default: paper with a GPU, else cpu")
    p.add_argument("--data-root", default=None,
                   help=f"folder holding cifar-10-batches-bin/ (or -py/) and MNIST/raw/; default: ${DATA_ROOT_ENV}, "
                        "else ./data, else ../shared/data; downloaded into ./data when online and missing")
    p.add_argument("--no-download", action="store_true",
                   help="never try to download a missing dataset; fail with instructions instead")
    p.add_argument("--out", default=None, help="output folder (default: runs/<study>/<profile>/)")
    p.add_argument("--cache-dir", default=None,
                   help=f"where trained teachers are cached (default: ${CACHE_ENV}, "
                        "else ~/.cache/edge-compress-search)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to train and evaluate (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars (logs stay)")
    p.add_argument("--trials", type=int, default=None, help="number of search trials (default: the profile's)")
    p.add_argument("--fresh", action="store_true",
                   help="start the study over (default: resume it; finished trials are never repeated)")
    p.add_argument("--storage", default=None,
                   help="optuna RDB URL, e.g. postgresql://... (default: sqlite under the output folder)")
    p.add_argument("--backend", default="local", choices=["local", "ray"],
                   help="run trials in this process, or as Ray tasks (local Ray, or the cluster at --address)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray instance)")
    p.add_argument("--workers", type=int, default=2, help="Ray: trials evaluated at once (default 2)")
    p.add_argument("--baseline-only", action="store_true",
                   help="prepare data and teacher, write the baseline, and stop before the search")
    return p.parse_args(argv)


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available; use --device cpu")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def config_as_json(config: StudyConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config), default=lambda o: getattr(o, "value", str(o))))


def spec_from_args(args: argparse.Namespace, config: StudyConfig, out: Path, device: torch.device) -> RunSpec:
    return RunSpec(study=str(config.source), profile=config.profile, out=str(out), data_root=args.data_root,
                   cache_dir=args.cache_dir, device=device.type, allow_download=not args.no_download,
                   progress=not args.no_progress, trials=args.trials or 0)


def start_fresh(out: Path, storage: str | None, name: str) -> None:
    """--fresh: forget this study and every cached result of its run folder (teachers stay cached); other
    studies in a shared `--storage` are left alone."""
    if storage is None:
        (out / "study.db").unlink(missing_ok=True)
    else:
        import optuna

        if name in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
            optuna.delete_study(study_name=name, storage=storage)
    for folder in ("results", "checkpoints"):
        shutil.rmtree(out / folder, ignore_errors=True)


def write_baseline(ctx: Context, out: Path, log: Callable[[str], None], t0: float) -> dict:
    teacher, config = ctx.teacher, ctx.config
    m = teacher.metrics
    source = "cache" if teacher.from_cache else "trained now"
    log(f"teacher {config.teacher.arch} ({source}, {teacher.folder}):")
    log(f"  accuracy: validation {m['val_accuracy']:.2f}% (carved from train), test {m['test_accuracy']:.2f}% "
        f"(official test split)")
    log(f"  params {m['params']:,}  MACs {m['macs']:,}  size {m['size_bytes_fp32'] / 2**20:.2f} MiB (fp32)")
    baseline = {"study": config.name, "profile": config.profile, "teacher": m,
                "teacher_cache": str(teacher.folder), "wall_seconds": round(time.monotonic() - t0, 1)}
    (out / "config.json").write_text(json.dumps(config_as_json(config), indent=2))
    (out / "baseline.json").write_text(json.dumps(baseline, indent=2))
    log(f"wrote {out / 'baseline.json'} in {baseline['wall_seconds']:.0f} s")
    return baseline


def run(args: argparse.Namespace) -> dict:
    config = load_study(args.study, args.profile or default_profile())
    make_plan(config)  # objectives and constraints are checked before any data is read
    device = resolve_device(args.device)
    out = Path(args.out or Path("runs") / config.name / config.profile)
    if args.fresh:
        start_fresh(out, args.storage, study_name(config.name, config.profile))
    out.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, flush=True)  # noqa: E731 - one sink for every line the run prints
    log(f"study {config.name} (profile {config.profile}) from {config.source}; device {device}; output {out}")
    t0 = time.monotonic()
    spec = spec_from_args(args, config, out, device)
    ctx = load_context(spec)
    splits, batcher = ctx.splits, ctx.evaluator.batcher
    log(f"data: {splits.info.name.value} from {splits.fingerprint}, splits {splits.sizes()}, "
        f"resolution {batcher.resolution}")
    baseline = write_baseline(ctx, out, log, t0)
    if args.baseline_only:
        return baseline
    backend = Backend(kind=args.backend, address=args.address, workers=args.workers)
    summary = run_study(ctx, storage_url(out, args.storage), backend, log)
    log(f"done in {time.monotonic() - t0:.0f} s; report: {out / 'report.md'}")
    return {**baseline, "summary": summary.__dict__}


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        run(args)
    except (ConfigError, DataError, StudyMismatch) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: progress is saved; rerun the same command to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
