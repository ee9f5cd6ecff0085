"""The error type for mistakes a user can fix (bad config, missing file, invalid arch).

It lives in the lowest package so every package can raise it; the CLI prints it as one line
(no traceback). It subclasses ValueError, so library callers can catch either.
"""


class UserError(ValueError):
    """A problem in the user's input, with a message that says what to do."""
