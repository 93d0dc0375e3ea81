"""Files crafted the way an attacker would craft them: a bundle, a run folder, a measurement table, a checkpoint.

Each names a shell command (`touch MARKER`) where the tool reads a network, a code folder or a pickle. None of them
may run it: the marker file must not appear, and the command must exit non-zero with one line that names the
problem and how to opt in. No dataset is read (fast tier); the commands run through their `main` in this process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from evaluators.teacher.checkpoint import CheckpointError
from evaluators.teacher.checkpoint import read_checkpoint
from hardware_models.calibration import fit as calibrate
from search import export
from search.api import RunOptions
from search.api import Study
from search.bundle.float_model import write_float_model
from search.bundle.model_file import BundleModelError
from search.bundle.model_file import load_model
from search.bundle.model_file import save_model
from search.bundle.run_checkpoint import load_f3
from search.config import ConfigError
from search.config import check_study_code
from search.config import config_as_json
from search.config import from_json
from search.config import load_study
from spaces.models.architectures import create_model
from spaces.models.code_trust import UntrustedCode
from spaces.models.user_models import add_code_path
from spaces.recipe import Recipe

SCRIPTS = Path(__file__).resolve().parents[2] / "search" / "bundle" / "scripts"


class Payload:
    """A pickle that runs `touch MARKER` when unpickled (what a load with weights_only off would execute)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def factory(marker: Path) -> tuple[str, dict[str, str]]:
    """A `module:callable` name with keyword arguments, as a bundle or config.json would carry it."""
    return "os:system", {"command": f"touch {marker}"}


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


# --- a bundle's model.pt -----------------------------------------------------------------------------------------


def test_a_bundle_naming_a_shell_command_as_its_network_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    model = create_model("mlp", num_classes=10, in_channels=1, resolution=28)
    save_model(
        tmp_path / "model.pt",
        model,
        Recipe(),
        network="mlp",
        input_shape=(1, 28, 28),
        num_classes=10,
        dataset="mnist",
        mean=(0.5,),
        std=(0.5,),
    )
    load_model(tmp_path / "model.pt")  # the honest file loads
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    name, kwargs = factory(marker)
    saved["network"] = name + json.dumps(kwargs)
    torch.save(saved, tmp_path / "model.pt")
    with pytest.raises(BundleModelError, match="names Python code to import.*trust_code=True") as err:
        load_model(tmp_path / "model.pt")
    assert "\n" not in str(err.value) and not marker.exists()


# --- a run folder ------------------------------------------------------------------------------------------------


def _run_folder(tmp_path: Path, **teacher: object) -> Path:
    """A run folder whose config.json is the MNIST study's, with the teacher fields replaced."""
    raw = config_as_json(load_study("mlp_mnist", "smoke"))
    raw["teacher"].update(teacher)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(raw))
    return run


def test_a_run_folder_naming_a_shell_command_as_its_teacher_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "MARKER"
    name, kwargs = factory(marker)
    run = _run_folder(tmp_path, arch=name, kwargs=kwargs)
    (tmp_path / "code").mkdir()
    for extra in ([], ["--code", str(tmp_path / "code")]):  # --code trusts DIR's packages, and os is not one
        assert export.main(["--run", str(run), *extra]) == export.EXIT_USAGE
        line = one_line(capsys.readouterr().err)
        assert "'os:system' names Python code" in line and "--code DIR" in line
    assert not marker.exists()


