"""`search.teacher` and the teacher cache (issue 30): continuation, resume after kill -9, the strongest-teacher
lookup, ImageNet initialisation from the hub cache, and a run that spends nothing on a cached teacher and exports
without training one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torchvision

from evaluators.data.config import DataConfig
from evaluators.data.config import prepare_data
from evaluators.data.datasets import Dataset
from evaluators.data.datasets import file_digest
from evaluators.data.splits import SplitConfig
from evaluators.teacher.cache import Match
from evaluators.teacher.cache import strongest
from evaluators.teacher.imagenet_init import hub_files
from evaluators.teacher.imagenet_init import load_init
from evaluators.teacher.imagenet_init import resolve_init
from evaluators.teacher.prepare import TeacherConfig
from evaluators.teacher.prepare import build_teacher
from evaluators.teacher.prepare import cache_status
from evaluators.teacher.prepare import prepare_teacher
from evaluators.training.loop import TrainConfig
from search.config import load_study
from search.sizing.plan import StepTimes
from search.sizing.plan import Workload
from search.sizing.plan import plan_run
from spaces.validated import ConfigError
from tests.cli_helpers import REPO
from tests.cli_helpers import search_cli

SPLIT = SplitConfig(val_size=1000, calib_size=100, train_size=4000, seed=0)
TRAIN = TrainConfig(epochs=1, batch_size=100, optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant",
                    augment=False, precision="fp32")
STUDY = """
[study]
name = "tiny_mlp"
[data]
dataset = "mnist"
resolution = 28
[data.split]
val_size = 1000
calib_size = 100
train_size = 4000
[teacher]
arch = "mlp"
[teacher.train]
optimizer = "adam"
lr = 1e-3
weight_decay = 0.0
batch_size = 100
schedule = "onecycle"
augment = false
precision = "fp32"
"""


@pytest.fixture(scope="module")
def mnist(mnist_root: Path):
    return prepare_data(DataConfig(dataset=Dataset.MNIST, resolution=28, split=SPLIT), mnist_root,
                        allow_download=False)


def _teacher_cli(study: Path, mnist_root: Path, cache: Path, *extra: str) -> list[str]:
    return ["-m", "search.teacher", "--study", str(study), "--data-root", str(mnist_root), "--cache-dir", str(cache),
            "--no-progress", *extra]


def _entry(cache: Path) -> dict:
    [meta] = [json.loads(p.read_text()) for p in (cache / "teachers").glob("*/teacher.json")]
    return meta


@pytest.mark.slow
def test_search_teacher_continues_and_resumes_after_kill_9_to_the_same_weights(mnist_root: Path,
                                                                                tmp_path: Path) -> None:
    """Two epochs, then four more in a second segment (warm start from the best weights, never from scratch); the
    second segment killed with SIGKILL after its first epoch and resumed by the same command ends with the weights
    of an uninterrupted run. The curve and the plot are written after every epoch."""
    study = tmp_path / "tiny_mlp.toml"
    study.write_text(STUDY)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for cache in (straight, killed):
        done = subprocess.run([sys.executable, *_teacher_cli(study, mnist_root, cache, "--epochs", "2")], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        assert "epoch 2/2: validation" in done.stdout and _entry(cache)["epochs"] == 2
    first = _entry(straight)
    assert [p["epoch"] for p in first["curve"]] == [1, 2] and first["cpu_seconds"] > 0
    assert (next((straight / "teachers").glob("*")) / "curve.png").stat().st_size > 1000
    again = search_cli(*_teacher_cli(study, mnist_root, straight, "--epochs", "2")[2:], module="search.teacher")
    assert again.returncode == 0 and "has 2 epochs already" in again.stdout  # nothing to train
    done = search_cli(*_teacher_cli(study, mnist_root, straight, "--epochs", "6")[2:], module="search.teacher")
    assert done.returncode == 0, done.stderr
    assert "training mlp epochs 3-6" in done.stdout
    proc = subprocess.Popen([sys.executable, *_teacher_cli(study, mnist_root, killed, "--epochs", "6")], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and _entry(killed)["epochs"] < 3:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert _entry(killed)["epochs"] in (3, 4, 5)
    resumed = search_cli(*_teacher_cli(study, mnist_root, killed, "--epochs", "6")[2:], module="search.teacher")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming the unfinished segment" in resumed.stdout
    a, b = _entry(straight), _entry(killed)
    assert a["epochs"] == b["epochs"] == 6 and [s["first"] for s in a["segments"]] == [0, 2]
    assert a["sha256"] == b["sha256"] and a["val_accuracy"] == b["val_accuracy"]  # bit for bit
    assert not list((killed / "teachers").glob("*/state.pt")) and not list((killed / "teachers").glob("*/segment*"))


def test_the_strongest_cached_teacher_is_used_and_a_plan_spends_nothing_on_it(mnist, tmp_path: Path) -> None:
    """Two entries for one study (from scratch, and from a weights file): every lookup takes the one with the best
    validation accuracy, whatever the asking config's schedule or init, and a plan gives it no time."""
    splits, batcher = mnist
    scratch = TeacherConfig(arch="mlp", train=TRAIN)
    first = prepare_teacher(scratch, splits, batcher, SPLIT, cache_dir=tmp_path, progress=False)
    assert not first.from_cache and first.metrics["epochs"] == 1
    weights = tmp_path / "init.pt"
    torch.save(first.model.state_dict(), weights)  # a better starting point than random weights
    warm = prepare_teacher(replace(scratch, init=str(weights)), splits, batcher, SPLIT, cache_dir=tmp_path,
                           progress=False)
    assert warm.folder != first.folder and warm.metrics["init"].startswith("file:")
    assert warm.metrics["val_accuracy"] > first.metrics["val_accuracy"]
    match = Match(network="mlp", dataset="mnist", resolution=28, data=splits.fingerprint, split=SPLIT)
    assert strongest(match, tmp_path).folder == warm.folder
    other = prepare_teacher(replace(scratch, train=replace(TRAIN, lr=0.5, seed=3)), splits, batcher, SPLIT,
                            cache_dir=tmp_path, progress=False)
    assert other.from_cache and other.folder == warm.folder
    status = cache_status(scratch, splits, batcher, SPLIT, cache_dir=tmp_path)
    assert status.epochs == 1 and status.continued_from == 1 and status.folder == str(warm.folder)
    config = load_study("mlp_mnist", "smoke")
    config = replace(config, search=replace(config.search, budget="5s"),  # a plan that gives the teacher one epoch
                     teacher=replace(config.teacher, train=replace(config.teacher.train, epochs=1)))
    work = Workload(teacher_epoch_steps=156, teacher_eval_images=15_000, level_images={"f1": 3_012, "f2": 3_012,
                    "f3": 16_012}, recovery_steps={"f1": 0, "f2": 0, "f3": 0}, promoted=1 / 3, final_jobs=3,
                    baseline_jobs=4)
    plan = plan_run(config, StepTimes(teacher_step=0.01, finetune_step=0.005, eval_image=2e-5), work, cache=status)
    assert plan.teacher_ready and plan.estimate["teacher"] == 0 and "strongest in the cache, 1 epochs" in \
        plan.describe()
    assert plan.apply(config).teacher.train.epochs == 1
    roomy = plan_run(replace(config, search=replace(config.search, budget="60s")), StepTimes(
        teacher_step=0.01, finetune_step=0.005, eval_image=2e-5), work, cache=status)
    assert not roomy.teacher_ready and roomy.teacher_from == 1  # more epochs fit: trained further, from epoch 1


