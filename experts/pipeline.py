"""A diffusers ``DiffusionPipeline`` over a :class:`~experts.mixture.MixtureOfExperts`.

:class:`MixturePipeline` samples with any diffusers scheduler (DDIM, DDPM, DPM-Solver++, Euler,
...) and any number of steps, or along any explicit (non-uniform) timestep list: the mixture
routes each step by its timestep (training units). Called without steps, it samples along the
mixture's :class:`~experts.schedule.StepSchedule` when it has one (saved in the mixture's
folder), else 50 evenly spaced steps. With ``seed=`` it draws the noise per image exactly as
``nas.sampling.generate`` does (:mod:`experts.sampling_loop`), so a reloaded pipeline gives
the very tensors a benchmark scored. Latent models pass their ``vae``: latents are divided by
``vae.config.scaling_factor`` and decoded, as diffusers' LDM pipelines do.

Save/load round trip with the usual diffusers calls: ``pipe.save_pretrained(folder)`` writes
``model_index.json`` (the mixture recorded as ``["experts.mixture", "MixtureOfExperts"]``),
``mixture/`` (the mixture's own folder), ``scheduler/`` and, for latent models, ``vae/``.
``MixturePipeline.from_pretrained(folder)`` reads it back: diffusers resolves a component of a
library it does not know from ``sys.modules`` (importing this module imports
``experts.mixture``), sees that :class:`MixtureOfExperts` subclasses ``ModelMixin`` and calls
its ``from_pretrained``. Nothing is unpickled (safetensors only). Call it on
``MixturePipeline``: the generic ``DiffusionPipeline.from_pretrained(folder)`` looks the
pipeline class up in the diffusers package and fails (``module diffusers has no attribute
MixturePipeline``). :func:`load_model_folder` is the one-call loader the CLI uses for any
model folder (pipeline, bare mixture, supernet, UNet).

Example:
    >>> import tempfile, torch
    >>> from diffusers import DDIMScheduler, UNet2DModel
    >>> from experts.intervals import Intervals
    >>> from experts.mixture import MixtureOfExperts
    >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
    ...     layers_per_block=1, norm_num_groups=4, add_attention=False,
    ...     down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    >>> pipe = MixturePipeline(MixtureOfExperts(Intervals(1000, (500,)), [unet, unet]), DDIMScheduler())
    >>> pipe.set_progress_bar_config(disable=True)
    >>> a = pipe(batch_size=2, num_inference_steps=4, generator=torch.manual_seed(0), output_type="pt").images
    >>> d = tempfile.mkdtemp()
    >>> pipe.save_pretrained(d)
    >>> again = MixturePipeline.from_pretrained(d)
    >>> again.set_progress_bar_config(disable=True)
    >>> b = again(batch_size=2, num_inference_steps=4, generator=torch.manual_seed(0), output_type="pt").images
    >>> bool(torch.equal(a, b))
    True
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from experts.mixture import MixtureOfExperts, is_mixture_folder
from experts.pruned import is_pruned_folder, load_pruned
from experts.sampling_loop import TimestepPlan, accepts, denoise_batch
from search_spaces.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["LoadedModel", "MixturePipeline", "load_model_folder"]


class MixturePipeline(DiffusionPipeline):
    """Unconditional (or fixed-context) sampling from a mixture of interval experts.

    Args:
        mixture: the :class:`MixtureOfExperts`.
        scheduler: any diffusers scheduler built from the base model's training schedule.
        vae: decoder for latent models (``AutoencoderKL`` / ``VQModel``), or None.
        null_class_label: the null class of class-conditional experts (``num_class_embeds``):
            what classifier-free guidance and unconditional samples use; default the last
            class embedding. Saved in ``model_index.json`` and restored by ``from_pretrained``
            (nothing is stored for unconditional experts).
        text_encoder, tokenizer: text-to-image experts (``UNet2DConditionModel``): the base
            model's ``CLIPTextModel`` and ``CLIPTokenizer``, for ``prompt``/``negative_prompt``;
            saved and loaded with the pipeline (``text_encoder/``, ``tokenizer/``).
    """

    model_cpu_offload_seq = "text_encoder->mixture->vae"
    _optional_components = ["vae", "text_encoder", "tokenizer"]

    def __init__(self, mixture: MixtureOfExperts, scheduler: Any, vae: nn.Module | None = None,
                 null_class_label: int | None = None, text_encoder: nn.Module | None = None,
                 tokenizer: Any = None) -> None:
        super().__init__()
        if (text_encoder is None) != (tokenizer is None):
            raise UserError("a text-to-image mixture pipeline needs both text_encoder and tokenizer")
        self.register_modules(mixture=mixture, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                              tokenizer=tokenizer)
        cond = _class_condition(mixture, null_class_label)
        if cond is not None:
            self.register_to_config(null_class_label=int(cond.null_label))

    @property
    def class_condition(self) -> Any:
        """The experts' :class:`~experts.guidance.ClassCondition` (classes, null label), or None."""
        return _class_condition(self.mixture, getattr(self.config, "null_class_label", None))

    def _sample_shape(self, batch_size: int) -> tuple[int, ...]:
        cfg = self.mixture.config
        size = cfg.sample_size
        hw = (size, size) if isinstance(size, int) else tuple(size)
        return (batch_size, int(cfg.in_channels), *hw)

    def _plan(self, num_inference_steps: int | None, timesteps: Any) -> TimestepPlan:
        """Explicit ``timesteps``, else ``num_inference_steps`` evenly spaced steps, else the
        mixture's schedule, else 50 evenly spaced steps."""
        if timesteps is None and num_inference_steps is None:
            schedule = getattr(self.mixture, "schedule", None)
            if schedule is None:
                num_inference_steps = self.DEFAULT_STEPS
            else:
                timesteps = schedule
        return TimestepPlan(self.scheduler, num_inference_steps, timesteps)

    #: evenly spaced steps when neither steps nor timesteps are given and the mixture has no schedule
    DEFAULT_STEPS = 50

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        eta: float = 0.0,
        latents: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        timesteps: Any = None,
        seed: int | None = None,
        first_image: int = 0,
        class_labels: int | list[int] | torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Generate ``batch_size`` images.

        Args:
            num_inference_steps: evenly spaced steps, as the scheduler places them; default
                (with no ``timesteps``): the mixture's step schedule if it has one, else 50.
            timesteps: an explicit, strictly descending list of training timesteps, or a
                :class:`~experts.schedule.StepSchedule` (DDIM, DDPM, DPM-Solver++ and Euler run any).
            generator: a generator or one per image (initial noise and stochastic steps).
            eta: passed to schedulers that take it (DDIM); ignored by the others.
            latents: (B, C, H, W) initial noise instead of drawing it.
            encoder_hidden_states: (1, L, D) or (B, L, D) context for conditional UNet experts.
            output_type: ``pil``, ``np`` (B, H, W, C) in [0, 1], or ``pt`` (B, C, H, W) in [0, 1].
            seed: draw the noise as ``nas.sampling.generate(..., seed=seed)`` does: these are its
                images ``first_image .. first_image + batch_size - 1`` (bit for bit when its
                batch is the same); excludes ``generator``, ``latents`` and ``eta``.
            first_image: index of the first image of the batch in the seeded run.
            class_labels: class-conditional experts: the class of each image (one int for all,
                or ``batch_size`` of them); None samples the null class (unconditional).
            guidance_scale: classifier-free guidance with ``class_labels`` or ``prompt`` (1: none;
                above 1 the null class (the negative or empty prompt) and the condition run as
                one batched pass of twice the batch per step).
            prompt: text-to-image experts: one prompt for every image, or one per image (a list
                sets ``batch_size``); encoded once per image by the text encoder. With neither
                ``prompt`` nor ``class_labels`` a text mixture samples the empty prompt.
            negative_prompt: what guidance steers away from (one, or one per image); default
                the empty prompt. Needs ``guidance_scale > 1``.

        Raises:
            ValueError: both steps and timesteps, bad timesteps, or ``seed`` with ``generator``,
                ``latents`` or a non-zero ``eta``.
        """
        plan = self._plan(num_inference_steps, timesteps)
        device = self._execution_device
        dtype = self.mixture.dtype
        if isinstance(prompt, (list, tuple)) and int(batch_size) == 1:
            batch_size = len(prompt)
        ehs = None
        if prompt is not None or negative_prompt is not None:
            if class_labels is not None or encoder_hidden_states is not None:
                raise UserError("pass prompt (text) or class_labels or encoder_hidden_states, not several")
            model = self._prompted(prompt, negative_prompt, guidance_scale, int(batch_size), device, dtype)
        elif class_labels is None and self._text_experts():
            if float(guidance_scale) != 1.0:
                raise UserError("guidance_scale > 1 needs a prompt (or class_labels) to guide towards")
            model = self.mixture  # the context as given, else the empty prompt (no condition)
            if encoder_hidden_states is None:
                encoder_hidden_states = self._empty_prompt()
        else:
            model = self._conditioned(class_labels, guidance_scale, int(batch_size))
        if encoder_hidden_states is not None:
            ehs = encoder_hidden_states.to(device=device, dtype=dtype)
        if seed is not None:
            if generator is not None or latents is not None or eta:
                raise ValueError("seed= draws the noise itself: pass no generator, latents or eta")
            with self.progress_bar(total=plan.num_steps) as bar:
                x = denoise_batch(model, plan, int(seed), int(first_image), int(first_image) + int(batch_size),
                                  self._sample_shape(1)[1:], device, ehs, bar)
        else:
            x = self._denoise(plan, batch_size, generator, eta, latents, ehs, device, dtype, model)
        return self._finish(x, output_type, return_dict)

    def _text_experts(self) -> bool:
        """Whether the experts are text-conditional: a text encoder, or a prompt table in their config."""
        from experts.text_condition import prompt_table

        experts = getattr(self.mixture, "experts", None)
        return getattr(self, "text_encoder", None) is not None or bool(experts) and prompt_table(experts[0]) is not None

    def _empty_prompt(self) -> torch.Tensor:
        """(1, L, D) context of the empty prompt: from the text encoder, else the experts' table."""
        from experts.text_condition import prompt_table

        if getattr(self, "text_encoder", None) is not None:
            return self.encode_prompt([""])
        prompts, table = prompt_table(self.mixture.experts[0])
        return table[prompts.index("")][None]

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """The text encoder's context for ``prompts``: (P, L, D) (:func:`experts.text_condition.encode_prompts`).
        Without a text encoder, prompts of the experts' prompt table (a run's mixture folder:
        "a handwritten seven") are looked up there: the same embeddings."""
        from experts.text_condition import encode_prompts, prompt_table

        if getattr(self, "text_encoder", None) is not None and getattr(self, "tokenizer", None) is not None:
            return encode_prompts(self.text_encoder, self.tokenizer, prompts)
        experts = getattr(self.mixture, "experts", None)
        table = prompt_table(experts[0]) if experts else None
        if table is not None and all(p in table[0] for p in prompts):  # the experts' own prompts, encoded
            return table[1][[table[0].index(p) for p in prompts]]  # (P, L, D)
        known = f" (without one, only the experts' prompts: {table[0][:3]}...)" if table is not None else ""
        raise UserError("prompt/negative_prompt need a text-to-image mixture pipeline built with the base model's "
                        f"text_encoder and tokenizer{known}")

    def _prompted(self, prompt: Any, negative_prompt: Any, guidance_scale: float, batch_size: int,
                  device: torch.device, dtype: torch.dtype) -> Any:
        """The mixture called with each image's prompt embedding (and guidance away from the
        negative or empty prompt): :class:`~experts.guidance.PromptConditionedModel`."""
        from experts.guidance import PromptConditionedModel

        if prompt is None:
            raise UserError("negative_prompt needs a prompt (what guidance steers towards)")
        if negative_prompt is not None and float(guidance_scale) == 1.0:
            raise UserError("negative_prompt needs guidance_scale > 1 (at 1 only the prompt is used)")
        prompts = _per_image(prompt, batch_size, "prompt")
        cond = self.encode_prompt(prompts).to(device=device, dtype=dtype)  # (B,L,D)
        uncond = None
        if float(guidance_scale) != 1.0:
            negatives = _per_image("" if negative_prompt is None else negative_prompt, batch_size, "negative_prompt")
            uncond = self.encode_prompt(negatives).to(device=device, dtype=dtype)  # (B,L,D)
        return PromptConditionedModel(self.mixture, cond, uncond, guidance_scale=float(guidance_scale))

    def _conditioned(self, class_labels: Any, guidance_scale: float, batch_size: int) -> Any:
        """The mixture itself (unconditional experts), else the mixture called with each image's
        class (:class:`~experts.guidance.ConditionedModel`: guidance, or the null class)."""
        from experts.guidance import ConditionedModel

        cond = self.class_condition
        if cond is None:
            if class_labels is not None or float(guidance_scale) != 1.0:
                raise UserError("class_labels/guidance_scale need class-conditional experts (num_class_embeds); "
                                "these experts take no class")
            return self.mixture
        labels = None
        if class_labels is not None:
            labels = torch.as_tensor(class_labels, dtype=torch.long).flatten()
            if labels.numel() == 1:
                labels = labels.expand(batch_size).clone()
            if labels.shape[0] != batch_size:
                raise UserError(f"class_labels must give one class per image: {labels.shape[0]} for {batch_size} images")
            labels = cond.check_labels(labels)
        elif float(guidance_scale) != 1.0:
            raise UserError("guidance_scale > 1 needs class_labels (the classes to guide towards)")
        return ConditionedModel(self.mixture, labels, guidance_scale=float(guidance_scale),
                                null_label=cond.null_label)

    def _denoise(self, plan: TimestepPlan, batch_size: int, generator: Any, eta: float, latents: torch.Tensor | None,
                 ehs: torch.Tensor | None, device: torch.device, dtype: torch.dtype, model: Any = None) -> torch.Tensor:
        """The diffusers-style loop: noise from ``generator`` (or ``latents``), (B, C, H, W)."""
        if latents is None:
            latents = randn_tensor(self._sample_shape(batch_size), generator=generator, device=device,
                                   dtype=dtype)  # (B,C,H,W)
        else:
            latents = latents.to(device=device, dtype=dtype)
        scheduler = plan.reset(device)
        x = latents * scheduler.init_noise_sigma  # (B,C,H,W)
        kw: dict[str, Any] = {}
        if ehs is not None:
            kw["encoder_hidden_states"] = ehs.expand(batch_size, *ehs.shape[1:]) if ehs.shape[0] == 1 else ehs
        step_kw: dict[str, Any] = {}
        if accepts(scheduler.step, "eta"):
            step_kw["eta"] = eta
        if accepts(scheduler.step, "generator"):
            step_kw["generator"] = generator
        for t in self.progress_bar(scheduler.timesteps):
            x_in = scheduler.scale_model_input(x, t)
            out = self.mixture(x_in, t, **kw).sample if model is None or model is self.mixture \
                else model(x_in, t, **kw)  # (B,C,H,W)
            x = scheduler.step(out, t, x, **step_kw).prev_sample
        return x

    def _finish(self, x: torch.Tensor, output_type: str, return_dict: bool) -> ImagePipelineOutput | tuple:
        """Decode (latent models), map to [0, 1] and convert to ``output_type``."""
        vae = getattr(self, "vae", None)
        if vae is not None:
            scale = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
            x = vae.decode(x / scale).sample  # (B,C',H',W')
        image = (x / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            image = image.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                image = self.numpy_to_pil(image)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)


