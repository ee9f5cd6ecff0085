"""Files of a search: the Optuna storage (:func:`open_storage`), the lazy Optuna import, and the
locked appends and folder lock that keep several processes from clobbering each other.

This is the only module of the project that imports ``optuna`` (lazily, in :func:`import_optuna`);
the other search modules get it from there.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from typing import Any

from nas.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["append_line", "import_optuna", "lock_folder", "open_storage"]


def import_optuna() -> Any:
    """Import optuna lazily (the only place in the project that does); its per-trial INFO
    chatter is turned down to WARNING (our own log says what matters)."""
    import optuna

    global _OPTUNA_QUIET
    if not _OPTUNA_QUIET:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        _OPTUNA_QUIET = True
    return optuna


_OPTUNA_QUIET = False


def open_storage(spec: str, search_dir: str | os.PathLike[str]) -> tuple[Any, str]:
    """Open the Optuna storage named by ``spec``; returns ``(storage, description)``.

    ``sqlite`` -> ``search_dir/study.db``; ``journal`` -> ``search_dir/journal.log``; a URL with
    ``://`` is an RDB URL; a path ending in ``.db`` / ``.sqlite`` is SQLite, ``.log`` / ``.journal``
    a journal file. ``description`` is what to hand to ``optuna-dashboard``.
    """
    optuna = import_optuna()
    folder = Path(search_dir)
    folder.mkdir(parents=True, exist_ok=True)
    text = spec.strip()
    if text == "sqlite":
        text = str(folder / "study.db")
    elif text == "journal":
        text = str(folder / "journal.log")
    if "://" in text:
        url = text
    elif text.endswith((".db", ".sqlite", ".sqlite3")):
        url = f"sqlite:///{Path(text).resolve()}"
    elif text.endswith((".log", ".journal", ".jsonl")):
        path = Path(text).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(path))), str(path)
    else:
        raise UserError(
            f"search.storage {spec!r} is not 'sqlite', 'journal', an Optuna storage URL, "
            "or a file path ending in .db or .log"
        )
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        db = url[len("sqlite:///"):]
        Path(db).parent.mkdir(parents=True, exist_ok=True)
        kwargs["engine_kwargs"] = {"creator": functools.partial(_sqlite_connect, db)}
    try:
        return optuna.storages.RDBStorage(url, **kwargs), url
    except Exception as err:  # noqa: BLE001 - driver errors vary by backend
        raise UserError(f"cannot open the Optuna storage {url!r}: {err}") from None


def _sqlite_connect(path: str) -> Any:
    """SQLite connection in WAL mode with ``synchronous=NORMAL``: a commit survives the process
    being killed (what resuming needs) without an fsync per Optuna write (Optuna commits every
    parameter and attribute separately; with fsync each costs ~20 ms on a slow disk)."""
    import sqlite3

    conn = sqlite3.connect(path, timeout=60, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def append_line(path: Path, line: str) -> None:
    """Append one line under an advisory lock (several worker processes may write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def lock_folder(folder: Path) -> int:
    """Take the advisory lock ``folder/.lock`` (one driver per search folder at a time) and
    write who holds it into the file; returns the open descriptor (closing it releases the
    lock). :class:`UserError` naming the holder when another process has it."""
    path = folder / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.read(fd, 200).decode(errors="replace").strip()
            finally:
                os.close(fd)
            raise UserError(
                f"another search is running in {folder} ({holder or 'unknown process'}); "
                "wait for it or stop it before resuming"
            ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
    return fd
