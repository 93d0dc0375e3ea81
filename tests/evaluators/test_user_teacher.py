"""The user's own trained teacher from a checkpoint file: every common format, never unpickled blindly, and
one-line errors that say what to change. All on real CIFAR-10 images written as an ImageFolder."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
import torchvision

from evaluators.data.config import DataConfig
from evaluators.data.config import prepare_data
from evaluators.data.splits import SplitConfig
from evaluators.metrics import accuracy
from evaluators.teacher.checkpoint import CheckpointError
from evaluators.teacher.prepare import TeacherConfig
from evaluators.teacher.prepare import prepare_teacher
from spaces.models.code_trust import grant
from tests.user_data import TinyNet
from tests.user_data import train_quickly
from tests.user_data import write_cifar_imagefolder

ARCH = "tests.user_data:build_tiny"
SPLIT = SplitConfig()


@pytest.fixture(scope="module")
def folder(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar_imagefolder(tmp_path_factory.mktemp("t") / "images", cifar_root, per_class=80,
                                   test_per_class=20)


@pytest.fixture(scope="module")
def data(folder: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - (Splits, Batcher)
    config = DataConfig(dataset="imagefolder", root=str(folder), resolution=32, split=SPLIT)
    return prepare_data(config, cache_dir=tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained(folder: Path) -> TinyNet:
    return train_quickly(TinyNet(), folder, 32, steps=40)


def load(data, path: Path, arch: str = ARCH, **kwargs: object):  # noqa: ANN001, ANN201
    splits, batcher = data
    config = TeacherConfig(arch=arch, checkpoint=str(path), **kwargs)
    # the user's own code, named in Python: granted as trust_code=True grants it (spaces.models.code_trust)
    grant(factories=(arch,), folders=(config.code,), pickles=(str(path),) if config.allow_pickle else ())
    return prepare_teacher(config, splits, batcher, SPLIT, cache_dir=path.parent / "cache")


@pytest.mark.parametrize("layout", ["state_dict", "lightning", "timm", "data_parallel"])
def test_every_common_checkpoint_layout_loads_the_same_teacher(layout: str, trained: TinyNet, data,  # noqa: ANN001
                                                               tmp_path: Path) -> None:
    state = trained.state_dict()
    saved = {"state_dict": state, "lightning": {"state_dict": {f"model.{k}": v for k, v in state.items()},
                                                "epoch": 3, "global_step": 40},
             "timm": {"model": state, "arch": "tiny", "epoch": 3},
             "data_parallel": {f"module.{k}": v for k, v in state.items()}}[layout]
    torch.save(saved, tmp_path / "teacher.pt")
    teacher = load(data, tmp_path / "teacher.pt")
    splits, batcher = data
    assert teacher.metrics["test_accuracy"] == pytest.approx(accuracy(trained, splits.test, batcher))
    assert teacher.metrics["val_accuracy"] == pytest.approx(accuracy(trained, splits.val, batcher))
    assert "train_steps" not in teacher.metrics  # never trained
    again = load(data, tmp_path / "teacher.pt")
    assert again.from_cache and again.metrics["test_accuracy"] == teacher.metrics["test_accuracy"]


def test_a_pickled_module_is_refused_unless_allowed(trained: TinyNet, data, tmp_path: Path) -> None:  # noqa: ANN001
    torch.save(trained, tmp_path / "whole.pt")
    with pytest.raises(CheckpointError, match="pickled Python objects.*allow_pickle = true"):
        load(data, tmp_path / "whole.pt")
    teacher = load(data, tmp_path / "whole.pt", allow_pickle=True)
    splits, batcher = data
    assert teacher.metrics["test_accuracy"] == pytest.approx(accuracy(trained, splits.test, batcher))


@pytest.mark.parametrize(("make", "message"), [
    (lambda s: {k: v for k, v in s.items() if not k.startswith("fc.")}, r"missing keys fc.weight, fc.bias"),
    (lambda s: {**s, "extra.weight": torch.zeros(2)}, r"unexpected keys extra.weight"),
    (lambda s: TinyNet(num_classes=5).state_dict(), r"class count mismatch: .*fc.weight has 5 outputs but the "
                                                    r"data has 3 classes"),
    (lambda s: TinyNet(in_channels=1).state_dict(), r"input-channel mismatch: .*takes 1 channels but the data has "
                                                    r"3; set \[data\] channels = 1"),
    (lambda s: {"optimizer": {"lr": 0.1}}, r"holds a dict \(keys: optimizer\) with no state dict"),
])
def test_checkpoints_that_do_not_fit_fail_in_one_line(make, message: str, trained: TinyNet,  # noqa: ANN001
                                                      data, tmp_path: Path) -> None:  # noqa: ANN001
    torch.save(make(trained.state_dict()), tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=message) as err:
        load(data, tmp_path / "bad.pt")
    assert "\n" not in str(err.value)


def test_a_file_that_is_not_a_checkpoint_is_named(data, tmp_path: Path) -> None:  # noqa: ANN001
    (tmp_path / "notes.pt").write_text("these are my notes, not weights")
    with pytest.raises(CheckpointError, match=r"notes.pt is not a PyTorch checkpoint"):
        load(data, tmp_path / "notes.pt")
    with pytest.raises(CheckpointError, match=r"missing.pt does not exist"):
        load(data, tmp_path / "missing.pt")


def test_a_torchvision_teacher_with_keyword_arguments(data, tmp_path: Path) -> None:  # noqa: ANN001
    model = torchvision.models.mobilenet_v3_small(num_classes=3, width_mult=0.5).eval()
    torch.save(model.state_dict(), tmp_path / "mnv3.pt")
    teacher = load(data, tmp_path / "mnv3.pt", arch="torchvision:mobilenet_v3_small",
                   kwargs={"width_mult": 0.5})
    assert teacher.metrics["arch"] == 'torchvision:mobilenet_v3_small{"width_mult":0.5}'
    assert teacher.metrics["params"] == sum(p.numel() for p in model.parameters())
    with pytest.raises(Exception, match="torchvision has no classification model 'mobilenet_v9'"):
        load(data, tmp_path / "mnv3.pt", arch="torchvision:mobilenet_v9")


def test_the_users_own_package_through_code_dir(trained: TinyNet, data, tmp_path: Path) -> None:  # noqa: ANN001
    package = tmp_path / "code" / "acme_teach"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(textwrap.dedent('''
        from tests.user_data import TinyNet


        def make_net(num_classes, width=16):
            return TinyNet(num_classes=num_classes, width=width)
    '''))
    torch.save(trained.state_dict(), tmp_path / "teacher.pt")
    teacher = load(data, tmp_path / "teacher.pt", arch="acme_teach.nets:make_net", code=str(tmp_path / "code"))
    splits, batcher = data
    assert teacher.metrics["test_accuracy"] == pytest.approx(accuracy(trained, splits.test, batcher))
    with pytest.raises(Exception, match=r"cannot import 'acme_absent.nets'.*--code DIR"):
        load(data, tmp_path / "teacher.pt", arch="acme_absent.nets:make_net")
