"""Baselines without intervals: static structural pruning, fewer sampling steps, uniform width.

Static pruning (Diff-Pruning style, Fang et al. 2023): *one* model serves every timestep, its
channels pruned with torch-pruning's ``MetaPruner`` and a Taylor importance (``|w * dL/dw|``,
gradients of the denoising loss accumulated over batches at timesteps drawn over the whole
schedule) or a magnitude importance (L2 norm of the weights). The pruning ratio is found by a
bounded search so that the pruned model's fvcore MACs (:func:`search_spaces.macs.count_unet_macs`,
attention included) meet the budget: the largest MACs at or under ``budget_ratio x`` the base
model's, stopping once within ``tolerance`` of it. Every layer is pruned by the same ratio
(Diff-Pruning's setting) unless that cannot come close to the budget: on narrow models GroupNorm
groups of 2 channels make the MACs jump (measured on the demo model: 0.49 then 0.89 of the base
MACs, nothing between), and then global channel ranking is tried as well (0.54 to 0.95 in steps
of ~0.05 there) and the better feasible model kept; the mode used is recorded.
Since every sampling step uses the same network, a per-call MACs ratio ``r`` is also the
trajectory MACs ratio.

diffusers quirks handled (see the project's DESIGN notes): attention ``to_q``/``to_k``/``to_v``
are pruned per head (``num_heads``), so the head count stays and each head loses the same dims;
``Downsample2D``/``Upsample2D``, ``ResnetBlock2D`` and ``Attention`` bookkeeping attributes are
copied from the pruned shapes; the output convolution is never pruned (nor the input
convolution's input, which the graph does not own).

Saved format (:func:`save_pruned`, :func:`load_pruned`): a folder with the diffusers
``config.json`` of the *unpruned* architecture plus a ``diffnas_pruned`` entry recording every
parameter shape and bookkeeping attribute that pruning changed, and the weights in
``diffusion_pytorch_model.safetensors``. ``load_pruned(folder)`` is the one call that loads it:
it builds the unpruned skeleton (on the meta device), resizes the recorded parameters, sets the
recorded attributes and loads the safetensors weights strictly; nothing is unpickled. A plain
``UNet2DModel.from_pretrained`` cannot load it, because torch-pruning's per-layer channel counts
(and head dims) are not expressible in a diffusers config.

Also here: :func:`fewer_steps_for_budget` (the base model with fewer sampling steps at the same
trajectory MACs) and :func:`uniform_fraction_arch` (every expert at the same width, the largest
fraction meeting the budget).

Example:
    >>> import torch
    >>> from diffusers import UNet2DModel
    >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
    ...     layers_per_block=1, norm_num_groups=4, add_attention=False,
    ...     down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    >>> res = prune_to_budget(unet, 0.5, importance="magnitude", max_iterations=4)
    >>> res.macs <= 0.5 * res.base_macs
    True
    >>> fewer_steps_for_budget(20, 0.3)
    6
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search_spaces.errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "PRUNED_KEY",
    "StaticPruneResult",
    "fewer_steps_for_budget",
    "is_pruned_folder",
    "load_pruned",
    "prune_once",
    "prune_to_budget",
    "save_pruned",
    "taylor_gradients",
    "uniform_fraction_arch",
]

#: Key of the pruning record inside ``config.json``.
PRUNED_KEY = "diffnas_pruned"
_FORMAT = 1
# bookkeeping attributes of torch / diffusers modules that follow the pruned shapes
_ATTRS = ("in_channels", "out_channels", "in_features", "out_features", "num_channels", "num_groups",
          "normalized_shape", "heads", "inner_dim", "query_dim", "out_dim", "channels", "inner_kv_dim")
_WEIGHTS = "diffusion_pytorch_model.safetensors"
_MAX_PRUNING_RATIO = 0.95


@dataclass(frozen=True)
class StaticPruneResult:
    """A statically pruned model and how it was obtained.

    Attributes:
        model: the pruned diffusers UNet (eval mode).
        macs: fvcore MACs of one call at batch 1 (attention included).
        base_macs: the same for the unpruned model.
        pruning_ratio: torch-pruning's per-layer channel ratio that gave ``model``.
        importance: ``taylor`` or ``magnitude``.
        tries: every ratio tried, in order, with the MACs ratio it gave.
        wall_s: seconds spent (gradients, pruning, counting).
    """

    model: nn.Module
    macs: int
    base_macs: int
    budget_ratio: float
    pruning_ratio: float
    importance: str
    tries: tuple[tuple[float, float], ...] = ()
    wall_s: float = 0.0
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def macs_ratio(self) -> float:
        """MACs of the pruned model / MACs of the base model."""
        return self.macs / self.base_macs

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (no weights)."""
        return {
            "budget_ratio": self.budget_ratio, "macs": self.macs, "base_macs": self.base_macs,
            "macs_ratio": self.macs_ratio, "pruning_ratio": self.pruning_ratio, "importance": self.importance,
            "tries": [list(t) for t in self.tries], "wall_s": self.wall_s,
            "params": int(sum(p.numel() for p in self.model.parameters())), **self.info,
        }


