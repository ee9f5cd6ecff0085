"""Sampling from and scoring the base model (or a model folder): what ``diffnas sample`` and
``diffnas evaluate`` run.

:func:`evaluate_base` scores FID/KID per seed of ``evaluation.seeds``, MACs per call and per
trajectory and latency per image, and appends one :class:`EvalRow` per model to
``results.jsonl``; :func:`format_table` is the table ``diffnas evaluate`` prints.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.config import ExperimentConfig
from nas.errors import UserError
from nas.run import RunContext, RunDir

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from nas.models import BaseModel

log = logging.getLogger(__name__)

__all__ = ["EvalRow", "check_model_arg", "evaluate_base", "format_table", "load_model_arg", "sample_base"]


def _generate(cfg: ExperimentConfig, base: BaseModel, num_images: int, seed: int, device: Any,
              unet: Any = None, batch_size: int | None = None, progress: bool = True) -> torch.Tensor:
    """Sample with ``cfg.sampling`` from ``unet`` (default: the base UNet): (N, C, H, W) in [-1, 1].

    A mixture with its own step schedule samples along it (as the bench scored it), other
    models with ``sampling.num_steps`` evenly spaced steps. A class-conditional base model
    asks for every class equally often (image ``i``: class ``i % C``) with
    ``condition.guidance_scale`` (:func:`nas.conditions.sampling_kwargs`).
    """
    from nas.conditions import sampling_kwargs
    from nas.sampling import generate, make_scheduler

    scheduler = make_scheduler(cfg.sampling.sampler, base.scheduler_config)
    own = _own_timesteps(unet)
    return generate(
        base.unet if unet is None else unet, scheduler, num_images=num_images,
        num_steps=None if own is not None else cfg.sampling.num_steps, timesteps=own,
        batch_size=batch_size or cfg.sampling.batch_size, seed=seed, device=device,
        sample_shape=base.sample_shape, vae=base.vae, latent_scale=base.latent_scale,
        encoder_hidden_states=base.encoder_hidden_states, progress=progress,
        **sampling_kwargs(cfg, base, num_images),
    )


def _own_timesteps(model: Any) -> list[int] | None:
    """The timesteps of a mixture's own step schedule, or None (no schedule, or not a mixture)."""
    from experts.mixture import MixtureOfExperts

    return model.timesteps() if isinstance(model, MixtureOfExperts) else None


