"""Shared fixtures: the real datasets, found where the tool itself would look, and a test cache."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from evaluators.data.datasets import Dataset  # noqa: E402
from evaluators.data.datasets import candidate_roots  # noqa: E402
from evaluators.data.datasets import find_layout  # noqa: E402
from spaces.models import code_trust  # noqa: E402
from tests.cli_helpers import search_cli  # noqa: E402
from tests.cli_helpers import study_args  # noqa: E402

# pytest-xdist runs the suite on one worker per core (pyproject's addopts): each worker then gets its share of the
# cores, because two OpenMP threads per process on a shared core thrash (10-25x slower).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // WORKERS))

# Fixtures that read the real datasets or run whole studies: a test using none of them (and not marked slow) is
# in the fast tier, `pytest -m fast`, which needs no dataset and gives a contributor feedback in about a minute.
REAL_DATA = frozenset({"cifar_root", "mnist_root", "mlp_study", "cifar_folder", "workspace", "folder", "data",
                       "trained"})


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("slow") is None and not REAL_DATA & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.fast)
        # Under xdist (--dist loadgroup) a module's tests share a worker, so a module fixture (a trained bundle, a
        # finished study) is built once; every test that starts Ray shares one group, so no two Ray clusters run
        # at once (a second `ray.init()` could join the first's cluster).
        group = "ray" if item.get_closest_marker("ray") else item.module.__name__ if item.module else item.nodeid
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(autouse=True)
def _own_code_grants(monkeypatch: pytest.MonkeyPatch) -> None:
    """A grant to run the user's own code (`trust_code=True`, `--code`) lasts for the process that was given it;
    under xdist one worker runs many test modules, so each test starts from the grants it found and leaves none."""
    monkeypatch.setattr(code_trust, "_granted", code_trust.grants())


def _root_with(dataset: Dataset) -> Path:
    roots = candidate_roots(None) + [REPO / "data", REPO.parent / "shared" / "data"]
    found = find_layout(dataset, roots)
    if found is None:
        pytest.fail(f"{dataset.value} is needed by the tests: put it under one of {roots} or set EDGE_SEARCH_DATA")
    layout, folder = found
    return Path(str(folder)[: -len(layout.folder)])


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    return _root_with(Dataset.CIFAR10)


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    return _root_with(Dataset.MNIST)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One teacher cache for the whole session, so each smoke teacher is trained once per test run."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: when other processes share the 2 cores, two OpenMP threads per
    process thrash (10-25x slower). Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def mlp_study(mnist_root: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The MNIST study run once at its smoke profile (about 20 s): (run folder, what it printed)."""
    out = tmp_path_factory.mktemp("mlp_smoke")
    result = search_cli(*study_args(mnist_root, out, cache_dir))
    assert result.returncode == 0, result.stderr
    return out, result.stdout
