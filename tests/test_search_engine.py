"""The search engine as a user runs it: `python -m search.run` on the MNIST study (seconds per trial).

What is checked: every output file, resume without repeating work, a real SIGTERM mid-study, failing and
infeasible trials recorded with their reasons, config errors, the Ray backend on a real local Ray.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from evaluators.candidate import HardwareConfig
from search.config import load_study
from search.context import make_plan
from search.objectives import parse_constraint
from search.objectives import parse_pick
from search.stats import kendall_tau
from spaces.recipe import Recipe
from tests.cli_helpers import search_cli
from tests.cli_helpers import study_args

REPO = Path(__file__).resolve().parent.parent
OUTPUTS = ("trials.csv", "pareto.csv", "baselines.csv", "pareto.png", "report.md", "study.db", "baseline.json")


def variant(tmp_path: Path, old: str, new: str, name: str = "variant.toml") -> Path:
    """A copy of the MNIST study with one piece of text replaced (the replacement must happen)."""
    text = (REPO / "studies" / "mlp_mnist.toml").read_text()
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new))
    return path


def finished_trials(db: Path) -> dict[int, str]:
    """trial number -> state, read straight from optuna's SQLite storage."""
    try:
        with sqlite3.connect(db) as conn:
            return dict(conn.execute("SELECT number, state FROM trials WHERE state != 'RUNNING'").fetchall())
    except sqlite3.OperationalError:  # optuna is still creating its tables
        return {}


def test_smoke_study_writes_every_output(mlp_study: tuple[Path, str]) -> None:
    out, stdout = mlp_study
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 8 and set(trials["state"]) <= {"COMPLETE", "PRUNED", "FAIL"}
    assert {"f1_accuracy", "f2_accuracy", "f2_latency_zcu104", "f2_energy_rpi4", "f2_size_mb", "duration_s"} \
        <= set(trials.columns)
    front = pd.read_csv(out / "pareto.csv")
    assert len(front) >= 1 and front["knee"].sum() == 1
    assert front["f3_test_accuracy"].between(0, 100).all()
    baselines = pd.read_csv(out / "baselines.csv")
    assert set(baselines["label"]) == {"FP32", "PTQ 8-bit", "QAT 8-bit", "QAT 4-bit"}
    # The FP32 baseline is the teacher itself: its F1 accuracy is the teacher's on the same images.
    assert baselines.set_index("label").loc["FP32", "f1_accuracy_drop"] == pytest.approx(0.0)
    report = (out / "report.md").read_text()
    for section in ("Best recipe for each objective", "Knee of the front", "Hypervolume", "Kendall tau"):
        assert section in report
    assert "[8/8]" in stdout and "ETA" in stdout


def test_rerun_resumes_without_repeating_trials(mlp_study: tuple[Path, str], mnist_root: Path,
                                                cache_dir: Path) -> None:
    out, _ = mlp_study
    before = finished_trials(out / "study.db")
    result = search_cli(*study_args(mnist_root, out, cache_dir))
    assert result.returncode == 0, result.stderr
    assert "resuming: 8 trials finished earlier" in result.stdout
    assert finished_trials(out / "study.db") == before
    assert "[1/" not in result.stdout  # no trial ran again


