"""Base diffusion models: load a diffusers model (hub id or local folder) or train the embedded one.

One entry point, :func:`load_base_model`, returns a :class:`BaseModel` whatever the source:

- ``embedded:digits``: a small ``UNet2DModel`` trained here on scikit-learn's digits (16x16),
  once; later calls reuse it (a hash of the training config is stored beside the weights).
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
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from search_spaces.errors import UserError

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
EMBEDDED_DATASETS = ("digits",)
MARKER_FILE = "diffnas_base.json"  # written last, after the final save: its presence means "done"
CHECKPOINT_DIR = "checkpoint"

# Training settings that change the trained weights (and so the config hash), with the defaults
# used when the config object does not carry the field.
_TRAIN_FIELDS: dict[str, Any] = {
    "train_steps": 2000,
    "batch_size": 64,
    "learning_rate": 2e-3,
    "block_out_channels": (32, 64, 64),
    "layers_per_block": 2,
    "norm_num_groups": 8,
    "num_train_timesteps": 1000,
    "attention": True,
    "ema_decay": 0.999,
    "warmup_steps": 100,
    "beta_schedule": "squaredcos_cap_v2",
    "seed": 0,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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
        return self


# --------------------------------------------------------------------------------------------
# loading


def load_base_model(
    spec: str,
    *,
    model_cfg: Any = None,
    images: torch.Tensor | None = None,
    cache_dir: Path,
    device: str | torch.device = "cpu",
    progress: bool = True,
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

    Raises:
        UserError: unknown embedded name, missing folder, hub id not available offline,
            unsupported layout, weights without safetensors.

    Example::

        >>> base = load_base_model("embedded:digits", model_cfg=cfg.model,
        ...                        cache_dir=Path("runs/demo/base"), device="cpu")  # doctest: +SKIP
    """
    spec = str(spec).strip()
    if spec.startswith(EMBEDDED_PREFIX):
        name = spec[len(EMBEDDED_PREFIX):]
        if name not in EMBEDDED_DATASETS:
            raise UserError(
                f"unknown embedded model {spec!r}; choices: "
                + ", ".join(EMBEDDED_PREFIX + n for n in EMBEDDED_DATASETS)
            )
        if images is None:
            images = _load_digits()
        settings = embedded_settings(model_cfg)
        out_dir = Path(cache_dir) / f"embedded-{name}-{config_hash(settings, images)[:10]}"
        train_embedded_digits(out_dir, images, model_cfg, device=device, progress=progress)
        base = load_folder(out_dir, device=device)
        base.source = spec
        return base

    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"base model {spec!r} is a file; pass a folder saved with save_pretrained")
        return load_folder(path, device=device, source=spec)
    if _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        try:
            snapshot = _resolve_hub_id(spec)
        except UserError as exc:
            raise UserError(f"base model {spec!r} is not a local folder; as a hub id: {exc}") from exc.__cause__
        return load_folder(snapshot, device=device, source=spec)
    raise UserError(
        f"base model {spec!r} not found: not an existing folder, not a hub id (owner/name), "
        f"and not one of: " + ", ".join(EMBEDDED_PREFIX + n for n in EMBEDDED_DATASETS)
    )


def _hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - old hub versions
        return False


def _hub_help(repo_id: str) -> str:
    return (
        f"on a machine with network access run `hf download {repo_id} --local-dir <folder>` "
        f"(`huggingface-cli download ...` with older huggingface_hub), or load it in diffusers and call "
        f"`.save_pretrained(<folder>, safe_serialization=True)`; copy the folder here and pass its path "
        f"instead of {repo_id!r}"
    )


