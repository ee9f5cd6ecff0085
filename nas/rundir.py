"""Alias of :mod:`nas.run` for the run directory: import :class:`~nas.run.RunDir` and
:func:`~nas.run.to_jsonable` from :mod:`nas.run`."""

from nas.run import RunDir, to_jsonable

__all__ = ["RunDir", "to_jsonable"]
