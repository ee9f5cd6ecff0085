"""The experts folder of a run (``runs/<name>/experts``): its layout and how it is read.

Layout (written by :func:`experts.training.train_experts`)::

    supernet/            the importance-ordered, untrained supernet every expert started from
    expert_<k>/          expert k (ElasticUNet.save_pretrained) with diffnas_expert.json
    intervals.json       the experts' intervals
    manifest.json        what the experts were trained from (base fingerprint, settings, ...)
    checkpoints/         resumable training state per expert (experts.checkpoint)

Example:
    >>> expert_dir("runs/x/experts", 2).name
    'expert_2'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from experts.intervals import Intervals
from search_spaces.errors import UserError

__all__ = [
    "CHECKPOINTS_DIR",
    "EXPERT_META",
    "MANIFEST",
    "SUPERNET_DIR",
    "base_fingerprint",
    "build_supernet",
    "damaged_safetensors",
    "expert_dir",
    "load_expert_intervals",
    "load_experts",
    "load_supernet",
    "quiet_diffusers",
    "reading_artefact",
]

MANIFEST = "manifest.json"
EXPERT_META = "diffnas_expert.json"
SUPERNET_DIR = "supernet"
CHECKPOINTS_DIR = "checkpoints"


def _reason(exc: BaseException) -> str:
    """A short, one-line description of why a file could not be read."""
    text = " ".join(str(exc).split()) if str(exc) else ""
    if type(exc).__name__ == "SafetensorError" or "deserializing header" in text:
        return f"the safetensors file is truncated or damaged ({text})"
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON, probably truncated ({text})"
    if isinstance(exc, UnicodeDecodeError):
        return "not a text file"
    if isinstance(exc, FileNotFoundError):
        return f"{exc.filename or 'a file'} is missing"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, KeyError):
        return f"missing key {text}"
    if isinstance(exc, (ValueError, TypeError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def reading_artefact(path: str | Path, remedy: str) -> Iterator[None]:
    """Turn any failure to read the run artefact ``path`` into one :class:`UserError` line.

    The line names the file, what is wrong with it and ``remedy`` (which stage to rerun, or
    which ``--force``). A :class:`UserError` raised inside passes through unchanged.

    Example:
        >>> import json, tempfile
        >>> bad = Path(tempfile.mkdtemp()) / "x.json"
        >>> _ = bad.write_text('{"a": ')
        >>> try:
        ...     with reading_artefact(bad, "run `diffnas intervals --force`"):
        ...         json.loads(bad.read_text())
        ... except UserError as err:
        ...     print(str(err).split(": ", 1)[1][:40])
        not valid JSON, probably truncated (Expe
    """
    try:
        yield
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to parse a stored file is the file's fault
        if not _is_read_failure(exc):
            raise
        where = Path(path)
        if where.is_dir():  # name the damaged file inside the folder when one is
            where = damaged_safetensors(where) or where
        raise UserError(f"cannot read {where}: {_reason(exc)}; {remedy}") from exc


def damaged_safetensors(folder: str | Path) -> Path | None:
    """The first ``*.safetensors`` file under ``folder`` that does not open (truncated, not
    safetensors), or None when they all do.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()); _ = (d / "w.safetensors").write_bytes(b"12345678")
        >>> damaged_safetensors(d).name
        'w.safetensors'
    """
    from safetensors import safe_open

    for f in sorted(Path(folder).rglob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except Exception:  # noqa: BLE001 - SafetensorError, OSError: the file is what is wrong
            return f
    return None


def _is_read_failure(exc: BaseException) -> bool:
    """Exceptions that mean "this stored file is damaged/unreadable" (not a bug in diffnas)."""
    if isinstance(exc, (OSError, ValueError, KeyError, TypeError, EOFError, UnicodeDecodeError)):
        return True
    if type(exc).__name__ == "SafetensorError":
        return True
    # torch's load_state_dict: missing/unexpected keys or a shape mismatch between the files
    return isinstance(exc, RuntimeError) and ("state_dict" in str(exc) or "size mismatch" in str(exc))


def expert_dir(out_dir: str | Path, k: int) -> Path:
    """``<out>/expert_<k>``."""
    return Path(out_dir) / f"expert_{k}"


def base_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's weights (names, shapes, dtypes, bytes): which base experts came from."""
    h = hashlib.sha256()
    for name, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@contextlib.contextmanager
def quiet_diffusers() -> Iterator[None]:
    """Silence diffusers' INFO/WARNING logs (e.g. the "install accelerate" note on every load)."""
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        yield
    finally:
        dlog.set_verbosity(level)


def build_supernet(base_unet: nn.Module, options: Any = None, importance: str = "magnitude") -> nn.Module:
    """The elastic supernet of ``base_unet`` (a deep copy; channels ordered once by importance)."""
    from search_spaces.elastic_unet import ElasticUNet

    return ElasticUNet(base_unet, options, importance=importance)


def load_supernet(out_dir: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The untrained, importance-ordered supernet all experts started from (``<out>/supernet``)."""
    from search_spaces.elastic_unet import ElasticUNet

    path = Path(out_dir) / SUPERNET_DIR
    if not path.is_dir():
        raise UserError(f"{out_dir} has no {SUPERNET_DIR}/ folder; run `diffnas train-experts` first")
    with quiet_diffusers(), reading_artefact(_weights_file(path), f"delete {path} and run `diffnas train-experts` "
                                             "again (it rebuilds the supernet from the base model)"):
        return ElasticUNet.from_pretrained(path, device=device).eval()


def load_expert_intervals(out_dir: str | Path) -> Intervals:
    """``<out>/intervals.json`` of an experts folder; one :class:`UserError` line if missing or damaged."""
    iv_path = Path(out_dir) / "intervals.json"
    if not iv_path.is_file():
        raise UserError(f"{out_dir} has no intervals.json: not an experts folder; run `diffnas train-experts` first")
    with reading_artefact(iv_path, "run `diffnas train-experts` again (it rewrites this file from the run's "
                                   "intervals.json)"):
        return Intervals.load(iv_path)


def load_experts(out_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Intervals, list[nn.Module]]:
    """The intervals and the trained supernet experts (full arch) of an experts folder."""
    from search_spaces.elastic_unet import ElasticUNet

    out = Path(out_dir)
    iv_path = out / "intervals.json"
    if not iv_path.is_file():
        raise UserError(f"{out} has no intervals.json: not an experts folder; run `diffnas train-experts` first")
    intervals = load_expert_intervals(out)
    experts = []
    for k in range(intervals.num_intervals):
        d = expert_dir(out, k)
        if not (d / EXPERT_META).is_file():
            raise UserError(f"expert {k} is not trained yet ({d} is missing); run `diffnas train-experts`")
        remedy = (f"delete {d} and run `diffnas train-experts --expert {k}` (it resumes from the expert's "
                  "checkpoint when there is one)")
        with quiet_diffusers(), reading_artefact(_weights_file(d), remedy):
            experts.append(ElasticUNet.from_pretrained(d, device=device).eval())
    return intervals, experts


def _weights_file(folder: Path) -> Path:
    """The weights file of a saved model folder (what an error should name), else the folder."""
    found = sorted(folder.glob("*.safetensors"))
    return found[0] if len(found) == 1 else folder
