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

The pruned model is saved in the folder format of :mod:`experts.pruned` (``save_pruned``,
``load_pruned``, ``is_pruned_folder``, ``PRUNED_KEY``): the
experts layer owns model folders, so a pruned baseline loads without the benchmarks.

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

Modules: ``_surgery`` (the pruning itself: :func:`prune_once`, one torch-pruning pass with the
diffusers bookkeeping synced, and :func:`taylor_gradients`), ``_budget`` (:func:`prune_to_budget`,
the bounded ratio search, and its record :class:`StaticPruneResult`), ``_baselines``
(:func:`fewer_steps_for_budget`, :func:`uniform_fraction_arch`).
"""

from benchmarks.static_pruning._baselines import fewer_steps_for_budget, uniform_fraction_arch
from benchmarks.static_pruning._budget import StaticPruneResult, prune_to_budget
from benchmarks.static_pruning._surgery import prune_once, taylor_gradients

__all__ = [
    "StaticPruneResult",
    "fewer_steps_for_budget",
    "prune_once",
    "prune_to_budget",
    "taylor_gradients",
    "uniform_fraction_arch",
]
