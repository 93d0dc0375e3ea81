"""A real two-node Ray cluster on this machine that shares nothing but Ray.

The head and the worker node are separate `ray start` processes, each with its own temp folder, one CPU and its
own HOME; neither has a data root, a teacher cache or this checkout on its path. The driver (`search.run
--address`) loads the data and the teacher and ships them, with the code, through Ray.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.cli_helpers import search_cli
from tests.cli_helpers import study_args
from tests.search.test_search_engine import variant

RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bare_env(home: Path) -> dict[str, str]:
    """A node's environment: its own HOME, no data root, nothing of this checkout on PYTHONPATH."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
    return {**keep, "HOME": str(home), "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive_nodes(address: str) -> int:
    code = f"import ray; ray.init(address={address!r}, log_to_driver=False); " \
           "print(sum(n['Alive'] for n in ray.nodes())); ray.shutdown()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    try:
        return int(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return 0


def _stop(proc: subprocess.Popen, temp: Path) -> None:
    """`ray start --block` stops its node when signalled; whatever outlives it under our temp folder is killed."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    left = subprocess.run(["pgrep", "-f", str(temp)], capture_output=True, text=True).stdout.split()
    for pid in left:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """(address, head HOME, worker HOME) of a live two-node cluster, stopped afterwards."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    short = Path(f"/tmp/rc{os.getpid()}")  # Ray's socket paths must stay under 107 characters
    homes = {name: tmp_path / f"{name}_home" for name in ("head", "worker")}
    for home in homes.values():
        home.mkdir()
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--num-cpus", "1", "--port", str(port), "--temp-dir", f"{short}h",
         "--include-dashboard", "false", "--disable-usage-stats"],
        cwd=homes["head"], env=_bare_env(homes["head"]), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [(head, Path(f"{short}h"))]
    try:
        deadline = time.monotonic() + 120
        while not _listening(port) or _alive_nodes(address) < 1:
            assert time.monotonic() < deadline and head.poll() is None, "the head node did not start"
            time.sleep(1)
        worker = subprocess.Popen(
            [RAY, "start", "--address", address, "--block", "--num-cpus", "1", "--temp-dir", f"{short}w",
             "--disable-usage-stats"],
            cwd=homes["worker"], env=_bare_env(homes["worker"]), start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append((worker, Path(f"{short}w")))
        while _alive_nodes(address) < 2:
            assert time.monotonic() < deadline and worker.poll() is None, "the worker node did not join"
            time.sleep(1)
        yield address, homes["head"], homes["worker"]
    finally:
        for proc, temp in reversed(procs):
            _stop(proc, temp)


@pytest.mark.slow
@pytest.mark.ray
def test_a_two_node_cluster_finds_the_local_front_and_trains_no_teacher(
        two_nodes: tuple[str, Path, Path], mnist_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    """The smoke study on `--address` gives the local backend's front and baselines, number for number.

    The ladder promotion and 4 trials (one NSGA-II population, sampled before any result is told) make the
    recipes independent of the order in which the two nodes finish; one torch thread everywhere makes the
    training bitwise reproducible, so the comparison can be exact.
    """
    address, head_home, worker_home = two_nodes
    study = variant(tmp_path, "[profiles.smoke.search]\ntrials = 8",
                    '[profiles.smoke.search]\npromotion = "ladder"\ntrials = 8')
    local = search_cli(*study_args(mnist_root, tmp_path / "local", cache_dir, "--trials", "4", study=str(study)))
    assert local.returncode == 0, local.stderr[-3000:]
    # The driver runs outside the checkout: Ray puts the driver's working folder on every worker's sys.path,
    # and on one machine that folder would hand the nodes this checkout's code by a path that happens to match.
    driver = tmp_path / "driver"
    driver.mkdir()
    args = study_args(mnist_root.resolve(), tmp_path / "cluster", cache_dir.resolve(), "--trials", "4", "--backend",
                      "ray", "--address", address, study=str(study))
    on_cluster = subprocess.run([sys.executable, "-m", "search.run", *args], cwd=driver, capture_output=True,
                                text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert on_cluster.returncode == 0, on_cluster.stderr[-3000:]

    cluster = json.loads((tmp_path / "cluster" / "cluster.json").read_text())
    assert cluster["nodes"] == 2, cluster  # both nodes ran tasks
    assert all("runtime_resources" in code for code in cluster["code_per_node"].values()), cluster  # code via Ray
    for home in (head_home, worker_home):  # no node trained (or cached) a teacher, nor found one
        assert not list(home.rglob("teacher.pt")) and not list(home.rglob("teacher.json"))
    assert list((tmp_path / "cluster" / "checkpoints").glob("*.pt"))  # F3 checkpoints came back to the driver

    for table in ("pareto.csv", "baselines.csv"):
        here, there = pd.read_csv(tmp_path / "local" / table), pd.read_csv(tmp_path / "cluster" / table)
        assert here["recipe_hash"].tolist() == there["recipe_hash"].tolist(), table
        for column in ("f2_accuracy", "f3_accuracy", "f3_test_accuracy", "f3_latency_zcu104"):
            if column in here:
                assert here[column].tolist() == pytest.approx(there[column].tolist(), abs=1e-9), (table, column)
