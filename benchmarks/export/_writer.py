"""Writing the exported folder: checks first, a temporary sibling, a load-back check, a rename."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.export._card import card_facts, model_card
from benchmarks.export._select import Selection, select_row
from benchmarks.export._text import add_text_parts, find_text_parts
from nas.methods import budget_key
from search_spaces.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["MANIFEST", "ExportResult", "export_pipeline"]

#: the export's own record in the folder: facts and the files it wrote
MANIFEST = "diffnas_export.json"


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_pipeline` wrote.

    Attributes:
        folder: the exported pipeline folder.
        method, budget_ratio: the exported row.
        facts: the model card's facts (the ``diffnas`` block of its YAML metadata).
        files: files written, relative to ``folder``.
    """

    folder: Path
    method: str
    budget_ratio: float
    facts: dict[str, Any]
    files: tuple[str, ...]


def _pipeline_components(folder: Path) -> list[str]:
    """The component folders ``model_index.json`` of ``folder`` names (``mixture``, ``scheduler``, ...)."""
    index = folder / "model_index.json"
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{index} cannot be read ({exc}); rerun `diffnas finetune` for this allocation") from None
    if not isinstance(data, dict) or "mixture" not in data:
        raise UserError(f"{index} is not a MixturePipeline's; rerun `diffnas finetune` for this allocation")
    comps = [k for k, v in data.items() if not k.startswith("_") and isinstance(v, list) and v and v[0] is not None]
    for c in comps:
        if not (folder / c).is_dir():
            raise UserError(f"{folder / c} is missing (model_index.json names it); rerun `diffnas finetune`")
    return comps


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def _previous_export(folder: Path) -> frozenset[str]:
    """Files a previous export wrote in ``folder`` (its manifest lists them), else nothing."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return frozenset()
    listed = set(data.get("files") or []) if isinstance(data, dict) else set()
    return frozenset(f for f in _files(folder) if f in listed or f == MANIFEST)


def _run_text(path: Path) -> str:
    if not path.is_absolute():
        return path.as_posix()
    return f"runs/{path.name}" if path.parent.name == "runs" else "RUN_DIR"


def export_pipeline(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *,
                    method: str | None = None, budget: float | None = None, max_macs_ratio: float | None = None,
                    max_latency_ms: float | None = None, force: bool = False, command: str | None = None,
                    check_load: bool = True) -> ExportResult:
    """Export one benchmarked model of ``run_dir`` as a pipeline folder with a model card (see
    :mod:`benchmarks.export`).

    Args:
        run_dir: the run folder (its ``results.jsonl`` holds the bench rows).
        out: the folder to write (default ``RUN_DIR/export/<method>-<budget>``).
        method, budget: the row to export; or
        max_macs_ratio, max_latency_ms: export the lowest-FID exportable row within these limits.
        force: write into an existing non-empty ``out`` (only a previous export's files are replaced).
        command: the command line recorded in the card (default: the equivalent ``diffnas export``).
        check_load: load the written folder back with ``MixturePipeline.from_pretrained`` before
            it is renamed into place.

    Raises:
        UserError: a damaged run file, no such row, a row that is not a pipeline folder, an
            existing non-empty ``out`` without ``force``, or a folder that does not load back.
    """
    from benchmarks.report import build_summary, load_run  # the report's checked reading and rows

    data = load_run(run_dir)
    summary = build_summary(data)
    run = data.path

    def exportable(r: Mapping[str, Any]) -> bool:
        return bool(r.get("model_path")) and (run / str(r["model_path"]) / "model_index.json").is_file()

    def why_not(r: Mapping[str, Any]) -> str:
        if r["method"] == "fewer_steps":
            return f"it is the base model ({run / 'base'}) sampled with num_inference_steps={r.get('num_steps')}"
        if r["method"] == "steps":
            return (f"it is the base model ({run / 'base'}) sampled along the step schedule of "
                    f"{run / 'allocations' / ('steps-' + budget_key(r.get('budget_ratio')) + '.json')}")
        if r.get("model_path"):
            return f"its model {run / str(r['model_path'])} is not a MixturePipeline folder (no model_index.json)"
        return "it has no saved model"

    sel = Selection(method, budget, max_macs_ratio, max_latency_ms)
    row = select_row(summary["rows"], sel, exportable, why_not)
    src = run / str(row["model_path"])
    comps = _pipeline_components(src)
    key = budget_key(row["budget_ratio"])
    dest = Path(out) if out is not None else run / "export" / f"{row['method']}-{key}"
    if dest.exists() and not dest.is_dir():
        raise UserError(f"export output {dest} is a file; choose another folder")
    foreign: list[str] = []
    own: frozenset[str] = frozenset()
    if dest.is_dir() and any(dest.iterdir()):
        own = _previous_export(dest)
        foreign = [f for f in _files(dest) if f not in own]
        if not force:
            raise UserError(f"export output {dest} exists and is not empty; choose another folder, or pass --force "
                            "to replace a previous export (files the export did not write are kept)")
    raw = next((r for r in reversed(data.records) if r.get("kind") == "bench" and r.get("method") == row["method"]
                and budget_key(r.get("budget_ratio")) == key and r.get("config_key") == summary["config_key"]), {})
    base = next((r for r in summary["rows"] if r["method"] == "base"), None)
    cmd = command or f"diffnas export {_run_text(Path(run_dir))} --method {row['method']} --budget {key}"
    facts = card_facts(row, raw, summary, base, cmd)
    text_src = find_text_parts(run, src, summary.get("config"))  # a text-to-image run: the base's text parts
    if text_src is not None:
        facts["text_encoder"] = (text_src.relative_to(run).as_posix() if text_src.is_relative_to(run)
                                 else "model.base")

    tmp = dest.parent / f".{dest.name}.export-tmp"
    if tmp.exists():
        shutil.rmtree(tmp)  # a crashed export's leftover
    tmp.mkdir(parents=True)
    try:
        shutil.copy2(src / "model_index.json", tmp / "model_index.json")
        for c in comps:
            shutil.copytree(src / c, tmp / c)
        if text_src is not None:
            add_text_parts(text_src, tmp)
        (tmp / "README.md").write_text(model_card(facts, data.config_text, dest.name))
        files = sorted([*_files(tmp), MANIFEST])
        (tmp / MANIFEST).write_text(json.dumps({"format": "diffnas-export/1", "facts": facts, "files": files},
                                               indent=2, sort_keys=True) + "\n")
        if check_load:
            _check_loads(tmp, prompt=text_src is not None)
        _publish(tmp, dest, foreign, own, files)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("exported %s-%s to %s", row["method"], key, dest)
    return ExportResult(dest, str(row["method"]), float(row["budget_ratio"]), facts, tuple(files))


def _check_loads(folder: Path, prompt: bool = False) -> None:
    """Load ``folder`` with ``MixturePipeline.from_pretrained``; with ``prompt``, also encode the
    experts' first prompt with its text encoder (one batch of one, one step)."""
    from diffusers.utils.logging import disable_progress_bar, enable_progress_bar

    from experts.expert_folder import quiet_diffusers
    from experts.pipeline import MixturePipeline

    try:
        disable_progress_bar()
        with quiet_diffusers():
            pipe = MixturePipeline.from_pretrained(str(folder))
            if prompt:
                from experts.text_condition import prompt_table

                pipe.set_progress_bar_config(disable=True)
                first = prompt_table(pipe.mixture.experts[0])[0][0]
                pipe(prompt=first, num_inference_steps=1, output_type="pt")
    except Exception as exc:  # noqa: BLE001 - any load failure means the source folder is damaged
        raise UserError(f"the exported pipeline does not load ({type(exc).__name__}: {exc}); its source folder may be "
                        "damaged: rerun `diffnas finetune` for this allocation") from None
    finally:
        enable_progress_bar()


def _publish(tmp: Path, dest: Path, foreign: list[str], own: frozenset[str], files: list[str]) -> None:
    if not foreign:
        old = dest.parent / f".{dest.name}.export-old"
        if old.exists():
            shutil.rmtree(old)
        if dest.exists():
            dest.rename(old)  # empty, or a previous export only
        tmp.rename(dest)
        if old.exists():
            shutil.rmtree(old)
        return
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / rel, target)
    for rel in sorted(own - set(files)):
        (dest / rel).unlink(missing_ok=True)
