"""pareto.png: accuracy against latency on each target, the front highlighted, the baselines marked; and
hypervolume.png: the normalised hypervolume against wall time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers, CI or Ray workers

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import pandas as pd  # noqa: E402

from evaluators import metric_names as names  # noqa: E402
from search.analysis.pareto import staircase  # noqa: E402
from search.engine.history import HypervolumePoint  # noqa: E402

TEST = names.column("f3", "test_accuracy")  # what the front and the baselines are drawn at


def _numeric(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    if frame.empty or any(c not in frame for c in columns):
        return pd.DataFrame({c: pd.Series(dtype=float) for c in [*columns, "label"]})
    out = frame.copy()
    for c in columns:
        out[c] = pd.to_numeric(out[c], errors="coerce")
    return out.dropna(subset=list(columns))


FLAT = 0.03  # a cost that varies by less than this fraction across the front is said to be flat on the panel
LOG_SPAN = 10.0  # log axes only when the values span at least this factor; below it log ticks go unlabelled
CASCADE_REACH = 1.25  # cascades further right than this factor past every other point sit on the panel's edge


def flat_note(values: Sequence[float], what: str) -> str | None:
    """"latency varies < 3% across the front" when it does: the panel's axis would otherwise stretch noise."""
    v = [float(x) for x in values]
    if len(v) < 2 or max(v) <= 0:
        return None
    spread = (max(v) - min(v)) / max(v)
    return f"{what} varies < {FLAT:.0%} across the front ({spread:.1%})" if spread < FLAT else None


def _axis(ax: plt.Axes, values: pd.Series) -> bool:
    """Log x-axis when the values span a decade or more, linear otherwise; plain readable tick labels either way.
    Returns whether the axis is logarithmic."""
    positive = values[values > 0]
    log = len(positive) > 1 and positive.max() / positive.min() >= LOG_SPAN
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    else:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=6))
    formatter = matplotlib.ticker.ScalarFormatter(useOffset=False)
    formatter.set_scientific(False)
    ax.xaxis.set_major_formatter(formatter)
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    return log


def cascade_edge(shown: Sequence[float], cascades: Sequence[float]) -> float | None:
    """Where a panel's latency axis ends when cascades lie far right of every other point (None: they fit).

    A cascade's expected latency adds the teacher's whenever it escalates, so it can sit 20x past the front; an
    axis stretched to it squashes the front, the baselines and the trials into one column at the left."""
    if not len(shown) or not len(cascades):
        return None
    edge = max(shown) * CASCADE_REACH
    return edge if max(cascades) > edge else None


def _cascades(ax: plt.Axes, c: pd.DataFrame, lat: str, shown: pd.Series) -> None:
    """Cascades within reach as diamonds; those beyond `cascade_edge` as arrows on the edge, their range named."""
    if not len(c):
        return
    edge = cascade_edge(shown.tolist(), c[lat].tolist())
    inside = c if edge is None else c[c[lat] <= edge]
    beyond = c.drop(index=inside.index)
    if len(inside):
        ax.scatter(inside[lat], inside[TEST], marker="D", s=40, c="tab:purple", zorder=4,
                   label="cascades (expected latency, test)")
    if edge is not None and len(beyond):
        ax.scatter([edge] * len(beyond), beyond[TEST], marker=">", s=60, c="tab:purple", zorder=4,
                   label=f"{len(beyond)} cascade(s) beyond the axis, at {beyond[lat].min():.3g}-"
                         f"{beyond[lat].max():.3g} ms (test)")
        ax.set_xlim(right=edge * 1.03)