def test_a_code_folder_shipped_in_a_run_folder_is_not_imported(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The attacker ships the package too: config.json names it and its folder; its `__init__` would touch."""
    marker = tmp_path / "MARKER"
    package = tmp_path / "evil" / "evilpkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"import os\nos.system('touch {marker}')\ndef build(**k):\n    pass\n")
    run = _run_folder(tmp_path, arch="evilpkg:build", code=str(tmp_path / "evil"))
    assert export.main(["--run", str(run)]) == export.EXIT_USAGE
    assert "'evilpkg:build' names Python code" in one_line(capsys.readouterr().err)
    config = from_json(json.loads((run / "config.json").read_text()), "config.json")
    with pytest.raises(UntrustedCode):
        Study(config, RunOptions(out=str(tmp_path / "out")))  # the Python API refuses it the same way
    assert not marker.exists()


def test_allow_pickle_read_from_a_run_folder_unpickles_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    torch.save({"model": Payload(marker)}, tmp_path / "teacher.pt")
    run = _run_folder(tmp_path, arch="mlp", checkpoint=str(tmp_path / "teacher.pt"), allow_pickle=True)
    config = from_json(json.loads((run / "config.json").read_text()), "config.json")
    with pytest.raises(ConfigError, match="allow_pickle .* was read from a file that is data"):
        check_study_code(config)
    with pytest.raises(CheckpointError, match="allow_pickle was not set by you") as err:
        read_checkpoint(tmp_path / "teacher.pt", allow_pickle=True)
    assert "\n" not in str(err.value) and not marker.exists()


def test_a_pickled_f3_checkpoint_is_refused_with_the_fix(tmp_path: Path) -> None:
    """A run folder from before checkpoints were tensors only, or one crafted to run a command."""
    marker = tmp_path / "MARKER"
    recipe = Recipe()
    (tmp_path / "checkpoints").mkdir()
    torch.save({"recipe": recipe.to_json(), "model": Payload(marker)}, tmp_path / "checkpoints" / f"{recipe.hash()}.pt")
    with pytest.raises(BundleModelError, match="re-run the study .*or delete .* and re-export") as err:
        load_f3(tmp_path, recipe, "mlp")
    assert "\n" not in str(err.value) and not marker.exists()
    assert load_f3(tmp_path, Recipe(student="resnet18"), "mlp") is None  # none saved: the caller rebuilds it


def test_the_users_own_factory_needs_their_study_file_or_trust_code(tmp_path: Path) -> None:
    run = _run_folder(tmp_path, arch="tests.user_data:build_tiny")
    config = from_json(json.loads((run / "config.json").read_text()), "config.json")
    with pytest.raises(UntrustedCode, match="trust_code=True"):
        Study(config, RunOptions(out=str(tmp_path / "out")))
    Study(config, RunOptions(out=str(tmp_path / "out")), trust_code=True)  # the user's word
    check_study_code(config)  # granted for the rest of this process


# --- the ZCU104 hand-off --------------------------------------------------------------------------------------


def test_the_zcu104_model_loads_without_unpickling_and_a_crafted_one_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    folder = tmp_path / "zcu104"
    folder.mkdir()
    net = create_model("small_cnn", num_classes=10, in_channels=3, resolution=32).eval()
    assert write_float_model(net, (3, 32, 32), folder) is None
    shutil.copyfile(SCRIPTS / "quantize.py", folder / "quantize.py")
    spec = importlib.util.spec_from_file_location("quantize_under_test", folder / "quantize.py")
    quantize = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quantize)
    loaded = quantize.load_model(folder / "model_float.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))
    torch.save(Payload(marker), folder / "model_float.pt")
    with pytest.raises(pickle.UnpicklingError):
        quantize.load_model(folder / "model_float.pt")
    assert not marker.exists()


# --- a measurement table ---------------------------------------------------------------------------------------


def _calibrate(table: Path, capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as exit_:
        calibrate.main(["--target", "rpi4", "--measurements", str(table), "--no-loo"])
    assert exit_.value.code == 2
    return one_line(capsys.readouterr().err)


def test_a_measurement_table_naming_a_shell_command_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "MARKER"
    name, kwargs = factory(marker)
    spec = f"arch:{name}{json.dumps(kwargs)}".replace('"', '""')
    rows = f'"{spec}",3x32x32,1.0\ntorchvision:resnet18,3x224x224,9\n'
    (tmp_path / "evil.csv").write_text(f"spec,input,latency_ms\n{rows}")
    assert "is not a registered network" in _calibrate(tmp_path / "evil.csv", capsys)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"spec,input,latency_ms\ntorchvision:resnet18,3x224x224,inf\n",
            r"row 1 \(torchvision:resnet18\): latency_ms = "
            r"'inf' is not a finite number",
        ),
        (b"spec,input,latency_ms\ntorchvision:resnet18,3x224x224,NaN\n", "row 1 .*'NaN' is not a finite number"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not a UTF-8 text CSV"),
        (b"spec,input,latency_ms\x00\ntorchvision:resnet18,3x224x224,3\n", "holds NUL bytes"),
        (b"spec,input,latency_ms\nonnx:../outside.onnx,3x32x32,1.0\n", "names a file outside the table's folder"),
        (b"spec,input,latency_ms\nonnx:/etc/model.onnx,3x32x32,1.0\n", "names a file outside the table's folder"),
    ],
    ids=["inf", "nan", "binary", "nul", "onnx-dotdot", "onnx-absolute"],
)
def test_bad_measurement_tables_fail_in_one_line(
    content: bytes, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "table").mkdir()
    (tmp_path / "table" / "t.csv").write_bytes(content)
    assert re.search(message, _calibrate(tmp_path / "table" / "t.csv", capsys))


def test_an_unreadable_table_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "folder.csv").mkdir()  # a folder where the table should be: unreadable as a file, even for root
    assert "cannot read the measurement table" in _calibrate(tmp_path / "folder.csv", capsys)


def test_a_run_folder_naming_the_users_own_package_exports_with_code_dir(tmp_path: Path) -> None:
    """The honest case: the user's run folder names their factory; `--code DIR` (their folder) lets it import."""
    package = tmp_path / "code" / "acme_own"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text("from tests.user_data import build_tiny as make_net\n")
    run = _run_folder(tmp_path, arch="acme_own.nets:make_net", code=str(tmp_path / "elsewhere"))
    without = export.run_config(export.parse_args(["--run", str(run)]))
    with pytest.raises(UntrustedCode, match="--code DIR"):
        check_study_code(without)
    config = export.run_config(export.parse_args(["--run", str(run), "--code", str(tmp_path / "code")]))
    assert config.teacher.code == str((tmp_path / "code").resolve())  # --code replaces the folder config.json named
    check_study_code(config)
    add_code_path(config.teacher.code)  # as the teacher's build does
    assert create_model(config.teacher.network, num_classes=3, in_channels=3, resolution=32) is not None


def test_a_trials_table_naming_a_shell_command_as_a_student_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "MARKER"
    name, kwargs = factory(marker)
    run = _run_folder(tmp_path)
    recipe = json.loads(Recipe().to_json()) | {"student": name + json.dumps(kwargs)}
    pd.DataFrame([{"trial": 0, "state": "COMPLETE", "recipe_json": json.dumps(recipe)}]).to_csv(run / "trials.csv")
    (run / "pareto.csv").write_text("\n")
    assert export.main(["--run", str(run), "--trial", "0"]) == export.EXIT_USAGE
    line = one_line(capsys.readouterr().err)
    assert "trial 0: its recipe names student 'os:system" in line and "not a registered network" in line
    assert not marker.exists()
