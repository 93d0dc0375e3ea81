"""`--verify`'s integrity checks on bundles crafted the way an attacker or an accident would make them.

The bundle here has every file a bundle lists, with stand-in contents: what is checked is the manifest against
the folder (containment, unlisted files, checksums, the deployed file), which never opens a model. Fast tier.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from search import export
from search.bundle.manifest import sha256
from search.bundle.writer import FLOAT_FILE
from search.bundle.writer import QUANTIZED_FILE
from search.bundle.writer import REQUIRED
from search.bundle.writer import manifest
from search.bundle.writer import verify_bundle


def _sign(out: Path) -> None:
    (out / "manifest.json").write_text(json.dumps(manifest(out)))


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    for name in (*REQUIRED, QUANTIZED_FILE):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(f"stand-in for {name}\n")
    (out / "metrics.json").write_text(json.dumps({"deployed_file": QUANTIZED_FILE}))
    _sign(out)
    assert verify_bundle(out) == []
    return out


def _listed(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _write_manifest(out: Path, files: dict[str, str]) -> None:
    found = _listed(out)
    found["files"] = files
    (out / "manifest.json").write_text(json.dumps(found))


@pytest.mark.parametrize("name", ["../outside.txt", "/tmp/outside.txt", "calibration/../../outside.txt"])
def test_a_manifest_name_outside_the_bundle_is_refused(bundle: Path, name: str) -> None:
    """An entry with the right checksum of a file outside the folder: once read and passed."""
    outside = bundle.parent / "outside.txt"
    outside.write_text("a file next to the bundle\n")
    if name.startswith("/"):
        name = str(outside)
    _write_manifest(bundle, {**_listed(bundle)["files"], name: sha256(outside)})
    problems = verify_bundle(bundle)
    assert problems == [f"{name!r}: listed in manifest.json but not a plain path inside the bundle; refused"]


def test_a_symlink_out_of_the_bundle_is_refused(bundle: Path) -> None:
    outside = bundle.parent / "secret.txt"
    outside.write_text("not part of the bundle\n")
    (bundle / "rpi" / "extra.txt").symlink_to(outside)
    _write_manifest(bundle, {**_listed(bundle)["files"], "rpi/extra.txt": sha256(outside)})
    assert verify_bundle(bundle) == [
        "'rpi/extra.txt': listed in manifest.json but not a plain path inside the bundle; refused"
    ]


def test_an_unlisted_file_fails(bundle: Path) -> None:
    (bundle / "zcu104" / "notes.txt").write_text("added after export\n")
    assert verify_bundle(bundle) == [
        "'zcu104/notes.txt': present but not listed in manifest.json (not part of the "
        "bundle as written; remove it or re-export)"
    ]
    (bundle / "zcu104" / "notes.txt").unlink()
    (bundle / "zcu104" / "__pycache__").mkdir()  # what running the bundle's quantize.py leaves: not a failure
    (bundle / "zcu104" / "__pycache__" / "float_model.cpython-311.pyc").write_bytes(b"\x00")
    assert verify_bundle(bundle) == []


def test_a_deployed_file_swapped_and_dropped_from_the_manifest_fails(bundle: Path) -> None:
    """The int8 file replaced by the float one and removed from the manifest: once verified."""
    shutil.copyfile(bundle / FLOAT_FILE, bundle / QUANTIZED_FILE)
    files = {k: v for k, v in _listed(bundle)["files"].items() if k != QUANTIZED_FILE}
    _write_manifest(bundle, files)
    assert verify_bundle(bundle) == [
        f"{QUANTIZED_FILE!r}: present but not listed in manifest.json (not part of the "
        "bundle as written; remove it or re-export)"
    ]
    (bundle / QUANTIZED_FILE).unlink()  # gone altogether: metrics.json still deploys it
    assert verify_bundle(bundle) == [
        f"metrics.json names {QUANTIZED_FILE!r}, which is not a file listed in "
        "manifest.json; the deployed file is required"
    ]


def test_a_corrupt_metrics_json_is_a_checksum_failure_in_one_line(bundle: Path, capsys: pytest.CaptureFixture) -> None:
    (bundle / "metrics.json").write_bytes(b'{"deployed_file": "model_int8.onnx", \xff truncated')
    assert export.main(["--verify", str(bundle)]) == export.EXIT_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "FAILED: metrics.json: sha256 differs from manifest.json (the file changed after the bundle was written)"
    ]


@pytest.mark.parametrize("manifest_text", ["{broken", '{"files": ["model.pt"]}', '{"files": {"model.pt": 3}}'])
def test_a_broken_manifest_fails_in_one_line(bundle: Path, manifest_text: str, capsys: pytest.CaptureFixture) -> None:
    (bundle / "manifest.json").write_text(manifest_text)
    assert export.main(["--verify", str(bundle)]) == export.EXIT_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("FAILED: manifest.json: "), err


def test_a_folder_that_is_no_bundle_fails_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert export.main(["--verify", str(tmp_path)]) == export.EXIT_USAGE
    assert capsys.readouterr().err.count("\n") == 1


def test_a_bundle_of_an_older_format_is_named_as_such(bundle: Path) -> None:
    """Format 2 pickled zcu104/model_float.pt: its file list differs, and the message says to re-export."""
    found = _listed(bundle)
    found["bundle_format"] = 2
    (bundle / "manifest.json").write_text(json.dumps(found))
    assert verify_bundle(bundle) == [
        "manifest.json: bundle format 2, this version writes and verifies format 3; "
        "re-export the bundle with this version"
    ]