def _resolve_hub_id(repo_id: str) -> Path:
    """Return the local snapshot folder of a hub repo: from the HF cache, else download it."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt"]
    try:  # the cache first: never touches the network
        return Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=patterns))
    except Exception as exc:  # LocalEntryNotFoundError and friends
        cache_error = exc
    if _hub_offline():
        raise UserError(
            f"hub model {repo_id!r} is not in the local Hugging Face cache and the hub is offline "
            f"(HF_HUB_OFFLINE=1); {_hub_help(repo_id)}"
        ) from cache_error
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, etag_timeout=10))
    except Exception as exc:  # connection errors, RepositoryNotFoundError, GatedRepoError, ...
        raise UserError(
            f"could not get hub model {repo_id!r} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            f"{_hub_help(repo_id)}"
        ) from exc


def _read_json(path: Path) -> dict:
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
    cls_name = _read_json(cfg_path).get("_class_name")
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
    vae = None
    if (folder / "model_index.json").is_file():
        index = _read_json(folder / "model_index.json")
        if "unet" not in index:
            raise UserError(f"{folder}/model_index.json has no 'unet' component; cannot use it as a base model")
        unet = _load_component(folder, "unet", _UNET_CLASSES, device)
        vae_key = next((k for k in ("vqvae", "vae") if k in index and (folder / k).is_dir()), None)
        if vae_key is not None:
            vae = _load_component(folder, vae_key, _VAE_CLASSES, device)
        sched_path = folder / "scheduler" / "scheduler_config.json"
        if sched_path.is_file():
            scheduler_config = _read_json(sched_path)
        else:
            log.warning("%s has no scheduler/scheduler_config.json; using DDPM defaults", folder)
            scheduler_config = _default_scheduler_config()
    elif (folder / "config.json").is_file():
        unet = _load_component(folder, None, _UNET_CLASSES, device)
        candidates = [folder / "scheduler_config.json", folder.parent / "scheduler" / "scheduler_config.json"]
        found = next((p for p in candidates if p.is_file()), None)
        if found is not None:
            scheduler_config = _read_json(found)
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
    info = {}
    if (folder / MARKER_FILE).is_file():
        info = _read_json(folder / MARKER_FILE)
    scheduler_config = {k: v for k, v in scheduler_config.items()}
    return BaseModel(
        unet=unet, scheduler_config=scheduler_config, vae=vae, source=source, sample_shape=sample_shape,
        latent_scale=latent_scale, encoder_hidden_states=ehs, path=folder, info=info,
    )


# --------------------------------------------------------------------------------------------
# the embedded model


def _load_digits() -> torch.Tensor:
    """Digits (N, 1, 16, 16) in [-1, 1] (nas.data's loader)."""
    return digits_16()


def digits_16() -> torch.Tensor:
    """scikit-learn's 1,797 8x8 digits, resized to 16x16, scaled to [-1, 1]: (N, 1, 16, 16)."""
    from nas.data import load_digits_images

    return load_digits_images(16)


def embedded_settings(model_cfg: Any) -> dict:
    """The training settings that determine the weights, from a config object (missing -> default)."""
    out = {}
    for key, default in _TRAIN_FIELDS.items():
        value = getattr(model_cfg, key, default) if model_cfg is not None else default
        out[key] = list(value) if isinstance(value, (tuple, list)) else value
    return out


def config_hash(settings: dict, images: torch.Tensor) -> str:
    """sha256 of the training settings and the training data (shape and bytes)."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update(str(tuple(images.shape)).encode())
    h.update(images.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def build_embedded_unet(settings: dict, *, in_channels: int = 1, sample_size: int = 16):
    """The embedded UNet2DModel: attention (if on) in every level but the top one, and in the mid block."""
    from diffusers import UNet2DModel

    channels = tuple(int(c) for c in settings["block_out_channels"])
    n = len(channels)
    attn = bool(settings["attention"])
    down = tuple("AttnDownBlock2D" if attn and i > 0 else "DownBlock2D" for i in range(n))
    up = tuple(reversed(tuple(d.replace("Down", "Up") for d in down)))
    return UNet2DModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
        block_out_channels=channels, layers_per_block=int(settings["layers_per_block"]),
        norm_num_groups=int(settings["norm_num_groups"]), down_block_types=down, up_block_types=up,
        add_attention=attn, attention_head_dim=min(32, channels[-1]),
    )


def build_training_scheduler(settings: dict):
    """DDPMScheduler for training: epsilon prediction, the configured beta schedule."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=int(settings["num_train_timesteps"]),
        beta_schedule=str(settings["beta_schedule"]), prediction_type="epsilon", clip_sample=True,
    )


