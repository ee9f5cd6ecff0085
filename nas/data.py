"""Training and reference images: the bundled digits, any folder of images, and VAE latents.

A folder's images may carry conditions: one class per sub-folder (:func:`load_folder_labels`),
or captions in the Hugging Face imagefolder convention (:func:`load_folder_captions`: a
``metadata.jsonl`` with ``file_name`` and ``text`` columns, and/or a ``.txt`` file next to an
image), which a text-to-image base model is trained and sampled on (:func:`load_caption_labels`:
one label per distinct caption).

Every loader returns one float32 tensor ``(N, C, H, W)`` in ``[-1, 1]`` on the CPU. Mistakes a
user can fix (missing folder, empty folder, unreadable files) raise :class:`~nas.errors.UserError`
with what to do.

Example:
    >>> from nas.config import DataConfig
    >>> x = load_dataset(DataConfig(dataset="digits", image_size=16, limit=10))
    >>> tuple(x.shape), x.dtype, bool(x.min() >= -1 and x.max() <= 1)
    ((10, 1, 16, 16), torch.float32, True)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nas.config import DataConfig
from nas.errors import UserError

__all__ = [
    "CAPTIONS_FILE",
    "CAPTION_COLUMN",
    "IMAGE_EXTENSIONS",
    "MAX_CAPTIONS",
    "dataset_id",
    "encode_latents",
    "find_images",
    "infinite_batches",
    "load_caption_labels",
    "load_dataset",
    "load_digits_images",
    "load_digits_labels",
    "load_folder_captions",
    "load_folder_images",
    "load_folder_labels",
    "load_labels",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_MAX_LISTED = 5
#: the captions file of the Hugging Face imagefolder convention (one JSON object per line)
CAPTIONS_FILE = "metadata.jsonl"
#: its caption column (``file_name`` names the image, relative to the file's folder)
CAPTION_COLUMN = "text"
#: at most this many distinct captions: each is a prompt whose embedding (L x D floats: 77 x 768
#: for Stable Diffusion 1.5, about 1 MB of JSON) is stored in the UNet's config.json, encoded
#: once, and sampled for the metrics as often as any other
MAX_CAPTIONS = 256


def load_dataset(cfg: DataConfig) -> torch.Tensor:
    """Images described by ``cfg`` as float32 ``(N, C, H, W)`` in ``[-1, 1]`` (CPU).

    ``digits`` gives 1 channel, ``folder`` gives RGB (3 channels).

    Raises:
        UserError: unknown dataset, or a folder problem (see :func:`load_folder_images`).
    """
    if cfg.dataset == "digits":
        return load_digits_images(cfg.image_size, limit=cfg.limit)
    if cfg.dataset == "folder":
        if not cfg.path:
            raise UserError("data.path is required when data.dataset is 'folder' (set it to a folder of images)")
        return load_folder_images(cfg.path, cfg.image_size, center_crop=cfg.center_crop, limit=cfg.limit)
    raise UserError(f"unknown dataset {cfg.dataset!r} (use 'digits' or 'folder')")


def load_labels(cfg: DataConfig, *, captions: bool = True) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Class labels of the images :func:`load_dataset` returns, in the same order: ``(N,)`` int64,
    and the class names (label ``i`` is ``names[i]``).

    ``digits``: the digit shown (names ``"0"`` .. ``"9"``); ``folder``: with ``captions`` and
    caption files, one label per distinct caption (:func:`load_caption_labels`; the names are
    the captions), else one sub-folder per class (the image's first folder under ``data.path``;
    names sorted, label = position).

    Raises:
        UserError: bad captions, a folder without class sub-folders, or images outside them.

    Example:
        >>> labels, names = load_labels(DataConfig(dataset="digits", limit=5))
        >>> labels.tolist(), names[:3]
        ([0, 1, 2, 3, 4], ('0', '1', '2'))
    """
    if cfg.dataset == "digits":
        return load_digits_labels(limit=cfg.limit), tuple(str(d) for d in range(10))
    if cfg.dataset == "folder":
        if not cfg.path:
            raise UserError("data.path is required when data.dataset is 'folder' (set it to a folder of images)")
        found = load_caption_labels(cfg) if captions else None
        return found if found is not None else load_folder_labels(cfg.path, limit=cfg.limit)
    raise UserError(f"unknown dataset {cfg.dataset!r} (use 'digits' or 'folder')")