# --------------------------------------------------------------------------------------------
# pruning


def _example_inputs(unet: nn.Module) -> dict[str, Any]:
    from search_spaces.macs import unet_example_inputs

    kw = unet_example_inputs(unet, batch_size=1)
    g = torch.Generator().manual_seed(0)
    kw["sample"] = torch.randn(tuple(kw["sample"].shape), generator=g).to(kw["sample"])  # (1,C,H,W)
    return kw


def _attention_heads(model: nn.Module) -> dict[nn.Module, int]:
    """``{q/k/v Linear: heads}`` for every diffusers ``Attention`` (self- and cross-attention)."""
    from diffusers.models.attention_processor import Attention

    heads: dict[nn.Module, int] = {}
    for m in model.modules():
        if isinstance(m, Attention):
            for lin in (m.to_q, m.to_k, m.to_v):
                if isinstance(lin, nn.Linear):
                    heads[lin] = int(m.heads)
    return heads


def _ignored_layers(model: nn.Module) -> list[nn.Module]:
    """Layers torch-pruning must leave alone: the output convolution (its channels are the image's)."""
    out = [model.conv_out]
    for name in ("class_embedding", "encoder_hid_proj", "add_embedding"):
        m = getattr(model, name, None)
        if isinstance(m, nn.Module):
            out.append(m)
    return out


