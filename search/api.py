"""The Python API: one `Study` object that the CLI, a user's script and the Ray workers all drive.

Why this shape (optuna's `create_study().optimize()`, with a one-call shortcut): a user with a model and
data in hand writes `search.compress(teacher=model, data="my_images/", targets=["rpi4"], trials=20)`; a user
who wants every knob builds a `StudyConfig` in code (validated on construction, with the TOML loader's
messages) and calls `Study(config).optimize()`. Both return a `StudyResult`: the front and all trials as
DataFrames, the knee, `plot()` and `export()`. `python -m search.run` is this same object behind argparse,
and a Ray worker rebuilds the same context from the same resolved config (`search.pipeline.context.RunSpec`).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from evaluators.candidate import FidelityConfig
from evaluators.candidate import HardwareConfig
from evaluators.candidate import LevelConfig
from evaluators.data.batches import Batcher
from evaluators.data.config import DataConfig
from evaluators.data.config import prepare_data
from evaluators.data.datasets import Dataset
from evaluators.data.memory import in_memory_data
from evaluators.data.splits import SplitConfig
from evaluators.data.splits import Splits
from evaluators.teacher.prepare import TeacherConfig
from evaluators.teacher.prepare import build_teacher
from evaluators.teacher.prepare import cache_status
from evaluators.teacher.prepare import pin
from evaluators.teacher.training import schedule_of
from search.analysis.selection import read_tables
from search.analysis.selection import select
from search.config import ConfigError
from search.config import StudyConfig
from search.config import StudyInfo
from search.config import check_study_code
from search.config import config_as_json
from search.config import trust_study
from search.delivery import export_selected
from search.engine.budget import Sizing
from search.engine.loop import BaselineSet
from search.engine.loop import SearchConfig
from search.pipeline.baseline_cache import pinned_counts
from search.pipeline.context import BASELINE_FILE
from search.pipeline.context import Context
from search.pipeline.context import RunSpec
from search.pipeline.context import load_context
from search.pipeline.context import make_plan
from search.pipeline.context import pinned
from search.pipeline.context import size_notes
from search.pipeline.run_lock import RunLock
from search.pipeline.study import Backend
from search.pipeline.study import run_study
from search.pipeline.study import storage_url
from search.pipeline.study import study_name
from search.report.outputs import write_outputs
from search.sizing.plan import PLAN_FILE
from search.sizing.plan import copy_of
from search.sizing.plan import sized
from search.sizing.plan import sized_by
from spaces.compress.apply import Budget
from spaces.models.user_models import register_instance
from spaces.space import SpaceConfig

Log = Callable[[str], None]


def _print(msg: str) -> None:
    print(msg, flush=True)


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Where and how a study runs; none of it changes what is searched."""

    out: str | None = None  # default: runs/<study>/<profile>/
    data_root: str | None = None
    cache_dir: str | None = None
    device: str = "auto"  # auto, cpu or cuda
    allow_download: bool = False
    progress: bool = True
    storage: str | None = None  # optuna RDB URL; default sqlite under out
    backend: str = "local"  # local or ray
    address: str | None = None
    workers: int = 2
    fresh: bool = False

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device: {self.device!r} is not allowed; use 'auto', 'cpu' or 'cuda'")
        if self.backend not in ("local", "ray"):
            raise ConfigError(f"backend: {self.backend!r} is not allowed; use 'local' or 'ray'")
        if self.workers < 1:
            raise ConfigError(f"workers: {self.workers} is out of range; allowed 1 .. inf")


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available; use --device cpu")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


