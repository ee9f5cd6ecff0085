"""The allocation-method interface: :class:`AllocationMethod` and the :class:`Candidate` it returns."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = ["AllocationMethod", "Candidate", "budget_key"]


def budget_key(budget: float | None) -> str:
    """How a budget is written in names and keys: ``"base"`` for none, else ``f"{b:g}"``.

    Example:
        >>> budget_key(0.50), budget_key(None)
        ('0.5', 'base')
    """
    return "base" if budget is None else f"{float(budget):g}"


@dataclass
class Candidate:
    """One (method, budget) to evaluate: how to get its model, and what it cost to make.

    Attributes:
        method: the registered name of the method that made it.
        budget_ratio: the budget (fraction of the base model's trajectory MACs), None for a
            method without one.
        inputs_key: hash of everything the row depends on; a stored row with the same key is
            reused instead of measured again.
        num_steps: sampling steps of its trajectory.
        build: makes the model: ``() -> (model callable, macs_per_trajectory, extra row fields)``.
        allocation_path: the allocation file it was made from (relative to the run folder).
        allocation_cost: the cost of making that allocation (``benchmarks.bench.normalize_cost``).
        model, macs_per_trajectory, extra: filled in by the bench from ``build()``.
        timesteps: the training timesteps it samples along (an allocation's step schedule;
            ``num_steps`` is their number), or None: ``num_steps`` evenly spaced steps.
    """

    method: str
    budget_ratio: float | None
    inputs_key: str
    num_steps: int
    build: Callable[[], Any]
    allocation_path: str | None = None
    allocation_cost: dict[str, Any] | None = None
    model: Any = None
    macs_per_trajectory: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    timesteps: tuple[int, ...] | None = None

    @property
    def name(self) -> str:
        """``method@budget`` (``base`` for no budget), as logs and ``BenchResult.reused`` show it."""
        return f"{self.method}@{budget_key(self.budget_ratio)}"


class AllocationMethod(abc.ABC):
    """Something that makes a model to compare at a budget (an allocation of experts, a pruned
    model, the base model with fewer steps, ...).

    The required minimum is the class attributes :attr:`name` and :attr:`label` and
    :meth:`candidate`; everything else has a default a subclass may override. Register an
    instance (or the class) with :func:`nas.methods.register_method`; config validation, the
    pipeline, the bench and the report then know it.

    Example:
        >>> from nas.methods import AllocationMethod, Candidate
        >>> class Toy(AllocationMethod):
        ...     name, label = "toy", "toy (example)"
        ...     def candidate(self, ctx, budget, config_key):
        ...         return "no toy model here"
        >>> Toy().candidate(None, 0.5, "key"), Toy.budgeted, Toy.color
        ('no toy model here', True, 'gray')
    """

    #: Registered name: used in ``bench.methods``, ``results.jsonl`` (``method``), file names and
    #: the report (letters, digits and ``_``).
    name: ClassVar[str]
    #: What the report's tables and legends call it.
    label: ClassVar[str]
    #: Matplotlib colour and marker of its points (and of its bars in the allocation plot).
    color: ClassVar[str] = "gray"
    marker: ClassVar[str] = "o"
    marker_size: ClassVar[float] = 6.0
    #: Drawn large and hollow on top of the other methods, so that a point another method
    #: shares stays visible.
    highlight: ClassVar[bool] = False
    #: Pipeline stages whose outputs it reads; when one is skipped, the bench skips it.
    needs: ClassVar[tuple[str, ...]] = ()
    #: Whether it is made for each budget of ``bench.budgets`` (False: once, ``budget`` None).
    budgeted: ClassVar[bool] = True
    #: Whether its model is made (pruned and fine-tuned, saved under ``mixtures/``) before it is
    #: measured, by the pipeline's fine-tuning stage.
    finetuned: ClassVar[bool] = False
    #: Whether its model is a fine-tuned mixture of the interval experts
    #: (``allocations/<name>-<budget>.json`` -> ``mixtures/<name>-<budget>/``).
    mixture: ClassVar[bool] = False
    #: What making it costs, in words (the report's "search/routing cost" column explains it).
    cost: ClassVar[str] = ""

    @abc.abstractmethod
    def candidate(self, ctx: Any, budget: float | None, config_key: str) -> Candidate | str:
        """The candidate of this method at ``budget``, or the reason it cannot run (a string).

        Args:
            ctx: the run's context (:class:`nas.run.RunContext`: config, run folder, base model,
                data, experts, scheduler, ...), loaded lazily and shared by every candidate.
            budget: fraction of the base model's trajectory MACs; None when not :attr:`budgeted`.
            config_key: hash of the bench settings; part of the candidate's ``inputs_key``.

        Returns:
            A :class:`Candidate` (its ``build`` does the slow work, only when the bench needs it),
            or a one-line reason, recorded as a skip.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={getattr(self, 'name', None)!r})"
