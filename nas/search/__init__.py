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
  ``results.jsonl`` (:meth:`nas.run.RunDir.append_result`), keyed by study, Optuna trial
  number, architecture key (:func:`arch_key`) and fidelity; Optuna is told *after* the commit;
- on start, every Optuna trial left RUNNING by a dead driver is reconciled: told with its
  committed result if there is one, else marked failed (``diffnas_state=interrupted``) and its
  parameters re-enqueued, so the architecture is evaluated exactly once in the end;
- a proposal whose architecture already has a committed result is answered from that result
  (told to Optuna, flagged ``diffnas_duplicate_of``) and never evaluated again;
- one driver per search folder at a time (an advisory lock on ``search/.lock``).

Backends (``search.backend``, :func:`get_backend`): ``local`` (in-process, sequential) and
``ray`` (Ray Tune with ``OptunaSearch``, parallel, any cluster: :mod:`nas.ray_backend`, imported
only when chosen); a backend is an object with ``run(request)`` (:class:`SearchBackend`),
added with :func:`register_backend`. Every backend runs its studies in a :class:`SearchSession`
through :class:`StudyDriver`, so their outputs are the same: ``results.jsonl`` lines
(``kind: search_trial``), ``search/trials.csv`` and ``search/trials.jsonl`` (every trial),
``search/pareto-<study>.json``, ``search/summary.json`` (counts and search cost) and
``allocations/search-<budget>.json``; the Optuna storage opens in ``optuna-dashboard``.

Example:
    >>> import tempfile
    >>> from search_spaces import Dimension, SimpleSpace
    >>> from nas.config import SearchConfig
    >>> from nas.run import RunDir
    >>> space = SimpleSpace([Dimension("a", (1, 2, 3, 4)), Dimension("b", (1, 2, 3, 4))],
    ...                     macs_fn=lambda x: 10 * x["a"] + 30 * x["b"])
    >>> cfg = SearchConfig(backend="local", n_trials=5, promote_top_k=1, budgets=(0.5,))
    >>> result = run_search(space, SyntheticObjective(space), cfg, RunDir(tempfile.mkdtemp(), "r"))
    >>> study = result.studies[0]
    >>> study.n_evaluated, study.best[0.5]["macs_ratio"] <= 0.5
    (5, True)

Modules: :mod:`~nas.search.objective` (what is evaluated), :mod:`~nas.search.testing` (the
contract suite of an objective), :mod:`~nas.search.allocations` (arch keys, allocations, known
points), :mod:`~nas.search.storage` (Optuna storage, lazy Optuna import, locked files),
:mod:`~nas.search.ledger` (studies, proposals and the ``results.jsonl`` ledger),
:mod:`~nas.search.study` (opening a study, samplers, trial attributes),
:mod:`~nas.search.driver` (:class:`StudyDriver`, the Optuna ask/tell side of a study),
:mod:`~nas.search.reconcile` (settling what a killed driver left running),
:mod:`~nas.search.session` (:class:`SearchSession` and its results), :mod:`~nas.search.outputs`
(trial table and fronts), :mod:`~nas.search.backends` (backends, :func:`run_search`).
"""

from nas.search.allocations import (
    KNOWN_POINT_SOURCES,
    allocation_path,
    allocation_to_arch,
    arch_key,
    arch_to_allocation,
    known_points,
    uniform_width_arch,
)
from nas.search.backends import (
    LocalBackend,
    SearchBackend,
    SearchRequest,
    backend_names,
    evaluate_with_retries,
    get_backend,
    register_backend,
    run_search,
)
from nas.search.driver import StudyDriver
from nas.search.ledger import RECORD_KIND, Proposal, StudySpec, TrialOutcome, study_specs
from nas.search.objective import EvalContext, Objective, SyntheticObjective, synthetic_mixture_space
from nas.search.session import SearchResult, SearchSession, StudyResult
from nas.search.storage import open_storage

__all__ = [
    "KNOWN_POINT_SOURCES",
    "RECORD_KIND",
    "EvalContext",
    "LocalBackend",
    "Objective",
    "Proposal",
    "SearchBackend",
    "SearchRequest",
    "SearchResult",
    "SearchSession",
    "StudyDriver",
    "StudyResult",
    "StudySpec",
    "SyntheticObjective",
    "TrialOutcome",
    "allocation_path",
    "allocation_to_arch",
    "arch_key",
    "arch_to_allocation",
    "backend_names",
    "evaluate_with_retries",
    "get_backend",
    "known_points",
    "open_storage",
    "register_backend",
    "run_search",
    "study_specs",
    "synthetic_mixture_space",
    "uniform_width_arch",
]
