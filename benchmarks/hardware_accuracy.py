"""How well the hardware models predict measurements they were not fitted on.

    python -m benchmarks.hardware_accuracy            # markdown tables on stdout (a few minutes)
    python -m benchmarks.hardware_accuracy --quick    # ZCU104 and the Raspberry Pi tables only (a few minutes)

Per target: leave-network-FAMILY-out predictions (every row of an architecture family held out together,
each refit starting from the physical prior), after repeated measurements of one network are averaged
into one row. Next to them the naive baseline "latency = k x MACs", k fitted on the same training rows.
Each row also gets the 90% split-conformal interval set by the other families' residuals, and the share
of held-out rows it covers. NAS-Bench-201 (one family per cell) is scored fit-on-200 / score-on-100
over five random splits. Also: two host measurements of the same network and how long `estimate()` takes.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from benchmarks.learning_curve import data
from benchmarks.learning_curve import subset
from benchmarks.rpi5_transfer import rows_of
from benchmarks.rpi5_transfer import score_transfers
from hardware_models import estimate
from hardware_models.calibration.fit import Calibration
from hardware_models.calibration.fit import choose_policy
from hardware_models.calibration.fit import fit_rows
from hardware_models.calibration.fit import leave_family_out
from hardware_models.calibration.fit import leave_one_out
from hardware_models.calibration.fit import prepare
from hardware_models.calibration.fit import with_graph_policy
from hardware_models.estimators.host import measure
from hardware_models.fitting.intervals import conformal_halfwidth
from hardware_models.fitting.least_squares import mape
from hardware_models.fitting.least_squares import spearman
from hardware_models.fitting.least_squares import to_theta
from hardware_models.fitting.least_squares import within
from hardware_models.graph.executed import POLICIES
from hardware_models.graph.specs import build_network
from hardware_models.measurements.validation import coverage
from hardware_models.measurements.validation import executed_signature
from hardware_models.measurements.validation import family_folds
from hardware_models.measurements.validation import family_of
from hardware_models.measurements.validation import naive_macs
from hardware_models.measurements.validation import replicate_agreement
from hardware_models.profiles import load_builtin
from hardware_models.targets import to_rpi5_params

PRUNED = ("thesis:resnet50_os20", "thesis:resnet50_os95", "thesis:squeezenet1_0_it20", "thesis:resnet18_os20",
          "thesis:mobilenet_v2_os20")
NB201_SPLITS = 5
NB201_TRAIN = 200


@dataclass(frozen=True)
class Score:
    label: str
    rows: int
    model_mape: float
    model_within: float
    naive_mape: float
    naive_within: float
    covered: float = float("nan")
    extra: str = ""

    def markdown(self) -> str:
        covered = "-" if np.isnan(self.covered) else f"{100 * self.covered:.0f}%"
        return (f"| {self.label} | {self.rows} | {self.model_mape:.1f}% | {100 * self.model_within:.0f}% | "
                f"{self.naive_mape:.1f}% | {100 * self.naive_within:.0f}% | {covered} | {self.extra} |")


HEADER = ("| target / data / rows (held out) | n | model MAPE | model within 10% | naive (k x MACs) MAPE | "
          "naive within 10% | 90% interval coverage | notes |\n|---|---|---|---|---|---|---|---|")


def score(label: str, rows: Sequence[int], predicted: np.ndarray, baseline: np.ndarray, y: np.ndarray,
          covered: np.ndarray | None = None, extra: str = "") -> Score:
    r = list(rows)
    share = float(np.mean(covered[r])) if covered is not None else float("nan")
    return Score(label, len(r), mape(predicted[r], y[r]), within(predicted[r], y[r]), mape(baseline[r], y[r]),
                 within(baseline[r], y[r]), share, extra)


@dataclass(frozen=True)
class FamilyOut:
    """Leave-family-out predictions of one table, its baseline and each row's interval."""

    calibration: Calibration
    predicted: np.ndarray
    baseline: np.ndarray
    covered: np.ndarray
    halfwidth: np.ndarray

    @property
    def measured(self) -> np.ndarray:
        return self.calibration.measured


def family_out(calibration: Calibration) -> FamilyOut:
    specs = [r.spec for r in calibration.table.rows]
    folds = family_folds(specs)
    predicted = leave_family_out(calibration)
    groups = [calibration.model.group_key(c) for c in calibration.cases]
    _, halfwidth = coverage(predicted, calibration.measured, folds, groups)
    covered = np.abs(np.log(predicted / calibration.measured)) <= halfwidth + 1e-12
    naive = naive_macs(calibration.cases, calibration.measured, folds)
    return FamilyOut(calibration, predicted, naive, covered, halfwidth)


def _errors(result: FamilyOut, rows: Sequence[int]) -> str:
    names = [r.spec.removeprefix("torchvision:").removeprefix("thesis:") for r in result.calibration.table.rows]
    error = result.predicted / result.measured - 1
    return ", ".join(f"{names[i]} {100 * error[i]:+.1f}%" for i in rows)


