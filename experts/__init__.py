"""Interval experts: interval discovery, per-interval elastic fine-tuning, the mixture.

- intervals and allocations: :class:`Intervals`, :class:`Allocation`, :class:`MixtureSpace`
  (the mixture's search space and its arch <-> allocation conversion; :meth:`MixtureSpace.joint`
  searches the sampling steps too);
- sampling steps: :class:`StepSchedule` (steps per interval and their placement),
  :mod:`experts.steps_space` (steps as search-space dimensions), :class:`ExplicitDDIMScheduler`
  (DDIM on any timestep list), :mod:`experts.sampling_loop` (the seeded denoising loop shared by
  ``nas.sampling.generate`` and the pipeline), :class:`TrajectoryProxy` (small-sample FID of a candidate);
- class conditions: :mod:`experts.guidance` (:class:`ClassCondition`, condition dropout,
  classifier-free guidance as one batched pass, :class:`TrajectoryMacs` by part);
- text conditions: :mod:`experts.text_condition` (prompt tables in the UNet's config;
  :func:`call_denoiser`, how diffnas calls every denoiser so labels name prompts of text models);
- interval discovery: :mod:`experts.similarity` (timestep similarity), :mod:`experts.segmentation`
  (optimal contiguous segments), :mod:`experts.discovery` (:func:`discover_intervals`);
- training: :mod:`experts.denoising` (the losses), :mod:`experts.train_loop` (the sandwich-rule
  loop, resumable through :mod:`experts.checkpoint`), :mod:`experts.training` (one elastic
  expert per interval), :mod:`experts.finetune` (fine-tuning an allocation),
  :mod:`experts.losses` (the held-out set and the proxy loss);
- the mixture: :class:`MixtureOfExperts`, :class:`MixturePipeline`, model folders
  (:func:`load_model_folder`, :mod:`experts.pruned`).

Everything listed in ``__all__`` is importable from ``experts``; the modules that need torch or
diffusers are imported on first use, so ``import experts`` stays light.
"""

from experts.allocation import Allocation
from experts.intervals import Intervals
from experts.mixture_space import MixtureSpace

__all__ = [
    "AGGREGATES",
    "AUTO_EXACT_LIMIT_BYTES",
    "AUTO_SKETCH_DIM",
    "Allocation",
    "CHECKPOINTS_DIR",
    "CRITERIA",
    "ClassCondition",
    "ConditionedModel",
    "CountSketch",
    "DEFAULT_SPACINGS",
    "DIGIT_WORDS",
    "EXPERT_META",
    "EXPLICIT",
    "ExpertJob",
    "ExpertLoss",
    "ExpertResult",
    "ExpertTableRow",
    "ExpertTrainSettings",
    "ExpertsResult",
    "ExplicitDDIMScheduler",
    "FINETUNE_FILE",
    "FinetuneResult",
    "HeldOutSet",
    "IntervalDiscovery",
    "IntervalSpace",
    "IntervalSteps",
    "Intervals",
    "JointSpace",
    "LoadedModel",
    "LossBatch",
    "MANIFEST",
    "MEASURES",
    "MIXTURE_FILE",
    "MixtureOfExperts",
    "MixturePipeline",
    "MixtureSpace",
    "PRUNED_KEY",
    "PinnedSpace",
    "ProjectionDim",
    "PromptConditionedModel",
    "PromptLabels",
    "ProxyLoss",
    "ProxyScore",
    "SPACINGS",
    "SUPERNET_DIR",
    "Segmentation",
    "StepSchedule",
    "StepsSpace",
    "TimestepPlan",
    "TrainLog",
    "TrajectoryMacs",
    "TrajectoryProxy",
    "activation_similarity",
    "as_tensor",
    "base_fingerprint",
    "boundaries_from_starts",
    "build_supernet",
    "call_denoiser",
    "check_timesteps",
    "choose_num_segments",
    "class_prompts",
    "condition_identity",
    "condition_kwargs",
    "cosine_matrix",
    "cycle_labels",
    "denoise_batch",
    "denoising_loss",
    "discover_intervals",
    "distillation_loss",
    "drop_labels",
    "encode_prompts",
    "evenly_spaced_timesteps",
    "expand_model_kwargs",
    "expert_dir",
    "expert_loss",
    "expert_table",
    "finetune_allocation",
    "fixed_batches",
    "format_expert_table",
    "gradient_similarity",
    "guided_prediction",
    "guided_unet_calls",
    "image_seed",
    "initial_noise",
    "install_prompt_table",
    "interval_counts",
    "interval_timesteps",
    "intervals_from_similarity",
    "is_mixture_folder",
    "is_pruned_folder",
    "joint_space",
    "load_experts",
    "load_model_folder",
    "load_pruned",
    "load_supernet",
    "make_batch",
    "make_heldout",
    "make_training_scheduler",
    "model_target",
    "optimal_segmentations",
    "place_steps",
    "plot_similarity",
    "prepare_expert_jobs",
    "prompt_condition",
    "prompt_table",
    "proxy_loss",
    "quiet_diffusers",
    "resolve_projection_dim",
    "run_expert_job",
    "run_training",
    "sandwich_archs",
    "save_pruned",
    "segment_similarity",
    "segmentation_cost",
    "set_explicit_timesteps",
    "split_joint",
    "timestep_grid",
    "timestep_similarity",
    "train_experts",
    "train_one_expert",
    "training_scheduler",
    "uniform_timesteps",
]

