"""The search-space API: dimensions, architectures and spaces.

A *search space* is a finite set of named :class:`Dimension` s, each with a tuple of choices,
plus rules that couple them. An :class:`Arch` is one choice per dimension. Every allocation
method (the routing agent, the Optuna search, the baselines) talks to a space only through
this API, so a user-defined space works with all of them.

Where the code lives (everything is importable from this module, as before):
:class:`Dimension`, :class:`Arch` and ``Choice`` in :mod:`search_spaces.arch`;
:class:`SearchSpace` in :mod:`search_spaces.search_space`; :class:`SimpleSpace` and
:class:`ProductSpace` in :mod:`search_spaces.compose`.

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

from search_spaces.arch import Arch, Choice, Dimension, _py  # noqa: F401
from search_spaces.compose import ProductSpace, SimpleSpace, _Part  # noqa: F401
from search_spaces.search_space import SearchSpace, _root  # noqa: F401

__all__ = [
    "Arch",
    "Choice",
    "Dimension",
    "SearchSpace",
    "SimpleSpace",
    "ProductSpace",
]
