"""Does the trajectory proxy rank the bench's allocations like their FID? Before and after fine-tuning.

The router and the search score an allocation with the trajectory proxy
(:meth:`nas.run.RunContext.trajectory_proxy`) on the run's elastic experts, *before* the bench
fine-tunes the chosen mixture. This reads a finished run's bench rows (method, budget, FID of the
fine-tuned model) and scores, for every row whose model is a mixture folder:

- ``proxy_before``: the proxy of the allocation's own schedule on the elastic experts sliced to the
  allocation's archs (what the router and the search see);
- ``proxy_after``: the proxy of the fine-tuned mixture the bench sampled (``mixtures/<name>``);
  for rows the bench does not fine-tune (``steps``: the base model along a searched schedule) the
  same value as before.

It prints Kendall's tau of each against the bench FID (over all rows, and the mean of the
per-budget taus) and writes every value to ``--out`` (JSON and markdown). Nothing in the run
folder is written except the proxy's cached reference samples (``proxy/``, created by the run).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/proxy_vs_bench.py --preset standard --run-root runs \\
        --out benchmarks/results/standard-rerun/proxy-vs-bench
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("proxy_vs_bench")


def _latest_rows(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last bench row of each ``<method>-<budget>`` (the base model's own row left out)."""
    from nas.methods import budget_key

    out: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("kind") == "bench" and r.get("fid_mean") is not None and r.get("budget_ratio") is not None:
            out[f"{r['method']}-{budget_key(r['budget_ratio'])}"] = r
    return out


def _kendall(xs: list[float], ys: list[float]) -> float | None:
    from scipy.stats import kendalltau

    if len(xs) < 3:
        return None
    tau = kendalltau(xs, ys).statistic
    return None if tau != tau else float(tau)  # NaN: constant input


def _taus(values: list[float], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Kendall's tau of ``values`` (one per row) against the rows' bench FID: over all rows, per
    budget, and the mean of the per-budget taus."""
    budgets = sorted({x["budget_ratio"] for x in rows})
    per = {str(b): _kendall([v for v, x in zip(values, rows) if x["budget_ratio"] == b],
                            [x["fid_mean"] for x in rows if x["budget_ratio"] == b]) for b in budgets}
    known = [t for t in per.values() if t is not None]
    return {"all": _kendall(values, [x["fid_mean"] for x in rows]), "per_budget": per,
            "per_budget_mean": sum(known) / len(known) if known else None}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _score(proxy: Any, model: Any, schedule: Any) -> dict[str, float]:
    """Both of the proxy's numbers (``schedule.proxy`` picks one of them for the search)."""
    score = proxy.score(model, schedule)
    return {"small_fid": float(score.fid), "distance": float(score.distance)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="standard")
    p.add_argument("--run-root", required=True, type=Path)
    p.add_argument("--name", default=None, help="run name (default: the preset's)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. schedule.proxy_images=256 (repeatable)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from experts.allocation import Allocation
    from experts.mixture import MixtureOfExperts
    from nas.config import load_config
    from nas.run import RunContext

    over = [f"run_root={args.run_root}"] + ([f"name={args.name}"] if args.name else []) + list(args.set)
    ctx = RunContext(load_config(None, over, preset=args.preset), device="cpu", progress=False)
    proxy = ctx.trajectory_proxy()
    intervals, experts = ctx.experts()
    base = ctx.base.unet.eval()
    rows = []
    for name, r in sorted(_latest_rows(ctx.run.read_results()).items()):
        alloc_path = ctx.run.allocations_dir / f"{name}.json"
        if not alloc_path.is_file():
            log.info("%s: no allocation file, skipped", name)
            continue
        alloc = Allocation.load(alloc_path)
        # the steps-only baseline samples the base model itself along its schedule
        on_base = set(range(len(alloc.archs))) if r["method"] == "steps" else set(alloc.base_intervals or ())
        archs = [None if k in on_base else a for k, a in enumerate(alloc.archs)]
        models = [base if a is None else e for a, e in zip(archs, experts)]
        before = _score(proxy, MixtureOfExperts(intervals, models, archs), alloc.schedule)
        if r.get("model_path"):  # the fine-tuned mixture the bench sampled (a pipeline folder or a mixture folder)
            folder = ctx.run.path / r["model_path"]
            folder = folder / "mixture" if (folder / "mixture").is_dir() else folder
            after = _score(proxy, MixtureOfExperts.from_pretrained(folder, device="cpu").eval(), alloc.schedule)
        else:  # not fine-tuned (the base model along a searched schedule): the same model
            after = before
        rows.append({"name": name, "method": r["method"], "budget_ratio": r["budget_ratio"],
                     "fid_mean": r["fid_mean"], "proxy_before": before, "proxy_after": after,
                     "steps_per_interval": list(alloc.schedule.steps_per_interval)})
        log.info("%s: FID %.3f, proxy before fine-tuning %s, after %s", name, r["fid_mean"], before, after)
    taus = {f"{kind} {when} fine-tuning": _taus([x[f"proxy_{when}"][kind] for x in rows], rows)
            for when in ("before", "after") for kind in ("small_fid", "distance")}
    result: dict[str, Any] = {
        "rows": rows, "taus": taus, "proxy_images": ctx.cfg.schedule.proxy_images,
        "search_proxy": ctx.cfg.schedule.proxy, "machine": platform.platform(),
        "command": " ".join(["python", "benchmarks/proxy_vs_bench.py", *(argv or sys.argv[1:])])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# The trajectory proxy vs the bench's FID, before and after fine-tuning ({args.preset})", "",
             f"Command: `{result['command']}`  ", f"Machine: {result['machine']}", "",
             f"Proxy on {result['proxy_images']} images (the run's search scores `{result['search_proxy']}`); "
             f"Kendall tau vs the bench FID over {len(rows)} rows (all budgets / mean of the per-budget taus):", "",
             "| proxy | tau, all rows | tau, per budget (mean) |", "|---|---|---|"]
    for k, t in taus.items():
        lines.append(f"| {k} | {_fmt(t['all'])} | {_fmt(t['per_budget_mean'])} |")
    lines += ["", "| allocation | steps | FID (bench) | small FID before / after fine-tuning | "
              "distance before / after |", "|---|---|---|---|---|"]
    for x in sorted(rows, key=lambda x: (x["budget_ratio"], x["fid_mean"])):
        b, a = x["proxy_before"], x["proxy_after"]
        lines.append(f"| {x['name']} | {'+'.join(map(str, x['steps_per_interval']))} | {x['fid_mean']:.3f} | "
                     f"{b['small_fid']:.3f} / {a['small_fid']:.3f} | {b['distance']:.4f} / {a['distance']:.4f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    for k, t in taus.items():
        log.info("Kendall tau vs FID, %s: %s (per budget %s)", k, _fmt(t["all"]), _fmt(t["per_budget_mean"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
