"""The built-in allocation methods of the comparison, each an :class:`nas.methods.AllocationMethod`.

- ``router``: the routing agent's allocation ``allocations/router-<b>.json``, as a fine-tuned mixture;
- ``search``: the Optuna/Ray allocation ``allocations/search-<b>.json``, as a fine-tuned mixture;
- ``search_seeded``: the search seeded with the router's allocation
  (``allocations/search_seeded-<b>.json``, ``search.seed_with_router``), as a fine-tuned mixture;
- ``uniform``: every expert at the largest uniform width meeting the budget (written to
  ``allocations/uniform-<b>.json``), as a fine-tuned mixture;
- ``static``: one model pruned with torch-pruning to the budget, no intervals, fine-tuned with
  the same total budget;
- ``fewer_steps``: the base model with ``floor(b x num_steps)`` sampling steps;
- ``steps``: the base model along a searched step schedule (``allocations/steps-<b>.json``, the
  steps-only search of ``diffnas search`` with ``schedule.joint``);
- ``base``: the unpruned base model (once, no budget);
- ``fewer_steps_tuned``: ``fewer_steps``'s schedule on the base model, fine-tuned like the mixtures
  (``bench.finetune_target``; with ``trajectory``: step distillation without pruning);
- ``uniform_steps``: every expert at half width with as many evenly spaced steps as the budget buys
  (a rule of the joint space, fine-tuned like the mixtures).

:func:`register_builtin_methods` registers them (in that order: the report's) from
``benchmarks.plugin:register``. A new method is one module with one
:class:`~nas.methods.AllocationMethod` subclass and one line in :func:`register_builtin_methods`
(or in a plugin of its own package).

Modules: :mod:`~benchmarks.methods._mixture` (the shared fine-tuned-mixture method),
:mod:`~benchmarks.methods._router`, :mod:`~benchmarks.methods._search`,
:mod:`~benchmarks.methods._uniform`, :mod:`~benchmarks.methods._static`,
:mod:`~benchmarks.methods._base` (``base`` and ``fewer_steps``), :mod:`~benchmarks.methods._steps`,
:mod:`~benchmarks.methods._common`
(input hashes, the fine-tuning budget).
"""

from __future__ import annotations

from benchmarks.methods._base import BaseMethod, FewerStepsMethod
from benchmarks.methods._cache import CacheMethod
from benchmarks.methods._fewer_steps_tuned import FewerStepsTunedMethod
from benchmarks.methods._mixture import MixtureMethod
from benchmarks.methods._router import RouterMethod
from benchmarks.methods._search import SearchMethod
from benchmarks.methods._search_seeded import SearchSeededMethod
from benchmarks.methods._static import STATIC_MARKER, StaticMethod
from benchmarks.methods._steps import StepsMethod
from benchmarks.methods._uniform import UniformMethod
from benchmarks.methods._uniform_steps import UniformStepsMethod
from nas.methods import register_method

__all__ = [
    "BaseMethod",
    "FewerStepsMethod",
    "FewerStepsTunedMethod",
    "MixtureMethod",
    "RouterMethod",
    "STATIC_MARKER",
    "SearchMethod",
    "SearchSeededMethod",
    "StaticMethod",
    "StepsMethod",
    "UniformMethod",
    "UniformStepsMethod",
    "register_builtin_methods",
]


def register_builtin_methods() -> None:
    """Register the built-in methods with :mod:`nas.methods` (idempotent)."""
    for method in (RouterMethod, SearchMethod, UniformMethod, StaticMethod, FewerStepsMethod, StepsMethod,
                   BaseMethod):
        register_method(method)
    register_method(CacheMethod)
    register_method(SearchSeededMethod)
    register_method(FewerStepsTunedMethod)
    register_method(UniformStepsMethod)