def _lr_at(step: int, settings: dict) -> float:
    """Linear warm-up then cosine decay to 10% of the peak learning rate."""
    peak = float(settings["learning_rate"])
    warm = max(1, min(int(settings["warmup_steps"]), int(settings["train_steps"]) // 10 or 1))
    if step < warm:
        return peak * (step + 1) / warm
    total = max(1, int(settings["train_steps"]) - warm)
    frac = min(1.0, (step - warm) / total)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state as flat tensors (safetensors) plus a JSON-able remainder."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        _, idx, k = key.split(".", 2)
        state.setdefault(int(idx), {})[k] = v
    for idx, st in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(st)
    return {"state": state, "param_groups": meta["param_groups"]}


def _save_checkpoint(ckpt: Path, step: int, unet, ema: dict, opt, gen: torch.Generator, settings: dict, digest: str,
                     loss_ema: float) -> None:
    from safetensors.torch import save_file

    tmp = ckpt.with_name(ckpt.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in unet.state_dict().items()}, tmp / "model.safetensors")
    save_file({k: v.cpu().contiguous() for k, v in ema.items()}, tmp / "ema.safetensors")
    opt_tensors, opt_meta = _flatten_optimizer(opt)
    opt_tensors["__rng_state__"] = gen.get_state()
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    (tmp / "state.json").write_text(json.dumps(
        {"step": step, "config_hash": digest, "settings": settings, "optimizer": opt_meta,
         "seed": settings["seed"], "loss_ema": loss_ema}, indent=1))
    # swap atomically-ish: a kill leaves either the old or the new checkpoint complete
    old = ckpt.with_name(ckpt.name + ".old")
    if ckpt.exists():
        ckpt.rename(old)
    tmp.rename(ckpt)
    if old.exists():
        for p in old.iterdir():
            p.unlink()
        old.rmdir()


def _recover_checkpoint_dir(ckpt: Path) -> None:
    """After a kill during the swap, restore whichever complete checkpoint is left."""
    old = ckpt.with_name(ckpt.name + ".old")
    if not ckpt.exists() and old.exists():
        old.rename(ckpt)
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    if tmp.exists():
        for p in tmp.iterdir():
            p.unlink()
        tmp.rmdir()


def train_embedded_digits(
    out_dir: Path,
    images: torch.Tensor,
    model_cfg: Any = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Path:
    """Train the embedded UNet2DModel on ``images`` into ``out_dir`` (resumable); reuse if done.

    Writes ``out_dir`` as a diffusers DDPM pipeline folder (``model_index.json``, ``unet/``,
    ``scheduler/``; load it with ``DDPMPipeline.from_pretrained(out_dir)``), the EMA weights as
    the UNet, and ``diffnas_base.json`` (config hash, settings, timing) last. While training,
    ``out_dir/checkpoint/`` holds the latest checkpoint (model, EMA, AdamW state and the data
    RNG state as safetensors, step and settings as JSON): rerunning after a kill resumes from it,
    and on the CPU the result is bitwise the same as an uninterrupted run.

    Args:
        out_dir: the model folder.
        images: (N, C, H, W) in [-1, 1]; H == W.
        model_cfg: attribute access for the fields in ``_TRAIN_FIELDS`` plus ``checkpoint_every``.
        device: "cpu", "cuda", ...
        progress: tqdm bar.

    Raises:
        UserError: ``out_dir`` holds a model or checkpoint trained with a different config.

    Example::

        >>> path = train_embedded_digits(Path("runs/x/base/d"), digits_16(), cfg.model)  # doctest: +SKIP
    """
    from diffusers import DDPMPipeline
    from safetensors.torch import load_file
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    settings = embedded_settings(model_cfg)
    digest = config_hash(settings, images)
    marker = out_dir / MARKER_FILE
    if marker.is_file():
        done = _read_json(marker)
        if done.get("config_hash") == digest:
            log.info("reusing the trained base model in %s", out_dir)
            return out_dir
        raise UserError(
            f"{out_dir} holds a base model trained with a different config (hash "
            f"{done.get('config_hash', '?')[:10]} != {digest[:10]}); use another folder or delete it"
        )
    ckpt = out_dir / CHECKPOINT_DIR
    _recover_checkpoint_dir(ckpt)
    every = max(1, int(getattr(model_cfg, "checkpoint_every", 250) if model_cfg is not None else 250))
    total = int(settings["train_steps"])
    batch = int(settings["batch_size"])
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise UserError(f"training images must be (N, C, H, W) with H == W, got {tuple(images.shape)}")

    torch.manual_seed(int(settings["seed"]))
    unet = build_embedded_unet(settings, in_channels=int(images.shape[1]), sample_size=int(images.shape[-1]))
    unet.to(device).train()
    scheduler = build_training_scheduler(settings)
    opt = torch.optim.AdamW(unet.parameters(), lr=float(settings["learning_rate"]), weight_decay=0.0)
    gen = torch.Generator().manual_seed(int(settings["seed"]))  # batches, timesteps, noise (CPU)
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    start, loss_ema = 0, float("nan")
    if (ckpt / "state.json").is_file():
        state = _read_json(ckpt / "state.json")
        if state.get("config_hash") != digest:
            raise UserError(
                f"{ckpt} is a checkpoint of a different config; delete it or use another folder"
            )
        unet.load_state_dict(load_file(ckpt / "model.safetensors", device=str(device)))
        ema = load_file(ckpt / "ema.safetensors", device=str(device))
        opt_tensors = load_file(ckpt / "optimizer.safetensors")
        gen.set_state(opt_tensors.pop("__rng_state__"))
        opt.load_state_dict(_unflatten_optimizer(opt_tensors, state["optimizer"]))
        start, loss_ema = int(state["step"]), float(state.get("loss_ema", float("nan")))
        log.info("resuming base-model training from step %d/%d (%s)", start, total, ckpt)

    data = images.to(torch.float32)
    live = unet.state_dict()
    float_keys = [k for k, v in live.items() if v.dtype.is_floating_point]
    ema_list = [ema[k] for k in float_keys]
    live_list = [live[k] for k in float_keys]
    alphas = scheduler.alphas_cumprod.to(device)
    decay_max = float(settings["ema_decay"])
    n_params = sum(p.numel() for p in unet.parameters())
    log.info("training the embedded base model (%.2fM parameters) for %d steps on %s", n_params / 1e6, total, device)
    t0 = time.perf_counter()
    bar = tqdm(total=total, initial=start, desc="train base", disable=not progress, dynamic_ncols=True)
    for step in range(start, total):
        idx = torch.randint(0, data.shape[0], (batch,), generator=gen)
        x0 = data[idx].to(device)  # (B,C,H,W)
        noise = torch.randn(x0.shape, generator=gen).to(device)  # (B,C,H,W)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=gen).to(device)  # (B,)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, settings)
        loss = torch.nn.functional.mse_loss(unet(xt, t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(decay_max, (1 + step) / (10 + step))
        with torch.no_grad():  # EMA of the float tensors (all of the UNet's state is float)
            torch._foreach_lerp_(ema_list, [v.detach() for v in live_list], 1.0 - decay)
        value = float(loss.detach())
        loss_ema = value if math.isnan(loss_ema) else 0.98 * loss_ema + 0.02 * value
        bar.update(1)
        bar.set_postfix(loss=f"{loss_ema:.4f}", refresh=False)
        done_steps = step + 1
        if done_steps % every == 0 and done_steps < total:
            _save_checkpoint(ckpt, done_steps, unet, ema, opt, gen, settings, digest, loss_ema)
    bar.close()
    elapsed_s = time.perf_counter() - t0

    unet.load_state_dict(ema)
    unet.eval()
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(out_dir, safe_serialization=True)
    marker.write_text(json.dumps(
        {"config_hash": digest, "settings": settings, "parameters": n_params, "final_loss_ema": loss_ema,
         "train_seconds_this_run": round(elapsed_s, 2), "steps_this_run": total - start,
         "device": str(device)}, indent=1))
    if ckpt.exists():
        for p in ckpt.iterdir():
            p.unlink()
        ckpt.rmdir()
    log.info("saved the base model to %s (%.1f s for %d steps)", out_dir, elapsed_s, total - start)
    return out_dir

