"""The text parts of a text-to-image base model: a diffusers pipeline folder in Stable
Diffusion's layout (``unet`` = ``UNet2DConditionModel``, ``text_encoder`` = transformers'
``CLIPTextModel``, ``tokenizer`` = ``CLIPTokenizer``, ``scheduler``, ``vae`` when latent),
and the small ones of the embedded ``embedded:digits-text`` model, built here with nothing
downloaded: a CLIP tokenizer from a vocabulary and merges written for the prompts' words, and a
CLIP text encoder in a tiny configuration.

How the stages condition such a model on prompts is in :mod:`experts.text_condition`: the
data's labels name prompts (``"a handwritten seven"``; the null class is the empty prompt),
whose embeddings are stored in the UNet's config (:func:`install_data_prompts`): the distinct
captions of caption data (:func:`nas.data.load_folder_captions`), else one prompt per class
sub-folder (:func:`install_class_prompts`).

Example:
    >>> tok = build_tokenizer(["a", "handwritten", "seven"], max_length=8)
    >>> tok("a handwritten seven").input_ids
    [0, 3, 4, 5, 1]
    >>> enc = build_text_encoder(tok, hidden_size=16, num_layers=1, seed=0)
    >>> tuple(encode_prompts(enc, tok, ["a handwritten seven", ""]).shape)
    (2, 8, 16)
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from experts.text_condition import DIGIT_WORDS, class_prompts, encode_prompts, install_prompt_table
from search_spaces.errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "PROMPTS_FILE",
    "TEXT_WORDS",
    "build_text_encoder",
    "build_tokenizer",
    "install_class_prompts",
    "install_data_prompts",
    "load_text_parts",
    "prompt_template_of",
    "quiet_transformers",
]

#: optional file of a text-to-image folder: {"template": "a handwritten {}"} for class prompts
PROMPTS_FILE = "diffnas_prompts.json"
#: the default template for a user's folder without :data:`PROMPTS_FILE`
DEFAULT_TEMPLATE = "a photo of a {}"
#: the words of the embedded text model's prompts
TEXT_WORDS = ("a", "handwritten", *DIGIT_WORDS)

_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"


def _byte_chars() -> list[str]:
    """CLIP's byte -> printable character table (the GPT-2 one), in byte order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(
        range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def quiet_transformers() -> None:
    """No per-file progress bars from transformers' save/load (runs log their own progress)."""
    from transformers.utils import logging as tf_logging

    tf_logging.disable_progress_bar()


