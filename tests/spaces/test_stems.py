"""Cached networks and results are keyed by the stem they were built with: none computed with one stem is reused
for the other, and keys where every network keeps torchvision's stem are what they were before stems existed.

Each test changes the registry's rule for one student (monkeypatched back afterwards) and checks that the key
changes with it, so a key that ignored the stem fails here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from benchmarks.stems import TARGETS
from benchmarks.stems import Row
from benchmarks.stems import choose
from evaluators.candidate import HardwareConfig
from evaluators.candidate import LevelConfig
from evaluators.candidate import level_fingerprint
from evaluators.data.batches import Batcher
from evaluators.data.datasets import DATASET_INFO
from evaluators.data.datasets import Dataset
from evaluators.data.datasets import ImageSet
from evaluators.data.splits import SplitConfig
from evaluators.data.splits import Splits
from evaluators.teacher.cache import Match
from spaces.compress.apply import Budget
from spaces.compress.apply import Context
from spaces.compress.apply import _student_path
from spaces.models.architectures import ARCHITECTURES
from spaces.models.architectures import create_model
from spaces.models.network import SMALL_STEMS
from spaces.models.network import StemRule
from spaces.recipe import Recipe


def _without_rule(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setitem(ARCHITECTURES, name, dataclasses.replace(ARCHITECTURES[name], stem_rule=None))


def test_result_fingerprints_change_with_the_stems_built_at_the_training_size(monkeypatch) -> None:
    level, hardware = LevelConfig(), HardwareConfig()
    assert level_fingerprint(level, hardware, 224) == level_fingerprint(level, hardware)  # no small stem at 224
    at_32 = level_fingerprint(level, hardware, 32)
    assert at_32 != level_fingerprint(level, hardware)
    current = ARCHITECTURES["mobilenet_v2"].stem_rule.small
    other = next(n for n in SMALL_STEMS if n.startswith("mobilenet_v2") and n != current)
    monkeypatch.setitem(ARCHITECTURES, "mobilenet_v2", dataclasses.replace(ARCHITECTURES["mobilenet_v2"],
                                                                           stem_rule=StemRule(other)))
    assert level_fingerprint(level, hardware, 32) != at_32  # another small stem
    _without_rule(monkeypatch, "mobilenet_v2")
    assert level_fingerprint(level, hardware, 32) != at_32  # torchvision's stem again


def test_a_student_used_as_teacher_is_cached_per_stem(monkeypatch) -> None:
    """The teacher cache's match names the stem the network is built with: a student used as teacher with another
    stem is another teacher."""
    student = Match(network="mobilenet_v2", dataset="cifar10", resolution=32, data="data", split=SplitConfig())
    key = student.key
    assert student.fields()["stem"] != "imagenet"
    _without_rule(monkeypatch, "mobilenet_v2")
    assert student.key != key and student.fields()["stem"] == "imagenet"


def _context(student: str, cache_dir: Path) -> Context:
    torch.manual_seed(0)  # the same teacher weights and images each time: only the stem may move the key
    info = DATASET_INFO[Dataset.CIFAR10]
    images = ImageSet(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), torch.arange(8) % 10)
    splits = Splits(info, images, images, images, images, "digits")
    return Context(Recipe(student=student), create_model("small_cnn"), splits, Batcher(info, 32),
                   Budget(student_steps=10, cache_students=True), cache_dir, torch.device("cpu"), {})


def test_cached_students_are_kept_per_stem(monkeypatch, tmp_path: Path) -> None:
    small = _student_path(_context("mobilenet_v2", tmp_path))
    small_cnn = _student_path(_context("small_cnn", tmp_path))
    assert small is not None and small != small_cnn
    _without_rule(monkeypatch, "mobilenet_v2")
    assert _student_path(_context("mobilenet_v2", tmp_path)) != small
    assert _student_path(_context("small_cnn", tmp_path)) == small_cnn


def _row(stem: str, macs: float, accuracy: float, latency: float) -> Row:
    return Row("mobilenet_v2", stem, int(macs * 1e6), 2_390_000, 1, dict.fromkeys(TARGETS, latency), accuracy, 2000,
               1.0)


def test_the_benchmark_chooses_a_small_stem_only_when_it_pays() -> None:
    """More accurate beyond the 95% interval and faster than the teacher everywhere; the cheapest such stem unless
    a costlier one beats it beyond the interval too."""
    teacher = _row("imagenet", 84, 0.0, 4.0)
    base = _row("imagenet", 6, 28.0, 1.0)
    assert choose([base, _row("a", 25, 34.0, 1.5), _row("b", 88, 36.0, 2.0)], teacher)[0] == "a"  # b ties a
    assert choose([base, _row("a", 25, 34.0, 1.5), _row("b", 88, 40.0, 2.0)], teacher)[0] == "b"
    assert choose([base, _row("a", 25, 29.5, 1.5)], teacher)[0] == "imagenet"  # ties torchvision's stem
    slower, why = choose([base, _row("a", 556, 40.0, 5.0)], teacher)
    assert slower == "imagenet" and "slower than the teacher" in why
