"""Choosing the torch device from a config string.

``auto`` picks CUDA when it is available, else the CPU. Explicit ``cuda``/``cuda:N`` are checked,
so asking for a GPU that does not exist is a one-line user error, not a crash deep inside torch.

Example:
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("auto").type in ("cpu", "cuda")
    True
"""

from __future__ import annotations

import torch

from nas.errors import UserError

__all__ = ["resolve_device"]


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:N``/``mps`` into a checked ``torch.device``.

    Raises:
        UserError: the spec is not a device name, or names a device this machine lacks.
    """
    text = (spec or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device {spec!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"device {spec!r} was requested but CUDA is not available on this machine "
                "(use --device cpu or --device auto)"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(
                f"device {spec!r} does not exist: this machine has {count} CUDA device(s) "
                f"(cuda:0 .. cuda:{count - 1})"
            )
        return device
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError(f"device {spec!r} was requested but MPS is not available (use --device cpu)")
        return device
    raise UserError(f"unsupported device {spec!r} (use auto, cpu, cuda or cuda:N)")
