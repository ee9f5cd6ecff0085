"""Output records of :func:`router.train.train_router`: one :class:`BudgetOutcome` per budget and
the :class:`RouterResult` holding them with the training log (allocation record, JSON-lines log,
summary rows).

Example:
    >>> from router.synthetic import SyntheticMixture
    >>> from router.train import train_router
    >>> bench = SyntheticMixture.default(seed=0)
    >>> res = train_router(bench.space, bench.task_loss, [0.5], steps=20, seed=0)
    >>> [row["budget_ratio"] for row in res.summary()]
    [0.5]
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from experts.allocation import Allocation
from experts.mixture_space import MixtureSpace
from router.agent import ExpertRoutingAgent
from search_spaces import Arch

__all__ = ["BudgetOutcome", "RouterResult"]


@dataclass(frozen=True)
class BudgetOutcome:
    """What the router exports for one target budget.

    Attributes:
        budget_ratio: the target (fraction of the full arch's MACs).
        arch: the feasible arch (after repair and fill).
        decoded_arch: the agent's deterministic decode before repair/fill.
        macs / achieved_ratio: cost of ``arch``.
        decoded_ratio: cost ratio of ``decoded_arch``.
        task_loss: loss of ``arch`` by the evaluator.
        decoded_task_loss: loss of ``decoded_arch`` by the evaluator.
        agent_budget_ratio: the budget given to the agent for the decode (differs from
            ``budget_ratio`` after calibration of a budget-conditioned agent).
        repair_steps / fill_steps / exchange_steps: steps taken by each loop.
        evaluations: task-loss evaluations spent by repair/fill/exchange (cache hits excluded;
            0 when they scored archs by the agent's log-probabilities).
        decode_seconds: wall time of this budget's decode, calibration, repair, fill and
            exchange (training time is :attr:`RouterResult.train_seconds`, shared by budgets).
    """

    budget_ratio: float
    arch: Arch
    decoded_arch: Arch
    macs: int
    achieved_ratio: float
    decoded_ratio: float
    task_loss: float
    decoded_task_loss: float
    agent_budget_ratio: float
    repair_steps: int
    fill_steps: int
    exchange_steps: int
    evaluations: int
    decode_seconds: float = 0.0


@dataclass(frozen=True)
class RouterResult:
    """Outcome of :func:`train_router`: one :class:`BudgetOutcome` per budget plus the log."""

    outcomes: tuple[BudgetOutcome, ...]
    log: tuple[dict[str, Any], ...]
    agents: tuple[ExpertRoutingAgent, ...] = field(repr=False)
    budget_conditioned: bool
    train_seconds: float
    train_evaluations: int
    base_macs: float
    settings: dict[str, Any] = field(default_factory=dict)

    def outcome(self, budget_ratio: float) -> BudgetOutcome:
        """The outcome for ``budget_ratio`` (ValueError if it was not among the budgets)."""
        for o in self.outcomes:
            if math.isclose(o.budget_ratio, budget_ratio, rel_tol=1e-9, abs_tol=1e-12):
                return o
        raise ValueError(f"no outcome for budget {budget_ratio}; budgets are {[o.budget_ratio for o in self.outcomes]}")

    def allocation(self, mixture: MixtureSpace, budget_ratio: float) -> Allocation:
        """The :class:`Allocation` record of one budget (``mixture.space`` is the space trained on).

        Raises:
            UserError: the mixture's step counts are not whole numbers.
        """
        o = self.outcome(budget_ratio)
        info = {
            "budget_conditioned": self.budget_conditioned,
            "train_seconds": self.train_seconds,
            "train_evaluations": self.train_evaluations,
            "repair_steps": o.repair_steps,
            "fill_steps": o.fill_steps,
            "exchange_steps": o.exchange_steps,
            "repair_evaluations": o.evaluations,
            "decode_seconds": o.decode_seconds,
            # what this budget's allocation cost end to end: the (shared) training run plus its
            # own decode/repair; what diffnas bench reports as routing cost
            "cost": {"wall_s": self.train_seconds + o.decode_seconds,
                     "evaluations": self.train_evaluations + o.evaluations},
            "decoded_ratio": o.decoded_ratio,
            "agent_budget_ratio": o.agent_budget_ratio,
            "decoded_arch": o.decoded_arch.to_dict(),
            "task_loss": o.task_loss,
            "decoded_task_loss": o.decoded_task_loss,
            **{k: v for k, v in self.settings.items() if isinstance(v, (int, float, str, bool, list))},
        }
        return mixture.to_allocation(o.arch, method="router", budget_ratio=budget_ratio,
                                     base_trajectory_macs=self.base_macs, info=info)

    def write_log(self, path: str | Path) -> None:
        """Training log as JSON lines (one object per logged step)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with tmp.open("w") as f:
            for row in self.log:
                f.write(json.dumps(row, sort_keys=True) + "\n")
        tmp.replace(path)

    def summary(self) -> list[dict[str, Any]]:
        """Plain per-budget rows (JSON-ready)."""
        rows = []
        for o in self.outcomes:
            d = asdict(o)
            d["arch"] = o.arch.to_dict()
            d["decoded_arch"] = o.decoded_arch.to_dict()
            rows.append(d)
        return rows
