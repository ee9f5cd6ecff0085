"""Class conditions and classifier-free guidance for class-conditional denoisers.

A class-conditional ``UNet2DModel`` (``num_class_embeds``) takes ``class_labels`` (B,) with each
call. Classifier-free guidance (Ho & Salimans, 2022) needs one extra label, the *null class*,
that the model is trained on a fraction of the time instead of the true label (condition
dropout, :func:`drop_labels`); at sampling time the prediction is

    eps = eps(x, null) + s * (eps(x, y) - eps(x, null))

with guidance scale ``s`` (``s = 1``: the conditional prediction alone, one UNet pass per step).
:func:`guided_prediction` evaluates both halves as one batched pass of twice the batch, so a
guided step costs two UNet evaluations per image: :func:`guided_unet_calls` and
:class:`TrajectoryMacs` count what a user pays.

Conventions: the null class is ``num_class_embeds - 1`` unless a model states otherwise
(the embedded ``digits-class`` model has 10 digits + 1 null class = 11 embeddings).

Example:
    >>> import torch
    >>> from diffusers import UNet2DModel
    >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8),
    ...                    layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
    ...                    up_block_types=("UpBlock2D",) * 2, add_attention=False, num_class_embeds=11)
    >>> cond = ClassCondition.from_unet(unet)
    >>> cond.num_classes, cond.null_label
    (10, 10)
    >>> labels = torch.tensor([3, 7])
    >>> eps = guided_prediction(unet, torch.zeros(2, 1, 8, 8), torch.tensor(500), labels, 4.0, cond.null_label)
    >>> eps.shape
    torch.Size([2, 1, 8, 8])
    >>> guided_unet_calls(10, 4.0), guided_unet_calls(10, 1.0)
    (20, 10)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from experts.text_condition import as_tensor as _prediction
from experts.text_condition import call_denoiser
from search_spaces.errors import UserError

__all__ = [
    "ClassCondition",
    "ConditionedModel",
    "PromptConditionedModel",
    "TrajectoryMacs",
    "cycle_labels",
    "drop_labels",
    "guided_prediction",
    "guided_unet_calls",
]


@dataclass(frozen=True)
class ClassCondition:
    """The class labels a model takes: ``num_classes`` real classes and the ``null_label``.

    Example:
        >>> ClassCondition(10, 10).check_labels(torch.tensor([0, 9])).tolist()
        [0, 9]
        >>> ClassCondition(10, 10).check_labels(torch.tensor([12]))
        Traceback (most recent call last):
        ...
        search_spaces.errors.UserError: class label 12 is not one of the model's classes (0..10 except the null class 10, kept for guidance); pass classes the model was trained on
    """

    num_classes: int
    null_label: int

    @classmethod
    def from_unet(cls, unet: Any, null_class: int | None = None) -> "ClassCondition | None":
        """The condition of a class-conditional UNet (``config.num_class_embeds``), or of a text
        UNet with a prompt table (:mod:`experts.text_condition`: label ``c`` = prompt ``c``, the
        null label = the empty prompt), or None.

        ``null_class`` overrides the convention that the last embedding is the null class.
        """
        config = getattr(unet, "config", None)
        n = getattr(config, "num_class_embeds", None) if config is not None else None
        if not n:
            from experts.text_condition import prompt_condition

            prompts = prompt_condition(unet)  # a text model: labels name prompts, the empty one is null
            if prompts is None:
                return None
            if null_class is not None and int(null_class) != prompts[1]:
                raise UserError(f"condition.null_class={null_class} is not the empty prompt of this text model "
                                f"(prompt {prompts[1]}); leave condition.null_class unset")
            return cls(num_classes=prompts[0], null_label=prompts[1])
        n = int(n)
        null = n - 1 if null_class is None else int(null_class)
        if not 0 <= null < n:
            raise UserError(f"condition.null_class={null} is outside the model's {n} class embeddings; "
                            f"set it to one of 0..{n - 1} (or leave it unset: the last one)")
        if n < 2:
            raise UserError("a class-conditional model needs at least one class and the null class "
                            f"(num_class_embeds >= 2), got {n}")
        return cls(num_classes=n - 1, null_label=null)

    def check_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """``labels`` as int64, or a UserError naming the first label out of range."""
        labels = torch.as_tensor(labels).long()
        bad = labels[(labels < 0) | (labels > self.num_classes) | (labels == self.null_label)]  # one of the embeddings, not the null one
        if bad.numel():
            raise UserError(f"class label {int(bad[0])} is not one of the model's classes (0..{self.num_classes} "
                            f"except the null class {self.null_label}, kept for guidance); pass classes the model "
                            "was trained on")
        return labels


def cycle_labels(num_images: int, num_classes: int) -> torch.Tensor:
    """Image ``i`` asks for class ``i % num_classes``: every class equally often (N,) int64.

    Example:
        >>> cycle_labels(5, 3).tolist()
        [0, 1, 2, 0, 1]
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return torch.arange(int(num_images), dtype=torch.long) % int(num_classes)


