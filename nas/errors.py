"""User-facing errors for the ``nas`` package.

:class:`UserError` lives in :mod:`search_spaces.errors` (the lowest package) so every package
can raise it; it is re-exported here for convenience. The CLI prints it as one line
``diffnas: error: <message>`` and exits with status 2.

Example:
    >>> from nas.errors import UserError
    >>> issubclass(UserError, ValueError)
    True
"""

from search_spaces.errors import UserError

__all__ = ["UserError"]
