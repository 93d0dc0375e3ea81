"""How well the hardware models predict measurements they were not fitted on.

    python -m benchmarks.hardware_accuracy            # markdown tables on stdout (a few minutes)
    python -m benchmarks.hardware_accuracy --quick    # skip NAS-Bench-201 and the host runs

Per target and calibration file: leave-one-out (or 5-fold) MAPE and the share of rows within +-10%,
next to the naive baseline "latency = k x MACs" with k fitted on the same training rows. Also: the
thesis's pruned networks predicted from the other rows, two host measurements of the same network,
and how long `estimate()` takes.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch

from hardware_models import estimate
from hardware_models.calibrate import Calibration
from hardware_models.calibrate import cross_validate
from hardware_models.calibrate import leave_network_out
from hardware_models.calibrate import leave_one_out
from hardware_models.calibrate import prepare
from hardware_models.fitting import kfold_indices
from hardware_models.fitting import mape
from hardware_models.fitting import spearman
from hardware_models.fitting import within
from hardware_models.graph import with_policy
from hardware_models.host import measure
from hardware_models.specs import build_network

PRUNED = ("thesis:resnet50_os20", "thesis:resnet50_os95", "thesis:squeezenet1_0_it20", "thesis:resnet18_os20",
          "thesis:mobilenet_v2_os20")


@dataclass(frozen=True)
class Score:
    label: str
    rows: int
    model_mape: float
    model_within: float
    naive_mape: float
    naive_within: float
    extra: str = ""

    def markdown(self) -> str:
        return (f"| {self.label} | {self.rows} | {self.model_mape:.1f}% | {100 * self.model_within:.0f}% | "
                f"{self.naive_mape:.1f}% | {100 * self.naive_within:.0f}% | {self.extra} |")


HEADER = ("| target / data / rows | n | model MAPE | model within 10% | naive (k x MACs) MAPE | "
          "naive within 10% | notes |\n|---|---|---|---|---|---|---|")


def data(name: str) -> str:
    return str(resources.files("hardware_models").joinpath(f"data/{name}"))


def _macs(calibration: Calibration, literal: bool) -> np.ndarray:
    return np.array([c.network.macs_literal if literal else max(c.network.macs, 1) for c in calibration.cases],
                    float)


def naive(calibration: Calibration, folds: Sequence[Sequence[int]], literal: bool = False) -> np.ndarray:
    """latency = k x MACs, k fitted (in log space) on the training rows of each fold."""
    macs, y = _macs(calibration, literal), calibration.measured
    out = np.full(y.size, np.nan)
    for held in folds:
        train = np.setdiff1d(np.arange(y.size), held)
        k = np.exp(np.mean(np.log(y[train] / macs[train])))
        out[list(held)] = k * macs[list(held)]
    return out


def score(label: str, rows: Sequence[int], predicted: np.ndarray, baseline: np.ndarray, y: np.ndarray,
          extra: str = "") -> Score:
    r = list(rows)
    return Score(label, len(r), mape(predicted[r], y[r]), within(predicted[r], y[r]), mape(baseline[r], y[r]),
                 within(baseline[r], y[r]), extra)


def zcu104() -> list[str]:
    calibration = prepare("zcu104", data("zcu104_dpu.csv"))
    y = calibration.measured
    rows = range(y.size)
    loo, lono = leave_one_out(calibration), leave_network_out(calibration)
    base = naive(calibration, [[i] for i in rows])
    specs = [r.spec for r in calibration.table.rows]
    strict = f"leave-network-out MAPE {mape(lono, y):.1f}%, within 10% {100 * within(lono, y):.0f}%"
    lines = [score("zcu104 / zcu104_dpu.csv / all (LOO)", rows, loo, base, y, strict).markdown()]
    pruned = [i for i, s in enumerate(specs) if s in PRUNED]
    errors = ", ".join(f"{specs[i].split(':')[1]} {100 * (loo[i] / y[i] - 1):+.1f}%" for i in pruned)
    lines.append(score("zcu104 / thesis pruned nets (LOO)", pruned, loo, base, y, errors).markdown())
    return lines


def rpi4() -> list[str]:
    calibration = prepare("rpi4", data("rpi.csv"))
    y, cases = calibration.measured, calibration.cases
    four = [i for i, c in enumerate(cases) if c.threads == 4]
    loo = leave_one_out(calibration, four)
    lines = []
    for precision in ("fp32", "int8"):
        rows = [i for i in four if cases[i].precision == precision]
        group = [[i] for i in rows]
        base = naive(calibration, group)
        # the baseline's k is fitted on the same precision's 4-thread rows only (its best case)
        same = {i: [j for j in rows if j != i] for i in rows}
        for i in rows:
            k = np.exp(np.mean(np.log(y[same[i]] / _macs(calibration, False)[same[i]])))
            base[i] = k * _macs(calibration, False)[i]
        runtimes = sorted({cases[i].runtime.partition("@")[0] for i in rows})
        split = "; ".join(f"{rt}: {mape(loo[r], y[r]):.1f}% (n={len(r)})" for rt in runtimes
                          for r in [[i for i in rows if cases[i].runtime.startswith(rt)]])
        lines.append(score(f"rpi4 / rpi.csv / 4 threads, {precision} (LOO)", rows, loo, base, y, split).markdown())
    return lines


def nb201() -> list[str]:
    calibration = prepare("rpi4", data("nb201_raspi4_sample.csv"))
    y = calibration.measured
    folds = [f.tolist() for f in kfold_indices(y.size, 5)]
    cv = cross_validate(calibration, 5)
    base = naive(calibration, folds, literal=True)
    live = [i for i, c in enumerate(calibration.cases)
            if not with_policy(c.network, "optimised").output_is_constant]
    extra = (f"Spearman {spearman(cv, y):.3f} (naive {spearman(base, y):.3f}); graph policy "
             f"{calibration.policy!r}; without the {y.size - len(live)} constant-output nets: MAPE "
             f"{mape(cv[live], y[live]):.1f}%, within 10% {100 * within(cv[live], y[live]):.0f}%")
    return [score("rpi4 / nb201_raspi4_sample.csv (5-fold CV)", range(y.size), cv, base, y, extra).markdown()]


def host() -> list[str]:
    model = build_network("torchvision:resnet18", device="cpu")
    runs = [measure(model, (3, 32, 32), precision="fp32", threads=1) for _ in range(2)]
    a, b = runs[0].latency_ms, runs[1].latency_ms
    spread = abs(a - b) / min(a, b)
    return [f"host (measured, onnxruntime fp32, 1 thread), resnet18 @ 3x32x32: run 1 {a:.3f} ms "
            f"(p10-p90 {runs[0].p10_ms:.3f}-{runs[0].p90_ms:.3f}), run 2 {b:.3f} ms "
            f"(p10-p90 {runs[1].p10_ms:.3f}-{runs[1].p90_ms:.3f}); the two medians differ by {100 * spread:.1f}%"]


def alternatives() -> list[str]:
    """Why a roofline max() on the DPU and a sum on the ARM: the other rule fits worse."""
    lines = ["| rule (compute vs memory per layer) | zcu104 LOO MAPE / within 10% | rpi4 fit MAPE (all rows) |",
             "|---|---|---|"]
    for dpu_rule, arm_rule in (("max", "sum"), ("sum", "max")):
        dpu = prepare("zcu104", data("zcu104_dpu.csv"), combine=dpu_rule)
        loo = leave_one_out(dpu)
        arm = prepare("rpi4", data("rpi.csv"), combine=arm_rule)
        fitted = arm.predict(arm.theta, range(len(arm.cases)))
        lines.append(f"| DPU {dpu_rule}, ARM {arm_rule} | {mape(loo, dpu.measured):.1f}% / "
                     f"{100 * within(loo, dpu.measured):.0f}% | {mape(fitted, arm.measured):.1f}% |")
    return lines


def _timed(fn: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def speed() -> list[str]:
    model = build_network("torchvision:efficientnet_b0", device="cpu")
    shape = (3, 224, 224)
    layers = len(estimate(model, shape, "zcu104", use_cache=False)["removed_layers"]) + sum(
        estimate(model, shape, "zcu104")["layers"].values())
    lines = [f"estimate() speed, efficientnet_b0 @ 3x224x224 ({layers} traced layers):"]
    for target in ("zcu104", "rpi4"):
        cold = _timed(lambda t=target: estimate(model, shape, t, use_cache=False))
        warm = _timed(lambda t=target: estimate(model, shape, t))
        lines.append(f"- {target}: {1000 * cold:.0f} ms uncached (trace + model), {1000 * warm:.1f} ms cached")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hardware_accuracy", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="skip NAS-Bench-201 and the host measurement")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("## Hardware model accuracy (held-out predictions)\n")
    print(HEADER)
    for section in (zcu104, rpi4) if args.quick else (zcu104, rpi4, nb201):
        for line in section():
            print(line, flush=True)
    print("\nzcu102 and rpi5 have no measurements of their own (transferred from zcu104 / rpi4): not scored.\n")
    if not args.quick:
        print("\n".join(alternatives()) + "\n")
    for line in ([] if args.quick else host()) + speed():
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
