"""The router's task loss on a real mixture of elastic interval experts.

:class:`MixtureRoutingLoss` is what :func:`router.train.train_router` trains the agent on:

- **relaxed** (``loss(weights)``, differentiable in the agent's weights): for every expert ``k``,
  ``expert.set_active_relaxed(weights of part k)``, one training batch drawn in interval ``k``
  (fresh images, timesteps and noise from a seeded generator), the experts' own loss
  (:func:`experts.denoising.expert_loss`: denoising MSE + ``distill_weight`` x MSE to the frozen
  pretrained model's prediction); the mixture loss is the sum over experts weighted by the
  share of sampling steps each serves. Experts are frozen (``requires_grad`` off) unless
  ``joint=True``.
- **discrete** (``arch_loss(arch)``, used by the repair/fill/exchange and in the report): the
  same loss on the fixed held-out draws (:class:`experts.losses.HeldOutSet`, the set the search
  and the experts' table use), computed per expert and cached per (expert, sub-arch), so a
  move that changes one expert costs one expert evaluation.

Example::

    >>> loss = MixtureRoutingLoss(experts, intervals, steps, teacher, sched, images, heldout)  # doctest: +SKIP
    >>> res = train_router(loss.space, loss, [0.5], arch_loss_fn=loss.arch_loss)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from experts.intervals import Intervals
from experts.denoising import LossBatch, as_tensor, batch_model_kwargs, expert_loss, make_batch
from experts.losses import HeldOutSet
from experts.mixture_space import MixtureSpace
from search_spaces import Arch

__all__ = ["MixtureRoutingLoss"]

log = logging.getLogger(__name__)


def _expand(kw: Mapping[str, Any] | None, batch: int) -> dict[str, Any]:
    out = dict(kw or {})
    for key, v in list(out.items()):
        if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == 1 and batch > 1:
            out[key] = v.expand(batch, *v.shape[1:])
    return out


class MixtureRoutingLoss:
    """Relaxed and discrete task losses of a mixture of elastic experts (see module docstring).

    Args:
        experts: one elastic supernet per interval (``ElasticUNet``: ``.space``,
            ``set_active``, ``set_active_relaxed``), in interval order.
        intervals: the experts' intervals.
        steps_per_expert: sampling steps each interval serves (trajectory weights).
        teacher: the frozen pretrained UNet (distillation target); ``None`` disables distillation.
        noise_scheduler: the training scheduler (``add_noise``, ``prediction_type``).
        images: training samples ``(N, C, H, W)`` (latents for latent models).
        heldout: fixed held-out draws for :meth:`arch_loss`; ``None``: no discrete evaluation
            (use ``repair_score="logits"``).
        batch_size: training samples per expert per relaxed evaluation.
        distill_weight: weight of the distillation term.
        model_kwargs: extra UNet inputs (``encoder_hidden_states`` for conditional models).
        seed: seeds the training batches.
        device: where the experts run.
        eval_batch_size: held-out samples per model call in :meth:`arch_loss`.
        joint: train the experts' weights too (they then keep ``requires_grad``).
        labels: (N,) class labels of ``images`` for class-conditional experts: every relaxed
            batch passes its images' labels (to the experts and the teacher); the held-out
            draws pass the held-out set's own labels.

    Attributes:
        mixture: the :class:`experts.MixtureSpace` of the experts (parts ``e0, e1, ...``
            weighted by ``steps_per_expert``).
        space: ``mixture.space``, the ProductSpace the router trains on.
        evaluations: expert evaluations on the held-out set (cache misses of :meth:`expert_loss`).
        relaxed_calls: relaxed (training) evaluations.
    """

    def __init__(
        self,
        experts: Sequence[nn.Module],
        intervals: Intervals,
        steps_per_expert: Sequence[float],
        teacher: nn.Module | None,
        noise_scheduler: Any,
        images: torch.Tensor,
        heldout: HeldOutSet | None = None,
        *,
        batch_size: int = 16,
        distill_weight: float = 1.0,
        model_kwargs: Mapping[str, Any] | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        eval_batch_size: int = 256,
        joint: bool = False,
        labels: torch.Tensor | None = None,
    ) -> None:
        n = intervals.num_intervals
        if len(experts) != n or len(steps_per_expert) != n:
            raise ValueError(f"need one expert and one step count per interval ({n}), got "
                             f"{len(experts)} and {len(steps_per_expert)}")
        if heldout is not None and heldout.intervals != intervals:
            raise ValueError("the held-out set was drawn for other intervals than the experts'")
        if images.shape[0] < 1:
            raise ValueError("no training images")
        if labels is not None and labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must have one entry per image: {labels.shape[0]} labels, {images.shape[0]} images")
        self.labels = labels
        self.experts = list(experts)
        self.intervals = intervals
        self.steps_per_expert = tuple(float(s) for s in steps_per_expert)
        total = sum(self.steps_per_expert)
        if total <= 0:
            raise ValueError("steps_per_expert must not all be zero")
        self.step_frac = tuple(s / total for s in self.steps_per_expert)
        self.teacher = teacher
        self.noise_scheduler = noise_scheduler
        self.images = images
        self.heldout = heldout
        self.batch_size = int(batch_size)
        self.distill_weight = float(distill_weight) if teacher is not None else 0.0
        self.model_kwargs = dict(model_kwargs or {})
        self.device = torch.device(device)
        self.eval_batch_size = int(eval_batch_size)
        self.joint = bool(joint)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.mixture = MixtureSpace([e.space for e in self.experts], self.steps_per_expert, intervals)
        self.space = self.mixture.space
        for e in self.experts:
            e.eval()  # deterministic layers; the agent is what trains
            if not self.joint:
                for p in e.parameters():
                    p.requires_grad_(False)
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        self._cache: dict[tuple[int, Arch, int], float] = {}
        self._teacher_heldout: dict[tuple[int, int], torch.Tensor] = {}
        self.evaluations = 0  # expert evaluations on the held-out set (cache misses)
        self.relaxed_calls = 0

    # ------------------------------------------------------------------ relaxed (training)
    def parameters(self) -> list[nn.Parameter]:
        """The experts' parameters (distinct), for joint training."""
        seen: dict[int, nn.Parameter] = {}
        for e in self.experts:
            for p in e.parameters():
                seen.setdefault(id(p), p)
        return list(seen.values())

    def __call__(self, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Step-weighted relaxed mixture loss (scalar, differentiable in ``weights``)."""
        per = self.mixture.split_values(weights)
        total = torch.zeros((), device=self.device)
        for k, expert in enumerate(self.experts):
            w_k = {name: w.to(self.device) for name, w in per[k].items()}
            expert.set_active_relaxed(w_k)
            batch = make_batch(self.images, self.intervals, k, self.batch_size, self.generator,
                               labels=self.labels).to(self.device)
            kw = _expand(self.model_kwargs, len(batch))
            t_out = None
            if self.distill_weight > 0:
                with torch.no_grad():
                    x_t = self.noise_scheduler.add_noise(batch.x0, batch.noise, batch.t)  # (B,C,H,W)
                    t_out = as_tensor(self.teacher(x_t, batch.t, **(batch_model_kwargs(batch, kw) or {}))).detach()
            terms = expert_loss(expert, None, batch, self.noise_scheduler, distill_weight=self.distill_weight,
                                teacher_out=t_out, model_kwargs=kw)
            total = total + self.step_frac[k] * terms.total
        self.relaxed_calls += 1
        return total

    # ------------------------------------------------------------------ discrete (held-out)
    def expert_loss(self, k: int, arch: Mapping[str, Any]) -> float:
        """Held-out loss of expert ``k`` at its sub-arch ``arch`` (cached)."""
        if self.heldout is None:
            raise ValueError("no held-out set was given: discrete losses are unavailable")
        key = (k, Arch(arch), self._version(k))
        if key in self._cache:
            return self._cache[key]
        expert = self.experts[k]
        h = self.heldout
        m = int(h.t[k].shape[0])
        acc = 0.0
        with torch.no_grad():
            expert.set_active(key[1])
            for c, s in enumerate(range(0, m, self.eval_batch_size)):
                sl = slice(s, min(m, s + self.eval_batch_size))
                cond = None if h.labels is None else {"class_labels": h.labels[k][sl]}
                batch = LossBatch(h.x0[k][sl], h.noise[k][sl], h.t[k][sl], cond).to(self.device)
                kw = _expand(self.model_kwargs, len(batch))
                t_out = None
                if self.distill_weight > 0:
                    t_out = self._teacher_heldout.get((k, c))
                    if t_out is None:
                        x_t = self.noise_scheduler.add_noise(batch.x0, batch.noise, batch.t)  # (b,C,H,W)
                        t_out = as_tensor(self.teacher(x_t, batch.t, **(batch_model_kwargs(batch, kw) or {}))).detach()
                        self._teacher_heldout[(k, c)] = t_out
                terms = expert_loss(expert, None, batch, self.noise_scheduler, distill_weight=self.distill_weight,
                                    teacher_out=t_out, model_kwargs=kw)
                acc += float(terms.total) * len(batch)
        value = acc / m
        self._cache[key] = value
        self.evaluations += 1
        return value

    def _version(self, k: int) -> int:
        """Changes whenever expert ``k``'s weights are updated in place (joint training)."""
        if not self.joint:
            return 0
        return sum(p._version for p in self.experts[k].parameters())

    def arch_loss(self, arch: Mapping[str, Any]) -> float:
        """Step-weighted held-out mixture loss of a discrete mixture arch."""
        parts = self.mixture.split(arch)
        return float(sum(self.step_frac[k] * self.expert_loss(k, parts[k])
                         for k in range(len(self.experts))))

    def sensitivity(self) -> list[float]:
        """Per interval: held-out loss at the smallest arch minus at the full arch.

        Where this is large, shrinking that expert hurts most; the agent should give it compute.
        """
        out = []
        for k, e in enumerate(self.experts):
            out.append(self.expert_loss(k, e.space.smallest()) - self.expert_loss(k, e.space.full()))
        return out

    def reset(self) -> None:
        """Experts back at their full arch with plain (non-relaxed) masks."""
        for e in self.experts:
            e.reset()
