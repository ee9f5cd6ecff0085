"""Prompts and guidance of a text-to-image run: what the bench stage adds for a base model with a
text encoder (nothing for other runs, whose bench outputs and keys stay as they were).

For the base model and for every mixture method's model at one budget (the middle one of
``bench.budgets``: the router's, the search's, the uniform width's, ... whichever were benchmarked
there as pipeline folders), :func:`run_guidance`:

- builds the full text-to-image :class:`~experts.pipeline.MixturePipeline` (the run's mixture
  folder + the base model's ``text_encoder`` and ``tokenizer``), saves it with
  ``save_pretrained`` under ``bench/guidance/pipelines/<method>-<budget>/`` and loads it back with
  ``MixturePipeline.from_pretrained``: the samples below come from the reloaded pipeline. The base
  model is sampled through the same pipeline class (one interval, the base UNet as its only
  expert; not saved: it is ``base/``);
- samples :data:`GRID_PROMPTS` (``"a handwritten three"``, ``"a handwritten eight"``) at every
  :data:`GRID_SCALES` guidance scale (1 and 4), :data:`GRID_IMAGES` images each with fixed seeds
  (``seed=0``, images ``0..7``: the same noise in every row), one labelled PNG grid per model
  (``bench/guidance/grids/<name>.png``, one row per prompt and scale);
- measures the prompt accuracy at every :data:`ACCURACY_SCALES` scale (1, 2, 3, 4): image ``i`` asks
  for the prompt of class ``i % C``, ``bench.num_samples`` images per seed of ``bench.seeds``, and
  the digit classifier (:mod:`nas.digit_classifier`, as a bench row's ``class_accuracy``) says how
  often it sees the requested digit (digits data only).

Everything is stored in ``bench/guidance/guidance.json`` (paths relative to the run folder); the
report reads that file and the grids only. The folder is written as a temporary sibling and
renamed into place; a rerun whose inputs are the same (bench config key, each mixture's
``inputs_key``, these settings) reuses it untouched.

Example::

    >>> from benchmarks.bench.guidance import GRID_PROMPTS, GRID_SCALES, ACCURACY_SCALES
    >>> GRID_PROMPTS, GRID_SCALES, ACCURACY_SCALES
    (('a handwritten three', 'a handwritten eight'), (1.0, 4.0), (1.0, 2.0, 3.0, 4.0))
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.bench.context import BenchContext
from benchmarks.bench.records import finished_rows
from experts.mixture_folder import swap_in
from nas.methods import budget_key
from nas.run import RunDir
from search_spaces import materialize

log = logging.getLogger(__name__)

__all__ = ["ACCURACY_SCALES", "FORMAT", "GRID_IMAGES", "GRID_PROMPTS", "GRID_SCALES", "guidance_dir",
           "guidance_models", "run_guidance"]

#: the prompts of the sample grids (digits data: the prompts of classes 3 and 8)
GRID_PROMPTS = ("a handwritten three", "a handwritten eight")
#: guidance scales of the sample grids
GRID_SCALES = (1.0, 4.0)
#: guidance scales of the prompt-accuracy table
ACCURACY_SCALES = (1.0, 2.0, 3.0, 4.0)
#: images per prompt and scale in a grid (seed 0, images 0..GRID_IMAGES-1)
GRID_IMAGES = 8
#: ``guidance.json``'s format
FORMAT = "diffnas-guidance/1"
_GRID_DIGITS = (3, 8)  # the digits of GRID_PROMPTS (their classes in the digits data)


def guidance_dir(run: RunDir) -> Path:
    """``bench/guidance/`` of ``run``: ``guidance.json``, ``grids/``, ``pipelines/``."""
    return run.path / "bench" / "guidance"


def guidance_models(ctx: BenchContext, key: str) -> list[dict[str, Any]]:
    """The mixtures sampled: each benchmarked row (of config ``key``) at the middle budget of
    ``bench.budgets`` whose model is a pipeline folder, in ``bench.methods`` order:
    ``[{method, budget_ratio, folder (relative), inputs_key}]``."""
    budgets = sorted(float(b) for b in ctx.cfg.bench.budgets)
    if not budgets:
        return []
    bkey = budget_key(budgets[(len(budgets) - 1) // 2])
    rows = finished_rows(ctx.run, key)
    out = []
    for method in ctx.cfg.bench.methods:
        r = rows.get((str(method), bkey))
        mp = (r or {}).get("model_path")
        if r is None or not mp or not (ctx.run.path / str(mp) / "model_index.json").is_file():
            continue
        out.append({"method": str(method), "budget_ratio": float(r["budget_ratio"]), "folder": str(mp),
                    "inputs_key": r.get("inputs_key")})
    return out


def _settings(ctx: BenchContext, prompts: Sequence[str]) -> dict[str, Any]:
    b = ctx.cfg.bench
    return {"grid_prompts": list(prompts), "grid_scales": list(GRID_SCALES), "grid_images": GRID_IMAGES,
            "accuracy_scales": list(ACCURACY_SCALES), "images_per_seed": int(b.num_samples),
            "seeds": [int(s) for s in b.seeds], "num_steps": int(ctx.cfg.sampling.num_steps),
            "sampler": ctx.cfg.sampling.sampler}


def run_guidance(ctx: BenchContext, key: str) -> dict[str, Any] | None:
    """Grids and prompt accuracy of a text-to-image run (module docstring); ``None`` (nothing
    written) when the base model has no text encoder. Returns ``guidance.json``'s content."""
    base = ctx.base
    if getattr(base, "text_encoder", None) is None or getattr(base, "tokenizer", None) is None:
        return None
    class_prompts = _class_prompts(base)
    digits = ctx.cfg.data.dataset == "digits"
    prompts = list(GRID_PROMPTS) if digits else class_prompts[:2]
    models = guidance_models(ctx, key)
    settings = _settings(ctx, prompts)
    ident = {"format": FORMAT, "config_key": key, "settings": settings,
             "models": [(m["method"], m["budget_ratio"], m["inputs_key"]) for m in models]}
    gkey = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    out = guidance_dir(ctx.run)
    prev = _read(out / "guidance.json")
    if prev is not None and prev.get("key") == gkey:
        log.info("bench: prompt/guidance samples already in %s for these inputs, not recomputed", out)
        return prev
    t0 = time.perf_counter()
    tmp = out.parent / f".{out.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)  # a killed call's leftover
    tmp.mkdir(parents=True)
    try:
        classifier = _classifier(ctx) if digits else None
        entries = [_measure(ctx, _base_pipeline(ctx), "base", None, None, prompts, class_prompts, classifier, tmp)]
        for m in models:
            name = f"{m['method']}-{budget_key(m['budget_ratio'])}"
            saved = tmp / "pipelines" / name
            _full_pipeline(ctx, ctx.run.path / m["folder"]).save_pretrained(str(saved))
            # the text encoder's config names the base folder it was loaded from
            materialize.drop_source_paths(saved)
            pipe = _load_pipeline(saved)
            rel = (out / "pipelines" / name).relative_to(ctx.run.path).as_posix()
            entries.append(_measure(ctx, pipe, m["method"], m["budget_ratio"], rel, prompts, class_prompts,
                                    classifier, tmp, source=m["folder"]))
        record = {"format": FORMAT, "key": gkey, "config_key": key, **settings,
                  "classifier": "digit classifier (nas.digit_classifier)" if classifier is not None else None,
                  "models": entries, "wall_s": round(time.perf_counter() - t0, 2)}
        (tmp / "guidance.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        swap_in(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("bench: prompt/guidance samples of %d models in %s (%.1f s)", len(entries), out, record["wall_s"])
    return record


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def _class_prompts(base: Any) -> list[str]:
    """The base model's class prompts (its prompt table, without the empty prompt); the digits'
    prompts when it has no table."""
    from experts.text_condition import DIGIT_WORDS, prompt_table

    table = prompt_table(base.unet)
    if table is not None:
        return [p for p in table[0] if p != ""]
    return [f"a handwritten {w}" for w in DIGIT_WORDS]


def _classifier(ctx: BenchContext) -> Any:
    from nas.digit_classifier import load_or_train_digit_classifier

    return load_or_train_digit_classifier(ctx.run.cache_dir, ctx.device)


def _base_pipeline(ctx: BenchContext) -> Any:
    """The base model as a one-interval :class:`MixturePipeline` with its text encoder (in memory)."""
    from experts.intervals import Intervals
    from experts.mixture import MixtureOfExperts
    from experts.pipeline import MixturePipeline

    base = ctx.base
    T = int(base.scheduler_config["num_train_timesteps"])
    mixture = MixtureOfExperts(Intervals(T, ()), [base.unet])
    pipe = MixturePipeline(mixture, ctx.scheduler, vae=base.vae, text_encoder=base.text_encoder,
                           tokenizer=base.tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(ctx.device)


def _full_pipeline(ctx: BenchContext, folder: Path) -> Any:
    """The run's mixture pipeline folder with the base model's text encoder and tokenizer."""
    from experts.pipeline import MixturePipeline

    part = _load_pipeline(folder)
    base = ctx.base
    return MixturePipeline(part.mixture, part.scheduler, vae=part.vae, text_encoder=base.text_encoder,
                           tokenizer=base.tokenizer, null_class_label=getattr(part.config, "null_class_label", None))


def _load_pipeline(folder: Path) -> Any:
    from diffusers.utils.logging import disable_progress_bar, enable_progress_bar

    from experts.expert_folder import quiet_diffusers
    from experts.pipeline import MixturePipeline

    try:
        disable_progress_bar()
        with quiet_diffusers():
            pipe = MixturePipeline.from_pretrained(str(folder))
    finally:
        enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sample(ctx: BenchContext, pipe: Any, prompts: Sequence[str], scale: float, seed: int) -> Any:
    """``pipe``'s images for ``prompts`` (one each) at guidance ``scale``, noise of ``seed`` (images
    ``0..len-1``, as ``nas.sampling.generate`` draws them): (N, C, H, W) in [-1, 1]."""
    import torch

    steps = {} if getattr(pipe.mixture, "schedule", None) is not None else {
        "num_inference_steps": int(ctx.cfg.sampling.num_steps)}
    bs = int(ctx.cfg.sampling.batch_size)
    pipe.to(ctx.device)
    out = []
    with torch.no_grad():
        for lo in range(0, len(prompts), bs):
            chunk = list(prompts[lo:lo + bs])
            x = pipe(prompt=chunk, batch_size=len(chunk), guidance_scale=float(scale), seed=int(seed), first_image=lo,
                     output_type="pt", **steps).images  # (b,C,H,W) in [0,1]
            out.append(x.cpu() * 2 - 1)
    return torch.cat(out)  # (N,C,H,W)


def _measure(ctx: BenchContext, pipe: Any, method: str, budget: float | None, pipeline_rel: str | None,
             prompts: Sequence[str], class_prompts: Sequence[str], classifier: Any, tmp: Path,
             source: str | None = None) -> dict[str, Any]:
    """One model's grid (written into ``tmp/grids``) and prompt accuracy per scale."""
    import torch

    name = "base" if budget is None else f"{method}-{budget_key(budget)}"
    rows = []
    for p in prompts:
        for g in GRID_SCALES:
            rows.append((p, g, _sample(ctx, pipe, [p] * GRID_IMAGES, g, 0)))
    grid = tmp / "grids" / f"{name}.png"
    labelled_grid([(f"{p.split()[-1]}, guidance {g:g}", x) for p, g, x in rows], grid)
    entry: dict[str, Any] = {
        "name": name, "method": method, "budget_ratio": budget, "pipeline": pipeline_rel, "source": source,
        "loaded_with": "MixturePipeline.from_pretrained" if pipeline_rel else "MixturePipeline (in memory, base UNet)",
        "grid": (guidance_dir(ctx.run) / "grids" / grid.name).relative_to(ctx.run.path).as_posix(),
        "grid_rows": [{"prompt": p, "guidance_scale": g} for p, g, _ in rows],
    }
    if classifier is not None:
        from nas.digit_classifier import label_accuracy

        n = int(ctx.cfg.bench.num_samples)
        wanted = torch.arange(n) % len(class_prompts)  # (N,) image i asks for class i % C
        asked = [class_prompts[int(c)] for c in wanted]
        acc: dict[str, float] = {}
        per_seed: dict[str, list[float]] = {}
        for g in ACCURACY_SCALES:
            vals = [float(label_accuracy(classifier, _sample(ctx, pipe, asked, g, int(s)).to(ctx.device),
                                         wanted.to(ctx.device))) for s in ctx.cfg.bench.seeds]
            acc[f"{g:g}"] = sum(vals) / len(vals)
            per_seed[f"{g:g}"] = vals
        entry["prompt_accuracy"] = acc
        entry["prompt_accuracy_per_seed"] = per_seed
        log.info("bench: %s prompt accuracy %s", name, ", ".join(f"{100 * v:.1f}% (guidance {k})" for k, v in acc.items()))
    return entry


def labelled_grid(rows: Sequence[tuple[str, Any]], path: Path, *, tile_px: int = 64, pad_px: int = 2,
                  label_px: int = 150) -> Path:
    """One PNG: each row a text label, then its images (N, 1|3, H, W) in [-1, 1] upscaled (nearest)
    to ``tile_px``.

    Example:
        >>> import torch, tempfile, pathlib
        >>> from PIL import Image
        >>> p = labelled_grid([("three, guidance 1", torch.zeros(2, 1, 16, 16))], pathlib.Path(tempfile.mkdtemp()) / "g.png")
        >>> Image.open(p).size
        (284, 68)
    """
    from PIL import Image, ImageDraw

    ncol = max(int(x.shape[0]) for _, x in rows)
    w = label_px + ncol * (tile_px + pad_px) + pad_px
    h = len(rows) * (tile_px + pad_px) + pad_px
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (label, x) in enumerate(rows):
        y0 = pad_px + i * (tile_px + pad_px)
        draw.text((4, y0 + tile_px // 2 - 6), label, fill=(0, 0, 0))
        arr = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte()  # (N,C,H,W)
        for j in range(arr.shape[0]):
            tile = arr[j].permute(1, 2, 0).numpy()  # (H,W,C)
            img = Image.fromarray(tile[..., 0] if tile.shape[-1] == 1 else tile).convert("RGB")
            img = img.resize((tile_px, tile_px), Image.NEAREST)
            canvas.paste(img, (label_px + pad_px + j * (tile_px + pad_px), y0))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
