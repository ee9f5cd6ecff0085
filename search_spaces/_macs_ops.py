"""fvcore operator handles of the MACs cost model: what each contraction operator costs.

One handle per tensor-contraction ``aten::`` operator (convolutions, linear and matrix
products, einsum, scaled-dot-product attention), with fvcore's signature
``(inputs: list[torch._C.Value], outputs) -> Counter``, plus the tables that
:func:`search_spaces.macs.count_macs` installs: ``CONTRACTION_HANDLES`` (counted),
``NOT_COUNTED_OPS`` (0 MACs by definition) and ``CONTRACTION_HINTS`` (names that look like an
uncounted contraction). The MACs definition is in :mod:`search_spaces.macs`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["CONTRACTION_HANDLES", "CONTRACTION_HINTS", "NOT_COUNTED_OPS"]


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


CONTRACTION_HANDLES: dict[str, Callable] = {
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
NOT_COUNTED_OPS: tuple[str, ...] = (
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

CONTRACTION_HINTS = ("conv", "mm", "matmul", "linear", "einsum", "attention", "dot", "mv",
                      "tensordot", "bilinear")
