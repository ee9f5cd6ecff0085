"""The fixed held-out evaluation set of the interval experts and the proxy loss on it.

- :class:`HeldOutSet` / :func:`make_heldout`: a fixed, seeded evaluation set (clean images,
  noise and timesteps per interval), saved as safetensors so every method is scored on the same
  draws;
- :func:`proxy_loss`: the per-interval held-out denoising loss of a mixture or of one expert
  per interval, with a step-weighted total: the search's cheap fidelity and the experts' table.

The training losses themselves are in :mod:`experts.denoising`.

Example:
    >>> import torch
    >>> from experts.intervals import Intervals
    >>> h = make_heldout(torch.zeros(20, 1, 4, 4), Intervals(100, (50,)), n_per_interval=8, seed=1)
    >>> h.n_per_interval
    8
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from experts.denoising import denoising_loss, interval_timesteps
from experts.intervals import Intervals

__all__ = ["HeldOutSet", "ProxyLoss", "make_heldout", "proxy_loss"]


@dataclass(frozen=True)
class HeldOutSet:
    """Fixed evaluation draws per interval: ``x0[k]`` (n, C, H, W), ``noise[k]``, ``t[k]`` (n,),
    and for a class-conditional model ``labels[k]`` (n,) int64, the class of each drawn image
    (None: unconditional).

    Built once from a seed by :func:`make_heldout`; saved/loaded with safetensors so every
    method (router, search, fine-tuning) is scored on exactly the same draws.
    """

    intervals: Intervals
    x0: tuple[torch.Tensor, ...]
    noise: tuple[torch.Tensor, ...]
    t: tuple[torch.Tensor, ...]
    seed: int = 0
    labels: tuple[torch.Tensor, ...] | None = None

    def __post_init__(self) -> None:
        n = self.intervals.num_intervals
        if not len(self.x0) == len(self.noise) == len(self.t) == n:
            raise ValueError(f"held-out set needs one entry per interval ({n})")
        if self.labels is not None and (len(self.labels) != n or any(
                y.shape[0] != t.shape[0] for y, t in zip(self.labels, self.t))):
            raise ValueError(f"held-out labels need one entry per interval ({n}) and per draw")

    def model_kwargs(self, k: int, sl: slice, device: Any, model_kwargs: Mapping[str, Any] | None = None
                     ) -> dict[str, Any] | None:
        """``model_kwargs`` with the ``class_labels`` of draws ``sl`` of interval ``k`` on top
        (``model_kwargs`` unchanged without labels)."""
        if self.labels is None:
            return None if model_kwargs is None else dict(model_kwargs)
        return {**dict(model_kwargs or {}), "class_labels": self.labels[k][sl].to(device)}

    @property
    def n_per_interval(self) -> int:
        return int(self.t[0].shape[0])

    def to(self, device: str | torch.device) -> "HeldOutSet":
        labels = None if self.labels is None else tuple(y.to(device) for y in self.labels)
        return HeldOutSet(self.intervals, tuple(x.to(device) for x in self.x0),
                          tuple(x.to(device) for x in self.noise), tuple(x.to(device) for x in self.t), self.seed,
                          labels)

    def save(self, path: str | Path) -> None:
        """One safetensors file (the intervals and seed in its metadata)."""
        from safetensors.torch import save_file

        tensors = {}
        for k in range(self.intervals.num_intervals):
            tensors[f"x0.{k}"] = self.x0[k].detach().cpu().contiguous()
            tensors[f"noise.{k}"] = self.noise[k].detach().cpu().contiguous()
            tensors[f"t.{k}"] = self.t[k].detach().cpu().contiguous()
            if self.labels is not None:
                tensors[f"labels.{k}"] = self.labels[k].detach().cpu().long().contiguous()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"intervals": self.intervals.to_json(), "seed": str(self.seed)})
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "HeldOutSet":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            iv = Intervals.from_json(meta["intervals"])
            n = iv.num_intervals
            get = f.get_tensor
            labels = tuple(get(f"labels.{k}") for k in range(n)) if "labels.0" in f.keys() else None
            out = cls(iv, tuple(get(f"x0.{k}") for k in range(n)), tuple(get(f"noise.{k}") for k in range(n)),
                      tuple(get(f"t.{k}") for k in range(n)), int(meta.get("seed", 0)), labels)
        return out.to(device)


def make_heldout(images: torch.Tensor, intervals: Intervals, n_per_interval: int = 256, seed: int = 0,
                 labels: torch.Tensor | None = None) -> HeldOutSet:
    """A seeded held-out set: per interval, ``n`` images (without replacement when possible),
    stratified timesteps over the interval and fresh noise; with ``labels`` ((N,), one class
    per image of a class-conditional model) the drawn images' labels too (the draws are those
    of an unlabelled call).

    Example:
        >>> h = make_heldout(torch.zeros(20, 1, 4, 4), Intervals(100, (50,)), n_per_interval=8, seed=1)
        >>> h.n_per_interval, bool((h.t[1] >= 50).all())
        (8, True)
    """
    if n_per_interval < 1:
        raise ValueError(f"n_per_interval must be >= 1, got {n_per_interval}")
    if labels is not None and labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must have one entry per image: {labels.shape[0]} labels, {images.shape[0]} images")
    g = torch.Generator().manual_seed(int(seed))
    xs, ns, ts, ys = [], [], [], []
    n_img = images.shape[0]
    for k in range(intervals.num_intervals):
        reps = math.ceil(n_per_interval / n_img)
        idx = torch.cat([torch.randperm(n_img, generator=g) for _ in range(reps)])[:n_per_interval]  # (n,)
        x0 = images[idx.to(images.device)].detach().cpu().float()  # (n,C,H,W)
        ts.append(interval_timesteps(intervals, k, n_per_interval, g, stratified=True))
        ns.append(torch.randn(tuple(x0.shape), generator=g))
        xs.append(x0)
        if labels is not None:
            ys.append(labels[idx.to(labels.device)].detach().cpu().long())  # (n,)
    return HeldOutSet(intervals, tuple(xs), tuple(ns), tuple(ts), int(seed), tuple(ys) if labels is not None else None)


@dataclass(frozen=True)
class ProxyLoss:
    """Held-out denoising loss per interval and its weighted total.

    ``total = sum_k weights[k] * per_interval[k]`` with weights summing to 1 (by default the
    share of sampling steps each interval serves, else the share of training timesteps).
    """

    per_interval: tuple[float, ...]
    weights: tuple[float, ...]
    total: float

    def to_dict(self) -> dict[str, Any]:
        return {"per_interval": list(self.per_interval), "weights": list(self.weights), "total": self.total}


def _experts_per_interval(models: Any, n: int) -> list[Any]:
    mixture_experts = getattr(models, "expert_for", None)
    if callable(mixture_experts):  # a MixtureOfExperts
        return [models.expert_for(k) for k in range(n)]
    if isinstance(models, Sequence) and not isinstance(models, torch.nn.Module):
        if len(models) != n:
            raise ValueError(f"got {len(models)} experts for {n} intervals")
        return list(models)
    return [models] * n  # one model for every interval (the base model, a single supernet)


def proxy_loss(
    models: Any,
    archs: Sequence[Any] | None,
    heldout: HeldOutSet,
    noise_scheduler: Any,
    *,
    step_weights: Sequence[float] | None = None,
    batch_size: int = 256,
    model_kwargs: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
) -> ProxyLoss:
    """Held-out denoising loss of each interval's expert at its arch.

    Args:
        models: a :class:`~experts.mixture.MixtureOfExperts` (each interval scored with its own
            expert at the mixture's arch), a sequence of one model per interval, or one model
            used for every interval.
        archs: one arch per interval (or ``None`` entries / ``None`` = leave each expert as it
            is). Given archs are set on supernet experts with ``set_active`` and the previous
            arch is restored afterwards (a relaxed state is not restored: the expert is left at
            the given arch).
        heldout: the fixed draws (:func:`make_heldout`).
        noise_scheduler: for ``add_noise`` and the prediction target.
        step_weights: weight of each interval in ``total`` (e.g. sampling steps per interval,
            ``Intervals.steps_per_interval(timesteps)``); default: interval widths.
        batch_size: held-out samples per model call.
        device: where to run (default: the device of the first expert's parameters).

    Example::

        >>> pl = proxy_loss(experts, allocation.archs, heldout, sched)  # doctest: +SKIP
        >>> pl.per_interval, pl.total  # doctest: +SKIP
    """
    iv = heldout.intervals
    n = iv.num_intervals
    experts = _experts_per_interval(models, n)
    if archs is None and callable(getattr(models, "expert_for", None)):
        archs = list(models.archs)  # a mixture: each expert at the mixture's arch
    if archs is not None and len(archs) != n:
        raise ValueError(f"got {len(archs)} archs for {n} intervals")
    w = _interval_weights(iv, step_weights)
    per: list[float] = []
    for k in range(n):
        model = experts[k]
        arch = archs[k] if archs is not None else None
        dev = device
        if dev is None:
            p = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
            dev = p.device if p is not None else "cpu"
        with _at_arch(model, arch, k):
            per.append(_heldout_mean(model, heldout, k, noise_scheduler, batch_size, model_kwargs, dev))
    total = float(sum(wk * lk for wk, lk in zip(w, per)))
    return ProxyLoss(tuple(per), tuple(w), total)


def _interval_weights(iv: Intervals, step_weights: Sequence[float] | None) -> list[float]:
    """Each interval's weight in the total, summing to 1 (default: the interval widths)."""
    n = iv.num_intervals
    if step_weights is None:
        w = [float(hi - lo) for lo, hi in iv.spans()]
    else:
        if len(step_weights) != n:
            raise ValueError(f"got {len(step_weights)} step weights for {n} intervals")
        w = [float(x) for x in step_weights]
    total_w = sum(w)
    if total_w <= 0:
        raise ValueError("step weights must not all be zero")
    return [x / total_w for x in w]


@contextlib.contextmanager
def _at_arch(model: Any, arch: Any, k: int) -> Iterator[None]:
    """``model`` in eval mode at ``arch`` (None: as it is); its mode and previous arch restored after.

    A supernet runs the arch sliced (only its channels and layers: the arch's MACs; equal to
    the masked pass up to float summation order) and is put back at its previous arch and
    mode (masked or sliced) afterwards.
    """
    restore = None
    supernet = arch is not None and hasattr(model, "set_active")
    if supernet:
        restore = getattr(model, "active", None)
        restore_mode = getattr(model, "mode", "masked")
        if hasattr(model, "sliced"):
            model.set_active(arch, mode="sliced")
        else:
            model.set_active(arch)
    elif arch is not None:
        raise ValueError(f"interval {k}: an arch was given but the expert ({type(model).__name__}) is not a supernet")
    was_training = model.training if isinstance(model, torch.nn.Module) else None
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()
        if supernet:  # a relaxed supernet is left at ``arch``, masked (as before sliced evaluation)
            if restore is not None and restore_mode == "sliced":
                model.set_active(restore, mode="sliced")
            else:
                model.set_active(restore if restore is not None else arch)


def _heldout_mean(model: Any, heldout: HeldOutSet, k: int, noise_scheduler: Any, batch_size: int,
                  model_kwargs: Mapping[str, Any] | None, dev: Any) -> float:
    """Mean denoising loss of ``model`` on interval ``k``'s held-out draws."""
    acc, count = 0.0, 0
    with torch.no_grad():
        m = heldout.t[k].shape[0]
        for s in range(0, m, batch_size):
            sl = slice(s, min(m, s + batch_size))
            x0 = heldout.x0[k][sl].to(dev)
            loss = denoising_loss(model, x0, heldout.t[k][sl].to(dev), heldout.noise[k][sl].to(dev),
                                  noise_scheduler, model_kwargs=heldout.model_kwargs(k, sl, dev, model_kwargs),
                                  reduction="none")  # (b,)
            acc += float(loss.sum())
            count += int(loss.shape[0])
    return acc / count
