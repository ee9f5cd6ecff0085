"""The Optuna side of a study: :class:`StudyDriver` asks the sampler for architectures, answers
duplicates from its :class:`~nas.search.ledger.StudyLedger`, settles trials a killed driver left
RUNNING (:mod:`nas.search.reconcile`), and tells Optuna each result after the ledger committed
it. Every backend drives its studies through it."""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from nas.config import SearchConfig
from nas.errors import UserError
from nas.run import RunDir, to_jsonable
from nas.search.allocations import arch_key, shrink_to_budget
from nas.search.ledger import EPS, Proposal, StudyLedger, StudySpec, TrialOutcome
from nas.search.reconcile import reconcile
from nas.search.storage import import_optuna
from nas.search.study import ATTR_DUP, ATTR_KEY, ATTR_SOURCE, ATTR_STATE, CONSTRAINT_NAME, open_study
from search_spaces import Arch, SearchSpace

__all__ = ["StudyDriver"]

log = logging.getLogger(__name__)


class StudyDriver:
    """One Optuna study plus its ledger in ``results.jsonl`` (:attr:`ledger`); backend-agnostic.

    The backends call, in order: :meth:`open`; then repeatedly :meth:`next_proposal` (Ray's
    ``OptunaSearch`` passes its own ``ask``), evaluate, :meth:`commit` (the commit point),
    then tell Optuna (:meth:`tell`); after the search phase, :meth:`promotion_candidates` and
    :meth:`commit_promotion`.

    Budgets are fractions of ``reference_macs`` when given (the objective's, e.g. the base
    model's trajectory on a joint steps x experts space), else of the full arch's MACs.
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
        reference_macs: int | None = None,
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
        # what budget ratio 1 means: the full arch, unless the objective names a reference (a joint
        # space's full arch takes the most steps everywhere, more than the base trajectory)
        self.full_macs = int(reference_macs) if reference_macs else int(space.macs(space.full()))
        if self.full_macs <= 0:
            raise UserError("the full architecture has no MACs; budgets are fractions of it")
        self.free = tuple(d for d in space.free_dimensions() if len(d.choices) > 1)
        self.min_macs_ratio = float(space.macs(space.smallest())) / self.full_macs
        optuna = import_optuna()
        self.distributions = {
            d.name: optuna.distributions.CategoricalDistribution(tuple(range(len(d.choices)))) for d in self.free
        }
        self.study: Any = None
        self.ledger = StudyLedger(run, spec, self.search_fidelity, self.full_fidelity, config.promote_top_k)
        self.inflight: dict[str, int] = {}  # key -> trial number being evaluated
        self.inflight_promotions: set[str] = set()
        self.parked: list[tuple[Any, Proposal]] = []  # duplicates of in-flight trials
        skip = config.skip_infeasible
        # auto: TPE (and random) learn from pruned infeasible trials; GP and NSGA-II only from evaluated ones
        self.skip_infeasible = bool(skip) if skip is not None else config.sampler in ("tpe", "random")
        self.exhausted = False
        self.counts = {"duplicates": 0, "interrupted": 0, "recovered": 0, "skipped_infeasible": 0, "invalid": 0}

    @property
    def completed(self) -> dict[str, dict[str, Any]]:
        """Architecture key -> search-fidelity record (the ledger's)."""
        return self.ledger.completed

    @property
    def promoted(self) -> dict[str, dict[str, Any]]:
        """Architecture key -> expensive-fidelity record (the ledger's)."""
        return self.ledger.promoted

    @property
    def by_number(self) -> dict[int, dict[str, Any]]:
        """Optuna trial number -> search-fidelity record (the ledger's)."""
        return self.ledger.by_number

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
        self.study = open_study(self)
        for b in self.spec.budgets:
            if self.min_macs_ratio > b + EPS:
                log.warning("%s: budget %g is below the smallest architecture of the space (%.3f of the base "
                            "MACs): no allocation can meet it", self.spec.name, b, self.min_macs_ratio)
        self.ledger.load()
        reconcile(self)
        if self.config.enqueue_known:
            self.enqueue_known(self.known)

    def finished(self) -> bool:
        """True when the search phase and the promotions are done."""
        return self.search_done() and not self.promotion_candidates() and not self.inflight_promotions

    def settle_running(self) -> None:
        """Settle trials left RUNNING by an interrupted session (as a restart would)."""
        self.inflight.clear()
        self.inflight_promotions.clear()
        self.parked = []
        reconcile(self)

    def set_trial_attr(self, frozen: Any, key: str, value: Any) -> None:
        """Set a user attribute on a stored trial (one asked by any process, e.g. a dead driver)."""
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
            self.study.enqueue_trial(self.params_of(arch), user_attrs={ATTR_SOURCE: source}, skip_if_exists=True)
            if len(self.study.get_trials(deepcopy=False)) > n_before:
                added += 1
                log.info("%s: enqueued the %s architecture", self.spec.name, source)
        return added

    # ---------------------------------------------------------------------------- proposals
    def arch_from_params(self, params: Mapping[str, Any], require_all: bool = False) -> Arch:
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
        arch = self.arch_from_params(trial.params)
        key = arch_key(arch)
        macs = int(self.space.macs(arch))
        ratio = macs / self.full_macs
        constraint = ratio - self.spec.budget_ratio if self.spec.constrained else None
        feasible = constraint is None or constraint <= EPS
        trial.set_user_attr(ATTR_KEY, key)
        trial.set_user_attr("diffnas_arch", arch.to_dict())
        trial.set_user_attr("diffnas_macs", macs)
        trial.set_user_attr("diffnas_macs_ratio", ratio)
        trial.set_user_attr("diffnas_feasible", feasible)
        if constraint is not None:
            if hasattr(trial, "set_constraint"):
                trial.set_constraint(CONSTRAINT_NAME, float(constraint))
            else:  # pragma: no cover - optuna < 5
                self.study._storage.set_trial_system_attr(trial._trial_id, "constraints", [float(constraint)])
        return Proposal(
            study=self.spec.name, number=int(trial.number), arch=arch, key=key, macs=macs, macs_ratio=ratio,
            constraint=constraint, feasible=feasible, fidelity=self.search_fidelity,
            source=str(trial.user_attrs.get(ATTR_SOURCE, "sampler")),
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
        optuna = import_optuna()
        if kind == "dup_complete":
            rec = self.completed[p.key]
            trial.set_user_attr(ATTR_DUP, rec.get("number"))
            self.tell_record(trial, rec)
            self.counts["duplicates"] += 1
        elif kind == "dup_inflight":
            self.parked.append((trial, p))
        elif kind == "skip_infeasible":
            trial.set_user_attr(ATTR_STATE, "skipped_infeasible")
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            self.counts["skipped_infeasible"] += 1
            if self.config.shrink_infeasible:
                self.enqueue_shrunk(p.arch, p.number)
        else:
            raise ValueError(f"not a non-new proposal kind: {kind!r}")

    def enqueue_shrunk(self, arch: Arch, number: int) -> None:
        """Queue ``arch`` (trial ``number``'s, over the budget) shrunk to the budget as the next
        proposal (see ``search.shrink_infeasible``); nothing when it cannot fit or is already known."""
        rng = np.random.default_rng([self.seed, zlib.crc32(self.spec.name.encode()), number])
        shrunk = shrink_to_budget(self.space, arch, self.spec.budget_ratio * self.full_macs, rng)
        if shrunk is None:
            return
        key = arch_key(shrunk)
        if key in self.completed or key in self.inflight:
            return
        self.study.enqueue_trial(self.params_of(shrunk), user_attrs={ATTR_SOURCE: "shrunk"})
        self.counts["shrunk"] = self.counts.get("shrunk", 0) + 1

    def reject(self, trial: Any, err: Exception) -> None:
        """A proposal the space could not turn into a valid arch: failed, never evaluated."""
        optuna = import_optuna()
        log.warning("%s: trial %d is not a valid architecture after repair (%s); failed", self.spec.name,
                    trial.number, err)
        trial.set_user_attr(ATTR_STATE, "invalid")
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

    def next_proposal(
        self, ask: Callable[[], Any] | None = None, settled: Callable[[], None] | None = None,
    ) -> tuple[Any, Proposal] | None:
        """Ask Optuna until a new architecture comes (duplicates, invalid and skipped proposals
        are settled on the way); ``None`` when the search phase has nothing left to start.

        Args:
            ask: returns the next asked Optuna trial (default ``study.ask(distributions)``; the
                Ray backend asks through ``OptunaSearch``).
            settled: called after an asked trial was settled without an evaluation (the Ray
                backend forgets its trial id then).
        """
        for _ in range(self.config.max_duplicate_proposals):
            if self.remaining() <= 0:
                return None
            trial = ask() if ask is not None else self.study.ask(self.distributions)
            try:
                p = self.proposal_from_trial(trial)
            except ValueError as err:
                self.reject(trial, err)
            else:
                kind = self.classify(p)
                if kind == "new":
                    self.start(p)
                    return trial, p
                self.resolve_nonnew(trial, p, kind)
            if settled is not None:
                settled()
        self.mark_exhausted()
        return None

    def mark_exhausted(self) -> None:
        self.exhausted = True
        log.warning(
            "%s: the sampler proposed %d evaluated or skipped architectures in a row; the study stops "
            "with %d evaluations", self.spec.name, self.config.max_duplicate_proposals, len(self.completed),
        )

    # ------------------------------------------------------------------------------- commit
    def commit(self, p: Proposal, outcome: TrialOutcome) -> dict[str, Any]:
        """Append the evaluation to ``results.jsonl`` (the commit point); Optuna is told after."""
        rec = self.ledger.commit(p, outcome)
        self.inflight.pop(p.key, None)
        return rec

    def values_of(self, rec: Mapping[str, Any]) -> list[float] | None:
        """Objective values to tell Optuna for a committed record (``None``: failed)."""
        return self.ledger.values_of(rec)

    def tell_record(self, trial: Any, rec: Mapping[str, Any]) -> None:
        """Tell Optuna a committed record's values (failed when it has none)."""
        optuna = import_optuna()
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
        self.tell_record(trial, rec)
        self.resolve_parked(str(rec["key"]))

    # -------------------------------------------------------------------------- promotions
    def promotion_candidates(self) -> list[Proposal]:
        """Per budget, the ``promote_top_k`` best feasible complete trials by proxy that have no
        expensive evaluation yet (nor one in flight). While search evaluations are still in
        flight, only those certain to stay in the top ``promote_top_k`` whatever they return
        (see :meth:`StudyLedger.promotion_candidates`): the same set, started earlier."""
        return self.ledger.promotion_candidates(self.inflight_promotions, pending=len(self.inflight))

    def start_promotion(self, p: Proposal) -> None:
        self.inflight_promotions.add(p.key)

    def commit_promotion(self, p: Proposal, outcome: TrialOutcome) -> dict[str, Any]:
        """Commit an expensive evaluation (ledger, then a study user attribute)."""
        rec = self.ledger.commit_promotion(p, outcome)
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
        return self.ledger.best(budget_ratio)

    def pareto(self) -> list[dict[str, Any]]:
        """Non-dominated (quality, MACs ratio) records among feasible complete ones; in
        multi-objective mode this is Optuna's ``study.best_trials`` (duplicates removed)."""
        if not self.spec.constrained:
            seen: set[str] = set()
            out = []
            for t in sorted(self.study.best_trials, key=lambda t: (t.values[1], t.values[0])):
                key = t.user_attrs.get(ATTR_KEY)
                if key in seen or key not in self.completed:
                    continue
                seen.add(key)
                out.append(self.completed[key])
            return out
        return self.ledger.feasible_front()

    def cost(self) -> dict[str, Any]:
        """Evaluations, seconds and sampled images spent by this study (from the ledger)."""
        return self.ledger.cost()
