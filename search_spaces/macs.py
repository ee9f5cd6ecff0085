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

import inspect
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

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

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Result record
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MacsCount:
    """MACs of one call of a module.

    Attributes:
        total: MACs of the whole call.
        by_module: qualified submodule name (as in ``named_modules()``, e.g.
            ``"down_blocks.0.resnets.1.conv1"``) -> MACs of everything run inside that module's
            call, children included. Every submodule is present (zero when it ran no
            contraction); the root is the key ``""`` and equals ``total``. Empty when the count
            was made with ``by_module=False``.
        by_operator: operator kind (``"conv"``, ``"linear"``, ``"sdpa"``, ``"matmul"``,
            ``"bmm"``, ``"baddbmm"``, ``"addmm"``, ``"mm"``, ``"einsum"``) -> MACs.
    """

    total: int
    by_module: dict[str, int] = field(default_factory=dict)
    by_operator: dict[str, int] = field(default_factory=dict)

    def direct(self) -> dict[str, int]:
        """MACs of operators run by each module itself, not inside one of its children.

        For a diffusers UNet these are non-zero only for leaves (``Conv2d``, ``Linear``...) and
        for ``Attention`` modules (their SDPA call); the values sum to ``total``.

        Example:
            >>> import torch
            >>> m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
            >>> c = count_macs(m, {"input": torch.zeros(5, 4)})
            >>> c.direct()["0"], c.direct()["1"], c.direct()[""]
            (60, 30, 0)
        """
        out = dict(self.by_module)
        for name, macs in self.by_module.items():
            if name:
                parent = name.rpartition(".")[0]
                if parent in out:
                    out[parent] -= macs
        return out


# ----------------------------------------------------------------------------------------------
# Operator handles (fvcore signature: (inputs: list[torch._C.Value], outputs) -> Counter)
# ----------------------------------------------------------------------------------------------


def _shape(value: Any) -> list[int]:
    """Static shape of a traced tensor value; raises if the tracer did not record one."""
    if not value.isCompleteTensor():
        raise RuntimeError(f"fvcore trace has no complete shape for {value.debugName()}")
    return list(value.type().sizes())


def _prod(xs: Iterable[int]) -> int:
    return int(math.prod(int(x) for x in xs))


def _broadcast(a: Sequence[int], b: Sequence[int]) -> list[int]:
    """Broadcast shape of two batch shapes (numpy rules)."""
    n = max(len(a), len(b))
    a = [1] * (n - len(a)) + list(a)
    b = [1] * (n - len(b)) + list(b)
    return [max(x, y) for x, y in zip(a, b)]


def _matmul_macs(a: Sequence[int], b: Sequence[int]) -> int:
    """MACs of ``a @ b`` with torch.matmul semantics (1-D operands, batch broadcasting)."""
    a = [1, *a] if len(a) == 1 else list(a)  # (k,) -> (1, k)
    b = [*b, 1] if len(b) == 1 else list(b)  # (k,) -> (k, 1)
    n, k = a[-2], a[-1]
    m = b[-1]
    return _prod(_broadcast(a[:-2], b[:-2])) * n * k * m


def _conv_handle(transposed_index: int | None, always_transposed: bool = False) -> Callable:
    """Handle for a convolution op; ``transposed_index`` is the position of its bool flag."""

    def handle(inputs: list, outputs: list) -> Counter:
        x, w, y = _shape(inputs[0]), _shape(inputs[1]), _shape(outputs[0])
        transposed = always_transposed
        if transposed_index is not None:
            transposed = bool(inputs[transposed_index].toIValue())
        spatial = (x if transposed else y)[2:]  # (N, C, *spatial)
        return Counter({"conv": x[0] * _prod(w) * _prod(spatial)})

    return handle


def _linear_handle(inputs: list, outputs: list) -> Counter:
    x, w = _shape(inputs[0]), _shape(inputs[1])  # x: (..., in), w: (out, in)
    return Counter({"linear": _prod(x) * w[0]})


def _addmm_handle(inputs: list, outputs: list) -> Counter:
    a, b = _shape(inputs[1]), _shape(inputs[2])  # bias, (n, k), (k, m)
    return Counter({"addmm": a[0] * a[1] * b[1]})


def _mm_handle(inputs: list, outputs: list) -> Counter:
    return Counter({"mm": _matmul_macs(_shape(inputs[0]), _shape(inputs[1]))})


def _matmul_handle(inputs: list, outputs: list) -> Counter:
    return Counter({"matmul": _matmul_macs(_shape(inputs[0]), _shape(inputs[1]))})