def drop_labels(labels: torch.Tensor, probability: float, generator: torch.Generator | None,
                null_label: int) -> torch.Tensor:
    """Condition dropout: each label becomes ``null_label`` with ``probability`` (drawn on the CPU).

    Draws exactly ``len(labels)`` uniforms from ``generator`` (none when ``probability`` is 0),
    so a training run stays reproducible.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> out = drop_labels(torch.zeros(1000, dtype=torch.long), 0.1, g, 10)
        >>> 50 < int((out == 10).sum()) < 150
        True
    """
    if not 0.0 <= float(probability) <= 1.0:
        raise ValueError(f"condition dropout must be in [0, 1], got {probability}")
    if float(probability) == 0.0:
        return labels
    u = torch.rand(labels.shape, generator=generator)  # (B,) on CPU
    return torch.where(u.to(labels.device) < float(probability), torch.full_like(labels, int(null_label)), labels)


def guided_prediction(model: Callable, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
                      guidance_scale: float, null_label: int, **kwargs: Any) -> torch.Tensor:
    """The model's prediction for ``labels``, with classifier-free guidance when ``guidance_scale != 1``.

    At ``guidance_scale == 1`` one pass with the labels; otherwise one batched pass of ``2B``
    (the null class first, then the labels) combined as ``u + s * (c - u)``. Extra ``kwargs``
    (e.g. ``encoder_hidden_states``) are passed to the model, doubled along the batch.
    """
    labels = labels.to(x.device)
    if float(guidance_scale) == 1.0:
        return _prediction(call_denoiser(model, x, t, class_labels=labels, **kwargs))
    b = x.shape[0]
    null = torch.full_like(labels, int(null_label))
    x2 = torch.cat([x, x])  # (2B,C,H,W)
    t2 = torch.cat([t, t]) if torch.is_tensor(t) and t.ndim == 1 else t
    kw = {k: (torch.cat([v, v]) if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == b else v)
          for k, v in kwargs.items()}
    out = _prediction(call_denoiser(model, x2, t2, class_labels=torch.cat([null, labels]), **kw))  # (2B,C,H,W)
    uncond, cond = out[:b], out[b:]
    return uncond + float(guidance_scale) * (cond - uncond)


class ConditionedModel:
    """``model`` called with fixed per-image ``labels`` (and guidance): what a sampling loop calls
    as ``model(x, t, **kw)`` for one batch.

    ``labels=None`` runs the model on the null class (unconditional samples of a
    class-conditional model).

    Example:
        >>> calls = []
        >>> def net(x, t, class_labels):
        ...     calls.append(class_labels.tolist()); return x
        >>> m = ConditionedModel(net, torch.tensor([1, 2]), guidance_scale=3.0, null_label=10)
        >>> _ = m(torch.zeros(2, 1, 2, 2), torch.tensor(5)); calls
        [[10, 10, 1, 2]]
    """

    def __init__(self, model: Callable, labels: torch.Tensor | None, *, guidance_scale: float = 1.0,
                 null_label: int) -> None:
        if float(guidance_scale) < 1.0 and labels is not None:
            raise UserError(f"guidance_scale must be >= 1 (1: no guidance), got {guidance_scale}")
        self.model = model
        self.labels = labels
        self.guidance_scale = float(guidance_scale)
        self.null_label = int(null_label)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if self.labels is None:
            null = torch.full((x.shape[0],), self.null_label, dtype=torch.long, device=x.device)
            return _prediction(call_denoiser(self.model, x, t, class_labels=null, **kwargs))
        return guided_prediction(self.model, x, t, self.labels, self.guidance_scale, self.null_label, **kwargs)


