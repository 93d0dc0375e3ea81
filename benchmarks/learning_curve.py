"""Few-shot calibration: held-out error against the number of measurements a model is fitted on.

    python -m benchmarks.learning_curve            # NAS-Bench-201 on the Raspberry Pi 4 and the ZCU104 table
    python -m benchmarks.learning_curve --quick    # ZCU104 only

For each size n: fit on n random rows, score on all the others, over several random splits. Two ways to
fit: *scratch* (the physical defaults as a weak prior, as `calibrate --from-scratch` does) and *adapted*
(a MAP fit shrinking towards an existing profile, as `calibrate` does for small tables). For NAS-Bench-201
the adapted prior is the built-in rpi4 profile, fitted on `rpi.csv` + `rpi_runtimes.csv` (ImageNet-sized
networks: no NAS-Bench-201 row is in it); NB201's rows name no runtime, so they adapt its default
(onnxruntime fp32) parameters. The ZCU104 table has no independent DPU profile to adapt, so there the
second curve shrinks towards the physical defaults with the adaptation weight.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch

from hardware_models.calibration.fit import ADAPT_PRIOR_WEIGHT
from hardware_models.calibration.fit import Calibration
from hardware_models.calibration.fit import adapt_from
from hardware_models.calibration.fit import choose_policy
from hardware_models.calibration.fit import fit_rows
from hardware_models.calibration.fit import prepare
from hardware_models.calibration.fit import with_graph_policy
from hardware_models.fitting.least_squares import mape
from hardware_models.fitting.least_squares import spearman
from hardware_models.fitting.least_squares import within
from hardware_models.graph.executed import POLICIES
from hardware_models.profiles import load_builtin

NB201_SIZES = (5, 10, 20, 50, 100, 200, 250)
ZCU104_SIZES = (5, 10, 12)


@dataclass(frozen=True)
class Point:
    size: int
    variant: str
    mape: float
    within: float
    spearman: float
    splits: int

    def markdown(self) -> str:
        return (f"| {self.size} | {self.variant} | {self.mape:.1f}% | {100 * self.within:.0f}% | "
                f"{self.spearman:.3f} | {self.splits} |")


HEADER = ("| fitted rows | prior | MAPE (rest) | within 10% (rest) | Spearman (rest) | splits |\n"
          "|---|---|---|---|---|---|")


def subset(calibration: Calibration, rows: Sequence[int]) -> Calibration:
    """The calibration restricted to some rows (same traced networks, same prior)."""
    keep = list(rows)
    table = dataclasses.replace(calibration.table, rows=tuple(calibration.table.rows[i] for i in keep))
    return dataclasses.replace(calibration, table=table, cases=tuple(calibration.cases[i] for i in keep),
                               layers=tuple(calibration.layers[i] for i in keep))


def fit_and_score(by_policy: dict[str, Calibration], train: Sequence[int], test: Sequence[int],
                  restarts: int = 1) -> tuple[float, float, float]:
    """Fit from the prior on `train` (graph policy chosen on `train` too); (MAPE, within 10%, Spearman) on `test`."""
    fit = choose_policy(subset(next(iter(by_policy.values())), train))
    theta = fit_rows(fit, range(len(fit.cases)), fit.prior, restarts=restarts)
    full = by_policy[fit.policy]
    predicted = full.predict(theta, list(test))
    y = full.measured[list(test)]
    return mape(predicted, y), within(predicted, y), spearman(predicted, y)


def curve(variants: dict[str, Calibration], sizes: Sequence[int], splits: int) -> list[Point]:
    """Mean held-out scores per (size, variant); every variant sees the same random splits."""
    n = next(iter(variants.values())).measured.size
    points = []
    by_policy = {name: {p: with_graph_policy(c, p) for p in POLICIES} for name, c in variants.items()}
    for size in (s for s in sizes if s < n):
        orders = [np.random.default_rng(seed).permutation(n) for seed in range(splits)]
        for name in variants:
            scores = np.array([fit_and_score(by_policy[name], o[:size].tolist(), o[size:].tolist())
                               for o in orders])
            points.append(Point(size, name, *scores.mean(axis=0).tolist(), splits))
    return points


def data(name: str) -> str:
    """The path of a measurement table packaged with hardware_models."""
    return str(resources.files("hardware_models").joinpath(f"data/{name}"))


def nb201(splits: int = 5) -> list[str]:
    scratch = prepare("rpi4", data("nb201_raspi4_sample.csv"))
    base = load_builtin("rpi4")
    adapted = adapt_from(scratch, base)
    variants = {"scratch (physical defaults, weight 0.1)": scratch,
                f"adapted (built-in rpi4 profile, weight {ADAPT_PRIOR_WEIGHT:g})": adapted}
    points = curve(variants, NB201_SIZES, splits)
    return [f"NAS-Bench-201 on the Raspberry Pi 4 ({scratch.measured.size} cells; the graph policy is chosen "
            "on each split's fitted rows):", "", HEADER,
            *(p.markdown() for p in points)]


def zcu104(splits: int = 20) -> list[str]:
    scratch = prepare("zcu104", data("zcu104_dpu.csv"))
    shrunk = dataclasses.replace(scratch, prior_weight=ADAPT_PRIOR_WEIGHT,
                                 prior_source="physical defaults (adaptation weight)")
    variants = {"scratch (physical defaults, weight 0.1)": scratch,
                f"shrunk (physical defaults, weight {ADAPT_PRIOR_WEIGHT:g})": shrunk}
    points = curve(variants, ZCU104_SIZES, splits)
    return [f"ZCU104 table ({scratch.measured.size} rows after averaging repeats):", "", HEADER,
            *(p.markdown() for p in points)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.learning_curve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the ZCU104 table only")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("## Learning curve: held-out error against the number of measurements\n")
    for section in (zcu104,) if args.quick else (zcu104, nb201):
        print("\n".join(section()) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
