"""Spaces built from parts: :class:`SimpleSpace` (a list of dimensions and a MACs function,
the few-lines user space) and :class:`ProductSpace` (spaces side by side, keys prefixed
``<part>/``, MACs a weighted sum).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

from search_spaces._arch import Arch, Choice, Dimension
from search_spaces._rules import checks_own_arch, rule_error
from search_spaces._search_space import SearchSpace

__all__ = ["ProductSpace", "SimpleSpace"]


class SimpleSpace(SearchSpace):
    """A space from a list of dimensions and a MACs function: the few-lines user space.

    Args:
        dims: the dimensions.
        macs_fn: MACs of an arch (a plain dict-like ``Arch``).
        rules: optional callables ``rule(arch)`` raising ValueError for invalid archs (any
            other exception, such as a failed ``assert``, is reported as a ValueError naming
            the rule).
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
            try:
                rule(arch)
            except Exception as e:
                if isinstance(e, ValueError):
                    raise
                raise rule_error(e, f"rule {getattr(rule, '__qualname__', repr(rule))}") from e


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

    def split_values(self, values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Per-part dicts of any per-dimension values (choices, relaxed weights), prefix removed;
        every part is present (empty when ``values`` has none of its dimensions).

        Raises:
            ValueError: a key that is not ``<part>/<dimension>`` of this space.
        """
        out: dict[str, dict[str, Any]] = {p: {} for p in self.parts}
        for k, v in values.items():
            p, sep, rest = k.partition(self.SEP)
            if not sep or p not in out:
                raise ValueError(f"unknown key {k!r}: not a dimension of this search space")
            out[p][rest] = v
        return out

    def split(self, arch: Mapping[str, Choice]) -> dict[str, Arch]:
        """Per-part archs (prefix removed)."""
        return {p: Arch(v) for p, v in self.split_values(arch).items()}

    def join(self, archs: Mapping[str, Mapping[str, Choice]]) -> Arch:
        """Inverse of :meth:`split`."""
        values: dict[str, Choice] = {}
        for p, a in archs.items():
            if p not in self.parts:
                raise ValueError(f"unknown part {p!r}; parts are {list(self.parts)}")
            values.update({f"{p}{self.SEP}{k}": v for k, v in a.items()})
        return Arch(values)

    @checks_own_arch  # each part's macs() checks its keys: checking here too would double the cost
    def macs(self, arch: Mapping[str, Choice]) -> int:
        total = 0
        for p, a in self.split(arch).items():
            try:
                part_macs = self.parts[p].macs(a)
            except ValueError as e:
                self.validate_choices(arch)  # a bad key or choice: name it with its part prefix
                raise ValueError(f"{p}{self.SEP}{e}") from None
            total += self.weights[p] * part_macs
        return int(round(total))

    def macs_relaxed(self, weights: Mapping[str, "torch.Tensor"]) -> "torch.Tensor":
        """Weighted sum of the parts' own :meth:`macs_relaxed` (so a part's exact override,
        such as :class:`~search_spaces.UNetSpace`'s, is used); missing dimensions count as full."""
        import torch

        total = torch.zeros((), dtype=torch.float64)
        for p, part_weights in self.split_values(weights).items():
            part = self.parts[p]
            part_macs = part.macs_relaxed(part_weights) if part_weights else torch.tensor(
                float(part.macs(part.full())), dtype=torch.float64)
            total = total + self.weights[p] * part_macs.to(torch.float64)
        return total

    def check_rules(self, arch: Arch) -> None:
        for p, a in self.split(arch).items():
            part = self.parts[p]
            try:
                part.check_rules(a)
            except ValueError as e:
                raise ValueError(f"{p}{self.SEP}{e}") from None
            except Exception as e:  # an assert in a part's rule: a ValueError naming part and rule
                raise ValueError(f"{p}{self.SEP}{rule_error(e, f'{type(part).__name__}.check_rules')}") from e

    def repair(self, arch: Arch) -> Arch:
        return self.join({p: self.parts[p].repair(a) for p, a in self.split(arch).items()})
