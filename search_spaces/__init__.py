"""Search spaces: the API (`SearchSpace`, `Dimension`, `Arch`), the elastic UNet supernet,
the MACs cost model, and materialisation of a sub-network into a plain, smaller model."""

from search_spaces.base import Arch, Choice, Dimension, ProductSpace, SearchSpace, SimpleSpace
from search_spaces.errors import UserError

__all__ = [
    "Arch",
    "Choice",
    "Dimension",
    "ElasticUNet",
    "ProductSpace",
    "SearchSpace",
    "ShortcutResnet",
    "SimpleSpace",
    "SpaceOptions",
    "UNetSpace",
    "UserError",
    "load_materialized",
    "save_materialized",
]

_LAZY = {
    "ElasticUNet": "search_spaces.elastic_unet",
    "SpaceOptions": "search_spaces.unet_space",
    "UNetSpace": "search_spaces.unet_space",
    "ShortcutResnet": "search_spaces.materialize",
    "load_materialized": "search_spaces.materialize",
    "save_materialized": "search_spaces.materialize",
}


def __getattr__(name: str):
    # the supernet pulls in diffusers and torch-pruning: import them only when asked for
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'search_spaces' has no attribute {name!r}")
