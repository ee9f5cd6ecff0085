"""Any-time comparison on the synthetic mixture, whose optimum is known: the router (one
budget-conditioned agent) against Optuna TPE, NSGA-II and random search, per budget.

:class:`router.synthetic.SyntheticMixture` gives every (expert, block) a known loss-vs-size
curve, so the best allocation under a MACs budget is an exact knapsack
(:meth:`~router.synthetic.SyntheticMixture.optimum`); every curve here is the gap to it,
``loss / optimum - 1``, of the best allocation within the budget found so far.

- **router**: one budget-conditioned agent trained once for all budgets
  (:func:`router.fit_agents`; its relaxed training evaluations are counted apart), then per
  budget the default decode: the knapsack on the agent's learned values
  (:func:`router.knapsack_decode`, no exact evaluation) and the bounded repair
  (:func:`router.bounded_repair`, at most ``--max-repair-evaluations``, default 32, the
  decode's own evaluation included), every exact evaluation recorded in order. ``E`` = those
  evaluations. The former decode of the same agent (calibrated argmax, then the unbounded
  repair/fill/exchange of :func:`router.make_feasible`) is recorded beside it.
- **search**: the project's search conventions on a plain in-memory Optuna study per budget
  and sampler (:func:`nas.search.study.make_sampler`): the widest uniform arch within the
  budget is enqueued first; TPE and random skip a proposal over the budget without evaluating
  it (told pruned, with its constraint) and evaluate it shrunk to the budget instead
  (:func:`nas.search.allocations.shrink_to_budget`); NSGA-II evaluates every proposal with its
  constraint; a repeated architecture is answered from the cache and does not count. Each
  study stops at its sampler's cap of exact evaluations (TPE's cost per trial grows with the
  trials, so its cap is lower).

Reported per (seed, budget, sampler): the search's gap at ``E`` and at ``10 E`` (``null`` when
``10 E`` is beyond the cap, with the gap at the cap beside it), the evaluations the search needed
to reach the router's final loss and the agent's decode loss, and whether the router is within
1% of the search at ``10 E`` (the target of issue 13, item 4).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/anytime_synthetic.py            # seeds 0 1 2
    python benchmarks/anytime_synthetic.py --seeds 0 --caps tpe=200 nsga2=500 random=500

Results: ``benchmarks/results/anytime-synthetic.{json,md,png}`` with the machine and command.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nas.search.allocations import shrink_to_budget, uniform_width_arch  # noqa: E402
from nas.search.study import CONSTRAINT_NAME, make_sampler  # noqa: E402
from router import (RouterSettings, bounded_repair, calibrate_budget, fit_agents, knapsack_decode,  # noqa: E402
                    make_feasible)
from router.synthetic import SyntheticMixture  # noqa: E402
from search_spaces import Arch  # noqa: E402

__all__ = ["DEFAULT_CAPS", "run_benchmark", "router_runs", "search_run", "summarise"]

log = logging.getLogger("benchmarks.anytime_synthetic")

BUDGETS = (0.3, 0.5, 0.7)
SAMPLERS = ("tpe", "nsga2", "random")
#: exact evaluations per study, per sampler (what fits ~10 minutes on one core for 3 seeds)
DEFAULT_CAPS = {"tpe": 400, "nsga2": 2000, "random": 1000}
_EPS = 1e-9


def _improvements(values: Sequence[float | None]) -> list[list[float]]:
    """``[[evaluation, best so far], ...]`` at each evaluation where the best improved (1-based)."""
    out: list[list[float]] = []
    best = math.inf
    for i, v in enumerate(values, start=1):
        if v is not None and v < best - 1e-15:
            best = v
            out.append([i, v])
    return out


def _best_at(improvements: Sequence[Sequence[float]], evaluations: float) -> float | None:
    best = None
    for e, v in improvements:
        if e > evaluations + _EPS:
            break
        best = v
    return best


def _reached(improvements: Sequence[Sequence[float]], value: float) -> int | None:
    for e, v in improvements:
        if v <= value + 1e-12:
            return int(e)
    return None


def router_runs(bench: SyntheticMixture, budgets: Sequence[float], steps: int, seed: int = 0,
                max_repair_evaluations: int = 32) -> dict[str, Any]:
    """Train one budget-conditioned agent, then per budget decode it both ways, recording every
    exact evaluation (as gaps to the optimum): the default knapsack decode on the agent's learned
    values with the repair bounded by ``max_repair_evaluations`` (``budgets``), and the former
    calibrated argmax decode with the unbounded loss-scored repair/fill/exchange
    (``argmax_fill``)."""
    settings = RouterSettings(steps=steps, seed=seed, budget_conditioned=True)
    fitted = fit_agents(bench.space, bench.task_loss, budgets, settings, batched_task_loss=bench.batched_task_loss)
    out: dict[str, Any] = {"train_evaluations": fitted.evaluations, "train_seconds": fitted.train_seconds,
                           "steps": steps, "max_repair_evaluations": max_repair_evaluations, "budgets": {},
                           "argmax_fill": {}}
    for b in budgets:
        agent = fitted.agents[b]
        agent.eval()
        opt = bench.optimum(b).loss
        budget_macs = b * fitted.ref_macs
        for kind in ("knapsack", "argmax_fill"):
            t0 = time.perf_counter()
            gaps: list[float | None] = []

            def arch_loss(arch: Arch, gaps: list[float | None] = gaps) -> float:
                loss = bench.loss(arch)
                feasible = bench.space.macs(arch) <= budget_macs + _EPS
                gaps.append(loss / opt - 1.0 if feasible else None)
                return loss

            if kind == "knapsack":
                decoded = knapsack_decode(bench.space, agent.values, budget_macs)
                decode_seconds = time.perf_counter() - t0
                arch, rec = bounded_repair(bench.space, decoded, budget_macs, arch_loss, agent.values,
                                           max_repair_evaluations)
                steps_rec = {"repair_moves": rec.moves}
            else:
                _, decoded = calibrate_budget(bench.space, agent, b, budget_macs, fitted.budget_range)
                decode_seconds = time.perf_counter() - t0
                gaps.append(bench.loss(decoded) / opt - 1.0
                            if bench.space.macs(decoded) <= budget_macs + _EPS else None)  # the decode's evaluation
                arch, n_rep, n_fill, n_exch, _ = make_feasible(bench.space, decoded, budget_macs, arch_loss)
                steps_rec = {"repair_steps": n_rep, "fill_steps": n_fill, "exchange_steps": n_exch}
            decode_feasible = bench.space.macs(decoded) <= budget_macs + _EPS
            entry = {
                "exact_evaluations": max(len(gaps), 1),
                "decode_gap": bench.loss(decoded) / opt - 1.0 if decode_feasible else None,
                "decode_ratio": bench.space.macs(decoded) / fitted.ref_macs, "decode_s": decode_seconds,
                "final_gap": bench.loss(arch) / opt - 1.0, "final_ratio": bench.space.macs(arch) / fitted.ref_macs,
                **steps_rec, "decode_and_repair_s": time.perf_counter() - t0,
                "curve": _improvements(gaps) if gaps else [[1, bench.loss(arch) / opt - 1.0]],
            }
            out["budgets" if kind == "knapsack" else "argmax_fill"][f"{b:g}"] = entry
    return out


def search_run(bench: SyntheticMixture, budget: float, sampler: str, max_evaluations: int, seed: int = 0,
               max_asks_factor: int = 20) -> dict[str, Any]:
    """One constrained Optuna study of ``sampler`` on ``bench`` under ``budget`` (module
    docstring); stops after ``max_evaluations`` exact evaluations (or ``max_asks_factor`` times
    as many proposals)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = bench.space
    free = [d for d in space.free_dimensions()]
    budget_macs = budget * bench.base_macs
    opt = bench.optimum(budget).loss
    study = optuna.create_study(sampler=make_sampler(sampler, seed, max_evaluations), direction="minimize")
    uniform = uniform_width_arch(space, budget)
    if uniform is not None:
        study.enqueue_trial({d.name: d.index(uniform[d.name]) for d in free})
    skip = sampler in ("tpe", "random")  # the search's skip_infeasible default
    rng = np.random.default_rng(seed)
    cache: dict[Arch, float] = {}
    gaps: list[float | None] = []
    asks = skipped = duplicates = 0
    t0 = time.perf_counter()
    while len(gaps) < max_evaluations and asks < max_asks_factor * max_evaluations:
        trial = study.ask()
        asks += 1
        idx = {d.name: trial.suggest_categorical(d.name, list(range(len(d.choices)))) for d in free}
        arch = space.repair(space.complete({d.name: d.choices[idx[d.name]] for d in free}))
        macs = space.macs(arch)
        constraint = macs / bench.base_macs - budget
        trial.set_constraint(CONSTRAINT_NAME, float(constraint))
        feasible = macs <= budget_macs + _EPS
        if arch in cache:
            duplicates += 1
            study.tell(trial, cache[arch])
            continue
        if skip and not feasible:
            skipped += 1
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            shrunk = shrink_to_budget(space, arch, budget_macs, rng)
            if shrunk is not None and shrunk not in cache:
                study.enqueue_trial({d.name: d.index(shrunk[d.name]) for d in free})
            continue
        loss = bench.loss(arch)
        cache[arch] = loss
        gaps.append(loss / opt - 1.0 if feasible else None)
        study.tell(trial, loss)
    return {"sampler": sampler, "evaluations": len(gaps), "asks": asks, "skipped_infeasible": skipped,
            "duplicates": duplicates, "cap": max_evaluations, "seconds": time.perf_counter() - t0,
            "curve": _improvements(gaps)}


