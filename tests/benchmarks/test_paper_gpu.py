"""The paper-on-a-GPU script's parts that can be checked without a GPU (its whole path was run at `--tiny` size
on the CPU: see benchmarks/paper_gpu.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.paper_gpu import board_accuracy
from benchmarks.paper_gpu import main
from benchmarks.paper_gpu import tiny_study
from search.config import load_study


def test_the_tiny_profile_is_the_paper_path_at_224_in_minutes(tmp_path: Path) -> None:
    config = load_study(str(tiny_study("resnet50_cifar10", tmp_path)), "tiny224")
    paper = load_study("resnet50_cifar10", "paper")
    assert config.data.resolution == paper.data.resolution == 224
    assert config.teacher.arch == paper.teacher.arch and config.search.baselines == paper.search.baselines
    assert config.data.split.train_size == 256 and config.fidelity.f3.test_images == 64


def test_the_thesis_board_accuracy_is_read_from_the_calibration_note() -> None:
    assert board_accuracy("accuracy on board 70.08%; gops = 2 x MACs") == 70.08
    assert board_accuracy("no accuracy here") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_a_gpu_it_refuses_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: no CUDA GPU here; run on a GPU machine, or check the path on the CPU with --tiny"