def zcu104() -> list[str]:
    calibration = prepare("zcu104", data("zcu104_dpu.csv"))
    result = family_out(calibration)
    y, rows = result.measured, range(result.measured.size)
    loo = leave_one_out(calibration)
    specs = [r.spec for r in calibration.table.rows]
    families = sorted({family_of(s) for s in specs})
    merged = len(calibration.table.merged)
    extra = (f"{len(families)} families ({', '.join(families)}); {merged} repeated measurement(s) averaged; "
             f"leave-one-out (from the prior) for comparison: MAPE {mape(loo, y):.1f}%, within 10% "
             f"{100 * within(loo, y):.0f}%; median 90% band +-{100 * (np.exp(np.median(result.halfwidth)) - 1):.0f}%")
    lines = [score("zcu104 / zcu104_dpu.csv / family out", rows, result.predicted, result.baseline, y,
                   result.covered, extra).markdown()]
    pruned = [i for i, s in enumerate(specs) if s in PRUNED]
    lines.append(score("zcu104 / thesis pruned nets (family out)", pruned, result.predicted, result.baseline, y,
                       result.covered, _errors(result, pruned)).markdown())
    worst = sorted(rows, key=lambda i: -abs(result.predicted[i] / y[i] - 1))[:6]
    lines.append(f"|   worst zcu104 rows | | | | | | | {_errors(result, worst)} |")
    return lines


RPI4_TABLES = "rpi.csv + rpi_runtimes.csv"


def rpi4() -> list[str]:
    calibration = prepare("rpi4", [data("rpi.csv"), data("rpi_runtimes.csv")])
    result = family_out(calibration)
    y, cases = result.measured, calibration.cases
    lines = []
    for precision in ("fp32", "int8"):
        for threads in (4, 1):
            rows = [i for i, c in enumerate(cases) if c.precision == precision and c.threads == threads]
            runtimes = sorted({cases[i].runtime.partition("@")[0] for i in rows})
            split = "; ".join(f"{rt}: MAPE {mape(result.predicted[r], y[r]):.1f}% (n={len(r)})" for rt in runtimes
                              for r in [[i for i in rows if cases[i].runtime.startswith(rt)]])
            lines.append(score(f"rpi4 / {RPI4_TABLES} / {threads} thread(s), {precision} (family out)", rows,
                               result.predicted, result.baseline, y, result.covered, split).markdown())
    ort = [i for i, c in enumerate(cases) if c.runtime.startswith("onnxruntime")]
    lines.append(score("rpi4 / rpi_runtimes.csv / onnxruntime fp32, 4 threads (family out)", ort, result.predicted,
                       result.baseline, y, result.covered, _errors(result, ort)).markdown())
    everything = range(y.size)
    lines.append(score(f"rpi4 / {RPI4_TABLES} / all rows (family out)", everything, result.predicted, result.baseline,
                       y, result.covered, f"{len(family_folds([r.spec for r in calibration.table.rows]))} families; "
                       f"{len(calibration.table.merged)} repeated measurement(s) averaged").markdown())
    return lines


def rpi5() -> list[str]:
    """The Pi 5's own ncnn rows: fitted on them (family out) against the pure transfer of the Pi 4 profile,
    which never saw a Pi 5 row - the evidence behind fitting rpi5 on its own rows."""
    calibration = prepare("rpi5", data("rpi_runtimes.csv"))
    result = family_out(calibration)
    y, model, rows = result.measured, calibration.model, range(result.measured.size)
    moved = to_rpi5_params(load_builtin("rpi4").params)
    theta = to_theta(model.params, {**model.defaults(), **{k: v for k, v in moved.items() if k in model.defaults()}})
    transferred = calibration.predict(theta, rows)
    transfers = score_transfers()  # the two Pi 4 -> Pi 5 transfers, family out (benchmarks.rpi5_transfer)
    at = rows_of(calibration.table, transfers.pairs, "rpi5")
    naive = result.baseline[at]
    return [score("rpi5 / rpi_runtimes.csv / ncnn, own rows (family out)", rows, result.predicted, result.baseline, y,
                  result.covered, f"{len(family_folds([r.spec for r in calibration.table.rows]))} families").markdown(),
            score("rpi5 / rpi_runtimes.csv / ncnn, the rpi4 fit transferred (no Pi 5 row used)", rows, transferred,
                  result.baseline, y, np.zeros(y.size, bool), "old clock rule; coverage not applicable").markdown(),
            score("rpi5 / ncnn, the rpi4 fit moved by the clock rule (family out)", range(len(at)), transfers.old,
                  naive, transfers.measured, None, "the Pi 4 fit refitted without the family").markdown(),
            score("rpi5 / ncnn, the rpi4 fit moved by the ncnn Pi 5/Pi 4 ratio (family out)", range(len(at)),
                  transfers.ratio, naive, transfers.measured, None, "what rpi5's onnxruntime now uses; Pi 4 fit "
                  "and ratio without the family").markdown()]