class Study:
    """One compression study: its resolved config, where it runs, and (from Python) a teacher or data given in
    memory. `optimize()` is resumable: calling it again continues the stored study."""

    def __init__(self, config: StudyConfig, options: RunOptions | None = None, *, teacher: nn.Module | None = None,
                 data: tuple[Splits, Batcher] | None = None, log: Log = _print, trust_code: bool = False) -> None:
        self.options = options or RunOptions()
        make_plan(config)  # objectives and constraints are checked before any data is read
        if trust_code:  # the user's word that the factory, code folder and pickle the config names are their own
            trust_study(config)
        check_study_code(config)
        self.config, self.teacher, self.data, self.log = config, teacher, data, log
        self.device = resolve_device(self.options.device)
        self.out = Path(self.options.out or Path("runs") / config.name / config.profile)
        # one run per folder, taken when the run starts writing it, before any data is read (an --out that is a
        # file, or a folder this user cannot write, fails there); exporting from a run folder takes no lock
        self._lock = RunLock(self.out, log)
        self._ctx: Context | None = None

    @property
    def spec(self) -> RunSpec:
        o = self.options
        return RunSpec(config=self.config, out=str(self.out), data_root=o.data_root, cache_dir=o.cache_dir,
                       device=self.device.type, allow_download=o.allow_download, progress=o.progress)

    def context(self) -> Context:
        """Data, teacher and evaluator, built once (the teacher is trained here when the config says so)."""
        if self._ctx is None:
            self._ctx = load_context(self.spec, teacher=self.teacher, data=self.data)
        return self._ctx

    def prepare(self) -> dict:
        """The run folder, the data and the teacher, and `baseline.json`: everything before the search."""
        cfg, o = self.config, self.options
        self._lock.acquire()  # before anything in the folder is read or deleted (--fresh)
        if o.fresh:
            start_fresh(self.out, o.storage, study_name(cfg.name, cfg.profile))
        self.out.mkdir(parents=True, exist_ok=True)
        self.log(f"study {cfg.name} (profile {cfg.profile}) from {cfg.source or 'Python'}; device {self.device}; "
                 f"output {self.out}")
        t0 = time.monotonic()
        self.size_to_budget()
        ctx = self.context()
        splits, batcher = ctx.splits, ctx.evaluator.batcher
        self.log(f"data: {splits.info.name.value} from {splits.fingerprint}, {splits.info.num_classes} classes, "
                 f"{splits.info.channels} channel(s), splits {splits.sizes()}, resolution {batcher.resolution}")
        for note in size_notes(ctx):
            self.log(f"note: {note}")
        return write_baseline(ctx, self.out, self.log, t0)

    def size_to_budget(self) -> None:
        """With a budget and `sizing = "fit"`, replace the config by one sized to the budget (search.sizing.plan),
        before the teacher is trained: its epochs are part of the plan, unless the teacher needs no training (the
        user's, or the profile's already in the cache). The data read here is kept for the run."""
        cfg = self.config
        if self._ctx is not None or not cfg.search.budget or cfg.search.sizing != Sizing.FIT:
            return
        self._lock.acquire()  # the plan is written into the run folder
        o = self.options
        cache = Path(o.cache_dir) if o.cache_dir else None
        self.data = self.data or prepare_data(cfg.data, o.data_root, allow_download=o.allow_download,
                                              cache_dir=cache)
        splits, batcher = self.data
        given = self.teacher is not None or bool(cfg.teacher.checkpoint) or pinned(self.out) is not None
        status = None if given else cache_status(cfg.teacher, splits, batcher, cfg.data.split, cache_dir=cache)
        network = copy_of(self.teacher) if self.teacher is not None else \
            lambda: build_teacher(cfg.teacher, splits.info.num_classes, splits.info.channels, batcher.resolution)
        self.config = sized(cfg, self.out, splits, batcher, network, teacher_ready=given, device=self.device,
                            log=self.log, cache=status,
                            baselines_at=pinned_counts(cfg, status, batcher.resolution) if status else None)

    def optimize(self) -> StudyResult:
        """Search, final stage and every output file; returns the result (resumes a stored study)."""
        t0 = time.monotonic()
        try:
            self.prepare()
            o = self.options
            # a sized run's search limit is set when its search starts, from the time spent until then (a resumed
            # run keeps the limit its study stored: study.search_limit)
            plan = sized_by(self.out, self.config)
            deadline = None if plan is None else lambda: plan.search_seconds(time.monotonic() - t0)
            run_study(self.context(), storage_url(self.out, o.storage), Backend(kind=o.backend, address=o.address,
                                                                                workers=o.workers), self.log,
                      deadline=deadline, reporters=(write_outputs,))
        finally:
            self.close()
        self.log(f"done in {time.monotonic() - t0:.0f} s; report: {self.out / 'report.md'}")
        return StudyResult(self)

    def close(self) -> None:
        """Give the run folder back (its lock); the process's exit does the same."""
        self._lock.release()

    def result(self) -> StudyResult:
        """The result of a study that has already run (its run folder)."""
        return StudyResult(self)


