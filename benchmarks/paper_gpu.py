"""`python -m benchmarks.paper_gpu`: the `paper` profile (the thesis's setting: ResNet-50 at 224x224, its 10-epoch
schedule) on one GPU, sized to the GPU time at hand, with the results copied where the repository keeps them.

It runs the whole study (teacher at 224, search, final stage with the thesis's 11 recipes as baselines) through
`python -m search.run`, then writes, beside copies of `report.md`, `pareto.png`, `trials.csv` and the other
tables, `run.json` (GPU model, wall time, the exact command) and `thesis_comparison.md`: each of the thesis's
11 recipes with the accuracy the thesis measured on its ZCU104 board (`hardware_models/data/zcu104_dpu.csv`)
beside the accuracy the same recipe reached here (F3, test split, 95% interval) and whether the front beats it.

`--tiny` checks the same path on the CPU in minutes: the study's own file plus a `tiny224` profile (224x224, a
few hundred images, a few steps per stage), so nothing in the script is first run on the borrowed GPU.
`scripts/paper_on_gpu.sh` is the one-line entry point.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from hardware_models.estimators.host import cpu_name
from spaces.recipe import Recipe
from spaces.recipe import describe

REPO = Path(__file__).resolve().parent.parent
THESIS_CSV = REPO / "hardware_models" / "data" / "zcu104_dpu.csv"
COPIED = ("report.md", "pareto.png", "hypervolume.png", "trials.csv", "pareto.csv", "baselines.csv",
          "summary.json", "cluster.json")

# The paper profile's path at a size a 2-core CPU runs in minutes; appended to a copy of the study file.
TINY_PROFILE = """
# --- tiny224: benchmarks.paper_gpu --tiny (the paper path on the CPU, in minutes) ---
[profiles.tiny224.data]
resolution = 224
[profiles.tiny224.data.split]
train_size = 256
val_size = 96
calib_size = 64
[profiles.tiny224.teacher.train]
epochs = 1
batch_size = 32
optimizer = "adamw"
lr = 1e-3
label_smoothing = 0.0
augment = false
[profiles.tiny224.search]
trials = 2
population = 2
final_max = 1
cascades = false
""" + "".join(f"""
[profiles.tiny224.fidelity.{level}]
val_images = 64{extra}
[profiles.tiny224.fidelity.{level}.budget]
student_steps = 2
finetune_steps = {finetune}
recovery_steps = 1
bn_images = 16
score_images = 16
calib_images = 16
max_candidates = 1
taylor_images = 8
eval_batch_size = 32
""" + "".join(f"""[profiles.tiny224.fidelity.{level}.budget.{train}]
batch_size = 16
""" for train in ("student_train", "finetune_train", "qat_train"))
    for level, finetune, extra in (("f1", 0, ""), ("f2", 1, ""), ("f3", 2, "\ntest_images = 64")))


def tiny_study(study: str, folder: Path) -> Path:
    """The study file with the `tiny224` profile appended."""
    source = Path(study) if study.endswith(".toml") else REPO / "studies" / f"{study}.toml"
    path = folder / source.name
    path.write_text(source.read_text() + TINY_PROFILE)
    return path


def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return f"{torch.cuda.get_device_name(0)} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
    return f"CPU: {cpu_name()}, {os.cpu_count()} cores"


def board_accuracy(note: str) -> float | None:
    found = re.search(r"accuracy on board ([0-9.]+)%", str(note))
    return float(found.group(1)) if found else None


def thesis_comparison(run: Path) -> str:
    """The 11 thesis recipes: the thesis's board accuracy beside this run's F3 test accuracy and verdict."""
    thesis = pd.read_csv(THESIS_CSV)
    board = {row.model: board_accuracy(row.note) for row in thesis.itertuples()}
    board_ms = dict(zip(thesis["model"], thesis["latency_ms"], strict=True))
    base = pd.read_csv(run / "baselines.csv")
    summary = json.loads((run / "summary.json").read_text())
    verdicts = {v["baseline"]: v for v in summary.get("verdicts", [])}
    lines = ["| thesis recipe | thesis: board accuracy % | thesis: ZCU104 ms | here: F3 test accuracy % (95% CI) | "
             "here: predicted ZCU104 ms | the front |", "|---|---|---|---|---|---|"]
    for row in base.itertuples():
        acc = getattr(row, "f3_test_accuracy", float("nan"))
        low, high = getattr(row, "f3_test_accuracy_low", float("nan")), getattr(row, "f3_test_accuracy_high",
                                                                                   float("nan"))
        verdict = verdicts.get(row.label, {})
        outcome = verdict.get("outcome", row.reason if isinstance(row.reason, str) else "")
        by = f" ({verdict['by']})" if verdict.get("by") else ""
        thesis_acc = board.get(row.label)
        lines.append(f"| {row.label} | {'' if thesis_acc is None else f'{thesis_acc:.2f}'} | "
                     f"{board_ms.get(row.label, float('nan')):.2f} | {acc:.2f} ({low:.2f}-{high:.2f}) | "
                     f"{getattr(row, 'f3_latency_zcu104', float('nan')):.2f} | {outcome}{by} |")
    front = pd.read_csv(run / "pareto.csv")
    lines += ["", "| front member | F3 test accuracy % (95% CI) | predicted ZCU104 ms | recipe |", "|---|---|---|---|"]
    for row in front.itertuples():
        lines.append(f"| {row.source} | {row.f3_test_accuracy:.2f} ({row.f3_test_accuracy_low:.2f}-"
                     f"{row.f3_test_accuracy_high:.2f}) | {row.f3_latency_zcu104:.2f} | "
                     f"{describe(Recipe.from_json(row.recipe_json))} |")
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.paper_gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--study", default="resnet50_cifar10")
    p.add_argument("--budget", default="20m",
                   help="wall time of the whole run: teacher epochs, trials and F2/F3 steps are sized to it")
    p.add_argument("--trials", type=int, default=None, help="at most this many trials (default: the profile's)")
    p.add_argument("--tiny", action="store_true", help="the same path on the CPU at a tiny size, to check it")
    p.add_argument("--out", default=None, help="run folder (default: runs/paper-gpu or runs/paper-tiny)")
    p.add_argument("--results", default=None,
                   help="where the results are copied (default: docs/results/paper-gpu; --tiny: <out>/paper-results)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import torch

    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU here; run on a GPU machine, or check the path on the CPU with --tiny",
              file=sys.stderr)
        return 2
    out = Path(args.out or REPO / "runs" / ("paper-tiny" if args.tiny else "paper-gpu")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = Path(args.results or (out / "paper-results" if args.tiny else REPO / "docs" / "results" / "paper-gpu"))
    study, profile = (str(tiny_study(args.study, out)), "tiny224") if args.tiny else (args.study, "paper")
    command = [sys.executable, "-m", "search.run", "--study", study, "--profile", profile, "--device", device,
               "--budget", args.budget, "--out", str(out), "--no-progress", "--no-download"]
    command += ["--trials", str(args.trials)] if args.trials else []
    command += ["--data-root", args.data_root] if args.data_root else []
    command += ["--cache-dir", args.cache_dir] if args.cache_dir else []
    print("running:", " ".join(command), flush=True)
    t0 = time.monotonic()
    with (out / "paper_gpu.log").open("w") as log:
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            log.write(line)
        code = proc.wait()
    wall = time.monotonic() - t0
    if code != 0:
        print(f"error: the study failed (exit {code}); its output is in {out / 'paper_gpu.log'}", file=sys.stderr)
        return code
    results.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (out / name).exists():
            shutil.copy2(out / name, results / name)
    shutil.copy2(out / "paper_gpu.log", results / "run.log")
    (results / "thesis_comparison.md").write_text(thesis_comparison(out))
    (results / "run.json").write_text(json.dumps({
        "device": device_name(device), "torch": torch.__version__, "wall_seconds": round(wall, 1),
        "command": " ".join(["python", *command[1:]]).replace(str(REPO) + "/", ""), "profile": profile,
        "budget": args.budget, "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z")}, indent=1))
    print(f"done in {wall / 60:.1f} min; results in {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
