"""Where a run's jobs ran: per stage, the Ray nodes and devices recorded in the run folder.

Issue 16 asks that, from the README's cluster recipe (``ray start --head``, ``ray start
--address=...``, then ``diffnas run --address ...``), every stage that can use the cluster does,
as shown by the node and device recorded for each job in the run folder. This reads those
records (nothing is recomputed) and prints one table:

=============  =========================================================  ================================
stage          record                                                     one job is
=============  =========================================================  ================================
experts        ``experts/ray_jobs.json`` (``jobs``: ``k``, ``node_id``)    one expert (or rank)
search         ``results.jsonl`` records with ``placement``                one trial evaluation
router         ``router/ray_job.json`` (``diffnas run --address``)          the agent's training
router (side)  ``search/summary.json`` ``side_jobs`` (``--with-router``)   the agent's training
finetune       ``mixtures/ray_jobs.json`` (``jobs``: name -> ``node``)      one (mixture, expert); one model
bench          ``results.jsonl`` bench rows' ``jobs`` (one per seed)       one (method, budget, seed)
=============  =========================================================  ================================

Stages that ran in the driver (``base``, ``intervals``, the ``router`` stage of ``diffnas run``
without ``--address``, the bench's latency timing) record no job and are listed as such from ``pipeline.json``.
With ``--address`` of the still running cluster, node ids are labelled ``head``/``worker``.

Usage::

    python benchmarks/cluster_jobs.py RUN_DIR [--address HOST:PORT] [--out FILE.md]

Example:
    >>> import tempfile, json, pathlib
    >>> run = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (run / "experts").mkdir()
    >>> _ = (run / "experts" / "ray_jobs.json").write_text(json.dumps(
    ...     {"jobs": [{"k": 0, "node_id": "aa11", "device": "cpu"}, {"k": 1, "node_id": "bb22", "device": "cpu"}]}))
    >>> [(j.stage, j.name, j.node, j.device) for j in collect_jobs(run)]
    [('experts', 'expert 0', 'aa11', 'cpu'), ('experts', 'expert 1', 'bb22', 'cpu')]
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Job", "collect_jobs", "format_jobs", "main", "node_labels"]

log = logging.getLogger(__name__)

#: The stages that can put jobs on a cluster, in the order of ``diffnas run``.
CLUSTER_STAGES = ("experts", "router", "router (side job)", "search", "finetune", "bench")


@dataclass(frozen=True)
class Job:
    """One job of a stage and where it ran (``node``: the Ray node id; ``device``: torch's)."""

    stage: str
    name: str
    node: str | None
    device: str | None
    host: str | None = None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            yield rec


def _expert_jobs(run: Path) -> list[Job]:
    data = _read_json(run / "experts" / "ray_jobs.json")
    jobs = data.get("jobs", []) if isinstance(data, dict) else []
    out = []
    for r in jobs:
        name = f"expert {r.get('k')}" + (f" rank {r['rank']}" if "rank" in r else "")
        out.append(Job("experts", name, r.get("node_id") or r.get("node"), r.get("device"), r.get("host")))
    return out


def _search_jobs(records: Sequence[Mapping[str, Any]]) -> list[Job]:
    out = []
    for r in records:
        pl = r.get("placement")
        if not isinstance(pl, dict):
            continue
        name = f"{r.get('study', '?')} #{r.get('trial_number', r.get('number', '?'))} {r.get('fidelity', '')}".strip()
        out.append(Job("search", name, pl.get("node_id") or None, pl.get("device"), pl.get("host")))
    return out


def _side_jobs(run: Path) -> list[Job]:
    data = _read_json(run / "search" / "summary.json")
    side = data.get("side_jobs", {}) if isinstance(data, dict) else {}
    return [Job("router (side job)", str(name), o.get("node"), o.get("device"), o.get("host"))
            for name, o in sorted(side.items()) if isinstance(o, dict)]


def _router_job(run: Path) -> list[Job]:
    o = _read_json(run / "router" / "ray_job.json")  # the router stage as one Ray task (diffnas run --address)
    return [Job("router", "router", o.get("node"), o.get("device"), o.get("host"))] if isinstance(o, dict) and o else []


def _finetune_jobs(run: Path) -> list[Job]:
    data = _read_json(run / "mixtures" / "ray_jobs.json")
    jobs = data.get("jobs", {}) if isinstance(data, dict) else {}
    out = []
    for name, r in sorted(jobs.items()):
        if not isinstance(r, dict):
            continue
        experts = r.get("experts") if isinstance(r.get("experts"), dict) else {}
        for k, e in sorted(experts.items(), key=lambda kv: int(kv[0])):  # one job per (mixture, expert)
            out.append(Job("finetune", f"{name} expert {k}", e.get("node"), e.get("device"), e.get("host")))
        if "node" in r:  # the model's own job (a mixture's: assembled from its stored experts)
            label = f"{name} (assembly)" if experts else str(name)
            out.append(Job("finetune", label, r.get("node"), r.get("device"), r.get("host")))
    return out


def _bench_jobs(records: Sequence[Mapping[str, Any]]) -> list[Job]:
    latest: dict[str, Mapping[str, Any]] = {}
    for r in records:  # the last row of each (method, budget) is the one the report reads
        if isinstance(r.get("jobs"), list) and "method" in r:
            latest[f"{r['method']}@{r.get('budget_ratio')}"] = r
    out = []
    for name, r in sorted(latest.items()):
        for j in r["jobs"]:
            out.append(Job("bench", f"{name} seed {j.get('seed')}", j.get("node"), j.get("device"), j.get("host")))
    return out


def collect_jobs(run_dir: str | Path) -> list[Job]:
    """Every job recorded in ``run_dir``, stage by stage (see the module docstring)."""
    run = Path(run_dir)
    records = list(_read_jsonl(run / "results.jsonl"))
    return [*_expert_jobs(run), *_router_job(run), *_side_jobs(run), *_search_jobs(records), *_finetune_jobs(run),
            *_bench_jobs(records)]


def node_labels(address: str) -> dict[str, str]:
    """``{node id: "head" | "worker"}`` of the running cluster at ``address`` ({} when unreachable)."""
    try:
        import ray

        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        try:
            return {n["NodeID"]: ("head" if "node:__internal_head__" in n.get("Resources", {}) else "worker")
                    for n in ray.nodes()}
        finally:
            ray.shutdown()
    except Exception as err:  # noqa: BLE001 - labels are a convenience; the ids are the record
        log.warning("could not label the nodes from %s: %s", address, err)
        return {}


def _short(node: str | None, labels: Mapping[str, str]) -> str:
    if not node:
        return "(none: the driver)"
    return f"{node[:8]}" + (f" ({labels[node]})" if node in labels else "")


def _driver_stages(run: Path) -> list[str]:
    data = _read_json(run / "pipeline.json")
    stages = data.get("stages", {}) if isinstance(data, dict) else {}
    names = set(stages) if isinstance(stages, dict) else set()
    if (run / "router" / "ray_job.json").is_file():  # the router stage ran as a Ray task
        names.discard("router")
    return [s for s in ("base", "intervals", "router", "report") if s in names]  # in the order they run


def format_jobs(jobs: Sequence[Job], labels: Mapping[str, str] | None = None,
                driver_stages: Sequence[str] = ()) -> str:
    """A markdown table: per stage, jobs, nodes (jobs each) and devices; then the driver's stages.

    Example:
        >>> print(format_jobs([Job("bench", "a", "n1", "cpu"), Job("bench", "b", "n2", "cpu")]))
        | stage | jobs | nodes (jobs on each) | devices |
        |---|---|---|---|
        | experts | 0 | - | - |
        | router | 0 | - | - |
        | router (side job) | 0 | - | - |
        | search | 0 | - | - |
        | finetune | 0 | - | - |
        | bench | 2 | n1: 1, n2: 1 | cpu: 2 |
    """
    labels = labels or {}
    lines = ["| stage | jobs | nodes (jobs on each) | devices |", "|---|---|---|---|"]
    by_stage: dict[str, list[Job]] = collections.defaultdict(list)
    for j in jobs:
        by_stage[j.stage].append(j)
    for stage in CLUSTER_STAGES:
        got = by_stage.get(stage, [])
        if not got:
            lines.append(f"| {stage} | 0 | - | - |")
            continue
        nodes = collections.Counter(_short(j.node, labels) for j in got)
        devices = collections.Counter(str(j.device) for j in got)
        lines.append(f"| {stage} | {len(got)} | " + ", ".join(f"{n}: {c}" for n, c in sorted(nodes.items()))
                     + " | " + ", ".join(f"{d}: {c}" for d, c in sorted(devices.items())) + " |")
    if driver_stages:
        lines.append("")
        lines.append("In the driver (no Ray job): " + ", ".join(driver_stages) + ", and the bench's latency timing.")
    return "\n".join(lines)


def _per_job(jobs: Sequence[Job], labels: Mapping[str, str]) -> str:
    lines = ["| stage | job | node | device |", "|---|---|---|---|"]
    lines += [f"| {j.stage} | {j.name} | {_short(j.node, labels)} | {j.device} |" for j in jobs]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print (and with ``--out`` write) the table of a run folder."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="the run folder (runs/<name>)")
    p.add_argument("--address", help="the running cluster, to label node ids head/worker")
    p.add_argument("--per-job", action="store_true", help="also list every job")
    p.add_argument("--out", help="also write the output to this markdown file")
    args = p.parse_args(argv)
    run = Path(args.run_dir)
    if not run.is_dir():
        sys.stderr.write(f"cluster_jobs: no run folder at {run}\n")
        return 2
    jobs = collect_jobs(run)
    labels = node_labels(args.address) if args.address else {}
    text = format_jobs(jobs, labels, _driver_stages(run))
    if args.per_job:
        text += "\n\n" + _per_job(jobs, labels)
    sys.stdout.write(text + "\n")
    if args.out:
        out = Path(args.out)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(out)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raise SystemExit(main())
