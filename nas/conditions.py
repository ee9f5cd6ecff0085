"""The conditions of a run's base model, as the stages pass them: class labels of the training
data, the labels asked for when sampling, and classifier-free guidance.

A base model is class-conditional when its UNet has ``num_class_embeds`` (the embedded
``embedded:digits-class``, or a user's folder); then

- training data come with labels (:func:`nas.data.load_labels`: the digit, or one sub-folder
  per class), and training draws the images' labels with condition dropout
  (``condition.dropout``: the null class instead of the label);
- sampling for metrics asks for every class equally often (image ``i``: class ``i % C``) with
  ``condition.guidance_scale``;
- the conditional metric is how often the digit classifier recognises the requested digit
  (:func:`nas.digit_classifier.label_accuracy`).

A text-to-image base model (``embedded:digits-text``, or a user's folder in Stable Diffusion's
layout) runs through the same code: its labels name prompts ("a handwritten seven", or each
image's caption for caption data: :func:`nas.data.load_folder_captions`; the null class is the
empty prompt, so condition dropout trains the unconditional branch of guidance),
whose embeddings the UNet looks up (:mod:`experts.text_condition`); the trajectory MACs add the
text encoder once per prompt (twice per image when guided: the prompt and the empty prompt).

Example:
    >>> from nas.config import load_config
    >>> cfg = load_config(None, ["condition.guidance_scale=3"])
    >>> sampling_kwargs(cfg, None, 4)  # an unconditional base model: nothing to pass
    {}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from experts.guidance import ClassCondition, TrajectoryMacs, cycle_labels
from experts.text_condition import prompt_condition, prompt_table
from search_spaces.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from nas.config import ExperimentConfig
    from nas.models import BaseModel

__all__ = ["base_condition", "sampling_kwargs", "training_labels", "text_encoder_macs", "trajectory_macs_parts", "vae_decode_macs"]


def base_condition(cfg: ExperimentConfig, base: BaseModel | None) -> ClassCondition | None:
    """The class condition of ``base``'s UNet (``condition.null_class`` applied), or None."""
    if base is None:
        return None
    return ClassCondition.from_unet(base.unet, getattr(cfg.condition, "null_class", None))


def sampling_kwargs(cfg: ExperimentConfig, base: BaseModel | None, num_images: int) -> dict[str, Any]:
    """The keyword arguments of ``nas.sampling.generate`` that condition ``num_images`` samples:
    every class equally often, ``condition.guidance_scale``, the null class; ``{}`` for an
    unconditional model."""
    cond = base_condition(cfg, base)
    if cond is None:
        return {}
    return {"class_labels": cycle_labels(num_images, cond.num_classes),
            "guidance_scale": float(cfg.condition.guidance_scale), "null_label": cond.null_label}


def training_labels(cfg: ExperimentConfig, base: BaseModel | None, num_images: int) -> dict[str, Any]:
    """For a class-conditional base: ``labels`` of the training data (in ``load_dataset`` order),
    ``condition_dropout`` and ``null_label``, as ``experts.train_loop.run_training`` takes them;
    ``{}`` otherwise.

    Raises:
        UserError: the data have more classes than the model, or not one label per image.
    """
    cond = base_condition(cfg, base)
    if cond is None:
        return {}
    from nas.data import load_labels

    if getattr(base, "text_encoder", None) is not None or prompt_condition(base.unet) is not None:
        captioned = _caption_labels(cfg, base)
        if captioned is not None:
            labels = captioned
            if labels.shape[0] != num_images:
                raise UserError(f"{labels.shape[0]} captions for {num_images} training images; the data changed "
                                "while loading? rerun the command")
            return {"labels": labels, "condition_dropout": float(cfg.condition.dropout), "null_label": cond.null_label}
    labels, names = load_labels(cfg.data, captions=False)
    if labels.shape[0] != num_images:
        raise UserError(f"{labels.shape[0]} labels for {num_images} training images; the data changed while "
                        "loading? rerun the command")
    if len(names) > cond.num_classes:
        raise UserError(f"the data have {len(names)} classes but the model takes {cond.num_classes}; "
                        "use data with the model's classes (one sub-folder per class)")
    return {"labels": labels, "condition_dropout": float(cfg.condition.dropout), "null_label": cond.null_label}


def _caption_labels(cfg: ExperimentConfig, base: BaseModel) -> torch.Tensor | None:
    """(N,) labels of caption data for a text model: each image's caption's index in the UNet's
    prompt table; None without captions."""
    from nas.data import load_caption_labels

    found = load_caption_labels(cfg.data)
    if found is None:
        return None
    table = prompt_table(base.unet)
    prompts = table[0] if table is not None else []
    index = {p: i for i, p in enumerate(prompts) if p}
    missing = [c for c in found[1] if c not in index]
    if missing:
        raise UserError(f"caption {missing[0]!r} of {cfg.data.path} is not one of the text model's prompts "
                        f"({len(missing)} of {len(found[1])} captions are not); train from a model folder without a "
                        "diffnas prompt table, or use data with the model's prompts as captions")
    order = torch.tensor([index[c] for c in found[1]], dtype=torch.long)  # caption label -> table index
    return order[found[0]]


def trajectory_macs_parts(cfg: ExperimentConfig, base: BaseModel, per_step_unet_macs: list[int]) -> TrajectoryMacs:
    """What one sample costs by part: the UNet passes (doubled at guidance > 1 for a conditional
    model), the text encoder of a text model (the prompt, and the empty prompt when guided:
    :func:`text_encoder_macs`), the VAE decode (latent models)."""
    guidance = float(cfg.condition.guidance_scale) if base_condition(cfg, base) is not None else 1.0
    vae = vae_decode_macs(base) if base.vae is not None else 0
    text = text_encoder_macs(base) * (2 if guidance != 1.0 else 1) if base.text_encoder is not None else 0
    return TrajectoryMacs.of(per_step_unet_macs, guidance_scale=guidance, vae_decode=vae, text_encoder=text)


def text_encoder_macs(base: BaseModel) -> int:
    """MACs of encoding one prompt with ``base.text_encoder`` (padded to the tokenizer's
    ``model_max_length``, as every prompt is; counted by tracing, attention included)."""
    from experts.text_condition import prompt_encoder_macs

    return prompt_encoder_macs(base.text_encoder, base.tokenizer)


def vae_decode_macs(base: BaseModel) -> int:
    """MACs of decoding one latent of ``base.sample_shape`` with ``base.vae`` (counted by tracing)."""
    from search_spaces.macs import count_macs

    vae = base.vae

    class _Decode(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vae = vae

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.vae.decode(z).sample

    param = next(vae.parameters())
    z = torch.zeros(1, *base.sample_shape, device=param.device, dtype=param.dtype)
    return int(count_macs(_Decode().eval(), {"z": z}).total)
