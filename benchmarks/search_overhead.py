"""The search's own overhead on a two-node Ray cluster: how much of a session's wall time is
machinery (Ray Tune, Optuna, the ledger, the storage) rather than evaluations?

A ``ray.cluster_utils.Cluster`` of ``--nodes`` nodes with ``--cpus-per-node`` CPUs each (one
trial slot per CPU; no GPUs) is started on this machine, the driver joins it as
``diffnas search --address`` does, and :func:`nas.search.run_search` (``search.backend=ray``: the
code path of ``diffnas search``) searches the synthetic mixture space of ``diffnas search
--synthetic`` with a :class:`~nas.search.SyntheticObjective` whose every evaluation *sleeps* a
fixed ``--eval-s`` seconds (a trial waiting on its GPU; the machine's cores are left to the
driver and Ray). Each case is one fresh search (two constrained studies, promotions included).

Reported per case, from the wall clock around ``run_search`` and the evaluations committed to
``results.jsonl`` (search and promotion fidelities alike):

- ``overhead_s`` per evaluation = ``wall_s x slots / evaluations - eval_s`` (``eval_s``: the mean
  evaluation time the trials measured, ~``--eval-s``);
- ``overhead_share`` = ``overhead_s / eval_s`` (issue 16's target: <= 0.05 for 10 s evaluations);
- ``efficiency`` = ``evaluations x eval_s / (wall_s x slots)`` (target: >= 0.9 on two nodes);
- where the seconds go: ``startup_s`` (call to the first evaluation's start), ``gap_s`` (mean
  idle time of a slot between two evaluations), ``tail_s`` (last evaluation's end to the return),
  and ``promotions_at_once`` (the most promotion evaluations running at the same time).

Usage (results merge into ``benchmarks/results/search-overhead.json`` / ``.md`` under ``--label``)::

    OMP_NUM_THREADS=1 python benchmarks/search_overhead.py --label before
    OMP_NUM_THREADS=1 python benchmarks/search_overhead.py --label after --eval-s 2 10

Example (the figures of one case from its numbers):
    >>> f = figures(wall_s=30.0, slots=2, evaluations=24, eval_s=2.0)
    >>> round(f["overhead_s"], 3), round(f["efficiency"], 3), round(f["overhead_share"], 3)
    (0.5, 0.8, 0.25)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

logger = logging.getLogger("benchmarks.search_overhead")

__all__ = ["figures", "main", "run_case", "slot_timeline"]

_MiB = 2**20


def figures(wall_s: float, slots: int, evaluations: int, eval_s: float) -> dict[str, float]:
    """Overhead per evaluation, its share of an evaluation and the parallel efficiency."""
    per_eval = wall_s * slots / max(1, evaluations)
    overhead = per_eval - eval_s
    return {"overhead_s": overhead, "overhead_share": overhead / eval_s if eval_s > 0 else float("nan"),
            "efficiency": evaluations * eval_s / (wall_s * slots) if wall_s > 0 else float("nan")}


def slot_timeline(recs: list[dict[str, Any]], t0: float, t1: float) -> dict[str, Any]:
    """Where the wall time went: first start after ``t0``, idle gaps between the evaluations of
    each worker (node, pid), last end before ``t1``, and the promotions' overlap."""
    spans = sorted((float(r["placement"]["start"]), float(r["placement"]["end"]), r) for r in recs)
    by_slot: dict[tuple[str, Any], list[tuple[float, float]]] = {}
    for s, e, r in spans:
        by_slot.setdefault((r["placement"].get("node_id", ""), r["placement"].get("pid")), []).append((s, e))
    gaps = [b[0] - a[1] for ss in by_slot.values() for a, b in zip(ss, ss[1:])]
    promo = [(s, e) for s, e, r in spans if r.get("source") == "promotion"]
    at_once = max((sum(a <= s < b for a, b in promo) for s, _ in promo), default=0)
    return {
        "startup_s": spans[0][0] - t0 if spans else float("nan"),
        "tail_s": t1 - max(e for _, e, _ in spans) if spans else float("nan"),
        "gap_s": sum(gaps) / len(gaps) if gaps else 0.0,
        "gaps": len(gaps),
        "workers": len(by_slot),
        "nodes_used": len({k[0] for k in by_slot}),
        "promotions": len(promo),
        "promotions_at_once": at_once,
    }


