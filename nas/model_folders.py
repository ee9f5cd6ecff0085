"""Loading a pretrained diffusion model from a diffusers folder (pipeline or bare UNet) or a
hub id, as a :class:`BaseModel`. The embedded model's training is in :mod:`nas.embedded`; the one
entry point for every source is :func:`nas.models.load_base_model`."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from search_spaces.errors import UserError

log = logging.getLogger(__name__)

MARKER_FILE = "diffnas_base.json"  # written last, after the final save: its presence means "done"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

__all__ = ["MARKER_FILE", "BaseModel", "is_hub_id", "load_folder", "read_json", "resolve_hub_id"]


@dataclass
class BaseModel:
    """A pretrained denoiser and what is needed to sample from it.

    Attributes:
        unet: a diffusers ``UNet2DModel`` or ``UNet2DConditionModel`` (eval mode).
        scheduler_config: the training noise scheduler's config (``num_train_timesteps``,
            ``beta_schedule``, ``beta_start``/``beta_end``, ``prediction_type``, ...); build any
            sampler from it with ``nas.sampling.make_scheduler(name, scheduler_config)``.
        vae: ``VQModel``/``AutoencoderKL`` for latent models, else None.
        source: the spec it was loaded from (``embedded:digits``, a folder, a hub id).
        sample_shape: (C, H, W) of what the UNet denoises (latents for latent models).
        latent_scale: latents are divided by this before ``vae.decode`` (the vae's
            ``scaling_factor``, as diffusers' pipelines do); 1.0 for pixel models.
        encoder_hidden_states: for a ``UNet2DConditionModel`` only: the fixed context used to
            call it unconditionally, shape (1, 1, cross_attention_dim), all zeros. This is a
            neutral context, not a text encoder's embedding of the empty prompt; set it to that
            embedding (shape (1, L, D)) if you have one. None for unconditional UNets.
        path: the folder the weights were read from (None if built in memory).
        text_encoder, tokenizer: a text-to-image folder's ``CLIPTextModel`` and ``CLIPTokenizer``
            (:mod:`nas.text_models`); then ``encoder_hidden_states`` is the embedding of the
            empty prompt. None otherwise.
    """

    unet: torch.nn.Module
    scheduler_config: dict
    vae: torch.nn.Module | None = None
    source: str = ""
    sample_shape: tuple[int, int, int] = (1, 16, 16)
    latent_scale: float = 1.0
    encoder_hidden_states: torch.Tensor | None = None
    path: Path | None = None
    info: dict = field(default_factory=dict)
    text_encoder: torch.nn.Module | None = None
    tokenizer: object | None = None

    def unet_kwargs(self, batch_size: int) -> dict:
        """Extra keyword arguments for one UNet call on a batch (empty for unconditional UNets)."""
        if self.encoder_hidden_states is None:
            return {}
        ehs = self.encoder_hidden_states  # (1, L, D)
        return {"encoder_hidden_states": ehs.expand(batch_size, *ehs.shape[1:])}

    def to(self, device: str | torch.device) -> "BaseModel":
        """Move the UNet, the vae and the context to ``device`` (in place); returns self."""
        self.unet.to(device)
        if self.vae is not None:
            self.vae.to(device)
        if self.encoder_hidden_states is not None:
            self.encoder_hidden_states = self.encoder_hidden_states.to(device)
        if self.text_encoder is not None:
            self.text_encoder.to(device)
        return self


# --------------------------------------------------------------------------------------------
# loading



def _hub_offline() -> str | None:
    """Why the hub is off (``HF_HUB_OFFLINE=1`` or ``DIFFNAS_OFFLINE=1``), or None."""
    from nas._network import offline_reason

    reason = offline_reason()
    if reason is not None:
        return reason
    try:
        from huggingface_hub import constants

        return "HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else None
    except Exception:  # pragma: no cover - old hub versions
        return None


def _hub_help(repo_id: str) -> str:
    return (
        f"on a machine with network access run `hf download {repo_id} --local-dir <folder>` "
        f"(`huggingface-cli download ...` with older huggingface_hub), or load it in diffusers and call "
        f"`.save_pretrained(<folder>, safe_serialization=True)`; copy the folder here and pass its path "
        f"instead of {repo_id!r}"
    )


def is_hub_id(spec: str) -> bool:
    """Whether ``spec`` has the shape of a hub id ``owner/name`` (and not of a relative path)."""
    return bool(_HUB_ID.match(spec)) and not spec.startswith((".", "/", "~"))


def resolve_hub_id(repo_id: str) -> Path:
    """Return the local snapshot folder of a hub repo: from the HF cache, else download it."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt"]
    try:  # the cache first: never touches the network
        return Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=patterns))
    except Exception as exc:  # LocalEntryNotFoundError and friends
        cache_error = exc
    offline = _hub_offline()
    if offline is not None:
        raise UserError(
            f"hub model {repo_id!r} is not in the local Hugging Face cache and the hub is offline "
            f"({offline}); {_hub_help(repo_id)}"
        ) from cache_error
    from huggingface_hub import constants

    from nas._network import connect_timeout_s, reachability_problem

    problem = reachability_problem(constants.ENDPOINT, connect_timeout_s())  # the hub client may wait long
    if problem is not None:
        raise UserError(
            f"hub model {repo_id!r} is not in the local Hugging Face cache and the hub at {constants.ENDPOINT} "
            f"cannot be reached ({problem}); {_hub_help(repo_id)}"
        ) from cache_error
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, etag_timeout=10))
    except Exception as exc:  # connection errors, RepositoryNotFoundError, GatedRepoError, ...
        raise UserError(
            f"could not get hub model {repo_id!r} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            f"{_hub_help(repo_id)}"
        ) from exc


