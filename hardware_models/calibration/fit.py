"""Fit a target's parameters to a measurement table and write a profile (also the CLI).

    python -m hardware_models.calibrate --target zcu104 --measurements hardware_models/data/zcu104_dpu.csv \
        --out profile.json

Every row is interpreted with the board, runtime, threads, precision and clock it was measured at;
the fitted parameters are then transferred to the requested target (ZCU102 and Raspberry Pi 5 have no
rows of their own). Prints, per row, the measured, fitted and leave-one-out latencies.

Few-shot: a table of your own board with fewer than 30 rows (5-20 is typical) *adapts* the target's
built-in profile - a MAP fit that shrinks towards its parameters - instead of fitting a dozen parameters
from scratch (`--from-scratch` to force that, `--adapt PROFILE` to adapt another profile):

    python -m hardware_models.calibrate --target rpi4 --measurements my_ten_rows.csv --out my_pi.json

Several files are fitted as one table (`--measurements a.csv b.csv`); rows whose board names another
Raspberry Pi than the target's are skipped and listed. The rows `rpi/run_onnx.py --benchmark` writes name
the ONNX file they timed (`onnx:PATH`, relative to the CSV), so pruned networks calibrate too. `--out` never
replaces a built-in profile (`--builtin` regenerates those from the packaged data); name the written file as
a study target instead: `[hardware] targets = ["rpi4", "my_pi.json"]`.

Every profile also stores the leave-family-out residuals' conformal quantiles, which set the 90%
intervals of `estimate()`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hardware_models.calibration import int8_fit
from hardware_models.estimators import arm
from hardware_models.estimators import dpu
from hardware_models.estimators import int8_speed
from hardware_models.estimators.costmodel import Case
from hardware_models.estimators.costmodel import CostModel
from hardware_models.estimators.costmodel import LayerTable
from hardware_models.estimators.costmodel import stack_tables
from hardware_models.fitting.intervals import borrow_interval
from hardware_models.fitting.intervals import interval_summary
from hardware_models.fitting.least_squares import fit_log
from hardware_models.fitting.least_squares import from_theta
from hardware_models.fitting.least_squares import identifiable
from hardware_models.fitting.least_squares import kfold_indices
from hardware_models.fitting.least_squares import mape
from hardware_models.fitting.least_squares import to_theta
from hardware_models.fitting.least_squares import within
from hardware_models.graph.executed import POLICIES
from hardware_models.graph.executed import extract_spec
from hardware_models.graph.executed import with_policy
from hardware_models.measurements.table import Measurement
from hardware_models.measurements.table import MeasurementTable
from hardware_models.measurements.table import board_key
from hardware_models.measurements.table import deduplicate
from hardware_models.measurements.table import load_tables
from hardware_models.measurements.table import only_board
from hardware_models.measurements.validation import family_folds
from hardware_models.profiles import Profile
from hardware_models.profiles import builtin_profile_path
from hardware_models.profiles import load_profile
from hardware_models.profiles import save_profile
from hardware_models.targets import TargetSpec
from hardware_models.targets import builtin_power
from hardware_models.targets import cost_model
from hardware_models.targets import get_target

# Weight of the physical defaults (a weak prior, see fitting.fit_log).
PRIOR_WEIGHT = 0.1
# Weight of an existing profile's parameters when a few measurements adapt it (few-shot calibration):
# sigma / tau with sigma ~ 0.1 (a row's typical log error) and tau ~ 0.33 (a new board or build moves a
# parameter by about a third). A MAP fit: with 5 rows the profile dominates, with 300 the rows do. Set
# from that reasoning, not tuned on any held-out rows.
ADAPT_PRIOR_WEIGHT = 0.3
# The CLI adapts the target's built-in profile when a table has fewer rows than this.
ADAPT_BELOW = 30
# At most this many leave-family-out refits for the interval residuals (families are never split).
FAMILY_FOLDS = 20


@dataclass(frozen=True)
class Calibration:
    """A fitted model over the rows of one table, ready for cross-validation."""

    spec: TargetSpec
    model: CostModel
    table: MeasurementTable
    cases: tuple[Case, ...]
    layers: tuple[LayerTable, ...]
    theta: np.ndarray
    prior: np.ndarray
    policy: str = "optimised"
    prior_weight: float = PRIOR_WEIGHT
    prior_source: str = "physical defaults"

    @property
    def measured(self) -> np.ndarray:
        return np.array([r.latency_ms for r in self.table.rows])

    def predict(self, theta: np.ndarray, rows: Sequence[int]) -> np.ndarray:
        return self.model.predict_theta(theta, self.stacked(rows))

    def stacked(self, rows: Sequence[int]) -> LayerTable:
        return self.model.compact(stack_tables([self.layers[i] for i in rows]))


def _board(spec: TargetSpec, row: Measurement) -> str:
    if spec.family == "dpu" and row.board:
        return dpu.board_of(row.board)
    return board_key(row.board) or spec.board if spec.family == "arm" else spec.board


def _arm_builds(spec: TargetSpec, rows: Sequence[Measurement]) -> dict[int, str]:
    """Row -> build tag for rows from a non-reference build (the reference runs at the board's clock)."""
    tags: dict[int, str] = {}
    default_clock = arm.ARM_BOARDS[spec.board].clock_ghz
    for runtime in {arm.runtime_of(r.runtime) for r in rows}:
        mine = [r for r in rows if arm.runtime_of(r.runtime) == runtime]
        builds = Counter(arm.build_of(r.source) for r in mine)
        at_clock = [arm.build_of(r.source) for r in mine if r.clock_ghz in (0.0, default_clock)]
        reference = Counter(at_clock).most_common(1)[0][0] if at_clock else builds.most_common(1)[0][0]
        tags.update({r.row: arm.build_of(r.source) for r in mine if arm.build_of(r.source) != reference})
    return tags


def cases_for(spec: TargetSpec, table: MeasurementTable) -> tuple[list[Case], tuple[str, ...]]:
    builds = _arm_builds(spec, table.rows) if spec.family == "arm" else {}
    cases = []
    for row in table.rows:
        network = extract_spec(row.spec, row.input_shape)
        if spec.family == "dpu":
            runtime = dpu.runtime_of(row.runtime) if row.runtime else spec.default_runtime
        else:
            runtime = arm.runtime_of(row.runtime) if row.runtime else spec.default_runtime
            runtime += f"@{builds[row.row]}" if row.row in builds else ""
        cases.append(Case(network=network, board=_board(spec, row), threads=row.threads or spec.default_threads,
                          precision=row.precision or spec.default_precision, runtime=runtime,
                          clock_ghz=row.clock_ghz))
    return cases, tuple(sorted(set(builds.values())))


def fit_rows(calibration: Calibration, rows: Sequence[int], theta0: np.ndarray, restarts: int) -> np.ndarray:
    """Fit each independent parameter group on its own rows (ARM: runtime x precision)."""
    theta = theta0.copy()
    model, cases = calibration.model, calibration.cases
    groups: dict[str, list[int]] = {}
    for i in rows:
        groups.setdefault(model.group_key(cases[i]), []).append(i)
    for key, members in sorted(groups.items()):  # fp32 before int8: a tied int8 group follows its fp32 fit
        stacked = calibration.stacked(members)
        y = np.array([calibration.table.rows[i].latency_ms for i in members])
        if int8_speed.tied_source(key):  # one int8 speed factor on the fp32 group, fitted to the int8/fp32 ratios
            y = int8_fit.ratio_targets(calibration, key, members, rows, theta)
            theta = int8_fit.fit_factor(model, stacked, y, theta, key, calibration.prior, calibration.prior_weight,
                                          restarts)
            continue
        free = np.zeros(theta.size, bool)
        free[model.group_params(key)] = True

        def predict(t: np.ndarray, s: LayerTable = stacked) -> np.ndarray:
            return model.predict_theta(t, s)

        free = identifiable(predict, theta, free)
        theta = fit_log(predict, y, theta, free, restarts=restarts, prior=calibration.prior,
                        prior_weight=calibration.prior_weight)
    return theta


def _fit_contention(calibration: Calibration, theta: np.ndarray) -> np.ndarray:
    """DPU only: the DDR-sharing factor from the multi-thread FPS column, when the table has one."""
    model = calibration.model
    rows = [i for i, r in enumerate(calibration.table.rows) if not math.isnan(r.fps_multi_thread)]
    if not isinstance(model, dpu.DpuModel) or not rows:
        return theta
    stacked = stack_tables([calibration.layers[i] for i in rows])
    fps = np.array([calibration.table.rows[i].fps_multi_thread for i in rows])
    free = np.array([s.name == "memory_contention" for s in model.params])

    def predict(t: np.ndarray) -> np.ndarray:
        return model.multi_core_fps(from_theta(model.params, t), stacked)

    return fit_log(predict, fps, theta, free, restarts=1)


def with_graph_policy(calibration: Calibration, policy: str) -> Calibration:
    cases = tuple(dataclasses.replace(c, network=with_policy(c.network, policy)) for c in calibration.cases)
    return dataclasses.replace(calibration, cases=cases, layers=tuple(calibration.model.table(c) for c in cases),
                               policy=policy)


def _log_rms(calibration: Calibration, theta: np.ndarray) -> float:
    predicted = calibration.predict(theta, range(len(calibration.cases)))
    return float(np.sqrt(np.mean(np.log(predicted / calibration.measured) ** 2)))


def choose_policy(calibration: Calibration) -> Calibration:
    """The graph policy (what the measured runtime folds/removes) that fits the table best.

    Only policies that change some row's executed layers are tried; ties keep the full optimisation.
    Each candidate is fitted from the prior, with the calibration's prior weight.
    """
    best, best_error = calibration, math.inf
    seen: set[tuple] = set()
    for policy in POLICIES:
        candidate = with_graph_policy(calibration, policy)
        key = tuple(tuple(c.network.status) for c in candidate.cases)
        if key in seen:
            continue
        seen.add(key)
        error = _log_rms(candidate, fit_rows(candidate, range(len(candidate.cases)), candidate.prior, 1))
        if error < best_error - 1e-9:
            best, best_error = candidate, error
    return best


def prepare(target: str, measurements: str | Path | Sequence[str | Path], combine: str | None = None,
            base: Profile | None = None, prior_weight: float | None = None) -> Calibration:
    """Load, trace and fit; `combine` swaps the model's compute/memory rule (to compare alternatives).

    With `base` (an existing profile) the fit *adapts* it: its parameters are the prior (weight
    ADAPT_PRIOR_WEIGHT) - a handful of rows cannot pin a dozen parameters, but they can correct the ones
    they are sensitive to. The graph policy is still chosen by the rows (ties keep the full optimisation).
    """
    spec = get_target(target)
    if spec.family == "host":
        raise SystemExit("error: the host target is measured, not calibrated; pick one of "
                         "zcu104, zcu102, kv260, rpi4, rpi5")
    table = deduplicate(read_table(measurements))
    if spec.family == "arm":
        table = only_board(table, spec.board)
    if not table.rows:
        raise SystemExit(f"error: {measurements} has no usable rows (need spec, input and a latency)")
    cases, builds = cases_for(spec, table)
    model = cost_model(spec.family, spec.board, builds, combine)
    layers = tuple(model.table(c) for c in cases)
    theta0 = to_theta(model.params, model.defaults())
    calibration = Calibration(spec, model, table, tuple(cases), layers, theta0, theta0)
    if base is not None:
        calibration = adapt_from(calibration, base, prior_weight)
    calibration = choose_policy(calibration)
    theta0 = calibration.prior
    theta = fit_rows(calibration, range(len(cases)), theta0, restarts=4 if len(cases) < 100 else 2)
    return dataclasses.replace(calibration, theta=_fit_contention(calibration, theta))


def read_table(measurements: str | Path | Sequence[str | Path]) -> MeasurementTable:
    """One measurement file, or several read as one table."""
    return load_tables([measurements] if isinstance(measurements, (str, Path)) else list(measurements))


def adapt_from(calibration: Calibration, base: Profile, prior_weight: float | None = None) -> Calibration:
    """The same rows, with `base`'s parameters as the prior (parameters it lacks keep their defaults)."""
    model = calibration.model
    values = {**model.defaults(), **{k: v for k, v in base.params.items() if k in model.defaults()}}
    prior = to_theta(model.params, values)
    source = f"{base.target} profile ({base.calibration.get('measurements', '?')})"
    return dataclasses.replace(calibration, prior=prior, theta=prior, prior_source=source,
                               prior_weight=ADAPT_PRIOR_WEIGHT if prior_weight is None else prior_weight)


def leave_one_out(calibration: Calibration, rows: Sequence[int] | None = None) -> np.ndarray:
    """Prediction of each row (all when `rows` is None) by a fit on every other row; NaN elsewhere."""
    n = len(calibration.cases)
    return held_out(calibration, [[i] for i in (range(n) if rows is None else rows)], restarts=1)


def held_out(calibration: Calibration, folds: Sequence[Sequence[int]], restarts: int = 2) -> np.ndarray:
    """Predictions of each fold's rows by a fit on all other rows; NaN for rows in no fold.

    Every refit starts from the prior, never from `calibration.theta`: that fit saw the held-out rows, and
    starting next to it leaks them into the score.
    """
    n = len(calibration.cases)
    out = np.full(n, np.nan)
    for held in folds:
        train = sorted(set(range(n)) - set(held))
        theta = fit_rows(calibration, train, calibration.prior, restarts=restarts)
        out[list(held)] = calibration.predict(theta, list(held))
    return out


def leave_family_out(calibration: Calibration, restarts: int = 2, max_folds: int | None = None) -> np.ndarray:
    """Each row predicted by a fit on the rows of every *other* architecture family (validation.family_of)."""
    folds = family_folds([r.spec for r in calibration.table.rows], max_folds)
    return held_out(calibration, folds, restarts=restarts)


def cross_validate(calibration: Calibration, folds: int, seed: int = 0) -> np.ndarray:
    """Out-of-fold predictions of every row (k-fold, deterministic shuffle)."""
    return held_out(calibration, [f.tolist() for f in kfold_indices(len(calibration.cases), folds, seed)])


def leave_network_out(calibration: Calibration) -> np.ndarray:
    """Stricter than leave-one-out: every row of the same network (other clock/threads/precision) is held out."""
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(calibration.table.rows):
        groups.setdefault(row.spec, []).append(i)
    return held_out(calibration, list(groups.values()), restarts=1)


def measured_thread_counts(calibration: Calibration) -> dict[str, list[int]]:
    """Per parameter group, the thread counts its rows were measured at: a prediction at another count
    extrapolates the multi-thread terms (onnxruntime's rows are all at 4 threads), and says so."""
    found: dict[str, set[int]] = {}
    for case in calibration.cases:
        found.setdefault(calibration.model.group_key(case), set()).add(case.threads)
    return {g: sorted(t) for g, t in sorted(found.items())}


def measured_threads(calibration: Calibration) -> int:
    """The thread count a profile predicts at by default: the most common one among the rows of the target's
    default runtime (a profile fitted on 1-thread rows should not extrapolate to 4), else the target's."""
    spec = calibration.spec
    threads = Counter(c.threads for c in calibration.cases if c.runtime.partition("@")[0] == spec.default_runtime)
    return threads.most_common(1)[0][0] if threads else spec.default_threads


def make_profile(calibration: Calibration, loo: np.ndarray | None = None,
                 family_out: np.ndarray | None = None) -> Profile:
    """The fitted parameters and their provenance; with `family_out` predictions, the interval residuals."""
    spec, model = calibration.spec, calibration.model
    fitted = calibration.predict(calibration.theta, range(len(calibration.cases)))
    y = calibration.measured
    summary: dict[str, object] = {
        "measurements": calibration.table.name, "sha256": calibration.table.sha256,
        "files": dict(calibration.table.files),
        "calibrated_board": spec.board,
        "rows_used": len(y), "rows_skipped": len(calibration.table.skipped),
        "fit_mape_pct": mape(fitted, y), "fit_within_10pct": within(fitted, y),
        "builds": list(getattr(model, "builds", ())),
        "prior": calibration.prior_source, "prior_weight": calibration.prior_weight,
        **({"calibrated_config": dpu.config_of(dpu.DPU_BOARDS[spec.board])} if spec.family == "dpu" else {}),
        "fitted_groups": sorted({model.group_key(c) for c in calibration.cases}),
        "threads_measured": measured_thread_counts(calibration),
    }
    if loo is not None:
        summary.update(loo_mape_pct=mape(loo, y), loo_within_10pct=within(loo, y))
    if family_out is not None:
        summary.update(family_out_mape_pct=mape(family_out, y), family_out_within_10pct=within(family_out, y),
                       merged_rows=list(calibration.table.merged),
                       interval=interval_summary(np.log(family_out / y),
                                                 [model.group_key(c) for c in calibration.cases],
                                                 [c.network.macs for c in calibration.cases]))
    params = from_theta(model.params, calibration.theta)
    if spec.family == "arm":
        params, borrowed = arm.borrow_unmeasured(params, summary["fitted_groups"])
        summary["unmeasured_groups"] = {g: list(v) for g, v in borrowed.items()}
        summary["int8_speed"] = int8_fit.summarize(params, [model.group_key(c) for c in calibration.cases],
                                                     calibration.table.rows, y, fitted, borrowed,
                                                     calibration.table.name)
        summary["threads_measured"].update({g: summary["threads_measured"][v[0]] for g, v in borrowed.items()})
        if "interval" in summary:
            summary["interval"] = borrow_interval(summary["interval"], {g: v[0] for g, v in borrowed.items()})
    profile = Profile(
        target=spec.name, family=spec.family, board=spec.board,
        params=params, power=builtin_power(spec.name),
        default_runtime=spec.default_runtime, default_threads=measured_threads(calibration),
        default_precision=spec.default_precision,
        runtimes=tuple(sorted({c.runtime.partition("@")[0] for c in calibration.cases})),
        graph_policy=calibration.policy,
        assumptions=tuple(reason for _, reason in summary.get("unmeasured_groups", {}).values()), calibration=summary,
        config=dpu.config_of(dpu.DPU_BOARDS[spec.board]) if spec.family == "dpu" else {})
    return spec.transfer(profile) if spec.transfer else profile


def _report(calibration: Calibration, loo: np.ndarray | None, family_out: np.ndarray | None = None) -> str:
    fitted = calibration.predict(calibration.theta, range(len(calibration.cases)))
    lines = [f"{'row':>4} {'network':54s} {'measured':>9} {'fitted':>9} {'err%':>6} {'LOO':>9} {'LOO%':>6}"]
    for i, row in enumerate(calibration.table.rows):
        loo_i = loo[i] if loo is not None else math.nan
        lines.append(f"{row.row:4d} {row.label[:54]:54s} {row.latency_ms:9.3f} {fitted[i]:9.3f} "
                     f"{100 * (fitted[i] / row.latency_ms - 1):6.1f} {loo_i:9.3f} "
                     f"{100 * (loo_i / row.latency_ms - 1):6.1f}")
    y = calibration.measured
    lines.append(f"fit: MAPE {mape(fitted, y):.2f}%  within 10%: {100 * within(fitted, y):.0f}%")
    if loo is not None:
        lines.append(f"leave-one-out: MAPE {mape(loo, y):.2f}%  within 10%: {100 * within(loo, y):.0f}%")
    if family_out is not None:
        lines.append(f"leave-family-out: MAPE {mape(family_out, y):.2f}%  within 10%: "
                     f"{100 * within(family_out, y):.0f}%  (sets the 90% intervals)")
    lines += [f"merged {m}" for m in calibration.table.merged]
    lines += [f"skipped {s}" for s in calibration.table.skipped]
    return "\n".join(lines)


def _base_profile(args: argparse.Namespace) -> Profile | None:
    """The profile a small table adapts (few-shot), or None to fit from the physical defaults."""
    if args.adapt:
        return load_profile(args.adapt)
    if args.from_scratch or args.builtin:
        return None
    rows = len(deduplicate(read_table(args.measurements)).rows)
    path = builtin_profile_path(args.target)
    return load_profile(path) if rows < ADAPT_BELOW and path.is_file() else None


def _measurement_files(args: argparse.Namespace) -> list[str]:
    if args.measurements:
        return list(args.measurements)
    if not args.builtin:
        raise ValueError("--measurements is required: give the CSV file(s) your board's rows are in "
                         "(rpi/run_onnx.py --benchmark writes rpi_benchmark.csv)")
    package = builtin_profile_path(args.target).parent.parent
    return [str(package / name) for name in get_target(args.target).measurements]


def _check_out(out: str | None) -> None:
    """A user's calibration never replaces a built-in profile (that is --builtin, from the packaged data)."""
    if out and Path(out).resolve().parent == builtin_profile_path("rpi4").resolve().parent:
        raise ValueError(f"--out {out} is in the built-in profiles folder; write your profile elsewhere "
                         "(e.g. --out profiles/my_pi.json) and name that path as a target")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hardware_models.calibrate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="zcu104, zcu102, kv260, rpi4 or rpi5")
    parser.add_argument("--measurements", nargs="+", help="CSV file(s) in the format of hardware_models/data, "
                        "fitted as one table (default with --builtin: the target's packaged files)")
    parser.add_argument("--out", help="profile JSON to write (default: print only); never a built-in profile")
    parser.add_argument("--builtin", action="store_true", help="write hardware_models/profiles/TARGET.json")
    parser.add_argument("--adapt", metavar="PROFILE", help="adapt this profile JSON (default: the target's "
                        f"built-in profile when the table has fewer than {ADAPT_BELOW} rows)")
    parser.add_argument("--from-scratch", action="store_true",
                        help="fit from the physical defaults even for a small table (implied by --builtin)")
    parser.add_argument("--no-loo", action="store_true",
                        help="skip the leave-one-out and leave-family-out refits (the profile then has no "
                             "calibrated interval: estimates get a nominal factor-of-2 band)")
    args = parser.parse_args(argv)
    try:
        args.measurements = _measurement_files(args)
        _check_out(args.out)
        base = _base_profile(args)
        calibration = prepare(args.target, args.measurements, base=base)
    except (KeyError, ValueError, FileNotFoundError) as error:
        parser.exit(2, f"error: {error.args[0] if error.args else error}\n")
    loo = None if args.no_loo else leave_one_out(calibration)
    family_out = None if args.no_loo else leave_family_out(calibration, max_folds=FAMILY_FOLDS)
    print(f"prior: {calibration.prior_source} (weight {calibration.prior_weight:g})")
    print(_report(calibration, loo, family_out))
    profile = make_profile(calibration, loo, family_out)
    for runtime, entry in profile.calibration.get("int8_speed", {}).items():
        print(int8_speed.describe(runtime, entry))
    out = builtin_profile_path(args.target) if args.builtin else args.out
    if out:
        save_profile(profile, out)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
