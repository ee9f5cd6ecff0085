"""The search-space API: dimensions, architectures and spaces.

A *search space* is a finite set of named :class:`Dimension` s, each with a tuple of choices,
plus rules that couple them. An :class:`Arch` is one choice per dimension. Every allocation
method (the routing agent, the Optuna search, the baselines) talks to a space only through
this API, so a user-defined space works with all of them.

This module gathers the API's public names (they are also exported by :mod:`search_spaces`).

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

from search_spaces._arch import Arch, Choice, Dimension
from search_spaces._compose import ProductSpace, SimpleSpace
from search_spaces._search_space import SearchSpace

__all__ = [
    "Arch",
    "Choice",
    "Dimension",
    "SearchSpace",
    "SimpleSpace",
    "ProductSpace",
]