def read_json(path: Path) -> dict:
    """The JSON object in ``path``; a :class:`UserError` naming the file if it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc


_UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")
_VAE_CLASSES = ("VQModel", "AutoencoderKL")


def _model_class(name: str):
    import diffusers

    return getattr(diffusers, name)


def _load_component(folder: Path, subfolder: str | None, allowed: tuple[str, ...], device):
    cfg_path = (folder / subfolder if subfolder else folder) / "config.json"
    cls_name = read_json(cfg_path).get("_class_name")
    if cls_name not in allowed:
        raise UserError(f"{cfg_path}: model class {cls_name!r} is not supported here; expected one of {allowed}")
    cls = _model_class(cls_name)
    kwargs = {"subfolder": subfolder} if subfolder else {}
    try:
        model = cls.from_pretrained(folder, use_safetensors=True, low_cpu_mem_usage=False, **kwargs)
    except (OSError, EnvironmentError) as exc:
        raise UserError(
            f"cannot load {cls_name} from {cfg_path.parent}: {str(exc).splitlines()[0]} "
            f"(only safetensors weights are loaded; convert .bin weights elsewhere with "
            f"`.save_pretrained(folder, safe_serialization=True)`)"
        ) from exc
    return model.to(device).eval().requires_grad_(False)


def _default_scheduler_config() -> dict:
    from diffusers import DDPMScheduler

    return dict(DDPMScheduler().config)


def load_folder(folder: Path, *, device: str | torch.device = "cpu", source: str | None = None) -> BaseModel:
    """Load a pipeline folder (``model_index.json``) or a bare UNet folder as a :class:`BaseModel`.

    Example::

        >>> base = load_folder(Path("runs/demo/base/embedded-digits-0123456789"))  # doctest: +SKIP
    """
    folder = Path(folder)
    source = source if source is not None else str(folder)
    vae = text_encoder = tokenizer = None
    if (folder / "model_index.json").is_file():
        index = read_json(folder / "model_index.json")
        if "unet" not in index:
            raise UserError(f"{folder}/model_index.json has no 'unet' component; cannot use it as a base model")
        unet = _load_component(folder, "unet", _UNET_CLASSES, device)
        vae_key = next((k for k in ("vqvae", "vae") if k in index and (folder / k).is_dir()), None)
        if vae_key is not None:
            vae = _load_component(folder, vae_key, _VAE_CLASSES, device)
        from nas.text_models import load_text_parts

        text_encoder, tokenizer = load_text_parts(folder, index, device)
        sched_path = folder / "scheduler" / "scheduler_config.json"
        if sched_path.is_file():
            scheduler_config = read_json(sched_path)
        else:
            log.warning("%s has no scheduler/scheduler_config.json; using DDPM defaults", folder)
            scheduler_config = _default_scheduler_config()
    elif (folder / "config.json").is_file():
        unet = _load_component(folder, None, _UNET_CLASSES, device)
        candidates = [folder / "scheduler_config.json", folder.parent / "scheduler" / "scheduler_config.json"]
        found = next((p for p in candidates if p.is_file()), None)
        if found is not None:
            scheduler_config = read_json(found)
        else:
            log.warning("%s has no scheduler_config.json; using DDPM defaults (linear betas, 1000 steps)", folder)
            scheduler_config = _default_scheduler_config()
    else:
        raise UserError(
            f"{folder} is not a diffusers model folder: expected model_index.json (a pipeline) or "
            f"config.json + diffusion_pytorch_model.safetensors (a bare UNet)"
        )

    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    size_w = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[1]
    sample_shape = (int(cfg.in_channels), int(size), int(size_w))
    latent_scale = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0) if vae is not None else 1.0
    ehs = None
    if type(unet).__name__ == "UNet2DConditionModel":
        ehs = torch.zeros(1, 1, int(cfg.cross_attention_dim), device=device)
        if text_encoder is not None:  # the empty prompt: the unconditional context
            from experts.text_condition import encode_prompts

            ehs = encode_prompts(text_encoder, tokenizer, [""]).to(device)  # (1, L, D)
    info = {}
    if (folder / MARKER_FILE).is_file():
        info = read_json(folder / MARKER_FILE)
    scheduler_config = {k: v for k, v in scheduler_config.items()}
    return BaseModel(
        unet=unet, scheduler_config=scheduler_config, vae=vae, source=source, sample_shape=sample_shape,
        latent_scale=latent_scale, encoder_hidden_states=ehs, path=folder, info=info,
        text_encoder=text_encoder, tokenizer=tokenizer,
    )


# --------------------------------------------------------------------------------------------
# the embedded model