def split_scores(by_policy: dict[str, Calibration], train: Sequence[int], test: Sequence[int],
                 restarts: int = 2) -> dict[str, float]:
    """Fit from the prior on `train` (graph policy chosen on `train` too), score on `test`; the interval
    from 5-fold residuals inside `train`."""
    fit = choose_policy(subset(next(iter(by_policy.values())), train))
    theta = fit_rows(fit, range(len(train)), fit.prior, restarts=restarts)
    calibration = by_policy[fit.policy]
    predicted = calibration.predict(theta, list(test))
    y = calibration.measured[list(test)]
    inner = leave_family_out(fit, restarts=1, max_folds=5)
    q = conformal_halfwidth(np.log(inner / fit.measured))
    macs = np.array([c.network.macs_literal for c in calibration.cases], float)
    k = np.exp(np.mean(np.log(calibration.measured[list(train)] / macs[list(train)])))
    return {"mape": mape(predicted, y), "within": within(predicted, y), "spearman": spearman(predicted, y),
            "median": float(np.median(np.abs(predicted / y - 1))),
            "covered": float(np.mean(np.abs(np.log(predicted / y)) <= q)), "band": float(np.exp(q) - 1),
            "naive_mape": mape(k * macs[list(test)], y), "naive_within": within(k * macs[list(test)], y),
            "naive_spearman": spearman(macs[list(test)], y), "no_fold": float(fit.policy == "no_fold")}


def nb201() -> list[str]:
    calibration = prepare("rpi4", data("nb201_raspi4_sample.csv"))
    by_policy = {p: with_graph_policy(calibration, p) for p in POLICIES}
    n = calibration.measured.size
    runs = []
    for seed in range(NB201_SPLITS):
        order = np.random.default_rng(seed).permutation(n)
        runs.append(split_scores(by_policy, order[:NB201_TRAIN].tolist(), order[NB201_TRAIN:].tolist()))
    mean = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    test = n - NB201_TRAIN
    per_split = ", ".join(f"{100 * r['within']:.0f}%" for r in runs)
    policy = "no_fold" if sum(r["no_fold"] for r in runs) * 2 > NB201_SPLITS else "optimised"
    same = replicate_agreement([executed_signature(c.network) for c in by_policy[policy].cases],
                               calibration.measured)
    extra = (f"fit on {NB201_TRAIN}, scored on {test}, mean of {NB201_SPLITS} random splits; median |error| "
             f"{100 * mean['median']:.1f}%; Spearman "
             f"{mean['spearman']:.3f} (naive {mean['naive_spearman']:.3f}); within 10% per split "
             f"{per_split}; 90% band +-{100 * mean['band']:.0f}%; "
             f"graph policy chosen on each split's 200 rows: 'no_fold' in {sum(r['no_fold'] for r in runs):.0f} of "
             f"{NB201_SPLITS}; the table against itself: {same.rows} rows share their executed graph ('{policy}') "
             f"with another row ({same.groups} graphs), {100 * same.within:.0f}% of them within 10% of their "
             f"graph's median (median deviation {100 * same.median_error:.1f}%), a ceiling for any model of the "
             "executed graph")
    return [f"| rpi4 / nb201_raspi4_sample.csv / random splits | {test} | {mean['mape']:.1f}% | "
            f"{100 * mean['within']:.0f}% | {mean['naive_mape']:.1f}% | {100 * mean['naive_within']:.0f}% | "
            f"{100 * mean['covered']:.0f}% | {extra} |"]


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
    lines = ["| rule (compute vs memory per layer) | zcu104 family-out MAPE / within 10% | rpi4 fit MAPE (all rows) |",
             "|---|---|---|"]
    for dpu_rule, arm_rule in (("max", "sum"), ("sum", "max")):
        dpu = prepare("zcu104", data("zcu104_dpu.csv"), combine=dpu_rule)
        loo = leave_family_out(dpu)
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
    parser.add_argument("--quick", action="store_true",
                        help="ZCU104 and the Raspberry Pi tables only: skip NAS-Bench-201, the alternatives and the "
                             "host runs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("## Hardware model accuracy (held-out predictions)\n")
    print(HEADER)
    for section in (zcu104, rpi4, rpi5) if args.quick else (zcu104, rpi4, rpi5, nb201):
        for line in section():
            print(line, flush=True)
    print("\nzcu102 and kv260 have no measurements of their own (transferred from zcu104): not scored. rpi5's "
          "onnxruntime parameters are rpi4's moved by the ncnn Pi 5 / Pi 4 ratio (no Pi 5 onnxruntime rows): "
          "scored only through the ncnn rows above (python -m benchmarks.rpi5_transfer).\n")
    if not args.quick:
        print("\n".join(alternatives()) + "\n")
    for line in ([] if args.quick else host()) + speed():
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
