"""Text conditions for ``UNet2DConditionModel`` denoisers: prompts, their embeddings, and the
*prompt table* that lets every stage condition a text model through its per-sample labels.

A text-to-image base model (``unet`` + ``text_encoder`` + ``tokenizer``) is conditioned on the
text encoder's last hidden states of a prompt, ``encoder_hidden_states`` (B, L, D). The stages
of a run carry one integer condition per sample (the data's class labels; the null class for
condition dropout and for the unconditional half of guidance). For a text model each label
names a prompt: label ``c`` -> ``"a handwritten seven"``, the null label -> the empty prompt
``""``. :func:`install_prompt_table` stores the prompts and their embeddings (P, L, D) in the
UNet's diffusers config (hidden keys, so they travel with every copy: deep copies, elastic
supernets, materialised sub-networks, ``save_pretrained``/``from_pretrained``), and a
denoiser is called through :func:`call_denoiser` (or with :func:`condition_kwargs`): for a
model with a table and no class embedding, ``class_labels=`` becomes
``encoder_hidden_states = table[class_labels]``. Every place diffnas calls a denoiser does so
(training and fine-tuning losses, teachers, interval similarity, guidance and the sampling
loops, the mixture's dispatch to its experts, DeepCache), so the class-label plumbing
(condition dropout, held-out labels, guidance as one batched pass of ``2B``) conditions a text
model on prompts with no stage knowing it is one; the text encoder runs once per prompt.

diffusers itself is left as it is: a text UNet called directly ignores ``class_labels`` (as
diffusers does without a class embedding), and a model without a table is called with its
keyword arguments unchanged (``class_labels`` go to its class embedding).

Example:
    >>> import torch
    >>> from diffusers import UNet2DConditionModel
    >>> unet = UNet2DConditionModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8),
    ...     layers_per_block=1, norm_num_groups=4, cross_attention_dim=4, attention_head_dim=4,
    ...     down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    >>> table = torch.randn(3, 2, 4)  # (P, L, D): two prompts and the empty one
    >>> install_prompt_table(unet, ["a one", "a two", ""], table)
    >>> x, t = torch.zeros(2, 1, 8, 8), torch.tensor(10)
    >>> a = call_denoiser(unet, x, t, encoder_hidden_states=torch.zeros(2, 1, 4), class_labels=torch.tensor([1, 2])).sample
    >>> b = unet(x, t, encoder_hidden_states=table[[1, 2]]).sample
    >>> bool(torch.equal(a, b)), prompt_condition(unet)
    (True, (2, 2))
    >>> sorted(condition_kwargs(unet, x, {"class_labels": torch.tensor([1, 2])}))
    ['encoder_hidden_states']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from search_spaces.errors import UserError

__all__ = [
    "DIGIT_WORDS",
    "EMBEDS_KEY",
    "PROMPTS_KEY",
    "PromptLabels",
    "as_tensor",
    "call_denoiser",
    "class_prompts",
    "condition_kwargs",
    "encode_prompts",
    "install_prompt_table",
    "prompt_condition",
    "prompt_encoder_macs",
    "prompt_table",
]

#: the words of the digits' class names, for prompts such as "a handwritten seven"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: hidden keys of the UNet's diffusers config holding the prompt table (saved in config.json)
PROMPTS_KEY = "_diffnas_prompts"
EMBEDS_KEY = "_diffnas_prompt_embeds"

_TABLES: dict[int, tuple[Any, torch.Tensor]] = {}


def prompt_table(model: Any) -> tuple[list[str], torch.Tensor] | None:
    """(prompts, embeddings (P, L, D) float32 on the CPU) stored in ``model``'s config, or None
    (a wrapper with the UNet's ``config``, e.g. an elastic supernet, has its UNet's table)."""
    config = getattr(model, "config", None)
    raw = config.get(EMBEDS_KEY) if hasattr(config, "get") else None
    if raw is None:
        return None
    hit = _TABLES.get(id(raw))
    if hit is None or hit[0] is not raw:  # one tensor per stored list (a copy has its own)
        if len(_TABLES) > 256:
            _TABLES.clear()
        hit = (raw, torch.tensor(raw, dtype=torch.float32))
        _TABLES[id(raw)] = hit
    return list(config.get(PROMPTS_KEY)), hit[1]


def _has_class_embedding(model: Any) -> bool:
    """Whether ``model`` (or the UNet a wrapper holds as ``.unet``) embeds its ``class_labels``."""
    m = model
    for _ in range(4):  # a wrapper of a wrapper of a UNet at most
        if m is None:
            break
        if "class_embedding" in getattr(m, "__dict__", {}) or "class_embedding" in getattr(m, "_modules", {}):
            return getattr(m, "class_embedding") is not None
        m = getattr(m, "unet", None)
    config = getattr(model, "config", None)
    if not hasattr(config, "get"):
        return False
    kind = config.get("class_embed_type")  # diffusers' UNet2DConditionModel._set_class_embedding
    return (kind is None and config.get("num_class_embeds") is not None) or kind in (
        "timestep", "identity", "projection", "simple_projection")


def condition_kwargs(model: Any, sample: torch.Tensor, kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The keyword arguments to call ``model`` on ``sample`` (B, C, H, W) with: ``kwargs`` as
    they are, except for a text model with a prompt table and no class embedding, whose
    ``class_labels`` (B,) become ``encoder_hidden_states = table[class_labels]`` (B, L, D), in
    ``sample``'s device and dtype (module docstring). A new dict; ``kwargs`` is not changed.
    """
    kw = dict(kwargs or {})
    labels = kw.get("class_labels")
    if labels is None or _has_class_embedding(model):
        return kw
    table = prompt_table(model)
    if table is None:
        return kw
    emb = table[1].to(device=sample.device, dtype=sample.dtype)  # (P,L,D)
    kw["encoder_hidden_states"] = emb[torch.as_tensor(labels, device=sample.device).long()]  # (B,L,D)
    del kw["class_labels"]
    return kw


