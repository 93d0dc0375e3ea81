"""Study configs: TOML files validated into frozen dataclasses, with profiles that override the base.

A study file has sections ([study], [data], [teacher], ...) and a [profiles.NAME] table per profile
whose sub-tables override the base sections key by key. Every key is checked against the dataclass
that consumes it: an unknown key, a wrong type or an out-of-range value is rejected with the file, the
key and what is allowed. The dataclasses live next to the code that uses them (evaluators, spaces);
this module only assembles them.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import tomllib
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

from evaluators.candidate import FidelityConfig
from evaluators.candidate import HardwareConfig
from evaluators.data.config import DataConfig
from evaluators.data.config import resolve_root
from evaluators.teacher.imagenet_init import INIT_NAMES
from evaluators.teacher.prepare import TeacherConfig
from hardware_models.api import check_profile
from search.engine.loop import BaselineSet
from search.engine.loop import SearchConfig
from spaces.models.code_trust import check_factory
from spaces.models.code_trust import check_folder
from spaces.models.code_trust import grant
from spaces.models.code_trust import pickle_allowed
from spaces.models.user_models import factory_target
from spaces.space import SpaceConfig
from spaces.space import for_targets
from spaces.validated import ConfigError
from spaces.validated import check_value
from spaces.validated import settings

REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILES_REQUIRED = ("smoke", "cpu", "paper")
BASE_PROFILE = "base"


# A study's name and profile become folders (runs/<name>/<profile>/, which --fresh empties): one plain path
# component each, never `..`, a separator or an absolute path.
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_plain_name(value: str, what: str) -> None:
    if not PLAIN_NAME.fullmatch(value) or ".." in value:
        raise ConfigError(f"{what}: {value!r} names a folder under runs/, so it must be one plain name (letters, "
                         "digits, '.', '_', '-'; starting with a letter or digit; no '/' or '..'); rename it")


@settings
class StudyInfo:
    name: str
    description: str = ""

    def __post_init__(self) -> None:
        check_plain_name(self.name, "study.name")


@settings
class StudyConfig:
    study: StudyInfo
    data: DataConfig
    teacher: TeacherConfig
    space: SpaceConfig = field(default_factory=SpaceConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    fidelity: FidelityConfig = field(default_factory=FidelityConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    # Filled in by the loader, not by the file.
    profile: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if self.profile:
            check_plain_name(self.profile, "profile")
        # `[space] bits = "target"` needs the study's targets: resolved here, once, for every door (file, API).
        object.__setattr__(self, "space", for_targets(self.space, self.hardware.targets))
        if self.search.baselines == BaselineSet.THESIS and self.teacher.arch != "resnet50":
            raise ValueError(f"search.baselines: 'thesis_table' reproduces the thesis's recipes on its ResNet-50 "
                             f"teacher, not {self.teacher.arch!r}; use 'survey_quantization' or 'none'")

    @property
    def name(self) -> str:
        return self.study.name


FILE_SECTIONS = ("study", "data", "teacher", "space", "search", "fidelity", "hardware")


def build(cls: type, raw: Any, where: str) -> Any:
    """Validate a mapping into dataclass `cls`; `where` prefixes every error (file and key path)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; allowed keys: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}.{name}"
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: missing required key")
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, _over_default(f, raw[name]), key)
        else:
            kwargs[name] = check_value(tp, raw[name], f.metadata, key)
    try:
        return cls(**kwargs)
    except ValueError as err:  # a dataclass's own cross-field check (`__post_init__`)
        raise ConfigError(f"{where}: {err}") from None


def _over_default(f: dataclasses.Field, raw: Any) -> Any:
    """A partial table overrides the field's *default value* key by key, not the nested class's own defaults:
    `[fidelity.f2.budget.finetune_train] lr = 1e-4` keeps the rest of that level's default schedule."""
    if not isinstance(raw, dict) or f.default_factory is dataclasses.MISSING:
        return raw
    return merge(as_table(f.default_factory()), raw)


