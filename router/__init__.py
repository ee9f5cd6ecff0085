"""The Expert Routing Agent: splits a trajectory-MACs budget between interval experts, end to end.

- :class:`~router.agent.ExpertRoutingAgent`: GRU over (expert, dimension) tokens, straight-through
  Gumbel-softmax decisions, optional budget input (one agent for a whole Pareto curve).
- :class:`~router.objective.RouterObjective`: task loss + resource loss on ``log r - log p``
  (log-ratio penalty or augmented Lagrangian), differentiable trajectory MACs through the space's
  cost model.
- :func:`~router.train.train_router` with :class:`~router.settings.RouterSettings`: training,
  then by default the agent's learned values per (dimension, choice)
  (:func:`~router.knapsack.fit_values`) decoded by an exact knapsack under the budget
  (:func:`~router.knapsack.knapsack_decode`, no loss evaluation) and a repair of at most
  ``max_repair_evaluations`` exact evaluations (:func:`~router.knapsack.bounded_repair`); or
  (``decode="argmax"``) the argmax decode and the unbounded repair/fill/exchange; the loop of one agent is
  :func:`~router.loop.train_agent`, the repair, fill and exchange
  :func:`~router.feasibility.make_feasible`, the records :class:`~router.result.BudgetOutcome`
  and :class:`~router.result.RouterResult`.
- :func:`~router.joint.route_joint`: routing on the joint step-and-expert space (the agent decoded
  per candidate step schedule of :mod:`router.schedules`, each candidate scored once by a
  caller's trajectory proxy); :func:`~router.train.fit_agents` is the training half of
  :func:`~router.train.train_router`.
- :class:`~router.mixture.MixtureRoutingLoss`: the task loss on a real mixture of elastic experts
  (its space is an :class:`experts.MixtureSpace`).
- :class:`~router.synthetic.SyntheticMixture`: a benchmark with an exactly known optimum.
- :func:`~router.output.write_outputs`: ``allocations/router-<budget>.json``, log, summary, plot.
"""

from router.agent import ExpertRoutingAgent, gumbel_softmax_st, one_hot_weights, token_layout
from router.feasibility import ArchLoss, calibrate_budget, logit_scorer, make_feasible
from router.joint import CandidateScore, JointCandidate, JointOutcome, joint_allocation, route_joint
from router.knapsack import RepairRecord, ValueRecorder, bounded_repair, fit_values, knapsack_decode
from router.loop import train_agent
from router.mixture import MixtureRoutingLoss
from router.objective import (
    RESOURCE_MODES,
    BatchedTaskLoss,
    ObjectiveTerms,
    RouterObjective,
    TaskLoss,
    choice_macs_deltas,
    relaxed_macs,
    resource_loss,
)
from router.output import allocation_filename, plot_allocations, write_allocation_files, write_outputs
from router.result import BudgetOutcome, RouterResult
from router.schedules import JointSettings, candidate_counts, candidate_schedules, interval_step_counts
from router.settings import RouterSettings
from router.synthetic import KnapsackSolution, SyntheticMixture
from router.train import FittedAgents, fit_agents, train_router

__all__ = [
    "ArchLoss",
    "BatchedTaskLoss",
    "BudgetOutcome",
    "CandidateScore",
    "ExpertRoutingAgent",
    "FittedAgents",
    "JointCandidate",
    "JointOutcome",
    "JointSettings",
    "KnapsackSolution",
    "MixtureRoutingLoss",
    "ObjectiveTerms",
    "RESOURCE_MODES",
    "RepairRecord",
    "RouterObjective",
    "RouterResult",
    "RouterSettings",
    "SyntheticMixture",
    "TaskLoss",
    "ValueRecorder",
    "allocation_filename",
    "bounded_repair",
    "calibrate_budget",
    "candidate_counts",
    "candidate_schedules",
    "choice_macs_deltas",
    "fit_agents",
    "fit_values",
    "gumbel_softmax_st",
    "interval_step_counts",
    "joint_allocation",
    "knapsack_decode",
    "logit_scorer",
    "make_feasible",
    "one_hot_weights",
    "plot_allocations",
    "relaxed_macs",
    "resource_loss",
    "route_joint",
    "token_layout",
    "train_agent",
    "train_router",
    "write_allocation_files",
    "write_outputs",
]
