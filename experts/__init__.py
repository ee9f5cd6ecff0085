"""Interval experts: interval discovery, per-interval elastic fine-tuning, the mixture."""

from experts.allocation import Allocation
from experts.intervals import Intervals

__all__ = ["Allocation", "Intervals"]
