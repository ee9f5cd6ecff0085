"""Base diffusion models: load a diffusers model (hub id or local folder) or train the embedded one.

One entry point, :func:`load_base_model`, returns a :class:`BaseModel` whatever the source:

- ``embedded:digits``: a small ``UNet2DModel`` trained here on scikit-learn's digits (16x16),
  once; later calls reuse it (a hash of the training config is stored beside the weights).
  ``embedded:digits-class`` is the same model conditioned on the digit (``num_class_embeds`` =
  10 digits + 1 null class, trained with 10% condition dropout for classifier-free guidance).
  ``embedded:digits-text`` is a text-to-image model (a ``UNet2DConditionModel`` with
  cross-attention, a tiny CLIP text encoder and a tokenizer built here) on the prompts
  "a handwritten <digit>", the empty prompt 10% of the time, saved as a text-to-image folder.
  Training shows a progress bar, checkpoints every N steps (safetensors + JSON, no pickles) and
  resumes from the last checkpoint after a kill.
- a local folder: a full pipeline (``model_index.json``; LDM layout with ``unet`` + ``vqvae`` or
  ``vae`` + ``scheduler``, or DDPM layout with ``unet`` + ``scheduler``), or a bare UNet folder
  (``config.json`` + safetensors weights, with ``scheduler_config.json`` beside it if present).
- a Hugging Face hub id (``owner/name``): resolved through the local HF cache (or downloaded
  when the hub is reachable and ``HF_HUB_OFFLINE`` is not set), then loaded like a folder.

Weights are always loaded with ``use_safetensors=True``; nothing is unpickled.

Example::

    >>> from pathlib import Path
    >>> base = load_base_model("path/to/ldm-folder", model_cfg=None, cache_dir=Path("runs/x/base"),
    ...                        device="cpu")  # doctest: +SKIP
    >>> base.sample_shape, base.latent_scale  # doctest: +SKIP
    ((3, 64, 64), 1.0)

Where the code lives: :mod:`nas.model_folders` (:class:`BaseModel`, folders and hub ids) and
:mod:`nas.embedded` (training the embedded model). :func:`load_base` loads the base model of an
experiment config (what every stage uses, through :class:`nas.run.RunContext`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nas.embedded import (
    CHECKPOINT_DIR,
    build_embedded_unet,
    build_training_scheduler,
    config_hash,
    digits_16,
    embedded_settings,
    train_embedded_digits,
)
from nas.model_folders import MARKER_FILE, BaseModel, is_hub_id, load_folder, resolve_hub_id
from search_spaces.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from nas.config import ExperimentConfig

__all__ = [
    "CHECKPOINT_DIR",
    "EMBEDDED_DATASETS",
    "EMBEDDED_PREFIX",
    "CLASS_CONDITIONAL",
    "TEXT_CONDITIONAL",
    "MARKER_FILE",
    "BaseModel",
    "build_embedded_unet",
    "build_training_scheduler",
    "check_base_config",
    "config_hash",
    "digits_16",
    "embedded_settings",
    "load_base",
    "load_base_model",
    "load_folder",
    "require_trained_base",
    "train_embedded_digits",
]

EMBEDDED_PREFIX = "embedded:"
EMBEDDED_DATASETS = ("digits", "digits-class", "digits-text")
#: Embedded models conditioned on class labels (the data's labels: the digit shown).
CLASS_CONDITIONAL = ("digits-class",)
#: Embedded text-to-image models: the data's labels name prompts ("a handwritten seven").
TEXT_CONDITIONAL = ("digits-text",)
_LABELLED = CLASS_CONDITIONAL + TEXT_CONDITIONAL


def load_base_model(
    spec: str,
    *,
    model_cfg: Any = None,
    images: torch.Tensor | None = None,
    cache_dir: Path,
    device: str | torch.device = "cpu",
    progress: bool = True,
    labels: torch.Tensor | None = None,
) -> BaseModel:
    """Load (or, for ``embedded:digits``, train once and reuse) a base diffusion model.

    Args:
        spec: ``embedded:digits``, a local folder, or a hub id ``owner/name``.
        model_cfg: the model section of the experiment config (attribute access; used only for
            ``embedded:*``: channels, steps, batch size, learning rate, ...). None = defaults.
        images: training images (N, 1, 16, 16) in [-1, 1] for ``embedded:digits``; if None the
            digits data set is loaded.
        cache_dir: where the embedded model is trained; it goes to
            ``cache_dir/embedded-digits-<hash>/`` so a different config never clobbers another.
        device: where the returned model lives (and where training runs).
        progress: show a tqdm bar while training.
        labels: the class labels of ``images`` for ``embedded:digits-class`` (if None: the digits'
            labels; then ``images`` must be None too).

    Raises:
        UserError: unknown embedded name, missing folder, hub id not available offline,
            unsupported layout, weights without safetensors.

    Example::

        >>> base = load_base_model("embedded:digits", model_cfg=cfg.model,
        ...                        cache_dir=Path("runs/demo/base"), device="cpu")  # doctest: +SKIP
    """
    spec = str(spec).strip()
    if spec.startswith(EMBEDDED_PREFIX):
        return _load_embedded(spec, model_cfg, images, Path(cache_dir), device, progress, labels)
    return _load_folder_or_hub(spec, device)


def _load_embedded(spec: str, model_cfg: Any, images: torch.Tensor | None, cache_dir: Path,
                   device: str | torch.device, progress: bool, labels: torch.Tensor | None = None) -> BaseModel:
    """``embedded:<name>``: trained once into ``cache_dir/embedded-<name>-<hash>/``, then loaded."""
    name = spec[len(EMBEDDED_PREFIX):]
    if name not in EMBEDDED_DATASETS:
        raise UserError(
            f"unknown embedded model {spec!r}; choices: "
            + ", ".join(EMBEDDED_PREFIX + n for n in EMBEDDED_DATASETS)
        )
    _check_train_steps(spec, embedded_settings(model_cfg))
    if name in _LABELLED and labels is None:
        if images is not None:
            raise UserError(f"{spec} is conditional: pass the labels of the training images")
        from nas.data import load_digits_labels

        labels = load_digits_labels()
    if name not in _LABELLED:
        labels = None
    if images is None:
        images = digits_16()
    num_classes = _DIGIT_CLASSES if labels is not None else 0
    text = name in TEXT_CONDITIONAL
    settings = embedded_settings(model_cfg, num_classes=num_classes, text=text)
    out_dir = cache_dir / f"embedded-{name}-{config_hash(settings, images, labels)[:10]}"
    train_embedded_digits(out_dir, images, model_cfg, device=device, progress=progress, labels=labels,
                          num_classes=num_classes or None, text=text)
    base = load_folder(out_dir, device=device)
    base.source = spec
    return base


_DIGIT_CLASSES = 10


def _check_train_steps(spec: str, settings: dict) -> None:
    if int(settings["train_steps"]) < 1:
        raise UserError(
            f"model.train_steps={settings['train_steps']} would save an untrained {spec} base model; "
            "set model.train_steps to 1 or more (or point model.base at a trained model folder)"
        )


def check_base_config(cfg: ExperimentConfig) -> None:
    """The checks of ``model.*`` that need no model and no data: run before anything is written.

    Example:
        >>> from nas.config import load_config
        >>> check_base_config(load_config(None, ["model.train_steps=0"]))
        Traceback (most recent call last):
        ...
        search_spaces.errors.UserError: model.train_steps=0 would save an untrained embedded:digits base model; set model.train_steps to 1 or more (or point model.base at a trained model folder)
    """
    spec = cfg.model.base.strip()
    if spec.startswith(EMBEDDED_PREFIX):
        name = spec[len(EMBEDDED_PREFIX):]
        if name not in EMBEDDED_DATASETS:
            raise UserError(f"unknown embedded model {spec!r}; choices: "
                            + ", ".join(EMBEDDED_PREFIX + n for n in EMBEDDED_DATASETS))
        _check_train_steps(spec, embedded_settings(cfg.model))
        return
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"base model {spec!r} is a file; pass a folder saved with save_pretrained")
    elif not is_hub_id(spec):
        raise UserError(
            f"base model {spec!r} not found: not an existing folder, not a hub id (owner/name), "
            f"and not one of: " + ", ".join(EMBEDDED_PREFIX + n for n in EMBEDDED_DATASETS)
        )


def _check_embedded_data(cfg: ExperimentConfig) -> None:
    spec = cfg.model.base.strip()
    if spec.startswith(EMBEDDED_PREFIX) and cfg.data.dataset != "digits":
        raise UserError(
            f"model.base {spec!r} is trained on the digits data, but data.dataset is "
            f"{cfg.data.dataset!r}; set data.dataset=digits, or point model.base at a model for your images"
        )


def _embedded_identity(cfg: ExperimentConfig) -> tuple[dict, torch.Tensor, torch.Tensor | None]:
    """(settings, images, labels) that name and train the embedded model of ``cfg``."""
    from nas.data import load_dataset, load_labels

    name = cfg.model.base.strip()[len(EMBEDDED_PREFIX):]
    images = load_dataset(cfg.data)
    labels = load_labels(cfg.data)[0] if name in _LABELLED else None
    settings = embedded_settings(cfg.model, num_classes=_DIGIT_CLASSES if labels is not None else 0,
                                 text=name in TEXT_CONDITIONAL)
    return settings, images, labels


def require_trained_base(cfg: ExperimentConfig, run_dir: Path, command: str) -> None:
    """For a command that works on a run's stages (``bench``): refuse before any work when the run
    has no trained base model yet, instead of training one as a side effect.

    A base model given as a folder or hub id needs no training and always passes.
    """
    run_dir = Path(run_dir)
    spec = cfg.model.base.strip()
    if not spec.startswith(EMBEDDED_PREFIX):
        return
    check_base_config(cfg)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist: `diffnas {command}` works on a run's finished "
                        f"stages; run `diffnas run` (or `diffnas train-base` and the later stages) first, "
                        "or pass the --name/--config of an existing run")
    _check_embedded_data(cfg)
    name = spec[len(EMBEDDED_PREFIX):]
    expected = run_dir / "base" / f"embedded-{name}-{config_hash(*_embedded_identity(cfg))[:10]}"
    if (expected / MARKER_FILE).is_file():
        return
    others = sorted(d.name for d in (run_dir / "base").glob("embedded-*") if (d / MARKER_FILE).is_file())
    if others:
        raise UserError(f"{run_dir} has a base model of another model.* config ({others[0]}), not {expected.name}: "
                        f"use the config the run was made with (its config.yaml: --config {run_dir / 'config.yaml'}), "
                        "or run `diffnas train-base` and the later stages with this one first")
    raise UserError(f"{run_dir} has no trained base model (stage `train-base` has not run): `diffnas {command}` "
                    "works on a run's finished stages; run `diffnas run` (or `diffnas train-base` and the "
                    "later stages) first")


def _load_folder_or_hub(spec: str, device: str | torch.device) -> BaseModel:
    """A local folder, else a hub id resolved through the local cache (or downloaded)."""
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"base model {spec!r} is a file; pass a folder saved with save_pretrained")
        return load_folder(path, device=device, source=spec)
    if is_hub_id(spec):
        try:
            snapshot = resolve_hub_id(spec)
        except UserError as exc:
            raise UserError(f"base model {spec!r} is not a local folder; as a hub id: {exc}") from exc.__cause__
        return load_folder(snapshot, device=device, source=spec)
    raise UserError(
        f"base model {spec!r} not found: not an existing folder, not a hub id (owner/name), "
        f"and not one of: " + ", ".join(EMBEDDED_PREFIX + n for n in EMBEDDED_DATASETS)
    )


def load_base(cfg: ExperimentConfig, cache_dir: Path, device: str | torch.device,
              progress: bool = True) -> BaseModel:
    """Load ``cfg.model.base`` (training the embedded model into ``cache_dir`` the first time).

    Raises:
        UserError: ``embedded:digits`` with data other than the digits, or what
            :func:`load_base_model` raises.
    """
    check_base_config(cfg)
    images = labels = None
    if cfg.model.base.startswith(EMBEDDED_PREFIX):
        _check_embedded_data(cfg)
        _, images, labels = _embedded_identity(cfg)
    base = load_base_model(
        cfg.model.base, model_cfg=cfg.model, images=images, cache_dir=cache_dir, device=device,
        progress=progress, labels=labels,
    )
    if base.text_encoder is not None:
        _prompts_for_data(cfg, base)
    return base


def _prompts_for_data(cfg: ExperimentConfig, base: BaseModel) -> None:
    """A text-to-image base model with no prompts yet (a user's folder): the data's distinct
    captions, else one prompt per class (the folder's template), so every stage conditions it
    (:func:`nas.text_models.install_data_prompts`); data without either leave it unconditional
    (the empty prompt). Bad captions are refused here, before any training."""
    from experts.text_condition import prompt_table
    from nas.text_models import install_data_prompts

    if prompt_table(base.unet) is not None:
        return
    install_data_prompts(base.unet, base.text_encoder, base.tokenizer, cfg.data, base.path)