def build_tokenizer(words: Sequence[str], *, max_length: int = 8) -> Any:
    """A ``CLIPTokenizer`` whose vocabulary has every byte (alone and word-final) and one token
    per word in ``words``, reached by left-to-right merges; any other text still tokenizes
    (into characters). ``model_max_length = max_length`` (start and end tokens included).

    Raises:
        UserError: a word with characters outside lowercase ASCII letters.
    """
    from transformers import CLIPTokenizer

    chars = _byte_chars()
    vocab: dict[str, int] = {_BOS: 0, _EOS: 1, "<|pad|>": 2}
    merges: list[str] = []
    for w in words:
        if not w or not w.isascii() or not w.isalpha() or w != w.lower():
            raise UserError(f"tokenizer words must be lowercase ASCII letters, got {w!r}")
        pieces = list(w[:-1]) + [w[-1] + "</w>"]
        cur = pieces[0]
        for nxt in pieces[1:]:
            merge = f"{cur} {nxt}"
            if merge not in merges:
                merges.append(merge)
            cur = cur + nxt
        vocab.setdefault(cur, len(vocab))
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    for m in merges:  # every intermediate merge result is a token too
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "vocab.json").write_text(json.dumps(vocab))
        (Path(d) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        tok = CLIPTokenizer(str(Path(d) / "vocab.json"), str(Path(d) / "merges.txt"), pad_token="<|pad|>",
                            model_max_length=int(max_length))
    return tok


def build_text_encoder(tokenizer: Any, *, hidden_size: int = 32, num_layers: int = 2, seed: int = 0) -> Any:
    """A ``CLIPTextModel`` in a tiny configuration for ``tokenizer`` (seeded, eval mode)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=int(hidden_size),
                            intermediate_size=4 * int(hidden_size), num_hidden_layers=int(num_layers),
                            num_attention_heads=max(1, int(hidden_size) // 16),
                            max_position_embeddings=int(tokenizer.model_max_length),
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(int(seed))
    return CLIPTextModel(config).eval().requires_grad_(False)


def load_text_parts(folder: Path, index: dict, device: str | torch.device) -> tuple[Any, Any]:
    """(text_encoder, tokenizer) of a pipeline folder whose ``model_index.json`` lists both, or
    (None, None) when it lists neither.

    Raises:
        UserError: only one of them, a class other than CLIP's, or weights that cannot be read.
    """
    has_enc, has_tok = "text_encoder" in index, "tokenizer" in index
    if not has_enc and not has_tok:
        return None, None
    if has_enc != has_tok or not (folder / "text_encoder").is_dir() or not (folder / "tokenizer").is_dir():
        raise UserError(f"{folder}: a text-to-image folder needs both text_encoder/ and tokenizer/ "
                        "(as StableDiffusionPipeline.save_pretrained writes them)")
    enc_cls = (index.get("text_encoder") or [None, None])[1]
    tok_cls = (index.get("tokenizer") or [None, None])[1]
    if enc_cls not in ("CLIPTextModel",) or tok_cls not in ("CLIPTokenizer", "CLIPTokenizerFast"):
        raise UserError(f"{folder}/model_index.json: text encoder {enc_cls!r} / tokenizer {tok_cls!r} are not "
                        "supported; expected CLIPTextModel and CLIPTokenizer")
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError as exc:  # pragma: no cover - transformers is a dependency
        raise UserError("a text-to-image base model needs transformers: pip install transformers") from exc
    quiet_transformers()
    try:
        encoder = CLIPTextModel.from_pretrained(str(folder / "text_encoder"), use_safetensors=True)
        tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the text encoder/tokenizer of {folder}: {str(exc).splitlines()[0]} "
                        "(only safetensors weights are loaded)") from exc
    return encoder.to(device).eval().requires_grad_(False), tokenizer


def prompt_template_of(folder: Path | None) -> str:
    """The class-prompt template of a text-to-image folder (:data:`PROMPTS_FILE`), else
    :data:`DEFAULT_TEMPLATE`."""
    if folder is not None and (Path(folder) / PROMPTS_FILE).is_file():
        return str(json.loads((Path(folder) / PROMPTS_FILE).read_text())["template"])
    return DEFAULT_TEMPLATE


def install_class_prompts(unet: Any, text_encoder: Any, tokenizer: Any, names: Sequence[str],
                          template: str) -> list[str]:
    """Encode one prompt per class name (then the empty prompt) and store them in ``unet``'s
    config (:func:`experts.text_condition.install_prompt_table`); returns the prompts."""
    prompts = class_prompts(names, template)
    install_prompt_table(unet, prompts, encode_prompts(text_encoder, tokenizer, prompts))
    log.info("text model: %d class prompts (%r ... ) and the empty prompt", len(prompts) - 1, prompts[0])
    return prompts


def install_data_prompts(unet: Any, text_encoder: Any, tokenizer: Any, data: Any, folder: Path | None) -> list[str] | None:
    """The prompts a text UNet is conditioned on for the data ``data`` (a ``DataConfig``), stored
    in its config; returns them, or None (data without captions or classes: the model stays
    unconditional, the empty prompt, with a warning).

    Caption data (:func:`nas.data.load_caption_labels`): the distinct captions, sorted, then the
    empty prompt; else one prompt per class sub-folder with the template of the model's
    ``folder`` (:func:`prompt_template_of`).

    Raises:
        UserError: bad or missing captions (before any training).
    """
    from nas.data import load_caption_labels, load_labels

    found = load_caption_labels(data)
    if found is not None:
        prompts = [*found[1], ""]
        install_prompt_table(unet, prompts, encode_prompts(text_encoder, tokenizer, prompts))
        log.info("text model: %d distinct captions (%r ...) and the empty prompt", len(prompts) - 1, prompts[0])
        return prompts
    try:
        names = load_labels(data, captions=False)[1]
    except UserError as exc:
        log.warning("text-to-image base model on data without captions or classes (%s): sampled with the empty "
                    "prompt", exc)
        return None
    return install_class_prompts(unet, text_encoder, tokenizer, names, prompt_template_of(folder))
