"""The layers point one way and no import cycle remains: import-linter's contracts in pyproject.toml, which count
imports inside functions, and a scan for the import grimp cannot see, `importlib.import_module` of a project
module named by a literal."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("search", "spaces", "evaluators", "hardware_models", "benchmarks")


def test_the_import_contracts_hold() -> None:
    """`lint-imports` with the contracts of pyproject.toml: the layers, the loop that never imports its reporters,
    hardware_models below the tool, and no cycle at any depth."""
    result = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                             "sys.exit(lint_imports(no_cache=True, no_logo=True))"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def _literal_imports(path: Path) -> list[str]:
    """`importlib.import_module("pkg.mod")` / `__import__("pkg.mod")` calls naming a project module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call) or not node.args or not isinstance(node.args[0], ast.Constant):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        value = node.args[0].value
        if name in ("import_module", "__import__") and isinstance(value, str) and value.split(".")[0] in PACKAGES:
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: {value}")
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_project_module_is_imported_by_a_name_no_linter_sees(package: str) -> None:
    hidden = [hit for path in sorted((REPO / package).rglob("*.py")) for hit in _literal_imports(path)]
    assert not hidden, "import these at the top of the module instead: " + "; ".join(hidden)


def test_no_package_folder_keeps_more_than_20_modules() -> None:
    folders = [d for package in PACKAGES for d in [REPO / package, *(REPO / package).rglob("*")] if d.is_dir()]
    crowded = {str(d.relative_to(REPO)): n for d in folders if (n := len(list(d.glob("*.py")))) > 20}
    assert not crowded, crowded
