"""Optuna search of allocations over a search space: the searched alternative to the router.

A *trial* is one architecture of a :class:`~search_spaces.SearchSpace`; for a mixture of
interval experts the space is a :class:`~search_spaces.ProductSpace` over the experts (weights =
sampling steps each expert serves), so one trial is one *allocation* and ``space.macs`` is its
trajectory MACs. Each free dimension is one categorical Optuna parameter over its choice
indices; the sampled values are completed (tied dimensions) and repaired by the space.

Two modes (:class:`~nas.config.SearchConfig` ``mode``):

- ``constrained``: one study per budget, minimise quality subject to
  ``macs_ratio - budget <= 0`` (Optuna constraints, set when the trial is asked: the MACs are
  analytic, so samplers know a trial's feasibility before it is evaluated). Infeasible trials
  are kept apart in every output.
- ``multi_objective``: one study over (quality, MACs ratio); its Pareto front is
  ``study.best_trials``; the best feasible allocation per budget is read off it.

Multi-fidelity: an :class:`Objective` has ``fidelities`` (cheapest first, e.g.
``("proxy", "fid")``). Every trial is evaluated at the first; after a study's search phase the
``promote_top_k`` best feasible trials per budget are evaluated at the last, and the best
allocation is chosen by that expensive metric among promoted trials.

Exactly-once bookkeeping (what makes a killed search resumable):

- the commit point of an evaluation is one line appended (locked, fsynced) to the run's
  ``results.jsonl`` (:meth:`nas.rundir.RunDir.append_result`), keyed by study, Optuna trial
  number, architecture key (:func:`arch_key`) and fidelity; Optuna is told *after* the commit;
- on start, every Optuna trial left RUNNING by a dead driver is reconciled: told with its
  committed result if there is one, else marked failed (``diffnas_state=interrupted``) and its
  parameters re-enqueued, so the architecture is evaluated exactly once in the end;
- a proposal whose architecture already has a committed result is answered from that result
  (told to Optuna, flagged ``diffnas_duplicate_of``) and never evaluated again;
- one driver per search folder at a time (an advisory lock on ``search/.lock``).

Backends: ``local`` (in-process, sequential, here) and ``ray`` (Ray Tune with
``OptunaSearch``, parallel, any cluster: :mod:`nas.ray_backend`). Both share
:class:`StudyDriver`, so their outputs are the same: ``results.jsonl`` lines
(``kind: search_trial``), ``search/trials.csv`` and ``search/trials.jsonl`` (every trial),
``search/pareto-<study>.json``, ``search/summary.json`` (counts and search cost) and
``allocations/search-<budget>.json``; the Optuna storage opens in ``optuna-dashboard``.

Example:
    >>> import tempfile
    >>> from search_spaces import Dimension, SimpleSpace
    >>> from nas.config import SearchConfig
    >>> from nas.rundir import RunDir
    >>> space = SimpleSpace([Dimension("a", (1, 2, 3, 4)), Dimension("b", (1, 2, 3, 4))],
    ...                     macs_fn=lambda x: 10 * x["a"] + 30 * x["b"])
    >>> cfg = SearchConfig(backend="local", n_trials=5, promote_top_k=1, budgets=(0.5,))
    >>> result = run_search(space, SyntheticObjective(space), cfg, RunDir(tempfile.mkdtemp(), "r"))
    >>> study = result.studies[0]
    >>> study.n_evaluated, study.best[0.5]["macs_ratio"] <= 0.5
    (5, True)
"""

from __future__ import annotations

import collections
import contextlib
import csv
import functools
import hashlib
import json
import logging
import math
import os
import socket
import time
import traceback
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from experts.allocation import Allocation
from experts.intervals import Intervals
from nas.config import SearchConfig
from nas.errors import UserError
from nas.rundir import RunDir, to_jsonable
from search_spaces import Arch, Dimension, ProductSpace, SearchSpace
from search_spaces.uniform import uniform_arch

if TYPE_CHECKING:  # pragma: no cover
    import optuna

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "RECORD_KIND",
    "EvalContext",
    "Objective",
    "Proposal",
    "SearchResult",
    "StudyDriver",
    "StudyResult",
    "StudySpec",
    "SyntheticObjective",
    "TrialOutcome",
    "allocation_path",
    "arch_key",
    "arch_to_allocation",
    "allocation_to_arch",
    "evaluate_with_retries",
    "known_points",
    "open_storage",
    "run_search",
    "study_specs",
    "synthetic_mixture_space",
    "uniform_width_arch",
]

log = logging.getLogger(__name__)

#: ``kind`` of the ``results.jsonl`` lines written by the search (one per evaluation).
RECORD_KIND = "search_trial"

_EPS = 1e-9
_ATTR_KEY = "diffnas_key"
_ATTR_SOURCE = "diffnas_source"
_ATTR_STATE = "diffnas_state"
_ATTR_DUP = "diffnas_duplicate_of"
_ATTR_RETRY = "diffnas_retry_of"
_CONSTRAINT_NAME = "macs_ratio_over_budget"


def _optuna() -> Any:
    """Import optuna lazily (the only place in the project that does); its per-trial INFO
    chatter is turned down to WARNING (our own log says what matters)."""
    import optuna

    global _OPTUNA_QUIET
    if not _OPTUNA_QUIET:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        _OPTUNA_QUIET = True
    return optuna


_OPTUNA_QUIET = False


# ============================================================================================
# Objective protocol
# ============================================================================================


@dataclass(frozen=True)
class EvalContext:
    """What an objective knows about the trial it evaluates.

    Attributes:
        study: Optuna study name.
        trial_number: Optuna trial number (``-1`` for promotions of several trials).
        key: :func:`arch_key` of the architecture.
        fidelity: which fidelity to evaluate (one of ``Objective.fidelities``).
        device: torch device string chosen for this trial (``cuda`` when the trial was given a
            GPU and CUDA is present, else ``cpu``).
        seed: evaluation seed: the same for every trial, so trials are compared on the same
            held-out noise and timesteps (common random numbers).
        budget_ratio: the study's budget (``None`` in multi-objective mode).
        node_id, gpu_ids: where the trial runs (Ray node id, GPU ids Ray assigned; empty locally).
    """

    study: str
    trial_number: int
    key: str
    fidelity: str
    device: str = "cpu"
    seed: int = 0
    budget_ratio: float | None = None
    node_id: str = ""
    gpu_ids: tuple[str, ...] = ()


