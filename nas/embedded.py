"""The embedded base model: a small ``UNet2DModel`` trained here on scikit-learn's digits
(16x16), once; later calls reuse it (a hash of the training config is stored beside the
weights). Training shows a progress bar, checkpoints every N steps (safetensors + JSON, no
pickles) and resumes from the last checkpoint after a kill. Loaded through
:func:`nas.models.load_base_model` (``embedded:digits``)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from experts.checkpoint import (  # one checkpoint format
    finish_uninterrupted,
    flatten_optimizer,
    recover_checkpoint,
    remove_tree,
    unflatten_optimizer,
)
from experts.expert_folder import reading_artefact
from experts.text_condition import call_denoiser
from nas.model_folders import MARKER_FILE, read_json
from search_spaces.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_DIR", "CLASS_CONDITION_DROPOUT", "TEXT_SETTINGS", "build_embedded_unet", "build_training_scheduler", "config_hash", "digits_16",
           "embedded_settings", "train_embedded_digits"]

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


def digits_16() -> torch.Tensor:
    """scikit-learn's 1,797 8x8 digits, resized to 16x16, scaled to [-1, 1]: (N, 1, 16, 16)."""
    from nas.data import load_digits_images

    return load_digits_images(16)


#: Condition dropout of the class-conditional embedded model (``embedded:digits-class``): the
#: fraction of training labels replaced by the null class, for classifier-free guidance.
CLASS_CONDITION_DROPOUT = 0.1


#: The text model of ``embedded:digits-text``: a tiny CLIP text encoder (frozen at its seeded
#: initialisation: distinct prompts give distinct contexts, the UNet learns to read them), prompts
#: "a handwritten <digit>", the empty prompt 10% of the time (the null class) for guidance.
TEXT_SETTINGS: dict[str, Any] = {"hidden_size": 32, "num_layers": 2, "max_length": 8, "seed": 0,
                                 "template": "a handwritten {}"}


def embedded_settings(model_cfg: Any, num_classes: int = 0, text: bool = False) -> dict:
    """The training settings that determine the weights, from a config object (missing -> default).

    ``num_classes > 0``: a class-conditional model (``num_classes`` + 1 null class embeddings,
    trained with condition dropout); its settings carry ``num_classes`` and
    ``condition_dropout``, an unconditional model's settings are unchanged by them.
    """
    out = {}
    for key, default in _TRAIN_FIELDS.items():
        value = getattr(model_cfg, key, default) if model_cfg is not None else default
        out[key] = list(value) if isinstance(value, (tuple, list)) else value
    if int(num_classes) > 0:
        out["num_classes"] = int(num_classes)
        out["condition_dropout"] = CLASS_CONDITION_DROPOUT
    if text:
        out["text"] = dict(TEXT_SETTINGS)
    return out


