"""Value rules of the config sections: :func:`require` and the error it raises.

A section's ``__post_init__`` calls :func:`require`, which names the key relative to the section;
the conversion (:mod:`nas.config.convert`) prefixes it with the section path.
"""

from __future__ import annotations

import re

from nas.errors import UserError

__all__ = ["ConfigValueError", "is_name", "require"]


class ConfigValueError(UserError):
    """A config value that has the right type but breaks a rule; names the (dotted) key.

    Raised by :func:`require` inside a dataclass's ``__post_init__``; the loader re-raises it with
    the full dotted path (``sampling.num_steps``) so the user knows where to look.
    """

    def __init__(self, key: str, detail: str) -> None:
        self.key = key
        self.detail = detail
        super().__init__(f"config key '{key}' {detail}")


def require(condition: bool, key: str, detail: str) -> None:
    """Raise :class:`ConfigValueError` for ``key`` unless ``condition`` holds.

    Example:
        >>> require(3 >= 1, "num_steps", "must be >= 1")
    """
    if not condition:
        raise ConfigValueError(key, detail)


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_name(text: str) -> bool:
    """Whether ``text`` can become a folder or study name (run name, study prefix): letters,
    digits, ``.``, ``_``, ``-``, starting with a letter or digit.

    Example:
        >>> is_name("demo-1"), is_name("../x")
        (True, False)
    """
    return bool(_NAME_RE.match(text))