def _per_image(text: str | list[str], batch_size: int, name: str) -> list[str]:
    """One string per image: ``text`` repeated, or a list of ``batch_size`` strings."""
    if isinstance(text, str):
        return [text] * batch_size
    texts = [str(t) for t in text]
    if len(texts) != batch_size:
        raise UserError(f"{name} must be one string or one per image: {len(texts)} for {batch_size} images")
    return texts


def _class_condition(mixture: Any, null_class_label: int | None) -> Any:
    """:class:`~experts.guidance.ClassCondition` of the mixture's first expert, or None."""
    from experts.guidance import ClassCondition

    experts = getattr(mixture, "experts", None)
    first = experts[0] if experts else (mixture.expert_for(0) if hasattr(mixture, "expert_for") else None)
    return ClassCondition.from_unet(first, null_class_label) if first is not None else None


@dataclass
class LoadedModel:
    """A model folder loaded for ``diffnas sample``/``evaluate --model PATH``.

    Attributes:
        model: callable ``model(x, t, **kw)`` (a mixture, a UNet, a supernet at full arch).
        kind: ``mixture-pipeline``, ``mixture``, ``supernet``, ``unet`` or ``pruned-unet`` (a
            statically pruned UNet, :mod:`experts.pruned` format).
        scheduler_config: the stored scheduler's config (pipeline folders), else None.
        vae: the stored decoder (latent pipeline folders), else None.
        path: where it was read from.
    """

    model: nn.Module
    kind: str
    scheduler_config: dict | None
    vae: nn.Module | None
    path: Path

    def macs_per_call(self) -> list[int] | int:
        """Per-interval MACs for mixtures; one number for a single model."""
        if isinstance(self.model, MixtureOfExperts):
            return self.model.macs_per_expert()
        if hasattr(self.model, "space") and hasattr(self.model, "active"):
            return int(self.model.space.macs(self.model.active))
        from search_spaces.macs import count_unet_macs

        return int(count_unet_macs(self.model, batch_size=1))

    @property
    def schedule(self) -> Any:
        """The mixture's :class:`~experts.schedule.StepSchedule`, or None (also for single models)."""
        return getattr(self.model, "schedule", None) if isinstance(self.model, MixtureOfExperts) else None

    def trajectory_macs(self, timesteps: list[int]) -> int:
        """Sum of the MACs of the model serving each of ``timesteps``."""
        if isinstance(self.model, MixtureOfExperts):
            return self.model.trajectory_macs(timesteps)
        return int(self.macs_per_call()) * len(timesteps)


