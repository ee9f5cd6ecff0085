"""The :class:`SearchSpace` base class: the API every allocation method talks to.

Subclasses give :meth:`~SearchSpace.dimensions` and :meth:`~SearchSpace.macs`; the class derives
sampling, validation, full/smallest archs, flat encodings and relaxed (differentiable) MACs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

import numpy as np

from search_spaces._arch import Arch, Choice, Dimension, to_choice
from search_spaces._rules import checked_macs, indices_by_distance, rule_error

__all__ = ["SearchSpace"]


class SearchSpace:
    """Base class of every search space.

    Required: :meth:`dimensions` and :meth:`macs`. Optional hooks: :meth:`check_rules` (extra
    validity rules beyond per-dimension choices and ties) and :meth:`repair` (turn a sampled
    arch into a valid one). Everything else (sampling, validation, encodings, composition)
    comes from this class and is exercised by the contract suite in
    :mod:`search_spaces.testing`.

    Rules are honoured everywhere: :meth:`sample` draws again when a draw breaks a rule and
    :meth:`decode` returns the nearest arch that keeps them (both give up after
    :attr:`max_draws` tries with a ValueError naming the rule); a rule that fails with an
    ``assert`` or any other exception is reported as that same ValueError. A subclass's
    :meth:`macs` checks its arch's keys and choices first (:meth:`validate_choices`).
    """

    #: draws :meth:`sample` (and candidates :meth:`decode`) tries before giving up on the rules
    max_draws: int = 100

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "macs" in cls.__dict__:
            cls.macs = checked_macs(cls.__dict__["macs"])  # type: ignore[method-assign]

    # ----------------------------------------------------------------- required
    def dimensions(self) -> tuple[Dimension, ...]:
        """All dimensions, in a stable order."""
        raise NotImplementedError

    def macs(self, arch: Mapping[str, Choice]) -> int:
        """Multiply-accumulates of one network call at ``arch`` (no model run)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- hooks
    def check_rules(self, arch: Arch) -> None:
        """Raise ValueError naming the rule and the key if ``arch`` breaks a space rule.

        Any other exception (a failed ``assert``, a ``KeyError``...) counts as a broken rule
        too: :meth:`validate` raises it as a ValueError naming the rule, the original as its
        ``__cause__``.
        """

    def repair(self, arch: Arch) -> Arch:
        """Make an arch satisfy the rules (default: copy tied dimensions).

        :meth:`sample` and :meth:`decode` apply it before checking the rules, so a space whose
        repair always succeeds never rejects a draw."""
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
            values[d.name] = to_choice(free[d.name]) if d.name in free else d.full
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
        """A random valid arch: a uniform choice per free dimension, passed through :meth:`repair`.

        A draw that breaks a rule is rejected and drawn again, so without a ``repair`` the
        result is uniform over the valid archs; a valid first draw is returned as is, so a
        space whose draws are all valid uses the rng exactly as one draw.

        Raises:
            ValueError: none of :attr:`max_draws` draws kept the rules (the message names the
                rule the last draw broke).
        """
        error: ValueError | None = None
        for _ in range(self.max_draws):
            free = {d.name: d.choices[int(rng.integers(len(d.choices)))] for d in self.free_dimensions()}
            arch = self.repair(self.complete(free))
            error = self.violation(arch)
            if error is None:
                return arch
        raise ValueError(
            f"sample(): none of {self.max_draws} random draws kept the space's rules; the last one "
            f"broke: {error}. Define repair(arch) to fix a draw, or loosen the rule"
        ) from error

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
            _check_value(d, arch[name])
        for name, d in dims.items():
            if d.tied_to is not None and arch[name] != arch[d.tied_to]:
                rule = d.rule or f"{name} must equal {d.tied_to}"
                raise ValueError(
                    f"{name}: coupling rule broken ({rule}); got {arch[name]!r} but "
                    f"{d.tied_to} is {arch[d.tied_to]!r}"
                )
        try:
            self.check_rules(Arch(arch))
        except Exception as e:  # an assert or a crash in a rule is still a broken rule
            if isinstance(e, ValueError):
                raise
            raise rule_error(e, f"{type(self).__name__}.check_rules") from e

    def violation(self, arch: Mapping[str, Choice]) -> ValueError | None:
        """The error :meth:`validate` raises for ``arch``, or None when it is valid."""
        try:
            self.validate(arch)
        except ValueError as e:
            return e
        return None

    def validate_choices(self, arch: Mapping[str, Choice]) -> None:
        """Raise ValueError naming the key if ``arch`` has a key that is not a dimension or a
        value that is not one of its choices (what :meth:`macs` checks; missing keys, ties and
        rules are :meth:`validate`'s). Costs one dict look-up per key."""
        table = getattr(self, "_diffnas_choice_table", None)
        if table is None:
            table = {d.name: {c: type(c) for c in d.choices} for d in self.dimensions()}
            try:
                object.__setattr__(self, "_diffnas_choice_table", table)
            except AttributeError:  # pragma: no cover - slotted subclasses
                pass
        try:
            items = arch.items()
        except AttributeError:
            raise ValueError(
                f"an arch must be a mapping of dimension name to choice, got {type(arch).__name__}"
            ) from None
        for name, value in items:
            allowed = table.get(name)
            try:
                if allowed is not None and allowed.get(value) is type(value):
                    continue
            except TypeError:  # unhashable value: the slow path names it
                pass
            if allowed is None:
                raise ValueError(f"unknown key {name!r}: not a dimension of this search space")
            _check_value(self._dims_by_name()[name], value)  # numpy scalars pass here

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
        """Inverse of :meth:`encode`; values are rounded to the nearest choice index.

        The rounded arch, passed through :meth:`repair`, is returned when it keeps the rules;
        otherwise the nearest one that does (L1 distance in choice indices, ties in index
        order), looking at up to :attr:`max_draws` archs.

        Raises:
            ValueError: wrong length, or no valid arch among the nearest :attr:`max_draws`.
        """
        free = self.free_dimensions()
        vec = np.asarray(vector, dtype=np.float64).reshape(-1)
        if vec.shape[0] != len(free):
            raise ValueError(f"vector has {vec.shape[0]} entries, the space has {len(free)} free dimensions")
        start = tuple(
            int(np.clip(np.rint(x * (len(d.choices) - 1)), 0, len(d.choices) - 1)) if len(d.choices) > 1 else 0
            for x, d in zip(vec, free)
        )
        arch = self._arch_at(start)
        error = self.violation(arch)
        if error is None:
            return arch
        return self._nearest_valid(vec, start, error)

    def _arch_at(self, indices: Sequence[int]) -> Arch:
        """The repaired arch with the free dimensions at choice ``indices``."""
        free = self.free_dimensions()
        return self.repair(self.complete({d.name: d.choices[i] for d, i in zip(free, indices)}))

    def _nearest_valid(self, vec: np.ndarray, start: tuple[int, ...], error: ValueError) -> Arch:
        """The valid arch nearest ``vec`` in choice-index distance, among :attr:`max_draws`."""
        free = self.free_dimensions()
        sizes = [len(d.choices) for d in free]
        targets = [float(np.clip(x * (n - 1), 0, n - 1)) if n > 1 else 0.0 for x, n in zip(vec, sizes)]
        candidates = indices_by_distance(targets, start, sizes)
        for indices in itertools.islice(candidates, 1, self.max_draws):  # 0: ``start``, checked
            arch = self._arch_at(indices)
            if self.violation(arch) is None:
                return arch
        raise ValueError(
            f"decode(): the nearest {self.max_draws} archs to the vector all break the space's "
            f"rules; the nearest broke: {error}. Define repair(arch) to fix an arch, or loosen the rule"
        ) from error

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


def _check_value(d: Dimension, value: Any) -> None:
    """Raise ValueError naming ``d`` if ``value`` is not one of its choices (type included)."""
    is_bool = isinstance(value, (bool, np.bool_))
    if isinstance(d.full, bool) != is_bool or not (is_bool or isinstance(value, (int, np.integer))):
        raise ValueError(f"{d.name}: choice {value!r} has the wrong type; allowed choices are {list(d.choices)}")
    d.index(value)  # out-of-range -> ValueError naming the key


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
