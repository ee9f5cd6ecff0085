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
``UNet2DConditionModel`` that has a table and no class embedding turns ``class_labels=`` into
``encoder_hidden_states = table[class_labels]`` when called. So the class-label plumbing
(condition dropout, held-out labels, guidance as one batched pass of ``2B``) conditions a text
model on prompts with no stage knowing it is one; the text encoder runs once per prompt.

The conversion is added to ``UNet2DConditionModel.forward`` when diffusers' UNet module is
imported (:func:`enable_prompt_labels`, installed by ``import experts``); a UNet without a table
behaves exactly as before (its ``class_labels`` go to its class embedding, or are ignored, as in
diffusers).

Example:
    >>> import torch
    >>> from diffusers import UNet2DConditionModel
    >>> unet = UNet2DConditionModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8),
    ...     layers_per_block=1, norm_num_groups=4, cross_attention_dim=4, attention_head_dim=4,
    ...     down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    >>> table = torch.randn(3, 2, 4)  # (P, L, D): two prompts and the empty one
    >>> install_prompt_table(unet, ["a one", "a two", ""], table)
    >>> x, t = torch.zeros(2, 1, 8, 8), torch.tensor(10)
    >>> a = unet(x, t, encoder_hidden_states=torch.zeros(2, 1, 4), class_labels=torch.tensor([1, 2])).sample
    >>> b = unet(x, t, encoder_hidden_states=table[[1, 2]]).sample
    >>> bool(torch.equal(a, b)), prompt_condition(unet)
    (True, (2, 2))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from experts._prompt_labels import EMBEDS_KEY, PROMPTS_KEY, enable_prompt_labels, prompt_table
from search_spaces.errors import UserError

__all__ = [
    "DIGIT_WORDS",
    "EMBEDS_KEY",
    "PROMPTS_KEY",
    "class_prompts",
    "enable_prompt_labels",
    "encode_prompts",
    "install_prompt_table",
    "prompt_condition",
    "prompt_encoder_macs",
    "prompt_table",
]

#: the words of the digits' class names, for prompts such as "a handwritten seven"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

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
    if dim is not None and not isinstance(dim, (list, tuple)) and int(dim) != embeds.shape[-1]:
        raise UserError(f"prompt embeddings of width {embeds.shape[-1]} for a UNet with cross_attention_dim={dim}")
    enable_prompt_labels()
    unet.register_to_config(**{PROMPTS_KEY: list(prompts), EMBEDS_KEY: embeds.tolist()})


def prompt_condition(model: Any) -> tuple[int, int] | None:
    """(number of real prompts, index of the empty prompt) of ``model``'s table, or None."""
    table = prompt_table(model)
    if table is None:
        return None
    prompts = table[0]
    return len(prompts) - 1, prompts.index("")


enable_prompt_labels()