def test_sigterm_mid_study_loses_no_finished_trial(mnist_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [sys.executable, "-m", "search.run", *study_args(mnist_root, out, cache_dir, "--trials", "24")]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if (out / "study.db").exists() and len(finished_trials(out / "study.db")) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    before = finished_trials(out / "study.db")
    assert 3 <= len(before) < 24

    result = search_cli(*study_args(mnist_root, out, cache_dir, "--trials", "24"))
    assert result.returncode == 0, result.stderr
    after = finished_trials(out / "study.db")
    assert {n: after[n] for n in before} == before  # every finished trial is still there, unchanged
    trials = pd.read_csv(out / "trials.csv")
    assert (trials["state"] != "RUNNING").all() and len(trials) >= 24


def test_a_failing_trial_is_recorded_with_its_reason(mnist_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    import optuna

    from search import engine
    from search.context import RunSpec
    from search.context import load_context
    from spaces.recipe import PruneKind
    from spaces.recipe import Pruning
    from spaces.recipe import Recipe

    ctx = load_context(RunSpec.from_study("mlp_mnist", "smoke", str(tmp_path), data_root=str(mnist_root),
                                          cache_dir=str(cache_dir)))
    broken = Recipe(prune=Pruning(kind=PruneKind.LAYER, blocks_removed=1))  # the MLP has no residual blocks
    outcome = engine.evaluate_trial(ctx.evaluator, broken, ())
    assert outcome.state == optuna.trial.TrialState.FAIL and outcome.reason
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    engine.tell(study, trial, broken, outcome, ("accuracy", "size_mb"), ())
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    assert study.trials[0].user_attrs["fail_reason"] == outcome.reason
    assert engine.count_finished(study) == 1  # counts towards the budget: not retried forever


def test_infeasible_trials_are_rejected_at_f0_and_kept(mnist_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    tight = variant(tmp_path, 'baselines = "survey_quantization"',
                    'baselines = "none"\nconstraints = ["size_mb <= 0.0001"]', "tight.toml")
    result = search_cli(*study_args(mnist_root, tmp_path / "b", cache_dir, study=str(tight)))
    assert result.returncode == 0, result.stderr
    trials = pd.read_csv(tmp_path / "b" / "trials.csv")
    assert len(trials) == 8 and (trials["state"] == "PRUNED").all()
    assert trials["reason"].str.startswith("infeasible at F0: size_mb").all()
    assert trials["f1_accuracy"].isna().all()  # rejected before any accuracy was measured


@pytest.mark.parametrize(("old", "new", "message"), [
    ('sampler = "nsga2"', 'sampler = "annealing"', "search.sampler: 'annealing' is not allowed"),
    ('baselines = "survey_quantization"', 'constraints = ["latency_mars <= 3"]', "unknown metric 'latency_mars'"),
    ('baselines = "survey_quantization"', 'constraints = ["size_mb about 3"]', "is not 'METRIC OP NUMBER [@ p90]'"),
    ('targets = ["zcu104", "rpi4"]', 'targets = ["zcu104", "pi"]', "unknown target 'pi'"),
    ("bit_choices = [2, 4, 6, 8]", "bit_choices = [3, 12]", "bit widths [12] are not supported"),
])
def test_bad_search_config_fails_in_one_line(old: str, new: str, message: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from search.run import main

    study = variant(tmp_path, old, new)
    assert main(["--study", str(study), "--profile", "smoke", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_partial_nested_override_keeps_the_levels_defaults() -> None:
    config = load_study("mlp_mnist", "smoke")
    f2 = config.fidelity.f2.budget
    assert f2.finetune_steps == 30 and f2.finetune_train.optimizer.value == "adam"  # not TrainConfig's SGD
    assert make_plan(config).objectives[0] == "accuracy"


def test_constraints_and_picks_parse() -> None:
    known = ("accuracy", "latency_zcu104", "size_mb")
    c = parse_constraint("latency_zcu104 <= 5", known)
    assert c.violation({"latency_zcu104": 7.0}) == 2.0 and c.satisfied({"latency_zcu104": 5.0})
    pick = parse_pick("max accuracy with latency_zcu104 <= 5 and size_mb < 2", known)
    assert (pick.goal, pick.metric, len(pick.constraints)) == ("max", "accuracy", 2)
    with pytest.raises(ValueError, match="unknown metric 'speed'"):
        parse_pick("max speed", known)


def test_kendall_tau() -> None:
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)


@pytest.mark.slow
def test_ray_backend_survives_a_killed_worker(mnist_root: Path, cache_dir: Path, tmp_path: Path,
                                              mlp_study: tuple[Path, str]) -> None:
    """A real local Ray with 2 workers; one worker process is killed (SIGKILL) while it evaluates a trial:
    Ray retries that task, and the study still finishes every trial. The final stage runs on the workers
    too, and gives the baselines the numbers the local backend gives them."""
    ray_tmp = Path(f"/tmp/ray-{os.getpid()}")  # short: Ray's socket paths must stay under 107 characters
    args = [sys.executable, "-m", "search.run", *study_args(mnist_root, tmp_path / "ray", cache_dir, "--backend",
                                                             "ray", "--workers", "2", "--trials", "6")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "RAY_TMPDIR": str(ray_tmp),
           "HOME": str(tmp_path)}
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    killed, deadline = False, time.monotonic() + 300
    while not killed and proc.poll() is None and time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-f", "ray::_evaluate"], capture_output=True, text=True).stdout.split()
        if found:
            os.kill(int(found[0]), signal.SIGKILL)
            killed = True
        time.sleep(0.05)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert killed, "no worker was seen evaluating a trial"
    trials = pd.read_csv(tmp_path / "ray" / "trials.csv")
    assert len(trials) == 6 and (trials["state"] == "COMPLETE").all()
    assert json.loads((tmp_path / "ray" / "summary.json").read_text())["backend"] == "ray"
    on_ray = pd.read_csv(tmp_path / "ray" / "baselines.csv")
    local = pd.read_csv(mlp_study[0] / "baselines.csv")
    assert on_ray["label"].tolist() == local["label"].tolist()
    assert on_ray["f3_test_accuracy"].tolist() == pytest.approx(local["f3_test_accuracy"].tolist(), abs=0.3)


def test_resuming_with_other_objectives_is_refused(mlp_study: tuple[Path, str], tmp_path: Path, mnist_root: Path,
                                                   cache_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from search.run import main

    run, _ = mlp_study
    study = variant(tmp_path, 'final_max = 6', 'final_max = 6\nobjectives = ["accuracy", "size_mb"]')
    copy = tmp_path / "run"
    copy.mkdir()
    (copy / "study.db").write_bytes((run / "study.db").read_bytes())
    # The stored study's name is "<study>-<profile>": the variant keeps both, so it finds the stored one.
    assert main(study_args(mnist_root, copy, cache_dir, study=str(study))) == 2
    err = capsys.readouterr().err
    assert "rerun with --fresh to start over" in err and len(err.strip().splitlines()) == 1


def test_fresh_starts_the_study_over(mlp_study: tuple[Path, str], mnist_root: Path, cache_dir: Path,
                                     tmp_path: Path) -> None:
    import shutil

    run, _ = mlp_study
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    result = search_cli(*study_args(mnist_root, copy, cache_dir, "--fresh", "--trials", "3"))
    assert result.returncode == 0, result.stderr
    assert "resuming" not in result.stdout and "[1/3]" in result.stdout
    assert len(pd.read_csv(copy / "trials.csv")) == 3


def test_a_p90_constraint_reads_the_upper_end_of_the_prediction_interval() -> None:
    """`latency_zcu104 <= B @ p90` holds only when the 90% interval's upper end is within B, on a real estimate."""
    from evaluators.candidate import hardware_metrics
    from search.objectives import cost_gate
    from spaces.architectures import create_model

    known = ("accuracy", "latency_zcu104", "size_mb")
    model = create_model("small_cnn").eval()
    metrics = hardware_metrics(model, Recipe(), (3, 32, 32), HardwareConfig(targets=("zcu104",)))
    point, high = metrics["latency_zcu104"], metrics["latency_zcu104_high"]
    assert high > point > 0
    between = (point + high) / 2
    plain, p90 = parse_constraint(f"latency_zcu104 <= {between}", known), \
        parse_constraint(f"latency_zcu104 <= {between} @ p90", known)
    assert plain.satisfied(metrics) and not p90.satisfied(metrics)
    assert p90.violation(metrics) == pytest.approx(high - between) and str(p90).endswith("@ p90")
    assert cost_gate([p90])(metrics).startswith("infeasible at F0: latency_zcu104_high")
    with pytest.raises(ValueError, match="use @ p90"):
        parse_constraint("latency_zcu104 <= 5 @ p50", known)
    with pytest.raises(ValueError, match="latency_/energy_ metrics only"):
        parse_constraint("size_mb <= 5 @ p90", known)