def start_fresh(out: Path, storage: str | None, name: str) -> None:
    """Forget this study and every cached result of its run folder (teachers stay cached); other studies in a
    shared storage are left alone."""
    if storage is None:
        (out / "study.db").unlink(missing_ok=True)
    else:
        import optuna

        if name in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
            optuna.delete_study(study_name=name, storage=storage)
    for folder in ("results", "checkpoints"):
        shutil.rmtree(out / folder, ignore_errors=True)
    for name in (PLAN_FILE, BASELINE_FILE):  # a fresh run uses the strongest cached teacher there is now
        (out / name).unlink(missing_ok=True)


def write_baseline(ctx: Context, out: Path, log: Log, t0: float) -> dict:
    teacher, config = ctx.teacher, ctx.config
    m = teacher.metrics
    source = m.get("checkpoint") or ("cache" if teacher.from_cache else "trained now")
    log(f"teacher {config.teacher.network} ({source}; {teacher.folder}):")
    log(f"  accuracy: validation {m['val_accuracy']:.2f}% ({len(ctx.splits.val)} images), test "
        f"{m['test_accuracy']:.2f}% ({len(ctx.splits.test)} images)")
    log(f"  params {m['params']:,}  MACs {m['macs']:,}  size {m['size_bytes_fp32'] / 2**20:.2f} MiB (fp32)")
    if "curve" in m:
        log(f"  trained {m['epochs']} epochs ({schedule_of(m)}); the best by validation is epoch {m['best_epoch']}, "
            f"{m['cpu_seconds'] / 3600:.2f} CPU-h in all")
    baseline = {"study": config.name, "profile": config.profile, "teacher": m, "size_notes": size_notes(ctx),
                "teacher_cache": str(teacher.folder), "wall_seconds": round(time.monotonic() - t0, 1),
                "teacher_schedule": schedule_of(m), "teacher_epochs": m.get("epochs"),
                "teacher_pin": pinned(out) or (pin(teacher) if ctx.teacher_trained else {})}
    (out / "config.json").write_text(json.dumps(config_as_json(config), indent=2))
    (out / BASELINE_FILE).write_text(json.dumps(baseline, indent=2))
    log(f"wrote {out / 'baseline.json'} in {baseline['wall_seconds']:.0f} s")
    return baseline


class StudyResult:
    """What a finished study found: DataFrames read from its run folder, plus plot and export."""

    def __init__(self, study: Study) -> None:
        self.study, self.out = study, study.out
        self.trials, self.front = read_tables(self.out)
        base = self.out / "baselines.csv"
        self.baselines = pd.read_csv(base) if base.is_file() and base.stat().st_size > 1 else pd.DataFrame()
        summary = self.out / "summary.json"
        self.summary: dict[str, Any] = json.loads(summary.read_text()) if summary.is_file() else {}

    @property
    def knee(self) -> pd.Series | None:
        """The front's knee (best trade-off), or None for an empty front."""
        if self.front.empty or "knee" not in self.front:
            return None
        rows = self.front[self.front["knee"].astype(bool)]
        return rows.iloc[0] if len(rows) else None

    def plot(self, path: str | Path | None = None) -> Path:
        """The Pareto plot (accuracy against modelled latency per target); copied to `path` when given."""
        png = self.out / "pareto.png"
        if path is None:
            return png
        shutil.copyfile(png, path)
        return Path(path)

    def export(self, path: str | Path | None = None, *, pick: str | None = None, trial: int | None = None,
               test_images: int | None = None, requantize: bool = False) -> Path:
        """Write the deployment bundle of one recipe (the knee by default): the same as `python -m search.export`.

        `test_images=None` measures on the images the F3 stage scored (0: the whole test split)."""

        selected = select(self.out, self.study.config.hardware.names, trial=trial, pick=pick)
        return export_selected(self.study.context(), self.out, selected, path, test_images=test_images,
                               requantize=requantize)

    def __repr__(self) -> str:
        return f"StudyResult({self.out}: {len(self.trials)} trials, front of {len(self.front)})"


