"""The router's best vs the search's best at 10x the router's evaluations, on a real run (issue 13).

The router scores a bounded set of candidates per budget with the trajectory proxy (its agent's
training uses the cheap masked loss, not the proxy). This benchmark gives an independent joint
search ``factor`` x as many proxy evaluations as the router used at a budget, in a copy of the run
folder (the run itself is never written), and states per budget:

- the router's best proxy value and its proxy evaluations;
- the search's best after as many evaluations as the router's, and after ``factor`` x as many;
- the gap of the router to that best (lower proxy is better).

Run on the standard workload after ``diffnas route`` and ``diffnas search``::

    OMP_NUM_THREADS=1 python benchmarks/router_vs_search_10x.py --preset standard \\
        --run-root /work/std/runs --budgets 0.1 0.15 --out benchmarks/results/standard/router-vs-search-10x

Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("router_vs_search_10x")

#: what the copy leaves out: the bench's and the fine-tuning's outputs are not read by a search
_SKIP = ("mixtures", "bench", "report", ".cache")


def _copy_run(src: Path, dst: Path) -> None:
    if dst.exists():
        return  # a resumed benchmark: the copy holds its own studies
    tmp = dst.with_name(dst.name + ".copying")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp, ignore=lambda d, names: [n for n in names if Path(d) == src and n in _SKIP])
    tmp.rename(dst)


def _router(allocations: Path, budget: float) -> dict[str, Any]:
    from nas.methods import budget_key

    alloc = json.loads((allocations / f"router-{budget_key(budget)}.json").read_text())
    cands = [c for c in alloc["info"]["candidates"] if c.get("value") is not None]
    return {"best": min(c["value"] for c in cands), "evaluations": len(cands),
            "proxy_seconds": alloc["info"].get("proxy_seconds")}


def _search_curve(records: list[dict[str, Any]], study: str) -> list[float]:
    """Best proxy so far after each evaluation of ``study`` (complete, within budget, first per key)."""
    seen: set[str] = set()
    best, out = float("inf"), []
    for r in records:
        if r.get("kind") != "search_trial" or r.get("study") != study or r.get("fidelity") != "proxy":
            continue
        if r["key"] in seen:
            continue
        seen.add(r["key"])
        if r.get("state") == "complete" and r.get("feasible") and r.get("quality") is not None:
            best = min(best, float(r["quality"]))
        out.append(best)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="standard")
    p.add_argument("--run-root", required=True, type=Path)
    p.add_argument("--name", default=None, help="run name (default: the preset's)")
    p.add_argument("--budgets", nargs="+", type=float, required=True)
    p.add_argument("--factor", type=int, default=10)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from nas.config import load_config
    from nas.methods import budget_key
    from nas.run import RunContext, RunDir
    from nas.search import run_search
    from nas.search_objective import MixtureObjective, absolute_config, joint_known_points

    cfg = load_config(None, [f"run_root={args.run_root}"] + ([f"name={args.name}"] if args.name else []), preset=args.preset)
    src = RunDir.from_config(cfg).path
    copy_root = args.run_root.parent / (args.run_root.name + "-x10")
    copy_root.mkdir(parents=True, exist_ok=True)
    _copy_run(src, copy_root / src.name)
    cfg = load_config(None, [f"run_root={copy_root}"] + ([f"name={args.name}"] if args.name else []), preset=args.preset)
    ctx = RunContext(cfg, device="cpu", progress=False)
    mixture = ctx.mixture_space(joint=True)
    rows = []
    for b in args.budgets:
        router = _router(ctx.run.allocations_dir, b)
        n_trials = args.factor * router["evaluations"]
        # the full and uniform points only (no router allocation): an independent search
        known = tuple((None, s, a) for s, a in joint_known_points(ctx, mixture, None, widths=True)) + tuple(
            (b, s, a) for s, a in joint_known_points(ctx, mixture, b, widths=True))
        objective = MixtureObjective(absolute_config(cfg), ctx.steps_per_expert(), mode="joint",
                                     reference_macs=ctx.base_traj, known=known, allocation_method="search_x10",
                                     enqueue_router=False)
        scfg = dataclasses.replace(cfg.search, budgets=(b,), n_trials=n_trials, promote_top_k=0,
                                   study_prefix="x10", seed_with_router=False, backend="local")
        t0 = time.perf_counter()
        run_search(mixture.space, objective, scfg, ctx.run, intervals=mixture.intervals, seed=cfg.seed)
        seconds = time.perf_counter() - t0
        curve = _search_curve(ctx.run.read_results(), f"x10-b{budget_key(b)}")
        e = router["evaluations"]
        at_e = curve[min(e, len(curve)) - 1]
        at_10e = curve[-1]
        rows.append({"budget_ratio": b, "router_best": router["best"], "router_evaluations": e,
                     "router_proxy_seconds": router["proxy_seconds"], "search_evaluations": len(curve),
                     "search_best_at_router_evaluations": at_e, "search_best_at_factor": at_10e,
                     "search_seconds_this_session": round(seconds, 1),
                     "router_gap_to_search_at_factor": router["best"] / at_10e - 1.0})
        log.info("budget %g: router %.4g (%d evaluations); search %.4g after %d, %.4g after %d",
                 b, router["best"], e, at_e, e, at_10e, len(curve))
    out = {"preset": args.preset, "factor": args.factor, "rows": rows, "machine": platform.platform(),
           "command": " ".join(["python", "benchmarks/router_vs_search_10x.py", *(argv or sys.argv[1:])])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [f"# Router vs an independent joint search with {args.factor}x its proxy evaluations ({args.preset})", "",
             f"Command: `{out['command']}`  ", f"Machine: {out['machine']}", "",
             "Proxy: the run's trajectory proxy (lower is better). The router's evaluations are the candidates it "
             "scored with the proxy at that budget (its agent trains on the masked denoising loss).", "",
             "| budget | router best | router evals | search best at router's evals | search best at "
             f"{args.factor}x | router vs {args.factor}x search |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['budget_ratio']:g} | {r['router_best']:.4g} | {r['router_evaluations']} | "
                     f"{r['search_best_at_router_evaluations']:.4g} | {r['search_best_at_factor']:.4g} "
                     f"({r['search_evaluations']} evals) | {100 * r['router_gap_to_search_at_factor']:+.1f}% |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
