"""diffnas's own plugin (entry point ``diffnas.plugins: benchmarks = benchmarks.plugin:register``):
what the benchmarks package adds to ``nas``'s registries, so that nothing in ``nas`` imports it."""

from __future__ import annotations

__all__ = ["register"]


def register() -> None:
    """Register the built-in allocation methods, then the ``bench``/``report`` commands and the
    ``finetune``/``bench``/``report`` stages. Run once by :func:`nas.methods.load_plugins`."""
    from benchmarks.cli import register_cli
    from benchmarks.methods import register_builtin_methods

    register_builtin_methods()
    register_cli()