def as_table(obj: Any) -> Any:
    """A dataclass instance as nested dicts of its init fields (values kept as they are)."""
    if not dataclasses.is_dataclass(obj):
        return obj
    return {f.name: as_table(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}


def merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def study_path(study: str) -> Path:
    """A study is a path to a TOML file, or a name looked up in ./studies and in the repository's studies/."""
    candidate = Path(study)
    if candidate.suffix == ".toml":
        if not candidate.is_file():
            raise ConfigError(f"study file {candidate} does not exist")
        return candidate
    for folder in (Path("studies"), REPO_ROOT / "studies"):
        if (folder / f"{study}.toml").is_file():
            return folder / f"{study}.toml"
    raise ConfigError(f"unknown study {study!r}; available: {', '.join(available_studies()) or 'none'} "
                      "(or give the path of a .toml file)")


def available_studies() -> list[str]:
    names = {p.stem for folder in (Path("studies"), REPO_ROOT / "studies") for p in folder.glob("*.toml")}
    return sorted(names)


def is_shipped(path: Path) -> bool:
    return path.resolve().parent == (REPO_ROOT / "studies").resolve()


def read_study_file(path: Path) -> dict:
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    unknown = sorted(set(raw) - {*FILE_SECTIONS, "profiles"})
    if unknown:
        raise ConfigError(f"{path}: unknown section [{unknown[0]}]; allowed: "
                          f"{', '.join([*FILE_SECTIONS, 'profiles'])}")
    missing = [p for p in PROFILES_REQUIRED if p not in raw.get("profiles", {})]
    if missing and is_shipped(path):
        raise ConfigError(f"{path}: no [profiles.{missing[0]}]; every shipped study defines "
                          f"{', '.join(PROFILES_REQUIRED)}")
    return raw


def default_profile(profiles: typing.Collection[str]) -> str:
    """`paper` needs a GPU to finish in reasonable time; without one the `cpu` profile is the default. A study
    without profiles runs its base sections (profile `base`)."""
    import torch

    if not profiles:
        return BASE_PROFILE
    wanted = "paper" if torch.cuda.is_available() else "cpu"
    return wanted if wanted in profiles else sorted(profiles)[0]


def load_study(study: str, profile: str | None = None) -> StudyConfig:
    """Resolve, read and validate a study at one profile (None: the default for this machine). Relative paths
    in the file (data root, teacher checkpoint and code) are taken relative to the file's folder."""
    path = study_path(study)
    raw = read_study_file(path)
    profiles = raw.pop("profiles", {})
    profile = profile or default_profile(profiles)
    if profile != BASE_PROFILE and profile not in profiles:
        available = ", ".join(sorted(profiles)) if profiles else f"none (no [profiles]: use {BASE_PROFILE})"
        raise ConfigError(f"{path}: unknown profile {profile!r}; available: {available}")
    merged = merge(raw, profiles.get(profile, {}))
    config = build(StudyConfig, {k: v for k, v in merged.items() if k in FILE_SECTIONS},
                   f"{path} (profile {profile})")
    return with_paths_from(dataclasses.replace(config, profile=profile, source=str(path)), path.parent)


def with_paths_from(config: StudyConfig, base: Path) -> StudyConfig:
    """Relative file paths of the config made absolute against `base` (a profile JSON named as a target too)."""
    teacher = config.teacher
    paths = {k: str((base / v).resolve()) for k in ("checkpoint", "code", "init")
             if (v := getattr(teacher, k)) and not Path(v).is_absolute() and v not in INIT_NAMES}
    targets = tuple(str((base / t).resolve()) if t.endswith(".json") else t for t in config.hardware.targets)
    missing = [t for t in targets if t.endswith(".json") and not Path(t).is_file()]
    if missing:
        raise ConfigError(f"{config.source}: hardware.targets: profile {missing[0]} does not exist; write it with "
                          "python -m hardware_models.calibrate --target rpi4 --measurements rpi_benchmark.csv "
                          f"--out {missing[0]}")
    check_profiles(targets, config.source)
    return dataclasses.replace(config, data=resolve_root(config.data, base),
                               teacher=dataclasses.replace(teacher, **paths),
                               hardware=dataclasses.replace(config.hardware, targets=targets))


def check_profiles(targets: typing.Iterable[str], where: str) -> None:
    """Every profile JSON target loads and predicts, checked with the config: a malformed one fails here in one line,
    not in every trial of the run."""
    for target in targets:
        if target.endswith(".json"):
            try:
                check_profile(target)
            except ValueError as err:
                raise ConfigError(f"{where}: hardware.targets: {err}") from None


def from_json(raw: dict, where: str) -> StudyConfig:
    """A resolved config written by a run (`config.json`) read back, validated like a study file."""
    return build(StudyConfig, raw, where)


def json_object(path: Path, fix: str = "re-run or re-export") -> dict:
    """A JSON object from a run folder or a bundle, or a one-line ConfigError naming the file and `fix`."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: unreadable ({str(error).splitlines()[0]}); {fix}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: not a JSON object; {fix}")
    return raw


def config_of_run(run: Path, study: str | None, profile: str | None) -> StudyConfig:
    """The config a command acting on a run must use: the run's own `config.json` (sized by its plan: the teacher,
    the budgets and the search it really had), else the study file at its profile (a run not started yet)."""
    path = run / "config.json"
    if path.is_file():
        return from_json(json_object(path, "re-run the study"), str(path))
    if study is None:
        raise ConfigError(f"{run} holds no config.json of a run; give --study (or run the study first)")
    return load_study(study, profile)


def validate_all_profiles(study: str) -> list[StudyConfig]:
    path = study_path(study)
    return [load_study(str(path), p) for p in read_study_file(path).get("profiles", {})]


def trust_study(config: StudyConfig) -> None:
    """The user named this study themselves (their study file, or `trust_code=True`): its teacher's factory, code
    folder and pickled checkpoint are their own code (`spaces.models.code_trust`). Never for a config read from a run
    folder or a bundle (`from_json`)."""
    teacher = config.teacher
    grant(factories=(teacher.arch,), folders=(teacher.code,),
          pickles=(teacher.checkpoint,) if teacher.allow_pickle else ())


def check_study_code(config: StudyConfig) -> None:
    """Before any data is read: the code the config names must be code the user trusted (one-line error)."""
    teacher = config.teacher
    target = factory_target(teacher.arch)
    if target is not None:
        check_factory(target)
    if teacher.code:
        check_folder(teacher.code)
    if teacher.allow_pickle and not pickle_allowed(teacher.checkpoint):
        raise ConfigError(f"teacher.allow_pickle for {teacher.checkpoint} was read from a file that is data (a run "
                          "folder's config.json); unpickling can run code: give your own study file with --study, "
                          "or trust_code=True in the Python API")


def config_as_json(config: StudyConfig) -> dict:
    """The resolved config as plain JSON (enums by value): what a run folder's config.json and a bundle hold, read
    back by `from_json`."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=lambda o: getattr(o, "value", str(o))))
