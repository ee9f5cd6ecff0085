"""Counting the MACs of one module call by tracing with fvcore.

Holds the result record :class:`MacsCount`, the trace wrapper (``_TraceWrapper``: tensors
passed positionally, every leaf output kept so dead-code elimination drops nothing;
``_EvalNoGrad``), :func:`count_macs` and its independent cross-check :func:`reference_macs`
(torch's ``FlopCounterMode``). The MACs definition and fvcore's quirks are documented in
:mod:`search_spaces.macs`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from search_spaces._macs_ops import CONTRACTION_HANDLES, CONTRACTION_HINTS, NOT_COUNTED_OPS

__all__ = ["MacsCount", "count_macs", "reference_macs"]

# log under the public module's name: that is the name users filter on
logger = logging.getLogger("search_spaces.macs")


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
    with warnings.catch_warnings():
        # importing fvcore.nn scripts its focal loss: torch >= 2.10 warns that torch.jit.script is
        # deprecated, on every first import (in each Ray worker, too); nothing here uses it
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
        from fvcore.nn import FlopCountAnalysis

    wrapper = _TraceWrapper(module, kwargs)
    inputs = tuple(kwargs[k] for k in wrapper.tensor_keys)
    analysis = FlopCountAnalysis(wrapper, inputs)
    analysis.clear_op_handles()  # drop fvcore's defaults (norm/upsample "flops", float einsum)
    analysis.set_op_handle(**CONTRACTION_HANDLES)
    analysis.set_op_handle(**{op: None for op in NOT_COUNTED_OPS})
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
        if any(hint in op.lower() for hint in CONTRACTION_HINTS):
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