def test_imagenet_weights_come_from_the_hub_cache_and_their_absence_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                                                 tmp_path: Path) -> None:
    """A state dict in torch hub's layout ($TORCH_HOME/hub/checkpoints/<torchvision's file name>) is what
    `init = "imagenet"` loads, every backbone tensor of it, the classifier left fresh; nothing is downloaded."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    config = TeacherConfig(arch="resnet18", init="imagenet")
    with pytest.raises(ConfigError) as missing:
        resolve_init(config.init, config.network)
    message = str(missing.value)
    assert "\n" not in message and "resnet18-f37072fd.pth" in message and str(tmp_path / "torch") in message
    assert resolve_init("imagenet_if_present", "resnet18").key == "scratch"
    torch.manual_seed(1)
    imagenet = torchvision.models.resnet18(weights=None).state_dict()  # the layout torchvision's file has
    path = hub_files("resnet18")[0]
    path.parent.mkdir(parents=True)
    torch.save(imagenet, path)
    init = resolve_init(config.init, config.network)
    assert init.path == str(path) and init.key == f"imagenet:{file_digest(path, 'sha256')[:16]}"
    assert resolve_init("imagenet_if_present", "resnet18") == init
    model = build_teacher(config, 10, 3, 32)
    copied = load_init(model, init)
    own = model.state_dict()
    assert copied == len([k for k in imagenet if not k.startswith("fc.")])
    assert torch.equal(own["conv1.weight"], imagenet["conv1.weight"])
    assert torch.equal(own["layer4.1.bn2.running_var"], imagenet["layer4.1.bn2.running_var"])
    assert own["fc.0.weight"].shape == (256, 512)  # the thesis's head, freshly initialised
    match = Match(network="resnet18", dataset="cifar10", resolution=32, data="d", split=SplitConfig())
    assert match.entry_key(init.key) != match.entry_key("scratch")  # another teacher, found by the same lookup
    with pytest.raises(ConfigError, match="does not fit the teacher's network"):
        load_init(build_teacher(config, 10, 1, 32), init)  # greyscale input: conv1 has another shape


def test_the_paper_profile_starts_from_imagenet_weights_when_present() -> None:
    assert load_study("resnet50_cifar10", "paper").teacher.init == "imagenet_if_present"
    assert load_study("resnet50_cifar10", "cpu").teacher.init == "scratch"


@pytest.mark.slow
def test_the_readme_run_then_export_commands_train_no_second_teacher(mnist_root: Path, tmp_path: Path) -> None:
    """`search.run --study S` sized to a small budget gives the teacher fewer epochs than the profile; the README's
    `search.export --study S --pick knee`, typed as written in the same folder, exports the knee with the run's
    teacher and budgets (its config.json, its pinned teacher) and trains nothing (issue 30: it trained a second
    teacher for 13 minutes, silently)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "EDGE_SEARCH_DATA": str(mnist_root.resolve()),
           "EDGE_SEARCH_CACHE": str(tmp_path / "cache")}

    def typed(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)

    # ./studies/mlp_mnist.toml is found before the shipped one: the same study, with a profile asking for far more
    # teacher epochs than a 20 s plan can give, as the `cpu` profile does on a slow 2-core machine
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "mlp_mnist.toml").write_text((REPO / "studies" / "mlp_mnist.toml").read_text().replace(
        "[profiles.smoke.teacher.train]\nepochs = 2", "[profiles.smoke.teacher.train]\nepochs = 500"))
    run = typed("search.run", "--study", "mlp_mnist", "--profile", "smoke", "--budget", "20s", "--no-progress")
    assert run.returncode == 0, run.stderr
    plan = json.loads((tmp_path / "runs" / "mlp_mnist" / "smoke" / "plan.json").read_text())
    epochs = plan["counts"]["teacher_epochs"]
    assert 1 <= epochs < 500
    exported = typed("search.export", "--study", "mlp_mnist", "--profile", "smoke", "--pick", "knee")
    assert exported.returncode == 0, exported.stderr
    assert "training epochs" not in exported.stdout + exported.stderr
    [meta] = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "teachers").glob("*/teacher.json")]
    assert meta["epochs"] == epochs and len(meta["segments"]) == 1  # the run's teacher, not trained again
    assert list((tmp_path / "runs" / "mlp_mnist" / "smoke" / "bundles").glob("*/manifest.json"))
    # the same command again, from scratch: the teacher and the baselines come from the cache, the search gets it all
    again = typed("search.run", "--study", "mlp_mnist", "--profile", "smoke", "--budget", "20s", "--no-progress",
                  "--fresh")
    assert again.returncode == 0, again.stderr
    second = json.loads((tmp_path / "runs" / "mlp_mnist" / "smoke" / "plan.json").read_text())
    assert second["teacher_ready"] and second["baselines_cached"] and second["baseline_stage"] == 0
    assert "12 of 12 results cached beside the teacher" in again.stdout
    assert "baselines 0% (cached for this teacher and these counts)" in again.stdout


def test_an_entry_of_an_older_cache_format_is_ignored_with_one_line(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    match = Match(network="mlp", dataset="mnist", resolution=28, data="d", split=SPLIT)
    old = tmp_path / "teachers" / "mlp-mnist-0123456789abcdef"
    old.mkdir(parents=True)
    (old / "teacher.json").write_text(json.dumps({"val_accuracy": 99.0, "sha256": "x"}))  # format 1 had no field
    (old / "teacher.pt").write_bytes(b"old")
    assert strongest(match, tmp_path) is None
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cache format 1" in err and str(old) in err and "ignored" in err
