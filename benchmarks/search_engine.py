"""`python -m benchmarks.search_engine`: how good the engine's proxies and sampler are, and what it costs.

(a) proxy fidelity: Kendall tau of F1 and of F2 validation accuracy against F3's, over N random recipes
    of the study's space (default 24);
(b) search efficiency: hypervolume of the F2 front after N trials, the configured sampler against random
    search with the same N, averaged over seeds (one shared reference point per seed: accuracy 0 and 1.1 x
    the worst cost either run saw);
(c) overhead: the engine's own time per trial (ask, suggest, tell, storage) against the evaluation time;
(d) scaling: wall time of the same N trials with the local backend and with 1 and 2 Ray workers;
(e) promotion at equal wall time: MO-ASHA, the fixed F1 -> F2 ladder and random search (with the ladder), each
    given the same search budget per seed, with its own result store and student cache (no run reuses another's
    work); the normalised hypervolume of the F2 front against wall time (the study's reference box), its value at
    the budget, and the time each method needs to reach the ladder's final hypervolume.

Every number is measured on the study's splits as the search uses them (validation for F1/F2/F3
accuracy); nothing here reads the test split. Results go to stdout (markdown) and `--out/benchmark.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna

from evaluators.candidate import Fidelity
from evaluators.candidate import ResultStore
from search.analysis.objectives import direction
from search.analysis.pareto import hypervolume
from search.analysis.pareto import pareto_mask
from search.analysis.reference import ReferenceBox
from search.analysis.stats import kendall_tau
from search.engine import loop as engine
from search.engine.budget import Clock
from search.engine.budget import describe_duration
from search.engine.history import HypervolumePoint
from search.engine.history import hypervolume_history
from search.engine.loop import SamplerKind
from search.engine.promotion import PromotionKind
from search.pipeline.context import RunSpec
from search.pipeline.context import load_context
from spaces.space import SearchSpace


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.search_engine", description=__doc__.split("\n\n")[0])
    p.add_argument("--study", default="mlp_mnist")
    p.add_argument("--profile", default="smoke")
    p.add_argument("--out", default="runs/benchmarks/search_engine")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--recipes", type=int, default=24, help="(a) random recipes scored at F1, F2 and F3")
    p.add_argument("--trials", type=int, default=40, help="(b) trials per search")
    p.add_argument("--seeds", type=int, default=3, help="(b) seeds averaged")
    p.add_argument("--ray-trials", type=int, default=12, help="(d) trials per Ray run (0 skips d)")
    p.add_argument("--race-seconds", type=int, default=300, help="(e) search wall time per method and seed")
    p.add_argument("--race-seeds", type=int, default=3, help="(e) seeds per method")
    p.add_argument("--only", default="abcde", help="which parts to run, e.g. 'ab'")
    return p.parse_args(argv)


def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def proxy_fidelity(ctx, n: int, seed: int = 123) -> dict:  # noqa: ANN001 - a search.pipeline.context.Context
    """(a): n distinct random recipes, each at F1, F2 and F3."""
    space = SearchSpace(ctx.config.space, ctx.config.teacher.arch, ctx.config.data.resolution)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    seen, rows = set(), []
    for _ in range(20 * n):
        if len(rows) >= n:
            break
        recipe = space.suggest(study.ask())
        if recipe.hash() in seen:
            continue
        seen.add(recipe.hash())
        try:
            acc = [ctx.evaluator.evaluate(recipe, level)["accuracy"] for level in Fidelity]
        except Exception as err:  # noqa: BLE001 - a failing recipe is skipped and counted
            print(f"  skipped a failing recipe: {err}", file=sys.stderr)
            continue
        rows.append(acc)
        print(f"  (a) {len(rows)}/{n}: F1 {acc[0]:.2f}  F2 {acc[1]:.2f}  F3 {acc[2]:.2f}", file=sys.stderr, flush=True)
    a = np.array(rows)
    return {"recipes": len(rows), "tau_f1_f3": kendall_tau(a[:, 0], a[:, 2]),
            "tau_f2_f3": kendall_tau(a[:, 1], a[:, 2])}


def _search(ctx, sampler: SamplerKind, seed: int, trials: int) -> tuple[np.ndarray, float, float]:  # noqa: ANN001
    """One search as `search.run` does it, SQLite storage included (so (c) counts its cost)."""
    config = dataclasses.replace(ctx.config.search, sampler=sampler, seed=seed, trials=trials)
    objectives, constraints = ctx.plan.objectives, ctx.plan.constraints
    db = ctx.out / f"{sampler.value}-{seed}.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    db.unlink(missing_ok=True)
    study = engine.open_study("bench", f"sqlite:///{db.resolve()}", config, objectives)
    space = SearchSpace(ctx.config.space, ctx.config.teacher.arch, ctx.config.data.resolution)
    evaluation = 0.0
    t0 = time.monotonic()
    for trial, recipe in engine.asked(study, space, trials):
        outcome = engine.evaluate_trial(ctx.evaluator, recipe, constraints)
        evaluation += outcome.seconds
        engine.tell(study, trial, recipe, outcome, objectives, constraints)
    total = time.monotonic() - t0
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return np.array([t.values for t in done]), total, evaluation


def efficiency(ctx, trials: int, seeds: int) -> dict:  # noqa: ANN001
    """(b) and (c): the configured sampler against random search, same budget, same evaluator."""
    objectives = ctx.plan.objectives
    dirs = [direction(o) for o in objectives]
    mine, rand, overhead = [], [], []
    for seed in range(seeds):
        ours, total, evaluation = _search(ctx, ctx.config.search.sampler, seed, trials)
        theirs, _, _ = _search(ctx, SamplerKind.RANDOM, seed, trials)
        both = np.vstack([ours, theirs])
        ref = [0.0 if d == "max" else 1.1 * both[:, i].max() for i, d in enumerate(dirs)]
        mine.append(hypervolume(ours, ref, dirs))
        rand.append(hypervolume(theirs, ref, dirs))
        overhead.append(((total - evaluation) / trials, evaluation / trials))
        print(f"  (b) seed {seed}: {ctx.config.search.sampler.value} {mine[-1]:.4g} vs random {rand[-1]:.4g} "
              f"(front sizes {pareto_mask(ours, dirs).sum()} / {pareto_mask(theirs, dirs).sum()})", file=sys.stderr,
              flush=True)
    engine_s, eval_s = np.mean(overhead, axis=0)
    return {"sampler": ctx.config.search.sampler.value, "trials": trials, "seeds": seeds,
            "hypervolume": mine, "hypervolume_random": rand,
            "mean_ratio": float(np.mean(np.array(mine) / np.array(rand))),
            "wins": int(sum(m > r for m, r in zip(mine, rand, strict=True))),
            "engine_seconds_per_trial": float(engine_s), "evaluation_seconds_per_trial": float(eval_s)}


SCALING_RUNS = (("local", 1), ("ray", 1), ("ray", 2))  # (backend, workers)


def ray_scaling(args: argparse.Namespace, out: Path) -> dict:
    """(d): the same N trials from scratch with the local backend, and with Ray at 1 and 2 workers.

    Each run is a fresh process with its own result store (the teacher cached, so no run trains it). Threads
    are the tool's own choice: the local backend and a lone Ray worker use every core, two workers one each.
    `wall_s` includes process, data and Ray start; `work_s` is the search and the final stage (summary.json).
    """
    rows = []
    for backend, workers in SCALING_RUNS:
        folder = out / f"{backend}{workers}"
        shutil.rmtree(folder, ignore_errors=True)
        cmd = [sys.executable, "-m", "search.run", "--study", args.study, "--profile", args.profile, "--out",
               str(folder), "--backend", backend, "--workers", str(workers), "--trials", str(args.ray_trials),
               "--no-progress"] + (["--data-root", args.data_root] if args.data_root else []) + \
              (["--cache-dir", args.cache_dir] if args.cache_dir else [])
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the tool picks the threads
        t0 = time.monotonic()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        wall = time.monotonic() - t0
        work = float(json.loads((folder / "summary.json").read_text())["search and final stage seconds (this run)"])
        rows.append({"backend": backend, "workers": workers, "wall_s": wall, "work_s": work})
        print(f"  (d) {backend} x{workers}: {wall:.1f} s wall, {work:.1f} s search + final stage", file=sys.stderr,
              flush=True)
    return {"trials": args.ray_trials, "runs": rows}


# (e): method -> (sampler, None for the study's own; promotion)
RACE: dict[str, tuple[SamplerKind | None, PromotionKind]] = {
    "moasha": (None, PromotionKind.MOASHA), "ladder": (None, PromotionKind.LADDER),
    "random": (SamplerKind.RANDOM, PromotionKind.LADDER)}


def _race_run(ctx, box: ReferenceBox, method: str, seed: int, seconds: int,  # noqa: ANN001 - a Context
              folder: Path) -> list[HypervolumePoint]:
    """One search given `seconds` of wall time, as `search.run` runs it (SQLite storage, the engine's loop)."""
    sampler, promotion = RACE[method]
    config = dataclasses.replace(ctx.config.search, sampler=sampler or ctx.config.search.sampler,
                                 promotion=promotion, seed=seed, trials=100_000, budget=describe_duration(seconds))
    run = folder / f"{method}-{seed}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    evaluator = dataclasses.replace(ctx.evaluator, store=ResultStore(run / "results"), cache_dir=run / "cache",
                                    checkpoints=None)
    objectives, constraints = ctx.plan.objectives, ctx.plan.constraints
    study = engine.open_study("race", f"sqlite:///{(run / 'study.db').resolve()}", config, objectives)
    engine.seed_students(study, config, ctx.config.space.students)
    loop = engine.Loop(objectives, constraints, config.trials, engine.make_promoter(study, config, objectives),
                       Clock.of_study(study, config.budget_seconds))
    space = SearchSpace(ctx.config.space, ctx.config.teacher.arch, ctx.config.data.resolution)
    engine.run_local(study, space, evaluator, loop,
                     engine.Progress(config.trials, 0, lambda line: None))
    return hypervolume_history(study, box)