_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_model_arg(path: str) -> Path:
    """The cheap checks of ``--model DIR``, before any work: it exists, is a folder and holds
    safetensors weights (pickled weights are never loaded); a one-line :class:`UserError` otherwise.

    Example:
        >>> check_model_arg("no/such/folder")
        Traceback (most recent call last):
        ...
        search_spaces.errors.UserError: --model 'no/such/folder' does not exist; pass a model folder (e.g. runs/<name>/mixtures/<method>-<budget>)
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"--model {path!r} does not exist; pass a model folder "
                        "(e.g. runs/<name>/mixtures/<method>-<budget>)")
    if not p.is_dir():
        raise UserError(f"--model {path!r} is a file; pass the folder that holds it (config.json and weights)")
    files = [f for f in p.rglob("*") if f.is_file()]
    if not any(f.suffix == ".safetensors" for f in files):
        pickles = sorted(f.name for f in files if f.suffix in _PICKLE_SUFFIXES)
        if pickles:
            raise UserError(
                f"{p} holds only pickled weights ({', '.join(pickles[:3])}); diffnas loads safetensors only: "
                "load it where you trust it and save it with `.save_pretrained(folder, safe_serialization=True)`")
        raise UserError(f"{p} holds no model weights (*.safetensors); pass a folder written by "
                        "`diffnas finetune` or `save_pretrained`")
    return p


def load_model_arg(path: str, device: Any) -> Any:
    """``--model DIR``: a mixture pipeline / mixture / supernet / UNet folder
    (``experts.pipeline.load_model_folder``); a damaged folder is a one-line :class:`UserError`."""
    from experts.expert_folder import reading_artefact
    from experts.pipeline import load_model_folder

    p = check_model_arg(path)
    with reading_artefact(p, "write the model folder again (e.g. delete it and rerun `diffnas finetune` for a "
                          "mixture) or pass another one"):
        return load_model_folder(p, device=device)


def sample_base(ctx: RunContext, out: Path | None = None, nrow: int | None = None,
                model: str | None = None) -> Path:
    """Sample ``sampling.num_images`` images from the base model (or the ``model`` folder,
    e.g. a mixture) and save a PNG grid (default ``samples/<model>-<sampler>-<N>steps-seed<S>.png``)."""
    from nas.sampling import save_grid

    cfg, run, device = ctx.cfg, ctx.run, ctx.device
    unet, label = (None, "base") if model is None else (load_model_arg(model, device).model, Path(model).name)
    base = ctx.base  # after --model is checked: a wrong folder fails before the base model is trained
    s = cfg.sampling
    images = _generate(cfg, base, num_images=s.num_images, seed=s.seed, device=device, unet=unet)  # (N,C,H,W)
    path = out or run.samples_dir / f"{label}-{s.sampler}-{s.num_steps}steps-seed{s.seed}.png"
    save_grid(images, path, nrow=nrow)
    return Path(path)


@dataclasses.dataclass(frozen=True)
class EvalRow:
    """One evaluated model, as printed and stored (one line of results.jsonl).

    ``fid``/``kid`` are means over ``evaluation.seeds``; ``fid_std``/``kid_std`` their sample
    standard deviations (``None`` with one seed). ``latency_ms_per_image`` is the measured
    wall time of a whole sampling trajectory divided by the batch size.

    Conditional models: ``macs_per_trajectory`` is what the UNet costs per image, both halves
    of every guided step counted (``unet_calls`` per image); ``macs_vae_decode`` and
    ``macs_text_encoder`` are the other parts, once per image / prompt; ``class_accuracy`` is how
    often the digit classifier recognises the requested class (None: unconditional model), at
    ``guidance_scale``.
    """

    model: str
    source: str
    fid: float
    kid: float
    fid_std: float | None
    kid_std: float | None
    fid_per_seed: tuple[float, ...]
    kid_per_seed: tuple[float, ...]
    extractor: str
    num_generated: int
    num_reference: int
    seeds: tuple[int, ...]
    sampler: str
    num_steps: int
    macs_per_call: int
    macs_per_trajectory: int
    latency_ms_per_image: float | None
    latency_batch_size: int
    device: str
    dataset: str
    guidance_scale: float = 1.0
    class_accuracy: float | None = None
    unet_calls: int = 0
    macs_vae_decode: int = 0
    macs_text_encoder: int = 0

    def record(self, run_name: str) -> dict[str, Any]:
        out = {"kind": "evaluate", "run": run_name, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        out.update(dataclasses.asdict(self))
        return out


def _std(values: Sequence[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def _fmt_macs(macs: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if macs >= scale:
            return f"{macs / scale:.2f}{unit}"
    return str(macs)


def _fmt_pm(mean: float, std: float | None, digits: int) -> str:
    text = f"{mean:.{digits}f}"
    return text if std is None else f"{text}±{std:.{digits}f}"


def format_table(rows: Sequence[EvalRow]) -> str:
    """A plain-text table of evaluated models (what ``diffnas evaluate`` prints).

    Example:
        >>> row = EvalRow("base", "embedded:digits", 3.5, 0.01, None, None, (3.5,), (0.01,), "digits",
        ...               500, 1797, (0,), "ddim", 20, 1_000_000, 20_000_000, 1.5, 64, "cpu", "digits-16")
        >>> print(format_table([row]).splitlines()[0].split())
        ['model', 'FID', 'KID', 'MACs/call', 'MACs/trajectory', 'ms/image', 'extractor', 'generated', 'reference']
    """
    header = ("model", "FID", "KID", "MACs/call", "MACs/trajectory", "ms/image", "extractor", "generated", "reference")
    body = [
        (
            r.model,
            _fmt_pm(r.fid, r.fid_std, 2),
            _fmt_pm(r.kid, r.kid_std, 4),
            _fmt_macs(r.macs_per_call),
            _fmt_macs(r.macs_per_trajectory),
            "-" if r.latency_ms_per_image is None else f"{r.latency_ms_per_image:.2f}",
            r.extractor,
            f"{r.num_generated} x {len(r.seeds)} seeds" if len(r.seeds) > 1 else str(r.num_generated),
            str(r.num_reference),
        )
        for r in rows
    ]
    if any(r.class_accuracy is not None for r in rows):  # conditional: guidance and the requested-class accuracy
        header += ("guidance", "class acc")
        body = [b + (f"{r.guidance_scale:g}", "-" if r.class_accuracy is None else f"{r.class_accuracy:.3f}")
                for b, r in zip(body, rows)]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(line.rstrip() for line in lines)


def evaluate_base(ctx: RunContext, model: str | None = None) -> list[EvalRow]:
    """Score the base model (and, if ``evaluation.compare_untrained``, an untrained copy of the
    same shape): FID/KID per seed, MACs per call and per trajectory, latency per image.

    Args:
        model: score this model folder (a mixture, supernet or UNet folder) instead of the base model.

    Every row is appended to ``results.jsonl``.
    """
    cfg, run, device, progress = ctx.cfg, ctx.run, ctx.device, ctx.progress
    ev = cfg.evaluation
    loaded = None if model is None else load_model_arg(model, device)  # before any slow work
    extractor, ref_feats, name = _reference_features(cfg, run, device)
    base = ctx.base  # after the cheap checks of the reference features
    models, source, macs_per_call, macs_per_traj = _models_to_score(cfg, base, device, model, loaded)
    parts = _macs_parts(cfg, base, round(macs_per_traj / macs_per_call) if macs_per_call else 0, macs_per_traj)

    rows: list[EvalRow] = []
    for label, unet in models:
        fids, kids, (extractor_name, num_gen, num_ref), acc = _quality_per_seed(cfg, base, label, unet, ref_feats,
                                                                                extractor, device, progress,
                                                                                run.cache_dir)
        latency = None
        if label != "untrained":  # the untrained copy has the base's shape: same MACs and latency
            latency = _latency_ms_per_image(cfg, base, unet, device)
        row = EvalRow(
            model=label, source=source, fid=float(statistics.fmean(fids)), kid=float(statistics.fmean(kids)),
            fid_std=_std(fids), kid_std=_std(kids), fid_per_seed=tuple(fids), kid_per_seed=tuple(kids),
            extractor=extractor_name, num_generated=num_gen, num_reference=num_ref, seeds=tuple(ev.seeds),
            sampler=cfg.sampling.sampler, num_steps=len(_own_timesteps(unet) or range(cfg.sampling.num_steps)),
            macs_per_call=macs_per_call,
            macs_per_trajectory=parts.unet, latency_ms_per_image=latency, latency_batch_size=ev.latency_batch_size,
            device=str(device), dataset=name, guidance_scale=parts.guidance_scale, class_accuracy=acc,
            unet_calls=parts.unet_calls, macs_vae_decode=parts.vae_decode, macs_text_encoder=parts.text_encoder,
        )
        if not all(math.isfinite(v) for v in (row.fid, row.kid)):
            log.warning("%s: non-finite FID/KID (%s, %s)", label, row.fid, row.kid)
        run.append_result(row.record(cfg.name))
        rows.append(row)
    return rows


def _macs_parts(cfg: ExperimentConfig, base: BaseModel, num_steps: int, macs_per_traj: int) -> Any:
    """The trajectory's MACs by part (:class:`experts.guidance.TrajectoryMacs`): the UNet
    trajectory ``macs_per_traj`` (one call per step), doubled at guidance > 1 for a
    class-conditional model; the VAE decode (latent models); no text encoder."""
    from experts.guidance import TrajectoryMacs
    from nas.conditions import base_condition, vae_decode_macs

    guidance = float(cfg.condition.guidance_scale) if base_condition(cfg, base) is not None else 1.0
    factor = 2 if guidance != 1.0 else 1
    vae = vae_decode_macs(base) if base.vae is not None else 0
    return TrajectoryMacs(unet=int(macs_per_traj) * factor, text_encoder=0, vae_decode=vae,
                          unet_calls=int(num_steps) * factor, guidance_scale=guidance)


def _reference_features(cfg: ExperimentConfig, run: RunDir, device: Any) -> tuple[Any, Any, str]:
    """(feature extractor, reference features (N_ref, D), dataset id), after the cheap checks
    (data folder, extractor weights) that fail before any model work."""
    from nas.data import dataset_id, find_images, load_dataset
    from nas.metrics import (
        build_extractor,
        check_extractor_available,
        reference_features,
        resolve_extractor_kind,
    )

    ev = cfg.evaluation
    cache_dir = run.cache_dir
    if cfg.data.dataset == "folder":
        find_images(cfg.data.path or "")  # missing/empty folder: fail before anything slow
    kind = resolve_extractor_kind(ev.extractor, cfg.data.dataset)
    check_extractor_available(kind, cache_dir=cache_dir, inception_weights=ev.inception_weights)
    reference = load_dataset(cfg.data)  # (N,C,H,W) in [-1,1]
    name = dataset_id(cfg.data)
    extractor = build_extractor(kind, device=device, cache_dir=cache_dir, inception_weights=ev.inception_weights)
    ref_feats = reference_features(name, reference, extractor, cache_dir)  # (N_ref, D), cached per dataset
    return extractor, ref_feats, name


def _models_to_score(cfg: ExperimentConfig, base: BaseModel, device: Any, model: str | None,
                     loaded: Any = None) -> tuple[list[tuple[str, Any]], str, int, int]:
    """(label, model) pairs to score (the base or ``--model DIR``, then the untrained copy if asked),
    their source, MACs per call and per trajectory."""
    import torch

    from search_spaces.macs import count_unet_macs, trajectory_macs

    source = base.source
    if model is None:
        macs_per_call = int(count_unet_macs(base.unet, batch_size=1))
        macs_per_traj = int(trajectory_macs([macs_per_call] * cfg.sampling.num_steps))
        models: list[tuple[str, Any]] = [("base", base.unet)]
    else:  # --model DIR: a mixture (MACs of the expert serving each step) or a single model
        from nas.sampling import make_scheduler, sampling_timesteps

        loaded = loaded if loaded is not None else load_model_arg(model, device)
        steps = _own_timesteps(loaded.model) or sampling_timesteps(
            make_scheduler(cfg.sampling.sampler, base.scheduler_config), cfg.sampling.num_steps)
        macs_per_traj = int(loaded.trajectory_macs(steps))
        macs_per_call = int(round(macs_per_traj / len(steps)))  # mean over the trajectory's steps
        models = [(Path(model).name, loaded.model)]
        source = str(model)
    if cfg.evaluation.compare_untrained:
        torch.manual_seed(cfg.seed)
        untrained = type(base.unet).from_config(base.unet.config).to(device).eval()
        models.append(("untrained", untrained))
    return models, source, macs_per_call, macs_per_traj


def _quality_per_seed(cfg: ExperimentConfig, base: BaseModel, label: str, unet: Any, ref_feats: Any,
                      extractor: Any, device: Any, progress: bool, cache_dir: Path | None = None
                      ) -> tuple[list[float], list[float], tuple[str, int, int], float | None]:
    """FID and KID of ``unet``'s samples for each of ``evaluation.seeds``, (extractor name,
    images generated, reference images) of the last seed, and for a class-conditional base the
    digit classifier's accuracy on the requested classes over all seeds (else None)."""
    import torch

    from nas.conditions import sampling_kwargs
    from nas.metrics import compute_quality

    classifier = _label_classifier(cfg, base, device, cache_dir)
    hits = total = 0

    ev = cfg.evaluation
    fids: list[float] = []
    kids: list[float] = []
    extractor_name, num_gen, num_ref = "", 0, 0
    for seed in ev.seeds:
        with torch.no_grad():
            images = _generate(cfg, base, num_images=ev.num_samples, seed=seed, device=device, unet=unet,
                               progress=progress)  # (N,C,H,W) in [-1,1]
        q = compute_quality(images, ref_feats, extractor)
        if classifier is not None:
            from nas.digit_classifier import label_accuracy

            wanted = sampling_kwargs(cfg, base, ev.num_samples)["class_labels"]
            hits += round(label_accuracy(classifier, images, wanted) * len(wanted))
            total += len(wanted)
        fids.append(float(q.fid))
        kids.append(float(q.kid))
        extractor_name, num_gen, num_ref = str(q.extractor), int(q.num_generated), int(q.num_reference)
        log.info("%s seed %d: FID %.3f KID %.5f (%s, %d vs %d images)", label, seed, q.fid, q.kid,
                 extractor_name, num_gen, num_ref)
    acc = hits / total if total else None
    if acc is not None:
        log.info("%s: the digit classifier recognises the requested class in %.1f%% of the samples (guidance %g)",
                 label, 100 * acc, cfg.condition.guidance_scale)
    return fids, kids, (extractor_name, num_gen, num_ref), acc


def _label_classifier(cfg: ExperimentConfig, base: BaseModel, device: Any, cache_dir: Path | None) -> Any:
    """The digit classifier for a class-conditional base on the digits data, else None."""
    from nas.conditions import base_condition

    if base_condition(cfg, base) is None or cfg.data.dataset != "digits" or cache_dir is None:
        return None
    from nas.digit_classifier import load_or_train_digit_classifier

    return load_or_train_digit_classifier(cache_dir, device)


def _latency_ms_per_image(cfg: ExperimentConfig, base: BaseModel, unet: Any, device: Any) -> float:
    """Median wall time of one sampling trajectory of ``evaluation.latency_batch_size`` images, per image."""
    import torch

    from nas.latency import measure_latency_ms

    bs = cfg.evaluation.latency_batch_size

    def trajectory() -> None:
        with torch.no_grad():
            _generate(cfg, base, num_images=bs, seed=0, device=device, unet=unet, batch_size=bs,
                      progress=False)

    timing = measure_latency_ms(trajectory, repeats=cfg.evaluation.latency_repeats, warmup=1, device=device)
    return float(timing.median_ms) / bs