def load_model_folder(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a mixture pipeline folder, a mixture folder, a supernet, or a (materialised) UNet folder.

    Raises:
        UserError: the folder is none of these.
    """
    from search_spaces.materialize import load_materialized

    p = Path(path)
    if not p.is_dir():
        raise UserError(f"model folder {str(path)!r} does not exist")
    index = p / "model_index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        if "mixture" not in data:
            raise UserError(
                f"{p} is a diffusers pipeline without a mixture; pass it as model.base, or --model a mixture folder"
            )
        pipe = MixturePipeline.from_pretrained(str(p))
        pipe.to(device)
        return LoadedModel(pipe.mixture.eval(), "mixture-pipeline", dict(pipe.scheduler.config), pipe.vae, p)
    if is_mixture_folder(p):
        return LoadedModel(MixtureOfExperts.from_pretrained(p, device=device).eval(), "mixture", None, None, p)
    if (p / "diffnas_supernet.json").is_file():
        from search_spaces.elastic_unet import ElasticUNet

        return LoadedModel(ElasticUNet.from_pretrained(p, device=device).eval(), "supernet", None, None, p)
    if (p / "config.json").is_file():
        if is_pruned_folder(p):
            return LoadedModel(load_pruned(p, device=device).eval(), "pruned-unet", _scheduler_config(p), None, p)
        return LoadedModel(load_materialized(p, device=device).eval(), "unet", _scheduler_config(p), None, p)
    raise UserError(
        f"{p} is not a model folder: expected a mixture (mixture.json), a mixture pipeline (model_index.json), "
        "a supernet (diffnas_supernet.json) or a (pruned) UNet (config.json)"
    )


def _scheduler_config(p: Path) -> dict | None:
    """The scheduler config next to a UNet folder (its own or its pipeline's), if any."""
    for cand in (p / "scheduler_config.json", p.parent / "scheduler" / "scheduler_config.json"):
        if cand.is_file():
            return json.loads(cand.read_text())
    return None
