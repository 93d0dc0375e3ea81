"""`python -m benchmarks.user_model`: what a user with their own checkpoint and images waits for.

(a) Data paths: images/s of an ImageFolder of CIFAR-10 PNG files read three ways through the tool's batcher:
    decoded into memory the first time (decode + tensor-cache write), from the tensor cache on a rerun, and
    streamed from disk by DataLoader workers (0 and 2).
(b) Time to the first Pareto front: a study's `smoke` profile from an empty cache, as today (the tool trains
    the teacher first), against the same study given that trained teacher as a user checkpoint
    (`[teacher] checkpoint`), also from an empty cache. Both train the same students and run the same search.

    python -m benchmarks.user_model [--only ab] [--images-per-class 500] [--study resnet50_cifar10]

Prints a table and writes `benchmark.json` under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from evaluators.data.config import DataConfig
from evaluators.data.config import prepare_data
from hardware_models.estimators.host import cpu_name
from search.config import study_path

REPO = Path(__file__).resolve().parent.parent


def write_folder(root: Path, data_root: str | None, per_class: int) -> int:
    from PIL import Image

    from evaluators.data.datasets import load_dataset

    raw = load_dataset("cifar10", data_root, allow_download=False)
    count = 0
    for split, source, n in (("train", raw.train, per_class), ("test", raw.test, max(1, per_class // 5))):
        for label in range(10):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in (source.labels == label).nonzero().flatten()[:n].tolist():
                Image.fromarray(source.images[i].permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
                count += 1
    return count


def images_per_second(root: Path, cache: Path, storage: str, workers: int, resolution: int) -> tuple[float, int]:
    """Load the folder and pass every image once through the batcher (what evaluation and training do)."""
    t0 = time.perf_counter()
    splits, batcher = prepare_data(DataConfig(dataset="imagefolder", root=str(root), resolution=resolution,
                                              storage=storage, workers=workers), cache_dir=cache)
    n = 0
    for data in (splits.train, splits.val, splits.calib, splits.test):
        for _, y in batcher.eval_batches(data, 256):
            n += len(y)
    return n / (time.perf_counter() - t0), n


def data_paths(args: argparse.Namespace, work: Path) -> dict:
    root = work / "images"
    total = write_folder(root, args.data_root, args.images_per_class)
    cache = work / "cache"
    rows = {}
    for res in (32, 224):
        rows[f"memory, first load (decode + cache) @{res}"] = images_per_second(root, cache, "memory", 0, res)
        rows[f"memory, from the tensor cache @{res}"] = images_per_second(root, cache, "memory", 0, res)
        rows[f"stream, 0 workers @{res}"] = images_per_second(root, cache, "stream", 0, res)
        rows[f"stream, 2 workers @{res}"] = images_per_second(root, cache, "stream", 2, res)
    print(f"\n(a) {total} PNG files (CIFAR-10, 32x32), every image once through the batcher")
    print(f"{'path':48s} {'images/s':>10s}")
    for name, (rate, _) in rows.items():
        print(f"{name:48s} {rate:10.0f}")
    return {name: round(rate, 1) for name, (rate, _) in rows.items()}


def run_study(study: str, out: Path, cache: Path, data_root: str | None) -> float:
    cmd = [sys.executable, "-m", "search.run", "--study", study, "--profile", "smoke", "--out", str(out),
           "--cache-dir", str(cache), "--no-progress"] + (["--data-root", data_root] if data_root else [])
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - t0


def first_front(args: argparse.Namespace, work: Path) -> dict:
    trained = run_study(args.study, work / "today", work / "cache_today", args.data_root)
    teacher = next((work / "cache_today" / "teachers").glob("*/teacher.pt"))
    checkpoint = work / "my_teacher.pt"
    shutil.copy(teacher, checkpoint)
    text = study_path(args.study).read_text()
    text = re.sub(r"(\[teacher\]\narch = \"[^\"]+\")", rf'\1\ncheckpoint = "{checkpoint}"', text, count=1)
    variant = work / f"{args.study}_checkpoint.toml"
    variant.write_text(text)
    given = run_study(str(variant), work / "given", work / "cache_given", args.data_root)
    teacher = json.loads((work / "today" / "baseline.json").read_text())["teacher"]
    user = json.loads((work / "given" / "baseline.json").read_text())["teacher"]
    print(f"\n(b) {args.study} at smoke, empty cache each time, wall seconds to the first Pareto front")
    print(f"{'today: train the teacher, then search':48s} {trained:10.1f}")
    print(f"{'user checkpoint: measure it, then search':48s} {given:10.1f}")
    print(f"teacher: test {teacher['test_accuracy']:.2f}% (trained, {teacher['params']:,} params); as a checkpoint: "
          f"test {user['test_accuracy']:.2f}% (must be the same network)")
    if abs(teacher["test_accuracy"] - user["test_accuracy"]) > 1e-6:
        raise SystemExit("the checkpoint teacher does not reproduce the trained teacher's test accuracy")
    return {"train_then_search_s": round(trained, 1), "checkpoint_then_search_s": round(given, 1),
            "speedup": round(trained / given, 2), "teacher_test_accuracy": teacher["test_accuracy"],
            "teacher_train_seconds": teacher.get("train_seconds_this_run")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.user_model", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="ab", help="a: data paths, b: time to the first front (default: both)")
    p.add_argument("--study", default="resnet50_cifar10")
    p.add_argument("--images-per-class", type=int, default=500)
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default=None, help="where to work (default: a temporary folder)")
    args = p.parse_args(argv)
    work = Path(args.out or tempfile.mkdtemp(prefix="bench-user-"))
    work.mkdir(parents=True, exist_ok=True)
    found: dict = {"cpu": _cpu()}
    if "a" in args.only:
        found["data_images_per_s"] = data_paths(args, work)
    if "b" in args.only:
        found["first_front"] = first_front(args, work)
    (work / "benchmark.json").write_text(json.dumps(found, indent=2))
    print(f"\nwrote {work / 'benchmark.json'}")
    return 0


def _cpu() -> str:
    return f"{cpu_name()} x{os.cpu_count()}"


if __name__ == "__main__":
    sys.exit(main())