@runtime_checkable
class Objective(Protocol):
    """What the search evaluates. Lower ``quality`` is better.

    ``fidelities`` lists the fidelities cheapest first; the first is used for every trial, the
    last for promoted trials (only when there are at least two). ``evaluate`` returns a mapping
    of named metrics that must contain ``"quality"`` (finite; lower is better) and may contain
    ``"sampled_images"`` (counted in the search cost) and anything else worth recording.
    Objectives are shipped to Ray workers with cloudpickle: keep them small and load models
    lazily on first use.
    """

    fidelities: tuple[str, ...]

    def evaluate(self, arch: Arch, fidelity: str, context: EvalContext) -> Mapping[str, float]:
        ...  # pragma: no cover


@dataclass(frozen=True)
class SyntheticObjective:
    """A cheap deterministic objective for checking the search plumbing (not model quality).

    ``quality = sum_d w_d * (1 - f_d)^2 / sum_d w_d``, where ``f_d`` is the position of the
    chosen value among dimension ``d``'s choices (0 smallest, 1 full) and ``w_d`` a fixed
    weight per dimension name, so dimensions matter unequally and the best allocation under a
    budget is not the uniform one. The ``full`` fidelity is a slightly different function (so
    promotion can change the ranking). Options make it useful for infrastructure tests and for
    dry runs of a cluster (``diffnas search --synthetic``): ``sleep_s`` per evaluation, a list of
    architecture keys that raise, and a JSON-lines log of every evaluation start/end.

    Example:
        >>> from search_spaces import Dimension, SimpleSpace
        >>> s = SimpleSpace([Dimension("w", (1, 2, 3))], macs_fn=lambda a: a["w"])
        >>> obj = SyntheticObjective(s)
        >>> ctx = EvalContext("s", 0, "k", "proxy")
        >>> obj.evaluate(s.full(), "proxy", ctx)["quality"], obj.evaluate(s.smallest(), "proxy", ctx)["quality"]
        (0.0, 1.0)
    """

    space: SearchSpace
    fidelities: tuple[str, ...] = ("proxy", "full")
    sleep_s: float = 0.0
    fail_keys: tuple[str, ...] = ()
    log_path: str | None = None

    def evaluate(self, arch: Arch, fidelity: str, context: EvalContext) -> Mapping[str, float]:
        if fidelity not in self.fidelities:
            raise ValueError(f"unknown fidelity {fidelity!r}; this objective has {list(self.fidelities)}")
        key = arch_key(arch)
        self._log("start", key, fidelity, context)
        if self.sleep_s > 0:
            time.sleep(self.sleep_s)
        if key in self.fail_keys:
            self._log("fail", key, fidelity, context)
            raise RuntimeError(f"synthetic failure for arch {key} (listed in fail_keys)")
        num = den = 0.0
        for d in self.space.free_dimensions():
            n = len(d.choices)
            f = d.index(arch[d.name]) / (n - 1) if n > 1 else 1.0
            w = 1.0 + (zlib.crc32(d.name.encode()) % 7) / 2.0
            num += w * (1.0 - f) ** 2
            den += w
        quality = num / den if den else 0.0
        if fidelity != self.fidelities[0]:
            quality = 1.1 * quality + 0.02 * ((zlib.crc32(key.encode()) % 100) / 100.0)
        self._log("end", key, fidelity, context)
        return {"quality": quality, "sampled_images": 0.0}

    def _log(self, event: str, key: str, fidelity: str, ctx: EvalContext) -> None:
        if not self.log_path:
            return
        line = json.dumps(
            {"event": event, "key": key, "fidelity": fidelity, "study": ctx.study,
             "number": ctx.trial_number, "pid": os.getpid(), "node_id": ctx.node_id,
             "gpu_ids": list(ctx.gpu_ids), "time": time.time()}
        ) + "\n"
        _append_line(Path(self.log_path), line)


@dataclass(frozen=True)
class _LinearMacs:
    """Picklable MACs function ``base + sum(coeff * value)`` (bools count 0/1)."""

    coeffs: tuple[tuple[str, float], ...]
    base: float = 0.0

    def __call__(self, arch: Arch) -> int:
        return int(round(self.base + sum(c * float(arch[n]) for n, c in self.coeffs)))


def synthetic_mixture_space(
    num_experts: int = 3,
    blocks: int = 3,
    widths: Sequence[int] = (8, 16, 24, 32),
    steps: Sequence[int] | None = None,
) -> ProductSpace:
    """A small mixture space for dry runs and tests: per expert, ``blocks`` width dimensions
    (MACs grow with the block index) and one skippable block; expert weights are the sampling
    steps each serves (default: middle experts serve more steps).

    Example:
        >>> s = synthetic_mixture_space(num_experts=2, blocks=2)
        >>> s.free_names()
        ('e0/b0.width', 'e0/b1.width', 'e0/skip.depth', 'e1/b0.width', 'e1/b1.width', 'e1/skip.depth')
        >>> s.macs_ratio(s.smallest()) < 0.5
        True
    """
    from search_spaces import SimpleSpace

    if steps is None:
        steps = [5 + 5 * min(i, num_experts - 1 - i) for i in range(num_experts)]
    if len(steps) != num_experts:
        raise ValueError(f"steps has {len(steps)} entries for {num_experts} experts")
    parts = {}
    for e in range(num_experts):
        dims = [Dimension(f"b{i}.width", tuple(widths)) for i in range(blocks)]
        dims.append(Dimension("skip.depth", (False, True), kind="depth"))
        coeffs = tuple((f"b{i}.width", 100.0 * (i + 1)) for i in range(blocks)) + (("skip.depth", 20.0 * max(widths)),)
        parts[f"e{e}"] = SimpleSpace(dims, macs_fn=_LinearMacs(coeffs, base=10.0 * max(widths)))
    return ProductSpace(parts, weights={f"e{e}": float(s) for e, s in enumerate(steps)})


