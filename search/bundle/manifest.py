"""What `--verify` proves before it reads anything: the bundle's files are exactly the ones its manifest lists.

A bundle is a folder from outside (a colleague's, a download), so every name in it is data:
- every manifest name must be a relative path that resolves inside the bundle (no `..`, no absolute path, no
  symlink out of it);
- every file present must be listed (a file swapped in and dropped from the manifest is found);
- every listed file must match its sha256; the files every bundle has, and the file it deploys, must be listed;
- only then is anything parsed (metrics.json, policy.json), and each failure is one line.
What this proves is integrity against accidents (a truncated copy, an edited file, a stale export). It does not
prove authenticity: the manifest is unsigned, so whoever can edit a file can rewrite its checksum too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from pathlib import PurePosixPath
from typing import Any

MANIFEST = "manifest.json"
IGNORED = ("__pycache__",)  # written by Python when a bundle's script imports a sibling module


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def inside(out: Path, name: object) -> Path | None:
    """The path a manifest name stands for, or None when it is not a plain relative path inside `out`."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        return None
    pure = PurePosixPath(name)
    if pure.is_absolute() or any(part in ("", ".", "..") for part in name.split("/")):
        return None
    path = out.joinpath(*pure.parts)
    return path if path.resolve().is_relative_to(out.resolve()) else None


def present(out: Path) -> list[str]:
    """Every file under `out` (symlinks included, not followed) but the manifest, as manifest names."""
    names = []
    for path in sorted(out.rglob("*")):
        if any(part in IGNORED for part in path.relative_to(out).parts):
            continue
        if (path.is_file() or path.is_symlink()) and path.relative_to(out).as_posix() != MANIFEST:
            names.append(path.relative_to(out).as_posix())
    return names


def read_json(out: Path, name: str) -> tuple[Any, list[str]]:
    """A JSON file of the bundle, or None and a one-line problem."""
    try:
        return json.loads((out / name).read_text()), []
    except FileNotFoundError:
        return None, [f"{name}: missing from {out}"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return None, [f"{name}: unreadable ({str(error).splitlines()[0] if str(error) else type(error).__name__})"]


def listed_files(out: Path) -> tuple[dict[str, str] | None, list[str]]:
    """The manifest's file table, checked for shape; None and the problem when there is none."""
    found, problems = read_json(out, MANIFEST)
    if found is None:
        return None, problems
    files = found.get("files") if isinstance(found, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        return None, [f"{MANIFEST}: has no 'files' table of name -> sha256"]
    return files, []


def check_manifest(out: Path, required: Iterable[str] = (), bundle_format: int | None = None) -> list[str]:
    """Integrity problems of the bundle at `out` (empty: none), one line each, before any file is parsed. With
    `bundle_format`, a bundle written in an older format is named as such (its file list differs)."""
    out = Path(out)
    files, problems = listed_files(out)
    if files is None:
        return problems
    written = read_json(out, MANIFEST)[0].get("bundle_format")
    if bundle_format is not None and written != bundle_format:
        return [
            f"{MANIFEST}: bundle format {written!r}, this version writes and verifies format {bundle_format}; "
            "re-export the bundle with this version"
        ]
    problems += [f"{name}: not listed in {MANIFEST}" for name in required if name not in files]
    for name, digest in sorted(files.items()):
        path = inside(out, name)
        if path is None:
            problems.append(f"{name!r}: listed in {MANIFEST} but not a plain path inside the bundle; refused")
        elif not path.is_file():
            problems.append(f"{name}: missing (listed in {MANIFEST})")
        elif sha256(path) != digest:
            problems.append(f"{name}: sha256 differs from {MANIFEST} (the file changed after the bundle was written)")
    problems += [
        f"{name!r}: present but not listed in {MANIFEST} (not part of the bundle as written; remove it or re-export)"
        for name in present(out)
        if name not in files
    ]
    return problems


def check_named(out: Path, source: str, names: Iterable[object]) -> list[str]:
    """Files that a verified JSON file of the bundle (`source`) names, e.g. the file it deploys: each must be a listed
    file inside the bundle. Call only after `check_manifest` found nothing."""
    files, problems = listed_files(Path(out))
    if files is None:
        return problems
    return [
        f"{source} names {name!r}, which is not a file listed in {MANIFEST}; the deployed file is required"
        for name in names
        if inside(Path(out), name) is None or name not in files
    ]


def check_deployed(out: Path, source: str = "metrics.json", key: str = "deployed_file") -> list[str]:
    """The file a verified bundle deploys (`key` of `source`) must be listed: a bundle whose deployed file was
    dropped from the manifest (or swapped for another) does not verify."""
    record, problems = read_json(Path(out), source)
    if record is None:
        return problems
    return check_named(out, source, [record.get(key) if isinstance(record, dict) else None])
