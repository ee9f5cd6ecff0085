"""Search spaces: the API (`SearchSpace`, `Dimension`, `Arch`), the elastic UNet supernet,
the MACs cost model, and materialisation of a sub-network into a plain, smaller model."""

from search_spaces.base import Arch, Choice, Dimension, ProductSpace, SearchSpace, SimpleSpace

__all__ = ["Arch", "Choice", "Dimension", "ProductSpace", "SearchSpace", "SimpleSpace"]