class PromptConditionedModel:
    """``model`` called with per-image prompt embeddings ``cond`` (B, L, D), guided towards them
    and away from ``uncond`` (the negative prompts', or the empty prompt's) when
    ``guidance_scale != 1``: one batched pass of ``2B`` per step (``uncond`` first), combined
    as ``u + s * (c - u)`` (what diffusers' Stable Diffusion pipelines do).

    Example:
        >>> seen = []
        >>> def net(x, t, encoder_hidden_states):
        ...     seen.append(tuple(encoder_hidden_states.shape)); return x + encoder_hidden_states.mean((1, 2)).view(-1, 1, 1, 1)
        >>> m = PromptConditionedModel(net, torch.ones(2, 3, 4), torch.zeros(2, 3, 4), guidance_scale=2.0)
        >>> m(torch.zeros(2, 1, 2, 2), torch.tensor(5)).flatten().tolist()[:2], seen
        ([2.0, 2.0], [(4, 3, 4)])
    """

    def __init__(self, model: Callable, cond: torch.Tensor, uncond: torch.Tensor | None, *,
                 guidance_scale: float = 1.0) -> None:
        if float(guidance_scale) < 1.0:
            raise UserError(f"guidance_scale must be >= 1 (1: no guidance), got {guidance_scale}")
        if float(guidance_scale) != 1.0 and (uncond is None or uncond.shape != cond.shape):
            raise UserError("guidance needs one unconditional (negative or empty) prompt embedding per image")
        self.model = model
        self.cond = cond  # (B,L,D)
        self.uncond = uncond  # (B,L,D) or None
        self.guidance_scale = float(guidance_scale)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        kwargs.pop("encoder_hidden_states", None)
        b = x.shape[0]
        if self.guidance_scale == 1.0:
            return _prediction(self.model(x, t, encoder_hidden_states=self.cond[:b], **kwargs))
        x2 = torch.cat([x, x])  # (2B,C,H,W)
        t2 = torch.cat([t, t]) if torch.is_tensor(t) and t.ndim == 1 else t
        ctx = torch.cat([self.uncond[:b], self.cond[:b]])  # (2B,L,D)
        out = _prediction(self.model(x2, t2, encoder_hidden_states=ctx, **kwargs))  # (2B,C,H,W)
        uncond, cond = out[:b], out[b:]
        return uncond + self.guidance_scale * (cond - uncond)


def guided_unet_calls(num_steps: int, guidance_scale: float) -> int:
    """UNet evaluations per image of one sampling trajectory: 2 per step when guided, else 1."""
    return int(num_steps) * (2 if float(guidance_scale) != 1.0 else 1)


@dataclass(frozen=True)
class TrajectoryMacs:
    """What one image costs, in MACs, by part: the UNet passes of the trajectory (both halves of
    every guided step), the text encoder (once per prompt; 0 without one) and the VAE decode
    (once; 0 for pixel models).

    Example:
        >>> m = TrajectoryMacs.of([100, 100, 40], guidance_scale=4.0, vae_decode=7)
        >>> m.unet, m.total, m.unet_calls
        (480, 487, 6)
    """

    unet: int
    text_encoder: int
    vae_decode: int
    unet_calls: int
    guidance_scale: float

    @property
    def total(self) -> int:
        return int(self.unet + self.text_encoder + self.vae_decode)

    @classmethod
    def of(cls, per_step_unet_macs: Sequence[int], *, guidance_scale: float = 1.0, text_encoder: int = 0,
           vae_decode: int = 0) -> "TrajectoryMacs":
        """From the MACs of one (unguided, batch 1) UNet call at each step."""
        from search_spaces.macs import trajectory_macs

        factor = 2 if float(guidance_scale) != 1.0 else 1
        unet = factor * trajectory_macs(list(per_step_unet_macs))
        return cls(int(unet), int(text_encoder), int(vae_decode), factor * len(per_step_unet_macs),
                   float(guidance_scale))

    def to_dict(self) -> Mapping[str, Any]:
        return {"unet": self.unet, "text_encoder": self.text_encoder, "vae_decode": self.vae_decode,
                "total": self.total, "unet_calls": self.unet_calls, "guidance_scale": self.guidance_scale}
