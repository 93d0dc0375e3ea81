"""Which of the user's own code this process may run: names read from files are data until the user says otherwise.

Bundles, run folders and measurement tables travel between people, and each of them can name a network. A
registry name, `torchvision:<name>` or an ONNX file is data: building it runs only this tool's code. A
`package.module:factory` name is an import of arbitrary code (`os:system` is one), so it is honoured only where
the user asked for their own code:
- their own study file (`search.run --study`, `search.export --study`): the factory, `[teacher] code` folder and
  `allow_pickle` checkpoint it names;
- `--code DIR`: any factory whose top-level package lives in DIR (looked for there, nothing imported);
- `trust_code=True` in the Python API.
Everything else (a run folder's `config.json`, a bundle's `model.pt` or `metrics.json`, a CSV) gets a one-line
`UntrustedCode` error that says how to opt in. The grants are per process; a Ray driver ships them to its
workers (`Grants`, `search.pipeline.shipment`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from spaces.validated import ConfigError

HOW = (
    "name it in your own study file (--study FILE), pass --code DIR (the folder that holds the package), or "
    "trust_code=True in the Python API"
)


class UntrustedCode(ConfigError, KeyError):
    """A file names code to import or unpickle, and the user did not opt in; the message says how to."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Grants:
    """What this process may import or unpickle: factory names, code folders (resolved), pickle checkpoints."""

    factories: frozenset[str] = frozenset()
    folders: frozenset[str] = frozenset()
    pickles: frozenset[str] = frozenset()


_granted = Grants()


def grants() -> Grants:
    return _granted


def grant(
    *,
    factories: tuple[str, ...] = (),
    folders: tuple[str, ...] = (),
    pickles: tuple[str, ...] = (),
    also: Grants | None = None,
) -> None:
    """Add to what this process trusts (never removes: a grant is the user's word for the whole process)."""
    global _granted
    more = also or Grants()
    _granted = Grants(
        factories=_granted.factories | more.factories | {f.partition("{")[0] for f in factories if f},
        folders=_granted.folders | more.folders | {str(Path(d).resolve()) for d in folders if d},
        pickles=_granted.pickles | more.pickles | {str(Path(p).resolve()) for p in pickles if p},
    )


def _inside(path: Path, folder: str) -> bool:
    return path.resolve().is_relative_to(folder)


def _holds(folder: str, top: str) -> bool:
    """Whether the trusted `folder` holds the top-level package or module `top` (looked at, nothing imported); a
    module of that name imported already must have come from there."""
    base = Path(folder)
    if not ((base / top).is_dir() or (base / f"{top}.py").is_file()):
        return False
    loaded = sys.modules.get(top)
    if loaded is None:
        return True
    where = getattr(loaded, "__file__", None) or next(iter(getattr(loaded, "__path__", None) or []), "")
    return bool(where) and _inside(Path(where), folder)


def check_factory(target: str) -> None:
    """Raise `UntrustedCode` unless the user opted in to the factory `package.module:callable`."""
    if target in _granted.factories:
        return
    parts = target.partition(":")[0].split(".")
    if all(p.isidentifier() for p in parts) and any(_holds(folder, parts[0]) for folder in _granted.folders):
        return
    raise UntrustedCode(
        f"architecture {target!r} names Python code to import, and names read from files are data; "
        f"if it is your own code, {HOW}"
    )


def check_folder(folder: str | Path) -> None:
    """Raise `UntrustedCode` unless `folder` (a `[teacher] code` folder) is one the user trusted."""
    resolved = Path(folder).resolve()
    if not any(resolved == Path(f) for f in _granted.folders):
        raise UntrustedCode(
            f"code folder {folder} is named by a file, not by you; pass --code {folder} if it "
            "holds your own package (or name it in your own study file)"
        )


def pickle_allowed(path: str | Path) -> bool:
    """Whether the user's own study file (or trust_code=True) allowed unpickling this checkpoint."""
    return str(Path(path).resolve()) in _granted.pickles
