"""The contract every analytical cost model implements, and the batch it predicts on.

A `Case` is one network on one board setting (threads, precision, runtime, clock). A family turns a case
into a `LayerTable` of per-layer numbers (cycles, MACs, bytes) once; its `predict` then maps parameter
values to per-layer milliseconds with numpy only. Calibration stacks the tables of all measurement rows
and calls the same `predict` thousands of times, so `estimate()` and the fit can never disagree.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field

import numpy as np

from hardware_models.fitting.least_squares import ParamSpec
from hardware_models.graph.executed import Network


@dataclass(frozen=True, kw_only=True)
class Case:
    """One network under one setting; `board` names the board the setting refers to."""

    network: Network
    board: str
    threads: int = 1
    precision: str = "int8"
    runtime: str = ""
    clock_ghz: float = 0.0       # 0: the board's default clock
    # Per-layer kernels of a mixed-precision graph, (layer name, precision); other layers run at `precision`.
    layer_precision: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class LayerTable:
    """Per-layer feature columns of one or many cases; `case` maps each layer row to its case."""

    columns: Mapping[str, np.ndarray]
    case: np.ndarray
    case_columns: Mapping[str, np.ndarray]
    names: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    n_cases: int = 1

    def __getitem__(self, key: str) -> np.ndarray:
        return self.columns[key]

    def per_layer_case(self, key: str) -> np.ndarray:
        """A case-level column broadcast to the layer rows."""
        return self.case_columns[key][self.case]


def stack_tables(tables: Sequence[LayerTable]) -> LayerTable:
    keys = tables[0].columns.keys()
    case_keys = tables[0].case_columns.keys()
    offsets = np.cumsum([0] + [t.n_cases for t in tables[:-1]])
    return LayerTable(
        columns={k: np.concatenate([t.columns[k] for t in tables]) for k in keys},
        case=np.concatenate([t.case + o for t, o in zip(tables, offsets, strict=True)]),
        case_columns={k: np.concatenate([t.case_columns[k] for t in tables]) for k in case_keys},
        names=tuple(n for t in tables for n in t.names),
        kinds=tuple(k for t in tables for k in t.kinds),
        n_cases=int(sum(t.n_cases for t in tables)),
    )


@dataclass(frozen=True)
class Prediction:
    """Per-layer milliseconds plus a per-case fixed part (runtime call overhead)."""

    layer_ms: np.ndarray
    fixed_ms: np.ndarray
    compute_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    memory_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def bound(self) -> list[str]:
        """Per layer: which roofline term is larger."""
        return ["compute" if c >= m else "memory" for c, m in zip(self.compute_ms, self.memory_ms, strict=True)]

    def totals(self, table: LayerTable) -> np.ndarray:
        return np.bincount(table.case, self.layer_ms, minlength=table.n_cases) + self.fixed_ms


class CostModel(abc.ABC):
    """A hardware family (DPU, ARM CPU): parameters, features, prediction, assumptions."""

    family: str = ""
    params: tuple[ParamSpec, ...] = ()

    @abc.abstractmethod
    def table(self, case: Case) -> LayerTable:
        """Per-layer features of one case."""

    @abc.abstractmethod
    def predict(self, values: Mapping[str, float], table: LayerTable) -> Prediction:
        """Per-layer and fixed milliseconds for the given parameter values."""

    def require(self, values: Mapping[str, float], where: str) -> None:
        """Refuse parameter values written by an older version of this model (a profile from before a parameter
        was renamed or added, like the DPU's `alu_cycle_factor`): a clear error instead of a KeyError inside
        `predict`."""
        missing = sorted(set(self._names()) - set(values))
        if missing:
            raise ValueError(f"{where} lacks {self.family} parameters {missing} (written by an older model); "
                             "recalibrate it with python -m hardware_models.calibrate")

    def predict_theta(self, theta: np.ndarray, table: LayerTable) -> np.ndarray:
        floors = np.array([s.floor for s in self.params])
        values = dict(zip(self._names(), (floors + np.exp(np.clip(theta, -40.0, 40.0))).tolist(), strict=True))
        return self.predict(values, table).totals(table)

    def _names(self) -> list[str]:
        return [s.name for s in self.params]

    def compact(self, table: LayerTable) -> LayerTable:
        """A smaller table with the same per-case totals (for fitting); identity unless a model is linear."""
        return table

    def group_key(self, case: Case) -> str:
        """Cases whose parameters are disjoint from other groups' are fitted separately (faster)."""
        return ""

    def group_params(self, key: str) -> list[int]:
        """Indices of the parameters the latency of a group's cases depends on."""
        return list(range(len(self.params)))

    def defaults(self) -> dict[str, float]:
        return {s.name: s.default for s in self.params}