def config_hash(settings: dict, images: torch.Tensor, labels: torch.Tensor | None = None) -> str:
    """sha256 of the training settings and the training data (shape and bytes; the labels too when given)."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update(str(tuple(images.shape)).encode())
    h.update(images.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    if labels is not None:
        h.update(b"labels")
        h.update(labels.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


def build_embedded_unet(settings: dict, *, in_channels: int = 1, sample_size: int = 16):
    """The embedded UNet2DModel: attention (if on) in every level but the top one, and in the mid block;
    class-conditional (``num_class_embeds = num_classes + 1``, the last one the null class) when
    ``settings`` has ``num_classes``."""
    from diffusers import UNet2DModel

    channels = tuple(int(c) for c in settings["block_out_channels"])
    n = len(channels)
    attn = bool(settings["attention"])
    if settings.get("text"):  # a text model: cross-attention to the prompt in every level but the top one
        from diffusers import UNet2DConditionModel

        down = tuple("CrossAttnDownBlock2D" if i > 0 else "DownBlock2D" for i in range(n))
        return UNet2DConditionModel(
            sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
            block_out_channels=channels, layers_per_block=int(settings["layers_per_block"]),
            norm_num_groups=int(settings["norm_num_groups"]), down_block_types=down,
            up_block_types=tuple(reversed(tuple(d.replace("Down", "Up") for d in down))),
            mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=int(settings["text"]["hidden_size"]),
            attention_head_dim=min(32, channels[-1]),
        )
    down = tuple("AttnDownBlock2D" if attn and i > 0 else "DownBlock2D" for i in range(n))
    up = tuple(reversed(tuple(d.replace("Down", "Up") for d in down)))
    return UNet2DModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
        block_out_channels=channels, layers_per_block=int(settings["layers_per_block"]),
        norm_num_groups=int(settings["norm_num_groups"]), down_block_types=down, up_block_types=up,
        add_attention=attn, attention_head_dim=min(32, channels[-1]),
        num_class_embeds=int(settings["num_classes"]) + 1 if settings.get("num_classes") else None,
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


def _save_checkpoint(ckpt: Path, step: int, unet, ema: dict, opt, gen: torch.Generator, settings: dict, digest: str,
                     loss_ema: float) -> None:
    from safetensors.torch import save_file

    tmp = ckpt.with_name(ckpt.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    try:  # interrupted (Ctrl-C, SIGTERM, full disk): no half-written checkpoint.tmp is left behind
        save_file({k: v.detach().cpu().contiguous() for k, v in unet.state_dict().items()}, tmp / "model.safetensors")
        save_file({k: v.cpu().contiguous() for k, v in ema.items()}, tmp / "ema.safetensors")
        opt_tensors, opt_meta = flatten_optimizer(opt)
        opt_tensors["__rng_state__"] = gen.get_state()
        save_file(opt_tensors, tmp / "optimizer.safetensors")
        (tmp / "state.json").write_text(json.dumps(
            {"step": step, "config_hash": digest, "settings": settings, "optimizer": opt_meta,
             "seed": settings["seed"], "loss_ema": loss_ema}, indent=1))
    except BaseException:
        remove_tree(tmp)
        raise
    # swap atomically-ish: a kill leaves either the old or the new checkpoint complete, and SIGTERM
    # (raised as an exception by the CLI) landing in the swap or the clean-up still leaves no .old
    old = ckpt.with_name(ckpt.name + ".old")
    try:
        if ckpt.exists():
            ckpt.rename(old)
        tmp.rename(ckpt)
    finally:
        finish_uninterrupted(lambda: recover_checkpoint(ckpt))


def train_embedded_digits(
    out_dir: Path,
    images: torch.Tensor,
    model_cfg: Any = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    labels: torch.Tensor | None = None,
    num_classes: int | None = None,
    text: bool = False,
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
        labels: (N,) class labels of ``images``: a class-conditional model (``num_classes``
            classes + the null class; labels replaced by it with probability
            :data:`CLASS_CONDITION_DROPOUT`). None: unconditional.
        num_classes: the number of classes (default: the largest label + 1).
        text: a text-to-image model (``embedded:digits-text``): label ``c`` is the prompt
            "a handwritten <c>", the null class the empty prompt (:data:`TEXT_SETTINGS`).

    Raises:
        UserError: ``out_dir`` holds a model or checkpoint trained with a different config.

    Example::

        >>> path = train_embedded_digits(Path("runs/x/base/d"), digits_16(), cfg.model)  # doctest: +SKIP
    """
    out_dir = Path(out_dir)
    if labels is not None:
        labels = _check_labels(labels, images, num_classes)
        num_classes = int(num_classes) if num_classes is not None else int(labels.max()) + 1
    if text and labels is None:
        raise UserError("a text model (embedded:digits-text) is trained on labelled images: pass labels")
    settings = embedded_settings(model_cfg, num_classes=num_classes or 0, text=text)
    digest = config_hash(settings, images, labels)
    marker = out_dir / MARKER_FILE
    if _is_trained(marker, digest, out_dir):
        return out_dir
    ckpt = out_dir / CHECKPOINT_DIR
    recover_checkpoint(ckpt)
    every = max(1, int(getattr(model_cfg, "checkpoint_every", 250) if model_cfg is not None else 250))
    total = int(settings["train_steps"])
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise UserError(f"training images must be (N, C, H, W) with H == W, got {tuple(images.shape)}")

    run = _start_training(settings, digest, images, device)
    run.labels = labels
    if settings.get("text"):
        run.text = _text_parts(run.unet, settings)
    start, loss_ema = 0, float("nan")
    if (ckpt / "state.json").is_file():
        start, loss_ema = _resume_training(run, ckpt, total)

    n_params = sum(p.numel() for p in run.unet.parameters())
    log.info("training the embedded base model (%.2fM parameters) for %d steps on %s", n_params / 1e6, total, device)
    t0 = time.perf_counter()
    loss_ema = _train_steps(run, images, start, total, loss_ema, ckpt, every, progress)
    elapsed_s = time.perf_counter() - t0

    _save_trained(run, out_dir, marker, {
        "config_hash": digest, "settings": settings, "parameters": n_params, "final_loss_ema": loss_ema,
        "train_seconds_this_run": round(elapsed_s, 2), "steps_this_run": total - start, "device": str(device)})
    _remove_checkpoint_dir(ckpt)
    log.info("saved the base model to %s (%.1f s for %d steps)", out_dir, elapsed_s, total - start)
    return out_dir


