"""Bad inputs are refused before the expensive part, each in one line that names the problem and the fix.

`python -m search.run` runs through its `main` in this process, in a temporary folder; every input here fails
before any data is read (`--data-root` points nowhere) or while the user's ImageFolder is scanned. Fast tier.
"""

from __future__ import annotations

import json
import os
import struct
import textwrap
import zlib
from pathlib import Path

import pytest

from hardware_models.profiles import builtin_profile_path
from search import run as search_run
from tests.user_data import write_generated_imagefolder

STUDY = """
[study]
name = "{name}"

[data]
dataset = "{dataset}"
{data}

[teacher]
arch = "small_cnn"

[hardware]
targets = [{targets}]
"""


def study_file(
    folder: Path,
    *,
    name: str = "mine",
    dataset: str = "mnist",
    data: str = "",
    targets: str = '"rpi4"',
    extra: str = "",
) -> Path:
    path = folder / "study.toml"
    path.write_text(STUDY.format(name=name, dataset=dataset, data=data, targets=targets) + textwrap.dedent(extra))
    return path


def fails_in_one_line(capsys: pytest.CaptureFixture, *argv: str) -> str:
    assert search_run.main(["--data-root", "/nonexistent", "--no-progress", *argv]) == search_run.EXIT_USAGE
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # runs/ would be created here


@pytest.mark.parametrize("trials", ["0", "-3"])
def test_zero_trials_is_an_error_before_any_data_is_read(
    trials: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    line = fails_in_one_line(capsys, "--study", str(study_file(tmp_path)), "--trials", trials)
    assert f"--trials {trials}: a search needs at least 1 trial" in line
    assert not (tmp_path / "runs").exists()


def test_an_out_that_is_a_file_or_under_one_is_an_error_before_any_data_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "taken").write_text("a file")
    study = str(study_file(tmp_path))
    assert "is a file, not a folder" in fails_in_one_line(capsys, "--study", study, "--out", "taken")
    assert "cannot be written" in fails_in_one_line(capsys, "--study", study, "--out", "taken/run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: no folder is unwritable for it")
def test_an_out_in_a_folder_without_write_permission_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "ro").mkdir(mode=0o555)
    line = fails_in_one_line(capsys, "--study", str(study_file(tmp_path)), "--out", "ro/run")
    assert "cannot be written by this user" in line


@pytest.mark.parametrize("name", ["../x", "a/b", "..", "/abs", ".hidden", "two words"])
def test_a_study_name_that_is_not_one_plain_folder_name_is_refused(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    line = fails_in_one_line(capsys, "--study", str(study_file(tmp_path, name=name)))
    assert f"study.name: {name!r} names a folder under runs/" in line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists()


def test_a_profile_name_that_is_not_one_plain_folder_name_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    study = study_file(tmp_path, extra='[profiles."../p".search]\ntrials = 1\n')
    line = fails_in_one_line(capsys, "--study", str(study), "--profile", "../p")
    assert "profile: '../p' names a folder under runs/" in line


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p.pop("params"), "profile is missing"),
        (lambda p: p.update(family="gpu"), "unknown family 'gpu'"),
        (lambda p: p.update(params={k: "fast" for k in p["params"]}), "could not convert string to float"),
        (lambda p: p["params"].update({k: float("inf") for k in p["params"]}), "predicts latency"),
    ],
    ids=["no-params", "family", "text", "inf"],
)
def test_a_malformed_profile_target_is_refused_when_the_study_is_loaded(
    edit,
    message: str,
    tmp_path: Path,  # noqa: ANN001
    capsys: pytest.CaptureFixture,
) -> None:
    profile = json.loads(builtin_profile_path("rpi4").read_text())
    edit(profile)
    (tmp_path / "my_pi.json").write_text(json.dumps(profile))
    line = fails_in_one_line(capsys, "--study", str(study_file(tmp_path, targets='"my_pi.json"')))
    assert "hardware.targets: profile" in line and "my_pi.json" in line and message in line
    assert "python -m hardware_models.calibrate" in line


def _bomb_png(path: Path, side: int = 30_000) -> None:
    """A valid PNG header claiming side x side pixels (10x PIL's limit) over a few bytes of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _folder_study(tmp_path: Path, root: Path) -> str:
    return str(study_file(tmp_path, dataset="imagefolder", data=f'root = "{root}"\nresolution = 16'))


def test_a_decompression_bomb_in_an_imagefolder_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_generated_imagefolder(tmp_path / "images", per_class=4, size=16)
    _bomb_png(root / "train" / "c1" / "bomb.png")
    line = fails_in_one_line(capsys, "--study", _folder_study(tmp_path, root))
    assert "cannot read image" in line and "bomb.png" in line and "decompression bomb" in line
    assert "replace or remove the file" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_image_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_generated_imagefolder(tmp_path / "images", per_class=4, size=16)
    locked = next((root / "train" / "c0").iterdir())
    locked.chmod(0)
    line = fails_in_one_line(capsys, "--study", _folder_study(tmp_path, root))
    assert f"cannot read image {locked}" in line


def test_classes_left_without_a_training_image_are_an_error_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Twelve classes of one image each: validation, test and calibration carved from train/ take them all."""
    root = write_generated_imagefolder(tmp_path / "images", classes=12, per_class=1, size=16)
    line = fails_in_one_line(capsys, "--study", _folder_study(tmp_path, root))
    assert "classes have no training image left" in line and "give a val/ (and test/) folder" in line
