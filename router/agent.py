"""The Expert Routing Agent: a GRU that emits one relaxed choice per free dimension.

The agent reads a fixed sequence of tokens, one per *free* dimension of a search space (for a
mixture of interval experts: a :class:`~search_spaces.ProductSpace`, one part per expert, so the
sequence runs expert by expert and, inside an expert, block by block). Each token embeds

- the expert index (the part of a ``ProductSpace``; 0 for a plain space),
- the dimension's position inside its expert and its kind (``width``, ``heads``, ``depth``...),
- for a budget-conditioned agent, the target budget ratio (Fourier features of its log);
- the MACs each choice costs (first-order, from the space's cost model).

A GRU runs over the tokens; one shared output head gives logits over the largest number of
choices, and choices a dimension does not have are masked out. Logits are the head's output
plus a per-token table minus ``price(p) x cost``: one learned *price of compute*, a decreasing
function of the budget ``p``, trades MACs against quality for every dimension at once (the
Lagrangian structure of the problem), so a budget-conditioned agent moves smoothly along the
Pareto curve as ``p`` changes. Training samples straight-through
Gumbel-softmax one-hots (temperature annealed by the caller); :meth:`ExpertRoutingAgent.decode`
is the deterministic argmax. Tied dimensions are never emitted: they follow their free partner
through ``space.complete`` / ``space.repair``.

Example:
    >>> import torch
    >>> from search_spaces import Dimension, SimpleSpace
    >>> space = SimpleSpace([Dimension("w", (8, 16, 32)), Dimension("skip", (False, True), "depth")],
    ...                     macs_fn=lambda a: a["w"] * (2 if a["skip"] else 1))
    >>> agent = ExpertRoutingAgent(space, budget_conditioned=True, seed=0)
    >>> w = agent.sample_weights(torch.tensor([0.5]), tau=1.0, generator=torch.Generator().manual_seed(0))
    >>> sorted(w[0]), tuple(w[0]["w"].shape)
    (['skip', 'w'], (3,))
    >>> space.validate(agent.decode(0.5))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from router.objective import choice_macs_deltas
from search_spaces import Arch, Dimension, ProductSpace, SearchSpace

__all__ = ["ExpertRoutingAgent", "gumbel_softmax_st", "one_hot_weights", "token_layout"]

_MASK_LOGIT = -1.0e9  # logit of a padded (non-existent) choice


def token_layout(space: SearchSpace) -> list[tuple[int, int, str, Dimension]]:
    """``(expert index, position inside the expert, kind, dimension)`` per free dimension.

    For a :class:`ProductSpace` the expert index is the part's order; otherwise it is 0.
    """
    free = space.free_dimensions()
    if isinstance(space, ProductSpace):
        parts = list(space.parts)
        counters = {p: 0 for p in parts}
        out = []
        for d in free:
            part = d.name.partition(ProductSpace.SEP)[0]
            out.append((parts.index(part), counters[part], d.kind, d))
            counters[part] += 1
        return out
    return [(0, i, d.kind, d) for i, d in enumerate(free)]


def _choice_costs(space: SearchSpace) -> torch.Tensor:
    """(T, C) first-order MACs of each choice relative to the full arch, scaled to O(1)
    (divided by the mean over dimensions of the largest saving); padded entries are 0."""
    cost = choice_macs_deltas(space)  # (T, C)
    scale = float(cost.abs().amax(dim=1).mean())
    return (cost / scale if scale > 0 else cost).to(torch.float32)


def gumbel_softmax_st(
    logits: torch.Tensor, tau: float, generator: torch.Generator | None = None, hard: bool = True,
    noise_scale: float = 1.0,
) -> torch.Tensor:
    """Gumbel-softmax over the last axis; straight-through one-hot when ``hard``.

    The forward value of the hard version is exactly one-hot; its gradient is that of the soft
    sample. ``generator`` makes the noise reproducible (it must live on ``logits.device``).
    ``noise_scale`` multiplies the Gumbel noise (1: samples follow ``softmax(logits)``; towards
    0: samples approach the argmax decode).
    """
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    gumbel = -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))  # (..., C)
    soft = torch.softmax((logits + float(noise_scale) * gumbel) / max(float(tau), 1e-6), dim=-1)  # (..., C)
    if not hard:
        return soft
    index = soft.argmax(dim=-1, keepdim=True)
    one_hot = torch.zeros_like(soft).scatter_(-1, index, 1.0)
    return one_hot - soft.detach() + soft


class ExpertRoutingAgent(nn.Module):
    """GRU over (expert, dimension) tokens that outputs logits over each dimension's choices.

    Args:
        space: the search space (for a mixture: a ``ProductSpace`` with one part per expert).
        hidden_size: GRU width.
        embed_size: token embedding width.
        budget_conditioned: when True the target budget ratio is an input; otherwise the
            budget argument of :meth:`forward` is ignored.
        num_budget_freqs: Fourier frequencies used to embed ``log(budget_ratio)``.
        num_price_knots: knots of the monotone price-of-compute curve over ``log(budget_ratio)``.
        seed: parameters are initialised from this seed (the global RNG is left untouched).
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        hidden_size: int = 64,
        embed_size: int = 32,
        budget_conditioned: bool = False,
        num_budget_freqs: int = 4,
        num_price_knots: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        layout = token_layout(space)
        if not layout:
            raise ValueError("the search space has no free dimensions: nothing to route")
        self.space = space
        self.budget_conditioned = bool(budget_conditioned)
        self.dims: tuple[Dimension, ...] = tuple(t[3] for t in layout)
        self.names: tuple[str, ...] = tuple(d.name for d in self.dims)
        self.num_choices: tuple[int, ...] = tuple(len(d.choices) for d in self.dims)
        self.max_choices = max(self.num_choices)
        kinds = sorted({t[2] for t in layout})
        self.num_budget_freqs = int(num_budget_freqs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._build_layers(layout, len(kinds), hidden_size, embed_size, num_price_knots)
        knots = torch.linspace(math.log(0.05), 0.0, num_price_knots)  # (K,) over log budget
        self.register_buffer("price_knots", knots, persistent=False)
        self._price_width = float(knots[1] - knots[0]) if num_price_knots > 1 else 1.0
        self._register_layout(space, layout, kinds)

    def _build_layers(self, layout: list[tuple[int, int, str, Dimension]], num_kinds: int, hidden_size: int,
                      embed_size: int, num_price_knots: int) -> None:
        """The embeddings, GRU, head, logit table and price curve (in a fixed order: seeded init)."""
        num_experts = max(t[0] for t in layout) + 1
        max_pos = max(t[1] for t in layout) + 1
        self.expert_embed = nn.Embedding(num_experts, embed_size)
        self.pos_embed = nn.Embedding(max_pos, embed_size)
        self.kind_embed = nn.Embedding(num_kinds, embed_size)
        self.nchoice_embed = nn.Embedding(self.max_choices + 1, embed_size)
        self.cost_embed = nn.Linear(self.max_choices, embed_size)
        budget_in = 2 + 2 * self.num_budget_freqs
        self.budget_mlp = nn.Sequential(
            nn.Linear(budget_in, embed_size), nn.Tanh(), nn.Linear(embed_size, embed_size)
        )
        self.budget_to_h0 = nn.Linear(embed_size, hidden_size)
        self.gru = nn.GRU(embed_size, hidden_size, batch_first=True)
        self.head = nn.Sequential(nn.Linear(hidden_size + embed_size, hidden_size), nn.Tanh(),
                                  nn.Linear(hidden_size, self.max_choices, bias=False))
        nn.init.zeros_(self.head[-1].weight)  # start from the per-token table (uniform)
        # per-token logit table: lets an agent settle on any allocation quickly
        self.token_bias = nn.Parameter(torch.zeros(len(layout), self.max_choices))
        # price of compute: logits get -price * cost, so one scalar trades MACs for quality.
        # log price = price_bias - sum_k softplus(price_slopes[k]) * softplus((log p - c_k) / s):
        # decreasing in the budget p, so the decode's MACs grow monotonically with p
        self.price_bias = nn.Parameter(torch.zeros(()))
        self.price_slopes = nn.Parameter(torch.full((num_price_knots,), -2.0))

    def _register_layout(self, space: SearchSpace, layout: list[tuple[int, int, str, Dimension]],
                         kinds: list[str]) -> None:
        """Token ids, the choice mask and the per-choice MACs as (non-persistent) buffers."""
        self.register_buffer("expert_ids", torch.tensor([t[0] for t in layout]), persistent=False)
        self.register_buffer("pos_ids", torch.tensor([t[1] for t in layout]), persistent=False)
        self.register_buffer("kind_ids", torch.tensor([kinds.index(t[2]) for t in layout]), persistent=False)
        self.register_buffer("nchoice_ids", torch.tensor(self.num_choices), persistent=False)
        mask = torch.zeros(len(layout), self.max_choices, dtype=torch.bool)
        for i, n in enumerate(self.num_choices):
            mask[i, :n] = True
        self.register_buffer("choice_mask", mask, persistent=False)  # (T, C)
        self.register_buffer("cost", _choice_costs(space), persistent=False)  # (T, C)

    # ----------------------------------------------------------------- network
    def _budget_features(self, budget_ratio: torch.Tensor) -> torch.Tensor:
        """(B,) budget ratios -> (B, 2 + 2F) features of log budget."""
        lb = torch.log(budget_ratio.clamp_min(1e-4))  # (B,)
        freqs = 2.0 ** torch.arange(self.num_budget_freqs, device=lb.device, dtype=lb.dtype)  # (F,)
        ang = lb[:, None] * freqs[None, :] * math.pi / 2  # (B, F)
        return torch.cat([lb[:, None], budget_ratio[:, None], torch.sin(ang), torch.cos(ang)], dim=1)

    def forward(self, budget_ratio: torch.Tensor | float | Sequence[float] = 1.0) -> torch.Tensor:
        """Masked logits of shape ``(B, T, C)`` for a batch of ``B`` target budget ratios.

        ``T`` is the number of free dimensions and ``C`` the largest number of choices; the
        logits of choices a dimension lacks are a large negative number.
        """
        device = self.token_bias.device
        b = torch.as_tensor(budget_ratio, dtype=torch.float32, device=device).reshape(-1)  # (B,)
        if not self.budget_conditioned:
            b = torch.ones_like(b)
        batch = b.shape[0]
        tok = (self.expert_embed(self.expert_ids) + self.pos_embed(self.pos_ids)
               + self.kind_embed(self.kind_ids) + self.nchoice_embed(self.nchoice_ids)
               + self.cost_embed(self.cost))  # (T, E)
        if self.budget_conditioned:
            be = self.budget_mlp(self._budget_features(b))  # (B, E)
        else:
            be = torch.zeros(batch, tok.shape[1], device=device)  # (B, E)
        x = tok[None, :, :] + be[:, None, :]  # (B, T, E)
        h0 = torch.tanh(self.budget_to_h0(be))[None]  # (1, B, H)
        out, _ = self.gru(x, h0)  # (B, T, H)
        logits = self.head(torch.cat([out, x], dim=-1)) + self.token_bias[None]  # (B, T, C)
        price = torch.exp(self.log_price(b))  # (B,)
        logits = logits - price[:, None, None] * self.cost[None]  # (B, T, C)
        return logits.masked_fill(~self.choice_mask[None], _MASK_LOGIT)

    def log_price(self, budget_ratio: torch.Tensor) -> torch.Tensor:
        """(B,) log price of compute; non-increasing in the budget (constant if not conditioned)."""
        if not self.budget_conditioned:
            return self.price_bias.expand(budget_ratio.shape[0])
        x = torch.log(budget_ratio.clamp_min(1e-4))[:, None]  # (B, 1)
        basis = nn.functional.softplus((x - self.price_knots[None]) / self._price_width)  # (B, K)
        return self.price_bias - (basis * nn.functional.softplus(self.price_slopes)[None]).sum(dim=1)

    # ----------------------------------------------------------------- decisions
    def weights_dict(self, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """(T, C) padded weights -> ``{free dim name: (n_choices,) tensor}`` (differentiable)."""
        return {name: weights[i, :n] for i, (name, n) in enumerate(zip(self.names, self.num_choices))}

    def sample_weights(
        self,
        budget_ratio: torch.Tensor | float | Sequence[float],
        tau: float,
        generator: torch.Generator | None = None,
        hard: bool = True,
        noise_scale: float = 1.0,
    ) -> list[dict[str, torch.Tensor]]:
        """One relaxed arch per budget: straight-through Gumbel-softmax one-hots (or soft)."""
        w = gumbel_softmax_st(self(budget_ratio), tau, generator, hard=hard, noise_scale=noise_scale)  # (B, T, C)
        return [self.weights_dict(w[i]) for i in range(w.shape[0])]

    def probabilities(self, budget_ratio: float) -> dict[str, torch.Tensor]:
        """Softmax probabilities per free dimension at one budget (no sampling)."""
        return self.weights_dict(torch.softmax(self(budget_ratio)[0], dim=-1))

    @torch.no_grad()
    def decode(self, budget_ratio: float = 1.0) -> Arch:
        """Deterministic arch: argmax per free dimension, tied dimensions completed, repaired."""
        idx = self(budget_ratio)[0].argmax(dim=-1).tolist()  # (T,)
        free = {d.name: d.choices[i] for d, i in zip(self.dims, idx)}
        return self.space.repair(self.space.complete(free))

    @torch.no_grad()
    def log_probs(self, budget_ratio: float) -> dict[str, list[float]]:
        """Log-probabilities of each choice per free dimension (a cheap repair score)."""
        lp = torch.log_softmax(self(budget_ratio)[0], dim=-1)  # (T, C)
        return {name: lp[i, :n].tolist() for i, (name, n) in enumerate(zip(self.names, self.num_choices))}


def one_hot_weights(space: SearchSpace, arch: Mapping[str, object], device: str | torch.device = "cpu",
                    ) -> dict[str, torch.Tensor]:
    """Exact one-hot weights of a discrete arch (what a relaxed task loss sees at a decision)."""
    out = {}
    for d in space.free_dimensions():
        w = torch.zeros(len(d.choices), device=device)
        w[d.index(arch[d.name])] = 1.0
        out[d.name] = w
    return out

