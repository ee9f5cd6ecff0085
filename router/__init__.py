"""The Expert Routing Agent: splits a trajectory-MACs budget between interval experts, end to end.

- :class:`router.agent.ExpertRoutingAgent`: GRU over (expert, dimension) tokens, straight-through
  Gumbel-softmax decisions, optional budget input (one agent for a whole Pareto curve).
- :mod:`router.objective`: task loss + resource loss on ``log r - log p`` (log-ratio penalty or
  augmented Lagrangian), differentiable trajectory MACs through the space's cost model.
- :func:`router.train.train_router`: training, deterministic decode, bounded feasibility repair;
  the loop of one agent is in :mod:`router.loop`, the repair, fill and exchange in
  :func:`router.feasibility.make_feasible`, the records in :mod:`router.result`.
- :class:`router.mixture.MixtureRoutingLoss`: the task loss on a real mixture of elastic experts.
- :class:`router.synthetic.SyntheticMixture`: a benchmark with an exactly known optimum.
- :func:`router.output.write_outputs`: ``allocations/router-<budget>.json``, log, summary, plot.
"""

from router.agent import ExpertRoutingAgent
from router.objective import RouterObjective, relaxed_macs, resource_loss
from router.train import BudgetOutcome, RouterResult, make_feasible, train_router

__all__ = [
    "BudgetOutcome",
    "ExpertRoutingAgent",
    "RouterObjective",
    "RouterResult",
    "make_feasible",
    "relaxed_macs",
    "resource_loss",
    "train_router",
]
