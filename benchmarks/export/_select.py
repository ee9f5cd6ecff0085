"""Which benchmarked row to export: by (method, budget), or the lowest FID under a MACs-ratio
budget and/or a latency limit."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nas.methods import budget_key
from search_spaces.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["Selection", "select_row"]


@dataclass(frozen=True)
class Selection:
    """What to export.

    Attributes:
        method, budget: one (method, budget) row of the bench results;
        max_macs_ratio: else the lowest-FID exportable row whose trajectory MACs ratio is at most this;
        max_latency_ms: and/or whose latency per image (ms, as benchmarked) is at most this.
    """

    method: str | None = None
    budget: float | None = None
    max_macs_ratio: float | None = None
    max_latency_ms: float | None = None

    def describe(self) -> str:
        if self.method is not None:
            return f"{self.method} at budget {budget_key(self.budget)}"
        parts = []
        if self.max_macs_ratio is not None:
            parts.append(f"MACs ratio <= {self.max_macs_ratio:g}")
        if self.max_latency_ms is not None:
            parts.append(f"latency <= {self.max_latency_ms:g} ms/image")
        return " and ".join(parts)


def _available(rows: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"{r['method']}-{budget_key(r['budget_ratio'])}" for r in rows) or "none"


def select_row(rows: Sequence[Mapping[str, Any]], sel: Selection, exportable: Callable[[Mapping[str, Any]], bool],
               why_not: Callable[[Mapping[str, Any]], str]) -> Mapping[str, Any]:
    """The row ``sel`` names among the report's ``rows``.

    Raises:
        UserError: nothing selected, no such row, the row is not exportable (``why_not`` says how
            to use it instead), or no exportable row meets the limits.

    Example:
        >>> rows = [{"method": "router", "budget_ratio": 0.3, "fid_mean": 5.0, "macs_ratio": 0.29,
        ...          "latency_ms_per_image": 9.0},
        ...         {"method": "router", "budget_ratio": 0.5, "fid_mean": 3.0, "macs_ratio": 0.49,
        ...          "latency_ms_per_image": 14.0}]
        >>> pick = lambda s: select_row(rows, s, lambda r: True, lambda r: "")
        >>> pick(Selection(max_macs_ratio=0.4))["budget_ratio"], pick(Selection(max_latency_ms=20))["budget_ratio"]
        (0.3, 0.5)
        >>> pick(Selection("router", 0.5))["fid_mean"]
        3.0
    """
    budgeted = [r for r in rows if r.get("budget_ratio") is not None]
    if sel.method is not None:
        if sel.budget is None:
            raise UserError("--method needs --budget (e.g. --method router --budget 0.5)")
        hit = [r for r in budgeted if r["method"] == sel.method and budget_key(r["budget_ratio"]) == budget_key(sel.budget)]
        if not hit:
            raise UserError(f"no benchmarked {sel.method} at budget {budget_key(sel.budget)} in the run's results "
                            f"(rows: {_available(budgeted)}); run `diffnas bench` for it first")
        row = hit[-1]
        if not exportable(row):
            raise UserError(f"{sel.method} at budget {budget_key(sel.budget)} cannot be exported as a pipeline folder: "
                            f"{why_not(row)}")
        return row
    if sel.max_macs_ratio is None and sel.max_latency_ms is None:
        raise UserError("say what to export: --method M --budget B, or --max-macs-ratio R and/or --max-latency-ms L")

    def fits(r: Mapping[str, Any]) -> bool:
        if r.get("fid_mean") is None:
            return False
        if sel.max_macs_ratio is not None and (r.get("macs_ratio") is None
                                               or float(r["macs_ratio"]) > sel.max_macs_ratio + 1e-9):
            return False
        if sel.max_latency_ms is not None and (r.get("latency_ms_per_image") is None
                                               or float(r["latency_ms_per_image"]) > sel.max_latency_ms):
            return False
        return True

    fitting = sorted((r for r in budgeted if fits(r)), key=lambda r: float(r["fid_mean"]))
    ok = [r for r in fitting if exportable(r)]
    if not ok:
        raise UserError(f"no exportable benchmarked model meets {sel.describe()} (rows: {_available(budgeted)}); "
                        "relax the limit, or benchmark a budget within it")
    row = ok[0]
    if fitting[0] is not row:
        better = fitting[0]
        log.warning("%s-%s has a lower FID (%.3f vs %.3f) under the same limit but is not a pipeline folder: %s",
                    better["method"], budget_key(better["budget_ratio"]), float(better["fid_mean"]),
                    float(row["fid_mean"]), why_not(better))
    return row
