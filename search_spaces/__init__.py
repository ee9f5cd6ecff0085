"""Search spaces: the API (`SearchSpace`, `Dimension`, `Arch`), the elastic UNet supernet,
the MACs cost model, and materialisation of a sub-network into a plain, smaller model.

Public modules: :mod:`search_spaces.base` (the API), :mod:`search_spaces.unet_space` (the
built-in UNet space), :mod:`search_spaces.elastic_unet` (the supernet),
:mod:`search_spaces.materialize` (plain sub-networks, saved and loaded),
:mod:`search_spaces.macs` (the MACs cost model), :mod:`search_spaces.uniform` (the uniform-width
baseline arch), :mod:`search_spaces.errors` (:class:`UserError`) and
:mod:`search_spaces.testing` (the contract suite a space runs with pytest). Modules whose name
starts with ``_`` are implementation.
"""

from search_spaces.base import Arch, Choice, Dimension, ProductSpace, SearchSpace, SimpleSpace
from search_spaces.errors import UserError

__all__ = [
    "Arch",
    "Choice",
    "Dimension",
    "ElasticUNet",
    "MacsCount",
    "ProductSpace",
    "SearchSpace",
    "ShortcutResnet",
    "SimpleSpace",
    "SkippedLayer",
    "SpaceOptions",
    "UNetSpace",
    "UniformArch",
    "UserError",
    "arch_of",
    "count_macs",
    "count_unet_macs",
    "load_materialized",
    "save_materialized",
    "trajectory_macs",
    "trajectory_macs_for",
    "uniform_arch",
]

_LAZY = {
    "ElasticUNet": "search_spaces.elastic_unet",
    "MacsCount": "search_spaces.macs",
    "SpaceOptions": "search_spaces.unet_space",
    "UNetSpace": "search_spaces.unet_space",
    "ShortcutResnet": "search_spaces.materialize",
    "SkippedLayer": "search_spaces.materialize",
    "UniformArch": "search_spaces.uniform",
    "arch_of": "search_spaces.materialize",
    "count_macs": "search_spaces.macs",
    "count_unet_macs": "search_spaces.macs",
    "load_materialized": "search_spaces.materialize",
    "save_materialized": "search_spaces.materialize",
    "trajectory_macs": "search_spaces.macs",
    "trajectory_macs_for": "search_spaces.macs",
    "uniform_arch": "search_spaces.uniform",
}


def __getattr__(name: str):
    # the supernet and the MACs counter pull in torch, diffusers and torch-pruning: import
    # them only when asked for
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'search_spaces' has no attribute {name!r}")
