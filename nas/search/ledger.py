"""The record side of a study: what it is (:class:`StudySpec`), what it evaluates
(:class:`Proposal`), what came back (:class:`TrialOutcome`), and the evaluations committed to
the run's ``results.jsonl`` (:class:`StudyLedger`), the source of truth of a search: Optuna is
told only after a line is committed, and everything the outputs say is read off the ledger."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from nas.config import SearchConfig
from nas.run import RunDir, to_jsonable
from nas.search.allocations import budget_label
from search_spaces import Arch

__all__ = ["EPS", "RECORD_KIND", "Proposal", "StudyLedger", "StudySpec", "TrialOutcome", "study_specs"]

log = logging.getLogger(__name__)

#: ``kind`` of the ``results.jsonl`` lines written by the search (one per evaluation).
RECORD_KIND = "search_trial"

#: Tolerance of the MACs-ratio comparisons with a budget (a ratio within it of the budget is feasible).
EPS = 1e-9


@dataclass(frozen=True)
class StudySpec:
    """One Optuna study of a search.

    Attributes:
        name: study name in the storage.
        mode: ``constrained`` or ``multi_objective``.
        budget_ratio: the constraint's budget (``None`` in multi-objective mode).
        budgets: budgets whose best allocation is taken from this study.
    """

    name: str
    mode: str
    budget_ratio: float | None
    budgets: tuple[float, ...]

    @property
    def constrained(self) -> bool:
        return self.mode == "constrained"


def study_specs(config: SearchConfig) -> list[StudySpec]:
    """The studies of a search: one per budget (constrained) or one in all (multi-objective).

    Example:
        >>> [s.name for s in study_specs(SearchConfig(budgets=(0.3, 0.5)))]
        ['search-b0.3', 'search-b0.5']
    """
    if config.mode == "constrained":
        return [
            StudySpec(f"{config.study_prefix}-b{budget_label(b)}", "constrained", float(b), (float(b),))
            for b in config.budgets
        ]
    return [StudySpec(f"{config.study_prefix}-mo", "multi_objective", None, tuple(float(b) for b in config.budgets))]


@dataclass(frozen=True)
class Proposal:
    """One architecture to evaluate, as the driver sees it."""

    study: str
    number: int
    arch: Arch
    key: str
    macs: int
    macs_ratio: float
    constraint: float | None
    feasible: bool
    fidelity: str
    source: str = "sampler"


@dataclass(frozen=True)
class TrialOutcome:
    """What came back from evaluating a proposal.

    Attributes:
        metrics: the objective's metrics, or ``None`` when the evaluation failed.
        error: the error text when it failed.
        placement: where it ran (``node_id``, ``gpu_ids``, ``pid``, ``host``, ``device``,
            ``start``, ``end`` wall-clock seconds).
        eval_s: seconds the evaluation took (last attempt).
        attempts: attempts made (retries + 1), when known.
    """

    metrics: Mapping[str, Any] | None
    error: str | None = None
    placement: Mapping[str, Any] = field(default_factory=dict)
    eval_s: float = 0.0
    attempts: int = 1


def _placement_float(rec: Mapping[str, Any], key: str) -> float:
    """A number recorded in a record's ``placement`` (0 when absent, e.g. an older record)."""
    try:
        return float((rec.get("placement") or {}).get(key) or 0.0)
    except (TypeError, ValueError):
        return 0.0


def _quality(metrics: Mapping[str, Any] | None) -> float | None:
    if metrics is None:
        return None
    q = metrics.get("quality")
    try:
        q = float(q)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return q if math.isfinite(q) else None


