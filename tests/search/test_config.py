"""Study configs: every shipped study validates at every profile; bad files fail with file, key and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluators.data.datasets import Dataset
from evaluators.teacher.cache import Match
from evaluators.training.loop import Optimizer
from search.config import ConfigError
from search.config import available_studies
from search.config import load_study
from search.config import validate_all_profiles

STUDIES = ("resnet50_cifar10", "mlp_mnist")


@pytest.mark.parametrize("study", STUDIES)
def test_shipped_studies_validate_at_every_profile(study: str) -> None:
    configs = {c.profile: c for c in validate_all_profiles(study)}
    assert {"smoke", "cpu", "paper"} <= set(configs)
    assert configs["paper"].teacher.train.epochs == 10
    assert configs["paper"].teacher.train.optimizer is Optimizer.ADAM
    assert configs["paper"].teacher.train.lr == pytest.approx(1e-3)


def test_profiles_override_the_base_and_configs_are_frozen() -> None:
    smoke = load_study("resnet50_cifar10", "smoke")
    paper = load_study("resnet50_cifar10", "paper")
    assert smoke.data.dataset is Dataset.CIFAR10 and smoke.teacher.arch == "resnet50"
    assert smoke.data.resolution == 32 and paper.data.resolution == 224
    assert smoke.data.split.train_size > 0 and paper.data.split.train_size == 0
    assert paper.data.split.val_size == smoke.data.split.val_size  # inherited from the base
    with pytest.raises(AttributeError):
        smoke.teacher.arch = "resnet18"  # type: ignore[misc]
    assert set(STUDIES) <= set(available_studies())


def test_the_race_profile_shares_the_smoke_teacher() -> None:
    """`race` (benchmarks.search_engine part e) times the search alone: its teacher is smoke's cached one."""
    race, smoke = load_study("resnet50_cifar10", "race"), load_study("resnet50_cifar10", "smoke")
    keys = {Match(network=c.teacher.network, dataset=c.data.dataset.value, resolution=c.data.resolution, data="data",
                  split=c.data.split).key for c in (race, smoke)}
    assert len(keys) == 1 and race.teacher == smoke.teacher
    assert race.search.sizing.value == "off" and "mobilenet_v2" not in race.space.students


BASE = """
[study]
name = "t"
[data]
dataset = "cifar10"
[teacher]
arch = "resnet18"
[profiles.smoke]
[profiles.cpu]
[profiles.paper]
"""


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "study.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(("edit", "pattern"), [
    ("[teacher]\narch = \"resnet18\"\nepochs = 3",
     r"study\.toml \(profile smoke\)\.teacher: unknown key 'epochs'; allowed keys: allow_pickle, arch, checkpoint, "
     r"code, init, kwargs, single_pass, train"),
    ("[teacher.single_pass]\nepochs = 2",
     r"study\.toml \(profile smoke\)\.teacher: teacher\.single_pass: 'epochs' is not a training setting it can "
     r"change; use augment, batch_size, label_smoothing, lr, momentum, optimizer, "
     r"schedule, seed, weight_decay"),
    ("[teacher.single_pass]\noptimizer = \"lion\"",
     r"teacher\.single_pass: TrainConfig\.optimizer: 'lion' is not allowed; use one of 'sgd', 'adam', 'adamw'"),
    ("[teacher.train]\nepochs = \"three\"", r"teacher\.train\.epochs: expected int, got str 'three'"),
    ("[teacher.train]\nepochs = 0", r"teacher\.train\.epochs: 0 is out of range; allowed 1 \.\. 1000"),
    ("[teacher.train]\noptimizer = \"lion\"", r"optimizer: 'lion' is not allowed; use one of 'sgd', 'adam', 'adamw'"),
    ("[teacher.train]\nprecision = \"fp16\"",
     r"study\.toml \(profile smoke\)\.teacher\.train\.precision: 'fp16' is not allowed; use one of 'auto', "
     r"'gpu_bf16', 'bf16', 'fp32'"),
    ("[data.split]\nval_size = 5.5", r"data\.split\.val_size: expected int, got float"),
    ("[bogus]\nx = 1", r"unknown section \[bogus\]"),
])
def test_invalid_values_are_rejected_with_file_key_and_allowed_values(tmp_path: Path, edit: str, pattern: str) -> None:
    text = BASE + "\n" + edit if "arch" not in edit else BASE.replace('[teacher]\narch = "resnet18"', edit)
    with pytest.raises(ConfigError, match=pattern):
        load_study(_write(tmp_path, text), "smoke")