def load_caption_labels(cfg: DataConfig) -> tuple[torch.Tensor, tuple[str, ...]] | None:
    """For a folder with captions (:func:`load_folder_captions`): ``(N,)`` int64 labels in
    :func:`load_dataset` order and the distinct captions, sorted (label ``i`` is caption ``i``);
    None for the digits or a folder without captions.

    Raises:
        UserError: what :func:`load_folder_captions` raises, or more than :data:`MAX_CAPTIONS`
            distinct captions.
    """
    if cfg.dataset != "folder" or not cfg.path:
        return None
    captions = load_folder_captions(cfg.path, limit=cfg.limit)
    if captions is None:
        return None
    names = tuple(sorted(set(captions)))
    if len(names) > MAX_CAPTIONS:
        raise UserError(f"'{cfg.path}' has {len(names)} distinct captions; diffnas conditions on at most "
                        f"{MAX_CAPTIONS} (each is a prompt stored with the model): give images that show the same "
                        "thing the same caption, or use one sub-folder per class without captions")
    index = {n: i for i, n in enumerate(names)}
    return torch.tensor([index[c] for c in captions], dtype=torch.long), names


def _listed(items: list[str]) -> str:
    extra = f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + extra


def _metadata_files(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if CAPTIONS_FILE in filenames:
            found.append(Path(dirpath) / CAPTIONS_FILE)
    return sorted(found)


def _read_metadata(meta: Path, images: set[Path]) -> dict[Path, str]:
    """image -> caption of one ``metadata.jsonl`` (``file_name`` relative to its folder)."""
    fix = (f"each line one JSON object {{\"file_name\": \"<image>\", \"{CAPTION_COLUMN}\": \"<caption>\"}} "
           "(the Hugging Face imagefolder convention)")
    out: dict[Path, str] = {}
    try:
        lines = meta.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{meta}: cannot be read as UTF-8 text ({err}); re-save it, {fix}") from None
    for no, line in enumerate(lines, start=1):
        where = f"{meta} line {no}"
        if not line.strip():
            if all(not rest.strip() for rest in lines[no:]):
                break  # trailing blank lines
            raise UserError(f"{where} is empty; remove it ({fix})")
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{where} is not valid JSON ({err.msg}); {fix}") from None
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str) or not row["file_name"]:
            raise UserError(f"{where} has no file_name; {fix}")
        if CAPTION_COLUMN not in row:
            others = [k for k, v in row.items() if k != "file_name" and isinstance(v, str)]
            named = f" (it has {', '.join(repr(k) for k in others)})" if others else ""
            raise UserError(f"{where} has no {CAPTION_COLUMN!r} column{named}: diffnas reads captions from the "
                            f"{CAPTION_COLUMN!r} column; rename the caption column to {CAPTION_COLUMN!r}")
        text = row[CAPTION_COLUMN]
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{where}: the caption of {row['file_name']!r} is empty or not a string; give it a "
                            "caption (the empty prompt is kept for guidance) or remove the line")
        image = (meta.parent / row["file_name"]).resolve()
        if image not in images:
            what = "is not an image file diffnas reads" if image.is_file() else "does not exist"
            raise UserError(f"{where} has a caption for {row['file_name']!r}, which {what} "
                            f"({', '.join(IMAGE_EXTENSIONS)}, under the data folder); fix file_name or remove the line")
        if image in out:
            raise UserError(f"{where}: {row['file_name']!r} has a second caption line; keep one line per image")
        out[image] = text.strip()
    return out


