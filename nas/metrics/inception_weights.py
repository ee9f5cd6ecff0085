"""Finding clean-fid's Inception weights file: local copies first, else clean-fid's download (see :mod:`nas.metrics`)."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import tempfile
import zipfile
from pathlib import Path

from nas.metrics.common import (
    ALLOW_DOWNLOAD_ENV,
    INCEPTION_ENV,
    INCEPTION_FILENAME,
    INCEPTION_OPTION,
    INCEPTION_SUBDIR,
    INCEPTION_URL,
)
from nas._network import connect_timeout_s, offline_reason, reachability_problem
from search_spaces.errors import UserError

logger = logging.getLogger(__name__)

# where clean-fid itself downloads the file on Linux/macOS (cleanfid.features.feature_extractor)
_CLEANFID_DEFAULT_FOLDER = Path("/tmp")
#: seconds a stalled download may go without data before it is abandoned (clean-fid sets none)
DOWNLOAD_READ_TIMEOUT_S = 60.0


def _local_copy_hint() -> str:
    return (
        f"set {INCEPTION_ENV}=/path/to/{INCEPTION_FILENAME} or pass --set {INCEPTION_OPTION}=/path/to/{INCEPTION_FILENAME} "
        f"(download it on a machine with network from {INCEPTION_URL})"
    )


def _missing_inception_message() -> str:
    return f"Inception weights for FID are not available: {_local_copy_hint()}"


def _downloads_off() -> str | None:
    reason = offline_reason()
    if reason is None and os.environ.get(ALLOW_DOWNLOAD_ENV, "").strip() == "0":
        reason = f"{ALLOW_DOWNLOAD_ENV}=0"
    return reason


def _as_weights_file(value: str | os.PathLike[str], source: str) -> Path:
    path = Path(value).expanduser()
    if path.is_dir():
        path = path / INCEPTION_FILENAME
    if not path.is_file():
        raise UserError(f"Inception weights file not found: {path} (from {source}); {_missing_inception_message()}")
    if not zipfile.is_zipfile(path):
        raise UserError(
            f"Inception weights file {path} (from {source}) is not a TorchScript archive; "
            f"expected clean-fid's {INCEPTION_FILENAME} from {INCEPTION_URL}"
        )
    return path


def resolve_inception_weights(inception_weights: str | os.PathLike[str] | None, cache_dir: Path) -> Path:
    """Find ``inception-2015-12-05.pt``: a local copy first, else clean-fid's download.

    Order: the ``inception_weights`` argument (a file, or a folder holding the file); the
    ``DIFFNAS_INCEPTION_WEIGHTS`` environment variable; ``<cache_dir>/inception/``; the folder
    clean-fid downloads to (``/tmp``); then clean-fid's own download into
    ``<cache_dir>/inception/``, as clean-fid does. The download is off with ``HF_HUB_OFFLINE=1``,
    ``DIFFNAS_OFFLINE=1`` or ``DIFFNAS_ALLOW_DOWNLOAD=0``; it starts only if the server (or the
    proxy) accepts a TCP connection within 10 s (``DIFFNAS_CONNECT_TIMEOUT_S``). Otherwise a
    one-line :class:`UserError` says how to point at a local copy. Call it before any sampling.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> try:
        ...     resolve_inception_weights("/no/such/file.pt", Path(tempfile.mkdtemp()))
        ... except UserError as e:
        ...     "not found" in str(e)
        True
    """
    if inception_weights is not None and str(inception_weights) != "":
        return _as_weights_file(inception_weights, f"--set {INCEPTION_OPTION}")
    env = os.environ.get(INCEPTION_ENV, "")
    if env:
        return _as_weights_file(env, f"${INCEPTION_ENV}")
    for folder in (Path(cache_dir) / INCEPTION_SUBDIR, _CLEANFID_DEFAULT_FOLDER):
        candidate = folder / INCEPTION_FILENAME
        if candidate.is_file() and zipfile.is_zipfile(candidate):
            logger.info("using Inception weights found at %s", candidate)
            return candidate
    off = _downloads_off()
    if off is not None:
        raise UserError(f"Inception weights for FID are not available locally and downloads are off ({off}); "
                        f"{_local_copy_hint()}")
    return _download_inception(Path(cache_dir) / INCEPTION_SUBDIR)


def _download_inception(folder: Path) -> Path:
    """clean-fid's download into ``folder`` (temporary sibling, checked, renamed), after a fast
    reachability check: clean-fid's ``urlopen`` has no timeout of its own."""
    problem = reachability_problem(INCEPTION_URL, connect_timeout_s())
    if problem is not None:
        raise UserError(f"cannot download Inception weights for FID: {problem}; {_local_copy_hint()}")
    from cleanfid.downloads_helper import check_download_inception

    folder.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s with clean-fid into %s", INCEPTION_FILENAME, folder)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_READ_TIMEOUT_S)  # a stalled transfer ends instead of hanging
    try:
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            try:
                downloaded = Path(check_download_inception(fpath=tmp))
            except OSError as exc:  # URLError and socket timeouts are OSErrors
                raise UserError(f"could not download {INCEPTION_URL} ({exc}); {_local_copy_hint()}") from None
            if not zipfile.is_zipfile(downloaded):
                raise UserError(f"the download of {INCEPTION_URL} is not a TorchScript archive; {_local_copy_hint()}")
            final = folder / INCEPTION_FILENAME
            os.replace(downloaded, final)
    finally:
        socket.setdefaulttimeout(previous)
    return final


def folder_with_canonical_name(weights_file: Path, cache_dir: Path) -> Path:
    """clean-fid's InceptionV3W loads ``<folder>/inception-2015-12-05.pt``: give it such a folder."""
    weights_file = weights_file.resolve()
    if weights_file.name == INCEPTION_FILENAME:
        return weights_file.parent
    tag = hashlib.sha256(str(weights_file).encode()).hexdigest()[:12]
    folder = cache_dir / INCEPTION_SUBDIR / f"link-{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / INCEPTION_FILENAME
    if not (link.is_symlink() and link.resolve() == weights_file):
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(weights_file)
    return folder