def _sync_attributes(model: nn.Module) -> None:
    """Copy pruned shapes into the bookkeeping attributes diffusers reads at run time."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D

    for m in model.modules():
        if isinstance(m, (Downsample2D, Upsample2D)):
            conv = getattr(m, "conv", None)
            if isinstance(conv, nn.Conv2d):
                m.channels = conv.in_channels
                m.out_channels = conv.out_channels
            elif isinstance(conv, nn.ConvTranspose2d):  # pragma: no cover - transposed upsample
                m.channels = conv.in_channels
                m.out_channels = conv.out_channels
        elif isinstance(m, ResnetBlock2D):
            m.in_channels = m.conv1.in_channels
            m.out_channels = m.conv2.out_channels
        elif isinstance(m, Attention):
            m.inner_dim = m.to_q.out_features
            m.query_dim = m.to_q.in_features
            if hasattr(m, "inner_kv_dim"):
                m.inner_kv_dim = m.to_k.out_features
            out = m.to_out[0] if isinstance(m.to_out, nn.ModuleList) else None
            if isinstance(out, nn.Linear):
                m.out_dim = out.out_features


def prune_once(
    unet: nn.Module,
    pruning_ratio: float,
    *,
    importance: str = "magnitude",
    gradients: Mapping[str, torch.Tensor] | None = None,
    global_pruning: bool = False,
) -> nn.Module:
    """A pruned deep copy of ``unet`` at torch-pruning's channel ``pruning_ratio`` (0 = none).

    Args:
        importance: ``magnitude`` (L2 of weights) or ``taylor`` (needs ``gradients``: parameter
            name -> accumulated gradient, from :func:`taylor_gradients`).
        global_pruning: rank channels across all layers (per-layer ratios differ, at most 0.9)
            instead of pruning every layer by ``pruning_ratio``.
    """
    import torch_pruning as tp

    if not 0.0 <= pruning_ratio < 1.0:
        raise ValueError(f"pruning_ratio must be in [0, 1), got {pruning_ratio}")
    model = copy.deepcopy(unet).eval()
    if pruning_ratio == 0.0:
        return model
    # torch-pruning traces the autograd graph: parameters must require grad (a loaded, frozen
    # model would otherwise give an empty dependency graph and prune nothing)
    model.requires_grad_(True)
    if importance == "taylor":
        if gradients is None:
            raise ValueError("taylor importance needs gradients (see taylor_gradients)")
        for name, p in model.named_parameters():
            g = gradients.get(name)
            p.grad = None if g is None else g.detach().clone().to(p)
        imp = tp.importance.TaylorImportance()
    elif importance == "magnitude":
        imp = tp.importance.MagnitudeImportance(p=2)
    else:
        raise ValueError(f"importance must be 'taylor' or 'magnitude', got {importance!r}")
    with torch.enable_grad():
        pruner = tp.pruner.MetaPruner(
            model, _example_inputs(model), importance=imp, pruning_ratio=float(pruning_ratio),
            num_heads=_attention_heads(model), ignored_layers=_ignored_layers(model),
            global_pruning=bool(global_pruning), max_pruning_ratio=0.9 if global_pruning else 1.0,
        )
        pruner.step()
    model.zero_grad(set_to_none=True)
    _sync_attributes(model)
    return model.eval()


def taylor_gradients(
    unet: nn.Module,
    images: torch.Tensor,
    scheduler_config: Mapping[str, Any],
    *,
    num_batches: int = 4,
    batch_size: int = 32,
    seed: int = 0,
    unet_kwargs: Callable[[int], dict] | None = None,
) -> dict[str, torch.Tensor]:
    """Denoising-loss gradients accumulated over ``num_batches`` seeded batches, timesteps drawn
    uniformly over the whole schedule (Diff-Pruning's Taylor importance uses ``|w * grad|``).

    Args:
        images: training samples (N, C, H, W) in the UNet's input space (latents for LDMs).
        unet_kwargs: ``batch_size -> extra kwargs`` (context of conditional UNets), or None.
    """
    from experts.intervals import Intervals
    from experts.losses import denoising_loss, make_batch, training_scheduler

    sched = training_scheduler(scheduler_config)
    whole = Intervals(int(sched.config.num_train_timesteps), ())
    model = copy.deepcopy(unet).train().requires_grad_(True)  # the caller's model may be frozen
    device = next(model.parameters()).device
    model.zero_grad(set_to_none=True)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.enable_grad():
        for _ in range(int(num_batches)):
            batch = make_batch(images, whole, 0, int(batch_size), gen).to(device)
            kw = unet_kwargs(len(batch)) if unet_kwargs is not None else None
            loss = denoising_loss(model, batch.x0, batch.t, batch.noise, sched, model_kwargs=kw)
            loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _ratio_search(
    attempt: Callable[[float], tuple[nn.Module, int]],
    budget_ratio: float,
    base_macs: int,
    max_iterations: int,
    tolerance: float,
) -> tuple[float, nn.Module, int] | None:
    """Best feasible ``(ratio, model, macs)`` (largest MACs <= budget) in at most ``max_iterations``
    calls of ``attempt``, or None.

    torch-pruning's MACs are not monotone in the ratio on small models, so: a coarse scan ordered
    from the analytic guess ``1 - sqrt(budget)`` outwards, then bisection between the best
    feasible ratio and the largest infeasible ratio below it.
    """
    limit = budget_ratio * base_macs
    guess = min(max(1.0 - math.sqrt(budget_ratio), 0.01), _MAX_PRUNING_RATIO)  # MACs ~ (1 - ratio)^2
    n_scan = max(2, int(max_iterations) // 2)
    grid = [round(_MAX_PRUNING_RATIO * (i + 1) / n_scan, 6) for i in range(n_scan)]
    grid = sorted({guess, *grid}, key=lambda r: (abs(r - guess), r))
    best: tuple[float, nn.Module, int] | None = None
    infeasible: list[float] = []
    calls = 0

    def close_enough() -> bool:
        return best is not None and best[2] >= limit - tolerance * base_macs

    for ratio in grid:
        if calls >= max_iterations or close_enough():
            break
        model, macs = attempt(ratio)
        calls += 1
        if macs <= limit:
            if best is None or macs > best[2]:
                best = (ratio, model, macs)
        else:
            infeasible.append(ratio)
    if best is None:
        return None
    hi = best[0]
    lo = max([r for r in infeasible if r < hi], default=0.0)
    while calls < max_iterations and not close_enough() and hi - lo > 1e-3:
        ratio = (lo + hi) / 2.0
        model, macs = attempt(ratio)
        calls += 1
        if macs <= limit:
            hi = ratio
            if macs > best[2]:
                best = (ratio, model, macs)
        else:
            lo = ratio
    return best


def prune_to_budget(
    unet: nn.Module,
    budget_ratio: float,
    *,
    importance: str = "taylor",
    images: torch.Tensor | None = None,
    scheduler_config: Mapping[str, Any] | None = None,
    taylor_batches: int = 4,
    batch_size: int = 32,
    max_iterations: int = 12,
    tolerance: float = 0.02,
    seed: int = 0,
    unet_kwargs: Callable[[int], dict] | None = None,
    gradients: Mapping[str, torch.Tensor] | None = None,
) -> StaticPruneResult:
    """Prune ``unet`` (a copy) so that its fvcore MACs are at most ``budget_ratio`` of the base's.

    Searches torch-pruning's channel ratio (a coarse scan from the analytic guess
    ``1 - sqrt(budget)`` outwards, then bisection), at most ``max_iterations`` prunings with every
    layer at the same ratio and, if that does not come within ``tolerance`` below the budget, as
    many with global channel ranking; returns the feasible model with the largest MACs seen.

    ``gradients`` (from :func:`taylor_gradients`) may be passed to prune several budgets with the
    same Taylor importance; otherwise they are computed here from ``images``.

    Raises:
        UserError: the budget is out of (0, 1], or not reachable even at the largest ratio.
    """
    from search_spaces.macs import count_unet_macs

    if not 0.0 < budget_ratio <= 1.0:
        raise UserError(f"budget_ratio must be in (0, 1], got {budget_ratio}")
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
    t0 = time.perf_counter()
    base_macs = int(count_unet_macs(unet))
    limit = budget_ratio * base_macs
    grads = gradients
    if importance == "taylor" and grads is None:
        if images is None or scheduler_config is None:
            raise ValueError("taylor importance needs images and scheduler_config (or precomputed gradients)")
        grads = taylor_gradients(unet, images, scheduler_config, num_batches=taylor_batches,
                                 batch_size=batch_size, seed=seed, unet_kwargs=unet_kwargs)
    tries: list[tuple[float, float]] = []
    all_tries: list[tuple[str, float, float]] = []

    def attempt(ratio: float, global_pruning: bool) -> tuple[nn.Module, int]:
        model = prune_once(unet, ratio, importance=importance, gradients=grads, global_pruning=global_pruning)
        macs = int(count_unet_macs(model))
        all_tries.append(("global" if global_pruning else "local", round(float(ratio), 6), macs / base_macs))
        log.debug("pruning ratio %.4f (%s) -> MACs ratio %.4f", ratio, all_tries[-1][0], macs / base_macs)
        return model, macs

    mode = "local"
    if budget_ratio >= 1.0:
        model, macs = attempt(0.0, False)
        best = (0.0, model, macs)
    else:
        # every layer pruned by the same ratio first (Diff-Pruning's setting); on narrow models
        # GroupNorm groups make its MACs jump (a 2-channel group loses half or nothing), so if that
        # does not come within ``tolerance`` of the budget, global ranking (per-layer ratios
        # differ) is tried with the same number of prunings and the better feasible model kept
        best = _ratio_search(lambda r: attempt(r, False), budget_ratio, base_macs, max_iterations, tolerance)
        if best is None or best[2] < limit - tolerance * base_macs:
            other = _ratio_search(lambda r: attempt(r, True), budget_ratio, base_macs, max_iterations, tolerance)
            if other is not None and (best is None or other[2] > best[2]):
                best, mode = other, "global"
        if best is None:
            raise UserError(
                f"static pruning cannot reach {budget_ratio:g} of the base MACs: pruning ratios up to "
                f"{_MAX_PRUNING_RATIO} give at least {min(t[2] for t in all_tries):.3f}; raise the budget"
            )
    tries = [(r, m) for _, r, m in all_tries]
    ratio, model, macs = best
    result = StaticPruneResult(
        model=model.eval(), macs=int(macs), base_macs=base_macs, budget_ratio=float(budget_ratio),
        pruning_ratio=float(ratio), importance=importance, tries=tuple(tries),
        wall_s=time.perf_counter() - t0,
        info={"taylor_batches": taylor_batches if importance == "taylor" else 0, "tolerance": tolerance,
              "max_iterations": max_iterations, "mode": mode, "tries_by_mode": [list(t) for t in all_tries]},
    )
    log.info("static pruning (%s, %s) at budget %g: ratio %.3f -> %.3f of the base MACs after %d prunings (%.1f s)",
             importance, mode, budget_ratio, ratio, result.macs_ratio, len(tries), result.wall_s)
    return result


# --------------------------------------------------------------------------------------------
# save / load


def _shape_record(model: nn.Module, skeleton: nn.Module) -> dict[str, Any]:
    """What differs between the pruned ``model`` and the unpruned ``skeleton``: tensor shapes
    (parameters and buffers) and bookkeeping attributes."""
    ref_shapes = {k: list(v.shape) for k, v in skeleton.state_dict().items()}
    shapes = {}
    for k, v in model.state_dict().items():
        if k not in ref_shapes:
            raise ValueError(f"pruned model has a tensor {k!r} the architecture does not have")
        if list(v.shape) != ref_shapes[k]:
            shapes[k] = list(v.shape)
    ref_modules = dict(skeleton.named_modules())
    attrs: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        ref = ref_modules.get(name)
        if ref is None:
            raise ValueError(f"pruned model has a module {name!r} the architecture does not have")
        mine, theirs = vars(m), vars(ref)  # plain attributes only (not diffusers' config lookups)
        for a in _ATTRS:
            if a not in mine or a not in theirs:
                continue
            v, r = mine[a], theirs[a]
            if isinstance(v, bool) or not isinstance(v, (int, tuple)):
                continue
            if v != r:
                attrs.setdefault(name, {})[a] = list(v) if isinstance(v, tuple) else int(v)
    return {"format": _FORMAT, "shapes": shapes, "attributes": attrs}


def _skeleton(cls: type, config: Mapping[str, Any]) -> nn.Module:
    """The unpruned architecture with uninitialised storage (built on the meta device)."""
    with torch.device("meta"):
        model = cls.from_config(dict(config))
    return model.to_empty(device="cpu")


def _unet_class(name: str) -> type:
    from diffusers import UNet2DConditionModel, UNet2DModel

    classes = {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel}
    if name not in classes:
        raise UserError(f"unsupported model class {name!r}; expected one of {sorted(classes)}")
    return classes[name]


def save_pruned(model: nn.Module, path: str | Path, info: Mapping[str, Any] | None = None) -> Path:
    """Save a pruned UNet: ``config.json`` (unpruned architecture + ``diffnas_pruned`` record)
    and ``diffusion_pytorch_model.safetensors``. Load it with :func:`load_pruned`.

    The folder is written beside the target and renamed into place, so an interrupted save never
    leaves a half-written model under the final name.
    """
    import shutil

    from safetensors.torch import save_file

    path = Path(path)
    config = {k: v for k, v in dict(model.config).items() if k not in (PRUNED_KEY, "_name_or_path")}
    cls = _unet_class(str(config.get("_class_name", type(model).__name__)))
    record = _shape_record(model, _skeleton(cls, config))
    record["info"] = dict(info or {})
    config = {**config, "_class_name": cls.__name__, PRUNED_KEY: record}
    tmp = path.with_name(path.name + ".saving")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / _WEIGHTS), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=_json_default))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to config.json")


def is_pruned_folder(path: str | Path) -> bool:
    """True if ``path`` holds a model written by :func:`save_pruned`."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return PRUNED_KEY in json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError):
        return False


