"""The search-space API: dimensions, architectures and spaces.

A *search space* is a finite set of named :class:`Dimension` s, each with a tuple of choices,
plus rules that couple them. An :class:`Arch` is one choice per dimension. Every allocation
method (the routing agent, the Optuna search, the baselines) talks to a space only through
this API, so a user-defined space works with all of them.

Example:
    >>> import numpy as np
    >>> from search_spaces import Dimension, SimpleSpace
    >>> space = SimpleSpace(
    ...     [Dimension("block.width", (16, 32, 64)), Dimension("block.depth", (False, True))],
    ...     macs_fn=lambda a: (a["block.width"] * 1000 if a["block.depth"] else 0),
    ... )
    >>> space.macs(space.full())
    64000
    >>> arch = space.sample(np.random.default_rng(0))
    >>> space.validate(arch)
    >>> space.decode(space.encode(arch)) == arch
    True
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:  # pragma: no cover
    import torch

import numpy as np

Choice = Union[int, bool]

__all__ = [
    "Arch",
    "Choice",
    "Dimension",
    "SearchSpace",
    "SimpleSpace",
    "ProductSpace",
]


@dataclass(frozen=True)
class Dimension:
    """One elastic knob of a search space.

    Attributes:
        name: unique key, named after the model part it controls (``down.1.resnets.0.width``).
        choices: the allowed values, in increasing cost order; the last is the full model.
        kind: ``"width"``, ``"heads"``, ``"depth"`` or any user label (for grouping/plots).
        tied_to: name of another dimension whose value this one must equal (a coupling rule,
            such as a UNet up-block layer that consumes its down-block partner's skip
            connection). Tied dimensions are not free: encoders and samplers skip them.
        rule: human-readable statement of the coupling, used in error messages.
    """

    name: str
    choices: tuple[Choice, ...]
    kind: str = "width"
    tied_to: str | None = None
    rule: str = ""

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"dimension name must be a non-empty string, got {self.name!r}")
        choices = tuple(self.choices)
        if not choices:
            raise ValueError(f"dimension {self.name!r} has no choices")
        if len(set(choices)) != len(choices):
            raise ValueError(f"dimension {self.name!r} has duplicate choices {choices}")
        for c in choices:
            if not isinstance(c, (int, bool, np.integer)):
                raise ValueError(
                    f"dimension {self.name!r}: choices must be int or bool, got {type(c).__name__}"
                )
        object.__setattr__(self, "choices", tuple(_py(c) for c in choices))

    @property
    def full(self) -> Choice:
        """The choice of the full (largest) model."""
        return self.choices[-1]

    @property
    def smallest(self) -> Choice:
        """The cheapest choice."""
        return self.choices[0]

    def index(self, value: Choice) -> int:
        """Position of ``value`` among the choices (ValueError naming the key otherwise)."""
        for i, c in enumerate(self.choices):
            if c == value and type(c) is type(_py(value)):
                return i
        raise ValueError(
            f"{self.name}: choice {value!r} is out of range; allowed choices are {list(self.choices)}"
        )


def _py(value: Any) -> Choice:
    """Plain Python int/bool (numpy scalars and JSON round-trips give other types)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    raise ValueError(f"choice must be an int or bool, got {value!r} ({type(value).__name__})")