def _quick() -> FidelityConfig:
    """Minutes on 2 cores for a small network: a first look at the trade-offs, not final numbers."""
    return FidelityConfig(
        f1=LevelConfig(val_images=500, budget=Budget(cache_students=True, max_candidates=2)),
        f2=LevelConfig(val_images=500, budget=Budget(finetune_steps=20, cache_students=True, max_candidates=2)),
        f3=LevelConfig(val_images=0, budget=Budget(finetune_steps=60, cache_students=True, max_candidates=2)))


BUDGETS: dict[str, Callable[[], FidelityConfig]] = {"quick": _quick, "standard": FidelityConfig}


def _absolute_profiles(targets: Sequence[str]) -> tuple[str, ...]:
    """Profile JSON targets are paths relative to the working directory here (a study file's folder there)."""
    return tuple(str(Path(t).resolve()) if t.endswith(".json") else t for t in targets)


def compress(teacher: nn.Module | str, *, data: str | Path | None = None, train: Any = None, val: Any = None,
             test: Any = None, arch: str | None = None, targets: Sequence[str] = ("zcu104", "rpi4"), trials: int = 20,
             resolution: int | None = None, mean: Sequence[float] = (), std: Sequence[float] = (),
             name: str = "compress", budget: str = "standard", space: SpaceConfig | None = None,
             fidelity: FidelityConfig | None = None,
             search: SearchConfig | None = None, split: SplitConfig | None = None,
             options: RunOptions | None = None, trust_code: bool = False, **option_kwargs: Any) -> StudyResult:
    """Compress `teacher` (a trained `nn.Module`, or the path of its checkpoint with `arch`) on the user's data:
    `data` (an ImageFolder root with train/ and optionally val/, test/), or `train`/`val`/`test` given as torch
    Datasets of (image, label) with PIL images or un-normalised tensors. Returns the finished study's result.

    The defaults keep the teacher as the only student (no architecture to distil into is assumed) and search
    pruning and PTQ/QAT bit-widths; `budget` names the training spent per fidelity ("quick" for a first look
    in minutes, "standard" for results); pass `space`, `fidelity` and `search` to change any of it.
    `trust_code=True` is needed for an `arch` that is your own `package.module:factory` (spaces.models.code_trust).
    """
    if budget not in BUDGETS:
        raise ConfigError(f"compress: budget {budget!r} is not allowed; use one of {', '.join(map(repr, BUDGETS))}")
    if (data is None) == (train is None):
        raise ConfigError("compress: give either data=<ImageFolder root> or train=<dataset> (with val=, test=)")
    if isinstance(teacher, (str, Path)) and arch is None:
        raise ConfigError("compress: a checkpoint path needs arch= (e.g. 'torchvision:resnet18' or 'mypkg.models:net')")
    given = teacher if isinstance(teacher, nn.Module) else None
    memory = None
    if train is not None:
        memory = in_memory_data(train, val, test, resolution=resolution, mean=tuple(mean), std=tuple(std),
                                split=split or SplitConfig())
        resolution = memory[1].resolution
    teacher_cfg = TeacherConfig(arch=register_instance(given)) if given is not None else \
        TeacherConfig(arch=arch, checkpoint=str(Path(teacher).resolve()))
    data_cfg = DataConfig(dataset=Dataset.MEMORY, resolution=resolution) if memory else \
        DataConfig(dataset=Dataset.IMAGEFOLDER, root=str(Path(data).resolve()), resolution=resolution or 224,
                   mean=tuple(mean), std=tuple(std), split=split or SplitConfig())
    config = StudyConfig(
        study=StudyInfo(name=name, description="made with search.compress"), data=data_cfg, teacher=teacher_cfg,
        space=space or SpaceConfig(students=("teacher",), distill_kinds=("none",), round_to=8, candidates=2),
        search=search or SearchConfig(trials=trials, population=max(2, min(10, trials // 2)),
                                      baselines=BaselineSet.SURVEY, final_max=4),
        fidelity=fidelity or BUDGETS[budget](), hardware=HardwareConfig(targets=_absolute_profiles(targets)),
        profile="api")
    options = options or RunOptions(**option_kwargs)
    return Study(config, options, teacher=given, data=memory, trust_code=trust_code).optimize()