def _bmm_handle(inputs: list, outputs: list) -> Counter:
    a, b = _shape(inputs[0]), _shape(inputs[1])  # (B, n, k), (B, k, m)
    return Counter({"bmm": a[0] * a[1] * a[2] * b[2]})


def _baddbmm_handle(inputs: list, outputs: list) -> Counter:
    a, b = _shape(inputs[1]), _shape(inputs[2])  # input, (B, n, k), (B, k, m)
    return Counter({"baddbmm": a[0] * a[1] * a[2] * b[2]})


def _sdpa_handle(inputs: list, outputs: list) -> Counter:
    # q: (..., L, E), k: (..., S, E), v: (..., S, Ev), out: (..., L, Ev); ... = (B, H) of the query
    q, k, v = _shape(inputs[0]), _shape(inputs[1]), _shape(inputs[2])
    out = _shape(outputs[0])
    batch_heads = _prod(out[:-2])
    length_q, width_qk, length_kv, width_v = q[-2], q[-1], k[-2], v[-1]
    macs = batch_heads * length_q * length_kv * (width_qk + width_v)  # Q K^T + A V
    return Counter({"sdpa": macs})


def _einsum_operand_dims(equation: str, shapes: list[list[int]]) -> tuple[list[str], str, dict]:
    """Parse an einsum equation into per-operand index strings, output indices and sizes.

    Ellipses are replaced by pseudo indices (non-ASCII characters) aligned from the right.
    """
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    n_ellipsis = max(
        (len(s) - (len(t) - 3) for t, s in zip(terms, shapes) if "..." in t), default=0
    )
    pseudo = "".join(chr(0x100 + i) for i in range(n_ellipsis))
    sizes: dict[str, int] = {}
    operands = []
    for term, shape in zip(terms, shapes):
        if "..." in term:
            own = len(shape) - (len(term) - 3)
            term = term.replace("...", pseudo[n_ellipsis - own:])
        for letter, size in zip(term, shape):
            sizes[letter] = max(sizes.get(letter, 1), int(size))
        operands.append(term)
    if arrow:
        output = rhs.replace("...", pseudo)
    else:
        counts = Counter("".join(operands))
        output = pseudo + "".join(sorted(c for c in counts if counts[c] == 1 and c not in pseudo))
    return operands, output, sizes


def _einsum_macs(equation: str, shapes: list[list[int]]) -> int:
    """MACs of an einsum, contracted pairwise left to right (torch's order without opt_einsum).

    Exact for two operands: indices present in only one operand and absent from the result are
    summed before the contraction (no multiplication), every other index multiplies.
    """
    operands, output, sizes = _einsum_operand_dims(equation, shapes)
    if len(operands) < 2:
        return 0
    macs = 0
    left = operands[0]
    for i, right in enumerate(operands[1:], start=1):
        later = set(output).union(*operands[i + 1:])
        keep = set(left) | set(right)
        # an index in one operand only that nobody needs later is summed away beforehand
        used = {c for c in keep if (c in left and c in right) or c in later}
        macs += _prod(sizes[c] for c in used)
        left = "".join(sorted(c for c in used if c in later))
    return macs


def _einsum_handle(inputs: list, outputs: list) -> Counter:
    equation = inputs[0].toIValue()
    shapes = [_shape(v) for v in inputs[1].node().inputs()]
    return Counter({"einsum": _einsum_macs(equation, shapes)})


_CONTRACTION_HANDLES: dict[str, Callable] = {
    "aten::_convolution": _conv_handle(transposed_index=6),
    "aten::convolution": _conv_handle(transposed_index=6),
    "aten::conv1d": _conv_handle(None),
    "aten::conv2d": _conv_handle(None),
    "aten::conv3d": _conv_handle(None),
    "aten::conv_transpose1d": _conv_handle(None, always_transposed=True),
    "aten::conv_transpose2d": _conv_handle(None, always_transposed=True),
    "aten::conv_transpose3d": _conv_handle(None, always_transposed=True),
    "aten::linear": _linear_handle,
    "aten::addmm": _addmm_handle,
    "aten::mm": _mm_handle,
    "aten::matmul": _matmul_handle,
    "aten::bmm": _bmm_handle,
    "aten::baddbmm": _baddbmm_handle,
    "aten::einsum": _einsum_handle,
    "aten::scaled_dot_product_attention": _sdpa_handle,
}

