"""The MACs cost model: multiply-accumulates of one network call, and of a sampling trajectory.

Definition
----------
**MACs** = multiply-accumulates of the *tensor-contraction* operators only:

- convolutions, transposed included: ``N * prod(w.shape) * prod(spatial)``, where ``spatial``
  is the output's spatial size (the input's for a transposed convolution); groups are inside
  ``w.shape``;
- ``linear`` / ``addmm`` / ``mm`` / ``bmm`` / ``baddbmm`` / ``matmul`` (with batch
  broadcasting) / two-operand ``einsum``: the product of the sizes of the contracted problem
  (batch x rows x inner x columns);
- scaled-dot-product attention (``aten::scaled_dot_product_attention``): ``Q K^T`` plus
  ``A V`` = ``B*H*L*S*E + B*H*L*S*Ev`` (``2*B*H*L*S*E`` when the value width equals the
  key width), with ``B*H`` all leading (batch, head) dimensions of the query.

Not counted: biases, normalisations (group/layer/batch/instance norm), activations,
elementwise arithmetic, softmax, upsampling, pooling, embedding look-ups. This is exactly
what :class:`torch.utils.flop_counter.FlopCounterMode` counts (its FLOPs / 2) when SDPA runs
on the MATH backend, which :func:`reference_macs` uses as a cross-check.

How the count is made
---------------------
:func:`count_macs` traces the module once with fvcore (``torch.jit`` tracing, eval mode,
``torch.no_grad``) and applies one handle per contraction operator. fvcore's quirks, and what
this module does about them:

- fvcore has no handle for ``aten::scaled_dot_product_attention`` (diffusers' default CPU and
  GPU processor ``AttnProcessor2_0`` calls it), nor for ``aten::baddbmm`` (the older
  ``AttnProcessor``): both are registered here. Without them, attention (up to ~40% of a small
  UNet) is silently missing.
- fvcore's defaults count normalisations and upsampling as "flops": those handles are set to
  ``None`` here so that they are ignored (and not warned about).
- fvcore's own ``matmul`` handle ignores broadcasting of the second operand and its
  ``einsum`` fallback returns a float from numpy's cost model; both are replaced by exact
  integer handles.
- ``torch.jit`` tracing eliminates dead code: an operator whose result never reaches the
  output would not be counted although it runs. The trace wrapper returns every leaf
  module's output as well, so everything that executes is counted.
- fvcore warns about every operator without a handle; those warnings are switched off.
  Unknown operators whose name looks like a contraction (``conv``, ``mm``, ``attention``...)
  are logged as a warning by this module, the rest at DEBUG level.
- fvcore attributes an operator to the module whose ``__call__`` is running ("owner" mode) and
  to all its parents, so SDPA is attributed to the diffusers ``Attention`` module that calls it.

Measured cross-checks (torch 2.14.1 CPU, torch 2.11 CUDA on an H200, diffusers 0.42.1): on
five tiny UNet configurations :func:`count_macs` equals :func:`reference_macs` exactly, in fp32
and fp16, on CPU and CUDA, and on a 4-level SD-like UNet (15.8 GMACs at 32x32 latents) too.
``FlopCounterMode`` *without* the MATH backend is not a reference: on CPU it misses SDPA
entirely (13-20% of a tiny attention UNet); on CUDA in fp16 the flash kernel is counted with
its head dimension padded (e.g. 4 -> 8), over-counting attention.

Per-module attribution (``MacsCount.by_module`` / :meth:`MacsCount.direct`): every counted
operator lives in a leaf module (``Conv2d``, ``Linear``...) except SDPA, which belongs to the
``Attention`` module that calls it, so an analytic model can add up leaves plus attention.

Trajectory MACs (the budget of a sampler) are the sum over sampling steps of the MACs of the
network serving each step: :func:`trajectory_macs`, :func:`trajectory_macs_for`.

Example:
    >>> import torch
    >>> from search_spaces.macs import count_macs, reference_macs
    >>> conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    >>> count_macs(conv, {"input": torch.zeros(1, 3, 4, 4)}).total  # 1*8*3*3*3 * 4*4
    3456
    >>> reference_macs(conv, {"input": torch.zeros(1, 3, 4, 4)})
    3456
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from search_spaces._macs_count import MacsCount, count_macs, reference_macs
from search_spaces._macs_unet import count_unet_macs, unet_example_inputs, unet_macs_by_module
from search_spaces.errors import UserError

__all__ = [
    "MacsCount",
    "count_macs",
    "count_unet_macs",
    "reference_macs",
    "trajectory_macs",
    "trajectory_macs_for",
    "unet_example_inputs",
    "unet_macs_by_module",
]


def trajectory_macs(per_step_macs: Sequence[int]) -> int:
    """MACs of a sampling trajectory: the sum over steps of the MACs of the network serving each.

    Example:
        >>> trajectory_macs([100, 100, 40, 40])
        280
    """
    total = 0
    for i, macs in enumerate(per_step_macs):
        if isinstance(macs, bool) or int(macs) != macs or macs < 0:
            raise UserError(f"per-step MACs must be non-negative integers; step {i} has {macs!r}")
        total += int(macs)
    return total


def trajectory_macs_for(timesteps: Sequence[int] | torch.Tensor,
                        macs_of_timestep: Callable[[int], int]) -> int:
    """Trajectory MACs for a list of sampling timesteps and the per-call MACs at each timestep.

    ``macs_of_timestep(t)`` gives the MACs of the network that serves timestep ``t`` (e.g. the
    expert owning the interval of ``t``). ``timesteps`` may be a scheduler's tensor.

    Example:
        >>> trajectory_macs_for([999, 666, 333, 0], lambda t: 100 if t >= 500 else 40)
        280
    """
    return trajectory_macs([macs_of_timestep(int(t)) for t in timesteps])