def load_folder_captions(folder: str | os.PathLike[str], limit: int | None = None) -> list[str] | None:
    """The caption of each image :func:`find_images` returns (same order, ``limit`` applied), or
    None when the folder has no captions at all.

    Captions come from ``metadata.jsonl`` files (Hugging Face imagefolder convention: one JSON
    object per line, ``file_name`` relative to the file's folder, the caption in ``text``;
    other columns are ignored) and/or ``<image stem>.txt`` next to an image (its text,
    stripped). An image may have both only if they agree.

    Raises:
        UserError: an empty or invalid ``metadata.jsonl`` line, a caption column other than
            ``text``, a caption for a missing file, an empty caption, two different captions
            for one image, or images without a caption when others have one; each names the
            file and the fix.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> d = Path(tempfile.mkdtemp())
        >>> for name in ("a.png", "b.png"):
        ...     Image.new("RGB", (4, 4)).save(d / name)
        >>> _ = (d / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "a red cat"}\\n')
        >>> _ = (d / "b.txt").write_text("a blue dog\\n")
        >>> load_folder_captions(d)
        ['a red cat', 'a blue dog']
    """
    root = Path(folder).expanduser()
    paths = find_images(root)
    resolved = [p.resolve() for p in paths]
    from_meta: dict[Path, str] = {}
    for meta in _metadata_files(root):
        for image, text in _read_metadata(meta, set(resolved)).items():
            if image in from_meta:
                raise UserError(f"{meta}: {image.name!r} also has a caption in another {CAPTIONS_FILE}; keep one")
            from_meta[image] = text
    captions: list[str | None] = []
    for p, r in zip(paths, resolved):
        text = from_meta.get(r)
        side = p.with_suffix(".txt")
        if side.is_file():
            try:
                own = side.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as err:
                raise UserError(f"{side}: cannot be read as UTF-8 text ({err}); re-save the caption") from None
            if not own:
                raise UserError(f"{side} is empty; write the caption of {p.name} into it, or delete it")
            if text is not None and text != own:
                raise UserError(f"{p} has two different captions ({side.name}: {own!r}, {CAPTIONS_FILE}: {text!r}); "
                                "keep one")
            text = own
        captions.append(text)
    if all(c is None for c in captions):
        return None
    if limit is not None:
        paths, captions = paths[:limit], captions[:limit]
    missing = [str(p.relative_to(root)) for p, c in zip(paths, captions) if c is None]
    if missing:
        raise UserError(f"{len(missing)} of {len(paths)} images in '{root}' have no caption ({_listed(missing)}) while "
                        f"others have one: give each a line in {CAPTIONS_FILE} (\"file_name\" and "
                        f"\"{CAPTION_COLUMN}\") or a .txt file next to it (same name), or remove them")
    log.info("%d images in %s have captions (%d distinct)", len(captions), root, len(set(captions)))
    return [str(c) for c in captions]


def load_digits_labels(limit: int | None = None) -> torch.Tensor:
    """The digit (0-9) of each of scikit-learn's digits images, in :func:`load_digits_images` order.

    Example:
        >>> load_digits_labels(limit=3).tolist()
        [0, 1, 2]
    """
    from sklearn.datasets import load_digits

    target = load_digits().target
    if limit is not None:
        target = target[:limit]
    return torch.from_numpy(np.asarray(target, dtype=np.int64)).contiguous()


