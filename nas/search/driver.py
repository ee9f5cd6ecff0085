"""The Optuna side of a study: :class:`StudyDriver` asks the sampler for architectures, answers
duplicates from its :class:`~nas.search.ledger.StudyLedger`, settles trials a killed driver left
RUNNING, and tells Optuna each result after the ledger committed it. Both backends (local and
:mod:`nas.ray_backend`) drive studies through it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from nas.config import SearchConfig
from nas.errors import UserError
from nas.rundir import RunDir, to_jsonable
from nas.search.allocations import arch_key, shrink_to_budget
from nas.search.ledger import _EPS, Proposal, StudyLedger, StudySpec, TrialOutcome
from nas.search.storage import _optuna
from search_spaces import Arch, SearchSpace

__all__ = ["StudyDriver"]

log = logging.getLogger(__name__)

_ATTR_KEY = "diffnas_key"
_ATTR_SOURCE = "diffnas_source"
_ATTR_STATE = "diffnas_state"
_ATTR_DUP = "diffnas_duplicate_of"
_ATTR_RETRY = "diffnas_retry_of"
_CONSTRAINT_NAME = "macs_ratio_over_budget"


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


class StudyDriver:
    """One Optuna study plus its ledger in ``results.jsonl`` (:attr:`ledger`); backend-agnostic.

    The backends call, in order: :meth:`open`; then repeatedly :meth:`next_proposal` (Ray's
    ``OptunaSearch`` passes its own ``ask``), evaluate, :meth:`commit` (the commit point),
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
        self.ledger.load()
        self._reconcile()
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
            elif key is not None and self.skip_infeasible and t.user_attrs.get("diffnas_feasible") is False:
                # killed between classifying it over the budget and telling Optuna so: settle it as
                # the live driver would have (pruned, its shrunk arch queued), never re-queue it
                self._settle_interrupted_infeasible(t)
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

    def _settle_interrupted_infeasible(self, frozen: Any) -> None:
        optuna = _optuna()
        self._set_attr(frozen, _ATTR_STATE, "skipped_infeasible")
        self.study.tell(frozen.number, state=optuna.trial.TrialState.PRUNED)
        self.counts["skipped_infeasible"] += 1
        log.info("%s: trial %d was over the budget when the driver stopped; pruned now", self.spec.name,
                 frozen.number)
        if not self.config.shrink_infeasible:
            return
        params = dict(frozen.system_attrs.get("fixed_params") or frozen.params)
        with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
            self._enqueue_shrunk(self._arch_from_params(params, require_all=True), int(frozen.number))

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
            if self.config.shrink_infeasible:
                self._enqueue_shrunk(p.arch, p.number)
        else:
            raise ValueError(f"not a non-new proposal kind: {kind!r}")

    def _enqueue_shrunk(self, arch: Arch, number: int) -> None:
        """Queue ``arch`` (trial ``number``'s, over the budget) shrunk to the budget as the next
        proposal (see ``search.shrink_infeasible``); nothing when it cannot fit or is already known."""
        rng = np.random.default_rng([self.seed, zlib.crc32(self.spec.name.encode()), number])
        shrunk = shrink_to_budget(self.space, arch, self.spec.budget_ratio * self.full_macs, rng)
        if shrunk is None:
            return
        key = arch_key(shrunk)
        if key in self.completed or key in self.inflight:
            return
        self.study.enqueue_trial(self.params_of(shrunk), user_attrs={_ATTR_SOURCE: "shrunk"})
        self.counts["shrunk"] = self.counts.get("shrunk", 0) + 1

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
        return self.ledger.promotion_candidates(self.inflight_promotions)

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
                key = t.user_attrs.get(_ATTR_KEY)
                if key in seen or key not in self.completed:
                    continue
                seen.add(key)
                out.append(self.completed[key])
            return out
        return self.ledger.feasible_front()

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
        return self.ledger.cost()
