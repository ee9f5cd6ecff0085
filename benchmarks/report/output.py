"""Where the report goes: checked before anything is written, built in a temporary sibling, then
moved into place. Nothing the report did not write is ever deleted.

- The output folder may be missing, empty, or a previous report (its ``summary.json`` lists
  the files it wrote): the new report replaces it by renames (old folder aside, new one in,
  old one removed).
- A folder holding files the report did not write is refused with one line, unless forced: then
  the report's files are moved in beside the foreign ones, and only files a previous report
  wrote (and the new one does not) are removed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from search_spaces.errors import UserError

__all__ = ["REPORT_FILES", "OutDir", "check_out_dir", "publish", "temp_dir"]

#: files every report version writes at its top level (besides ``grids/*.png``)
REPORT_FILES = frozenset({"index.html", "report.md", "summary.json", "pareto.png", "search_trials.png",
                          "similarity.png", "allocations.png"})


class OutDir:
    """The checked output folder: its path, whether it holds foreign files, and the files a
    previous report wrote there (relative paths)."""

    def __init__(self, path: Path, foreign: tuple[str, ...], own: frozenset[str]) -> None:
        self.path = path
        self.foreign = foreign
        self.own = own


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def _previous_report_files(folder: Path) -> frozenset[str]:
    """Files of ``folder`` that a previous report wrote: those its ``summary.json`` lists (and the
    report's own names), or nothing when there is no readable report summary."""
    s = folder / "summary.json"
    try:
        data = json.loads(s.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return frozenset()
    if not isinstance(data, dict) or not str(data.get("schema", "")).startswith("diffnas-report/"):
        return frozenset()
    listed = {str(f) for f in data.get("files") or [] if isinstance(f, str)}
    present = _files(folder)
    return frozenset(f for f in present if f in listed or f in REPORT_FILES
                     or (f.startswith("grids/") and f.endswith(".png") and f.count("/") == 1))


def check_out_dir(out: Path, force: bool) -> OutDir:
    """Check ``out`` before any work: refuse (one line) a file, or a folder with files the report
    did not write unless ``force``."""
    if out.exists() and not out.is_dir():
        raise UserError(f"report output {out} is a file, not a folder; choose another --out")
    if not out.exists():
        return OutDir(out, (), frozenset())
    own = _previous_report_files(out)
    foreign = tuple(f for f in _files(out) if f not in own)
    if foreign and not force:
        raise UserError(
            f"report output {out} holds {len(foreign)} file(s) the report did not write (e.g. {foreign[0]}); "
            "choose another --out, or pass --force to write the report beside them (nothing of theirs is deleted)")
    return OutDir(out, foreign, own)


def temp_dir(out: Path) -> Path:
    """A fresh temporary sibling of ``out`` to build the report in (a leftover of a crashed
    report, same name, is removed: the report made it)."""
    tmp = out.parent / f".{out.name}.report-tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: Path, target: OutDir) -> None:
    """Move the finished report in ``tmp`` to ``target.path`` (see the module docstring)."""
    out = target.path
    if not target.foreign:
        old = out.parent / f".{out.name}.report-old"
        if old.exists():
            shutil.rmtree(old)  # a leftover of a crashed swap: a previous report
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        if old.exists():
            shutil.rmtree(old)
        return
    new = _files(tmp)
    for rel in new:
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / rel, dst)
    for rel in sorted(target.own - set(new)):
        (out / rel).unlink(missing_ok=True)
    grids = out / "grids"
    if grids.is_dir() and not any(grids.iterdir()):
        grids.rmdir()
    shutil.rmtree(tmp)
