"""A count sketch of a model's gradient: a fixed sparse random projection to a few numbers.

Each parameter is hashed (seeded), with a random sign, into one of ``dim`` buckets; inner
products are unbiased, the cosine error about ``1 / sqrt(dim)``. :func:`resolve_projection_dim`
picks exact gradients or a sketch (``"auto"``: exact while ``G x P`` float32 fits in 1 GiB).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Union

import torch

__all__ = ["AUTO_EXACT_LIMIT_BYTES", "AUTO_SKETCH_DIM", "CountSketch", "ProjectionDim", "resolve_projection_dim"]

AUTO_EXACT_LIMIT_BYTES = 1 << 30  # exact gradients while G x P float32 fits in 1 GiB
AUTO_SKETCH_DIM = 1 << 16

ProjectionDim = Union[int, Literal["auto"], None]


class CountSketch:
    """A fixed sparse random projection of a model's flattened gradient to ``dim`` numbers.

    Each parameter element is hashed (seeded, per parameter tensor, generated on the CPU so the
    result does not depend on the device) to one bucket with a random sign; the sketch of a
    gradient is the signed bucket sums. Inner products are preserved in expectation.

    Example:
        >>> p = [torch.nn.Parameter(torch.zeros(1000))]
        >>> cs = CountSketch(p, dim=64, seed=0)
        >>> g = torch.randn(1000)
        >>> s = cs([g])
        >>> s.shape, bool(abs(float(s.norm() / g.norm()) - 1) < 0.5)
        (torch.Size([64]), True)
    """

    def __init__(self, params: Sequence[torch.Tensor], dim: int, seed: int = 0,
                 device: torch.device | str | None = None) -> None:
        if dim < 1:
            raise ValueError(f"projection dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.buckets: list[torch.Tensor] = []
        self.signs: list[torch.Tensor] = []
        for i, p in enumerate(params):
            g = torch.Generator().manual_seed(int(seed) * 1_000_003 + i)
            n = p.numel()
            self.buckets.append(torch.randint(0, self.dim, (n,), generator=g, dtype=torch.int64)
                                .to(torch.int32).to(device or p.device))  # (n,)
            self.signs.append((torch.randint(0, 2, (n,), generator=g, dtype=torch.int8) * 2 - 1)
                              .to(device or p.device))  # (n,) in {-1, +1}

    def __call__(self, grads: Sequence[torch.Tensor | None]) -> torch.Tensor:
        out = None
        for g, b, s in zip(grads, self.buckets, self.signs):
            if out is None:
                out = torch.zeros(self.dim, device=b.device, dtype=torch.float32)
            if g is None:
                continue
            out.index_add_(0, b, g.reshape(-1).to(torch.float32) * s)  # (dim,)
        if out is None:
            raise ValueError("no parameters to sketch")
        return out


def resolve_projection_dim(projection_dim: ProjectionDim, num_params: int, grid_size: int) -> int | None:
    """``None`` for exact gradients, else the sketch size (see the module docstring).

    Example:
        >>> resolve_projection_dim("auto", 1_000_000, 20), resolve_projection_dim("auto", 10**9, 20)
        (None, 65536)
    """
    if projection_dim is None:
        return None
    if projection_dim == "auto":
        return None if 4 * num_params * grid_size <= AUTO_EXACT_LIMIT_BYTES else AUTO_SKETCH_DIM
    if isinstance(projection_dim, bool) or not isinstance(projection_dim, int) or projection_dim < 1:
        raise ValueError(f"projection_dim must be 'auto', None or a positive int, got {projection_dim!r}")
    return int(projection_dim)