def _append_line(path: Path, line: str) -> None:
    """Append one line under an advisory lock (several worker processes may write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


# ============================================================================================
# Architectures, known points, allocations
# ============================================================================================


def arch_key(arch: Mapping[str, Any]) -> str:
    """Deterministic short key of an architecture (16 hex digits of SHA-256 of its JSON).

    Example:
        >>> arch_key(Arch({"a": 1, "b": True})) == arch_key({"b": True, "a": 1})
        True
    """
    return hashlib.sha256(Arch(arch).to_json().encode("utf-8")).hexdigest()[:16]


def _budget_label(budget_ratio: float) -> str:
    return f"{budget_ratio:g}"


def allocation_path(allocations_dir: str | os.PathLike[str], method: str, budget_ratio: float) -> Path:
    """``allocations/<method>-<budget>.json`` (budget written with ``%g``: ``search-0.5.json``).

    Example:
        >>> allocation_path("allocations", "router", 0.50).name
        'router-0.5.json'
    """
    return Path(allocations_dir) / f"{method}-{_budget_label(budget_ratio)}.json"


def uniform_width_arch(space: SearchSpace, budget_ratio: float) -> Arch | None:
    """The widest *uniform* arch within the budget (:func:`search_spaces.uniform.uniform_arch`),
    the hand-made baseline a searched allocation must beat; ``None`` when even the narrowest
    uniform arch is over the budget.

    Example:
        >>> from search_spaces import Dimension, SimpleSpace
        >>> s = SimpleSpace([Dimension("a", (8, 16, 32)), Dimension("b", (8, 16, 32))],
        ...                 macs_fn=lambda x: x["a"] + x["b"])
        >>> uniform_width_arch(s, 0.5).to_dict()
        {'a': 16, 'b': 16}
    """
    found = uniform_arch(space, budget_ratio)
    return found.arch if found is not None else None


def allocation_to_arch(space: SearchSpace, allocation: Allocation) -> Arch:
    """The arch of ``space`` that an allocation describes (experts in interval order = parts in
    the space's order); ValueError when it does not fit the space."""
    if isinstance(space, ProductSpace):
        parts = list(space.parts)
        if len(parts) != len(allocation.archs):
            raise ValueError(f"allocation has {len(allocation.archs)} experts, the space has {len(parts)} parts")
        arch = space.join(dict(zip(parts, allocation.archs)))
    else:
        if len(allocation.archs) != 1:
            raise ValueError(f"allocation has {len(allocation.archs)} experts, the space is not a ProductSpace")
        arch = allocation.archs[0]
    space.validate(arch)
    return arch


def arch_to_allocation(
    space: SearchSpace,
    arch: Mapping[str, Any],
    intervals: Intervals,
    budget_ratio: float,
    method: str = "search",
    info: Mapping[str, Any] | None = None,
) -> Allocation:
    """An :class:`~experts.allocation.Allocation` from an arch of a (product) space.

    For a :class:`ProductSpace` the parts are the experts in interval order and the part weights
    are the sampling steps each expert serves; a plain space is one expert serving one step.
    """
    arch = Arch(arch)
    if isinstance(space, ProductSpace):
        parts = list(space.parts)
        if len(parts) != intervals.num_intervals:
            raise UserError(
                f"the search space has {len(parts)} experts but the intervals have {intervals.num_intervals}"
            )
        split = space.split(arch)
        archs = tuple(split[p] for p in parts)
        macs = tuple(space.parts[p].macs(split[p]) for p in parts)
        steps = tuple(int(round(space.weights[p])) for p in parts)
        for p in parts:
            if abs(space.weights[p] - round(space.weights[p])) > 1e-9:
                raise UserError(f"part {p!r} weight {space.weights[p]} is not a whole number of sampling steps")
        base = sum(space.parts[p].macs(space.parts[p].full()) * s for p, s in zip(parts, steps))
    else:
        if intervals.num_intervals != 1:
            raise UserError(f"a single-expert space needs one interval, got {intervals.num_intervals}")
        archs, macs, steps = (arch,), (space.macs(arch),), (1,)
        base = space.macs(space.full())
    return Allocation(
        method=method,
        budget_ratio=float(budget_ratio),
        intervals=intervals,
        archs=archs,
        macs_per_expert=macs,
        steps_per_expert=steps,
        base_trajectory_macs=int(base),
        info=dict(info or {}),
    )


def known_points(
    space: SearchSpace, budget_ratio: float | None, allocations_dir: str | os.PathLike[str] | None = None
) -> list[tuple[str, Arch]]:
    """Points worth evaluating first: ``full``, ``uniform`` (widest uniform arch within the
    budget) and ``router`` (``allocations/router-<budget>.json``, when it exists and fits).

    Example:
        >>> from search_spaces import Dimension, SimpleSpace
        >>> s = SimpleSpace([Dimension("a", (1, 2))], macs_fn=lambda x: x["a"])
        >>> [name for name, _ in known_points(s, 0.5)]
        ['full', 'uniform']
    """
    out: list[tuple[str, Arch]] = [("full", space.full())]
    if budget_ratio is not None:
        uni = uniform_width_arch(space, budget_ratio)
        if uni is not None and uni != space.full():
            out.append(("uniform", uni))
        if allocations_dir is not None:
            path = allocation_path(allocations_dir, "router", budget_ratio)
            if path.exists():
                try:
                    out.append(("router", allocation_to_arch(space, Allocation.load(path))))
                except (ValueError, KeyError, OSError) as err:
                    log.warning("router allocation %s does not fit the search space (%s); not enqueued", path, err)
    return out


# ============================================================================================
# Storage, studies
# ============================================================================================


def open_storage(spec: str, search_dir: str | os.PathLike[str]) -> tuple[Any, str]:
    """Open the Optuna storage named by ``spec``; returns ``(storage, description)``.

    ``sqlite`` -> ``search_dir/study.db``; ``journal`` -> ``search_dir/journal.log``; a URL with
    ``://`` is an RDB URL; a path ending in ``.db`` / ``.sqlite`` is SQLite, ``.log`` / ``.journal``
    a journal file. ``description`` is what to hand to ``optuna-dashboard``.
    """
    optuna = _optuna()
    folder = Path(search_dir)
    folder.mkdir(parents=True, exist_ok=True)
    text = spec.strip()
    if text == "sqlite":
        text = str(folder / "study.db")
    elif text == "journal":
        text = str(folder / "journal.log")
    if "://" in text:
        url = text
    elif text.endswith((".db", ".sqlite", ".sqlite3")):
        url = f"sqlite:///{Path(text).resolve()}"
    elif text.endswith((".log", ".journal", ".jsonl")):
        path = Path(text).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(path))), str(path)
    else:
        raise UserError(
            f"search.storage {spec!r} is not 'sqlite', 'journal', an Optuna storage URL, "
            "or a file path ending in .db or .log"
        )
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        db = url[len("sqlite:///"):]
        Path(db).parent.mkdir(parents=True, exist_ok=True)
        kwargs["engine_kwargs"] = {"creator": functools.partial(_sqlite_connect, db)}
    try:
        return optuna.storages.RDBStorage(url, **kwargs), url
    except Exception as err:  # noqa: BLE001 - driver errors vary by backend
        raise UserError(f"cannot open the Optuna storage {url!r}: {err}") from None


def _sqlite_connect(path: str) -> Any:
    """SQLite connection in WAL mode with ``synchronous=NORMAL``: a commit survives the process
    being killed (what resuming needs) without an fsync per Optuna write (Optuna commits every
    parameter and attribute separately; with fsync each costs ~20 ms on a slow disk)."""
    import sqlite3

    conn = sqlite3.connect(path, timeout=60, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


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
            StudySpec(f"{config.study_prefix}-b{_budget_label(b)}", "constrained", float(b), (float(b),))
            for b in config.budgets
        ]
    return [StudySpec(f"{config.study_prefix}-mo", "multi_objective", None, tuple(float(b) for b in config.budgets))]


