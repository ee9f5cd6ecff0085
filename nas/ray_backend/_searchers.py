"""Tune searchers run in the driver: one ``OptunaSearch`` per study around its
:class:`~nas.search.StudyDriver`, and the multiplexer that hands out trials from all of them."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from nas.search import Proposal, StudyDriver, TrialOutcome

__all__ = ["MultiStudySearcher", "StudySearcher", "TrialRegistry", "outcome_of"]


def outcome_of(result: Mapping[str, Any] | None, error: bool, error_text: str | None, attempts: int) -> TrialOutcome:
    """The :class:`TrialOutcome` of a finished Tune trial (its reported payload, or the error)."""
    if error or not result or "diffnas_payload" not in result:
        return TrialOutcome(None, error_text or "the trial failed (no error text)", {}, 0.0, attempts)
    payload = json.loads(result["diffnas_payload"])
    return TrialOutcome(payload.get("metrics"), None, payload.get("placement") or {},
                        float(payload.get("eval_s") or 0.0), attempts)


class StudySearcher(OptunaSearch):
    """``OptunaSearch`` over one study, sharing the :class:`StudyDriver`'s ``Study`` (same
    storage, sampler, directions), with the driver's bookkeeping around ask and tell: duplicates
    answered from the ledger, the ledger commit before the tell, then the promotion phase."""

    def __init__(self, driver: StudyDriver, seed: int) -> None:
        self._driver = driver
        self._seed_eval = int(seed)
        self._proposals: dict[str, Proposal] = {}
        self._phase = "search"
        self._promotions: list[Proposal] = []
        constrained = driver.spec.constrained
        super().__init__(
            space=dict(driver.distributions),
            metric="quality" if constrained else ["quality", "macs_ratio"],
            mode="min" if constrained else ["min", "min"],
            sampler=driver.study.sampler,
            study_name=driver.spec.name,
            storage=driver.storage,
        )

    def _setup_study(self, mode: Any) -> None:  # share the driver's Study, do not create another
        self._ot_study = self._driver.study

    def _config(self, p: Proposal) -> dict[str, Any]:
        return {"diffnas": {
            "study": p.study, "number": p.number, "key": p.key, "fidelity": p.fidelity, "arch": p.arch.to_dict(),
            "macs_ratio": p.macs_ratio, "budget_ratio": self._driver.spec.budget_ratio, "seed": self._seed_eval,
        }}

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        drv = self._driver
        if self._phase == "search":
            def ask() -> Any:
                super(StudySearcher, self).suggest(trial_id)  # Optuna ask (or the trial already asked for this id)
                return self._ot_trials[trial_id]

            got = drv.next_proposal(ask=ask, settled=lambda: self._ot_trials.pop(trial_id, None))
            if got is not None:
                self._proposals[trial_id] = got[1]
                return self._config(got[1])
            if not drv.search_done():
                # the last search evaluations are in flight: a free slot promotes a trial already
                # certain to be among the promoted ones (none when nothing is certain yet)
                early = drv.promotion_candidates()
                if not early:
                    return None
                drv.start_promotion(early[0])
                self._proposals[trial_id] = early[0]
                return self._config(early[0])
            self._phase = "promote"
            self._promotions = drv.promotion_candidates()
        if self._promotions:
            p = self._promotions.pop(0)
            drv.start_promotion(p)
            self._proposals[trial_id] = p
            return self._config(p)
        if drv.inflight_promotions:
            return None
        self._phase = "done"
        return Searcher.FINISHED

    def complete(self, trial_id: str, result: Mapping[str, Any] | None, error: bool,
                 error_text: str | None, attempts: int) -> None:
        p = self._proposals.pop(trial_id, None)
        if p is None:
            return
        drv = self._driver
        if not error and not (result and "diffnas_payload" in result):
            # stopped without a result (the run was interrupted): nothing to commit; the Optuna
            # trial stays RUNNING and is settled as interrupted (and re-queued) by reconcile
            if p.fidelity == drv.search_fidelity:
                drv.inflight.pop(p.key, None)
            else:
                drv.inflight_promotions.discard(p.key)
            return
        outcome = outcome_of(result, error, error_text, attempts)
        if p.fidelity != drv.search_fidelity:
            drv.commit_promotion(p, outcome)
            return
        rec = drv.commit(p, outcome)  # the commit point: results.jsonl first ...
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None:
            drv.annotate(ot_trial, rec)
        values = drv.values_of(rec)
        names = ["quality"] if drv.spec.constrained else ["quality", "macs_ratio"]
        payload = None if values is None else dict(zip(names, values))
        super().on_trial_complete(trial_id, result=payload, error=values is None)  # ... then Optuna
        drv.resolve_parked(p.key)

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps({"note": "diffnas resumes from the Optuna storage and results.jsonl"}))

    def restore(self, checkpoint_path: str) -> None:  # pragma: no cover - Tuner.restore is not used
        raise NotImplementedError("diffnas resumes a search by re-running it, not with Tuner.restore")

    def __getstate__(self) -> dict[str, Any]:  # tuner.pkl: nothing to restore from
        return {"_diffnas": "not restorable"}


class TrialRegistry(Callback):
    """Keeps Tune's trial objects so a failed trial's error text and failure count can be read."""

    def __init__(self) -> None:
        self._trials: dict[str, Any] = {}

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        for t in trials:
            self._trials.setdefault(t.trial_id, t)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._trials[trial.trial_id] = trial

    def failures(self, trial_id: str) -> int:
        t = self._trials.get(trial_id)
        return int(getattr(getattr(t, "run_metadata", None), "num_failures", 0) or 0) if t is not None else 0

    def error_text(self, trial_id: str) -> str | None:
        t = self._trials.get(trial_id)
        path = getattr(t, "error_file", None) if t is not None else None
        if not path or not os.path.exists(path):
            return None
        text = Path(path).read_text(errors="replace").strip()
        lines = [ln for ln in text.splitlines() if ln.strip()]
        tail = [ln for ln in lines if not ln.startswith("Failure #")][-6:]
        return "\n".join(tail)[-2000:]

    def __getstate__(self) -> dict[str, Any]:
        return {"_trials": {}}


class MultiStudySearcher(Searcher):
    """Hands out trials round-robin from several studies; routes completions back."""

    def __init__(self, sources: Sequence[StudySearcher], registry: TrialRegistry,
                 poll: Callable[[], None] | None = None) -> None:
        super().__init__(metric=None, mode=None)
        self._sources = list(sources)
        self._registry = registry
        self._poll = poll
        self._owner: dict[str, StudySearcher] = {}
        self._finished: set[int] = set()
        self._rr = 0

    def set_search_properties(self, metric: Any, mode: Any, config: Any, **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._poll is not None:
            self._poll()
        n = len(self._sources)
        for i in range(n):
            j = (self._rr + i) % n
            if j in self._finished:
                continue
            cfg = self._sources[j].suggest(trial_id)
            if cfg == Searcher.FINISHED:
                self._finished.add(j)
                continue
            if cfg is None:
                continue
            self._owner[trial_id] = self._sources[j]
            self._rr = (j + 1) % n
            return cfg
        return Searcher.FINISHED if len(self._finished) == n else None

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        pass

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        src = self._owner.pop(trial_id, None)
        if src is None:
            return
        failures = self._registry.failures(trial_id)
        attempts = failures if error else failures + 1
        src.complete(trial_id, result, error, self._registry.error_text(trial_id) if error else None, max(1, attempts))

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps({"note": "diffnas resumes from the Optuna storage and results.jsonl"}))

    def restore(self, checkpoint_path: str) -> None:  # pragma: no cover - Tuner.restore is not used
        raise NotImplementedError("diffnas resumes a search by re-running it, not with Tuner.restore")

    def __getstate__(self) -> dict[str, Any]:
        return {"_diffnas": "not restorable"}
