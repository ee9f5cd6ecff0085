"""Encoding of architectures: :class:`Dimension` (one elastic knob and its choices),
:class:`Arch` (an immutable, hashable, JSON round-tripping choice per dimension), the
``Choice`` type and :func:`to_choice`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

__all__ = ["Arch", "Choice", "Dimension", "to_choice"]

Choice = Union[int, bool]


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
        object.__setattr__(self, "choices", tuple(to_choice(c) for c in choices))

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
            if c == value and type(c) is type(to_choice(value)):
                return i
        raise ValueError(
            f"{self.name}: choice {value!r} is out of range; allowed choices are {list(self.choices)}"
        )


def to_choice(value: Any) -> Choice:
    """Plain Python int/bool (numpy scalars and JSON round-trips give other types).

    Raises:
        ValueError: ``value`` is neither an int nor a bool.
    """
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
        self._items: dict[str, Choice] = {k: to_choice(items[k]) for k in sorted(items)}
        self._hash: int | None = None

    def __getitem__(self, key: str) -> Choice:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def items(self):  # type: ignore[override]
        """The (name, choice) pairs, sorted by name (the dict's own view: the MACs check reads it
        on every call, and Mapping's generic view would look every key up again)."""
        return self._items.items()

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
