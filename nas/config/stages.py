"""Config sections of the pipeline stages: search, router, intervals, bench, experts.

Keep field names stable: other modules and user YAML files rely on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, Optional, Union

from nas.config.checks import is_name, require
from nas.methods import all_methods

__all__ = ["BenchConfig", "ExpertsConfig", "IntervalsConfig", "RouterConfig", "SearchConfig"]


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
        enqueue_known: evaluate known points first: the full arch and the widest uniform arch
            within the budget (in constrained mode only those within the budget).
        seed_with_router: also run a second search seeded with the router's allocation
            (``allocations/router-<budget>.json`` evaluated first, and enqueued when ``--with-router``
            writes it during the search), in ``search-seeded/`` with studies
            ``<study_prefix>-seeded-b<budget>``; it writes ``allocations/search_seeded-<budget>.json``
            (the bench method ``search_seeded``). The default search (``allocations/search-*.json``)
            never sees the router's answer, so routed and searched allocations are compared
            independently.
        skip_infeasible: constrained mode: do not evaluate archs over the budget (their MACs are
            known beforehand; they are told to Optuna as pruned, with their constraint value).
            ``null`` (auto): skip with ``tpe`` and ``random`` (TPE learns feasibility from pruned
            trials), evaluate with ``gp`` and ``nsga2`` (they learn only from evaluated trials).
        shrink_infeasible: constrained mode: a skipped arch over the budget is also shrunk to
            the budget (one-choice steps down, each drawn by the MACs it saves, seeded by the study
            and trial number; a timestep spacing is never changed) and
            the shrunk arch is evaluated next (source ``shrunk``), so the search explores the
            feasible region even where the sampler's proposals mostly land outside it (a tight
            budget such as 0.3).
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
    seed_with_router: bool = False
    skip_infeasible: Optional[bool] = None
    shrink_infeasible: bool = True
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
            is_name(self.study_prefix),
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


def _require_registered(methods: tuple[str, ...]) -> None:
    """Every name in ``methods`` is a registered allocation method (plugins loaded first)."""
    known = all_methods()
    # no method at all: the package's entry points are missing (an install older than them)
    choices = ", ".join(known) or ("none registered: no 'diffnas.plugins' entry point found; reinstall diffnas "
                                   "with `pip install -e .`")
    for i, name in enumerate(methods):
        require(name in known, f"methods[{i}]", f"must be a registered allocation method ({choices}), got {name!r}")


@dataclass(frozen=True)
class BenchConfig:
    """The comparison (``diffnas bench``) and the report.

    Fine-tuning uses ``experts.finetune_*`` for every pruned method: each expert of a mixture
    gets ``finetune_steps`` x ``finetune_batch_size`` images; the static model, which serves
    every interval, gets ``num_intervals`` x ``finetune_steps`` steps of the same batch (the same
    total), with the same loss and optimiser (``experts.training.run_training``).

    Attributes:
        budgets: trajectory-MACs budgets, as fractions of the base model's.
        methods: what is compared, by registered allocation-method name (:mod:`nas.methods`;
            plugins add more): ``router`` (allocations/router-<b>.json), ``search``
            (allocations/search-<b>.json), ``uniform`` (every expert at the same width),
            ``static`` (one model pruned with torch-pruning, no intervals), ``base`` (the
            unpruned model) and ``fewer_steps`` (the base model with fewer sampling steps at the
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
        latency_batch_sizes: more batch sizes timed in that same round-robin (every method at
            every size, :func:`nas.latency.compare_latency_batches`), for the report's FID vs
            ms/image fronts (one per size; ``latency_batch_size`` is always timed too, and stays
            the size of a row's ``latency_ms_per_image`` and ``speedup``); ``[]``: none.
        grid_images: images in each method's sample grid.
        finetune_target: what the mixtures' fine-tuning teaches each expert: ``denoise`` (the
            elastic stage's loss: denoising + distillation of the base's prediction) or
            ``trajectory``: every expert, base-served intervals included, learns to make the
            mixture's own DDIM steps land where the base model's reference sampler
            (``schedule.reference_steps``, else ``sampling.num_steps``) lands
            (:mod:`experts.schedule_distill`); needs ``sampling.sampler: ddim``. The
            ``fewer_steps_tuned`` baseline gets the same fine-tuning on the base model.
        finetune_validation_images: a fine-tuned mixture is kept only if it beats its untuned
            experts (the allocation's sub-networks as the router and the search scored them) on
            the FID of this many images sampled from ``finetune_validation_seed`` (noise the bench
            never scores); else the bench scores the untuned mixture, saved beside it as
            ``mixtures/<method>-untuned-<budget>``. Fine-tuning on a mixture's own trajectory can
            make a schedule worse (it can overfit a few large steps); this is model selection on
            held-out noise, as early stopping is. ``0``: every fine-tuned mixture is kept.
        finetune_validation_seed: the seed of the validation images; must not be one of ``seeds``.
        parallel: run the fine-tuning of every pruned model (one Ray task per method and budget)
            and the sampling and scoring of every row (one Ray task per method, budget and seed)
            on the local Ray (``search.num_cpus``/``search.num_gpus``) or the cluster of
            ``search.address``, each task with ``experts.cpus_per_task``/``gpus_per_task``/
            ``max_retries``; every task reads what it needs from the run folder (shared storage
            on a cluster) and the driver writes each row once, with the same numbers as the
            sequential path on the CPU with the same seeds. Latency is still timed in the driver.
    """

    #: Keys that say where the bench runs, not what it measures: they must not change a row's
    #: config key nor a stage's key.
    EXECUTION_KEYS: ClassVar[tuple[str, ...]] = ("parallel",)

    budgets: tuple[float, ...] = (0.3, 0.5, 0.7)
    methods: tuple[str, ...] = ("router", "search", "uniform", "static", "base", "fewer_steps")
    seeds: tuple[int, ...] = (0, 1, 2)
    num_samples: int = 256
    confidence: float = 0.95
    static_importance: Literal["taylor", "magnitude"] = "taylor"
    static_taylor_batches: int = 4
    static_max_iterations: int = 12
    static_tolerance: float = 0.02
    finetune_target: str = "denoise"
    finetune_validation_images: int = 0
    finetune_validation_seed: int = 10_000
    latency_batch_size: int = 16
    latency_repeats: int = 3
    latency_batch_sizes: tuple[int, ...] = (1, 64)
    grid_images: int = 36
    parallel: bool = False

    def __post_init__(self) -> None:
        b = list(self.budgets)
        require(len(b) >= 1, "budgets", "must list at least one budget")
        require(all(0.0 < x < 1.0 for x in b), "budgets", f"must be fractions in (0, 1), got {b}")
        require(len(set(b)) == len(b), "budgets", f"must not repeat a budget, got {b}")
        require(len(self.methods) >= 1 and len(set(self.methods)) == len(self.methods), "methods",
                f"must list methods once each, got {list(self.methods)}")
        _require_registered(self.methods)
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
        sizes = list(self.latency_batch_sizes)
        require(all(s >= 1 for s in sizes) and len(set(sizes)) == len(sizes), "latency_batch_sizes",
                f"must list batch sizes >= 1 once each, got {sizes}")
        require(self.grid_images >= 1, "grid_images", f"must be >= 1, got {self.grid_images}")
        require(self.finetune_target in ("denoise", "trajectory"), "finetune_target",
                f"must be denoise or trajectory, got {self.finetune_target!r}")
        require(self.finetune_validation_images == 0 or self.finetune_validation_images >= 2,
                "finetune_validation_images", f"must be 0 (off) or >= 2, got {self.finetune_validation_images}")
        require(self.finetune_validation_seed >= 0 and self.finetune_validation_seed not in self.seeds,
                "finetune_validation_seed", f"must be >= 0 and not one of seeds {list(self.seeds)} (the validation "
                f"images must be noise the bench does not score), got {self.finetune_validation_seed}")


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
        parallel: train the experts as one Ray task each (on the local Ray, sized by
            ``search.num_cpus``/``search.num_gpus``, or the cluster of ``search.address``)
            instead of one after another in this process; every task trains from and to the
            run folder (shared storage on a cluster) with its own checkpoints, and gives the
            same weights as the sequential path on the CPU with the same seeds.
        cpus_per_task: CPUs per expert task (also its torch threads).
        gpus_per_task: GPUs per expert task (a fraction shares a GPU); ``null``: 1 when the
            cluster has GPUs, else 0.
        max_retries: retries of an expert task whose worker or node dies; the retry resumes
            from the expert's last checkpoint.
        data_parallel_workers: train each expert data-parallel over this many Ray workers (each
            with ``cpus_per_task`` CPUs and ``gpus_per_task`` GPUs; torch.distributed, nccl on
            CUDA, gloo on the CPU), each on its shard of the global ``batch_size`` (a multiple of
            it); 1 (default): one process per expert. The weights equal one worker's within float
            rounding, so it does not change a stage's key.
    """

    #: Keys that say where and how fast the experts train, not what they compute: they leave
    #: the weights unchanged, so they must not change a stage's key.
    EXECUTION_KEYS: ClassVar[tuple[str, ...]] = ("parallel", "cpus_per_task", "gpus_per_task", "max_retries",
                                                 "data_parallel_workers")

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
    parallel: bool = False
    cpus_per_task: float = 1.0
    gpus_per_task: Optional[float] = None
    max_retries: int = 3
    data_parallel_workers: int = 1

    def __post_init__(self) -> None:
        require(self.cpus_per_task > 0, "cpus_per_task", f"must be > 0, got {self.cpus_per_task}")
        g = self.gpus_per_task
        require(g is None or (g >= 0 and (g <= 1 or float(g).is_integer())), "gpus_per_task",
                f"must be a fraction in [0, 1] or a whole number of GPUs, got {g}")
        require(self.max_retries >= 0, "max_retries", f"must be >= 0, got {self.max_retries}")
        require(self.data_parallel_workers >= 1, "data_parallel_workers",
                f"must be >= 1, got {self.data_parallel_workers}")
        require(self.batch_size % self.data_parallel_workers == 0, "data_parallel_workers",
                f"must divide experts.batch_size={self.batch_size} (each worker takes an equal shard of the "
                f"global batch), got {self.data_parallel_workers}")
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
