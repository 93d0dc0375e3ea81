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
import tomllib
import typing
from dataclasses import dataclass
from dataclasses import field
from enum import Enum
from pathlib import Path
from typing import Any

from evaluators.candidate import FidelityConfig
from evaluators.candidate import HardwareConfig
from evaluators.data import DataConfig
from evaluators.teacher import TeacherConfig
from search.engine import SearchConfig
from spaces.space import SpaceConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILES_REQUIRED = ("smoke", "cpu", "paper")


class ConfigError(ValueError):
    """A study file is invalid; the message names the file, the key and what is allowed."""


@dataclass(frozen=True, kw_only=True)
class StudyInfo:
    name: str
    description: str = ""


@dataclass(frozen=True, kw_only=True)
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

    @property
    def name(self) -> str:
        return self.study.name


FILE_SECTIONS = ("study", "data", "teacher", "space", "search", "fidelity", "hardware")


def _describe(tp: Any) -> str:
    if isinstance(tp, type) and issubclass(tp, Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    return getattr(tp, "__name__", str(tp))


def _check_value(tp: Any, value: Any, meta: typing.Mapping[str, Any], where: str) -> Any:
    """A scalar, or a tuple of scalars (`tuple[int, ...]`), checked element by element."""
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"config field type {tp} is not supported (use tuple[X, ...])")
        return tuple(_check_value(args[0], v, meta, f"{where}[{i}]") for i, v in enumerate(value))
    return _check_scalar(tp, value, meta, where)


def _check_scalar(tp: Any, value: Any, meta: typing.Mapping[str, Any], where: str) -> Any:
    if isinstance(tp, type) and issubclass(tp, Enum):
        allowed = [m.value for m in tp]
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not allowed; use one of {', '.join(map(repr, allowed))}")
        return tp(value)
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, str)}.get(tp)
    if ok is None:
        raise TypeError(f"config field type {tp} is not supported")
    if not ok:
        raise ConfigError(f"{where}: expected {_describe(tp)}, got {type(value).__name__} {value!r}")
    value = float(value) if tp is float else value
    if "min" in meta and value < meta["min"] or "max" in meta and value > meta["max"]:
        raise ConfigError(f"{where}: {value!r} is out of range; allowed {meta.get('min', '-inf')} .. "
                          f"{meta.get('max', 'inf')}")
    choices = meta.get("choices")
    if choices is not None:
        allowed = list(choices() if callable(choices) else choices)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not allowed; use one of {', '.join(map(repr, allowed))}")
    return value


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
            kwargs[name] = _check_value(tp, raw[name], f.metadata, key)
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
    if missing:
        raise ConfigError(f"{path}: no [profiles.{missing[0]}]; every study defines {', '.join(PROFILES_REQUIRED)}")
    return raw


def load_study(study: str, profile: str) -> StudyConfig:
    """Resolve, read and validate a study at one profile."""
    path = study_path(study)
    raw = read_study_file(path)
    profiles = raw.pop("profiles")
    if profile not in profiles:
        raise ConfigError(f"{path}: unknown profile {profile!r}; available: {', '.join(sorted(profiles))}")
    merged = merge(raw, profiles[profile])
    config = build(StudyConfig, {k: v for k, v in merged.items() if k in FILE_SECTIONS},
                   f"{path} (profile {profile})")
    return dataclasses.replace(config, profile=profile, source=str(path))


def validate_all_profiles(study: str) -> list[StudyConfig]:
    path = study_path(study)
    return [load_study(str(path), p) for p in read_study_file(path)["profiles"]]
