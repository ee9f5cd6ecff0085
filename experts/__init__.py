"""Interval experts: interval discovery, per-interval elastic fine-tuning, the mixture."""

from experts.allocation import Allocation
from experts.intervals import Intervals
from experts.mixture_space import MixtureSpace

__all__ = ["Allocation", "Intervals", "MixtureOfExperts", "MixturePipeline", "MixtureSpace"]

_LAZY = {"MixtureOfExperts": "experts.mixture", "MixturePipeline": "experts.pipeline"}


def __getattr__(name: str):
    # the mixture pulls in diffusers: import it only when asked for
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'experts' has no attribute {name!r}")
