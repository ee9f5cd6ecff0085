"""The :class:`SearchSpace` base class: the API every allocation method talks to.

Subclasses give :meth:`~SearchSpace.dimensions` and :meth:`~SearchSpace.macs`; the class derives
sampling, validation, full/smallest archs, flat encodings and relaxed (differentiable) MACs.
Moved verbatim from ``search_spaces/base.py``; every name is still importable from there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

import numpy as np

from search_spaces.arch import Arch, Choice, Dimension, _py


class SearchSpace:
    """Base class of every search space.

    Required: :meth:`dimensions` and :meth:`macs`. Optional hooks: :meth:`check_rules` (extra
    validity rules beyond per-dimension choices and ties) and :meth:`repair` (turn a sampled
    arch into a valid one). Everything else (sampling, validation, encodings, composition)
    comes from this class and is exercised by the contract suite in
    ``tests/search_spaces/contract.py``.
    """

    # ----------------------------------------------------------------- required
    def dimensions(self) -> tuple[Dimension, ...]:
        """All dimensions, in a stable order."""
        raise NotImplementedError

    def macs(self, arch: Mapping[str, Choice]) -> int:
        """Multiply-accumulates of one network call at ``arch`` (no model run)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- hooks
    def check_rules(self, arch: Arch) -> None:
        """Raise ValueError naming the rule and the key if ``arch`` breaks a space rule."""

    def repair(self, arch: Arch) -> Arch:
        """Make a sampled arch satisfy the rules (default: copy tied dimensions)."""
        return self.complete({k: arch[k] for k in self.free_names() if k in arch})

    # ----------------------------------------------------------------- derived
    def _dims_by_name(self) -> dict[str, Dimension]:
        cache = getattr(self, "_diffnas_dims_cache", None)
        if cache is None:
            cache = {d.name: d for d in self.dimensions()}
            if len(cache) != len(self.dimensions()):
                raise ValueError("search space has duplicate dimension names")
            try:
                object.__setattr__(self, "_diffnas_dims_cache", cache)
            except AttributeError:  # pragma: no cover - slotted subclasses
                pass
        return cache

    def dimension(self, name: str) -> Dimension:
        """The dimension called ``name`` (ValueError naming it otherwise)."""
        dims = self._dims_by_name()
        if name not in dims:
            raise ValueError(f"unknown dimension {name!r}; the space has {len(dims)} dimensions")
        return dims[name]

    def names(self) -> tuple[str, ...]:
        """All dimension names."""
        return tuple(d.name for d in self.dimensions())

    def free_dimensions(self) -> tuple[Dimension, ...]:
        """Dimensions that are not tied to another (what samplers and encoders see)."""
        return tuple(d for d in self.dimensions() if d.tied_to is None)

    def free_names(self) -> tuple[str, ...]:
        """Names of :meth:`free_dimensions`."""
        return tuple(d.name for d in self.free_dimensions())

    def complete(self, free: Mapping[str, Choice]) -> Arch:
        """Build a full arch from values of the free dimensions (missing ones: full choice)."""
        dims = self._dims_by_name()
        unknown = sorted(set(free) - set(dims))
        if unknown:
            raise ValueError(f"unknown dimension {unknown[0]!r} (not in this search space)")
        values: dict[str, Choice] = {}
        for d in self.free_dimensions():
            values[d.name] = _py(free[d.name]) if d.name in free else d.full
        for d in self.dimensions():
            if d.tied_to is not None:
                values[d.name] = values[_root(dims, d.name)]
        return Arch(values)

    def full(self) -> Arch:
        """The largest arch (the pretrained model)."""
        return self.complete({})

    def smallest(self) -> Arch:
        """The cheapest valid arch."""
        return self.repair(Arch({d.name: d.smallest for d in self.dimensions()}))

    def sample(self, rng: np.random.Generator) -> Arch:
        """A uniformly random choice per free dimension, repaired to satisfy the rules."""
        free = {d.name: d.choices[int(rng.integers(len(d.choices)))] for d in self.free_dimensions()}
        return self.repair(self.complete(free))

    def validate(self, arch: Mapping[str, Choice]) -> None:
        """Raise ValueError naming the key and the rule if ``arch`` is not in this space."""
        if not isinstance(arch, Mapping):
            raise ValueError(f"an arch must be a mapping of dimension name to choice, got {type(arch).__name__}")
        dims = self._dims_by_name()
        unknown = sorted(set(arch) - set(dims))
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r}: not a dimension of this search space")
        missing = [n for n in dims if n not in arch]
        if missing:
            raise ValueError(f"missing key {missing[0]!r}: every dimension needs a choice")
        for name, d in dims.items():
            value = arch[name]
            if isinstance(d.full, bool) != isinstance(value, (bool, np.bool_)):
                raise ValueError(
                    f"{name}: choice {value!r} has the wrong type; allowed choices are {list(d.choices)}"
                )
            d.index(value)  # out-of-range -> ValueError naming the key
        for name, d in dims.items():
            if d.tied_to is not None and arch[name] != arch[d.tied_to]:
                rule = d.rule or f"{name} must equal {d.tied_to}"
                raise ValueError(
                    f"{name}: coupling rule broken ({rule}); got {arch[name]!r} but "
                    f"{d.tied_to} is {arch[d.tied_to]!r}"
                )
        self.check_rules(Arch(arch))

    def is_valid(self, arch: Mapping[str, Choice]) -> bool:
        """True when :meth:`validate` would pass."""
        try:
            self.validate(arch)
        except ValueError:
            return False
        return True

    def cardinality(self) -> int:
        """Number of free-dimension combinations (an upper bound on valid archs)."""
        return math.prod(len(d.choices) for d in self.free_dimensions())

    # ----------------------------------------------------------------- encodings
    def encode(self, arch: Mapping[str, Choice]) -> np.ndarray:
        """Flat float vector: per free dimension, the choice index scaled to [0, 1]."""
        self.validate(arch)
        out = np.empty(len(self.free_dimensions()), dtype=np.float64)
        for i, d in enumerate(self.free_dimensions()):
            n = len(d.choices)
            out[i] = d.index(arch[d.name]) / (n - 1) if n > 1 else 1.0
        return out

    def decode(self, vector: Sequence[float] | np.ndarray) -> Arch:
        """Inverse of :meth:`encode`; values are rounded to the nearest choice index."""
        free = self.free_dimensions()
        vec = np.asarray(vector, dtype=np.float64).reshape(-1)
        if vec.shape[0] != len(free):
            raise ValueError(f"vector has {vec.shape[0]} entries, the space has {len(free)} free dimensions")
        values: dict[str, Choice] = {}
        for x, d in zip(vec, free):
            n = len(d.choices)
            idx = int(np.clip(np.rint(x * (n - 1)), 0, n - 1)) if n > 1 else 0
            values[d.name] = d.choices[idx]
        return self.repair(self.complete(values))

    def to_indices(self, arch: Mapping[str, Choice]) -> dict[str, int]:
        """Choice index per free dimension (what categorical samplers use)."""
        self.validate(arch)
        return {d.name: d.index(arch[d.name]) for d in self.free_dimensions()}

    def macs_ratio(self, arch: Mapping[str, Choice]) -> float:
        """MACs of ``arch`` as a fraction of the full arch's."""
        return self.macs(arch) / self.macs(self.full())

    def macs_relaxed(self, weights: Mapping[str, "torch.Tensor"]) -> "torch.Tensor":
        """Differentiable MACs for relaxed choices (what a gradient-trained router needs).

        ``weights[name]`` is a tensor of shape ``(len(choices),)`` per free dimension: a
        probability vector, or a straight-through one-hot. Missing dimensions count as full.
        The default is first-order: ``macs(full) + sum_d sum_c w[d, c] * delta(d, c)`` with
        ``delta(d, c) = macs(full with d=c) - macs(full)``; it is exact for spaces whose MACs
        are additive over dimensions. At hard one-hot weights the value is the exact
        ``macs`` of the selected arch (gradients stay first-order). Spaces with
        interactions (a skipped layer makes its width irrelevant) may override it.
        """
        import torch

        table = getattr(self, "_diffnas_delta_cache", None)
        if table is None:
            full = self.full()
            base = self.macs(full)
            table = {}
            for d in self.free_dimensions():
                table[d.name] = [
                    float(self.macs(self.repair(self.complete({**full, d.name: c}))) - base)
                    for c in d.choices
                ]
            table = (float(base), table)
            try:
                object.__setattr__(self, "_diffnas_delta_cache", table)
            except AttributeError:  # pragma: no cover
                pass
        base, deltas = table
        total = torch.tensor(base, dtype=torch.float64)
        for name, w in weights.items():
            if name not in deltas:
                raise ValueError(f"unknown or tied dimension {name!r} in relaxed weights")
            total = total + (w.to(torch.float64) * torch.tensor(deltas[name], dtype=torch.float64)).sum()
        hard = all(bool(((w == 0) | (w == 1)).all()) and float(w.detach().sum()) == 1.0 for w in weights.values())
        if hard:
            # straight-through: the exact MACs of the selected arch, first-order gradients
            dims = self._dims_by_name()
            arch = self.complete({n: dims[n].choices[int(w.argmax())] for n, w in weights.items()})
            exact = float(self.macs(self.repair(arch)))
            total = total + (exact - total.detach())
        return total


def _root(dims: Mapping[str, Dimension], name: str) -> str:
    """Follow ``tied_to`` links to the free dimension (bounded: no cycles allowed)."""
    seen = [name]
    for _ in range(len(dims) + 1):
        d = dims[seen[-1]]
        if d.tied_to is None:
            return d.name
        if d.tied_to not in dims:
            raise ValueError(f"{d.name} is tied to unknown dimension {d.tied_to!r}")
        if d.tied_to in seen:
            raise ValueError(f"tie cycle among dimensions {seen}")
        seen.append(d.tied_to)
    raise ValueError(f"tie chain too long from {name!r}")  # pragma: no cover