@dataclass
class _Training:
    """What one training run of the embedded UNet works on; ``ema`` is replaced on resume."""

    unet: Any
    scheduler: Any
    opt: torch.optim.Optimizer
    gen: torch.Generator  # batches, timesteps, noise (CPU)
    ema: dict[str, torch.Tensor]
    settings: dict
    digest: str
    device: str | torch.device
    labels: torch.Tensor | None = None  # (N,) class labels of a class-conditional model
    text: tuple[Any, Any] | None = None  # (text encoder, tokenizer) of a text model


def _text_parts(unet: Any, settings: dict) -> tuple[Any, Any]:
    """The tokenizer and text encoder of a text model, and its class prompts in ``unet``'s config
    (so the training step's labels condition it: :mod:`experts.text_condition`)."""
    from nas.text_models import TEXT_WORDS, build_text_encoder, build_tokenizer, install_class_prompts

    t = settings["text"]
    tokenizer = build_tokenizer(TEXT_WORDS, max_length=int(t["max_length"]))
    encoder = build_text_encoder(tokenizer, hidden_size=int(t["hidden_size"]), num_layers=int(t["num_layers"]),
                                 seed=int(t["seed"]))
    install_class_prompts(unet, encoder, tokenizer, [str(i) for i in range(int(settings["num_classes"]))],
                          str(t["template"]))
    return encoder, tokenizer


def _check_labels(labels: torch.Tensor, images: torch.Tensor, num_classes: int | None) -> torch.Tensor:
    """(N,) int64 labels in [0, num_classes), one per image; UserError otherwise."""
    labels = torch.as_tensor(labels).long().cpu()
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise UserError(f"class labels must be one per training image: got {tuple(labels.shape)} for "
                        f"{images.shape[0]} images")
    top = int(num_classes) if num_classes is not None else int(labels.max()) + 1
    if int(labels.min()) < 0 or int(labels.max()) >= top:
        raise UserError(f"class labels must lie in [0, {top}), got {int(labels.min())}..{int(labels.max())}")
    return labels


def _is_trained(marker: Path, digest: str, out_dir: Path) -> bool:
    """True if ``out_dir`` holds the model of this config; UserError if it holds another config's."""
    if not marker.is_file():
        return False
    done = read_json(marker)
    if done.get("config_hash") == digest:
        log.info("reusing the trained base model in %s", out_dir)
        return True
    raise UserError(
        f"{out_dir} holds a base model trained with a different config (hash "
        f"{done.get('config_hash', '?')[:10]} != {digest[:10]}); use another folder or delete it"
    )


def _start_training(settings: dict, digest: str, images: torch.Tensor, device: str | torch.device) -> _Training:
    """Seeded fresh UNet (in train mode on ``device``), scheduler, AdamW, data RNG and EMA copy."""
    torch.manual_seed(int(settings["seed"]))
    unet = build_embedded_unet(settings, in_channels=int(images.shape[1]), sample_size=int(images.shape[-1]))
    unet.to(device).train()
    scheduler = build_training_scheduler(settings)
    opt = torch.optim.AdamW(unet.parameters(), lr=float(settings["learning_rate"]), weight_decay=0.0)
    gen = torch.Generator().manual_seed(int(settings["seed"]))
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    return _Training(unet, scheduler, opt, gen, ema, settings, digest, device)


def _resume_training(run: _Training, ckpt: Path, total: int) -> tuple[int, float]:
    """Load the checkpoint in ``ckpt`` into ``run``; returns (start step, loss EMA)."""
    from safetensors.torch import load_file

    state = read_json(ckpt / "state.json")
    if state.get("config_hash") != run.digest:
        raise UserError(
            f"{ckpt} is a checkpoint of a different config; delete it or use another folder"
        )
    remedy = f"delete {ckpt} to restart the base model's training from step 0"
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        with reading_artefact(ckpt / name, remedy):
            tensors = load_file(ckpt / name, device="cpu" if name == "optimizer.safetensors" else str(run.device))
            if name == "model.safetensors":
                run.unet.load_state_dict(tensors)
            elif name == "ema.safetensors":
                run.ema = tensors
            else:
                run.gen.set_state(tensors.pop("__rng_state__"))
                run.opt.load_state_dict(unflatten_optimizer(tensors, state["optimizer"]))
    start, loss_ema = int(state["step"]), float(state.get("loss_ema", float("nan")))
    log.info("resuming base-model training from step %d/%d (%s)", start, total, ckpt)
    return start, loss_ema


