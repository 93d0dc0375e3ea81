"""The `python -m search.run` command as a user runs it: error paths, interruption, the smoke study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.run", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    from search.run import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = capsys.readouterr().out
    for option in ("--study", "--profile", "--data-root", "--out", "--cache-dir", "--device", "--no-download",
                   "--fresh", "--storage", "--backend", "--address", "--workers", "--trials", "--code",
                   "--baseline-only", "--budget", "--sizing", "--plan-only"):
        assert option in out


def main_in_process(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`python -m search.run ARGS` run in this process (the same `main`), for error paths that need no
    subprocess: (exit code, stderr)."""
    from search.run import main

    code = main(list(args))
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--study", "nope"], "error: unknown study 'nope'; available: mlp_mnist, resnet50_cifar10"),
    (["--study", "mlp_mnist", "--profile", "huge"], "unknown profile 'huge'; available: cpu, paper, smoke"),
    (["--study", "missing.toml"], "error: study file missing.toml does not exist"),
])
def test_bad_study_or_profile_fails_in_one_line(args: list[str], message: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, err = main_in_process(*args, "--out", str(tmp_path), capsys=capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_the_command_line_fails_in_one_line_as_a_process(tmp_path: Path) -> None:
    """One real process, so the exit status and stderr a shell sees are checked too."""
    result = run_cli("--study", "nope", "--out", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == "error: unknown study 'nope'; available: mlp_mnist, resnet50_cifar10 (or give " \
                                    "the path of a .toml file)"


def test_missing_data_says_where_to_put_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = main_in_process("--study", "mlp_mnist", "--profile", "smoke", "--data-root", str(empty),
                                "--no-download", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
                                capsys=capsys)
    assert code == 2
    assert f"mnist not found under {empty}" in err and "train-images-idx3-ubyte.gz" in err
    assert len(err.strip().splitlines()) == 1


def test_sigterm_mid_training_then_rerun_continues(mnist_root: Path, tmp_path: Path) -> None:
    study = tmp_path / "long_mlp.toml"
    study.write_text((REPO / "studies" / "mlp_mnist.toml").read_text().replace(
        "[profiles.smoke.teacher.train]\nepochs = 2", "[profiles.smoke.teacher.train]\nepochs = 6"))
    args = ["-m", "search.run", "--study", str(study), "--profile", "smoke", "--data-root", str(mnist_root),
            "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--baseline-only"]
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 300
    # The first epoch's checkpoint means training is under way, with 5 epochs still to go.
    while not list((tmp_path / "cache").glob("teachers/*/state.pt")) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "rerun the same command to continue" in err
    assert list((tmp_path / "cache").glob("teachers/*/state.pt"))

    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert "resuming the unfinished segment" in result.stdout
    teacher = json.loads((tmp_path / "out" / "baseline.json").read_text())["teacher"]
    assert teacher["epochs"] == 6 and [s["first"] for s in teacher["segments"]] == [0]  # continued, not restarted
    assert not list((tmp_path / "cache").glob("teachers/*/state.pt"))
