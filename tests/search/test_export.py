"""`python -m search.export` on a finished smoke study: the knee exported and verified, and its error paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.cli_helpers import search_cli
from tests.cli_helpers import study_args


def export_cli(*args: str) -> object:
    return search_cli(*args, module="search.export")


@pytest.fixture(scope="module")
def knee_bundle(mlp_study: tuple[Path, str], mnist_root: Path, cache_dir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    run, _ = mlp_study
    out = tmp_path_factory.mktemp("bundle") / "knee"
    result = export_cli("--study", "mlp_mnist", "--profile", "smoke", "--run", str(run), "--pick", "knee",
                        "--out", str(out), "--data-root", str(mnist_root), "--cache-dir", str(cache_dir))
    assert result.returncode == 0, result.stderr
    return run, out


def test_knee_is_exported_and_verifies(knee_bundle: tuple[Path, Path], mnist_root: Path) -> None:
    run, out = knee_bundle
    front = pd.read_csv(run / "pareto.csv")
    knee = front[front["knee"]].iloc[0]
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe == json.loads(knee["recipe_json"])
    metrics = json.loads((out / "metrics.json").read_text())
    acc = metrics["accuracy"]
    assert acc["split"] == "test"
    # The F3 checkpoint is the model the study reported: the same test accuracy on the same images, and the
    # file the board runs (the searched quantization itself, or the float network) within 0.5 points of it.
    assert acc["pytorch"] == pytest.approx(knee["f3_test_accuracy"], abs=0.01)
    assert acc["searched_f3_test"] == pytest.approx(knee["f3_test_accuracy"], abs=0.01)
    deployed = {"model_int8.onnx": "onnx_int8", "model.onnx": "onnx_fp32"}[metrics["deployed_file"]]
    assert abs(acc[deployed] - knee["f3_test_accuracy"]) <= 0.5
    assert acc["agreement_with_pytorch"][deployed]["share"] >= 0.99  # the same predictions, image by image
    if deployed == "onnx_int8":  # what onnxruntime executes is what the search priced, layer by layer
        executes = metrics["deployment"]["onnxruntime_executes"]
        assert executes["int8_share"] == 1.0 and executes["priced_as_executed"] == {"rpi4": True}, executes
    assert set(metrics["predicted"]) == {"zcu104", "rpi4"}
    for name in ("model.pt", "model.onnx", metrics["deployed_file"], "manifest.json", "pareto.png", "rpi/run_onnx.py"):
        assert (out / name).exists(), name
    result = export_cli("--verify", str(out), "--data-root", str(mnist_root))
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stdout


def test_verify_names_a_corrupted_file(knee_bundle: tuple[Path, Path], mnist_root: Path, tmp_path: Path) -> None:
    _, out = knee_bundle
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    deployed = json.loads((copy / "metrics.json").read_text())["deployed_file"]
    data = bytearray((copy / deployed).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / deployed).write_bytes(bytes(data))
    result = export_cli("--verify", str(copy), "--data-root", str(mnist_root))
    assert result.returncode == 1
    assert deployed in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--trial", "999"], "unknown trial 999: no completed trial has that number"),
    (["--pick", "max accuracy with size_mb <= 0.000001"], "no front recipe satisfies size_mb <= 1e-06"),
    (["--pick", "fastest please"], "expected 'knee', or 'max|min METRIC"),
])
def test_bad_choice_fails_in_one_line(mlp_study: tuple[Path, str], args: list[str], message: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from search.export import main

    run, _ = mlp_study
    assert main(["--study", "mlp_mnist", "--profile", "smoke", "--run", str(run), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_empty_study_fails_clearly(mnist_root: Path, cache_dir: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    missing = export_cli("--study", "mlp_mnist", "--profile", "smoke", "--run", str(tmp_path / "none"))
    assert missing.returncode == 2 and "holds no finished study" in missing.stderr
    text = (Path(__file__).resolve().parents[2] / "studies" / "mlp_mnist.toml").read_text()
    study = tmp_path / "tight.toml"
    study.write_text(text.replace('baselines = "survey_quantization"',
                                  'baselines = "none"\nconstraints = ["size_mb <= 0.0001"]'))
    run = tmp_path / "run"
    from search.export import main as export_main
    from search.run import main as run_main

    assert run_main(study_args(mnist_root, run, cache_dir, "--trials", "2", study=str(study))) == 0
    capsys.readouterr()
    assert export_main(["--study", str(study), "--profile", "smoke", "--run", str(run)]) == 2
    err = capsys.readouterr().err  # every trial was told to the sampler as infeasible at F0: no front to export
    assert "empty front: nothing to export" in err and len(err.strip().splitlines()) == 1
