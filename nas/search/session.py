"""A search session and its results: :class:`SearchSession` (folder lock, Optuna storage, one
:class:`~nas.search.driver.StudyDriver` per study; :meth:`SearchSession.finish` writes the trial
table, fronts, allocations and summary) and what it returns (:class:`SearchResult`, one
:class:`StudyResult` per study). Every backend runs its studies inside a session."""

from __future__ import annotations

import collections
import json
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experts.intervals import Intervals
from nas.config import SearchConfig
from nas.errors import UserError
from nas.run import RunDir, to_jsonable
from nas.search.allocations import allocation_path, arch_to_allocation, known_points
from nas.search.driver import StudyDriver
from nas.search.ledger import study_specs
from nas.search.objective import Objective
from nas.search.outputs import atomic_json, front_point, sessions_wall_s, trial_rows, write_trial_table
from nas.search.storage import append_line, lock_folder, open_storage
from search_spaces import Arch, SearchSpace

__all__ = ["SearchResult", "SearchSession", "StudyResult", "relative_storage"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyResult:
    """What one study produced.

    Attributes:
        name, mode, budget_ratio: the study.
        n_evaluated: architectures evaluated at the search fidelity (complete + failed).
        n_failed: of those, failed ones.
        n_promoted: expensive evaluations.
        counts: trials of the study answered as duplicates, interrupted (re-queued), skipped as
            infeasible, invalid; ``recovered``: trials committed but not told, settled this session.
        best: per budget, the best feasible record (``None`` when nothing feasible).
        pareto: the (quality, MACs ratio) front.
        cost: evaluations per fidelity, evaluation seconds, sampled images.
        min_macs_ratio: MACs ratio of the space's smallest arch (budgets below it are infeasible).
    """

    name: str
    mode: str
    budget_ratio: float | None
    n_evaluated: int
    n_failed: int
    n_promoted: int
    counts: Mapping[str, int]
    best: Mapping[float, dict[str, Any] | None]
    pareto: Sequence[dict[str, Any]]
    cost: Mapping[str, Any]
    min_macs_ratio: float = 0.0


@dataclass(frozen=True)
class SearchResult:
    """What a search produced (also written to ``search/summary.json``).

    Attributes:
        studies: one per study.
        allocations: budget -> ``allocations/search-<budget>.json`` written.
        trial_table: ``search/trials.csv`` (``search/trials.jsonl`` beside it).
        summary_path: ``search/summary.json``.
        storage: the Optuna storage (URL or journal path) for ``optuna-dashboard``.
        wall_s: wall seconds of this session.
        side_jobs: outcome of jobs run beside the studies (router training), by name.
    """

    studies: tuple[StudyResult, ...]
    allocations: Mapping[float, Path]
    trial_table: Path
    summary_path: Path
    storage: str
    wall_s: float
    side_jobs: Mapping[str, Any] = field(default_factory=dict)


class SearchSession:
    """Lock, storage and one :class:`StudyDriver` per study; :meth:`finish` writes outputs.

    Used by both backends as a context manager.
    """

    def __init__(
        self,
        space: SearchSpace,
        objective: Objective,
        config: SearchConfig,
        run: RunDir,
        intervals: Intervals | None = None,
        seed: int = 0,
        lock_fd: int | None = None,
    ) -> None:
        """``lock_fd``: the search folder's lock (:func:`~nas.search.storage.lock_folder`) when the
        caller took it already (before starting a local Ray); it stays the caller's to release."""
        self.space = space
        self.objective = objective
        self.config = config
        self.run = run
        self.intervals = intervals
        self.seed = int(config.seed if config.seed is not None else seed)
        self.search_dir = run.search_dir
        self.drivers: list[StudyDriver] = []
        self.storage: Any = None
        self.storage_desc = ""
        self._lock_fd: int | None = None
        self._held_lock = lock_fd
        self._t0 = time.time()

    def __enter__(self) -> SearchSession:
        fidelities = tuple(getattr(self.objective, "fidelities", ()) or ())
        if not fidelities:
            raise UserError("the objective declares no fidelities (e.g. fidelities = ('proxy', 'fid'))")
        self.search_dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            self.storage, self.storage_desc = open_storage(self.config.storage, self.search_dir)
            for spec in study_specs(self.config):
                known = self._known_points(spec.budget_ratio)
                if not spec.constrained:
                    for b in spec.budgets:
                        known += [(f"{n}@{b:g}", a) for n, a in self._known_points(b)[1:]]
                drv = StudyDriver(self.space, spec, self.config, self.storage, self.run, fidelities,
                                  seed=self.seed, known=known, reference_macs=self.reference_macs)
                drv.open()
                self.drivers.append(drv)
            append_line(self.search_dir / "sessions.jsonl",
                         json.dumps({"event": "start", "time": self._t0, "pid": os.getpid(),
                                     "host": socket.gethostname()}) + "\n")
        except BaseException:
            self._release_lock()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._release_lock()

    @property
    def reference_macs(self) -> int | None:
        """The objective's ``reference_macs`` (what budget ratio 1 means), if it names one."""
        ref = getattr(self.objective, "reference_macs", None)
        return int(ref) if ref else None

    @property
    def seeded(self) -> bool:
        """Whether this search is seeded with the router's allocation (``search.seed_with_router``
        and an objective that allows it: the steps-only baseline never is)."""
        return bool(self.config.seed_with_router) and bool(getattr(self.objective, "enqueue_router", True))

    @property
    def allocation_method(self) -> str:
        """The ``<method>`` of the allocation files written: the objective's ``allocation_method``
        (default ``search``); a seeded search writes ``search_seeded`` instead of ``search``."""
        method = getattr(self.objective, "allocation_method", None) or "search"
        return "search_seeded" if self.seeded and method == "search" else method

    def _known_points(self, budget_ratio: float | None) -> list[tuple[str, Arch]]:
        """:func:`known_points` (``full`` and ``uniform``), or the objective's own
        ``known_points(budget_ratio)`` when it gives a list (points of a joint space, e.g. the base
        schedule at uniform width), followed by the router's allocation only in a seeded search
        (:attr:`seeded`). The default search never sees the router's answer."""
        own = getattr(self.objective, "known_points", None)
        points = own(budget_ratio) if callable(own) else None
        if points is None:
            found = known_points(self.space, budget_ratio)
        else:
            found = [(n, Arch(a)) for n, a in points]
        if budget_ratio is not None and self.seeded:
            found += [(n, a) for n, a in known_points(self.space, budget_ratio, self.run.allocations_dir)
                      if n == "router"]
        return found

    def _acquire_lock(self) -> None:
        if self._held_lock is None:
            self._lock_fd = lock_folder(self.search_dir)

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def refresh_known(self) -> None:
        """Re-scan known points (a router allocation may have appeared) and enqueue new ones
        (a seeded search only)."""
        if not self.config.enqueue_known or not self.seeded:
            return
        for drv in self.drivers:
            if drv.search_done():
                continue
            budgets = [drv.spec.budget_ratio] if drv.spec.constrained else list(drv.spec.budgets)
            known = []
            for b in budgets:
                known += [(n, a) for n, a in self._known_points(b) if n == "router"]
            drv.enqueue_known(known)

    def finish(self, side_jobs: Mapping[str, Any] | None = None) -> SearchResult:
        """Write the trial table, fronts, allocations and summary; returns the result."""
        wall_s = time.time() - self._t0
        append_line(self.search_dir / "sessions.jsonl",
                     json.dumps({"event": "end", "time": time.time(), "pid": os.getpid(), "wall_s": wall_s}) + "\n")
        total_wall_s = sessions_wall_s(self.search_dir / "sessions.jsonl")
        studies = []
        rows: list[dict[str, Any]] = []
        best_by_budget: dict[float, tuple[dict[str, Any], StudyDriver]] = {}
        for drv in self.drivers:
            study, study_rows = self._finish_study(drv)
            rows += study_rows
            studies.append(study)
            _keep_best(best_by_budget, study.best, drv)
        allocations = self._write_allocations(best_by_budget, total_wall_s)
        table = self.search_dir / "trials.csv"
        write_trial_table(rows, table, self.search_dir / "trials.jsonl")
        summary = {
            "storage": self.storage_in_run(),
            "dashboard": f"optuna-dashboard {self.storage_in_run()}  (from the run folder)",
            "seeded_with_router": self.seeded,
            "config": to_jsonable(self.config),
            "seed": self.seed,
            "wall_s_session": wall_s,
            "wall_s_all_sessions": total_wall_s,
            "side_jobs": to_jsonable(dict(side_jobs or {})),
            "allocations": {f"{b:g}": _relative(p, self.run.path) for b, p in allocations.items()},
            "studies": [_study_summary(s) for s in studies],
        }
        summary_path = self.search_dir / "summary.json"
        atomic_json(summary_path, summary)
        return SearchResult(tuple(studies), allocations, table, summary_path, self.storage_desc, wall_s,
                            dict(side_jobs or {}))

    def _finish_study(self, drv: StudyDriver) -> tuple[StudyResult, list[dict[str, Any]]]:
        """One study's result and trial rows; writes its ``pareto-<study>.json``."""
        study_rows = trial_rows(drv)
        states = collections.Counter(r["state"] for r in study_rows)
        counts = {"duplicates": states["duplicate"], "interrupted": states["interrupted"],
                  "skipped_infeasible": states["skipped_infeasible"], "invalid": states["invalid"],
                  "recovered": drv.counts["recovered"]}
        best = {b: drv.best(b) for b in drv.spec.budgets}
        front = drv.pareto()
        atomic_json(self.search_dir / f"pareto-{drv.spec.name}.json", {
            "study": drv.spec.name, "mode": drv.spec.mode, "budget_ratio": drv.spec.budget_ratio,
            "objectives": ["quality", "macs_ratio"],
            "source": "optuna study.best_trials" if not drv.spec.constrained
            else "non-dominated feasible trials of the constrained study",
            "points": [front_point(r, drv) for r in front],
        })
        evaluated = list(drv.completed.values())
        study = StudyResult(
            name=drv.spec.name, mode=drv.spec.mode, budget_ratio=drv.spec.budget_ratio,
            n_evaluated=len(evaluated), n_failed=sum(r.get("state") != "complete" for r in evaluated),
            n_promoted=len(drv.promoted), counts=counts, best=best, pareto=front, cost=drv.cost(),
            min_macs_ratio=drv.min_macs_ratio,
        )
        return study, study_rows

    def storage_in_run(self) -> str:
        """The storage as stored in the run folder's files: a path relative to the run folder when
        the storage lies inside it (``sqlite:///search/study.db``, ``search/journal.log``), else as
        given (an RDB URL or a file elsewhere), so a moved or copied run stays valid."""
        return relative_storage(self.storage_desc, self.run.path)

    def _write_allocations(self, best_by_budget: Mapping[float, tuple[dict[str, Any], StudyDriver]],
                           total_wall_s: float) -> dict[float, Path]:
        """Write ``allocations/<method>-<budget>.json`` of each budget's best (none without intervals;
        the method is :attr:`allocation_method`). A file whose allocation and evaluations are
        unchanged (a no-op re-run) is left byte-identical: only the session wall time would differ."""
        allocations: dict[float, Path] = {}
        for b, (rec, drv) in sorted(best_by_budget.items()):
            if self.intervals is None:
                continue
            cost = drv.cost()
            info = {
                "study": drv.spec.name, "trial_number": rec["number"], "key": rec["key"],
                "selected_by": rec["selected_by"], "quality": rec["quality"],
                "quality_full": rec.get("quality_full"), "metrics": rec.get("metrics"),
                "metrics_full": rec.get("metrics_full"), "sampler": self.config.sampler, "seed": self.seed,
                "mode": self.config.mode, "storage": self.storage_in_run(),
                "seeded_with_router": self.seeded,
                "search_cost": {**cost, "trials": len(drv.completed), "wall_s_all_sessions": total_wall_s},
                # the same cost in the shape the router writes (evaluations per fidelity, seconds)
                "cost": {"evaluations": dict(cost["evaluations"]),
                         "evaluations_per_fidelity": dict(cost["evaluations"]), "wall_s": total_wall_s,
                         "eval_s": cost["eval_s"], "cpu_s": cost["cpu_s"], "gpu_s": cost["gpu_s"]},
                # where the best arch came from: the sampler, or a point enqueued before the search
                # (``router``: only in a seeded search, the routing agent's own allocation)
                "source": drv.completed.get(rec["key"], rec).get("source"),
            }
            method = self.allocation_method
            alloc = arch_to_allocation(self.space, rec["arch"], self.intervals, b, method, info,
                                       reference_macs=self.reference_macs)
            path = allocation_path(self.run.allocations_dir, method, b)
            if _same_allocation(path, alloc.to_json()):
                log.info("%s is up to date (same allocation and evaluations); left as it is", path.name)
            else:
                alloc.save(path)
            allocations[b] = path
        if self.intervals is None:
            log.info("no intervals given: best archs are in search/summary.json, no allocation files written")
        return allocations


#: Fields of an allocation's ``info`` that change with every session even when nothing was
#: evaluated (the sessions' wall time): ignored when deciding whether to rewrite the file.
_VOLATILE_INFO = (("search_cost", "wall_s_all_sessions"), ("cost", "wall_s"))


def _stable(data: Any) -> Any:
    """An allocation's JSON without its :data:`_VOLATILE_INFO` fields."""
    if not isinstance(data, dict):
        return data
    out = json.loads(json.dumps(data))
    info = out.get("info")
    if isinstance(info, dict):
        for section, key in _VOLATILE_INFO:
            if isinstance(info.get(section), dict):
                info[section].pop(key, None)
    return out


def _same_allocation(path: Path, new_text: str) -> bool:
    """Whether ``path`` already holds ``new_text`` up to the volatile fields."""
    if not path.is_file():
        return False
    try:
        return _stable(json.loads(path.read_text())) == _stable(json.loads(new_text))
    except (OSError, ValueError):
        return False  # unreadable: rewritten


def relative_storage(storage: str, run_path: Path) -> str:
    """``storage`` (an Optuna URL or journal path) with a path inside ``run_path`` made relative
    to it.

    Example:
        >>> relative_storage("sqlite:////data/runs/r/search/study.db", Path("/data/runs/r"))
        'sqlite:///search/study.db'
        >>> relative_storage("postgresql://host/db", Path("/data/runs/r"))
        'postgresql://host/db'
    """
    prefix = "sqlite:///" if storage.startswith("sqlite:///") else ""
    if not prefix and "://" in storage:
        return storage
    target = Path(storage[len(prefix):])
    if not target.is_absolute():
        return storage
    try:
        rel = target.resolve().relative_to(Path(run_path).resolve())
    except ValueError:
        return storage
    return prefix + rel.as_posix()


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it, else as it is."""
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


def _keep_best(best_by_budget: dict[float, tuple[dict[str, Any], StudyDriver]],
               best: Mapping[float, dict[str, Any] | None], drv: StudyDriver) -> None:
    """Keep, per budget, the better of the kept record and this study's best (see :func:`_rank`)."""
    for b, rec in best.items():
        if rec is not None:
            prev = best_by_budget.get(b)
            if prev is None or _rank(rec) < _rank(prev[0]):
                best_by_budget[b] = (rec, drv)


def _study_summary(s: StudyResult) -> dict[str, Any]:
    """One study's entry of ``search/summary.json``."""
    return {"name": s.name, "mode": s.mode, "budget_ratio": s.budget_ratio, "evaluated": s.n_evaluated,
            "failed": s.n_failed, "promoted": s.n_promoted, **s.counts, "cost": s.cost,
            "pareto_size": len(s.pareto), "min_macs_ratio": s.min_macs_ratio,
            "best": {f"{b:g}": (None if r is None else {k: r.get(k) for k in (
                "number", "key", "quality", "quality_full", "macs_ratio", "selected_by", "source")})
                     for b, r in s.best.items()}}


def _rank(rec: Mapping[str, Any]) -> tuple[float, float]:
    q = rec.get("quality_full") if rec.get("quality_full") is not None else rec["quality"]
    return (float(q), float(rec["macs_ratio"]))