def summarise(router_budget: Mapping[str, Any], search: Mapping[str, Any]) -> dict[str, Any]:
    """The search at the router's exact evaluations ``E`` and at ``10 E``, and the evaluations
    it needed to reach the router's final loss and the agent's decode."""
    e = int(router_budget["exact_evaluations"])
    ten = 10 * e
    at_ten = _best_at(search["curve"], ten) if ten <= search["evaluations"] else None
    final, decode = router_budget["final_gap"], router_budget["decode_gap"]
    return {
        "router_exact_evaluations": e, "search_evaluations": search["evaluations"],
        "gap_at_E": _best_at(search["curve"], e), "gap_at_10E": at_ten, "reaches_10E": ten <= search["evaluations"],
        "gap_at_cap": _best_at(search["curve"], search["evaluations"]),
        "gap_at_10": _best_at(search["curve"], 10),
        "evaluations_to_router": _reached(search["curve"], final),
        "evaluations_to_decode": _reached(search["curve"], decode) if decode is not None else None,
        # issue 13 item 4: the router within 1% of the search's best at 10x its evaluations
        "router_within_1pct_at_10E": None if at_ten is None else bool((1 + final) <= 1.01 * (1 + at_ten)),
        "decode_within_1pct_at_10E": (None if at_ten is None or decode is None
                                      else bool((1 + decode) <= 1.01 * (1 + at_ten))),
        # what is known when 10 E is beyond the cap: the search at its cap is already worse
        "router_better_than_search_at_cap": bool(final <= (_best_at(search["curve"], search["evaluations"])
                                                          or math.inf)),
    }


