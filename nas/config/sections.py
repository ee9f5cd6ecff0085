"""Run-wide config sections (data, base model, sampling, evaluation, search space) and
:class:`ExperimentConfig`, which nests them with the pipeline stages of :mod:`nas.config.stages`.

Keep field names stable: other modules and user YAML files rely on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

from nas.config.checks import is_name, require
from nas.config.stages import BenchConfig, ExpertsConfig, IntervalsConfig, RouterConfig, SearchConfig

__all__ = ["ConditionConfig", "DataConfig", "EvalConfig", "ExperimentConfig", "ModelConfig", "SamplingConfig", "ScheduleConfig",
           "SpaceConfig"]

# the placements of experts.schedule.SPACINGS; the config names them without importing the
# experts package (a config loads before any model code)
_SPACINGS = ("leading", "trailing", "uniform", "quadratic")


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
        sampler: ``ddim`` (default), ``ddpm``, ``dpm++`` (DPM-Solver++) or ``euler`` (Euler
            discrete), as in ``nas.sampling.SAMPLERS``.
        num_steps: number of denoising steps of one trajectory.
        batch_size: images per UNet call.
        num_images: images written by ``diffnas sample``.
        seed: seed of the initial noise (and of stochastic samplers).
    """

    sampler: Literal["ddim", "ddpm", "dpm++", "euler"] = "ddim"
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
class ConditionConfig:
    """Conditions of a class-conditional base model (``num_class_embeds``; e.g. ``embedded:digits-class``).

    Ignored for unconditional models. Left at its defaults, the section is not written to
    ``config.yaml`` (and so changes no stage key of an unconditional run).

    Attributes:
        guidance_scale: classifier-free guidance when sampling (1: none, one UNet pass per
            step; > 1: two, as one batched pass of twice the batch).
        dropout: condition dropout when training experts: the fraction of labels replaced by
            the null class, so guidance keeps working after fine-tuning.
        null_class: the class embedding used as "no condition"; ``null`` = the last one.
    """

    guidance_scale: float = 1.0
    dropout: float = 0.1
    null_class: Optional[int] = None

    def __post_init__(self) -> None:
        require(self.guidance_scale >= 1.0 and math.isfinite(self.guidance_scale), "guidance_scale",
                f"must be >= 1 (1: no guidance), got {self.guidance_scale}")
        require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        require(self.null_class is None or self.null_class >= 0, "null_class",
                f"must be >= 0 or null (the last class embedding), got {self.null_class}")


@dataclass(frozen=True)
class ScheduleConfig:
    """Joint allocation of sampling steps and expert sub-networks.

    Budgets stay fractions of the base model's trajectory MACs at ``sampling.num_steps`` with
    ``sampling.sampler``, so fewer steps, static pruning and joint allocations share one scale.

    Attributes:
        joint: search and route the number of steps per interval (and their placement) together
            with the experts' sub-networks; ``false`` keeps ``sampling.num_steps`` uniform steps.
        max_steps: most sampling steps a joint trajectory may use; ``null``: ``sampling.num_steps``.
        counts: per-interval step-count choices; ``null``: ``0 .. max_steps``, clipped by the
            interval's span (the lowest-noise interval needs at least one step).
        spacings: placements of an interval's steps to choose from (``leading``, ``trailing``,
            ``uniform``, ``quadratic``; see ``experts.schedule``).
        proxy: the cheap quality of a joint allocation: ``small_fid`` (FID of ``proxy_images``
            samples against the dataset's reference features) or ``distance`` (mean feature
            distance to the base model's ``reference_steps``-step samples from the same noise).
        proxy_images: images the proxy generates per allocation.
        proxy_seed: seed of the proxy's fixed noise batch.
        reference_steps: steps of the base model's reference trajectory (the proxy's distance).
        base_choice: each interval may be served by the base model itself, unpruned, instead of
            its expert (so the base with fewer or searched steps is a point of the joint space,
            and an expert is used only where it pays for itself).
        refine_evaluations: the router's local search after its candidates: at most this many
            more proxy evaluations of one-move neighbours of its best schedule (a step moved
            between intervals, one interval's spacing changed; see
            :class:`router.schedules.JointSettings`); 0: off.
    """

    joint: bool = False
    max_steps: Optional[int] = None
    counts: Optional[tuple[int, ...]] = None
    spacings: tuple[str, ...] = ("uniform", "quadratic", "trailing", "leading")
    proxy: Literal["small_fid", "distance"] = "small_fid"
    proxy_images: int = 64
    proxy_seed: int = 12345
    reference_steps: int = 50
    base_choice: bool = True
    refine_evaluations: int = 0

    def __post_init__(self) -> None:
        require(self.refine_evaluations >= 0, "refine_evaluations", f"must be >= 0, got {self.refine_evaluations}")
        require(self.max_steps is None or self.max_steps >= 1, "max_steps",
                f"must be >= 1 or null, got {self.max_steps}")
        if self.counts is not None:
            c = list(self.counts)
            require(len(c) >= 1 and all(x >= 0 for x in c) and len(set(c)) == len(c), "counts",
                    f"must list distinct step counts >= 0, got {c}")
            require(any(x >= 1 for x in c), "counts",
                    f"must hold a count >= 1 (the last interval needs a step), got {c}")
        sp = list(self.spacings)
        require(len(sp) >= 1 and len(set(sp)) == len(sp), "spacings", f"must list spacings once each, got {sp}")
        for i, name in enumerate(sp):
            require(name in _SPACINGS, f"spacings[{i}]", f"must be one of {', '.join(_SPACINGS)}, got {name!r}")
        require(self.proxy_images >= 2, "proxy_images", f"must be >= 2, got {self.proxy_images}")
        require(self.proxy_seed >= 0, "proxy_seed", f"must be >= 0, got {self.proxy_seed}")
        require(self.reference_steps >= 1, "reference_steps", f"must be >= 1, got {self.reference_steps}")

    def steps_limit(self, sampling: SamplingConfig) -> int:
        """The most steps of one joint trajectory: ``max_steps``, or ``sampling.num_steps``."""
        return self.max_steps if self.max_steps is not None else sampling.num_steps


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
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    intervals: IntervalsConfig = field(default_factory=IntervalsConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    experts: ExpertsConfig = field(default_factory=ExpertsConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    condition: ConditionConfig = field(default_factory=ConditionConfig)

    def __post_init__(self) -> None:
        require(
            is_name(self.name) and self.name not in (".", ".."),
            "name",
            f"must be a folder name (letters, digits, '.', '_', '-'), got {self.name!r}",
        )
        require(bool(self.run_root), "run_root", "must not be empty")
        require(bool(self.device), "device", "must not be empty")
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        require(self.threads >= 0, "threads", f"must be >= 0 (0: torch's default), got {self.threads}")
        require(self.bench.finetune_target != "trajectory" or self.sampling.sampler == "ddim", "bench.finetune_target",
                f"trajectory fine-tuning follows DDIM steps; sampling.sampler is {self.sampling.sampler!r}: "
                "set sampling.sampler=ddim or bench.finetune_target=denoise")