def _make_sampler(name: str, seed: int, n_trials: int) -> Any:
    optuna = _optuna()
    n_startup = max(1, min(10, n_trials // 3))
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup, constant_liar=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, n_trials // 4)))
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UserError(f"unknown sampler {name!r} (use tpe, nsga2, gp or random)")


def _seed_for(base: int, study: str, n_existing: int) -> int:
    """A per-study seed; a resumed study gets a fresh stream (``n_existing`` trials so far)."""
    return (base * 1_000_003 + zlib.crc32(study.encode()) + 7919 * n_existing) % (2**31 - 1)


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


def _quality(metrics: Mapping[str, Any] | None) -> float | None:
    if metrics is None:
        return None
    q = metrics.get("quality")
    try:
        q = float(q)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return q if math.isfinite(q) else None


class StudyDriver:
    """One Optuna study plus its ledger in ``results.jsonl``; backend-agnostic.

    The backends call, in order: :meth:`open`; then repeatedly :meth:`next_proposal` (or, for
    Ray's ``OptunaSearch``, :meth:`proposal_from_trial` + :meth:`classify` +
    :meth:`resolve_nonnew` on a trial it asked), evaluate, :meth:`commit` (the commit point),
    then tell Optuna (:meth:`tell`); after the search phase, :meth:`promotion_candidates` and
    :meth:`commit_promotion`.
    """

    def __init__(
        self,
        space: SearchSpace,
        spec: StudySpec,
        config: SearchConfig,
        storage: Any,
        run: RunDir,
        fidelities: Sequence[str],
        seed: int = 0,
        known: Sequence[tuple[str, Arch]] = (),
    ) -> None:
        if not fidelities:
            raise ValueError("the objective must declare at least one fidelity")
        self.space = space
        self.spec = spec
        self.config = config
        self.storage = storage
        self.run = run
        self.seed = int(seed)
        self.fidelities = tuple(fidelities)
        self.search_fidelity = self.fidelities[0]
        self.full_fidelity = self.fidelities[-1] if len(self.fidelities) > 1 and config.promote_top_k > 0 else None
        self.known = list(known)
        self.full_macs = int(space.macs(space.full()))
        if self.full_macs <= 0:
            raise UserError("the full architecture has no MACs; budgets are fractions of it")
        self.free = tuple(d for d in space.free_dimensions() if len(d.choices) > 1)
        self.min_macs_ratio = float(space.macs(space.smallest())) / self.full_macs
        optuna = _optuna()
        self.distributions = {
            d.name: optuna.distributions.CategoricalDistribution(tuple(range(len(d.choices)))) for d in self.free
        }
        self.study: Any = None
        self.completed: dict[str, dict[str, Any]] = {}  # key -> search-fidelity record
        self.promoted: dict[str, dict[str, Any]] = {}  # key -> expensive-fidelity record
        self.by_number: dict[int, dict[str, Any]] = {}
        self.inflight: dict[str, int] = {}  # key -> trial number being evaluated
        self.inflight_promotions: set[str] = set()
        self.parked: list[tuple[Any, Proposal]] = []  # duplicates of in-flight trials
        skip = config.skip_infeasible
        # auto: TPE (and random) learn from pruned infeasible trials; GP and NSGA-II only from evaluated ones
        self.skip_infeasible = bool(skip) if skip is not None else config.sampler in ("tpe", "random")
        self.exhausted = False
        self.counts = {"duplicates": 0, "interrupted": 0, "recovered": 0, "skipped_infeasible": 0, "invalid": 0}

    # ------------------------------------------------------------------------------ opening
    @property
    def directions(self) -> list[str]:
        return ["minimize"] if self.spec.constrained else ["minimize", "minimize"]

    def fingerprint(self) -> str:
        """Hash of what makes stored trials comparable (space, mode, budget, fidelities)."""
        blob = json.dumps(
            {"dims": [(d.name, list(d.choices)) for d in self.free], "mode": self.spec.mode,
             "budget": self.spec.budget_ratio, "fid": self.search_fidelity, "macs": self.full_macs},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def open(self) -> None:
        """Create or load the study, reconcile it with the ledger, enqueue known points."""
        optuna = _optuna()
        sampler = _make_sampler(self.config.sampler, _seed_for(self.seed, self.spec.name, 0), self.config.n_trials)
        try:
            study = optuna.create_study(
                storage=self.storage, study_name=self.spec.name, sampler=sampler,
                directions=self.directions, load_if_exists=True,
            )
        except ValueError as err:
            raise UserError(f"study {self.spec.name!r} cannot be opened: {err}") from None
        got = [d.name.lower() for d in study.directions]
        if got != self.directions:
            raise UserError(
                f"study {self.spec.name!r} in the storage has directions {got}, this search needs "
                f"{self.directions}; use another search.study_prefix or run folder"
            )
        fp = study.user_attrs.get("diffnas_fingerprint")
        if fp is None:
            study.set_user_attr("diffnas_fingerprint", self.fingerprint())
            study.set_user_attr("diffnas_mode", self.spec.mode)
            study.set_user_attr("diffnas_budget_ratio", self.spec.budget_ratio)
            study.set_user_attr("diffnas_full_macs", self.full_macs)
        elif fp != self.fingerprint():
            raise UserError(
                f"study {self.spec.name!r} in the storage was made for another search space, mode or "
                "budget; use another search.study_prefix or run folder"
            )
        n_existing = len(study.get_trials(deepcopy=False))
        if n_existing:
            study.sampler = _make_sampler(
                self.config.sampler, _seed_for(self.seed, self.spec.name, n_existing), self.config.n_trials
            )
        self.study = study
        for b in self.spec.budgets:
            if self.min_macs_ratio > b + _EPS:
                log.warning("%s: budget %g is below the smallest architecture of the space (%.3f of the base "
                            "MACs): no allocation can meet it", self.spec.name, b, self.min_macs_ratio)
        self._load_ledger()
        self._reconcile()
        if self.config.enqueue_known:
            self.enqueue_known(self.known)

    def _load_ledger(self) -> None:
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

    def finished(self) -> bool:
        """True when the search phase and the promotions are done."""
        return self.search_done() and not self.promotion_candidates() and not self.inflight_promotions

    def settle_running(self) -> None:
        """Settle trials left RUNNING by an interrupted session (as a restart would)."""
        self.inflight.clear()
        self.inflight_promotions.clear()
        self.parked = []
        self._reconcile()

    def _reconcile(self) -> None:
        """Settle trials a killed driver left RUNNING (see the module docstring)."""
        optuna = _optuna()
        TS = optuna.trial.TrialState
        trials = self.study.get_trials(deepcopy=False)
        numbers = {t.number for t in trials}
        waiting = [dict(t.system_attrs.get("fixed_params", t.params)) for t in trials if t.state == TS.WAITING]
        for t in trials:
            if t.state != TS.RUNNING:
                continue
            rec = self.by_number.get(t.number)
            key = t.user_attrs.get(_ATTR_KEY)
            if rec is not None:
                self._tell_record(t.number, rec)
                self.counts["recovered"] += 1
                log.info("%s: trial %d was committed before the driver stopped; told now", self.spec.name, t.number)
            elif key is not None and key in self.completed:
                self._set_attr(t, _ATTR_DUP, self.completed[key].get("number"))
                self._tell_record(t.number, self.completed[key])
                self.counts["duplicates"] += 1
            else:
                # the parameters it was asked with (an enqueued point's fixed params count too)
                params = dict(t.system_attrs.get("fixed_params") or t.params)
                complete = all(d.name in params for d in self.free)
                if key is None and complete:  # killed between ask and the attributes
                    with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
                        arch = self._arch_from_params(params, require_all=True)
                        self._set_attr(t, _ATTR_KEY, arch_key(arch))
                        self._set_attr(t, "diffnas_arch", arch.to_dict())
                self._set_attr(t, _ATTR_STATE, "interrupted")
                self.study.tell(t.number, state=TS.FAIL)
                self.counts["interrupted"] += 1
                # re-queue what it was asked to evaluate; a trial killed while its parameters were
                # being drawn was never dispatched, so the sampler simply proposes anew
                if complete and params and params not in waiting:
                    self.study.enqueue_trial(
                        params,
                        user_attrs={_ATTR_SOURCE: t.user_attrs.get(_ATTR_SOURCE, "sampler"), _ATTR_RETRY: t.number},
                    )
                    waiting.append(params)
                log.info("%s: trial %d was interrupted before its result was committed%s", self.spec.name,
                         t.number, "; re-queued" if complete else "")
        orphans = [n for n in self.by_number if n not in numbers]
        if orphans:
            log.warning(
                "%s: results.jsonl has %d evaluations the Optuna storage lacks (trials %s...); they count "
                "as done but the sampler does not see them",
                self.spec.name, len(orphans), orphans[:5],
            )

    def _set_attr(self, frozen: Any, key: str, value: Any) -> None:
        # optuna has no public API to set an attribute of a trial asked by another process
        self.study._storage.set_trial_user_attr(frozen._trial_id, key, value)

    def params_of(self, arch: Mapping[str, Any]) -> dict[str, int]:
        """Optuna parameters (choice indices of the free dimensions) of an arch."""
        return {d.name: d.index(arch[d.name]) for d in self.free}

    def enqueue_known(self, known: Sequence[tuple[str, Arch]]) -> int:
        """Enqueue known points not yet evaluated nor queued; returns how many were added."""
        added = 0
        for source, arch in known:
            try:
                arch = self.space.repair(Arch(arch))
                self.space.validate(arch)
            except ValueError as err:
                log.warning("%s: known point %r is not in the space (%s); skipped", self.spec.name, source, err)
                continue
            if arch_key(arch) in self.completed:
                continue
            n_before = len(self.study.get_trials(deepcopy=False))
            self.study.enqueue_trial(self.params_of(arch), user_attrs={_ATTR_SOURCE: source}, skip_if_exists=True)
            if len(self.study.get_trials(deepcopy=False)) > n_before:
                added += 1
                log.info("%s: enqueued the %s architecture", self.spec.name, source)
        return added

    # ---------------------------------------------------------------------------- proposals
    def _arch_from_params(self, params: Mapping[str, Any], require_all: bool = False) -> Arch:
        """Choice indices of the free dimensions -> completed, repaired, validated arch."""
        if require_all:
            missing = [d.name for d in self.free if d.name not in params]
            if missing:
                raise KeyError(missing[0])
        free = {d.name: d.choices[int(params[d.name])] for d in self.free if d.name in params}
        arch = self.space.repair(self.space.complete(free))
        self.space.validate(arch)
        return arch

    def proposal_from_trial(self, trial: Any) -> Proposal:
        """Turn an asked Optuna trial into a proposal; records the arch, its MACs and (in
        constrained mode) the constraint on the trial before it is evaluated."""
        arch = self._arch_from_params(trial.params)
        key = arch_key(arch)
        macs = int(self.space.macs(arch))
        ratio = macs / self.full_macs
        constraint = ratio - self.spec.budget_ratio if self.spec.constrained else None
        feasible = constraint is None or constraint <= _EPS
        trial.set_user_attr(_ATTR_KEY, key)
        trial.set_user_attr("diffnas_arch", arch.to_dict())
        trial.set_user_attr("diffnas_macs", macs)
        trial.set_user_attr("diffnas_macs_ratio", ratio)
        trial.set_user_attr("diffnas_feasible", feasible)
        if constraint is not None:
            if hasattr(trial, "set_constraint"):
                trial.set_constraint(_CONSTRAINT_NAME, float(constraint))
            else:  # pragma: no cover - optuna < 5
                self.study._storage.set_trial_system_attr(trial._trial_id, "constraints", [float(constraint)])
        return Proposal(
            study=self.spec.name, number=int(trial.number), arch=arch, key=key, macs=macs, macs_ratio=ratio,
            constraint=constraint, feasible=feasible, fidelity=self.search_fidelity,
            source=str(trial.user_attrs.get(_ATTR_SOURCE, "sampler")),
        )

    def classify(self, p: Proposal) -> str:
        """``new``, ``dup_complete`` (answered from the ledger), ``dup_inflight`` (same arch is
        being evaluated) or ``skip_infeasible``."""
        if p.key in self.completed:
            return "dup_complete"
        if p.key in self.inflight:
            return "dup_inflight"
        if self.skip_infeasible and not p.feasible:
            return "skip_infeasible"
        return "new"

    def resolve_nonnew(self, trial: Any, p: Proposal, kind: str) -> None:
        """Settle a proposal that will not be evaluated (tells Optuna, or parks it)."""
        optuna = _optuna()
        if kind == "dup_complete":
            rec = self.completed[p.key]
            trial.set_user_attr(_ATTR_DUP, rec.get("number"))
            self._tell_record(trial, rec)
            self.counts["duplicates"] += 1
        elif kind == "dup_inflight":
            self.parked.append((trial, p))
        elif kind == "skip_infeasible":
            trial.set_user_attr(_ATTR_STATE, "skipped_infeasible")
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            self.counts["skipped_infeasible"] += 1
        else:
            raise ValueError(f"not a non-new proposal kind: {kind!r}")

    def reject(self, trial: Any, err: Exception) -> None:
        """A proposal the space could not turn into a valid arch: failed, never evaluated."""
        optuna = _optuna()
        log.warning("%s: trial %d is not a valid architecture after repair (%s); failed", self.spec.name,
                    trial.number, err)
        trial.set_user_attr(_ATTR_STATE, "invalid")
        trial.set_user_attr("diffnas_error", str(err)[-500:])
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        self.counts["invalid"] = self.counts.get("invalid", 0) + 1

    def resolve_parked(self, key: str) -> None:
        """Answer duplicates that waited for ``key``'s evaluation."""
        keep = []
        for trial, p in self.parked:
            if p.key == key and key in self.completed:
                self.resolve_nonnew(trial, p, "dup_complete")
            else:
                keep.append((trial, p))
        self.parked = keep

    def remaining(self) -> int:
        """Evaluations still to start in the search phase."""
        if self.exhausted:
            return 0
        return max(0, self.config.n_trials - len(self.completed) - len(self.inflight))

    def search_done(self) -> bool:
        """True when the search phase is over (nothing left to start and nothing in flight)."""
        return self.remaining() == 0 and not self.inflight

    def start(self, p: Proposal) -> None:
        """Mark a proposal as being evaluated."""
        self.inflight[p.key] = p.number

    def next_proposal(self) -> tuple[Any, Proposal] | None:
        """Ask Optuna until a new architecture comes (duplicates are answered on the way);
        ``None`` when the search phase has nothing left to start."""
        for _ in range(self.config.max_duplicate_proposals):
            if self.remaining() <= 0:
                return None
            trial = self.study.ask(self.distributions)
            try:
                p = self.proposal_from_trial(trial)
            except ValueError as err:
                self.reject(trial, err)
                continue
            kind = self.classify(p)
            if kind == "new":
                self.start(p)
                return trial, p
            self.resolve_nonnew(trial, p, kind)
        self.mark_exhausted()
        return None

    def mark_exhausted(self) -> None:
        self.exhausted = True
        log.warning(
            "%s: the sampler proposed %d evaluated or skipped architectures in a row; the study stops "
            "with %d evaluations", self.spec.name, self.config.max_duplicate_proposals, len(self.completed),
        )

    # ------------------------------------------------------------------------------- commit
    def _record(self, p: Proposal, outcome: TrialOutcome) -> dict[str, Any]:
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

    def commit(self, p: Proposal, outcome: TrialOutcome) -> dict[str, Any]:
        """Append the evaluation to ``results.jsonl`` (the commit point); Optuna is told after."""
        rec = self._record(p, outcome)
        self.run.append_result(rec)
        rec = json.loads(json.dumps(to_jsonable(rec)))
        self.completed[p.key] = rec
        self.by_number[p.number] = rec
        self.inflight.pop(p.key, None)
        return rec

    def values_of(self, rec: Mapping[str, Any]) -> list[float] | None:
        """Objective values to tell Optuna for a committed record (``None``: failed)."""
        if rec.get("state") != "complete" or rec.get("quality") is None:
            return None
        if self.spec.constrained:
            return [float(rec["quality"])]
        return [float(rec["quality"]), float(rec["macs_ratio"])]

    def _tell_record(self, trial: Any, rec: Mapping[str, Any]) -> None:
        optuna = _optuna()
        values = self.values_of(rec)
        if values is None:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(trial, values)

    def annotate(self, trial: Any, rec: Mapping[str, Any]) -> None:
        """Store the result on the (still running) Optuna trial, for the dashboard."""
        if rec.get("metrics") is not None:
            trial.set_user_attr("diffnas_metrics", to_jsonable(rec["metrics"]))
        if rec.get("error"):
            trial.set_user_attr("diffnas_error", str(rec["error"])[-500:])
        if rec.get("placement"):
            trial.set_user_attr("diffnas_placement", to_jsonable(rec["placement"]))

    def tell(self, trial: Any, rec: Mapping[str, Any]) -> None:
        """Annotate and tell Optuna a committed record; answers parked duplicates."""
        self.annotate(trial, rec)
        self._tell_record(trial, rec)
        self.resolve_parked(str(rec["key"]))

    # -------------------------------------------------------------------------- promotions
    def promotion_candidates(self) -> list[Proposal]:
        """Per budget, the ``promote_top_k`` best feasible complete trials by proxy that have no
        expensive evaluation yet (nor one in flight)."""
        if self.full_fidelity is None:
            return []
        out: dict[str, Proposal] = {}
        for b in self.spec.budgets:
            feasible = sorted(
                (r for r in self.completed.values()
                 if r.get("state") == "complete" and float(r["macs_ratio"]) <= b + _EPS),
                key=lambda r: (float(r["quality"]), float(r["macs_ratio"]), int(r["number"])),
            )
            for r in feasible[: self.config.promote_top_k]:
                key = r["key"]
                if key in self.promoted or key in self.inflight_promotions or key in out:
                    continue
                out[key] = Proposal(
                    study=self.spec.name, number=int(r["number"]), arch=Arch(r["arch"]), key=key,
                    macs=int(r["macs"]), macs_ratio=float(r["macs_ratio"]), constraint=r.get("constraint"),
                    feasible=bool(r.get("feasible", True)), fidelity=self.full_fidelity, source="promotion",
                )
        return list(out.values())

    def start_promotion(self, p: Proposal) -> None:
        self.inflight_promotions.add(p.key)

    def commit_promotion(self, p: Proposal, outcome: TrialOutcome) -> dict[str, Any]:
        """Commit an expensive evaluation (ledger, then a study user attribute)."""
        rec = self._record(p, outcome)
        self.run.append_result(rec)
        rec = json.loads(json.dumps(to_jsonable(rec)))
        self.promoted[p.key] = rec
        self.inflight_promotions.discard(p.key)
        try:
            self.study.set_user_attr(
                f"diffnas_{p.fidelity}/{p.number}",
                {"key": p.key, "state": rec["state"], "quality": rec["quality"], "metrics": rec["metrics"]},
            )
        except Exception as err:  # noqa: BLE001 - the ledger is the source of truth
            log.warning("%s: could not store promotion of trial %d in Optuna: %s", self.spec.name, p.number, err)
        return rec

    # ------------------------------------------------------------------------------ results
    def best(self, budget_ratio: float) -> dict[str, Any] | None:
        """Best feasible evaluated arch for a budget: by the expensive fidelity among promoted
        ones when any were promoted, else by proxy. The record gets ``selected_by``."""
        feasible = [
            r for r in self.completed.values()
            if r.get("state") == "complete" and float(r["macs_ratio"]) <= budget_ratio + _EPS
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

    def pareto(self) -> list[dict[str, Any]]:
        """Non-dominated (quality, MACs ratio) records among feasible complete ones; in
        multi-objective mode this is Optuna's ``study.best_trials`` (duplicates removed)."""
        if not self.spec.constrained:
            seen: set[str] = set()
            out = []
            for t in sorted(self.study.best_trials, key=lambda t: (t.values[1], t.values[0])):
                key = t.user_attrs.get(_ATTR_KEY)
                if key in seen or key not in self.completed:
                    continue
                seen.add(key)
                out.append(self.completed[key])
            return out
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

    def trial_rows(self) -> list[dict[str, Any]]:
        """One row per Optuna trial (evaluated, duplicate, interrupted, skipped, waiting)."""
        rows = []
        for t in self.study.get_trials(deepcopy=False):
            key = t.user_attrs.get(_ATTR_KEY)
            rec = self.by_number.get(t.number)
            if rec is not None and rec.get("key") != key:
                rec = None
            if rec is not None:
                state = rec["state"]
            elif _ATTR_DUP in t.user_attrs:
                state = "duplicate"
            elif t.user_attrs.get(_ATTR_STATE):
                state = str(t.user_attrs[_ATTR_STATE])
            else:
                state = t.state.name.lower()
            full = self.promoted.get(key) if rec is not None else None
            placement = (rec or {}).get("placement") or {}
            rows.append({
                "study": self.spec.name,
                "number": t.number,
                "state": state,
                "source": t.user_attrs.get(_ATTR_SOURCE, "sampler"),
                "key": key,
                "duplicate_of": t.user_attrs.get(_ATTR_DUP),
                "retry_of": t.user_attrs.get(_ATTR_RETRY),
                "feasible": t.user_attrs.get("diffnas_feasible"),
                "macs": t.user_attrs.get("diffnas_macs"),
                "macs_ratio": t.user_attrs.get("diffnas_macs_ratio"),
                "quality": (rec or {}).get("quality"),
                "quality_full": (full or {}).get("quality"),
                "eval_s": (rec or {}).get("eval_s"),
                "attempts": (rec or {}).get("attempts"),
                "node_id": placement.get("node_id"),
                "gpu_ids": ",".join(str(g) for g in placement.get("gpu_ids", []) or []),
                "error": (rec or {}).get("error"),
                "arch": json.dumps(t.user_attrs.get("diffnas_arch"), sort_keys=True),
            })
        return rows

    def cost(self) -> dict[str, Any]:
        """Evaluations, seconds and sampled images spent by this study (from the ledger)."""
        recs = list(self.completed.values()) + list(self.promoted.values())
        images = 0.0
        for r in recs:
            m = r.get("metrics") or {}
            try:
                images += float(m.get("sampled_images", 0) or 0)
            except (TypeError, ValueError):
                pass
        return {
            "evaluations": {self.search_fidelity: len(self.completed),
                            **({self.full_fidelity: len(self.promoted)} if self.full_fidelity else {})},
            "eval_s": float(sum(float(r.get("eval_s") or 0.0) for r in recs)),
            "sampled_images": int(images),
        }


# ============================================================================================
# Sessions and outputs
# ============================================================================================


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
    ) -> None:
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
                known = known_points(self.space, spec.budget_ratio, self.run.allocations_dir)
                if not spec.constrained:
                    for b in spec.budgets:
                        known += [(f"{n}@{b:g}", a) for n, a in known_points(self.space, b, self.run.allocations_dir)[1:]]
                drv = StudyDriver(self.space, spec, self.config, self.storage, self.run, fidelities,
                                  seed=self.seed, known=known)
                drv.open()
                self.drivers.append(drv)
            _append_line(self.search_dir / "sessions.jsonl",
                         json.dumps({"event": "start", "time": self._t0, "pid": os.getpid(),
                                     "host": socket.gethostname()}) + "\n")
        except BaseException:
            self._release_lock()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._release_lock()

    def _acquire_lock(self) -> None:
        path = self.search_dir / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                try:
                    holder = os.read(fd, 200).decode(errors="replace").strip()
                finally:
                    os.close(fd)
                raise UserError(
                    f"another search is running in {self.search_dir} ({holder or 'unknown process'}); "
                    "wait for it or stop it before resuming"
                ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def refresh_known(self) -> None:
        """Re-scan known points (a router allocation may have appeared) and enqueue new ones."""
        if not self.config.enqueue_known:
            return
        for drv in self.drivers:
            if drv.search_done():
                continue
            budgets = [drv.spec.budget_ratio] if drv.spec.constrained else list(drv.spec.budgets)
            known = []
            for b in budgets:
                known += [(n, a) for n, a in known_points(self.space, b, self.run.allocations_dir) if n == "router"]
            drv.enqueue_known(known)

    def finish(self, side_jobs: Mapping[str, Any] | None = None) -> SearchResult:
        """Write the trial table, fronts, allocations and summary; returns the result."""
        wall_s = time.time() - self._t0
        _append_line(self.search_dir / "sessions.jsonl",
                     json.dumps({"event": "end", "time": time.time(), "pid": os.getpid(), "wall_s": wall_s}) + "\n")
        total_wall = _sessions_wall_s(self.search_dir / "sessions.jsonl")
        studies = []
        rows: list[dict[str, Any]] = []
        allocations: dict[float, Path] = {}
        best_by_budget: dict[float, tuple[dict[str, Any], StudyDriver]] = {}
        for drv in self.drivers:
            study_rows = drv.trial_rows()
            rows += study_rows
            states = collections.Counter(r["state"] for r in study_rows)
            counts = {"duplicates": states["duplicate"], "interrupted": states["interrupted"],
                      "skipped_infeasible": states["skipped_infeasible"], "invalid": states["invalid"],
                      "recovered": drv.counts["recovered"]}
            best = {b: drv.best(b) for b in drv.spec.budgets}
            front = drv.pareto()
            _atomic_json(self.search_dir / f"pareto-{drv.spec.name}.json", {
                "study": drv.spec.name, "mode": drv.spec.mode, "budget_ratio": drv.spec.budget_ratio,
                "objectives": ["quality", "macs_ratio"],
                "source": "optuna study.best_trials" if not drv.spec.constrained
                else "non-dominated feasible trials of the constrained study",
                "points": [_front_point(r, drv) for r in front],
            })
            evaluated = list(drv.completed.values())
            studies.append(StudyResult(
                name=drv.spec.name, mode=drv.spec.mode, budget_ratio=drv.spec.budget_ratio,
                n_evaluated=len(evaluated), n_failed=sum(r.get("state") != "complete" for r in evaluated),
                n_promoted=len(drv.promoted), counts=counts, best=best, pareto=front, cost=drv.cost(),
                min_macs_ratio=drv.min_macs_ratio,
            ))
            for b, rec in best.items():
                if rec is not None:
                    prev = best_by_budget.get(b)
                    if prev is None or _rank(rec) < _rank(prev[0]):
                        best_by_budget[b] = (rec, drv)
        for b, (rec, drv) in sorted(best_by_budget.items()):
            if self.intervals is None:
                continue
            info = {
                "study": drv.spec.name, "trial_number": rec["number"], "key": rec["key"],
                "selected_by": rec["selected_by"], "quality": rec["quality"],
                "quality_full": rec.get("quality_full"), "metrics": rec.get("metrics"),
                "metrics_full": rec.get("metrics_full"), "sampler": self.config.sampler, "seed": self.seed,
                "mode": self.config.mode, "storage": self.storage_desc,
                "search_cost": {**drv.cost(), "trials": len(drv.completed), "wall_s_all_sessions": total_wall},
            }
            alloc = arch_to_allocation(self.space, rec["arch"], self.intervals, b, "search", info)
            path = allocation_path(self.run.allocations_dir, "search", b)
            alloc.save(path)
            allocations[b] = path
        if self.intervals is None:
            log.info("no intervals given: best archs are in search/summary.json, no allocation files written")
        table = self.search_dir / "trials.csv"
        _write_table(rows, table, self.search_dir / "trials.jsonl")
        summary = {
            "storage": self.storage_desc,
            "dashboard": f"optuna-dashboard {self.storage_desc}",
            "config": to_jsonable(self.config),
            "seed": self.seed,
            "wall_s_session": wall_s,
            "wall_s_all_sessions": total_wall,
            "side_jobs": to_jsonable(dict(side_jobs or {})),
            "allocations": {f"{b:g}": str(p) for b, p in allocations.items()},
            "studies": [
                {"name": s.name, "mode": s.mode, "budget_ratio": s.budget_ratio, "evaluated": s.n_evaluated,
                 "failed": s.n_failed, "promoted": s.n_promoted, **s.counts, "cost": s.cost,
                 "pareto_size": len(s.pareto), "min_macs_ratio": s.min_macs_ratio,
                 "best": {f"{b:g}": (None if r is None else {k: r.get(k) for k in (
                     "number", "key", "quality", "quality_full", "macs_ratio", "selected_by", "source")})
                          for b, r in s.best.items()}}
                for s in studies
            ],
        }
        summary_path = self.search_dir / "summary.json"
        _atomic_json(summary_path, summary)
        return SearchResult(tuple(studies), allocations, table, summary_path, self.storage_desc, wall_s,
                            dict(side_jobs or {}))


def _rank(rec: Mapping[str, Any]) -> tuple[float, float]:
    q = rec.get("quality_full") if rec.get("quality_full") is not None else rec["quality"]
    return (float(q), float(rec["macs_ratio"]))


def _front_point(rec: Mapping[str, Any], drv: StudyDriver) -> dict[str, Any]:
    full = drv.promoted.get(rec["key"])
    return {
        "number": rec["number"], "key": rec["key"], "quality": rec["quality"], "macs": rec["macs"],
        "macs_ratio": rec["macs_ratio"], "feasible": rec.get("feasible"),
        "quality_full": (full or {}).get("quality"), "arch": rec["arch"],
    }


def _sessions_wall_s(path: Path) -> float:
    total = 0.0
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError, TypeError, ValueError):
                rec = json.loads(line)
                if rec.get("event") == "end":
                    total += float(rec.get("wall_s") or 0.0)
    return total


def _atomic_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(data), indent=2, sort_keys=False))
    tmp.replace(path)


def _write_table(rows: list[dict[str, Any]], csv_path: Path, jsonl_path: Path) -> None:
    columns = ["study", "number", "state", "source", "key", "duplicate_of", "retry_of", "feasible", "macs",
               "macs_ratio", "quality", "quality_full", "eval_s", "attempts", "node_id", "gpu_ids", "error", "arch"]
    tmp = csv_path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    tmp.replace(csv_path)
    tmpj = jsonl_path.with_suffix(".jsonl.tmp")
    tmpj.write_text("".join(json.dumps(to_jsonable(r)) + "\n" for r in rows))
    tmpj.replace(jsonl_path)


# ============================================================================================
# Local backend
# ============================================================================================


def evaluate_with_retries(
    objective: Objective, arch: Arch, context: EvalContext, max_failures: int
) -> TrialOutcome:
    """Evaluate in-process, retrying up to ``max_failures`` times when the objective raises."""
    error = None
    for attempt in range(1, max_failures + 2):
        start = time.time()
        try:
            metrics = dict(objective.evaluate(arch, context.fidelity, context))
        except Exception as err:  # noqa: BLE001 - any failure of a trial is recorded, not fatal
            error = "".join(traceback.format_exception_only(type(err), err)).strip()
            log.warning("%s trial %d (%s) failed on attempt %d: %s", context.study, context.trial_number,
                        context.fidelity, attempt, error)
            continue
        end = time.time()
        placement = {"node_id": "", "gpu_ids": [], "pid": os.getpid(), "host": socket.gethostname(),
                     "device": context.device, "start": start, "end": end}
        return TrialOutcome(metrics, None, placement, end - start, attempt)
    return TrialOutcome(None, error, {"pid": os.getpid(), "host": socket.gethostname()}, 0.0, max_failures + 1)


def _run_local(session: SearchSession, device: str) -> None:
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
            ctx = EvalContext(drv.spec.name, p.number, p.key, p.fidelity, device, session.seed, drv.spec.budget_ratio)
            outcome = evaluate_with_retries(session.objective, p.arch, ctx, cfg.max_failures)
            rec = drv.commit(p, outcome)
            drv.tell(trial, rec)
    for drv in session.drivers:
        for p in drv.promotion_candidates():
            drv.start_promotion(p)
            ctx = EvalContext(drv.spec.name, p.number, p.key, p.fidelity, device, session.seed, drv.spec.budget_ratio)
            drv.commit_promotion(p, evaluate_with_retries(session.objective, p.arch, ctx, cfg.max_failures))


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
        config: the ``search`` section of the experiment config.
        run: the run directory (``search/``, ``allocations/``, ``results.jsonl``).
        intervals: the experts' intervals; needed to write ``allocations/search-<budget>.json``.
        seed: used when ``config.seed`` is ``None`` (the experiment seed).
        device: torch device of the local backend (Ray trials choose their own).
        side_jobs: Ray backend only: ``name -> nas.ray_backend.SideJob`` run beside the studies
            (the router's training).

    Re-running the same call after a crash resumes: evaluated architectures are not evaluated
    again, interrupted ones are, and the outputs are rewritten from everything stored.
    """
    if config.backend == "ray":
        from nas.ray_backend import run_search_ray

        return run_search_ray(space, objective, config, run, intervals=intervals, seed=seed, side_jobs=side_jobs)
    if side_jobs:
        raise UserError("side jobs (router training beside the search) need search.backend=ray")
    with SearchSession(space, objective, config, run, intervals, seed) as session:
        _run_local(session, device)
        return session.finish()
