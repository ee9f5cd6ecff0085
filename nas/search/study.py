"""The Optuna study of a :class:`~nas.search.driver.StudyDriver`: the trial attributes the
search stores on Optuna trials, the samplers, and opening a study (its directions and the
fingerprint of the search it was made for checked against this search)."""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any

from nas.errors import UserError
from nas.search.storage import import_optuna

if TYPE_CHECKING:  # pragma: no cover
    from nas.search.driver import StudyDriver

__all__ = [
    "ATTR_DUP",
    "ATTR_KEY",
    "ATTR_RETRY",
    "ATTR_SOURCE",
    "ATTR_STATE",
    "CONSTRAINT_NAME",
    "make_sampler",
    "open_study",
    "seed_for",
]

#: Trial user attributes: the architecture key, where the arch came from (``sampler``, a known
#: point, ``shrunk``), a state Optuna has no word for, the trial a duplicate was answered from,
#: the interrupted trial a re-queued one retries.
ATTR_KEY = "diffnas_key"
ATTR_SOURCE = "diffnas_source"
ATTR_STATE = "diffnas_state"
ATTR_DUP = "diffnas_duplicate_of"
ATTR_RETRY = "diffnas_retry_of"
#: Name of the constraint ``macs_ratio - budget <= 0`` of constrained studies.
CONSTRAINT_NAME = "macs_ratio_over_budget"


def make_sampler(name: str, seed: int, n_trials: int) -> Any:
    """The Optuna sampler called ``name`` (``search.sampler``), seeded."""
    optuna = import_optuna()
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


def seed_for(base: int, study: str, n_existing: int) -> int:
    """A per-study seed; a resumed study gets a fresh stream (``n_existing`` trials so far)."""
    return (base * 1_000_003 + zlib.crc32(study.encode()) + 7919 * n_existing) % (2**31 - 1)


def open_study(driver: StudyDriver) -> Any:
    """Create or load the driver's study; :class:`UserError` when the stored study has other
    directions or was made for another space, mode or budget. A resumed study gets a sampler
    with a fresh seed (see :func:`seed_for`)."""
    optuna = import_optuna()
    sampler = make_sampler(driver.config.sampler, seed_for(driver.seed, driver.spec.name, 0), driver.config.n_trials)
    try:
        study = optuna.create_study(
            storage=driver.storage, study_name=driver.spec.name, sampler=sampler,
            directions=driver.directions, load_if_exists=True,
        )
    except ValueError as err:
        raise UserError(f"study {driver.spec.name!r} cannot be opened: {err}") from None
    got = [d.name.lower() for d in study.directions]
    if got != driver.directions:
        raise UserError(
            f"study {driver.spec.name!r} in the storage has directions {got}, this search needs "
            f"{driver.directions}; use another search.study_prefix or run folder"
        )
    fp = study.user_attrs.get("diffnas_fingerprint")
    if fp is None:
        study.set_user_attr("diffnas_fingerprint", driver.fingerprint())
        study.set_user_attr("diffnas_mode", driver.spec.mode)
        study.set_user_attr("diffnas_budget_ratio", driver.spec.budget_ratio)
        study.set_user_attr("diffnas_full_macs", driver.full_macs)
    elif fp != driver.fingerprint():
        raise UserError(
            f"study {driver.spec.name!r} in the storage was made for another search space, mode or "
            "budget; use another search.study_prefix or run folder"
        )
    n_existing = len(study.get_trials(deepcopy=False))
    if n_existing:
        study.sampler = make_sampler(
            driver.config.sampler, seed_for(driver.seed, driver.spec.name, n_existing), driver.config.n_trials
        )
    return study
