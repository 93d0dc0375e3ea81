"""`python -m search.run --study NAME`: run a compression study end to end.

A thin layer over `search.api.Study`: it parses the arguments into a validated `StudyConfig` and
`RunOptions`, and the Study prepares the data and the teacher (trained here, or the user's checkpoint),
writes the baseline, searches and writes trials.csv, pareto.csv, pareto.png and report.md. The optuna
storage makes every run resumable: the same command continues it. Errors a user can fix are one line on
stderr with a non-zero exit; Ctrl-C or SIGTERM saves progress, and rerunning continues.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from pathlib import Path

from evaluators.data.datasets import DATA_ROOT_ENV
from evaluators.data.datasets import DataError
from evaluators.data.files import CACHE_ENV
from search.api import RunOptions
from search.api import Study
from search.config import ConfigError
from search.config import available_studies
from search.config import load_study
from search.config import trust_study
from search.engine.budget import Sizing
from search.engine.budget import parse_duration
from search.engine.loop import StudyMismatch
from spaces.models.code_trust import grant
from spaces.models.user_models import add_code_path

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m search.run",
        description="Find the best way to compress a trained CNN for an edge board: runs one study.",
    )
    p.add_argument("--study", required=True,
                   help=f"study name in studies/ or path to a .toml file (available: {', '.join(available_studies())})")
    p.add_argument("--profile", default=None,
                   help="smoke (minutes, for tests), cpu (about an hour on 2 cores) or paper (224x224, the "
                        "thesis's schedule, for a GPU); default: paper with a GPU, else cpu; a study without "
                        "[profiles] runs its base sections")
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
    p.add_argument("--trials", type=int, default=None,
                   help="number of search trials (default: the profile's); with a budget sized by --sizing fit, the "
                        "most trials its plan may give")
    p.add_argument("--budget", default=None, metavar="TIME",
                   help="wall time, e.g. 90s, 60m or 1h30m (default: the profile's [search] budget). With --sizing "
                        "fit (the default) it is the whole run's: teacher epochs, trials and F2/F3 steps are sized "
                        "to it from step times measured at the start (plan.json); with --sizing off it bounds the "
                        "search alone: no new trial starts once it is spent (nor once --trials are done)")
    p.add_argument("--sizing", default=None, choices=[s.value for s in Sizing],
                   help="what --budget bounds: fit (the whole run, sized to it) or off (the search alone); default: "
                        "the profile's [search] sizing, else fit")
    p.add_argument("--fresh", action="store_true",
                   help="start the study over (default: resume it; finished trials are never repeated)")
    p.add_argument("--storage", default=None,
                   help="optuna RDB URL, e.g. postgresql://... (default: sqlite under the output folder)")
    p.add_argument("--backend", default="local", choices=["local", "ray"],
                   help="run trials in this process, or as Ray tasks (local Ray, or the cluster at --address)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray instance)")
    p.add_argument("--workers", type=int, default=2, help="Ray: trials evaluated at once (default 2)")
    p.add_argument("--code", default=None, metavar="DIR",
                   help="folder holding your own package, for [teacher] arch = 'package.module:factory'")
    p.add_argument("--baseline-only", action="store_true",
                   help="prepare data and teacher, write the baseline, and stop before the search")
    p.add_argument("--plan-only", action="store_true",
                   help="measure step times, print the plan sized to --budget (and write plan.json), and stop")
    return p.parse_args(argv)


def options_from_args(args: argparse.Namespace) -> RunOptions:
    return RunOptions(out=args.out, data_root=args.data_root, cache_dir=args.cache_dir, device=args.device,
                      allow_download=not args.no_download, progress=not args.no_progress, storage=args.storage,
                      backend=args.backend, address=args.address, workers=args.workers, fresh=args.fresh)


def study_from_args(args: argparse.Namespace) -> Study:
    """The one `Study` object of `search.api`, built from the command line."""
    grant(folders=(args.code,) if args.code else ())  # --code DIR: the user's own package
    add_code_path(args.code)  # the user's package must import before the study names its factory
    config = load_study(args.study, args.profile)
    trust_study(config)  # the study file the user named is their own: its factory, code folder, pickle
    if args.code:
        config = dataclasses.replace(config, teacher=dataclasses.replace(config.teacher,
                                                                         code=str(Path(args.code).resolve())))
    if args.trials is not None:  # the trial count, and with a sized budget the most trials its plan may give
        if args.trials < 1:
            raise ConfigError(f"--trials {args.trials}: a search needs at least 1 trial; give --trials 1 or more, "
                              "or --baseline-only to stop before the search")
        config = dataclasses.replace(config, search=dataclasses.replace(config.search, trials=args.trials,
                                                                        max_trials=args.trials))
    if args.budget is not None:
        try:
            parse_duration(args.budget)
        except ValueError as err:
            raise ConfigError(f"--budget: {err}") from None
        config = dataclasses.replace(config, search=dataclasses.replace(config.search, budget=args.budget))
    if args.sizing is not None:
        config = dataclasses.replace(config, search=dataclasses.replace(config.search, sizing=Sizing(args.sizing)))
    return Study(config, options_from_args(args))


def run(args: argparse.Namespace) -> dict:
    study = study_from_args(args)
    try:
        if args.plan_only:
            if not study.config.search.budget or study.config.search.sizing != Sizing.FIT:
                raise ConfigError("--plan-only: a plan is sized to a budget; give --budget TIME (and not --sizing off)")
            study.size_to_budget()
            return {}
        if args.baseline_only:
            return study.prepare()
        result = study.optimize()
        return {"summary": result.summary}
    finally:
        study.close()  # the run folder's lock


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        run(args)
    except (ConfigError, DataError, StudyMismatch, KeyError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) and err.args else err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: progress is saved; rerun the same command to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
