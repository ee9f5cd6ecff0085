"""The ``diffnas`` command line (also ``python -m nas``).

Every subcommand comes from the registry in :mod:`nas.commands` and shares the options
``--config PATH``, ``--preset NAME``, ``--set key=value`` (repeatable), ``--name``, ``--device``,
``-v/--verbose`` and ``-q/--quiet``. A :class:`~nas.errors.UserError` prints one line
``diffnas: error: <message>`` on stderr and exits with status 2, without a traceback
(``-v`` logs the traceback at DEBUG level); so does a file the command cannot write (a read-only
run folder, a full disk), naming the file. Any other exception is a bug in diffnas: its traceback
is printed, then ``diffnas: internal error: ...`` saying so, and the status is 1. Ctrl-C exits
with 130 and SIGTERM, turned into the same ``KeyboardInterrupt`` so training loops clean up as
they do for Ctrl-C (no ``*.tmp`` checkpoint left behind), with 143. Logging is configured here
and nowhere else.

Example:
    >>> main(["config", "--set", "sampling.num_steps=7"])  # doctest: +ELLIPSIS
    name: default
    ...
    0
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Sequence

from nas.commands import Command, all_commands
from nas.config import ExperimentConfig, list_presets, load_config
from nas.errors import UserError

__all__ = ["build_parser", "config_from_args", "main"]

PROG = "diffnas"
log = logging.getLogger("nas.cli")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("diffnas")
    except Exception:  # noqa: BLE001 - not installed (running from a checkout)
        return "unknown"


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("configuration")
    group.add_argument("--config", metavar="PATH", help="YAML config file (applied over the preset)")
    group.add_argument(
        "--preset", metavar="NAME", help=f"start from a shipped preset ({', '.join(list_presets())})"
    )
    group.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override one config key, value parsed as YAML (repeatable), e.g. --set sampling.num_steps=50",
    )
    group.add_argument("--name", help="run name: outputs go to <run_root>/<name>/ (same as --set name=...)")
    group.add_argument("--device", help="auto, cpu, cuda or cuda:N (same as --set device=...)")
    out = common.add_argument_group("output")
    out.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for all)")
    out.add_argument("-q", "--quiet", action="count", default=0, help="less log output")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The full parser: one sub-parser per registered command, each with the common options."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Mixtures of efficient diffusion experts: intervals, elastic experts, "
        "learned routing and searched allocations under a MACs budget.",
        epilog=f"Run '{PROG} <command> --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    common = _common_options()
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="<command>")
    for command in all_commands().values():
        sub = subparsers.add_parser(
            command.name, help=command.help, description=command.description, parents=[common]
        )
        if command.arguments is not None:
            command.arguments(sub)
        sub.set_defaults(_command=command)
    return parser


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """Resolve the config from the common options (preset < --config < --set < --name/--device)."""
    cfg = load_config(args.config, list(args.overrides or ()), preset=args.preset)
    changes = {}
    if args.name is not None:
        changes["name"] = args.name
    if args.device is not None:
        changes["device"] = args.device
    return dataclasses.replace(cfg, **changes) if changes else cfg


class _Handler(logging.StreamHandler):
    """Marker class: the one handler the CLI installs (replaced on every ``main`` call)."""


def _configure_logging(verbosity: int) -> None:
    level = logging.INFO if verbosity == 0 else logging.DEBUG if verbosity > 0 else logging.WARNING
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _Handler):
            root.removeHandler(handler)
    handler = _Handler(sys.stderr)
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if verbosity > 0 else "%(message)s"
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)
    # third-party chatter stays at WARNING unless -vv
    for name in ("PIL", "matplotlib", "urllib3", "filelock", "fsspec", "httpx", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbosity > 1 else logging.WARNING)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, like Ctrl-C's ``KeyboardInterrupt``."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While the command runs, SIGTERM raises :class:`Terminated` (main thread only; restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_WRITE_ERRNOS = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                 errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on the device",
                 errno.EDQUOT: "disk quota exceeded"}


def _environment_error(err: OSError) -> str | None:
    """One line for an OSError that is the machine's, not diffnas's (permissions, full disk), else None."""
    what = _WRITE_ERRNOS.get(err.errno or -1)
    if what is None:
        return None
    name = err.filename if err.filename is not None else "a file"
    return (f"cannot write {name}: {what}; make the run folder writable (or free space), or write the "
            f"run elsewhere with --set run_root=DIR / --name NAME")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 internal error, 2 user error, 130 Ctrl-C,
    143 SIGTERM).

    ``--help`` and ``--version`` return 0; argparse usage errors return 2.
    """
    with _sigterm_as_interrupt():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    verbosity = 0
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(list(argv) if argv is not None else None)
        except SystemExit as exc:  # --help, --version, usage errors
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        command: Command | None = getattr(args, "_command", None)
        if command is None:
            parser.print_usage(sys.stderr)
            sys.stderr.write(f"{PROG}: error: choose a command (see '{PROG} --help')\n")
            return 2
        verbosity = int(args.verbose) - int(args.quiet)
        _configure_logging(verbosity)
        cfg = config_from_args(args)
        if cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
        return int(command.func(cfg, args) or 0)
    except UserError as err:
        if verbosity > 0:
            log.debug("user error", exc_info=True)
        sys.stderr.write(f"{PROG}: error: {_one_line(err)}\n")
        return 2
    except Terminated:
        sys.stderr.write(f"{PROG}: terminated (SIGTERM); rerun the same command to continue\n")
        return 143
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except OSError as err:
        line = _environment_error(err)
        if line is None:
            return _internal_error(err)
        if verbosity > 0:
            log.debug("environment error", exc_info=True)
        sys.stderr.write(f"{PROG}: error: {line}\n")
        return 2
    except Exception as err:  # noqa: BLE001 - anything else is a bug: show where
        return _internal_error(err)


def _internal_error(err: BaseException) -> int:
    traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    sys.stderr.write(f"{PROG}: internal error (a bug in diffnas, not in your input; please report it with "
                     f"the traceback above): {_one_line(err)}\n")
    return 1