# fvcore counts these by default (or would warn about them); by our definition they cost 0 MACs.
_NOT_COUNTED_OPS: tuple[str, ...] = (
    # normalisation
    "aten::batch_norm", "aten::group_norm", "aten::layer_norm", "aten::instance_norm",
    "aten::rms_norm", "aten::native_group_norm", "aten::native_layer_norm",
    # resampling and pooling
    "aten::upsample_nearest1d", "aten::upsample_nearest2d", "aten::upsample_nearest3d",
    "aten::upsample_bilinear2d", "aten::upsample_bicubic2d", "aten::upsample_linear1d",
    "aten::upsample_trilinear3d", "aten::_upsample_nearest_exact2d", "aten::interpolate",
    "aten::adaptive_avg_pool1d", "aten::adaptive_avg_pool2d", "aten::avg_pool1d",
    "aten::avg_pool2d", "aten::max_pool2d", "aten::grid_sampler", "aten::pad",
    "aten::reflection_pad2d", "aten::replication_pad2d",
    # activations and softmax
    "aten::silu", "aten::silu_", "aten::gelu", "aten::gelu_", "aten::sigmoid", "aten::tanh",
    "aten::mish", "aten::softmax", "aten::log_softmax", "aten::softplus", "aten::elu",
    "aten::leaky_relu", "aten::hardswish",
    # elementwise arithmetic and math
    "aten::add", "aten::add_", "aten::sub", "aten::sub_", "aten::rsub", "aten::mul",
    "aten::mul_", "aten::div", "aten::div_", "aten::neg", "aten::pow", "aten::sqrt",
    "aten::rsqrt", "aten::exp", "aten::log", "aten::sin", "aten::cos", "aten::abs",
    "aten::square", "aten::mean", "aten::sum", "aten::var", "aten::std", "aten::norm",
    "aten::lerp", "aten::where", "aten::clamp_min", "aten::clamp_max",
    # shapes, copies, indexing, creation
    "aten::size", "aten::slice", "aten::select", "aten::transpose", "aten::to", "aten::split",
    "aten::split_with_sizes", "aten::repeat", "aten::repeat_interleave", "aten::stack",
    "aten::flip", "aten::roll", "aten::embedding", "aten::tensor", "aten::clone",
    "aten::lift_fresh", "aten::alias", "aten::movedim", "aten::unflatten", "aten::tile",
    "aten::masked_fill_", "aten::fill_", "aten::zero_", "aten::ne", "aten::lt", "aten::le",
    "aten::logical_not", "aten::any", "aten::all", "aten::bernoulli_", "aten::randn",
    "aten::randn_like", "aten::rand", "aten::dropout_", "aten::feature_dropout",
)

_CONTRACTION_HINTS = ("conv", "mm", "matmul", "linear", "einsum", "attention", "dot", "mv",
                      "tensordot", "bilinear")


# ----------------------------------------------------------------------------------------------
# Tracing wrapper
# ----------------------------------------------------------------------------------------------

_WRAPPED = "model"  # attribute name of the wrapped module inside _TraceWrapper


