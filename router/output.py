"""What the router writes: allocations, the training log, a summary and the allocation plot.

Layout (inside a run folder, or any folder):

- ``allocations/router-<budget>.json`` (:class:`~experts.allocation.Allocation`, one per budget;
  ``<budget>`` formatted with ``{:g}``, e.g. ``router-0.5.json``);
- ``router/train_log.jsonl`` (one JSON object per logged training step);
- ``router/summary.json`` (per budget: target, achieved ratio, decode before repair, steps of
  repair/fill/exchange, evaluations, losses; plus the settings and training time; its
  ``allocations`` are paths relative to the folder above ``router/``, the run folder, so a run
  folder stores no absolute path);
- ``router/allocation.png`` (MACs per interval for each budget; optional per-interval
  sensitivity, the loss increase when that interval's expert shrinks, drawn beside it).

Example:
    >>> allocation_filename(0.5)
    'router-0.5.json'
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experts.allocation import Allocation
from experts.mixture_space import MixtureSpace
from router.result import RouterResult

__all__ = ["allocation_filename", "plot_allocations", "routing_cost", "write_allocation_files", "write_outputs"]

log = logging.getLogger(__name__)


def allocation_filename(budget_ratio: float, method: str = "router") -> str:
    """``<method>-<budget:g>.json`` (the name the search and the benchmark look for)."""
    return f"{method}-{float(budget_ratio):g}.json"


def routing_cost(info: dict[str, Any]) -> dict[str, Any]:
    """An allocation's ``info["cost"]`` with the fields the search writes too:
    ``evaluations_per_fidelity`` (the router's are all proxy evaluations, held-out loss or
    trajectory proxy: training plus this budget's decode/repair; no FID), ``wall_s``, and
    ``cpu_s`` / ``gpu_s`` (``cpu_s`` from ``info["cpu_s"]`` when the caller measured it, else
    None; ``gpu_s`` is the wall time when the router ran on a CUDA device). ``evaluations``
    stays the total count.

    Example:
        >>> c = routing_cost({"train_evaluations": 40, "repair_evaluations": 3,
        ...                   "cost": {"wall_s": 2.0, "evaluations": 43}, "device": "cpu"})
        >>> c["evaluations"], c["evaluations_per_fidelity"], c["gpu_s"]
        (43, {'proxy': 43, 'fid': 0}, 0.0)
    """
    cost = dict(info.get("cost") or {})
    total = cost.get("evaluations")
    if isinstance(total, dict):  # already per fidelity
        return {**cost, "evaluations_per_fidelity": dict(total)}
    if total is None:
        total = int(info.get("train_evaluations") or 0) + int(info.get("repair_evaluations") or 0)
    wall = cost.get("wall_s")
    if wall is None and info.get("train_seconds") is not None:
        wall = float(info["train_seconds"]) + float(info.get("decode_seconds") or 0.0)
    cuda = str(info.get("device") or "").startswith("cuda")
    return {**cost, "evaluations": int(total), "evaluations_per_fidelity": {"proxy": int(total), "fid": 0},
            "wall_s": wall, "cpu_s": info.get("cpu_s"),
            "gpu_s": (float(wall) if cuda and wall is not None else 0.0)}


def _with_cost(alloc: Allocation, extra_info: dict[str, Any] | None = None) -> Allocation:
    """``alloc`` with ``extra_info`` merged into its info and the cost in :func:`routing_cost`'s shape."""
    import dataclasses

    info = {**alloc.info, **(extra_info or {})}
    info["cost"] = routing_cost(info)
    return dataclasses.replace(alloc, info=info)


def _relative_paths(paths: Sequence[Path], out: Path) -> list[str]:
    """``paths`` relative to ``out.parent`` (the run folder when ``out`` is its ``router/``), POSIX style.

    Example:
        >>> _relative_paths([Path("/r/run/allocations/router-0.5.json")], Path("/r/run/router"))
        ['allocations/router-0.5.json']
    """
    base = os.path.abspath(out.parent)
    return [Path(os.path.relpath(os.path.abspath(p), base)).as_posix() for p in paths]


def _atomic_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _interval_labels(allocations: Sequence[Allocation]) -> list[str]:
    """Per interval: its span and steps (one count per budget, in budget order, when they differ)."""
    spans = allocations[0].intervals.spans()
    if len({a.steps_per_expert for a in allocations}) == 1:
        return [f"[{a}, {b})\n{s} steps" for (a, b), s in zip(spans, allocations[0].steps_per_expert)]
    ordered = sorted(allocations, key=lambda a: a.budget_ratio)  # joint: each budget its own steps
    return [f"[{a}, {b})\nsteps " + "/".join(str(x.steps_per_expert[k]) for x in ordered)
            for k, (a, b) in enumerate(spans)]


def plot_allocations(
    allocations: Sequence[Allocation],
    path: str | Path,
    *,
    full_macs_per_expert: Sequence[float] | None = None,
    sensitivity: Sequence[float] | None = None,
    title: str = "Router allocation: MACs per interval",
) -> Path:
    """Bar chart of each expert's MACs (per call) for each budget; PNG via matplotlib (Agg).

    Args:
        allocations: one allocation per budget (same intervals).
        path: the PNG to write.
        full_macs_per_expert: MACs of each expert's full arch; when given, bars are fractions
            of it (else absolute MACs).
        sensitivity: optional per-interval loss increase when that expert shrinks (e.g. the
            loss at its smallest arch minus at its full arch), drawn as a line on a second axis.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not allocations:
        raise ValueError("nothing to plot: no allocations")
    iv = allocations[0].intervals
    n = iv.num_intervals
    labels = _interval_labels(allocations)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * n + 2.0), 3.8), dpi=110)
    width = 0.8 / len(allocations)
    for j, alloc in enumerate(sorted(allocations, key=lambda a: a.budget_ratio)):
        vals = [float(m) for m in alloc.macs_per_expert]
        if full_macs_per_expert is not None:
            vals = [v / float(f) for v, f in zip(vals, full_macs_per_expert)]
        xs = [i - 0.4 + width * (j + 0.5) for i in range(n)]
        ax.bar(xs, vals, width=width, label=f"budget {alloc.budget_ratio:g} (got {alloc.achieved_ratio:.3f})")
    ax.set_xticks(range(n))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_xlabel("interval (training timesteps), low noise to high noise")
    ax.set_ylabel("MACs per call / full expert" if full_macs_per_expert is not None else "MACs per call")
    ax.set_title(title, fontsize=10)
    handles, names = ax.get_legend_handles_labels()
    if sensitivity is not None:
        ax2 = ax.twinx()
        line = ax2.plot(range(n), list(sensitivity), "k--o", label="loss increase when shrunk")[0]
        ax2.set_ylabel("loss(smallest) - loss(full)")
        handles.append(line)
        names.append(line.get_label())
    ax.legend(handles, names, fontsize=7, loc="upper right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_outputs(
    result: RouterResult,
    mixture: MixtureSpace,
    out_dir: str | Path,
    *,
    allocations_dir: str | Path | None = None,
    sensitivity: Sequence[float] | None = None,
    extra_info: dict[str, Any] | None = None,
    summary_extra: dict[str, Any] | None = None,
) -> list[Path]:
    """Write allocations, training log, summary and plot; returns the allocation paths.

    Args:
        result: from :func:`router.train.train_router` on ``mixture.space``.
        mixture: the mixture space (one part per interval expert, weights = sampling steps).
        out_dir: folder for the log, summary and plot (a run's ``router/``).
        allocations_dir: where ``router-<budget>.json`` go (default: ``out_dir/../allocations``).
        sensitivity: per-interval loss increase when shrunk, for the plot and the summary.
        extra_info: added to each allocation's ``info`` (e.g. the config hash).
        summary_extra: added to ``summary.json``.
    """
    if not isinstance(mixture, MixtureSpace):
        raise TypeError(f"write_outputs needs an experts.MixtureSpace (MixtureSpace.from_product makes one), "
                        f"got {type(mixture).__name__}")
    out = Path(out_dir)
    alloc_dir = Path(allocations_dir) if allocations_dir is not None else out.parent / "allocations"
    paths = []
    allocations = []
    for o in result.outcomes:
        alloc = _with_cost(result.allocation(mixture, o.budget_ratio), extra_info)
        if not alloc.feasible:  # pragma: no cover - train_router guarantees it
            raise RuntimeError(f"router allocation for budget {o.budget_ratio} exceeds it")
        p = alloc_dir / allocation_filename(o.budget_ratio)
        alloc.save(p)
        paths.append(p)
        allocations.append(alloc)
    result.write_log(out / "train_log.jsonl")
    summary = {
        "budget_conditioned": result.budget_conditioned,
        "train_seconds": result.train_seconds,
        "train_evaluations": result.train_evaluations,
        "settings": result.settings,
        "sensitivity": None if sensitivity is None else [float(x) for x in sensitivity],
        "budgets": result.summary(),
        "allocations": _relative_paths(paths, out),
        **(summary_extra or {}),
    }
    _atomic_text(out / "summary.json", json.dumps(summary, indent=2, sort_keys=True, default=str))
    full = [part.macs(part.full()) for part in mixture.parts]
    plot_allocations(allocations, out / "allocation.png", full_macs_per_expert=full, sensitivity=sensitivity)
    log.info("router: wrote %d allocations to %s and log/summary/plot to %s", len(paths), alloc_dir, out)
    return paths


def write_allocation_files(
    allocations: Sequence[Allocation],
    mixture: MixtureSpace,
    out_dir: str | Path,
    *,
    log_rows: Sequence[dict[str, Any]],
    summary: dict[str, Any],
    allocations_dir: str | Path | None = None,
    sensitivity: Sequence[float] | None = None,
    title: str = "Router allocation: MACs per interval",
) -> list[Path]:
    """Write ready-made allocations (e.g. joint ones, with their step schedules), the training
    log, ``summary`` (plus the allocation paths) and the plot; returns the allocation paths.

    Raises:
        RuntimeError: an allocation over its budget.
    """
    out = Path(out_dir)
    alloc_dir = Path(allocations_dir) if allocations_dir is not None else out.parent / "allocations"
    paths = []
    for alloc in allocations:
        if not alloc.feasible:
            raise RuntimeError(f"{alloc.method} allocation for budget {alloc.budget_ratio} exceeds it")
        alloc = _with_cost(alloc)
        p = alloc_dir / allocation_filename(alloc.budget_ratio, alloc.method)
        alloc.save(p)
        paths.append(p)
    _atomic_text(out / "train_log.jsonl", "".join(json.dumps(row, sort_keys=True) + "\n" for row in log_rows))
    full_summary = {**summary, "allocations": _relative_paths(paths, out)}
    _atomic_text(out / "summary.json", json.dumps(full_summary, indent=2, sort_keys=True, default=str))
    full = [part.macs(part.full()) for part in mixture.parts]
    plot_allocations(allocations, out / "allocation.png", full_macs_per_expert=full, sensitivity=sensitivity,
                     title=title)
    log.info("router: wrote %d allocations to %s and log/summary/plot to %s", len(paths), alloc_dir, out)
    return paths
