"""How a search runs: the :class:`SearchBackend` protocol, the registry of backends by name
(``search.backend``), the in-process ``local`` backend, and :func:`run_search`, the entry point
that hands a :class:`SearchRequest` to the configured backend.

A backend runs every study of the request inside a
:class:`~nas.search.session.SearchSession` (which owns the lock, the storage, the drivers and
the outputs), so all backends write the same files. The ``ray`` backend lives in
:mod:`nas.ray_backend`, the only package that imports ``ray``; it is registered here by its
import path and imported on first use, so the search does not depend on it. A new backend is
one object with a ``run(request)`` method and one :func:`register_backend` call.

Example:
    >>> sorted(backend_names())
    ['local', 'ray']
    >>> get_backend("local").run  # doctest: +ELLIPSIS
    <bound method LocalBackend.run of ...>
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from experts.intervals import Intervals
from nas.config import SearchConfig
from nas.errors import UserError
from nas.run import RunDir
from nas.search.ledger import TrialOutcome
from nas.search.objective import EvalContext, Objective
from nas.search.session import SearchResult, SearchSession
from search_spaces import Arch, SearchSpace

__all__ = [
    "LocalBackend",
    "SearchBackend",
    "SearchRequest",
    "backend_names",
    "evaluate_with_retries",
    "get_backend",
    "register_backend",
    "run_search",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchRequest:
    """Everything a backend needs to run (or resume) a search; see :func:`run_search`.

    Attributes:
        space, objective, config, run: what to search, how to score it, the ``search`` section
            of the config, the run directory.
        intervals: the experts' intervals (``None``: no allocation files are written).
        seed: used when ``config.seed`` is ``None``.
        device: torch device of in-process evaluations (Ray trials choose their own).
        side_jobs: name -> job run beside the studies (backends that support it).
    """

    space: SearchSpace
    objective: Objective
    config: SearchConfig
    run: RunDir
    intervals: Intervals | None = None
    seed: int = 0
    device: str = "cpu"
    side_jobs: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class SearchBackend(Protocol):
    """Runs the studies of a request and returns what :meth:`SearchSession.finish` returns."""

    def run(self, request: SearchRequest) -> SearchResult:
        ...  # pragma: no cover


def evaluate_with_retries(
    objective: Objective, arch: Arch, context: EvalContext, max_failures: int
) -> TrialOutcome:
    """Evaluate in-process, retrying up to ``max_failures`` times when the objective raises."""
    error = None
    for attempt in range(1, max_failures + 2):
        start = time.time()
        cpu0 = time.process_time()
        try:
            metrics = dict(objective.evaluate(arch, context.fidelity, context))
        except Exception as err:  # noqa: BLE001 - any failure of a trial is recorded, not fatal
            error = "".join(traceback.format_exception_only(type(err), err)).strip()
            log.warning("%s trial %d (%s) failed on attempt %d: %s", context.study, context.trial_number,
                        context.fidelity, attempt, error)
            continue
        end = time.time()
        placement = {"node_id": "", "gpu_ids": [], "pid": os.getpid(), "host": socket.gethostname(),
                     "device": context.device, "start": start, "end": end, "cpu_s": time.process_time() - cpu0}
        return TrialOutcome(metrics, None, placement, end - start, attempt)
    return TrialOutcome(None, error, {"pid": os.getpid(), "host": socket.gethostname()}, 0.0, max_failures + 1)


class LocalBackend:
    """In-process and sequential: the studies take turns, one evaluation at a time, then the
    promotions."""

    def run(self, request: SearchRequest) -> SearchResult:
        if request.side_jobs:
            raise UserError("side jobs (router training beside the search) need search.backend=ray")
        with SearchSession(request.space, request.objective, request.config, request.run, request.intervals,
                           request.seed) as session:
            self._search(session, request.device)
            self._promote(session, request.device)
            return session.finish()

    @staticmethod
    def _search(session: SearchSession, device: str) -> None:
        cfg = session.config
        active = list(session.drivers)
        for _ in range(cfg.n_trials * (cfg.max_duplicate_proposals + 1) * max(1, len(active)) + 1):
            if not active:
                break
            for drv in list(active):
                got = drv.next_proposal()
                if got is None:
                    active.remove(drv)
                    continue
                trial, p = got
                ctx = EvalContext(drv.spec.name, p.number, p.key, p.fidelity, device, session.seed,
                                  drv.spec.budget_ratio)
                outcome = evaluate_with_retries(session.objective, p.arch, ctx, cfg.max_failures)
                rec = drv.commit(p, outcome)
                drv.tell(trial, rec)

    @staticmethod
    def _promote(session: SearchSession, device: str) -> None:
        for drv in session.drivers:
            for p in drv.promotion_candidates():
                drv.start_promotion(p)
                ctx = EvalContext(drv.spec.name, p.number, p.key, p.fidelity, device, session.seed,
                                  drv.spec.budget_ratio)
                drv.commit_promotion(p, evaluate_with_retries(session.objective, p.arch, ctx,
                                                              session.config.max_failures))


# name -> a backend, or "module:attribute" naming one (imported on first use)
_BACKENDS: dict[str, SearchBackend | str] = {
    "local": LocalBackend(),
    "ray": "nas.ray_backend:RayBackend",
}


def register_backend(name: str, backend: SearchBackend | str) -> None:
    """Make ``backend`` the one ``search.backend=<name>`` runs.

    ``backend`` is an object with ``run(request)``, or ``"module:attribute"`` naming one (or a
    class whose instances have it), imported when the backend is first used.
    """
    if isinstance(backend, str):
        if ":" not in backend:
            raise ValueError(f"backend path {backend!r} must read 'module:attribute'")
    elif not isinstance(backend, SearchBackend):
        raise TypeError(f"a search backend needs a run(request) method; got {type(backend).__name__}")
    _BACKENDS[name] = backend


def backend_names() -> tuple[str, ...]:
    """The registered backend names."""
    return tuple(_BACKENDS)


def get_backend(name: str) -> SearchBackend:
    """The backend registered as ``name`` (imported now when it was registered by path)."""
    if name not in _BACKENDS:
        raise UserError(f"unknown search backend {name!r}; registered: {', '.join(sorted(_BACKENDS))}")
    entry = _BACKENDS[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        found = getattr(importlib.import_module(module), attr)
        entry = found() if isinstance(found, type) else found
        if not isinstance(entry, SearchBackend):
            raise TypeError(f"{_BACKENDS[name]!r} (search backend {name!r}) has no run(request) method")
        _BACKENDS[name] = entry
    return entry


def run_search(
    space: SearchSpace,
    objective: Objective,
    config: SearchConfig,
    run: RunDir,
    *,
    intervals: Intervals | None = None,
    seed: int = 0,
    device: str = "cpu",
    side_jobs: Mapping[str, Any] | None = None,
) -> SearchResult:
    """Run (or resume) the search described by ``config`` and write its outputs.

    Args:
        space: the search space (a :class:`ProductSpace` over experts for allocations).
        objective: what to minimise (see :class:`Objective`).
        config: the ``search`` section of the experiment config; ``config.backend`` names the
            backend (:func:`get_backend`).
        run: the run directory (``search/``, ``allocations/``, ``results.jsonl``).
        intervals: the experts' intervals; needed to write ``allocations/search-<budget>.json``.
        seed: used when ``config.seed`` is ``None`` (the experiment seed).
        device: torch device of the local backend (Ray trials choose their own).
        side_jobs: Ray backend only: ``name -> nas.ray_backend.SideJob`` run beside the studies
            (the router's training).

    Re-running the same call after a crash resumes: evaluated architectures are not evaluated
    again, interrupted ones are, and the outputs are rewritten from everything stored.
    """
    request = SearchRequest(space, objective, config, run, intervals=intervals, seed=seed, device=device,
                            side_jobs=dict(side_jobs or {}))
    return get_backend(config.backend).run(request)
