"""One owner per run folder, and a resumed run that repeats no recipe: on the lock itself, on optuna studies in
memory, and as a user meets it (two runs on one folder; a run killed with SIGKILL mid-trial, then resumed), on the
local backend and on Ray."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from search.engine import loop as engine
from search.engine.loop import SamplerKind
from search.engine.loop import SearchConfig
from search.engine.owner import Owner
from search.pipeline.run_lock import LOCK_FILE
from search.pipeline.run_lock import RunFolderBusy
from search.pipeline.run_lock import RunLock
from tests.cli_helpers import REPO
from tests.cli_helpers import search_cli
from tests.cli_helpers import study_args


def _dead_owner() -> Owner:
    """The owner record of a process of this host that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    owner = Owner.of(child.pid)
    assert owner.alive() is True
    child.kill()
    child.wait()
    return owner


def test_a_second_owner_is_refused_in_one_line_naming_the_first(tmp_path: Path) -> None:
    first = RunLock(tmp_path / "run", print)
    first.acquire()
    assert (tmp_path / "run" / LOCK_FILE).read_text().strip() == Owner.me().label()
    with pytest.raises(RunFolderBusy, match=f"is in use by another run \\({Owner.me().label()}\\)") as err:
        RunLock(tmp_path / "run", print).acquire()
    assert "\n" not in str(err.value)
    first.release()
    assert not (tmp_path / "run" / LOCK_FILE).exists()
    second = RunLock(tmp_path / "run", print)
    second.acquire()  # free again
    second.release()


def test_a_stale_lock_is_taken_over_with_a_message(tmp_path: Path) -> None:
    dead = _dead_owner()
    assert dead.alive() is False
    (tmp_path / LOCK_FILE).write_text(dead.label() + "\n")
    said: list[str] = []
    lock = RunLock(tmp_path, said.append)
    lock.acquire()
    assert len(said) == 1 and "no longer running" in said[0] and dead.label() in said[0]
    assert Owner.parse((tmp_path / LOCK_FILE).read_text()) == Owner.me()
    lock.release()


def test_a_lock_of_another_host_is_refused_with_how_to_clear_it(tmp_path: Path) -> None:
    (tmp_path / LOCK_FILE).write_text("elsewhere.example pid 4242 started 17\n")
    with pytest.raises(RunFolderBusy, match=f"elsewhere.example pid 4242 .*delete {tmp_path / LOCK_FILE}"):
        RunLock(tmp_path, print).acquire()


def _running(study: optuna.Study, owner: str | None) -> int:
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    if owner is not None:
        trial.set_user_attr(engine.OWNER_ATTR, owner)
    return trial.number


def test_only_trials_whose_owner_is_dead_are_requeued() -> None:
    study = optuna.create_study()
    live = engine.ask(study).number  # this process: alive
    live_params = study.trials[live].params
    dead = _running(study, _dead_owner().label())
    unknown = _running(study, None)  # asked by a version that recorded no owner
    remote = _running(study, "elsewhere.example pid 4242")
    said: list[str] = []
    assert engine.requeue_interrupted(study, said.append) == 2
    states = {t.number: t.state for t in study.trials}
    assert states[live] == states[remote] == optuna.trial.TrialState.RUNNING
    assert states[dead] == states[unknown] == optuna.trial.TrialState.FAIL
    assert study.trials[live].params == live_params and len(said) == 2  # the live ones are named, not touched
    retried = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert sorted(t.user_attrs["retry_of"] for t in retried) == [dead, unknown]


@pytest.mark.parametrize("sampler", [SamplerKind.RANDOM, SamplerKind.NSGA2, SamplerKind.TPE])
def test_a_resumed_sampler_proposes_none_of_the_first_runs_points(sampler: SamplerKind) -> None:
    """Resumed from the stored study with the config's seed, the sampler replays the first run's points (what a run
    killed after two trials did); reseeded by the trials told, it does not."""
    config = SearchConfig(sampler=sampler, seed=0, population=4)
    storage = optuna.storages.InMemoryStorage()

    def points(study: optuna.Study, n: int) -> list[float]:
        found = []
        for _ in range(n):
            trial = study.ask()
            x = trial.suggest_float("x", 0.0, 1.0)
            study.tell(trial, x)
            found.append(x)
        return found

    first = points(optuna.create_study(study_name="first", storage=storage, sampler=engine.make_sampler(config)), 2)
    replayed = optuna.create_study(study_name="replayed", storage=storage, sampler=engine.make_sampler(config))
    assert points(replayed, 2) == first  # the same seed proposes the same points: the bug, as a control
    resumed = optuna.load_study(study_name="first", storage=storage, sampler=engine.make_sampler(config))
    engine.reseed(resumed, config)
    assert not set(points(resumed, 4)) & set(first)
    fresh = optuna.create_study(study_name="fresh", storage=storage, sampler=engine.make_sampler(config))
    engine.reseed(fresh, config)  # nothing told: a new study keeps its seed (reproducible)
    assert points(fresh, 2) == first


