"""A user's whole path, on real CIFAR-10 images written as an ImageFolder: their trained checkpoint and their own
model class, compressed from the command line and from Python, exported and verified."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from spaces.models import code_trust
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
    sys.path.remove(str(work / "code"))  # the user's commands import their package from where they stand
    for name in [m for m in sys.modules if m == "acme_vision" or m.startswith("acme_vision.")]:
        del sys.modules[name]
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


REPO = Path(__file__).resolve().parents[2]
OWN_MODEL_GUIDE = "docs/guides/own-model-and-data.md"


def readme_block(name: str, doc: str = OWN_MODEL_GUIDE) -> str:
    """The fenced block after `<!-- readme-test: NAME -->` in the markdown file `doc` (relative to the repository):
    the blocks a user copies from the README and the docs, run here as written."""
    text = (REPO / doc).read_text()
    assert text.count(f"<!-- readme-test: {name} -->") == 1, f"{doc} must mark exactly one block {name!r}"
    after = text.split(f"<!-- readme-test: {name} -->", 1)[1]
    return after.split("```", 2)[1].split("\n", 1)[1]


def test_the_readme_example_is_the_guides_tested_snippet() -> None:
    """The README's ten-line Python example is the guide's snippet, which the test below runs: one text, tested."""
    assert readme_block("python", "README.md") == readme_block("python")


def test_every_command_of_the_readme_section_runs(workspace: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/guides/own-model-and-data.md, as a user follows it, in a folder laid out as it says: its study
    file (with this file's small budgets appended, which the guide tells users how to add), its three commands
    (the CLI path: checkpoint + ImageFolder -> front -> bundle -> verify) and its Python snippet (the API path).
    The commands run through their `main`, in this process, to spare the interpreter start-up of each."""
    import importlib
    import shlex
    import shutil
    import sys

    for name in ("images", "code", "acme.pt"):
        (shutil.copytree if (workspace / name).is_dir() else shutil.copy)(workspace / name, tmp_path / name)
    (tmp_path / "my_study.toml").write_text(readme_block("study") + TINY_SEARCH)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGE_SEARCH_CACHE", str(workspace / "cache"))
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    fresh = code_trust.grants()
    for line in readme_block("commands").strip().splitlines():
        argv = shlex.split(line)
        assert argv[:2] == [".venv/bin/python", "-m"], line
        monkeypatch.setattr(code_trust, "_granted", fresh)  # each command is its own process: no grant carries over
        for name in [m for m in sys.modules if m == "acme_vision" or m.startswith("acme_vision.")]:
            monkeypatch.delitem(sys.modules, name)  # nor a module it imported
        assert importlib.import_module(argv[2]).main(argv[3:]) == 0, line

    run, bundle = tmp_path / "runs" / "acme", tmp_path / "acme_bundle"
    teacher = json.loads((run / "baseline.json").read_text())["teacher"]
    assert teacher["checkpoint"] == str(tmp_path / "acme.pt") and "train_steps" not in teacher  # never trained
    assert 40 < teacher["val_accuracy"] <= 100 and 40 < teacher["test_accuracy"] <= 100
    assert json.loads((run / "config.json").read_text())["profile"] == "base"  # the study has no [profiles]
    front = pd.read_csv(run / "pareto.csv")
    assert len(front) >= 1 and front["knee"].sum() == 1 and front["f3_test_accuracy"].notna().all()
    metrics = json.loads((bundle / "metrics.json").read_text())
    assert metrics["num_classes"] == 3 and metrics["input_shape"] == [3, 32, 32]
    assert metrics["recipe_hash"] == front[front["knee"]].iloc[0]["recipe_hash"]

    namespace: dict = {}
    exec(compile(readme_block("python"), f"{OWN_MODEL_GUIDE} (Python snippet)", "exec"), namespace)  # noqa: S102
    result = namespace["result"]
    assert isinstance(result.trials, pd.DataFrame) and len(result.trials) == 6
    assert isinstance(result.front, pd.DataFrame) and len(result.front) >= 1 and result.knee is not None
    assert (tmp_path / "front.png").is_file()
    picked = json.loads((namespace["bundle"] / "metrics.json").read_text())
    assert picked["predicted"]["zcu104"]["latency_ms"] <= 5 + 1e-9
    from search.export import main as export_main

    assert export_main(["--verify", str(namespace["bundle"])]) == 0


def test_the_example_runs(cifar_root: Path, tmp_path: Path) -> None:
    """examples/compress_my_model.py end to end, with fewer images and trials than its defaults."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, str(repo / "examples" / "compress_my_model.py"), "--workdir", str(tmp_path),
                           "--data-root", str(cifar_root), "--trials", "2", "--epochs", "2",
                           "--images-per-class", "40"], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "front of" in done.stdout and (tmp_path / "bundle" / "metrics.json").is_file()