class StudyLedger:
    """The evaluations of one study committed to ``results.jsonl``, and what is read off them.

    :meth:`commit` and :meth:`commit_promotion` append one locked, fsynced line per evaluation
    (:meth:`nas.run.RunDir.append_result`): the commit point of the search's exactly-once
    bookkeeping (see :mod:`nas.search`). :meth:`load` reads them back on start. The ledger knows
    nothing of Optuna; a :class:`~nas.search.driver.StudyDriver` owns one per study.

    Attributes:
        completed: architecture key -> search-fidelity record (the first of each key).
        promoted: architecture key -> expensive-fidelity record.
        by_number: Optuna trial number -> search-fidelity record.

    Example:
        >>> import tempfile
        >>> from nas.run import RunDir
        >>> spec = StudySpec("s", "constrained", 0.5, (0.5,))
        >>> ledger = StudyLedger(RunDir(tempfile.mkdtemp(), "r"), spec, "proxy")
        >>> p = Proposal("s", 0, Arch({"a": 1}), "k0", macs=5, macs_ratio=0.5, constraint=0.0,
        ...              feasible=True, fidelity="proxy")
        >>> rec = ledger.commit(p, TrialOutcome({"quality": 0.25}))
        >>> ledger.values_of(rec), ledger.best(0.5)["key"], ledger.best(0.4)
        ([0.25], 'k0', None)
    """

    def __init__(
        self,
        run: RunDir,
        spec: StudySpec,
        search_fidelity: str,
        full_fidelity: str | None = None,
        promote_top_k: int = 0,
    ) -> None:
        self.run = run
        self.spec = spec
        self.search_fidelity = search_fidelity
        self.full_fidelity = full_fidelity
        self.promote_top_k = int(promote_top_k)
        self.completed: dict[str, dict[str, Any]] = {}  # key -> search-fidelity record
        self.promoted: dict[str, dict[str, Any]] = {}  # key -> expensive-fidelity record
        self.by_number: dict[int, dict[str, Any]] = {}

    def load(self) -> None:
        """(Re)read this study's committed evaluations from ``results.jsonl``."""
        self.completed.clear()
        self.promoted.clear()
        self.by_number.clear()
        repeats = 0
        for rec in self.run.read_results():
            if rec.get("kind") != RECORD_KIND or rec.get("study") != self.spec.name:
                continue
            key = rec.get("key")
            if rec.get("fidelity") == self.search_fidelity:
                if key in self.completed:
                    repeats += 1
                    continue
                self.completed[key] = rec
                if isinstance(rec.get("number"), int):
                    self.by_number[rec["number"]] = rec
            elif self.full_fidelity is not None and rec.get("fidelity") == self.full_fidelity:
                self.promoted.setdefault(key, rec)
        if repeats:
            log.warning("%s: results.jsonl holds %d repeated evaluations; the first of each is used",
                        self.spec.name, repeats)

    # ------------------------------------------------------------------------------- commit
    def record(self, p: Proposal, outcome: TrialOutcome) -> dict[str, Any]:
        """The ``results.jsonl`` line of an evaluation (not written)."""
        q = _quality(outcome.metrics)
        failed = q is None
        error = outcome.error
        if failed and error is None:
            error = "the objective returned no finite 'quality'" if outcome.metrics is not None else "failed"
        return {
            "kind": RECORD_KIND,
            "time": time.time(),
            "study": p.study,
            "mode": self.spec.mode,
            "budget_ratio": self.spec.budget_ratio,
            "number": p.number,
            "key": p.key,
            "fidelity": p.fidelity,
            "state": "failed" if failed else "complete",
            "source": p.source,
            "quality": q,
            "macs": p.macs,
            "macs_ratio": p.macs_ratio,
            "constraint": p.constraint,
            "feasible": p.feasible,
            "metrics": dict(outcome.metrics) if outcome.metrics is not None else None,
            "error": (error or "")[-2000:] if failed else None,
            "attempts": outcome.attempts,
            "eval_s": outcome.eval_s,
            "placement": dict(outcome.placement),
            "arch": p.arch.to_dict(),
        }

    def _append(self, p: Proposal, outcome: TrialOutcome) -> dict[str, Any]:
        """Append the record (the commit point); returns it as it reads back from the file."""
        rec = self.record(p, outcome)
        self.run.append_result(rec)
        return json.loads(json.dumps(to_jsonable(rec)))

    def commit(self, p: Proposal, outcome: TrialOutcome) -> dict[str, Any]:
        """Commit a search-fidelity evaluation; returns the committed record."""
        rec = self._append(p, outcome)
        self.completed[p.key] = rec
        self.by_number[p.number] = rec
        return rec

    def commit_promotion(self, p: Proposal, outcome: TrialOutcome) -> dict[str, Any]:
        """Commit an expensive-fidelity evaluation; returns the committed record."""
        rec = self._append(p, outcome)
        self.promoted[p.key] = rec
        return rec

    def values_of(self, rec: Mapping[str, Any]) -> list[float] | None:
        """Objective values to tell Optuna for a committed record (``None``: failed)."""
        if rec.get("state") != "complete" or rec.get("quality") is None:
            return None
        if self.spec.constrained:
            return [float(rec["quality"])]
        return [float(rec["quality"]), float(rec["macs_ratio"])]

    # ------------------------------------------------------------------------------ results
    def promotion_candidates(self, in_flight: Collection[str] = (), pending: int = 0) -> list[Proposal]:
        """Per budget, the ``promote_top_k`` best feasible complete trials by proxy that have no
        expensive evaluation yet (nor one in flight: keys in ``in_flight``).

        ``pending``: search evaluations still running. Each can push a trial down by at most one
        place, so only the best ``promote_top_k - pending`` are certain to stay in the top
        ``promote_top_k`` whatever they return: those are the candidates now (promotions start on
        free slots while the last search trials run), and the final set is the same.
        """
        if self.full_fidelity is None:
            return []
        top = self.promote_top_k - max(0, int(pending))
        if top <= 0:
            return []
        out: dict[str, Proposal] = {}
        for b in self.spec.budgets:
            feasible = sorted(
                (r for r in self.completed.values()
                 if r.get("state") == "complete" and float(r["macs_ratio"]) <= b + EPS),
                key=lambda r: (float(r["quality"]), float(r["macs_ratio"]), int(r["number"])),
            )
            for r in feasible[:top]:
                key = r["key"]
                if key in self.promoted or key in in_flight or key in out:
                    continue
                out[key] = Proposal(
                    study=self.spec.name, number=int(r["number"]), arch=Arch(r["arch"]), key=key,
                    macs=int(r["macs"]), macs_ratio=float(r["macs_ratio"]), constraint=r.get("constraint"),
                    feasible=bool(r.get("feasible", True)), fidelity=self.full_fidelity, source="promotion",
                )
        return list(out.values())

    def best(self, budget_ratio: float) -> dict[str, Any] | None:
        """Best feasible evaluated arch for a budget: by the expensive fidelity among promoted
        ones when any were promoted, else by proxy. The record gets ``selected_by``."""
        feasible = [
            r for r in self.completed.values()
            if r.get("state") == "complete" and float(r["macs_ratio"]) <= budget_ratio + EPS
        ]
        if not feasible:
            return None
        promoted = [
            (r, self.promoted[r["key"]]) for r in feasible
            if r["key"] in self.promoted and self.promoted[r["key"]].get("state") == "complete"
        ]
        if promoted:
            r, full = min(promoted, key=lambda rf: (float(rf[1]["quality"]), float(rf[0]["quality"])))
            out = dict(r)
            out["quality_full"] = full["quality"]
            out["metrics_full"] = full.get("metrics")
            out["selected_by"] = self.full_fidelity
            return out
        out = dict(min(feasible, key=lambda r: (float(r["quality"]), float(r["macs_ratio"]))))
        out["selected_by"] = self.search_fidelity
        return out

    def feasible_front(self) -> list[dict[str, Any]]:
        """Non-dominated (quality, MACs ratio) records among feasible complete ones, by MACs ratio."""
        points = [r for r in self.completed.values() if r.get("state") == "complete" and r.get("feasible")]
        front = []
        for r in points:
            q, m = float(r["quality"]), float(r["macs_ratio"])
            dominated = any(
                (float(o["quality"]) <= q and float(o["macs_ratio"]) <= m)
                and (float(o["quality"]) < q or float(o["macs_ratio"]) < m)
                for o in points
            )
            if not dominated:
                front.append(r)
        return sorted(front, key=lambda r: (float(r["macs_ratio"]), float(r["quality"])))

    def cost(self) -> dict[str, Any]:
        """Evaluations, seconds and sampled images spent by this study (from the ledger)."""
        recs = list(self.completed.values()) + list(self.promoted.values())
        images = 0.0
        for r in recs:
            m = r.get("metrics") or {}
            try:
                images += float(m.get("sampled_images", 0) or 0)
            except (TypeError, ValueError):
                pass  # a non-numeric metric from a user objective does not count as images
        return {
            "evaluations": {self.search_fidelity: len(self.completed),
                            **({self.full_fidelity: len(self.promoted)} if self.full_fidelity else {})},
            "eval_s": float(sum(float(r.get("eval_s") or 0.0) for r in recs)),
            # CPU seconds of the evaluating processes (all their threads) and GPU-holding seconds
            # (the wall time of evaluations that ran on a CUDA device)
            "cpu_s": float(sum(_placement_float(r, "cpu_s") for r in recs)),
            "gpu_s": float(sum(float(r.get("eval_s") or 0.0) for r in recs
                               if str((r.get("placement") or {}).get("device") or "").startswith("cuda"))),
            "sampled_images": int(images),
        }
