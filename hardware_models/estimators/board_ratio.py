"""The Raspberry Pi 5 from what both boards share: the Pi 5 / Pi 4 speed ratio that ncnn measured on both.

The calibration data has no onnxruntime (or PyTorch) row on a Pi 5, but ncnn's benchmark timed the same
networks at the same threads and precision on both boards (33 pairs, 9 architecture families). The ratio of
each pair's latencies is what the Pi 5 does better than the Pi 4 on that network, whatever the reason (work
per cycle of the Cortex-A76, its caches, the faster LPDDR4X, the clock). A Pi 4 profile's runtime parameters
move to the Pi 5 through that ratio: every term of a Pi 4 prediction - compute, memory, fixed costs - is divided
by it, so an onnxruntime prediction on the Pi 5 is the Pi 4's divided by what ncnn measured. One ratio per
precision, the geometric mean of the pairs' ratios (the least-squares fit in log space): the ratios vary little
with the network (fp32: 4.2x-7.3x) and not with the thread count (1 and 4 threads: 5.9x both).

The rule it replaces moved the Pi 4 parameters by the clock (2.4 / 1.8) and nominal memory transfer rates
(4267 / 3200): every prediction 1.33x faster, while ncnn measured 3.2x-7.3x, and the same rule applied to the
Pi 4 ncnn fit predicted the measured Pi 5 ncnn rows about 4x too slow (`benchmarks.rpi5_transfer`).

What else the ncnn ratio carries, and so the transfer does too (the profile says so):
- benchncnn computes "fp32" models in fp16 on an ARMv8.2 core (its default `use_fp16_arithmetic`): the Pi 5's
  fp32 rows ran fp16 arithmetic, the Pi 4's (ARMv8.0, no fp16 arithmetic) fp32. onnxruntime's fp32 kernels do
  not, so the fp32 ratio likely overstates onnxruntime's Pi 5 gain.
- the Pi 4 rows (1.8 GHz) were measured with ncnn as of June 2023, the Pi 5 rows with ncnn as of December 2023:
  half a year of ncnn's own improvements is in the ratio as well.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from importlib import resources
from typing import Any

import numpy as np

from hardware_models.estimators.arm import ARM_BOARDS
from hardware_models.estimators.arm import runtime_of
from hardware_models.measurements.table import Measurement
from hardware_models.measurements.table import MeasurementTable
from hardware_models.measurements.table import board_key
from hardware_models.measurements.table import deduplicate
from hardware_models.measurements.table import load_tables
from hardware_models.measurements.validation import family_folds

# The packaged files whose ncnn rows of both boards give the built-in ratio.
PAIR_FILES = ("rpi.csv", "rpi_runtimes.csv")
PAIR_RUNTIME = "ncnn"
SOURCE, TARGET = "rpi4", "rpi5"


@dataclass(frozen=True, kw_only=True)
class BoardPair:
    """One network, input, thread count and precision measured on both boards by the same runtime."""

    spec: str
    input_shape: tuple[int, ...]
    threads: int
    precision: str
    source_ms: float
    target_ms: float

    @property
    def ratio(self) -> float:
        """How many times faster the target board ran it."""
        return self.source_ms / self.target_ms


@dataclass(frozen=True, kw_only=True)
class SpeedRatio:
    """Per precision, how many times faster the target board runs what the source board runs."""

    source: str
    target: str
    runtime: str
    ratio: Mapping[str, float]
    pairs: Mapping[str, int]
    low: Mapping[str, float]  # smallest per-network ratio of each precision
    high: Mapping[str, float]  # largest
    families: int
    files: Mapping[str, str] = field(default_factory=dict)  # file name -> sha256 of the measurements

    def __post_init__(self) -> None:
        if not self.ratio or any(not (math.isfinite(r) and r > 0) for r in self.ratio.values()):
            raise ValueError(
                f"a {self.source} -> {self.target} speed ratio needs positive finite ratios, got {dict(self.ratio)}"
            )

    def of(self, precision: str) -> float:
        """The ratio of `precision`, or over all pairs where that precision has none."""
        if precision in self.ratio:
            return float(self.ratio[precision])
        total = sum(self.pairs.values())
        return float(math.exp(sum(math.log(self.ratio[p]) * n for p, n in self.pairs.items()) / total))

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.source,
            "to": self.target,
            "runtime": self.runtime,
            "method": f"per precision, the geometric mean of the {self.runtime} latency ratios "
            f"{self.source} / {self.target} of the networks measured on both boards",
            "ratio": dict(self.ratio),
            "pairs": dict(self.pairs),
            "range": {p: [self.low[p], self.high[p]] for p in self.ratio},
            "families": self.families,
            "files": dict(self.files),
        }


def _setting(row: Measurement) -> tuple:
    return row.spec, row.input_shape, row.threads, row.precision


def board_pairs(
    table: MeasurementTable, source: str = SOURCE, target: str = TARGET, runtime: str = PAIR_RUNTIME
) -> tuple[BoardPair, ...]:
    """The `runtime` rows of `target` that the table also has for `source`, at the source board's own clock
    (ncnn's older 1.5 GHz Pi 4 rows are another build at another clock: not a like-for-like pair)."""
    clock = ARM_BOARDS[source].clock_ghz
    mine = [r for r in table.rows if runtime_of(r.runtime) == runtime]
    before = {_setting(r): r for r in mine if board_key(r.board) == source and r.clock_ghz in (0.0, clock)}
    return tuple(
        BoardPair(
            spec=r.spec,
            input_shape=r.input_shape,
            threads=r.threads,
            precision=r.precision,
            source_ms=before[_setting(r)].latency_ms,
            target_ms=r.latency_ms,
        )
        for r in mine
        if board_key(r.board) == target and _setting(r) in before
    )


def speed_ratio(
    pairs: Sequence[BoardPair],
    files: Mapping[str, str] | None = None,
    source: str = SOURCE,
    target: str = TARGET,
    runtime: str = PAIR_RUNTIME,
) -> SpeedRatio:
    """The geometric mean of the pairs' ratios, per precision."""
    if not pairs:
        raise ValueError(
            f"no network was measured on both {source} and {target} with {runtime}: no speed ratio can be fitted"
        )
    by_precision: dict[str, list[float]] = {}
    for pair in pairs:
        by_precision.setdefault(pair.precision or "fp32", []).append(pair.ratio)
    return SpeedRatio(
        source=source,
        target=target,
        runtime=runtime,
        ratio={p: float(np.exp(np.mean(np.log(r)))) for p, r in sorted(by_precision.items())},
        pairs={p: len(r) for p, r in sorted(by_precision.items())},
        low={p: min(r) for p, r in sorted(by_precision.items())},
        high={p: max(r) for p, r in sorted(by_precision.items())},
        families=len(family_folds([p.spec for p in pairs])),
        files=dict(files or {}),
    )


def family_out_ratios(pairs: Sequence[BoardPair]) -> np.ndarray:
    """Each pair's ratio as predicted by the pairs of every *other* architecture family (validation.family_of):
    how well the ratio carries to a network unlike the measured ones."""
    out = np.full(len(pairs), np.nan)
    for held in family_folds([p.spec for p in pairs]):
        out_of_fold = set(held)
        train = [p for i, p in enumerate(pairs) if i not in out_of_fold]
        ratio = speed_ratio(train)
        for i in held:
            out[i] = ratio.of(pairs[i].precision)
    return out


def move_params(
    params: Mapping[str, float], ratio: float, source: str = SOURCE, target: str = TARGET
) -> dict[str, float]:
    """ARM parameters of `source` that predict every latency `ratio` times shorter on `target`, at each board's
    own clock: compute rates x ratio x (source clock / target clock) - the target's clock already shortens
    compute - bandwidths x ratio, fixed costs / ratio. Thread scaling and build factors are unchanged."""
    clock = ARM_BOARDS[source].clock_ghz / ARM_BOARDS[target].clock_ghz
    out = {}
    for name, value in params.items():
        if name.endswith("_per_cycle"):
            value *= ratio * clock
        elif name.endswith("_gbps"):
            value *= ratio
        elif name.endswith(("_us", "_ms")):
            value /= ratio
        out[name] = value
    return out


def packaged_tables() -> MeasurementTable:
    folder = resources.files("hardware_models").joinpath("data")
    return deduplicate(load_tables([str(folder.joinpath(name)) for name in PAIR_FILES]))


@functools.lru_cache(maxsize=1)
def packaged_speed_ratio() -> SpeedRatio:
    """The built-in Pi 5 / Pi 4 ratio, from the packaged ncnn rows of both boards."""
    table = packaged_tables()
    return speed_ratio(board_pairs(table), files=dict(table.files))