def _first_tensor(out: Any) -> torch.Tensor:
    """The main output tensor of a module call (diffusers ``.sample``, a tuple's first...)."""
    if isinstance(out, torch.Tensor):
        return out
    sample = getattr(out, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        for item in out:
            if isinstance(item, torch.Tensor):
                return item
    raise TypeError(f"cannot find a tensor in the module output of type {type(out).__name__}")


class _TraceWrapper(nn.Module):
    """Calls ``model(**kwargs)`` with the tensor kwargs passed positionally (as jit tracing
    needs) and the rest held as constants; returns one plain tensor."""

    def __init__(self, model: nn.Module, kwargs: Mapping[str, Any]) -> None:
        super().__init__()
        setattr(self, _WRAPPED, model)
        self.tensor_keys = [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
        self.constants = {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)}

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kwargs = {**self.constants, **dict(zip(self.tensor_keys, tensors))}
        # Every leaf module's tensor output is returned too, so the tracer's dead-code
        # elimination cannot drop work that runs but whose result is unused (a UNet whose
        # ResNets all dropped their residual branch still computes its time embedding).
        kept: list[torch.Tensor] = []

        def keep(_m: nn.Module, _a: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                kept.append(out)

        model = getattr(self, _WRAPPED)
        handles = [m.register_forward_hook(keep) for m in model.modules() if next(m.children(), None) is None]
        try:
            main = _first_tensor(model(**kwargs))
        finally:
            for h in handles:
                h.remove()
        return (main, *kept)


class _EvalNoGrad:
    """Context: the module in eval mode under no_grad; each submodule's mode restored after."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.modes: dict[nn.Module, bool] = {}
        self.no_grad = torch.no_grad()

    def __enter__(self) -> None:
        self.modes = {m: m.training for m in self.module.modules()}
        self.module.eval()
        self.no_grad.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.no_grad.__exit__(*exc)
        for m, training in self.modes.items():
            m.training = training


def _strip_wrapper_name(name: str) -> str | None:
    """fvcore name inside the wrapper -> name inside the user's module (None: the wrapper)."""
    if name == _WRAPPED:
        return ""
    if name.startswith(_WRAPPED + "."):
        return name[len(_WRAPPED) + 1:]
    return None


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def count_macs(module: nn.Module, kwargs: Mapping[str, Any], *, by_module: bool = True) -> MacsCount:
    """MACs of ``module(**kwargs)``, counted by tracing with fvcore (see the module docstring).

    Runs one traced forward pass in eval mode under ``torch.no_grad``; each submodule's
    train/eval mode is restored afterwards. Tensor kwargs are traced inputs; other kwargs are
    passed through unchanged. The module may return a tensor, a tuple or a diffusers output.

    Args:
        module: any ``nn.Module`` whose forward takes these keyword arguments.
        kwargs: keyword inputs for one call (their batch size is part of the count).
        by_module: also return per-submodule MACs (costs nothing extra to compute).

    Returns:
        A :class:`MacsCount`.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(16, 8)
        >>> count_macs(lin, {"input": torch.zeros(2, 16)}).total
        256
    """
    from fvcore.nn import FlopCountAnalysis

    wrapper = _TraceWrapper(module, kwargs)
    inputs = tuple(kwargs[k] for k in wrapper.tensor_keys)
    analysis = FlopCountAnalysis(wrapper, inputs)
    analysis.clear_op_handles()  # drop fvcore's defaults (norm/upsample "flops", float einsum)
    analysis.set_op_handle(**_CONTRACTION_HANDLES)
    analysis.set_op_handle(**{op: None for op in _NOT_COUNTED_OPS})
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    with _EvalNoGrad(module):
        total = int(analysis.total())
    _log_unknown_ops(analysis.unsupported_ops())

    per_module: dict[str, int] = {}
    if by_module:
        for name, macs in analysis.by_module().items():
            inner = _strip_wrapper_name(name)
            if inner is not None:
                per_module[inner] = int(macs)
    by_operator = {str(op): int(n) for op, n in analysis.by_operator().items()}
    return MacsCount(total=total, by_module=per_module, by_operator=by_operator)


def _log_unknown_ops(unsupported: Mapping[str, int]) -> None:
    for op, times in sorted(unsupported.items()):
        if any(hint in op.lower() for hint in _CONTRACTION_HINTS):
            logger.warning("MACs: operator %s (x%d) looks like a contraction but has no "
                           "handle; it is not counted", op, times)
        else:
            logger.debug("MACs: operator %s (x%d) not counted", op, times)


def reference_macs(module: nn.Module, kwargs: Mapping[str, Any]) -> int:
    """MACs of ``module(**kwargs)`` by torch's ``FlopCounterMode`` (FLOPs // 2), MATH SDPA.

    Independent of fvcore and of tracing; used to cross-check :func:`count_macs`. The MATH
    backend is forced because FlopCounterMode does not see the fused CPU attention kernels.

    Example:
        >>> import torch
        >>> reference_macs(torch.nn.Linear(16, 8), {"input": torch.zeros(2, 16)})
        256
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with _EvalNoGrad(module), sdpa_kernel(SDPBackend.MATH), counter:
        module(**kwargs)
    return int(counter.get_total_flops()) // 2


def _model_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in module.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def unet_example_inputs(
    unet: nn.Module,
    batch_size: int = 1,
    encoder_seq_len: int = 77,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Keyword inputs for one call of a diffusers UNet, shaped from its config.

    ``sample``: zeros of ``(batch_size, in_channels, H, W)`` from ``config.sample_size`` (an int
    or an ``(H, W)`` pair); ``timestep``: a long tensor of shape ``(batch_size,)``;
    ``encoder_hidden_states`` (conditional UNets only): zeros of
    ``(batch_size, encoder_seq_len, D)``, ``D`` = ``encoder_hid_dim`` if set, else
    ``cross_attention_dim``; ``class_labels`` and SDXL-style ``added_cond_kwargs`` when the
    config asks for them. Inputs are placed on ``device`` (default: the model's).

    Example:
        >>> from diffusers import UNet2DModel
        >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1,
        ...     block_out_channels=(4, 8), norm_num_groups=4, layers_per_block=1,
        ...     down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
        >>> tuple(unet_example_inputs(unet, batch_size=2)["sample"].shape)
        (2, 1, 8, 8)
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    cfg = unet.config
    model_device, dtype = _model_device_dtype(unet)
    device = torch.device(device) if device is not None else model_device
    size = getattr(cfg, "sample_size", None)
    if size is None:
        raise UserError("the UNet config has no sample_size; pass the inputs to count_macs")
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[-1]))
    inputs: dict[str, Any] = {
        "sample": torch.zeros(batch_size, cfg.in_channels, height, width, device=device,
                              dtype=dtype),
        "timestep": torch.full((batch_size,), 1, dtype=torch.long, device=device),
    }
    params = inspect.signature(unet.forward).parameters
    if "encoder_hidden_states" in params:
        width_ctx = getattr(cfg, "encoder_hid_dim", None) or getattr(cfg, "cross_attention_dim")
        if isinstance(width_ctx, (list, tuple)):
            width_ctx = width_ctx[0]
        inputs["encoder_hidden_states"] = torch.zeros(
            batch_size, encoder_seq_len, int(width_ctx), device=device, dtype=dtype)
    if getattr(unet, "class_embedding", None) is not None:
        inputs["class_labels"] = _class_labels(unet, batch_size, device, dtype)
    addition = getattr(cfg, "addition_embed_type", None)
    if addition == "text_time":
        time_ids = 6  # SDXL: original size, crop, target size
        text_dim = cfg.projection_class_embeddings_input_dim - cfg.addition_time_embed_dim * time_ids
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.zeros(batch_size, text_dim, device=device, dtype=dtype),
            "time_ids": torch.zeros(batch_size, time_ids, device=device, dtype=dtype),
        }
    elif addition not in (None, "text"):
        raise UserError(f"addition_embed_type={addition!r} needs inputs this helper does not "
                        "build; pass them to count_macs(unet, kwargs) yourself")
    return inputs


def _class_labels(unet: nn.Module, batch_size: int, device: torch.device,
                  dtype: torch.dtype) -> torch.Tensor:
    kind = getattr(unet.config, "class_embed_type", None)
    if kind in (None, "timestep"):
        return torch.zeros(batch_size, dtype=torch.long, device=device)
    if kind == "projection":
        dim = unet.config.projection_class_embeddings_input_dim
        return torch.zeros(batch_size, dim, device=device, dtype=dtype)
    if kind == "identity":
        dim = unet.time_embedding.linear_2.out_features
        return torch.zeros(batch_size, dim, device=device, dtype=dtype)
    raise UserError(f"class_embed_type={kind!r} needs inputs this helper does not build; "
                    "pass them to count_macs(unet, kwargs) yourself")


def unet_macs_by_module(unet: nn.Module, batch_size: int = 1,
                        encoder_seq_len: int = 77) -> MacsCount:
    """MACs of one call of a diffusers UNet on :func:`unet_example_inputs`, per module.

    Example:
        >>> from diffusers import UNet2DModel
        >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1,
        ...     block_out_channels=(4, 8), norm_num_groups=4, layers_per_block=1,
        ...     add_attention=False,
        ...     down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
        >>> c = unet_macs_by_module(unet)
        >>> c.by_module["conv_in"]  # 4 * 1 * 3 * 3 weights at 8 x 8 positions
        2304
    """
    kwargs = unet_example_inputs(unet, batch_size=batch_size, encoder_seq_len=encoder_seq_len)
    return count_macs(unet, kwargs, by_module=True)


def count_unet_macs(unet: nn.Module, batch_size: int = 1, encoder_seq_len: int = 77) -> int:
    """MACs of one call of a diffusers UNet (per image with ``batch_size=1``).

    Example:
        >>> from diffusers import UNet2DModel
        >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1,
        ...     block_out_channels=(4, 8), norm_num_groups=4, layers_per_block=1,
        ...     down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
        >>> count_unet_macs(unet, batch_size=2) == 2 * count_unet_macs(unet)
        True
    """
    kwargs = unet_example_inputs(unet, batch_size=batch_size, encoder_seq_len=encoder_seq_len)
    return count_macs(unet, kwargs, by_module=False).total


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