def test_unknown_architecture_lists_the_registry(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE.replace('arch = "resnet18"', 'arch = "resnet1000"'))
    with pytest.raises(ConfigError, match=r"teacher\.arch: 'resnet1000' is not allowed; use one of .*'resnet50'"):
        load_study(path, "smoke")


def test_unknown_profile_and_study_and_missing_profiles(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE)
    with pytest.raises(ConfigError, match=r"unknown profile 'huge'; available: cpu, paper, smoke"):
        load_study(path, "huge")
    with pytest.raises(ConfigError, match=r"unknown study 'nope'; available: .*resnet50_cifar10"):
        load_study("nope", "smoke")
    short = _write(tmp_path, BASE.replace("[profiles.paper]", ""))
    assert load_study(short, "smoke").profile == "smoke"  # a user's own study needs no particular profiles
    bad = _write(tmp_path, "[study\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_study(bad, "smoke")


def test_profile_values_are_validated_too(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE.replace("[profiles.cpu]", "[profiles.cpu.teacher.train]\nlr = -1.0"))
    load_study(path, "smoke")
    with pytest.raises(ConfigError, match=r"\(profile cpu\)\.teacher\.train\.lr: -1\.0 is out of range"):
        load_study(path, "cpu")


def test_shipped_studies_must_define_the_three_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import search.config

    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "new.toml").write_text(BASE.replace("[profiles.paper]", ""))
    monkeypatch.setattr(search.config, "REPO_ROOT", tmp_path)
    with pytest.raises(ConfigError, match=r"no \[profiles\.paper\]; every shipped study defines smoke, cpu, paper"):
        load_study(str(tmp_path / "studies" / "new.toml"), "smoke")


def test_a_study_without_profiles_runs_its_base_sections(tmp_path: Path) -> None:
    text = BASE.split("[profiles")[0]
    path = _write(tmp_path, text)
    config = load_study(path)  # no profile asked for, none defined: the base sections
    assert config.profile == "base" and config.teacher.arch == "resnet18"
    with pytest.raises(ConfigError, match=r"unknown profile 'cpu'; available: none \(no \[profiles\]: use base\)"):
        load_study(path, "cpu")


def test_configs_built_in_code_are_validated_with_the_loaders_messages(tmp_path: Path) -> None:
    from evaluators.data.config import DataConfig
    from spaces.compress.apply import Budget
    from spaces.space import SpaceConfig

    with pytest.raises(ConfigError, match=r"Budget\.finetune_steps: -1 is out of range; allowed 0 \.\. 1000000"):
        Budget(finetune_steps=-1)
    path = _write(tmp_path, BASE + "\n[fidelity.f2.budget]\nfinetune_steps = -1\n")
    with pytest.raises(ConfigError, match=r"fidelity\.f2\.budget\.finetune_steps: -1 is out of range; allowed 0 \.\. "
                                          r"1000000"):
        load_study(path, "smoke")
    with pytest.raises(ConfigError, match=r"DataConfig\.resolution: expected int, got str '32'"):
        DataConfig(dataset="cifar10", resolution="32")
    with pytest.raises(ConfigError, match=r"DataConfig\.dataset: 'imagenet' is not allowed"):
        DataConfig(dataset="imagenet")
    assert SpaceConfig(bit_choices=[4, 8]).bit_choices == (4, 8)  # lists from code become tuples, as from TOML