def run_benchmark(seeds: Sequence[int] = (0, 1, 2), budgets: Sequence[float] = BUDGETS, steps: int = 600,
                  caps: Mapping[str, int] | None = None, instance: Mapping[str, Any] | None = None,
                  max_repair_evaluations: int = 32) -> dict[str, Any]:
    """Router vs the samplers on ``SyntheticMixture.default(seed, **instance)`` for each seed."""
    caps = dict(DEFAULT_CAPS if caps is None else caps)
    rows = []
    for seed in seeds:
        bench = SyntheticMixture.default(seed=seed, **dict(instance or {}))
        t0 = time.perf_counter()
        router = router_runs(bench, budgets, steps, max_repair_evaluations=max_repair_evaluations)
        searches: dict[str, dict[str, Any]] = {}
        for b in budgets:
            for s in caps:
                searches[f"{b:g}/{s}"] = search_run(bench, b, s, caps[s], seed=seed)
                r = searches[f"{b:g}/{s}"]
                log.info("seed %d budget %g %s: %d evaluations (%d proposals) in %.1f s, best gap %s", seed, b, s,
                         r["evaluations"], r["asks"], r["seconds"], f"{r['curve'][-1][1]:.2%}" if r["curve"] else "-")
        summary = {key: summarise(router["budgets"][key.split("/")[0]], v) for key, v in searches.items()}
        rows.append({"seed": seed, "optimum": {f"{b:g}": bench.optimum(b).loss for b in budgets}, "router": router,
                     "search": searches, "summary": summary, "wall_s": time.perf_counter() - t0})
        log.info("seed %d: router gaps %s (exact evaluations %s)", seed,
                 {b: f"{v['final_gap']:.2%}" for b, v in router["budgets"].items()},
                 {b: v["exact_evaluations"] for b, v in router["budgets"].items()})
    return {"seeds": list(seeds), "budgets": [float(b) for b in budgets], "steps": steps, "caps": caps,
            "instance": dict(instance or {}), "rows": rows}


