"""The report's answer to "which one should I ship?": one verdict per budget, from the reported rows.

Rule: at each budget the row with the lowest FID mean wins, whatever its method. diffnas's own
methods are :data:`OWN_METHODS` (the routed and the searched mixtures); every other method at a
budget (uniform width, static pruning, fewer steps, ...) is a baseline, and a verdict says
plainly when a baseline wins. When the FID intervals of the winner and the runner-up overlap,
the verdict says the difference is not resolved at this sample count. The export command is
given when the winner's model is a pipeline folder (``model_path`` holding ``model_index.json``);
otherwise the verdict says how to use the winner instead.

Example:
    >>> rows = [
    ...     {"method": "base", "budget_ratio": None, "fid_mean": 2.9, "fid_ci_low": 2.7, "fid_ci_high": 3.1},
    ...     {"method": "router", "budget_ratio": 0.3, "fid_mean": 3.1, "fid_ci_low": 2.9, "fid_ci_high": 3.3,
    ...      "speedup": 2.8, "model_path": "mixtures/router-0.3"},
    ...     {"method": "fewer_steps", "budget_ratio": 0.3, "fid_mean": 4.9, "fid_ci_low": 4.5,
    ...      "fid_ci_high": 5.3, "speedup": 3.0, "num_steps": 3}]
    >>> v = budget_verdicts({"rows": rows, "machine": {"device": "cpu"}}, "runs/demo",
    ...                     exportable=lambda r: r.get("model_path") is not None)[0]
    >>> v["ship"]["method"], v["baseline_wins"], v["export_command"]
    ('router', False, 'diffnas export runs/demo --method router --budget 0.3')
    >>> print(v["text"])
    at 0.3 of the base model's MACs: ship router-0.3, FID 3.10 [2.90, 3.30] vs base 2.90 [2.70, 3.10], 2.80x faster than the base model on cpu; the best baseline, fewer_steps (base, fewer steps), gives 4.90 [4.50, 5.30]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from benchmarks.report.summary import fmt_ci, fmt_num, method_label, method_order
from nas.methods import budget_key

__all__ = ["OWN_METHODS", "budget_verdicts", "machine_text", "paired_difference"]

#: diffnas's own allocation methods; every other method at a budget is a baseline.
OWN_METHODS = ("router", "search")


def machine_text(machine: Mapping[str, Any] | None) -> str:
    """Where the latency was timed, in words (``cpu (x86_64, 2 cores)``, the GPU's name, ...).

    Example:
        >>> machine_text({"device": "cpu", "processor": "x86_64", "cpu_count": 2})
        'cpu (x86_64, 2 cores)'
        >>> machine_text(None)
        'this machine'
    """
    if not machine:
        return "this machine"
    if machine.get("gpu"):
        return str(machine["gpu"])
    extra = [str(machine[k]) for k in ("processor",) if machine.get(k)]
    if machine.get("cpu_count"):
        extra.append(f"{machine['cpu_count']} cores")
    dev = str(machine.get("device") or "cpu")
    return f"{dev} ({', '.join(extra)})" if extra else dev


def _fid(r: Mapping[str, Any]) -> str:
    return fmt_ci(r.get("fid_mean"), r.get("fid_ci_low"), r.get("fid_ci_high"), 2)


def _overlap(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    lo_a, hi_a, lo_b, hi_b = (x.get(k) for x in (a, b) for k in ("fid_ci_low", "fid_ci_high"))
    if None in (lo_a, hi_a, lo_b, hi_b):
        return False
    return float(lo_a) <= float(hi_b) and float(lo_b) <= float(hi_a)


def paired_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any] | None:
    """FID of ``b`` minus ``a``, seed by seed, with its Student-t interval; None unless both rows
    were scored on the same (at least 2) seeds.

    Every method samples the same initial noise at a given seed, so the part of a seed's FID
    that comes from its noise batch is shared and cancels in the difference: the paired interval
    resolves differences that the two rows' own intervals, which each carry that spread, do not.

    Example:
        >>> a = {"fid_values": [0.20, 0.30, 0.25], "seeds": [0, 1, 2], "confidence": 0.95}
        >>> b = {"fid_values": [0.30, 0.41, 0.34], "seeds": [0, 1, 2]}
        >>> d = paired_difference(a, b)
        >>> round(d["mean"], 3), d["low"] > 0, d["num_seeds"]
        (0.1, True, 3)
    """
    from nas.metrics import t_interval

    va, vb, sa, sb = a.get("fid_values"), b.get("fid_values"), a.get("seeds"), b.get("seeds")
    if not (va and vb and sa and sb) or list(sa) != list(sb) or len(va) != len(vb) or len(va) < 2:
        return None
    confidence = float(a.get("confidence") or 0.95)
    mean, _, half = t_interval([float(y) - float(x) for x, y in zip(va, vb)], confidence)
    assert half is not None  # two or more seeds
    return {"mean": mean, "low": mean - half, "high": mean + half, "num_seeds": len(va), "confidence": confidence,
            "resolved": bool(mean - half > 0 or mean + half < 0)}


def _paired_text(d: Mapping[str, Any], rival: str) -> str:
    word = "worse" if d["mean"] > 0 else "better"
    state = "resolved" if d["resolved"] else "not resolved: the interval holds 0"
    return (f"; paired over the same {d['num_seeds']} seeds, {rival} is {abs(d['mean']):.3f} "
            f"[{d['low']:.3f}, {d['high']:.3f}] {word} ({state})")


def _all_base(r: Mapping[str, Any]) -> bool:
    """True when a mixture row's allocation serves every interval by the base model (no expert)."""
    per = r.get("steps_per_interval") or []
    base = r.get("base_intervals") or []
    return bool(per) and len(set(base)) == len(per)


def _brief(r: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {k: r.get(k) for k in ("method", "budget_ratio", "fid_mean", "fid_ci_low", "fid_ci_high", "macs_ratio",
                                  "latency_ms_per_image", "speedup", "num_steps")}


def _instead(r: Mapping[str, Any], run_text: str) -> str:
    """How to use a winner that is not an exportable pipeline folder."""
    if r["method"] == "fewer_steps":
        return (f"nothing to export: load the base model ({run_text}/base) and sample with "
                f"num_inference_steps={r.get('num_steps')}")
    if r["method"] == "steps":
        return (f"nothing to export: it is the base model ({run_text}/base) sampled along the searched step schedule "
                f"of {run_text}/allocations/steps-{budget_key(r.get('budget_ratio'))}.json (pass its timesteps)")
    if r.get("model_path"):
        return f"its model is {run_text}/{r['model_path']} (not a MixturePipeline folder, so not exportable)"
    return "no saved model of it in this run to export (for a mixture: rerun `diffnas finetune`)"


def budget_verdicts(summary: Mapping[str, Any], run_text: str,
                    exportable: Callable[[Mapping[str, Any]], bool]) -> list[dict[str, Any]]:
    """One verdict per budget of the reported rows (budget order); see the module docstring.

    Args:
        summary: the report's summary (rows with ``model_path``, ``machine``).
        run_text: how the run folder is written in the export command.
        exportable: whether a row's model is a pipeline folder ``diffnas export`` can hand over.
    """
    rows = [r for r in summary["rows"] if r.get("fid_mean") is not None]
    base = next((r for r in rows if r["method"] == "base"), None)
    order = method_order()
    where = machine_text(summary.get("machine"))
    budgets = sorted({float(r["budget_ratio"]) for r in rows if r.get("budget_ratio") is not None})
    out = []
    for b in budgets:
        here = sorted((r for r in rows if r.get("budget_ratio") is not None and abs(float(r["budget_ratio"]) - b) < 1e-12),
                      key=lambda r: (float(r["fid_mean"]), order.get(r["method"], len(order)), r["method"]))
        best = here[0]
        own = [r for r in here if r["method"] in OWN_METHODS]
        baselines = [r for r in here if r["method"] not in OWN_METHODS]
        baseline_wins = best["method"] not in OWN_METHODS
        key = budget_key(b)
        cmd = (f"diffnas export {run_text} --method {best['method']} --budget {key}" if exportable(best) else None)
        text = f"at {key} of the base model's MACs: "
        text += (f"a baseline wins: ship {best['method']}-{key} ({method_label(best['method'])})" if baseline_wins
                 else f"ship {best['method']}-{key}")
        text += f", FID {_fid(best)}"
        if _all_base(best):
            text += " (every interval is served by the base model itself: no pruned expert paid for itself here)"
        if base is not None:
            text += f" vs base {_fid(base)}"
        if best.get("speedup") is not None:
            text += f", {fmt_num(best['speedup'])}x faster than the base model on {where}"
        rival = (own[0] if own else None) if baseline_wins else (baselines[0] if baselines else None)
        if rival is not None:
            what = ("diffnas's best" if baseline_wins else "the best baseline")
            text += f"; {what}, {rival['method']} ({method_label(rival['method'])}), gives {_fid(rival)}"
        paired = paired_difference(best, rival) if rival is not None else None
        runner_up = here[1] if len(here) > 1 else None
        if runner_up is not None and _overlap(best, runner_up):
            if paired is not None and runner_up is rival:  # the paired difference below decides
                text += f" (its interval overlaps {runner_up['method']}'s)"
            else:
                text += (f" (its interval overlaps {runner_up['method']}'s: the difference is not resolved at this "
                         f"sample count)")
        if paired is not None:
            text += _paired_text(paired, rival["method"])
        if cmd is None:
            text += f"; {_instead(best, run_text)}"
        out.append({"budget": key, "ship": _brief(best), "base": _brief(base), "best_own": _brief(own[0] if own else None),
                    "best_baseline": _brief(baselines[0] if baselines else None), "baseline_wins": baseline_wins,
                    "overlaps_runner_up": bool(runner_up is not None and _overlap(best, runner_up)),
                    "paired_vs_rival": paired,
                    "export_command": cmd, "text": text})
    return out