def as_tensor(out: Any) -> torch.Tensor:
    """The prediction of a model call: a tensor, ``out.sample`` or ``out[0]``."""
    if torch.is_tensor(out):
        return out
    sample = getattr(out, "sample", None)
    if torch.is_tensor(sample):
        return sample
    if isinstance(out, (tuple, list)) and out and torch.is_tensor(out[0]):
        return out[0]
    raise TypeError(f"the model returned {type(out).__name__}; expected a tensor or an object with .sample")


def call_denoiser(model: Any, sample: torch.Tensor, timestep: Any, *args: Any, **kwargs: Any) -> Any:
    """``model(sample, timestep, *args, **kwargs)`` with the keyword arguments of
    :func:`condition_kwargs`: how diffnas calls every denoiser (a diffusers UNet, an elastic
    supernet, a mixture, a wrapper or a plain callable) so labels condition text models too."""
    return model(sample, timestep, *args, **condition_kwargs(model, sample, kwargs))


class PromptLabels(torch.nn.Module):
    """``model`` as a module called through :func:`call_denoiser`: for code that calls a
    denoiser plainly as ``model(x, t, class_labels=...)`` (e.g. a distillation teacher handed to
    the router). Its parameters, ``config`` and prompt table are ``model``'s.

    Example:
        >>> from diffusers import UNet2DModel
        >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8),
        ...     layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
        ...     up_block_types=("UpBlock2D",) * 2, add_attention=False)
        >>> wrapped = PromptLabels(unet)
        >>> x = torch.zeros(1, 1, 8, 8)
        >>> bool(torch.equal(wrapped(x, 5).sample, unet(x, 5).sample)), wrapped.config is unet.config
        (True, True)
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def config(self) -> Any:
        """The wrapped model's config."""
        return self.model.config

    def forward(self, sample: torch.Tensor, timestep: Any, *args: Any, **kwargs: Any) -> Any:
        return call_denoiser(self.model, sample, timestep, *args, **kwargs)

def class_prompts(names: Sequence[str], template: str = "a handwritten {}") -> list[str]:
    """One prompt per class name (digits as words), then the empty prompt (the null class).

    Example:
        >>> class_prompts(["3", "7"])
        ['a handwritten three', 'a handwritten seven', '']
        >>> class_prompts(["cat"], "a photo of a {}")
        ['a photo of a cat', '']
    """
    if "{}" not in template:
        raise UserError(f"a prompt template needs one '{{}}' for the class name, got {template!r}")
    words = [DIGIT_WORDS[int(n)] if str(n).isdigit() and int(n) < 10 else str(n) for n in names]
    return [template.format(w) for w in words] + [""]


def encode_prompts(text_encoder: Any, tokenizer: Any, prompts: Sequence[str]) -> torch.Tensor:
    """The text encoder's last hidden states of ``prompts``, padded to the tokenizer's
    ``model_max_length`` as diffusers' Stable Diffusion pipelines do: (P, L, D), no gradient."""
    ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids  # (P, L)
    param = next(text_encoder.parameters())
    with torch.no_grad():
        return text_encoder(ids.to(param.device))[0]  # (P, L, D)


def prompt_encoder_macs(text_encoder: Any, tokenizer: Any) -> int:
    """MACs of encoding one prompt (``model_max_length`` tokens: every prompt is padded to it),
    counted by tracing (:func:`search_spaces.macs.count_macs`; attention matmuls included)."""
    from search_spaces.macs import count_macs

    class _Encode(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = text_encoder

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.encoder(input_ids)[0]

    ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids  # (1, L)
    param = next(text_encoder.parameters())
    return int(count_macs(_Encode().eval(), {"input_ids": ids.to(param.device)}).total)


def install_prompt_table(unet: Any, prompts: Sequence[str], embeds: torch.Tensor) -> None:
    """Store ``prompts`` and their embeddings (P, L, D) in ``unet``'s config: from then on a
    call with ``class_labels`` (B,) uses ``embeds[class_labels]`` as its context (module docstring).

    Raises:
        UserError: not one embedding per prompt, no empty prompt (the null class), or a
            context width other than the UNet's ``cross_attention_dim``.
    """
    embeds = torch.as_tensor(embeds).detach().float().cpu()
    if embeds.ndim != 3 or embeds.shape[0] != len(prompts):
        raise UserError(f"a prompt table needs one (L, D) embedding per prompt: {tuple(embeds.shape)} for "
                        f"{len(prompts)} prompts")
    if "" not in prompts:
        raise UserError("a prompt table needs the empty prompt (the unconditional half of guidance)")
    dim = getattr(unet.config, "cross_attention_dim", None)
    if dim is None:
        raise UserError(f"a prompt table needs a UNet with cross-attention (cross_attention_dim), got "
                        f"{type(unet).__name__}; use a UNet2DConditionModel")
    if not isinstance(dim, (list, tuple)) and int(dim) != embeds.shape[-1]:
        raise UserError(f"prompt embeddings of width {embeds.shape[-1]} for a UNet with cross_attention_dim={dim}")
    unet.register_to_config(**{PROMPTS_KEY: list(prompts), EMBEDS_KEY: embeds.tolist()})


def prompt_condition(model: Any) -> tuple[int, int] | None:
    """(number of real prompts, index of the empty prompt) of ``model``'s table, or None."""
    table = prompt_table(model)
    if table is None:
        return None
    prompts = table[0]
    return len(prompts) - 1, prompts.index("")