def _train_steps(run: _Training, images: torch.Tensor, start: int, total: int, loss_ema: float, ckpt: Path,
                 every: int, progress: bool) -> float:
    """Steps ``start..total-1`` (EMA update, checkpoint every ``every`` steps); returns the loss EMA."""
    from tqdm.auto import tqdm

    data = images.to(torch.float32)
    live = run.unet.state_dict()
    float_keys = [k for k, v in live.items() if v.dtype.is_floating_point]
    ema_list = [run.ema[k] for k in float_keys]
    live_list = [live[k] for k in float_keys]
    alphas = run.scheduler.alphas_cumprod.to(run.device)
    decay_max = float(run.settings["ema_decay"])
    bar = tqdm(total=total, initial=start, desc="train base", disable=not progress, dynamic_ncols=True)
    for step in range(start, total):
        value = _train_step(run, step, data, alphas)
        decay = min(decay_max, (1 + step) / (10 + step))
        with torch.no_grad():  # EMA of the float tensors (all of the UNet's state is float)
            torch._foreach_lerp_(ema_list, [v.detach() for v in live_list], 1.0 - decay)
        loss_ema = value if math.isnan(loss_ema) else 0.98 * loss_ema + 0.02 * value
        bar.update(1)
        bar.set_postfix(loss=f"{loss_ema:.4f}", refresh=False)
        done_steps = step + 1
        if done_steps % every == 0 and done_steps < total:
            _save_checkpoint(ckpt, done_steps, run.unet, run.ema, run.opt, run.gen, run.settings, run.digest,
                             loss_ema)
    bar.close()
    return loss_ema


def _train_step(run: _Training, step: int, data: torch.Tensor, alphas: torch.Tensor) -> float:
    """One optimiser step on a random noised batch (draws: indices, noise, timesteps); returns the loss."""
    batch = int(run.settings["batch_size"])
    device = run.device
    idx = torch.randint(0, data.shape[0], (batch,), generator=run.gen)
    x0 = data[idx].to(device)  # (B,C,H,W)
    noise = torch.randn(x0.shape, generator=run.gen).to(device)  # (B,C,H,W)
    t = torch.randint(0, run.scheduler.config.num_train_timesteps, (batch,), generator=run.gen).to(device)  # (B,)
    kw = {}
    if run.labels is not None:  # class-conditional: the images' labels, the null class 10% of the time
        from experts.guidance import drop_labels

        null = int(run.settings["num_classes"])
        y = drop_labels(run.labels[idx], float(run.settings["condition_dropout"]), run.gen, null)  # (B,)
        kw["class_labels"] = y.to(device)
    a = alphas[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    for g in run.opt.param_groups:
        g["lr"] = _lr_at(step, run.settings)
    loss = torch.nn.functional.mse_loss(call_denoiser(run.unet, xt, t, **kw).sample, noise)  # labels -> prompts
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.unet.parameters(), 1.0)
    run.opt.step()
    return float(loss.detach())


def _save_trained(run: _Training, out_dir: Path, marker: Path, info: dict) -> None:
    """Save the EMA weights as a DDPM pipeline folder, then the marker JSON ``info`` last."""
    from diffusers import DDPMPipeline

    run.unet.load_state_dict(run.ema)
    run.unet.eval()
    if run.text is not None:
        _save_text_pipeline(run, out_dir)
    else:
        DDPMPipeline(unet=run.unet, scheduler=run.scheduler).save_pretrained(out_dir, safe_serialization=True)
    marker.write_text(json.dumps(info, indent=1))


def _save_text_pipeline(run: _Training, out_dir: Path) -> None:
    """A text-to-image folder in Stable Diffusion's layout (no vae: a pixel model): ``unet/``,
    ``text_encoder/``, ``tokenizer/``, ``scheduler/``, ``model_index.json``, each part written
    by its library's ``save_pretrained``, and the prompt template (:data:`nas.text_models.PROMPTS_FILE`)."""
    import diffusers
    import transformers

    from nas.text_models import PROMPTS_FILE, quiet_transformers

    quiet_transformers()
    encoder, tokenizer = run.text
    out_dir.mkdir(parents=True, exist_ok=True)
    run.unet.save_pretrained(out_dir / "unet", safe_serialization=True)
    encoder.save_pretrained(out_dir / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(out_dir / "tokenizer")
    run.scheduler.save_pretrained(out_dir / "scheduler")
    index = {"_class_name": "DiffusionPipeline", "_diffusers_version": diffusers.__version__,
             "_transformers_version": transformers.__version__,
             "unet": ["diffusers", "UNet2DConditionModel"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", type(run.scheduler).__name__]}
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2))
    (out_dir / PROMPTS_FILE).write_text(json.dumps({"template": run.settings["text"]["template"]}))


def _remove_checkpoint_dir(ckpt: Path) -> None:
    if ckpt.exists():
        for p in ckpt.iterdir():
            p.unlink()
        ckpt.rmdir()