def load_folder_labels(folder: str | os.PathLike[str], limit: int | None = None
                       ) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Labels from class sub-folders (``folder/<class>/.../image.png``), in :func:`find_images` order.

    Raises:
        UserError: images directly in ``folder`` (no class), or fewer than two classes.
    """
    root = Path(folder).expanduser()
    paths = find_images(root)
    if limit is not None:
        paths = paths[:limit]
    loose = [p for p in paths if len(p.relative_to(root).parts) < 2]
    if loose:
        listed = ", ".join(p.name for p in loose[:_MAX_LISTED]) + (
            f" and {len(loose) - _MAX_LISTED} more" if len(loose) > _MAX_LISTED else "")
        raise UserError(
            f"{len(loose)} images in '{root}' have no class label ({listed}): a class-conditional model needs "
            "one sub-folder per class (data.path/<class>/image.png); move them into their class folder"
        )
    names = tuple(sorted({p.relative_to(root).parts[0] for p in paths}))
    if len(names) < 2:
        raise UserError(
            f"'{root}' holds one class folder ({names[0]!r}); a class-conditional model needs at least two "
            "(data.path/<class>/image.png, one sub-folder per class)"
        )
    index = {n: i for i, n in enumerate(names)}
    labels = torch.tensor([index[p.relative_to(root).parts[0]] for p in paths], dtype=torch.long)
    return labels, names


def dataset_id(cfg: DataConfig) -> str:
    """A stable name for the dataset as configured, used to cache reference statistics.

    Example:
        >>> dataset_id(DataConfig())
        'digits-16'
    """
    suffix = "" if cfg.limit is None else f"-n{cfg.limit}"
    if cfg.dataset == "digits":
        return f"digits-{cfg.image_size}{suffix}"
    path = str(Path(cfg.path or "").expanduser().resolve())
    digest = hashlib.sha1(path.encode("utf-8")).hexdigest()[:8]
    base = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(path).name)[:32] or "folder"
    crop = "crop" if cfg.center_crop else "resize"
    return f"folder-{base}-{digest}-{cfg.image_size}-{crop}{suffix}"


def load_digits_images(image_size: int = 16, limit: int | None = None) -> torch.Tensor:
    """scikit-learn's bundled 8x8 digits (1,797 images, values 0..16) as ``(N, 1, S, S)`` in [-1, 1].

    Resized bilinearly with antialiasing to ``image_size``; ships with scikit-learn (offline).

    Example:
        >>> load_digits_images(8, limit=3).shape
        torch.Size([3, 1, 8, 8])
    """
    from sklearn.datasets import load_digits

    images = load_digits().images  # (N, 8, 8) float64 in [0, 16]
    if limit is not None:
        images = images[:limit]
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / 16.0).unsqueeze(1)  # (N,1,8,8)
    if image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return (x.clamp(0.0, 1.0) * 2.0 - 1.0).contiguous()  # (N,1,S,S) in [-1,1]


def find_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted, by extension; hidden entries skipped).

    Raises:
        UserError: the folder is missing, is not a folder, or holds no image files.
    """
    root = Path(folder).expanduser()
    if not root.exists():
        raise UserError(f"data folder '{root}' does not exist (set data.path to a folder of images)")
    if not root.is_dir():
        raise UserError(f"data path '{root}' is not a folder (set data.path to a folder of images)")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / name)
    if not found:
        raise UserError(
            f"data folder '{root}' holds no images ({', '.join(IMAGE_EXTENSIONS)}, searched "
            "recursively); point data.path at a folder that does"
        )
    return sorted(found)


def _load_one(path: Path, image_size: int, center_crop: bool) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if center_crop:
            w, h = im.size
            scale = image_size / min(w, h)
            nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
            im = im.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=None)
            left, top = (nw - image_size) // 2, (nh - image_size) // 2
            im = im.crop((left, top, left + image_size, top + image_size))
        else:
            im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
        return np.asarray(im, dtype=np.uint8)  # (S, S, 3)