def _front(ax: plt.Axes, front: pd.DataFrame, lat: str, test: str = TEST) -> None:
    """The projection's own non-dominated staircase joined; the other front members marked, not joined."""
    f = _numeric(front, lat, test)
    if "state" in f:
        f = f[f["state"] != "FAIL"]
    steps = staircase(f[test].tolist(), f[lat].tolist())
    on = f.iloc[steps]
    others = f.drop(index=on.index)
    ax.plot(on[lat], on[test], "o", c="tab:red", ms=6, drawstyle="steps-post", ls="-",
            label="front, non-dominated in this projection (F3, test)")
    ax.scatter(others[lat], others[test], s=40, facecolors="none", edgecolors="tab:red",
               label="other front members (kept by other objectives)")
    note = flat_note(f[lat].tolist(), "latency")
    if note:
        ax.text(0.02, 0.02, note, transform=ax.transAxes, fontsize=8, color="tab:red",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "tab:red"})


def pareto_plot(path: Path, trials: pd.DataFrame, front: pd.DataFrame, baselines: pd.DataFrame,
                targets: Sequence[str], *, title: str, highlight: dict[str, float] | None = None) -> None:
    """One panel per target, its accuracy the target's own where the study scored one (`accuracy_zcu104`: the DPU's
    arithmetic), else `accuracy`. Grey: every trial at F2 (validation). Red: the front at F3 (test): its members that
    are non-dominated in this panel's two axes joined as a staircase, the others as open circles (a many-objective
    front is not a curve in any one projection). Blue squares: the baseline recipes at F3 (test).
    Purple diamonds: cascades that joined the front (expected latency, test accuracy); arrows on the right edge
    for those far past every other point (`cascade_edge`). `highlight`
    ({"latency_<t>": x, "accuracy": y}) marks one point, e.g. the recipe an export bundle holds."""
    fig, axes = plt.subplots(1, len(targets), figsize=(6.5 * len(targets), 5), squeeze=False)
    is_cascade = front["cascade"].fillna(False).astype(bool) if "cascade" in front else pd.Series(False, front.index)
    cascades, front = front[is_cascade], front[~is_cascade]
    for ax, target in zip(axes[0], targets, strict=True):
        lat = names.latency(target)
        lat2, lat3 = names.column("f2", lat), names.column("f3", lat)
        own = names.per_target(names.PerTarget.ACCURACY, target)
        acc = own if names.column("f2", own) in trials else "accuracy"
        acc2, test3 = names.column("f2", acc), names.column("f3", names.on_test(acc))
        t = _numeric(trials, lat2, acc2)
        ax.scatter(t[lat2], t[acc2], s=14, c="0.65", label="trials (F2, validation)")
        _front(ax, front, lat3, test3)
        b = _numeric(baselines, lat3, test3)
        ax.scatter(b[lat3], b[test3], marker="s", s=36, c="tab:blue", label="baselines (F3, test)")
        for _, row in b.iterrows():
            ax.annotate(str(row.get("label", ""))[:24], (row[lat3], row[test3]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points", color="tab:blue")
        if highlight and lat in highlight:
            ax.scatter([highlight[lat]], [highlight["accuracy"]], marker="*", s=260, c="gold", edgecolors="k",
                       zorder=5, label="this bundle (test)")
        shown = pd.concat([t[lat2], _numeric(front, lat3)[lat3], b[lat3]])
        log = _axis(ax, shown) if len(shown) else False
        _cascades(ax, _numeric(cascades, lat3, test3), lat3, shown)
        if not len(shown):
            ax.text(0.5, 0.5, "no trial was scored (all rejected or failed)", ha="center", transform=ax.transAxes)
        ax.set_xlabel(f"modelled latency on {target} (ms{', log scale' if log else ''})")
        ax.set_ylabel("top-1 accuracy (%)" if acc == "accuracy" else f"top-1 accuracy (%), {target}'s arithmetic")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def hypervolume_plot(path: Path, history: Sequence[HypervolumePoint], *, title: str) -> None:
    """The normalised hypervolume of the F2 front against wall time: how fast the search found what it found."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    if history:
        ax.plot([h.minutes for h in history], [h.hypervolume for h in history], drawstyle="steps-post",
                marker=".", c="tab:red")
    else:
        ax.text(0.5, 0.5, "no trial finished", ha="center", transform=ax.transAxes)
    ax.set_xlabel("wall time since the first trial started (min)")
    ax.set_ylabel("normalised hypervolume (F2 front, validation)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