def run_case(eval_s: float, n_trials: int, promote_top_k: int, budgets: tuple[float, ...], slots: int,
             root: Path) -> dict[str, Any]:
    """One fresh search on the connected cluster; its figures."""
    from nas.config import SearchConfig
    from nas.run import RunDir
    from nas.search import RECORD_KIND, SyntheticObjective, run_search, synthetic_mixture_space

    space = synthetic_mixture_space(num_experts=3)  # the space of `diffnas search --synthetic`
    run = RunDir(root, f"overhead-{eval_s:g}s")
    cfg = SearchConfig(backend="ray", n_trials=n_trials, budgets=budgets, promote_top_k=promote_top_k,
                       cpus_per_trial=1.0, gpus_per_trial=0.0, seed=0)
    objective = SyntheticObjective(space, sleep_s=eval_s)
    t0 = time.time()
    result = run_search(space, objective, cfg, run)
    t1 = time.time()
    recs = [r for r in run.read_results() if r.get("kind") == RECORD_KIND]
    done = [r for r in recs if r.get("state") == "complete"]
    mean_eval = sum(float(r["eval_s"]) for r in done) / max(1, len(done))
    wall = t1 - t0
    out = {"eval_s_nominal": eval_s, "eval_s": mean_eval, "wall_s": wall, "slots": slots,
           "evaluations": len(recs), "failed": len(recs) - len(done),
           "search_evaluations": sum(r["source"] != "promotion" for r in recs),
           "studies": [s.name for s in result.studies], "n_trials": n_trials, "promote_top_k": promote_top_k,
           **figures(wall, slots, len(recs), mean_eval), **slot_timeline(recs, t0, t1),
           "ideal_wall_s": len(recs) * mean_eval / slots}
    logger.info("eval %gs: %d evaluations in %.1f s on %d slots: overhead %.3f s/eval (%.1f%%), efficiency %.3f; "
                "startup %.1f s, mean gap %.2f s, tail %.1f s, promotions at once %d", eval_s, len(recs), wall, slots,
                out["overhead_s"], 100 * out["overhead_share"], out["efficiency"], out["startup_s"], out["gap_s"],
                out["tail_s"], out["promotions_at_once"])
    return out


def _cluster(nodes: int, cpus: int) -> Any:
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus, "num_gpus": 0,
                                                            "object_store_memory": 80 * _MiB})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=cpus, num_gpus=0, object_store_memory=80 * _MiB)
    ray.init(address=cluster.address, logging_level="WARNING")
    cluster.wait_for_nodes()
    return cluster


def _machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "loadavg_1_5_15": list(os.getloadavg()),
            "note": "shared with other engineers working at the same time (2 cores)"}


def _table(data: dict[str, Any]) -> str:
    lines = ["| label | commit | eval s | evaluations | slots | wall s | ideal s | overhead s/eval | overhead % "
             "| efficiency | startup s | mean gap s | tail s | promotions at once |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, entry in data["runs"].items():
        for c in entry["cases"]:
            lines.append(
                f"| {label} | {entry.get('commit', '')[:8]} | {c['eval_s_nominal']:g} | {c['evaluations']} | {c['slots']} "
                f"| {c['wall_s']:.1f} | {c['ideal_wall_s']:.1f} | {c['overhead_s']:.3f} | {100 * c['overhead_share']:.1f} "
                f"| {c['efficiency']:.3f} | {c['startup_s']:.1f} | {c['gap_s']:.2f} | {c['tail_s']:.1f} "
                f"| {c['promotions_at_once']} of {c['promotions']} |")
    return "\n".join(lines)


def _write(out: Path, label: str, entry: dict[str, Any]) -> None:
    path_json = out.with_suffix(".json")
    data = json.loads(path_json.read_text()) if path_json.is_file() else {"runs": {}}
    data["runs"][label] = entry
    path_json.write_text(json.dumps(data, indent=2) + "\n")
    notes = data.get("notes", "")
    md = [
        "# Search overhead on a two-node Ray cluster (issue 16, item 4)",
        "",
        "Each row: one fresh `diffnas search` session (`nas.search.run_search`, `search.backend=ray`) over the "
        "synthetic mixture space of `diffnas search --synthetic`, on a `ray.cluster_utils.Cluster` the driver joins "
        "by address; every evaluation sleeps `eval s` (two constrained studies, promotions included). "
        "overhead = wall x slots / evaluations - eval s; efficiency = evaluations x eval s / (wall x slots). "
        "Targets: overhead <= 5% of a 10 s evaluation, efficiency >= 0.9.",
        "",
        _table(data),
        "",
    ]
    for lab, e in data["runs"].items():
        md += [f"- `{lab}`: `{e['command']}` at {e['date']} on {e['machine']['platform']}, "
               f"{e['machine']['cpu_count']} cores, load average {e['machine']['loadavg_1_5_15']} at the start "
               f"({e['machine']['note']})"]
    if notes:
        md += ["", notes]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")


def _commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--label", default="run", help="name of this run in the results (e.g. before, after)")
    p.add_argument("--eval-s", type=float, nargs="+", default=[2.0, 10.0], help="seconds per evaluation")
    p.add_argument("--trials", type=int, nargs="+", default=[12, 6],
                   help="search-fidelity trials per study, one per --eval-s")
    p.add_argument("--promote-top-k", type=int, default=2)
    p.add_argument("--budgets", type=float, nargs="+", default=[0.4, 0.6])
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--cpus-per-node", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "search-overhead"))
    p.add_argument("--no-write", action="store_true", help="print the figures only")
    args = p.parse_args(argv)
    if len(args.trials) != len(args.eval_s):
        p.error("--trials needs one number per --eval-s")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    machine = _machine()
    cluster = _cluster(args.nodes, args.cpus_per_node)
    root = Path(tempfile.mkdtemp(prefix="search-overhead-"))
    cases = []
    try:
        for eval_s, n in zip(args.eval_s, args.trials):
            cases.append(run_case(eval_s, n, args.promote_top_k, tuple(args.budgets),
                                  args.nodes * args.cpus_per_node, root))
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    entry = {"command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python benchmarks/search_overhead.py "
                        f"{argv_text}".strip(),
             "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": _commit(), "machine": machine,
             "cases": cases}
    if not args.no_write:
        _write(Path(args.out), args.label, entry)
    print(_table({"runs": {args.label: entry}}))
    return entry


if __name__ == "__main__":
    main()