# ------------------------------------------------------------------------------------ outputs
def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _markdown(result: Mapping[str, Any], machine: Mapping[str, Any], command: str) -> str:
    caps = result["caps"]
    r0 = result["rows"][0]["router"]
    lines = ["# Any-time: router vs Optuna search on the synthetic mixture (optimum known)", "",
             f"Command: `{command}`", "", f"Machine: {json.dumps(machine)}.", "",
             "Gap = loss / optimal loss - 1 of the best allocation within the budget found so far (the optimum is "
             "an exact knapsack). The router is one budget-conditioned agent trained once for all budgets "
             f"({result['steps']} steps, {r0['train_evaluations']} relaxed training evaluations, shared, counted "
             "apart). Per budget (default, `decode=\"knapsack\"`): the agent's learned value per (dimension, choice), "
             "fitted on its training samples' losses, decoded by an exact knapsack under the budget (no exact "
             f"evaluation), then a repair of at most {r0.get('max_repair_evaluations', 32)} exact evaluations "
             "(the decode's own included): E = those evaluations. For comparison, the former decode of the same "
             "agent: its calibrated argmax, then the unbounded loss-scored repair/fill/exchange (`decode=\"argmax\"`, "
             "E' exact evaluations). The search follows "
             "the project's conventions (uniform arch enqueued, TPE/random skip and shrink proposals over the "
             f"budget, NSGA-II evaluates them; repeats do not count); caps of exact evaluations per study: {caps}.",
             "", "![any-time](anytime-synthetic.png)", "",
             "| seed | budget | decode gap (ratio) | repair E | router gap | argmax decode gap | argmax+fill E' | "
             "argmax+fill gap | sampler | search at E | search at 10E | at cap (evals) | evals to reach router | "
             "decode within 1% at 10E | router within 1% at 10E |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def yn(v: bool | None) -> str:
        return "yes" if v else "no" if v is not None else "n/a (10E beyond cap)"

    for row in result["rows"]:
        for b in result["budgets"]:
            rb = row["router"]["budgets"][f"{b:g}"]
            ra = row["router"].get("argmax_fill", {}).get(f"{b:g}")
            old = (f"{_pct(ra['decode_gap'])} | {ra['exact_evaluations']} | {_pct(ra['final_gap'])}" if ra
                   else "- | - | -")
            for s in caps:
                sm = row["summary"][f"{b:g}/{s}"]
                lines.append(
                    f"| {row['seed']} | {b:g} | {_pct(rb['decode_gap'])} ({rb['decode_ratio']:.4f}) | "
                    f"{rb['exact_evaluations']} | {_pct(rb['final_gap'])} | {old} | {s} | {_pct(sm['gap_at_E'])} | "
                    f"{_pct(sm['gap_at_10E']) if sm['reaches_10E'] else 'beyond cap'} | "
                    f"{_pct(sm['gap_at_cap'])} ({sm['search_evaluations']}) | {sm['evaluations_to_router'] or 'never'} | "
                    f"{yn(sm.get('decode_within_1pct_at_10E'))} | {yn(sm['router_within_1pct_at_10E'])} |")
    lines += ["", "## Verdict", ""] + _verdict_lines(result) + [""]
    return "\n".join(lines)


def _verdict_lines(result: Mapping[str, Any]) -> list[str]:
    out = []
    caps = result["caps"]
    rows = result["rows"]
    for b in result["budgets"]:
        key = f"{b:g}"
        rb = [row["router"]["budgets"][key] for row in rows]
        ra = [row["router"].get("argmax_fill", {}).get(key) for row in rows]
        at10 = {s: [row["summary"][f"{key}/{s}"]["gap_at_10E"] for row in rows] for s in caps}
        parts = ", ".join(f"{s} {np.mean([g for g in v if g is not None]):.2%}" for s, v in at10.items()
                          if any(g is not None for g in v))
        old = (f"; the former argmax decode {np.mean([a['decode_gap'] for a in ra if a['decode_gap'] is not None]):.2%}"
               f" needed E' = {int(np.mean([a['exact_evaluations'] for a in ra]))} exact evaluations of "
               f"repair/fill/exchange to reach {np.mean([a['final_gap'] for a in ra]):.2%}" if all(ra) else "")
        out.append(f"- budget {key}: the agent's knapsack decode is {np.mean([x['decode_gap'] for x in rb]):.2%} "
                   f"off the optimum (mean of seeds, ratio <= budget on every seed: "
                   f"{all(x['decode_ratio'] <= b + 1e-12 for x in rb)}), {np.mean([x['final_gap'] for x in rb]):.2%} "
                   f"after the bounded repair at E = {int(np.mean([x['exact_evaluations'] for x in rb]))} exact "
                   f"evaluations; the search at 10E: {parts or 'beyond its caps'}{old}.")
    sms = [sm for row in rows for sm in row["summary"].values()]
    dec = [sm.get("decode_within_1pct_at_10E") for sm in sms]
    fin = [sm["router_within_1pct_at_10E"] for sm in sms]
    out.append(f"- Issue 13 item 4: the agent's decode alone is within 1% of the search's best at 10x the router's "
               f"exact evaluations in {sum(1 for d in dec if d)} of {sum(1 for d in dec if d is not None)} "
               f"(seed, budget, sampler) cases, the router after its bounded repair in "
               f"{sum(1 for f in fin if f)} of {sum(1 for f in fin if f is not None)}.")
    out.append("- Caveat: this benchmark's loss is exactly additive over (expert, block) choices, so an additive "
               "value model fitted on enough training samples recovers it exactly and the knapsack on it is the "
               "optimum; on the real mixture the experts' losses interact within an expert and the held-out loss "
               "is noisy, and there the bounded repair is what corrects the value model's error.")
    return out


def _plot(result: Mapping[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    colors = {"tpe": "#1f77b4", "nsga2": "#2ca02c", "random": "#7f7f7f", "router": "#d62728"}
    budgets = result["budgets"]
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.8 * len(budgets), 3.9), squeeze=False)
    for ax, b in zip(axes[0], budgets):
        key = f"{b:g}"
        for i, row in enumerate(result["rows"]):
            for s in result["caps"]:
                r = row["search"][f"{key}/{s}"]
                if not r["curve"]:
                    continue
                xs = [p[0] for p in r["curve"]] + [r["evaluations"]]
                ys = [max(p[1], 1e-5) for p in r["curve"]] + [max(r["curve"][-1][1], 1e-5)]
                ax.step(xs, ys, where="post", color=colors.get(s, "black"), alpha=0.7, linewidth=1.0,
                        label=s if i == 0 else None)
            rb = row["router"]["budgets"][key]
            xs = [p[0] for p in rb["curve"]] + [rb["exact_evaluations"]]
            ys = [max(p[1], 1e-5) for p in rb["curve"]] + [max(rb["final_gap"], 1e-5)]
            ax.step(xs, ys, where="post", color=colors["router"], linewidth=1.6,
                    label="router (knapsack decode, bounded repair)" if i == 0 else None)
            ax.axvline(10 * rb["exact_evaluations"], color=colors["router"], linestyle=":", linewidth=0.8,
                       label="10 E" if i == 0 else None)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("exact evaluations (router training not counted)")
        ax.set_ylabel("gap to the optimum (best so far)")
        ax.set_title(f"budget {key} ({len(result['rows'])} seeds)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None}, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=600, help="training steps of the budget-conditioned agent")
    p.add_argument("--caps", nargs="+", default=[f"{k}={v}" for k, v in DEFAULT_CAPS.items()],
                   help="exact evaluations per study, per sampler (tpe=400 nsga2=2000 random=1000)")
    p.add_argument("--max-repair-evaluations", type=int, default=32,
                   help="exact evaluations of the router's bounded repair per budget (decode included)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--render", metavar="JSON", help="rewrite the .md and .png from a stored anytime-synthetic.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.render:
        stored = json.loads(Path(args.render).read_text())
        out = Path(args.out)
        _plot(stored, out / "anytime-synthetic.png")
        (out / "anytime-synthetic.md").write_text(_markdown(stored, stored["machine"], stored["command"]))
        return 0
    torch.set_num_threads(1)
    caps = {}
    for item in args.caps:
        name, _, n = item.partition("=")
        if name not in SAMPLERS or not n.isdigit():
            p.error(f"--caps takes sampler=count with sampler in {SAMPLERS}, got {item!r}")
        caps[name] = int(n)
    t0 = time.perf_counter()
    result = run_benchmark(args.seeds, BUDGETS, args.steps, caps, max_repair_evaluations=args.max_repair_evaluations)
    import optuna

    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "python": platform.python_version(), "torch": torch.__version__, "optuna": optuna.__version__,
               "cpu_count": os.cpu_count(), "torch_threads": 1,
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "wall_s": round(time.perf_counter() - t0, 1)}
    command = "OMP_NUM_THREADS=1 python benchmarks/anytime_synthetic.py " + " ".join(shlex.quote(a) for a in
                                                                                    (argv or sys.argv[1:]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "anytime-synthetic.json").write_text(json.dumps({"machine": machine, "command": command.strip(),
                                                            **result}, indent=1) + "\n")
    _plot(result, out / "anytime-synthetic.png")
    (out / "anytime-synthetic.md").write_text(_markdown(result, machine, command.strip()))
    log.info("wrote %s (%.0f s)", out / "anytime-synthetic.md", time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
