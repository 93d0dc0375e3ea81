"""The search engine as a user runs it: `python -m search.run` on the MNIST study (seconds per trial).

What is checked: every output file, resume without repeating work, a real SIGTERM mid-study, failing and
infeasible trials recorded with their reasons, config errors, the Ray backend on a real local Ray.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from evaluators.candidate import HardwareConfig
from search.analysis.objectives import parse_constraint
from search.analysis.objectives import parse_pick
from search.analysis.stats import kendall_tau
from search.config import load_study
from search.engine import loop as engine
from search.pipeline.context import make_plan
from spaces.recipe import Recipe
from spaces.space import SearchSpace
from tests.cli_helpers import search_cli
from tests.cli_helpers import study_args

REPO = Path(__file__).resolve().parents[2]
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
    # zcu104 (the DPU's power-of-two int8) and rpi4 (per-channel int8) compute differently: each has its accuracy,
    # an objective of the front, and they differ where the recipe's arithmetic does (sub-8-bit layers run at 8).
    assert {"f2_accuracy_zcu104", "f2_accuracy_rpi4"} <= set(trials.columns)
    assert (trials["f2_accuracy_rpi4"].dropna() == trials["f2_accuracy"].dropna()).all()
    assert (trials["f2_accuracy_zcu104"].dropna() != trials["f2_accuracy"].dropna()).any()
    assert front["f3_test_accuracy_zcu104"].between(0, 100).all()
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

    from search.engine import loop as engine
    from search.pipeline.context import RunSpec
    from search.pipeline.context import load_context
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


def test_infeasible_trials_are_rejected_at_f0_and_told_as_infeasible(mnist_root: Path, cache_dir: Path,
                                                                     tmp_path: Path) -> None:
    """A cost constraint no recipe meets: every trial stops at F0 (no accuracy measured), and is told to the
    sampler as a COMPLETE but infeasible trial with its F0 costs and its constraint value, so NSGA-II learns the
    boundary; none reaches the front or the final stage."""
    import optuna

    tight = variant(tmp_path, 'baselines = "survey_quantization"',
                    'baselines = "none"\nconstraints = ["size_mb <= 0.0001"]', "tight.toml")
    result = search_cli(*study_args(mnist_root, tmp_path / "b", cache_dir, study=str(tight)))
    assert result.returncode == 0, result.stderr
    trials = pd.read_csv(tmp_path / "b" / "trials.csv")
    assert len(trials) == 8 and (trials["state"] == "COMPLETE").all() and (trials["told"] == "f0").all()
    assert trials["reason"].str.startswith("infeasible at F0: size_mb").all()
    assert trials["f1_accuracy"].isna().all() and trials["f2_accuracy"].isna().all()  # no accuracy measured
    assert (~trials["feasible"].astype(bool)).all()
    study = optuna.load_study(study_name="mlp_mnist-smoke", storage=f"sqlite:///{tmp_path / 'b' / 'study.db'}")
    for t in study.trials:
        violation = t.user_attrs["f1"]["size_mb"] - 0.0001
        assert list(t.constraints.values()) == pytest.approx([violation]) and violation > 0
        assert t.values[0] == 0.0 and t.values[-1] == pytest.approx(t.user_attrs["f1"]["size_mb"])
    assert study.best_trials == []  # optuna's own front: feasible trials only
    assert pd.read_csv(tmp_path / "b" / "pareto.csv").empty
    assert "F3 for 0 front recipes" in result.stdout


def test_a_tight_constraint_still_finds_a_front_of_feasible_recipes(mnist_root: Path, cache_dir: Path,
                                                                    tmp_path: Path) -> None:
    """`size_mb <= 0.02` lies between the smallest recipes of the space (about 0.004 MB) and the largest (0.055):
    the rejected ones teach the sampler, and the front holds feasible recipes only, scored at F3."""
    tight = variant(tmp_path, 'baselines = "survey_quantization"',
                    'baselines = "none"\nconstraints = ["size_mb <= 0.02"]', "tight.toml")
    result = search_cli(*study_args(mnist_root, tmp_path / "t", cache_dir, study=str(tight)))
    assert result.returncode == 0, result.stderr
    trials = pd.read_csv(tmp_path / "t" / "trials.csv")
    assert (trials["told"] == "f0").any() and (trials["told"] == "f2").any()
    assert (trials.loc[trials["told"] == "f0", "f1_size_mb"] > 0.02).all()
    front = pd.read_csv(tmp_path / "t" / "pareto.csv")
    assert len(front) >= 1 and (front["f2_size_mb"] <= 0.02).all() and front["f3_test_accuracy"].notna().all()
    assert set(front["recipe_hash"]) <= set(trials.loc[trials["told"] == "f2", "recipe_hash"])


def test_a_constraint_on_the_dpu_accuracy_applies_and_one_target_keeps_one_accuracy(
        mnist_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    """`accuracy_zcu104 >= 99.9` (the DPU arithmetic's accuracy; no MNIST MLP recipe reaches it here) is measured,
    not rejected at F0, and leaves every trial infeasible by its own value. A study for the Pi alone scores one
    accuracy: no accuracy_<target> column at all."""
    strict = variant(tmp_path, 'baselines = "survey_quantization"',
                     'baselines = "none"\nconstraints = ["accuracy_zcu104 >= 99.9"]', "strict.toml")
    result = search_cli(*study_args(mnist_root, tmp_path / "s", cache_dir, "--trials", "3", study=str(strict)))
    assert result.returncode == 0, result.stderr
    trials = pd.read_csv(tmp_path / "s" / "trials.csv")
    measured = trials[trials["f1_accuracy_zcu104"].notna()]
    assert len(measured) >= 1 and (measured["f1_accuracy_zcu104"] < 99.9).all()
    assert (~trials["feasible"].astype(bool)).all() and pd.read_csv(tmp_path / "s" / "pareto.csv").empty

    alone = variant(tmp_path, 'targets = ["zcu104", "rpi4"]', 'targets = ["rpi4"]', "alone.toml")
    result = search_cli(*study_args(mnist_root, tmp_path / "a", cache_dir, "--trials", "3", study=str(alone)))
    assert result.returncode == 0, result.stderr
    columns = set(pd.read_csv(tmp_path / "a" / "trials.csv").columns) | set(
        pd.read_csv(tmp_path / "a" / "pareto.csv").columns)
    assert not [c for c in columns if "accuracy_rpi4" in c or "accuracy_zcu104" in c]
    assert "f3_test_accuracy" in columns


def test_promotion_spends_f2_on_the_promising_share_and_the_ladder_on_all(mlp_study: tuple[Path, str],
                                                                         mnist_root: Path, cache_dir: Path,
                                                                         tmp_path: Path) -> None:
    """MO-ASHA (the default): every recipe gets F1, some are F1-only (told with their F1 values and marked), and
    the front comes from F2 trials only; `promotion = "ladder"` gives every recipe F2."""
    out, stdout = mlp_study
    assert "plan: up to 8 trials; F0 and F1 for every recipe, F2 for the top 1/3" in stdout
    trials = pd.read_csv(out / "trials.csv")
    f1_only = trials[trials["told"] == "f1"]
    assert len(f1_only) >= 1 and f1_only["f2_accuracy"].isna().all() and f1_only["f1_accuracy"].notna().all()
    assert f1_only["promotion"].str.startswith("not promoted").all()
    assert set(pd.read_csv(out / "pareto.csv")["recipe_hash"]) <= set(trials.loc[trials["told"] == "f2",
                                                                                 "recipe_hash"])
    ladder = variant(tmp_path, 'sampler = "nsga2"', 'sampler = "nsga2"\npromotion = "ladder"')
    result = search_cli(*study_args(mnist_root, tmp_path / "l", cache_dir, "--trials", "4", study=str(ladder)))
    assert result.returncode == 0, result.stderr
    assert "F0, F1 and F2 for every recipe (fixed ladder)" in result.stdout
    assert set(pd.read_csv(tmp_path / "l" / "trials.csv")["told"].fillna("")) <= {"f2", ""}


def test_a_wall_clock_budget_stops_the_search_and_a_resumed_run_keeps_it(mnist_root: Path, cache_dir: Path,
                                                                         tmp_path: Path) -> None:
    """`--budget 2s --sizing off` (the search's own clock) with room for 500 trials: the search stops asking once
    2 s are spent, then runs the final stage; rerunning the same command finds the budget spent and starts no trial."""
    args = study_args(mnist_root, tmp_path / "w", cache_dir, "--trials", "500", "--budget", "2s", "--sizing", "off")
    result = search_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "plan: up to 500 trials or 2s of search wall time, whichever ends first" in result.stdout
    first = len(pd.read_csv(tmp_path / "w" / "trials.csv"))
    assert 1 <= first < 500 and "final stage" in result.stdout
    etas = [line.split("ETA ")[1].split(" min")[0] for line in result.stdout.splitlines() if " ETA " in line]
    assert etas and all(float(eta) <= 2 / 60 for eta in etas)  # never past the time left, whatever 500 trials take
    again = search_cli(*args)
    assert again.returncode == 0, again.stderr
    assert "spent earlier" in again.stdout and "[" + str(first + 1) + "/500]" not in again.stdout
    assert len(pd.read_csv(tmp_path / "w" / "trials.csv")) == first
    bad = search_cli(*study_args(mnist_root, tmp_path / "x", cache_dir, "--budget", "an hour"))
    assert bad.returncode == 2 and bad.stderr.strip() == ("error: --budget: 'an hour' is not a wall-clock time; use "
                                                          "hours, minutes and seconds such as '90s', '60m' or '1h30m'")


@pytest.mark.parametrize(("old", "new", "message"), [
    ('sampler = "nsga2"', 'sampler = "annealing"', "search.sampler: 'annealing' is not allowed"),
    ('baselines = "survey_quantization"', 'constraints = ["latency_mars <= 3"]', "unknown metric 'latency_mars'"),
    ('baselines = "survey_quantization"', 'constraints = ["size_mb about 3"]', "is not 'METRIC OP NUMBER [@ p90]'"),
    ('targets = ["zcu104", "rpi4"]', 'targets = ["zcu104", "pi"]', "unknown target 'pi'"),
    ("bit_choices = [2, 4, 6, 8]", "bit_choices = [3, 12]", "bit widths [12] are not supported"),
    ('sampler = "nsga2"', 'sampler = "nsga2"\nbudget = "an hour"', "search.budget: 'an hour' is not a wall-clock"),
    ('sampler = "nsga2"', 'sampler = "nsga2"\npromotion = "asha"', "search.promotion: 'asha' is not allowed"),
    ('sampler = "nsga2"', 'sampler = "nsga2"\neta = 1', "search.eta: 1 is out of range"),
    ('sampler = "nsga2"', 'sampler = "nsga2"\nsizing = "guess"', "search.sizing: 'guess' is not allowed; use one of "
                                                                  "'fit', 'off'"),
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
@pytest.mark.ray
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
    assert (trials["told"] == "f2").any() and set(trials["told"]) <= {"f1", "f2"}  # F2 rung as a second task
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
    from search.analysis.objectives import cost_gate
    from spaces.models.architectures import create_model

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


def test_ray_tasks_ask_for_a_gpu_share_only_on_cuda(tmp_path: Path) -> None:
    """The resource request a trial's Ray task makes (the CPU-only stand-in for the CUDA test below)."""
    from search.pipeline.ray_backend import task_resources

    assert task_resources("cpu", 1.0) == {"num_cpus": 1}  # a CPU study never waits on a GPU a cluster lacks
    assert task_resources("cuda", 1.0) == {"num_cpus": 1, "num_gpus": 1.0}
    assert task_resources("cuda", 0.25) == {"num_cpus": 1, "num_gpus": 0.25}  # four trials share one GPU
    assert task_resources("cuda", 0.0) == {"num_cpus": 1}
    assert load_study("mlp_mnist", "smoke").search.gpus_per_trial == 1.0
    study = variant(tmp_path, 'final_max = 6', 'final_max = 6\ngpus_per_trial = -1')
    with pytest.raises(Exception, match="gpus_per_trial"):
        load_study(str(study), "smoke")


@pytest.mark.ray
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_one_trial_runs_on_the_gpu_through_ray(mnist_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    ray_tmp = Path(f"/tmp/ray-gpu-{os.getpid()}")
    args = [sys.executable, "-m", "search.run", *study_args(mnist_root, tmp_path / "gpu", cache_dir, "--backend",
                                                             "ray", "--workers", "1", "--trials", "1"),
            "--device", "cuda"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": str(ray_tmp), "HOME": str(tmp_path)}
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "device cuda" in result.stdout + result.stderr
    trials = pd.read_csv(tmp_path / "gpu" / "trials.csv")
    assert len(trials) == 1 and trials["state"].iloc[0] == "COMPLETE"


def test_the_first_trials_try_every_student_once_and_a_resumed_study_is_not_seeded_again() -> None:
    """A short search's random first generation can miss a student (the `cpu` run's 18 trials had no recipe on the
    teacher): the first trials fix each student once, the rest of each recipe is sampled."""
    config = load_study("resnet50_cifar10", "cpu")
    space = SearchSpace(config.space, config.teacher.arch, config.data.resolution)
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=optuna.samplers.NSGAIISampler(population_size=10, seed=0))
    students = config.space.students
    assert engine.seed_students(study, config.search, students) == len(students)
    picked = [space.suggest(study.ask()).student for _ in students]
    assert picked == list(students)
    assert engine.seed_students(study, config.search, students) == 0  # trials exist: a resume adds none
    off = optuna.create_study(directions=["maximize", "minimize"])
    assert engine.seed_students(off, dataclasses.replace(config.search, seed_students=False), students) == 0
    assert not off.get_trials()