def value_at(history: list[HypervolumePoint], minutes: float) -> float:
    """The hypervolume reached by `minutes` of wall time (0 before the first F2 point)."""
    return max([h.hypervolume for h in history if h.minutes <= minutes], default=0.0)


def time_to(history: list[HypervolumePoint], target: float) -> float | None:
    """The first wall time (minutes) at which the hypervolume reached `target`; None when it never did."""
    return next((h.minutes for h in history if h.hypervolume >= target and h.hypervolume > 0), None)


def race(ctx, seconds: int, seeds: int, folder: Path) -> dict:  # noqa: ANN001 - a search.pipeline.context.Context
    """(e): every method per seed, seeds interleaved so that a change in machine load hits all methods alike."""
    from search.pipeline.study import reference_box

    box, minutes = reference_box(ctx), seconds / 60
    curves: dict[str, list[list[HypervolumePoint]]] = {m: [] for m in RACE}
    for seed in range(seeds):
        for method in RACE:
            curves[method].append(_race_run(ctx, box, method, seed, seconds, folder))
            print(f"  (e) seed {seed} {method}: hypervolume {value_at(curves[method][-1], minutes):.4g} after "
                  f"{len(curves[method][-1])} trials", file=sys.stderr, flush=True)
    final = {m: [value_at(c, minutes) for c in cs] for m, cs in curves.items()}
    reach = {m: [time_to(c, target) for c, target in zip(cs, final["ladder"], strict=True)]
             for m, cs in curves.items()}
    mean = {m: float(np.mean(v)) for m, v in final.items()}
    return {"seconds": seconds, "seeds": seeds, "hypervolume": final, "mean": mean,
            "ratio_to_ladder": {m: (v / mean["ladder"] if mean["ladder"] else float("nan")) for m, v in mean.items()},
            "minutes_to_ladder_final": reach,
            "trials": {m: [len(c) for c in cs] for m, cs in curves.items()},
            "curves": {m: [[(h.minutes, h.hypervolume) for h in c] for c in cs] for m, cs in curves.items()}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = RunSpec.from_study(args.study, args.profile, str(out / "cache"), data_root=args.data_root,
                              cache_dir=args.cache_dir)
    _quiet()
    ctx = load_context(spec)
    found: dict = {"study": args.study, "profile": args.profile}
    if "a" in args.only:
        found["proxy_fidelity"] = proxy_fidelity(ctx, args.recipes)
    if "b" in args.only or "c" in args.only:
        found["efficiency"] = efficiency(ctx, args.trials, args.seeds)
    if "d" in args.only and args.ray_trials:
        found["ray"] = ray_scaling(args, out)
    if "e" in args.only:
        found["race"] = race(ctx, args.race_seconds, args.race_seeds, out / "race")
    (out / "benchmark.json").write_text(json.dumps(found, indent=2))
    print(report(found))
    return 0


def report(found: dict) -> str:
    lines = [f"# Search-engine benchmark: {found['study']} ({found['profile']})", ""]
    if "proxy_fidelity" in found:
        a = found["proxy_fidelity"]
        lines.append(f"- (a) Kendall tau over {a['recipes']} random recipes (validation accuracy): "
                     f"F1 vs F3 {a['tau_f1_f3']:.3f}, F2 vs F3 {a['tau_f2_f3']:.3f}")
    if "efficiency" in found:
        b = found["efficiency"]
        pairs = ", ".join(f"{m:.4g}/{r:.4g}" for m, r in zip(b["hypervolume"], b["hypervolume_random"], strict=True))
        lines.append(f"- (b) hypervolume after {b['trials']} trials, {b['sampler']} vs random, {b['seeds']} seeds: "
                     f"{pairs}"
                     f"; mean ratio {b['mean_ratio']:.3f}, {b['wins']} wins of {b['seeds']}")
        lines.append(f"- (c) engine overhead {b['engine_seconds_per_trial'] * 1000:.0f} ms per trial against "
                     f"{b['evaluation_seconds_per_trial']:.2f} s of evaluation")
    if "ray" in found:
        d = found["ray"]
        lines += [f"- (d) {d['trials']} trials from scratch (teacher cached):", "",
                  "| backend | workers | wall s | search + final stage s |", "|---|---|---|---|"]
        lines += [f"| {r['backend']} | {r['workers']} | {r['wall_s']:.1f} | {r['work_s']:.1f} |" for r in d["runs"]]
        lines.append("")
    if "race" in found:
        lines += race_lines(found["race"])
    return "\n".join(lines)


def race_lines(e: dict) -> list[str]:
    """(e) as markdown: the mean normalised hypervolume at equal wall time and the time to reach the ladder's."""
    lines = [f"- (e) {e['seconds']} s of search per method, {e['seeds']} seeds (normalised hypervolume of the F2 "
             "front, the study's box):", "", "| method | trials | hypervolume per seed | mean | vs ladder | "
             "minutes to the ladder's final value |", "|---|---|---|---|---|---|"]
    for m in e["hypervolume"]:
        per_seed = ", ".join(f"{v:.4g}" for v in e["hypervolume"][m])
        reach = ", ".join("never" if t is None else f"{t:.1f}" for t in e["minutes_to_ladder_final"][m])
        lines.append(f"| {m} | {', '.join(map(str, e['trials'][m]))} | {per_seed} | {e['mean'][m]:.4g} | "
                     f"{e['ratio_to_ladder'][m]:.2f}x | {reach} |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