def _set_tensor(model: nn.Module, name: str, shape: list[int]) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    old = getattr(owner, leaf)
    new = torch.empty(tuple(shape), dtype=old.dtype, device=old.device)
    if isinstance(old, nn.Parameter):
        setattr(owner, leaf, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        owner.register_buffer(leaf, new, persistent=True)


def load_pruned(path: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """Load a folder written by :func:`save_pruned` (one call; safetensors only, strict).

    Example::

        >>> model = load_pruned("runs/demo/mixtures/static-0.5/model")  # doctest: +SKIP
    """
    from safetensors.torch import load_file

    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise UserError(f"{path} is not a saved model folder (no config.json)")
    config = json.loads(cfg_file.read_text())
    record = config.pop(PRUNED_KEY, None)
    if record is None:
        raise UserError(f"{path} was not saved by save_pruned (no {PRUNED_KEY!r} in config.json)")
    if int(record.get("format", 0)) > _FORMAT:
        raise UserError(f"{path}: pruned-model format {record.get('format')} is newer than this version reads")
    weights = path / _WEIGHTS
    if not weights.is_file():
        raise UserError(f"{path}: missing {_WEIGHTS}")
    cls = _unet_class(str(config.get("_class_name", "UNet2DModel")))
    model = _skeleton(cls, config)
    for name, shape in record.get("shapes", {}).items():
        _set_tensor(model, name, shape)
    for mod_name, attrs in record.get("attributes", {}).items():
        m = model.get_submodule(mod_name) if mod_name else model
        for a, v in attrs.items():
            setattr(m, a, tuple(v) if isinstance(v, list) else v)
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{path}: weights do not match the recorded shapes (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    model.register_to_config(**{PRUNED_KEY: record})
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------
# the other budget baselines


def fewer_steps_for_budget(num_steps: int, budget_ratio: float) -> int:
    """Sampling steps of the base model whose trajectory MACs meet ``budget_ratio`` of
    ``num_steps`` steps: ``floor(budget_ratio * num_steps)``, at least 1.

    Example:
        >>> fewer_steps_for_budget(20, 0.5), fewer_steps_for_budget(4, 0.1)
        (10, 1)
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return max(1, int(math.floor(budget_ratio * num_steps + 1e-9)))


def uniform_fraction_arch(space: Any, budget_ratio: float) -> tuple[Any, float] | None:
    """``(arch, f)``: the widest uniform arch within the budget and its width fraction
    (:func:`search_spaces.uniform.uniform_arch`, the one uniform rule), or None if none fits."""
    from search_spaces.uniform import uniform_arch

    found = uniform_arch(space, budget_ratio)
    return (found.arch, found.fraction) if found is not None else None