def load_folder_images(
    folder: str | os.PathLike[str],
    image_size: int,
    center_crop: bool = True,
    limit: int | None = None,
) -> torch.Tensor:
    """All images under ``folder`` as RGB ``(N, 3, S, S)`` float32 in [-1, 1].

    Each image is resized so its shorter side is ``image_size`` and centre-cropped to a square
    (``center_crop=True``), or resized to ``image_size`` x ``image_size`` (``False``).

    Raises:
        UserError: missing/empty folder, or image files that cannot be read (all named).
    """
    from PIL import Image, UnidentifiedImageError
    from tqdm.auto import tqdm

    paths = find_images(folder)
    if limit is not None:
        paths = paths[:limit]
    out = np.empty((len(paths), image_size, image_size, 3), dtype=np.uint8)
    bad: list[str] = []
    for i, p in enumerate(tqdm(paths, desc="loading images", unit="img", leave=False, disable=len(paths) < 200)):
        try:
            out[i] = _load_one(p, image_size, center_crop)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
            log.debug("cannot read %s: %s", p, err)
            bad.append(str(p))
    if bad:
        listed = ", ".join(bad[:_MAX_LISTED]) + (f" and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else "")
        raise UserError(
            f"{len(bad)} of {len(paths)} image files in '{folder}' cannot be read: {listed} "
            "(remove or re-save them)"
        )
    x = torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # (N,3,S,S) in [-1,1]
    log.info("loaded %d images of %dx%d from %s", len(paths), image_size, image_size, folder)
    return x.contiguous()


@torch.no_grad()
def encode_latents(
    images: torch.Tensor,
    vae: Any,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Encode images in [-1, 1] into the scaled latents a latent diffusion UNet is trained on.

    ``AutoencoderKL``: ``encode(x).latent_dist.mean * scaling_factor``; ``VQModel``:
    ``encode(x).latents * scaling_factor`` (the LDM pipelines divide by it before decoding).
    The VAE is moved to ``device`` and put in eval mode; the result is float32 on the CPU.

    Args:
        images: ``(N, C, H, W)`` float in [-1, 1].
        vae: a diffusers ``AutoencoderKL`` or ``VQModel``.
        batch_size: images per encoder call.
        device: where to run the encoder.

    Raises:
        UserError: the images' channel count differs from what the autoencoder takes.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    config = getattr(vae, "config", None)
    in_channels = getattr(config, "in_channels", None)
    if in_channels is not None and images.shape[1] != in_channels:
        raise UserError(
            f"the autoencoder takes {in_channels}-channel images but the data has {images.shape[1]} "
            "channels (use an RGB image folder for this model)"
        )
    scale = float(getattr(config, "scaling_factor", 1.0) or 1.0)
    device = torch.device(device)
    vae = vae.to(device).eval()
    dtype = next(vae.parameters()).dtype
    chunks: list[torch.Tensor] = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device=device, dtype=dtype)  # (B,C,H,W)
        enc = vae.encode(x)
        if hasattr(enc, "latent_dist"):
            z = enc.latent_dist.mean  # AutoencoderKL: (B,c,h,w)
        elif hasattr(enc, "latents"):
            z = enc.latents  # VQModel (pre-quantisation latents): (B,c,h,w)
        else:
            raise TypeError(f"unsupported autoencoder output {type(enc).__name__} (AutoencoderKL or VQModel)")
        chunks.append((z * scale).float().cpu())
    return torch.cat(chunks, dim=0)  # (N,c,h,w)


def infinite_batches(
    images: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
    steps: int = 1,
) -> Iterator[torch.Tensor]:
    """Yield exactly ``steps`` random batches, reshuffling after each pass over the data.

    Batches never repeat an image before every image has been used once (within one pass);
    a batch larger than the dataset spans several passes.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> batches = list(infinite_batches(torch.arange(10.0).view(10, 1), 4, g, steps=5))
        >>> len(batches), tuple(batches[0].shape)
        (5, (4, 1))
    """
    n = images.shape[0]
    if n == 0:
        raise ValueError("infinite_batches needs at least one image")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = torch.empty(0, dtype=torch.long)
    passes_per_batch = math.ceil(batch_size / n) + 1
    for _ in range(max(0, steps)):
        for _ in range(passes_per_batch):
            if order.numel() >= batch_size:
                break
            order = torch.cat([order, torch.randperm(n, generator=generator)])
        idx, order = order[:batch_size], order[batch_size:]
        yield images[idx]