_LAZY = {  # public name -> the module that defines it (imported on first use)
    **dict.fromkeys((
        "ExpertLoss", "LossBatch", "as_tensor", "denoising_loss", "distillation_loss", "expert_loss",
        "interval_timesteps", "make_batch", "model_target", "training_scheduler"
    ), "experts.denoising"),
    **dict.fromkeys(("HeldOutSet", "ProxyLoss", "make_heldout", "proxy_loss"), "experts.losses"),
    **dict.fromkeys((
        "AUTO_EXACT_LIMIT_BYTES", "AUTO_SKETCH_DIM", "CountSketch", "ProjectionDim", "resolve_projection_dim"
    ), "experts.sketch"),
    **dict.fromkeys((
        "cosine_matrix", "fixed_batches", "make_training_scheduler"
    ), "experts.timestep_batches"),
    **dict.fromkeys((
        "AGGREGATES", "MEASURES", "activation_similarity", "gradient_similarity", "timestep_similarity"
    ), "experts.similarity"),
    **dict.fromkeys((
        "CRITERIA", "Segmentation", "choose_num_segments", "optimal_segmentations", "segment_similarity",
        "segmentation_cost"
    ), "experts.segmentation"),
    **dict.fromkeys((
        "IntervalDiscovery", "boundaries_from_starts", "discover_intervals", "intervals_from_similarity",
        "plot_similarity", "timestep_grid"
    ), "experts.discovery"),
    **dict.fromkeys((
        "ExpertTrainSettings", "TrainLog", "condition_identity", "expand_model_kwargs", "run_training",
        "sandwich_archs"
    ), "experts.train_loop"),
    **dict.fromkeys((
        "ClassCondition", "ConditionedModel", "PromptConditionedModel", "TrajectoryMacs", "cycle_labels", "drop_labels", "guided_prediction",
        "guided_unet_calls"
    ), "experts.guidance"),
    **dict.fromkeys((
        "DIGIT_WORDS", "PromptLabels", "call_denoiser", "class_prompts", "condition_kwargs", "encode_prompts",
        "install_prompt_table", "prompt_condition", "prompt_table"
    ), "experts.text_condition"),
    **dict.fromkeys((
        "CHECKPOINTS_DIR", "EXPERT_META", "MANIFEST", "SUPERNET_DIR", "base_fingerprint", "build_supernet",
        "expert_dir", "load_experts", "load_supernet", "quiet_diffusers"
    ), "experts.expert_folder"),
    **dict.fromkeys((
        "ExpertJob", "ExpertResult", "ExpertTableRow", "ExpertsResult", "expert_table", "format_expert_table",
        "prepare_expert_jobs", "run_expert_job", "train_experts", "train_one_expert"
    ), "experts.training"),
    **dict.fromkeys(("FINETUNE_FILE", "FinetuneResult", "finetune_allocation"), "experts.finetune"),
    **dict.fromkeys(("MIXTURE_FILE", "is_mixture_folder"), "experts.mixture_folder"),
    **dict.fromkeys(("MixtureOfExperts",), "experts.mixture"),
    **dict.fromkeys(("LoadedModel", "MixturePipeline", "load_model_folder"), "experts.pipeline"),
    **dict.fromkeys(("PRUNED_KEY", "is_pruned_folder", "load_pruned", "save_pruned"), "experts.pruned"),
    **dict.fromkeys((
        "EXPLICIT", "SPACINGS", "IntervalSteps", "StepSchedule", "place_steps", "uniform_timesteps"
    ), "experts.schedule"),
    **dict.fromkeys((
        "DEFAULT_SPACINGS", "IntervalSpace", "JointSpace", "PinnedSpace", "StepsSpace", "interval_counts",
        "joint_space", "split_joint"
    ), "experts.steps_space"),
    **dict.fromkeys((
        "ExplicitDDIMScheduler", "check_timesteps", "set_explicit_timesteps"
    ), "experts.explicit_timesteps"),
    **dict.fromkeys(("ProxyScore", "TrajectoryProxy"), "experts.trajectory_proxy"),
    **dict.fromkeys((
        "TimestepPlan", "denoise_batch", "evenly_spaced_timesteps", "image_seed", "initial_noise"
    ), "experts.sampling_loop"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'experts' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
