"""The report's "Prompts and guidance" section of a text-to-image run, from what the bench stored
(``bench/guidance/guidance.json`` and its grids: :mod:`benchmarks.bench.guidance`); nothing is
sampled here.

- :func:`guidance_summary`: the stored numbers (``summary.json``'s ``guidance``), or None when the
  run has none (any run without a text encoder) or they belong to another bench configuration;
- :func:`copy_guidance_grids`: the grids into ``report/guidance/<name>.png``;
- :func:`guidance_md` / :func:`guidance_html`: the section (prompt accuracy per guidance scale,
  one row per model; the grids with their prompts and guidance scales).

Example:
    >>> guidance_md(None, [])
    []
"""

from __future__ import annotations

import html
import json
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.report.summary import method_label
from search_spaces.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["GUIDANCE_FILE", "copy_guidance_grids", "guidance_html", "guidance_md", "guidance_summary"]

#: where the bench stores it, relative to the run folder
GUIDANCE_FILE = "bench/guidance/guidance.json"
_FORMAT = "diffnas-guidance/1"


def guidance_summary(run: Path, config_key: str | None) -> dict[str, Any] | None:
    """``guidance.json`` of ``run`` checked, without its absolute-free paths changed; None when absent
    or of another config key (logged).

    Raises:
        UserError: the file is there but damaged (one line naming it).
    """
    path = Path(run) / GUIDANCE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} cannot be read ({exc}); delete it and rerun `diffnas bench`") from None
    if not isinstance(data, dict) or data.get("format") != _FORMAT or not isinstance(data.get("models"), list):
        raise UserError(f"{path} is not a diffnas guidance record ({_FORMAT}); delete it and rerun `diffnas bench`")
    if config_key is not None and data.get("config_key") != config_key:
        log.info("%s is of another bench configuration; left out of the report", path)
        return None
    for m in data["models"]:
        if not isinstance(m, dict) or "name" not in m or "grid" not in m:
            raise UserError(f"{path}: a model entry without name/grid; delete it and rerun `diffnas bench`")
    return data


def copy_guidance_grids(run: Path, info: Mapping[str, Any] | None, out: Path) -> list[tuple[Mapping[str, Any], Path]]:
    """Copy each model's grid to ``out/guidance/<name>.png`` (a missing one is logged and left out)."""
    grids: list[tuple[Mapping[str, Any], Path]] = []
    for m in (info or {}).get("models", []):
        src = Path(run) / str(m["grid"])
        if not src.is_file():
            log.warning("guidance grid %s is missing; left out", src)
            continue
        dst = out / "guidance" / f"{m['name']}.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        grids.append((m, dst))
    return grids


def _model_label(m: Mapping[str, Any]) -> str:
    if m.get("budget_ratio") is None:
        return "base model"
    return f"{method_label(str(m['method']))}, budget {float(m['budget_ratio']):g}"


def _intro(info: Mapping[str, Any]) -> str:
    return (f"Text-to-image: each grid row is one prompt at one classifier-free guidance scale "
            f"({', '.join(f'{float(g):g}' for g in info.get('grid_scales', []))}; the empty prompt is the "
            f"unconditional half), {info.get('grid_images')} images with fixed seeds (seed 0, the same noise in "
            f"every row), {info.get('num_steps')} {info.get('sampler')} steps (a mixture: its own step schedule "
            "when it has one). Mixtures are the run's mixture folders saved with the base model's text encoder "
            "and tokenizer (`MixturePipeline.save_pretrained`) and sampled after "
            "`MixturePipeline.from_pretrained`.")


def _accuracy_rows(info: Mapping[str, Any]) -> tuple[list[str], list[tuple[Mapping[str, Any], list[float | None]]]]:
    scales = [f"{float(g):g}" for g in info.get("accuracy_scales", [])]
    rows = [(m, [(m.get("prompt_accuracy") or {}).get(s) for s in scales]) for m in info.get("models", [])
            if m.get("prompt_accuracy")]
    return scales, rows


def _acc_note(info: Mapping[str, Any]) -> str:
    seeds = info.get("seeds") or []
    return (f"Prompt accuracy: how often the digit classifier recognises the prompted digit (image i asks for the "
            f"prompt of class i % 10), {info.get('images_per_seed')} images per seed x {len(seeds)} seeds {seeds} "
            "per guidance scale.")


def guidance_md(info: Mapping[str, Any] | None, grids: Sequence[tuple[Mapping[str, Any], Path]]) -> list[str]:
    """The section's ``report.md`` lines (none without ``info``)."""
    if not info:
        return []
    out = ["", "## Prompts and guidance", "", _intro(info), ""]
    scales, rows = _accuracy_rows(info)
    if rows:
        out += [_acc_note(info), "", "| model | " + " | ".join(f"prompt acc (guidance {s})" for s in scales) + " |",
                "|---|" + "---|" * len(scales)]
        for m, vals in rows:
            out.append(f"| {_model_label(m)} | " + " | ".join("-" if v is None else f"{100 * float(v):.1f}%"
                                                             for v in vals) + " |")
        out.append("")
    for m, g in grids:
        rows_text = "; ".join(f"row {i + 1}: \"{r['prompt']}\", guidance {float(r['guidance_scale']):g}"
                              for i, r in enumerate(m.get("grid_rows", [])))
        out += [f"**{_model_label(m)}** ({m.get('loaded_with')}): {rows_text}", "",
                f"![{m['name']}]({g.parent.name}/{g.name})", ""]
    return out


def guidance_html(info: Mapping[str, Any] | None, grids: Sequence[tuple[Mapping[str, Any], Path]],
                  img: Callable[[Path, str], str]) -> str:
    """The section's ``index.html`` part (empty without ``info``); ``img(path, alt)`` inlines a PNG."""
    if not info:
        return ""
    esc = lambda t: html.escape(str(t), quote=True)  # noqa: E731
    p = ['<h2 id="guidance">Prompts and guidance</h2>', f"<p>{esc(_intro(info))}</p>"]
    scales, rows = _accuracy_rows(info)
    if rows:
        p.append(f'<p class="note">{esc(_acc_note(info))}</p>')
        head = "".join(f"<th>prompt acc (guidance {esc(s)})</th>" for s in scales)
        body = []
        for m, vals in rows:
            tds = "".join(
                f'<td data-guidance="{esc(s)}" data-value="{esc(json.dumps(v))}">'
                f'{"-" if v is None else esc(f"{100 * float(v):.1f}%")}</td>' for s, v in zip(scales, vals))
            body.append(f'<tr data-model="{esc(m["name"])}"><td>{esc(_model_label(m))}</td>{tds}</tr>')
        p.append(f'<table class="guidance"><tr><th>model</th>{head}</tr>' + "".join(body) + "</table>")
    p.append('<div class="guidance-grids">')
    for m, g in grids:
        rows_text = "; ".join(f"row {i + 1}: \u201c{r['prompt']}\u201d, guidance {float(r['guidance_scale']):g}"
                              for i, r in enumerate(m.get("grid_rows", [])))
        cap = f"{_model_label(m)} ({m.get('loaded_with')}): {rows_text}"
        p.append(f'<figure>{img(g, cap)}<figcaption>{esc(cap)}</figcaption></figure>')
    p.append("</div>")
    return "\n".join(p)
