"""A user's whole path, on real CIFAR-10 images written as an ImageFolder: their trained checkpoint and their own
model class, compressed from the command line and from Python, exported and verified."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.cli_helpers import search_cli
from tests.user_data import TinyNet
from tests.user_data import train_quickly
from tests.user_data import write_cifar_imagefolder

# Small budgets: the point is the user's path end to end, not the accuracy it reaches.
TINY_SEARCH = """
[space]
students = ["teacher"]
distill_kinds = ["none"]
prune_kinds = ["none", "structured", "unstructured"]
importances = ["l1"]
schedules = ["oneshot"]
quant_kinds = ["ptq", "qat"]
bit_choices = [4, 8]
candidates = 2

[search]
trials = 4
population = 2
baselines = "survey_quantization"
final_max = 2

[hardware]
targets = ["zcu104", "rpi4"]

[fidelity.f1]
val_images = 60
[fidelity.f1.budget]
calib_images = 64
bn_images = 64
score_images = 32
max_candidates = 2
[fidelity.f2]
val_images = 60
[fidelity.f2.budget]
finetune_steps = 4
calib_images = 64
bn_images = 64
score_images = 32
max_candidates = 2
[fidelity.f3]
val_images = 0
[fidelity.f3.budget]
finetune_steps = 8
calib_images = 64
bn_images = 64
score_images = 32
max_candidates = 2
"""


@pytest.fixture(scope="module")
def workspace(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a user has: images, a package with their model class, and the checkpoint they trained."""
    work = tmp_path_factory.mktemp("user")
    write_cifar_imagefolder(work / "images", cifar_root, per_class=100, test_per_class=30)
    package = work / "code" / "acme_vision"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(textwrap.dedent('''
        from torch import nn


        def make_net(num_classes=3):
            return nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))
    '''))
    import sys

    sys.path.insert(0, str(work / "code"))
    from acme_vision.nets import make_net

    model = make_net()
    torch.save(train_quickly(model, work / "images", 32, steps=40).state_dict(), work / "acme.pt")
    (work / "my_study.toml").write_text(textwrap.dedent('''
        [study]
        name = "acme"

        [data]
        dataset = "imagefolder"
        root = "images"
        resolution = 32

        [teacher]
        arch = "acme_vision.nets:make_net"
        checkpoint = "acme.pt"
        code = "code"
    ''') + TINY_SEARCH)
    return work


def test_cli_study_from_checkpoint_and_imagefolder_to_a_verified_bundle(workspace: Path) -> None:
    run, bundle = workspace / "run", workspace / "bundle"
    result = search_cli("--study", str(workspace / "my_study.toml"), "--out", str(run), "--cache-dir",
                        str(workspace / "cache"), "--no-progress")  # no --profile: the study has none
    assert result.returncode == 0, result.stderr
    baseline = json.loads((run / "baseline.json").read_text())
    teacher = baseline["teacher"]
    assert teacher["checkpoint"] == str(workspace / "acme.pt") and "train_steps" not in teacher
    assert 40 < teacher["val_accuracy"] <= 100 and 40 < teacher["test_accuracy"] <= 100
    front = pd.read_csv(run / "pareto.csv")
    assert len(front) >= 1 and front["knee"].sum() == 1 and front["f3_test_accuracy"].notna().all()
    assert "profile base" in result.stdout or "(profile base)" in result.stdout
    # The run folder describes itself: export needs only --run.
    result = search_cli("--run", str(run), "--pick", "knee", "--out", str(bundle), "--cache-dir",
                        str(workspace / "cache"), module="search.export")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((bundle / "metrics.json").read_text())
    assert metrics["num_classes"] == 3 and metrics["input_shape"] == [3, 32, 32]
    result = search_cli("--verify", str(bundle), module="search.export")
    assert result.returncode == 0, result.stderr


def test_python_api_compresses_a_model_in_hand(workspace: Path) -> None:
    from acme_vision.nets import make_net

    import search
    from evaluators.candidate import FidelityConfig
    from search.config import build

    model = make_net()
    model.load_state_dict(torch.load(workspace / "acme.pt", weights_only=True))
    import tomllib

    fidelity = build(FidelityConfig, tomllib.loads(TINY_SEARCH)["fidelity"], "fidelity")
    result = search.compress(teacher=model, data=workspace / "images", resolution=32, targets=["zcu104", "rpi4"],
                             trials=4, fidelity=fidelity, out=str(workspace / "api_run"),
                             cache_dir=str(workspace / "cache"), progress=False)
    assert isinstance(result.trials, pd.DataFrame) and len(result.trials) == 4
    assert isinstance(result.front, pd.DataFrame) and len(result.front) >= 1
    assert result.knee is not None and result.knee["f3_test_accuracy"] > 0
    assert result.plot().is_file()
    bundle = result.export(workspace / "api_bundle")
    metrics = json.loads((bundle / "metrics.json").read_text())
    assert metrics["recipe_hash"] == result.knee["recipe_hash"]
    out = search_cli("--verify", str(bundle), module="search.export")
    assert out.returncode == 0, out.stderr


def test_python_api_takes_torch_datasets(workspace: Path) -> None:
    import tomllib

    import torchvision

    import search
    from evaluators.candidate import FidelityConfig
    from search.config import build

    train = torchvision.datasets.ImageFolder(str(workspace / "images" / "train"))
    test = torchvision.datasets.ImageFolder(str(workspace / "images" / "test"))
    model = train_quickly(TinyNet(), workspace / "images", 32, steps=20)
    fidelity = build(FidelityConfig, tomllib.loads(TINY_SEARCH)["fidelity"], "fidelity")
    result = search.compress(teacher=model, train=train, test=test, trials=2, fidelity=fidelity,
                             out=str(workspace / "ds_run"), cache_dir=str(workspace / "cache"), progress=False)
    baseline = json.loads((workspace / "ds_run" / "baseline.json").read_text())
    assert baseline["teacher"]["dataset"] == "memory" and len(result.trials) == 2


def readme_block(name: str) -> str:
    """The fenced block after `<!-- readme-test: NAME -->` in the README's "Compress your own model"."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    after = text.split(f"<!-- readme-test: {name} -->", 1)[1]
    return after.split("```", 2)[1].split("\n", 1)[1]


def test_every_command_of_the_readme_section_runs(workspace: Path, tmp_path: Path) -> None:
    """The README's study file (with this file's small budgets appended, which the README tells users how to
    add), its three commands as written, and its Python snippet, in a folder laid out as the README says."""
    import os
    import shlex
    import shutil
    import subprocess
    import sys

    for name in ("images", "code", "acme.pt"):
        (shutil.copytree if (workspace / name).is_dir() else shutil.copy)(workspace / name, tmp_path / name)
    (tmp_path / "my_study.toml").write_text(readme_block("study") + TINY_SEARCH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                         str(tmp_path / "code")]),
           "EDGE_SEARCH_CACHE": str(workspace / "cache"), "OMP_NUM_THREADS": "1"}
    for line in readme_block("commands").strip().splitlines():
        argv = shlex.split(line)
        assert argv[0] == ".venv/bin/python"
        done = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{line}: {done.stderr}"
    assert "verified" in done.stdout
    done = subprocess.run([sys.executable, "-c", readme_block("python")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "front.png").is_file() and (tmp_path / "acme_bundle_py" / "metrics.json").is_file()
