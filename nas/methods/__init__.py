"""Allocation methods behind one interface, and the one registry that config, pipeline, bench and
report read.

An allocation method makes a model to compare at a budget of trajectory MACs: the learned
router's allocation, the Optuna search's, uniform widths, static pruning, the base model with
fewer steps, and whatever a plugin adds. Each is an :class:`AllocationMethod` (modelled on
Optuna's ``BaseSampler``: a required minimum, optional attributes): a ``name`` (the one word used
in ``bench.methods``, ``results.jsonl``, file names and the report), a ``label``, and
``candidate(ctx, budget, config_key)``, which returns a :class:`Candidate` or the reason it
cannot run.

Methods are registered with :func:`register_method`; packages register theirs from an entry point
of group ``diffnas.plugins``, which :func:`load_plugins` runs once (diffnas's own benchmark
methods come in that way, from ``benchmarks.plugin:register``). Built-in names: ``router``,
``search``, ``uniform``, ``static``, ``base``, ``fewer_steps``.

Example:
    >>> from nas.methods import AllocationMethod, all_methods, register_method, unregister_method
    >>> class Toy(AllocationMethod):
    ...     name, label, color = "toy", "toy (half the experts)", "#8c564b"
    ...     def candidate(self, ctx, budget, config_key):
    ...         return "no experts in this example"
    >>> _ = register_method(Toy)
    >>> "toy" in all_methods()
    True
    >>> unregister_method("toy")

Modules: :mod:`~nas.methods._method` (the interface and the candidate record),
:mod:`~nas.methods._registry` (registry and plugin loading).
"""

from __future__ import annotations

from nas.methods._method import AllocationMethod, Candidate, budget_key
from nas.methods._registry import (
    PLUGIN_GROUP,
    all_methods,
    get_method,
    load_plugins,
    methods_needing,
    register_method,
    unregister_method,
)

__all__ = [
    "AllocationMethod",
    "Candidate",
    "PLUGIN_GROUP",
    "all_methods",
    "budget_key",
    "get_method",
    "load_plugins",
    "methods_needing",
    "register_method",
    "unregister_method",
]
