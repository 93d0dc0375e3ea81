"""Running the tool's commands as a user does, for the tests (imported by conftest and test modules)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def search_cli(*args: str, env: dict | None = None, timeout: float = 600, module: str = "search.run"
               ) -> subprocess.CompletedProcess:
    """`python -m search.run ...` (or another module) as a user runs it, one thread per process."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                                                **(env or {})})


def study_args(mnist_root: Path, out: Path, cache: Path, *extra: str, study: str = "mlp_mnist") -> list[str]:
    return ["--study", study, "--profile", "smoke", "--data-root", str(mnist_root), "--out", str(out),
            "--cache-dir", str(cache), "--no-progress", *extra]
