"""Bench rows in ``results.jsonl``: keys, resume lookup, skip records, cost, provenance, the result.

See :mod:`benchmarks.bench`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nas.config import BenchConfig, ExperimentConfig, ExpertsConfig, config_to_dict
from nas.methods import budget_key
from nas.run import RunDir

log = logging.getLogger(__name__)

__all__ = ["RECORD_KIND", "SKIP_KIND", "BenchResult", "bench_config_key", "finished_rows", "fmt_number",
           "format_bench", "library_versions", "machine_info", "normalize_cost", "record_skip"]

RECORD_KIND = "bench"
SKIP_KIND = "bench_skip"


def bench_config_key(cfg: ExperimentConfig) -> str:
    """Hash of the settings a benchmark row depends on (data, model, sampler, extractor, space,
    intervals, experts incl. fine-tuning, bench settings other than the budget/method lists, seed).

    Example:
        >>> from nas.config import load_config
        >>> a = bench_config_key(load_config(None, ["bench.budgets=[0.5]"]))
        >>> a == bench_config_key(load_config(None, ["name=other", "device=cpu"]))
        True
        >>> a == bench_config_key(load_config(None, ["bench.parallel=true", "experts.parallel=true"]))
        True
        >>> a == bench_config_key(load_config(None, ["bench.num_samples=100"]))
        False
    """
    d = config_to_dict(cfg)
    bench = {k: v for k, v in d["bench"].items() if k not in ("budgets", "methods", *BenchConfig.EXECUTION_KEYS)}
    payload = {
        "seed": d["seed"], "data": d["data"], "model": d["model"], "sampling": d["sampling"],
        "extractor": {k: d["evaluation"][k] for k in ("extractor", "inception_weights")},
        "space": d["space"], "intervals": d.get("intervals"), "experts": _experts_part(d.get("experts")),
        "bench": bench,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _experts_part(experts: Any) -> Any:
    """The experts section as a row's key sees it: the execution keys (where and how fast the experts
    train, :attr:`ExpertsConfig.EXECUTION_KEYS`) at their defaults, as every earlier row's key had them
    (those left out of ``config.yaml`` at their default stay out)."""
    if not isinstance(experts, dict):
        return experts
    defaults = config_to_dict(ExperimentConfig())["experts"]
    out = dict(experts)
    for k in ExpertsConfig.EXECUTION_KEYS:
        if k in defaults:
            out[k] = defaults[k]
        else:
            out.pop(k, None)
    return out


def finished_rows(run: RunDir, config_key: str) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(method, budget key): latest bench row}`` of ``results.jsonl`` for ``config_key``."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in run.read_results():
        if r.get("kind") == RECORD_KIND and r.get("config_key") == config_key:
            out[(str(r.get("method")), budget_key(r.get("budget_ratio")))] = r
    return out


def normalize_cost(info: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``{wall_s, evaluations, raw}`` from an allocation's ``info`` (router: ``train_seconds``,
    ``train_evaluations``; search: ``search_cost``), or None when it records no cost. A searched
    allocation also gets ``source``: where its best arch came from (``sampler``, ``shrunk``, or a
    point enqueued before the search: ``router``, ``uniform``, ``full``).

    Example:
        >>> normalize_cost({"train_seconds": 3.5, "train_evaluations": 40})["evaluations"]
        40
    """
    if not info:
        return None
    src: dict[str, Any] = dict(info.get("search_cost") or info.get("cost") or {})
    for k in ("train_seconds", "train_evaluations", "repair_evaluations"):
        if k in info:
            src.setdefault(k, info[k])
    wall = next((src[k] for k in ("wall_s_all_sessions", "wall_s", "train_seconds", "seconds") if src.get(k) is not None),
                None)
    evals = next((src[k] for k in ("evaluations", "trials", "train_evaluations", "n_evaluated") if src.get(k) is not None),
                 None)
    if isinstance(evals, dict):  # per fidelity (search: {"proxy": n, "fid": m})
        evals = sum(int(v) for v in evals.values() if isinstance(v, (int, float)))
    if wall is None and evals is None:
        return None
    out = {"wall_s": None if wall is None else float(wall), "evaluations": None if evals is None else int(evals),
           "raw": {k: v for k, v in src.items() if isinstance(v, (int, float, str, bool)) or v is None}}
    if isinstance(info.get("source"), str):
        out["source"] = info["source"]
    return out


def library_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("torch", "diffusers", "torch-pruning", "fvcore", "clean-fid", "optuna", "ray", "numpy", "diffnas"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass  # not installed (e.g. ray on a GPU box): the record simply lacks that version
    return out


def machine_info(device: Any) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "device": str(device)}
    if torch.cuda.is_available() and str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


@dataclass(frozen=True)
class BenchResult:
    """What one ``run_bench`` call did.

    Attributes:
        rows: rows appended by this call (``results.jsonl`` records).
        reused: ``method@budget`` rows already present for the same inputs (not recomputed).
        skipped: ``(method, budget, reason)`` of methods that could not run.
        wall_s: seconds of this call.
    """

    rows: tuple[dict[str, Any], ...]
    reused: tuple[str, ...]
    skipped: tuple[tuple[str, float | None, str], ...]
    wall_s: float


def record_skip(run: RunDir, config_key: str, method: str, budget: float | None, reason: str) -> None:
    log.warning("bench: %s at budget %s skipped: %s", method, budget_key(budget), reason)
    for r in reversed(run.read_results()):
        if r.get("kind") == SKIP_KIND and r.get("method") == method and budget_key(r.get("budget_ratio")) == budget_key(budget) \
                and r.get("config_key") == config_key:
            if r.get("reason") == reason:
                return
            break
    run.append_result({"kind": SKIP_KIND, "run": run.name, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "method": method, "budget_ratio": budget, "config_key": config_key, "reason": reason})



def fmt_number(x: Any) -> str:
    return "-" if x is None or not math.isfinite(float(x)) else f"{float(x):.2f}"


def format_bench(result: BenchResult) -> str:
    """Plain-text table of the rows a bench call wrote, then reused and skipped methods."""
    lines = []
    if result.rows:
        lines.append(f"{'method':<12} {'budget':>6} {'FID (95% CI)':<26} {'MACs ratio':>10} {'speed-up':>8}")
        for r in result.rows:
            ci = f"{r['fid_mean']:.2f} [{fmt_number(r.get('fid_ci_low'))}, {fmt_number(r.get('fid_ci_high'))}]"
            lines.append(f"{r['method']:<12} {budget_key(r['budget_ratio']):>6} {ci:<26} {r['macs_ratio']:>10.3f} "
                         f"{r['speedup']:>7.2f}x")
    if result.reused:
        lines.append(f"already measured (kept): {', '.join(result.reused)}")
    for m, bud, reason in result.skipped:
        lines.append(f"skipped {m} at {budget_key(bud)}: {reason}")
    return "\n".join(lines) + ("\n" if lines else "")