# --- as a user meets it -----------------------------------------------------------------------------------------


def _start(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "search.run", *args],
        cwd=REPO,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})},
    )


def _wait_for(log: Path, text: str, proc: subprocess.Popen, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while text not in log.read_text():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{text!r} never appeared:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def _no_repeated_recipe(out: Path, trials: int) -> None:
    table = pd.read_csv(out / "trials.csv")
    done = table[table["state"].isin(["COMPLETE", "PRUNED"])]
    assert len(done) == trials, table[["number", "state"]]
    assert done["recipe_hash"].notna().all() and done["recipe_hash"].is_unique, done["recipe_hash"].tolist()


def _two_runs_on_one_folder(
    mnist_root: Path, cache_dir: Path, tmp_path: Path, *backend: str, env: dict[str, str] | None = None
) -> None:
    """A runs; while it is mid-trial (held there with SIGSTOP) B starts on the same folder and must refuse in one
    line naming A; A then finishes with no failed and no repeated trial."""
    out, log = tmp_path / "run", tmp_path / "a.log"
    args = study_args(mnist_root, out, cache_dir, "--trials", "4", *backend)
    first = _start(args, log, env)
    try:
        _wait_for(log, "[1/4]", first)
        os.kill(first.pid, signal.SIGSTOP)
        second = search_cli(*args, env=env)
        os.kill(first.pid, signal.SIGCONT)
        assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and f"is in use by another run ({socket.gethostname()} pid {first.pid}" in lines[0]
        assert first.wait(timeout=900) == 0, log.read_text()[-3000:]
    finally:
        first.kill()
    table = pd.read_csv(out / "trials.csv")
    assert (table["state"] == "COMPLETE").all() and len(table) == 4, table[["number", "state"]]
    _no_repeated_recipe(out, 4)


def _killed_and_resumed(
    mnist_root: Path, cache_dir: Path, tmp_path: Path, *backend: str, env: dict[str, str] | None = None
) -> None:
    """A run killed with SIGKILL after two trials, mid-trial; the same command resumes it: it takes the stale lock
    over, retries the interrupted trial, and no recipe is scored twice."""
    out, log = tmp_path / "run", tmp_path / "killed.log"
    args = study_args(mnist_root, out, cache_dir, "--trials", "6", *backend)
    first = _start(args, log, env)
    try:
        _wait_for(log, "[2/6]", first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the run and whatever it started (Ray's processes)
        first.wait()
    assert (out / LOCK_FILE).exists()  # a kill -9 leaves the lock file behind
    resumed = search_cli(*args, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "no longer running" in resumed.stdout and "resuming: " in resumed.stdout
    _no_repeated_recipe(out, 6)


@pytest.mark.slow
def test_two_runs_on_one_folder_locally(mnist_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    _two_runs_on_one_folder(mnist_root, cache_dir, tmp_path)


@pytest.mark.slow
def test_a_killed_run_resumes_without_repeating_a_recipe_locally(
    mnist_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    _killed_and_resumed(mnist_root, cache_dir, tmp_path)


def _ray_env(tmp_path: Path) -> dict[str, str]:
    short = Path(f"/tmp/rl{os.getpid()}")  # Ray's socket paths must stay under 107 characters
    return {"RAY_TMPDIR": str(short), "HOME": str(tmp_path)}


@pytest.mark.slow
@pytest.mark.ray
def test_two_runs_on_one_folder_on_ray(mnist_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    _two_runs_on_one_folder(
        mnist_root, cache_dir, tmp_path, "--backend", "ray", "--workers", "1", env=_ray_env(tmp_path)
    )


@pytest.mark.slow
@pytest.mark.ray
def test_a_killed_run_resumes_without_repeating_a_recipe_on_ray(
    mnist_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    _killed_and_resumed(mnist_root, cache_dir, tmp_path, "--backend", "ray", "--workers", "1", env=_ray_env(tmp_path))