class Arch(Mapping[str, Choice]):
    """An immutable, hashable mapping from dimension name to choice.

    Keys are kept sorted so that equal archs hash and serialise identically.

    Example:
        >>> a = Arch({"b.width": 32, "a.depth": True})
        >>> Arch.from_json(a.to_json()) == a
        True
        >>> list(a)
        ['a.depth', 'b.width']
    """

    __slots__ = ("_items", "_hash")

    def __init__(self, values: Mapping[str, Choice] | Iterable[tuple[str, Choice]] = ()) -> None:
        items = dict(values)
        for k in items:
            if not isinstance(k, str):
                raise ValueError(f"arch keys must be strings, got {k!r}")
        self._items: dict[str, Choice] = {k: _py(items[k]) for k in sorted(items)}
        self._hash: int | None = None

    def __getitem__(self, key: str) -> Choice:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(tuple((k, type(v).__name__, v) for k, v in self._items.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Arch):
            return self._items == other._items and all(
                type(v) is type(other._items[k]) for k, v in self._items.items()
            )
        if isinstance(other, Mapping):
            return self == Arch(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"Arch({self._items!r})"

    def replace(self, **_: Any) -> "Arch":  # pragma: no cover - keys contain dots; use with_values
        raise TypeError("use Arch.with_values({...}): dimension names contain dots")

    def with_values(self, values: Mapping[str, Choice]) -> "Arch":
        """A copy with some choices changed."""
        merged = dict(self._items)
        merged.update(values)
        return Arch(merged)

    def to_dict(self) -> dict[str, Choice]:
        """Plain dict (JSON-ready)."""
        return dict(self._items)

    def to_json(self) -> str:
        """Stable JSON text (sorted keys)."""
        return json.dumps(self._items, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Arch":
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("an Arch JSON must be an object mapping dimension names to choices")
        return cls(data)


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


class SimpleSpace(SearchSpace):
    """A space from a list of dimensions and a MACs function: the few-lines user space.

    Args:
        dims: the dimensions.
        macs_fn: MACs of an arch (a plain dict-like ``Arch``).
        rules: optional callables ``rule(arch)`` raising ValueError for invalid archs.
    """

    def __init__(
        self,
        dims: Sequence[Dimension],
        macs_fn: Callable[[Arch], int],
        rules: Sequence[Callable[[Arch], None]] = (),
    ) -> None:
        self._dims = tuple(dims)
        self._macs_fn = macs_fn
        self._rules = tuple(rules)
        self._dims_by_name()  # duplicate names fail here, not later

    def dimensions(self) -> tuple[Dimension, ...]:
        return self._dims

    def macs(self, arch: Mapping[str, Choice]) -> int:
        return int(self._macs_fn(Arch(arch)))

    def check_rules(self, arch: Arch) -> None:
        for rule in self._rules:
            rule(arch)


@dataclass(frozen=True)
class _Part:
    prefix: str
    space: SearchSpace


class ProductSpace(SearchSpace):
    """Spaces side by side, keys prefixed ``<part>/``: per block, or per expert of a mixture.

    MACs are a weighted sum of the parts' MACs (weights default to 1; for a mixture of
    interval experts, the weight of an expert is the number of sampling steps it serves, so
    ``macs`` is the trajectory MACs).

    Example:
        >>> from search_spaces import Dimension, SimpleSpace, ProductSpace
        >>> s = SimpleSpace([Dimension("w", (1, 2))], macs_fn=lambda a: 10 * a["w"])
        >>> mix = ProductSpace({"e0": s, "e1": s}, weights={"e0": 3, "e1": 1})
        >>> mix.macs(mix.full())
        80
        >>> mix.split(mix.full())["e1"]
        Arch({'w': 2})
    """

    SEP = "/"

    def __init__(self, parts: Mapping[str, SearchSpace], weights: Mapping[str, float] | None = None) -> None:
        if not parts:
            raise ValueError("a ProductSpace needs at least one part")
        for p in parts:
            if self.SEP in p:
                raise ValueError(f"part name {p!r} must not contain {self.SEP!r}")
        self.parts: dict[str, SearchSpace] = dict(parts)
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(parts))
        if unknown:
            raise ValueError(f"weight given for unknown part {unknown[0]!r}")
        self.weights: dict[str, float] = {p: float(weights.get(p, 1.0)) for p in parts}
        dims: list[Dimension] = []
        for p, space in self.parts.items():
            for d in space.dimensions():
                dims.append(
                    Dimension(
                        f"{p}{self.SEP}{d.name}",
                        d.choices,
                        d.kind,
                        None if d.tied_to is None else f"{p}{self.SEP}{d.tied_to}",
                        d.rule,
                    )
                )
        self._dims = tuple(dims)

    def dimensions(self) -> tuple[Dimension, ...]:
        return self._dims

    def split(self, arch: Mapping[str, Choice]) -> dict[str, Arch]:
        """Per-part archs (prefix removed)."""
        out: dict[str, dict[str, Choice]] = {p: {} for p in self.parts}
        for k, v in arch.items():
            p, sep, rest = k.partition(self.SEP)
            if not sep or p not in out:
                raise ValueError(f"unknown key {k!r}: not a dimension of this search space")
            out[p][rest] = v
        return {p: Arch(v) for p, v in out.items()}

    def join(self, archs: Mapping[str, Mapping[str, Choice]]) -> Arch:
        """Inverse of :meth:`split`."""
        values: dict[str, Choice] = {}
        for p, a in archs.items():
            if p not in self.parts:
                raise ValueError(f"unknown part {p!r}; parts are {list(self.parts)}")
            values.update({f"{p}{self.SEP}{k}": v for k, v in a.items()})
        return Arch(values)

    def macs(self, arch: Mapping[str, Choice]) -> int:
        parts = self.split(arch)
        return int(round(sum(self.weights[p] * self.parts[p].macs(a) for p, a in parts.items())))

    def macs_relaxed(self, weights: Mapping[str, "torch.Tensor"]) -> "torch.Tensor":
        """Weighted sum of the parts' own :meth:`macs_relaxed` (so a part's exact override,
        such as :class:`~search_spaces.UNetSpace`'s, is used); missing dimensions count as full."""
        import torch

        per_part: dict[str, dict[str, torch.Tensor]] = {p: {} for p in self.parts}
        for k, w in weights.items():
            p, sep, rest = k.partition(self.SEP)
            if not sep or p not in per_part:
                raise ValueError(f"unknown or tied dimension {k!r} in relaxed weights")
            per_part[p][rest] = w
        total = torch.zeros((), dtype=torch.float64)
        for p, part_weights in per_part.items():
            part = self.parts[p]
            part_macs = part.macs_relaxed(part_weights) if part_weights else torch.tensor(
                float(part.macs(part.full())), dtype=torch.float64)
            total = total + self.weights[p] * part_macs.to(torch.float64)
        return total

    def check_rules(self, arch: Arch) -> None:
        for p, a in self.split(arch).items():
            try:
                self.parts[p].check_rules(a)
            except ValueError as e:
                raise ValueError(f"{p}{self.SEP}{e}") from None

    def repair(self, arch: Arch) -> Arch:
        return self.join({p: self.parts[p].repair(a) for p, a in self.split(arch).items()})
