"""Experiment configuration: one frozen dataclass per stage, nested in :class:`ExperimentConfig`.

YAML comes in, strictly: an unknown key or a value of the wrong type raises
:class:`~nas.errors.UserError` naming the full dotted key. Values are layered, later wins:

    dataclass defaults < preset (``nas/presets/<name>.yaml``) < config file < ``--set key=value``

The conversion walks the dataclasses' type hints (``int``, ``float``, ``bool``, ``str``,
``Optional[...]``, ``Literal[...]``, ``tuple[T, ...]``, ``tuple[A, B]``, ``dict[str, T]``, nested
dataclasses), so adding a stage is one dataclass plus one field in :class:`ExperimentConfig`.
Range checks live in each dataclass's ``__post_init__`` through :func:`require`, which names the
key; the loader prefixes it with the section path.

Example:
    >>> cfg = load_config(None, ["sampling.num_steps=50", "space.width_fractions=[0.5, 1.0]"])
    >>> cfg.sampling.num_steps, cfg.space.width_fractions
    (50, (0.5, 1.0))
    >>> config_from_dict(config_to_dict(cfg)) == cfg
    True
    >>> load_config(None, ["model.trian_steps=5"])
    Traceback (most recent call last):
    ...
    search_spaces.errors.UserError: unknown config key 'model.trian_steps' (did you mean 'model.train_steps'?)
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import math
import os
import re
import tempfile
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from nas.errors import UserError

__all__ = [
    "BenchConfig",
    "ConfigValueError",
    "DataConfig",
    "EvalConfig",
    "ExperimentConfig",
    "ExpertsConfig",
    "IntervalsConfig",
    "ModelConfig",
    "SamplingConfig",
    "SearchConfig",
    "SpaceConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "config_to_yaml",
    "dump_config",
    "list_presets",
    "load_config",
    "load_preset_dict",
    "require",
]


class ConfigValueError(UserError):
    """A config value that has the right type but breaks a rule; names the (dotted) key.

    Raised by :func:`require` inside a dataclass's ``__post_init__``; the loader re-raises it with
    the full dotted path (``sampling.num_steps``) so the user knows where to look.
    """

    def __init__(self, key: str, detail: str) -> None:
        self.key = key
        self.detail = detail
        super().__init__(f"config key '{key}' {detail}")


def require(condition: bool, key: str, detail: str) -> None:
    """Raise :class:`ConfigValueError` for ``key`` unless ``condition`` holds.

    Example:
        >>> require(3 >= 1, "num_steps", "must be >= 1")
    """
    if not condition:
        raise ConfigValueError(key, detail)


# --------------------------------------------------------------------------------------------
# Stage configs. Keep field names stable: other modules and user YAML files rely on them.
# --------------------------------------------------------------------------------------------

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class DataConfig:
    """Training/reference images.

    Attributes:
        dataset: ``digits`` (scikit-learn's bundled 8x8 digits, resized) or ``folder``.
        path: folder of images (searched recursively) when ``dataset`` is ``folder``.
        image_size: side of the square images, in pixels.
        center_crop: resize the shorter side then crop the centre; ``False`` squashes.
        limit: use only the first ``limit`` images (sorted by path), or all when ``None``.
    """

    dataset: Literal["digits", "folder"] = "digits"
    path: Optional[str] = None
    image_size: int = 16
    center_crop: bool = True
    limit: Optional[int] = None

    def __post_init__(self) -> None:
        require(self.image_size >= 1, "image_size", f"must be >= 1, got {self.image_size}")
        require(self.limit is None or self.limit >= 1, "limit", f"must be >= 1 or null, got {self.limit}")
        require(
            self.dataset != "folder" or bool(self.path),
            "path",
            "is required when data.dataset is 'folder' (set it to a folder of images)",
        )


@dataclass(frozen=True)
class ModelConfig:
    """The pretrained base model, and how the embedded default is built and trained.

    Attributes:
        base: ``embedded:digits`` (trained here once, then reused), a diffusers hub id, or a
            local path to a diffusers model/pipeline folder.
        train_steps, batch_size, learning_rate, checkpoint_every: training of the embedded model.
        block_out_channels, layers_per_block, norm_num_groups, attention: its UNet2DModel shape.
        num_train_timesteps: length of its training noise schedule.
    """

    base: str = "embedded:digits"
    train_steps: int = 2000
    batch_size: int = 64
    learning_rate: float = 2e-3
    checkpoint_every: int = 250
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    num_train_timesteps: int = 1000
    attention: bool = True

    def __post_init__(self) -> None:
        require(bool(self.base), "base", "must not be empty")
        require(self.train_steps >= 0, "train_steps", f"must be >= 0, got {self.train_steps}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(
            self.learning_rate > 0 and math.isfinite(self.learning_rate),
            "learning_rate",
            f"must be a positive number, got {self.learning_rate}",
        )
        require(self.checkpoint_every >= 1, "checkpoint_every", f"must be >= 1, got {self.checkpoint_every}")
        require(self.norm_num_groups >= 1, "norm_num_groups", f"must be >= 1, got {self.norm_num_groups}")
        require(len(self.block_out_channels) >= 1, "block_out_channels", "must list at least one width")
        for c in self.block_out_channels:
            require(
                c >= 1 and c % self.norm_num_groups == 0,
                "block_out_channels",
                f"must be positive multiples of norm_num_groups={self.norm_num_groups}, "
                f"got {list(self.block_out_channels)}",
            )
        require(self.layers_per_block >= 1, "layers_per_block", f"must be >= 1, got {self.layers_per_block}")
        require(
            self.num_train_timesteps >= 2,
            "num_train_timesteps",
            f"must be >= 2, got {self.num_train_timesteps}",
        )


@dataclass(frozen=True)
class SamplingConfig:
    """How images are generated.

    Attributes:
        sampler: ``ddim`` (default), ``ddpm`` or ``dpm++`` (DPM-Solver++), as in ``nas.sampling.SAMPLERS``.
        num_steps: number of denoising steps of one trajectory.
        batch_size: images per UNet call.
        num_images: images written by ``diffnas sample``.
        seed: seed of the initial noise (and of stochastic samplers).
    """

    sampler: Literal["ddim", "ddpm", "dpm++"] = "ddim"
    num_steps: int = 20
    batch_size: int = 64
    num_images: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.num_steps >= 1, "num_steps", f"must be >= 1, got {self.num_steps}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.num_images >= 1, "num_images", f"must be >= 1, got {self.num_images}")
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class EvalConfig:
    """How generated images are scored.

    Attributes:
        num_samples: generated images per seed for FID/KID.
        seeds: one FID/KID per seed (mean and spread are reported when there are several).
        extractor: ``auto`` (digit classifier for ``digits``, Inception otherwise), ``digits``
            or ``inception``.
        inception_weights: local clean-fid Inception file (``inception-2015-12-05.pt``) or the
            folder holding it, for machines without network.
        latency_batch_size, latency_repeats: measured sampling latency per image.
        compare_untrained: also score an untrained model of the same shape (a sanity floor).
    """

    num_samples: int = 500
    seeds: tuple[int, ...] = (0,)
    extractor: Literal["auto", "digits", "inception"] = "auto"
    inception_weights: Optional[str] = None
    latency_batch_size: int = 64
    latency_repeats: int = 5
    compare_untrained: bool = False

    def __post_init__(self) -> None:
        require(self.num_samples >= 2, "num_samples", f"must be >= 2, got {self.num_samples}")
        require(len(self.seeds) >= 1, "seeds", "must list at least one seed")
        require(all(s >= 0 for s in self.seeds), "seeds", f"must be >= 0, got {list(self.seeds)}")
        require(
            self.latency_batch_size >= 1,
            "latency_batch_size",
            f"must be >= 1, got {self.latency_batch_size}",
        )
        require(self.latency_repeats >= 1, "latency_repeats", f"must be >= 1, got {self.latency_repeats}")


@dataclass(frozen=True)
class SpaceConfig:
    """The elastic search space built over the base UNet.

    Attributes:
        width_fractions: allowed fractions of each layer's width, increasing, ending at 1.0.
        depth, heads, ffn: whether layer skipping, attention heads and feed-forward width are
            elastic.
        branch_depth: whether a ResNet may drop its residual branch (width 0, shortcut kept):
            depth for the layers that cannot be removed outright.
        importance: channel importance used to order channels before slicing.
    """

    width_fractions: tuple[float, ...] = (0.125, 0.25, 0.5, 0.75, 1.0)
    depth: bool = True
    heads: bool = True
    ffn: bool = True
    branch_depth: bool = True
    importance: str = "magnitude"

    def __post_init__(self) -> None:
        w = list(self.width_fractions)
        require(len(w) >= 1, "width_fractions", "must list at least one fraction")
        require(
            all(0.0 < x <= 1.0 for x in w) and all(b > a for a, b in zip(w, w[1:])) and w[-1] == 1.0,
            "width_fractions",
            f"must be strictly increasing fractions in (0, 1] ending at 1.0, got {w}",
        )
        require(bool(self.importance), "importance", "must not be empty")


@dataclass(frozen=True)
class SearchConfig:
    """Optuna search of allocations (``diffnas search``), run by Ray Tune or in-process.

    Attributes:
        mode: ``constrained`` (minimise quality subject to trajectory MACs <= budget, one study
            per budget) or ``multi_objective`` (one study over (quality, MACs ratio); the best
            feasible allocation per budget is read off its Pareto front).
        budgets: budgets as fractions of the base model's trajectory MACs.
        sampler: ``tpe`` (default), ``nsga2``, ``gp`` or ``random``.
        n_trials: architectures evaluated per study at the cheap (proxy) fidelity; proposals
            that repeat an evaluated architecture are answered from the stored result and do
            not count.
        promote_top_k: per budget, the best feasible trials (by proxy) that are re-evaluated at
            the expensive fidelity (FID); 0 turns multi-fidelity off.
        seed: sampler seed; ``null`` uses the experiment seed.
        enqueue_known: evaluate known points first (full arch, uniform width at the budget, the
            router's allocation when ``allocations/router-<budget>.json`` exists).
        skip_infeasible: constrained mode: do not evaluate archs over the budget (their MACs are
            known beforehand; they are told to Optuna as pruned, with their constraint value).
            ``null`` (auto): skip with ``tpe`` and ``random`` (TPE learns feasibility from pruned
            trials), evaluate with ``gp`` and ``nsga2`` (they learn only from evaluated trials).
        storage: ``sqlite`` (``search/study.db``), ``journal`` (``search/journal.log``), or an
            Optuna storage URL / file path (``sqlite:///...``, ``postgresql://...``, ``x.log``).
        study_prefix: study names are ``<prefix>-b<budget>`` (``<prefix>-mo`` for multi-objective).
        backend: ``ray`` (Ray Tune, parallel, any cluster) or ``local`` (in-process, sequential).
        address: ``null`` starts a local Ray; ``auto`` or ``host:port`` joins a running cluster.
        num_cpus, num_gpus: size of the local Ray instance (``null``: what the machine has).
        cpus_per_trial: CPUs per trial.
        gpus_per_trial: GPUs per trial, fractions allowed (0.5: two trials share a GPU);
            ``null``: 1 when the cluster has GPUs, else 0.
        max_concurrent_trials: ``null``: as many as the per-trial resources fit in the cluster.
        max_failures: retries of a trial that raises or whose worker dies, before it is failed.
        max_duplicate_proposals: consecutive proposals of already-evaluated archs after which a
            study stops early (the sampler has converged or the space is exhausted).
    """

    mode: Literal["constrained", "multi_objective"] = "constrained"
    budgets: tuple[float, ...] = (0.5,)
    sampler: Literal["tpe", "nsga2", "gp", "random"] = "tpe"
    n_trials: int = 32
    promote_top_k: int = 2
    seed: Optional[int] = None
    enqueue_known: bool = True
    skip_infeasible: Optional[bool] = None
    storage: str = "sqlite"
    study_prefix: str = "search"
    backend: Literal["ray", "local"] = "ray"
    address: Optional[str] = None
    num_cpus: Optional[int] = None
    num_gpus: Optional[float] = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: Optional[float] = None
    max_concurrent_trials: Optional[int] = None
    max_failures: int = 1
    max_duplicate_proposals: int = 100

    def __post_init__(self) -> None:
        b = list(self.budgets)
        require(len(b) >= 1, "budgets", "must list at least one budget")
        require(all(0.0 < x <= 1.0 for x in b), "budgets", f"must be fractions in (0, 1], got {b}")
        require(len(set(b)) == len(b), "budgets", f"must not repeat a budget, got {b}")
        require(self.n_trials >= 1, "n_trials", f"must be >= 1, got {self.n_trials}")
        require(self.promote_top_k >= 0, "promote_top_k", f"must be >= 0, got {self.promote_top_k}")
        require(self.seed is None or self.seed >= 0, "seed", f"must be >= 0 or null, got {self.seed}")
        require(bool(self.storage), "storage", "must not be empty")
        require(
            bool(_NAME_RE.match(self.study_prefix)),
            "study_prefix",
            f"must be letters, digits, '.', '_', '-', got {self.study_prefix!r}",
        )
        require(self.address is None or bool(self.address.strip()), "address", "must be null, 'auto' or host:port")
        require(self.num_cpus is None or self.num_cpus >= 1, "num_cpus", f"must be >= 1 or null, got {self.num_cpus}")
        require(self.num_gpus is None or self.num_gpus >= 0, "num_gpus", f"must be >= 0 or null, got {self.num_gpus}")
        require(self.cpus_per_trial >= 0, "cpus_per_trial", f"must be >= 0, got {self.cpus_per_trial}")
        g = self.gpus_per_trial
        require(
            g is None or (g >= 0 and (g <= 1 or float(g).is_integer())),
            "gpus_per_trial",
            f"must be a fraction in [0, 1] or a whole number of GPUs, got {g}",
        )
        require(
            self.max_concurrent_trials is None or self.max_concurrent_trials >= 1,
            "max_concurrent_trials",
            f"must be >= 1 or null, got {self.max_concurrent_trials}",
        )
        require(self.max_failures >= 0, "max_failures", f"must be >= 0, got {self.max_failures}")
        require(
            self.max_duplicate_proposals >= 1,
            "max_duplicate_proposals",
            f"must be >= 1, got {self.max_duplicate_proposals}",
        )


@dataclass(frozen=True)
class RouterConfig:
    """The Expert Routing Agent (``diffnas route``): one arch per expert under each budget.

    Attributes:
        budgets: budgets as fractions of the base model's trajectory MACs.
        budget_conditioned: one agent trained once for every budget (budget is an input);
            ``false`` trains one agent per budget.
        steps: agent optimiser steps (per agent when not budget-conditioned).
        budgets_per_step: relaxed archs (budgets, for the conditioned agent) per step; each
            costs one relaxed forward/backward of every expert.
        batch_size: training images per expert per relaxed arch.
        learning_rate: Adam rate of the agent's logit table and price (network: x0.01).
        resource_mode: ``lagrangian`` (multiplier by dual ascent + quadratic term on
            ``log r - log p``) or ``log_ratio`` (fixed penalty ``log(max(r,p)/min(r,p))``).
        resource_weight: weight of the resource term, in units of the task loss's mean slope
            per unit of log MACs (measured once before training).
        tau_start, tau_end: Gumbel-softmax temperature schedule.
        hidden_size: GRU width.
        repair_score: how the final repair/fill ranks moves: ``loss`` (held-out loss of each
            candidate, cached per expert) or ``logits`` (the agent's log-probabilities, no
            model evaluations).
        fill, exchange: spend leftover budget after the repair (single upgrades, then
            one-down-one-up exchanges).
        seed: agent seed; ``null`` uses the experiment seed.
    """

    budgets: tuple[float, ...] = (0.3, 0.5, 0.7)
    budget_conditioned: bool = True
    steps: int = 300
    budgets_per_step: int = 2
    batch_size: int = 16
    learning_rate: float = 0.1
    resource_mode: Literal["lagrangian", "log_ratio"] = "lagrangian"
    resource_weight: float = 10.0
    tau_start: float = 5.0
    tau_end: float = 1.0
    hidden_size: int = 64
    repair_score: Literal["loss", "logits"] = "loss"
    fill: bool = True
    exchange: bool = True
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        b = list(self.budgets)
        require(len(b) >= 1, "budgets", "must list at least one budget")
        require(all(0.0 < x <= 1.0 for x in b), "budgets", f"must be fractions in (0, 1], got {b}")
        require(len(set(b)) == len(b), "budgets", f"must not repeat a budget, got {b}")
        require(self.steps >= 0, "steps", f"must be >= 0, got {self.steps}")
        require(self.budgets_per_step >= 1, "budgets_per_step", f"must be >= 1, got {self.budgets_per_step}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        require(self.resource_weight >= 0, "resource_weight", f"must be >= 0, got {self.resource_weight}")
        require(0 < self.tau_end <= self.tau_start, "tau_end", f"must be in (0, tau_start], got {self.tau_end}")
        require(self.hidden_size >= 1, "hidden_size", f"must be >= 1, got {self.hidden_size}")
        require(self.seed is None or self.seed >= 0, "seed", f"must be >= 0 or null, got {self.seed}")


@dataclass(frozen=True)
class IntervalsConfig:
    """Interval discovery (``diffnas intervals``): timestep similarity -> contiguous intervals.

    Cost: ``grid_size * num_batches`` UNet passes of ``batch_size`` images, each with a
    backward pass for ``measure: gradient`` (forward only for ``activation``).

    Attributes:
        grid_size: training timesteps on the grid (bin centres of ``[0, T)``), the matrix side.
        num_batches, batch_size: fixed (seeded) batches of data and noise, reused at every
            timestep; the gradient at each timestep is their mean.
        measure: ``gradient`` (cosine of denoising-loss gradients, the method's measure) or
            ``activation`` (cosine of ``activation_module``'s output).
        aggregate: for ``gradient``: ``per_batch`` (cosine on each batch, averaged: its
            expectation does not change with num_batches) or ``mean`` (cosine of the gradients
            averaged over all batches); see ``experts.similarity``.
        projection_dim: ``auto`` (exact gradients while grid_size x parameters fits in 1 GiB,
            else a 65,536-dim count sketch), ``null`` (always exact) or a count-sketch size.
        activation_module: dotted UNet module name for ``measure: activation``.
        num_intervals: ``auto`` (chosen by ``criterion``) or a fixed number of intervals.
        max_intervals: the largest number ``auto`` considers.
        criterion: ``elbow`` (explained dissimilarity minus ``penalty * (k-1)/(grid_size-1)``)
            or ``ch`` (Calinski-Harabasz); see ``experts.segmentation``.
        penalty: weight of the elbow criterion's per-interval share.
        min_grid_points: the fewest grid timesteps an interval may hold (2: no interval rests on
            a single, possibly noisy, grid timestep).
        seed: seed of the batches (and sketch); ``null`` uses the experiment seed.
    """

    grid_size: int = 20
    num_batches: int = 4
    batch_size: int = 64
    measure: Literal["gradient", "activation"] = "gradient"
    aggregate: Literal["per_batch", "mean"] = "per_batch"
    projection_dim: Union[int, Literal["auto"], None] = "auto"
    activation_module: str = "mid_block"
    num_intervals: Union[int, Literal["auto"]] = "auto"
    max_intervals: int = 6
    criterion: Literal["elbow", "ch"] = "elbow"
    penalty: float = 1.0
    min_grid_points: int = 2
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        require(self.grid_size >= 2, "grid_size", f"must be >= 2, got {self.grid_size}")
        require(
            1 <= self.min_grid_points <= self.grid_size,
            "min_grid_points",
            f"must be in [1, grid_size={self.grid_size}], got {self.min_grid_points}",
        )
        require(self.num_batches >= 1, "num_batches", f"must be >= 1, got {self.num_batches}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(
            self.projection_dim in ("auto", None) or (isinstance(self.projection_dim, int) and self.projection_dim >= 1),
            "projection_dim",
            f"must be 'auto', null or a positive int, got {self.projection_dim!r}",
        )
        require(bool(self.activation_module), "activation_module", "must not be empty")
        require(
            self.num_intervals == "auto"
            or (isinstance(self.num_intervals, int) and 1 <= self.num_intervals <= self.grid_size // self.min_grid_points),
            "num_intervals",
            f"must be 'auto' or an int in [1, grid_size // min_grid_points = {self.grid_size // self.min_grid_points}], "
            f"got {self.num_intervals!r}",
        )
        require(
            1 <= self.max_intervals <= self.grid_size,
            "max_intervals",
            f"must be in [1, grid_size={self.grid_size}], got {self.max_intervals}",
        )
        require(self.penalty >= 0 and math.isfinite(self.penalty), "penalty", f"must be >= 0, got {self.penalty}")
        require(self.seed is None or self.seed >= 0, "seed", f"must be >= 0 or null, got {self.seed}")


@dataclass(frozen=True)
class BenchConfig:
    """The comparison (``diffnas bench``) and the report.

    Fine-tuning uses ``experts.finetune_*`` for every pruned method: each expert of a mixture
    gets ``finetune_steps`` x ``finetune_batch_size`` images; the static model, which serves
    every interval, gets ``num_intervals`` x ``finetune_steps`` steps of the same batch (the same
    total), with the same loss and optimiser (``experts.training.run_training``).

    Attributes:
        budgets: trajectory-MACs budgets, as fractions of the base model's.
        methods: what is compared: ``routed`` (allocations/router-<b>.json), ``searched``
            (allocations/search-<b>.json), ``uniform`` (every expert at the same width),
            ``static`` (one model pruned with torch-pruning, no intervals), ``base`` (the
            unpruned model) and ``base_steps`` (the base model with fewer sampling steps at the
            same trajectory MACs).
        seeds: sampling seeds; FID/KID are reported as mean and t interval over them (>= 3).
        num_samples: generated images per seed.
        confidence: level of the FID/KID intervals.
        static_importance: channel importance of static pruning: ``taylor`` (|w * dL/dw| of
            the denoising loss over timesteps, Diff-Pruning style) or ``magnitude``.
        static_taylor_batches: batches of gradients for Taylor importance.
        static_max_iterations: bisection steps on the pruning ratio to meet the budget.
        static_tolerance: stop when the pruned MACs ratio is within this below the budget.
        latency_batch_size, latency_repeats: latency per image of a whole trajectory, timed
            round-robin with the base model in the same run.
        grid_images: images in each method's sample grid.
    """

    budgets: tuple[float, ...] = (0.3, 0.5, 0.7)
    methods: tuple[Literal["routed", "searched", "uniform", "static", "base", "base_steps"], ...] = (
        "routed", "searched", "uniform", "static", "base", "base_steps")
    seeds: tuple[int, ...] = (0, 1, 2)
    num_samples: int = 256
    confidence: float = 0.95
    static_importance: Literal["taylor", "magnitude"] = "taylor"
    static_taylor_batches: int = 4
    static_max_iterations: int = 12
    static_tolerance: float = 0.02
    latency_batch_size: int = 16
    latency_repeats: int = 3
    grid_images: int = 36

    def __post_init__(self) -> None:
        b = list(self.budgets)
        require(len(b) >= 1, "budgets", "must list at least one budget")
        require(all(0.0 < x < 1.0 for x in b), "budgets", f"must be fractions in (0, 1), got {b}")
        require(len(set(b)) == len(b), "budgets", f"must not repeat a budget, got {b}")
        require(len(self.methods) >= 1 and len(set(self.methods)) == len(self.methods), "methods",
                f"must list methods once each, got {list(self.methods)}")
        require(len(self.seeds) >= 3 and len(set(self.seeds)) == len(self.seeds), "seeds",
                f"must list at least 3 distinct seeds (for a 95% interval), got {list(self.seeds)}")
        require(all(s >= 0 for s in self.seeds), "seeds", f"must be >= 0, got {list(self.seeds)}")
        require(self.num_samples >= 2, "num_samples", f"must be >= 2, got {self.num_samples}")
        require(0.0 < self.confidence < 1.0, "confidence", f"must be in (0, 1), got {self.confidence}")
        require(self.static_taylor_batches >= 1, "static_taylor_batches", f"must be >= 1, got {self.static_taylor_batches}")
        require(1 <= self.static_max_iterations <= 50, "static_max_iterations",
                f"must be in [1, 50], got {self.static_max_iterations}")
        require(0.0 <= self.static_tolerance < 1.0, "static_tolerance", f"must be in [0, 1), got {self.static_tolerance}")
        require(self.latency_batch_size >= 1, "latency_batch_size", f"must be >= 1, got {self.latency_batch_size}")
        require(self.latency_repeats >= 1, "latency_repeats", f"must be >= 1, got {self.latency_repeats}")
        require(self.grid_images >= 1, "grid_images", f"must be >= 1, got {self.grid_images}")


@dataclass(frozen=True)
class ExpertsConfig:
    """Per-interval elastic experts (``diffnas train-experts``) and fine-tuning of the pruned
    experts of an allocation (``diffnas finetune``); see ``experts.training``/``experts.finetune``.

    Attributes:
        train_steps: optimizer steps per expert of the elastic stage.
        batch_size: images per step (every sub-network of a step sees the same batch).
        learning_rate, weight_decay: AdamW of the elastic stage.
        random_archs: random sub-networks per step besides the full and the smallest (the
            sandwich rule).
        distill_weight: weight of the distillation loss (MSE to the frozen pretrained model).
        grad_clip: max gradient norm, or null for none.
        checkpoint_every: steps between resumable checkpoints.
        finetune_steps, finetune_batch_size, finetune_learning_rate: the fixed budget (steps x
            batch per expert) and learning rate of ``diffnas finetune``.
        heldout_fraction: share of the images kept out of training for the held-out
            per-interval loss (the experts' table, fine-tuning before/after, the search's proxy).
        heldout_per_interval: held-out (image, noise, timestep) draws per interval.
    """

    train_steps: int = 400
    batch_size: int = 32
    learning_rate: float = 5e-4
    weight_decay: float = 0.0
    random_archs: int = 2
    distill_weight: float = 1.0
    grad_clip: Optional[float] = 1.0
    checkpoint_every: int = 50
    finetune_steps: int = 200
    finetune_batch_size: int = 32
    finetune_learning_rate: float = 2e-4
    heldout_fraction: float = 0.1
    heldout_per_interval: int = 256

    def __post_init__(self) -> None:
        require(self.train_steps >= 0, "train_steps", f"must be >= 0, got {self.train_steps}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        for key in ("learning_rate", "finetune_learning_rate"):
            v = getattr(self, key)
            require(v > 0 and math.isfinite(v), key, f"must be a positive number, got {v}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(self.random_archs >= 0, "random_archs", f"must be >= 0, got {self.random_archs}")
        require(self.distill_weight >= 0, "distill_weight", f"must be >= 0, got {self.distill_weight}")
        require(self.grad_clip is None or self.grad_clip > 0, "grad_clip", f"must be > 0 or null, got {self.grad_clip}")
        require(self.checkpoint_every >= 1, "checkpoint_every", f"must be >= 1, got {self.checkpoint_every}")
        require(self.finetune_steps >= 0, "finetune_steps", f"must be >= 0, got {self.finetune_steps}")
        require(self.finetune_batch_size >= 1, "finetune_batch_size", f"must be >= 1, got {self.finetune_batch_size}")
        require(0 <= self.heldout_fraction < 1, "heldout_fraction", f"must be in [0, 1), got {self.heldout_fraction}")
        require(self.heldout_per_interval >= 1, "heldout_per_interval", f"must be >= 1, got {self.heldout_per_interval}")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one run needs; the resolved copy is written to ``runs/<name>/config.yaml``.

    Attributes:
        name: run name, the folder under ``run_root``.
        run_root: where run folders live.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        seed: global seed for training and searches.
        threads: torch CPU threads of the command's process (``torch.set_num_threads``); 0
            keeps torch's default (``OMP_NUM_THREADS`` or one per core). On small shared CPUs
            1 is often fastest: a contended 2-thread step was measured ~10x slower. Ray
            trials get ``search.cpus_per_trial`` threads from Ray itself.
    """

    name: str = "default"
    run_root: str = "runs"
    device: str = "auto"
    seed: int = 0
    threads: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    intervals: IntervalsConfig = field(default_factory=IntervalsConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    experts: ExpertsConfig = field(default_factory=ExpertsConfig)
    router: RouterConfig = field(default_factory=RouterConfig)

    def __post_init__(self) -> None:
        require(
            bool(_NAME_RE.match(self.name)) and self.name not in (".", ".."),
            "name",
            f"must be a folder name (letters, digits, '.', '_', '-'), got {self.name!r}",
        )
        require(bool(self.run_root), "run_root", "must not be empty")
        require(bool(self.device), "device", "must not be empty")
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        require(self.threads >= 0, "threads", f"must be >= 0 (0: torch's default), got {self.threads}")


# --------------------------------------------------------------------------------------------
# Strict conversion: plain data (from YAML) -> dataclasses, walking the type hints.
# --------------------------------------------------------------------------------------------

_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _describe(tp: Any) -> str:
    """Human name of a type hint, for error messages ("an int", "a list of floats")."""
    origin = typing.get_origin(tp)
    if tp is int:
        return "an int"
    if tp is float:
        return "a number"
    if tp is bool:
        return "a bool (true/false)"
    if tp is str:
        return "a string"
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any value"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin is Literal:
        return "one of " + ", ".join(_show(c) for c in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            inner = _describe(args[0])
            for article in ("an ", "a "):
                if inner.startswith(article):
                    inner = inner[len(article):]
            return f"a list of {inner}s" if " " not in inner else f"a list of ({inner})"
        return f"a list of {len(args)} items"
    if origin in (dict, Mapping, typing.get_origin(Mapping[str, int])):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _wrong(key: str, tp: Any, value: Any) -> UserError:
    return UserError(f"config key '{key}' must be {_describe(tp)}, got {_show(value)}")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert plain ``value`` to type hint ``tp`` or raise a UserError naming ``key``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        return _build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _wrong(key, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _wrong(key, tp, value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML reads `1e-3` (no dot) as a string: accept plain numeric strings for floats.
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            return float(value)
        raise _wrong(key, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _wrong(key, tp, value)
    if tp is type(None):
        if value is None:
            return None
        raise _wrong(key, tp, value)
    if origin is Literal:
        for choice in typing.get_args(tp):
            if type(choice) is type(value) and choice == value:
                return value
        raise _wrong(key, tp, value)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _wrong(key, tp, value)
        members = [a for a in args if a is not type(None)]
        for arg in members:
            try:
                return _convert(value, arg, key)
            except UserError as err:
                # a problem deeper inside (a nested key, a list item) is the precise message
                if len(members) == 1 and str(err) != str(_wrong(key, arg, value)):
                    raise
        raise _wrong(key, tp, value)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise _wrong(key, tp, value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise UserError(
                f"config key '{key}' must be a list of {len(args)} items, got {len(value)}: {_show(list(value))}"
            )
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        (arg,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise _wrong(key, tp, value)
        return [_convert(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or origin is Mapping or tp is dict:
        args = typing.get_args(tp) or (str, Any)
        if not isinstance(value, Mapping):
            raise _wrong(key, tp, value)
        out = {}
        for k, v in value.items():
            kk = _convert(k, args[0], f"{key} (key {_show(k)})")
            out[kk] = _convert(v, args[1], f"{key}.{k}")
        return out
    raise TypeError(f"config key '{key}': unsupported type hint {tp!r} (extend nas.config._convert)")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, strictly."""
    where = prefix or "the config"
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        if prefix:
            raise UserError(f"config key '{prefix}' must be a mapping of settings, got {_show(data)}")
        raise UserError(f"the config must be a mapping of settings, got {_show(data)}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    dotted = (prefix + ".") if prefix else ""
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        if not isinstance(k, str) or k not in names:
            raise _unknown_key(k, names, dotted, where)
        kwargs[k] = _convert(v, hints[k], dotted + k)
    try:
        return cls(**kwargs)
    except ConfigValueError as err:
        raise UserError(f"config key '{dotted}{err.key}' {err.detail}") from None


def _unknown_key(key: Any, names: Sequence[str], dotted: str, where: str) -> UserError:
    close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
    hint = f" (did you mean '{dotted}{close[0]}'?)" if close else f" (known keys in {where}: {', '.join(names)})"
    return UserError(f"unknown config key '{dotted}{key}'{hint}")


def config_from_dict(data: Mapping[str, Any] | None) -> ExperimentConfig:
    """Build an :class:`ExperimentConfig` from plain data (parsed YAML), strictly.

    Example:
        >>> config_from_dict({"sampling": {"num_steps": 10}}).sampling.num_steps
        10
    """
    return _build(ExperimentConfig, data, "")


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) of a config dataclass; YAML/JSON friendly.

    Example:
        >>> config_to_dict(ExperimentConfig())["sampling"]["sampler"]
        'ddim'
    """
    out = _plain(cfg)
    if not isinstance(out, dict):
        raise TypeError(f"expected a config dataclass, got {type(cfg).__name__}")
    return out


def config_to_yaml(cfg: Any) -> str:
    """The config as YAML text, keys in dataclass order.

    Example:
        >>> "num_steps: 20" in config_to_yaml(ExperimentConfig())
        True
    """
    return yaml.dump(config_to_dict(cfg), Dumper=_ConfigDumper, sort_keys=False, default_flow_style=False)


class _ConfigDumper(yaml.SafeDumper):
    """Sections as blocks, lists of values inline (``block_out_channels: [32, 64, 64]``)."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, (list, dict)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_ConfigDumper.add_representer(list, _represent_list)


def dump_config(cfg: ExperimentConfig, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config as YAML to ``path`` (atomically: temp file then rename).

    Example:
        >>> import tempfile, os
        >>> p = dump_config(ExperimentConfig(), os.path.join(tempfile.mkdtemp(), "config.yaml"))
        >>> load_config(p) == ExperimentConfig()
        True
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = config_to_yaml(cfg)
    fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".yaml", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------------------------
# Loading: presets, files, overrides.
# --------------------------------------------------------------------------------------------


def list_presets() -> list[str]:
    """Names of the presets shipped in ``nas/presets``.

    Example:
        >>> "demo" in list_presets()
        True
    """
    folder = importlib.resources.files("nas") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"cannot parse {source}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{source} must hold a mapping of settings at the top level, got {_show(data)}")
    return data


def load_preset_dict(name: str) -> dict[str, Any]:
    """The raw settings of preset ``name`` (a plain dict), or a UserError listing the presets."""
    names = list_presets()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown preset '{name}'{hint}; available presets: {', '.join(names)}")
    text = (importlib.resources.files("nas") / "presets" / f"{name}.yaml").read_text(encoding="utf-8")
    return _parse_yaml(text, f"preset '{name}'")


def _load_file_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise UserError(f"config file '{p}' does not exist (check the --config path)")
    if not p.is_file():
        raise UserError(f"config path '{p}' is not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read config file '{p}': {err}") from None
    return _parse_yaml(text, f"config file '{p}'")


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            here = ".".join(parts[: i + 1])
            raise UserError(f"cannot set '{dotted}': config key '{here}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise UserError(f"--set expects key=value (e.g. sampling.num_steps=50), got {text!r}")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"--set expects key=value with a dotted key (e.g. sampling.num_steps=50), got {text!r}")
    if raw.strip() == "":
        return key, ""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise UserError(f"cannot parse the value in --set {text!r} (quote strings, use [a, b] for lists)") from None
    return key, value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides (values parsed as YAML) to plain config data.

    Example:
        >>> apply_overrides({}, ["sampling.num_steps=50", "name=x"])
        {'sampling': {'num_steps': 50}, 'name': 'x'}
    """
    out = _merge({}, data)
    for text in overrides:
        key, value = _parse_override(text)
        _set_dotted(out, key, value)
    return out


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    preset: str | None = None,
) -> ExperimentConfig:
    """Resolve a config: defaults < ``preset`` < YAML file at ``path`` < ``overrides``.

    Args:
        path: YAML file, or ``None``.
        overrides: ``key=value`` strings; values are parsed as YAML (``[0.5, 1.0]``, ``true``).
        preset: name of a preset in ``nas/presets`` (see :func:`list_presets`), or ``None``.

    Raises:
        UserError: missing/unparsable file, unknown key, wrong type or value; the message
            names the dotted key.

    Example:
        >>> load_config(preset="demo", overrides=["seed=3"]).seed
        3
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    data: dict[str, Any] = {}
    if preset:
        data = _merge(data, load_preset_dict(preset))
    if path is not None:
        data = _merge(data, _load_file_dict(path))
    data = apply_overrides(data, overrides)
    return config_from_dict(data)
