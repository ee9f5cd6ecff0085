"""Resuming a study after its driver was killed: :func:`reconcile` settles every Optuna trial a
dead driver left RUNNING, from what the ledger (``results.jsonl``, the commit point) says:

- committed but not told: told now with the committed result (``recovered``);
- the same architecture committed by another trial: answered from that result (``duplicates``);
- classified over the budget but not yet pruned: pruned now, its shrunk arch queued, as the live
  driver would have done;
- anything else: marked failed (``diffnas_state=interrupted``) and its parameters re-enqueued, so
  the architecture is evaluated exactly once in the end.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from nas.search.allocations import arch_key
from nas.search.storage import import_optuna
from nas.search.study import ATTR_DUP, ATTR_KEY, ATTR_RETRY, ATTR_SOURCE, ATTR_STATE

if TYPE_CHECKING:  # pragma: no cover
    from nas.search.driver import StudyDriver

__all__ = ["reconcile", "settle_interrupted_infeasible"]

log = logging.getLogger(__name__)


def reconcile(driver: StudyDriver) -> None:
    """Settle the trials of ``driver.study`` left RUNNING by a driver that stopped (see above)."""
    optuna = import_optuna()
    TS = optuna.trial.TrialState
    trials = driver.study.get_trials(deepcopy=False)
    numbers = {t.number for t in trials}
    waiting = [dict(t.system_attrs.get("fixed_params", t.params)) for t in trials if t.state == TS.WAITING]
    for t in trials:
        if t.state != TS.RUNNING:
            continue
        rec = driver.by_number.get(t.number)
        key = t.user_attrs.get(ATTR_KEY)
        if rec is not None:
            driver.tell_record(t.number, rec)
            driver.counts["recovered"] += 1
            log.info("%s: trial %d was committed before the driver stopped; told now", driver.spec.name, t.number)
        elif key is not None and key in driver.completed:
            driver.set_trial_attr(t, ATTR_DUP, driver.completed[key].get("number"))
            driver.tell_record(t.number, driver.completed[key])
            driver.counts["duplicates"] += 1
        elif key is not None and driver.skip_infeasible and t.user_attrs.get("diffnas_feasible") is False:
            # killed between classifying it over the budget and telling Optuna so: settle it as
            # the live driver would have (pruned, its shrunk arch queued), never re-queue it
            settle_interrupted_infeasible(driver, t)
        else:
            _fail_and_requeue(driver, t, key, waiting)
    orphans = [n for n in driver.by_number if n not in numbers]
    if orphans:
        log.warning(
            "%s: results.jsonl has %d evaluations the Optuna storage lacks (trials %s...); they count "
            "as done but the sampler does not see them",
            driver.spec.name, len(orphans), orphans[:5],
        )


def _fail_and_requeue(driver: StudyDriver, t: Any, key: str | None, waiting: list[dict[str, Any]]) -> None:
    """Mark an interrupted trial failed and re-enqueue its parameters (once: ``waiting`` holds
    the parameters already queued, and grows)."""
    optuna = import_optuna()
    # the parameters it was asked with (an enqueued point's fixed params count too)
    params = dict(t.system_attrs.get("fixed_params") or t.params)
    complete = all(d.name in params for d in driver.free)
    if key is None and complete:  # killed between ask and the attributes
        with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
            arch = driver.arch_from_params(params, require_all=True)
            driver.set_trial_attr(t, ATTR_KEY, arch_key(arch))
            driver.set_trial_attr(t, "diffnas_arch", arch.to_dict())
    driver.set_trial_attr(t, ATTR_STATE, "interrupted")
    driver.study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    driver.counts["interrupted"] += 1
    # re-queue what it was asked to evaluate; a trial killed while its parameters were
    # being drawn was never dispatched, so the sampler simply proposes anew
    if complete and params and params not in waiting:
        driver.study.enqueue_trial(
            params,
            user_attrs={ATTR_SOURCE: t.user_attrs.get(ATTR_SOURCE, "sampler"), ATTR_RETRY: t.number},
        )
        waiting.append(params)
    log.info("%s: trial %d was interrupted before its result was committed%s", driver.spec.name,
             t.number, "; re-queued" if complete else "")


def settle_interrupted_infeasible(driver: StudyDriver, frozen: Any) -> None:
    """Prune a trial left RUNNING after it was found over the budget, and queue its arch shrunk
    to the budget (when ``search.shrink_infeasible``)."""
    optuna = import_optuna()
    driver.set_trial_attr(frozen, ATTR_STATE, "skipped_infeasible")
    driver.study.tell(frozen.number, state=optuna.trial.TrialState.PRUNED)
    driver.counts["skipped_infeasible"] += 1
    log.info("%s: trial %d was over the budget when the driver stopped; pruned now", driver.spec.name,
             frozen.number)
    if not driver.config.shrink_infeasible:
        return
    params = dict(frozen.system_attrs.get("fixed_params") or frozen.params)
    with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
        driver.enqueue_shrunk(driver.arch_from_params(params, require_all=True), int(frozen.number))
