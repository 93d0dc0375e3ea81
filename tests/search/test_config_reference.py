"""docs/reference/configuration.md is generated from the config dataclasses and must match them."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from pathlib import Path

import pytest

from search import config_reference
from search.config import REPO_ROOT
from search.config import StudyConfig
from search.config_reference import COMMAND
from search.config_reference import OUTPUT
from search.config_reference import field_rows
from search.config_reference import reference
from search.config_reference import sections
from search.config_reference import source_comments
from spaces.validated import settings


@pytest.fixture(scope="module")
def page() -> str:
    return reference()


def test_the_committed_reference_is_current(page: str) -> None:
    """Fails when a config class changed (a field, a default, a bound, a comment) without regenerating the page."""
    committed = (REPO_ROOT / OUTPUT).read_text()
    assert committed == page, f"{OUTPUT} is stale; regenerate it: {COMMAND}"


def test_every_field_of_every_reachable_class_has_a_row(page: str) -> None:
    text = page
    found = sections()
    names = {s.cls.__name__ for s in found}
    assert {
        "StudyConfig",
        "DataConfig",
        "SplitConfig",
        "TeacherConfig",
        "TrainConfig",
        "SpaceConfig",
        "SearchConfig",
        "FidelityConfig",
        "LevelConfig",
        "Budget",
        "HardwareConfig",
    } <= names
    for section in found:
        body = text.split(f"## {section.cls.__name__}\n", 1)[1].split("\n## ", 1)[0]
        for f in dataclasses.fields(section.cls):
            if f.init:
                assert f"| `{f.name}` |" in body, f"{section.cls.__name__}.{f.name} has no row"
    budget = next(s for s in found if s.cls.__name__ == "Budget")
    assert budget.tables == ("fidelity.f1.budget", "fidelity.f2.budget", "fidelity.f3.budget")
    assert sections(StudyConfig)[0].cls is StudyConfig


def test_rows_carry_the_loaders_bounds_defaults_and_the_source_comments(page: str) -> None:
    text = page
    assert "| `trials` | int | 40 | 1 .. 100000 |" in text  # metadata min/max, the class default
    assert '| `sampler` | string | "nsga2" | "nsga2", "nsga3", "tpe", "random", "qmc" |' in text  # an enum
    assert '"packed", "dpu_int8", "fp32", "packed_sparse"' in text  # metadata choices
    assert "| front recipes that get F3 |" in text  # the comment on the field's line
    assert "The first trials try each student of the space once" in text  # the comment lines above the field
    assert "val_images = 2000; budget.finetune_steps = 200" in text  # a nested default that differs from the class's
    assert '"thesis_table": the thesis\'s 11 ZCU104 recipes' in text  # an enum member's comment


@settings
class _Documented:
    # the comment above
    # spans two lines
    above: int = 1
    beside: int = field(default=2, metadata={"min": 0})  # on its line
    doc: int = field(default=3, metadata={"doc": "from metadata"})  # ignored: metadata wins

    plain: int = 4


def test_descriptions_come_from_metadata_else_comments() -> None:
    comments = source_comments(_Documented)
    assert comments["above"] == "the comment above spans two lines"
    assert comments["beside"] == "on its line" and "plain" not in comments
    rows = "\n".join(field_rows(_Documented))
    assert "| `doc` | int | 3 |  | from metadata |" in rows and "| `plain` | int | 4 |  |  |" in rows


def test_check_passes_on_the_current_file_and_fails_on_a_stale_one(
    page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--check` against the repository's file (current), then against a copy with one default changed."""
    assert config_reference.main(["--check"]) == 0
    stale = tmp_path / OUTPUT
    stale.parent.mkdir(parents=True)
    stale.write_text(page.replace("| `trials` | int | 40 |", "| `trials` | int | 41 |"))
    monkeypatch.setattr(config_reference, "REPO_ROOT", tmp_path)
    assert config_reference.main(["--check"]) == 1
