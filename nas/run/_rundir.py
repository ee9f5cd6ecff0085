"""The run directory: where one experiment keeps everything it writes.

Layout of ``<root>/<name>/``::

    config.yaml        resolved config of the last command (also written beside stage outputs)
    base/              the base model (embedded model checkpoints, or a note of the hub source)
    intervals.json     timestep intervals        similarity.png   similarity matrix plot
    experts/           per-interval elastic experts
    router/            routing agent             search/          Optuna storage, Ray experiment
    allocations/*.json allocations               mixtures/<method>-<budget>/
    samples/           sample grids              results.jsonl    one JSON record per evaluation
    report/            index.html, report.md, plots, summary.json

Example:
    >>> import tempfile
    >>> run = RunDir(tempfile.mkdtemp(), "demo")
    >>> run.append_result({"model": "base", "fid": 1.5})
    >>> run.read_results()
    [{'model': 'base', 'fid': 1.5}]
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.config import ExperimentConfig, dump_config

__all__ = ["RunDir", "to_jsonable"]

log = logging.getLogger(__name__)

try:  # POSIX advisory lock so several processes (Ray workers) can append safely
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def to_jsonable(value: Any) -> Any:
    """Plain JSON data from numpy/torch scalars, paths, tuples, sets and dataclass-like objects.

    Non-finite floats become ``None`` (strict JSON).

    Example:
        >>> import numpy as np
        >>> to_jsonable({"a": np.float32(0.5), "b": (1, 2), "c": float("nan")})
        {'a': 0.5, 'b': [1, 2], 'c': None}
    """
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return [to_jsonable(v) for v in sorted(value, key=repr)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_jsonable(to_dict())
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(value, "ndim", 0) == 0:
        return to_jsonable(item())
    tolist = getattr(value, "tolist", None)  # numpy arrays / tensors
    if callable(tolist):
        return to_jsonable(tolist())
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    raise TypeError(f"cannot store a {type(value).__name__} in results.jsonl")


@dataclass(frozen=True)
class RunDir:
    """Paths of one run, ``<root>/<name>``; folders are created on first use by writers.

    Attributes:
        root: the runs folder (``ExperimentConfig.run_root``).
        name: the run name (``ExperimentConfig.name``).
    """

    root: Path
    name: str

    def __init__(self, root: str | os.PathLike[str], name: str) -> None:
        object.__setattr__(self, "root", Path(root))
        object.__setattr__(self, "name", str(name))

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> RunDir:
        """The run directory ``cfg.run_root/cfg.name``."""
        return cls(cfg.run_root, cfg.name)

    # paths -----------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.root / self.name

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def base_dir(self) -> Path:
        return self.path / "base"

    @property
    def intervals_path(self) -> Path:
        return self.path / "intervals.json"

    @property
    def similarity_path(self) -> Path:
        return self.path / "similarity.png"

    @property
    def experts_dir(self) -> Path:
        return self.path / "experts"

    @property
    def router_dir(self) -> Path:
        return self.path / "router"

    @property
    def search_dir(self) -> Path:
        return self.path / "search"

    @property
    def allocations_dir(self) -> Path:
        return self.path / "allocations"

    @property
    def mixtures_dir(self) -> Path:
        return self.path / "mixtures"

    @property
    def samples_dir(self) -> Path:
        return self.path / "samples"

    @property
    def results_path(self) -> Path:
        return self.path / "results.jsonl"

    @property
    def report_dir(self) -> Path:
        return self.path / "report"

    @property
    def proxy_dir(self) -> Path:
        """``proxy/``: the trajectory proxy's reference samples of this run's base model."""
        return self.path / "proxy"

    @property
    def cache_dir(self) -> Path:
        """Shared cache (reference statistics, feature extractors) for all runs under ``root``."""
        return self.root / ".cache"

    def mixture_dir(self, method: str, budget: float) -> Path:
        """``mixtures/<method>-<budget>/``, e.g. ``mixtures/router-0.5``."""
        return self.mixtures_dir / f"{method}-{budget:g}"

    # writers ---------------------------------------------------------------------------------
    def ensure(self) -> Path:
        """Create the run folder; returns its path."""
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path

    def write_config(self, cfg: ExperimentConfig, directory: str | os.PathLike[str] | None = None) -> Path:
        """Write the resolved config as ``config.yaml`` in the run folder, or in ``directory``
        (a stage's output folder, so the config sits beside what it produced).

        ``run_root`` is left out: where the run folder lives is not part of the run (a copied or
        moved run continues, and its config stays byte-identical); loading the file gives the
        default ``run_root`` unless one is passed."""
        target = Path(directory) / "config.yaml" if directory is not None else self.config_path
        return dump_config(cfg, target, omit=("run_root",))

    def append_result(self, record: Mapping[str, Any]) -> None:
        """Append one JSON record as one line of ``results.jsonl`` (locked, flushed, fsynced).

        The line is written with a single ``write`` on a file opened for appending, under an
        advisory lock, so concurrent writers never interleave and a crash leaves at most one
        partial last line (which :meth:`read_results` skips).
        """
        line = json.dumps(to_jsonable(dict(record)), sort_keys=False, allow_nan=False) + "\n"
        data = line.encode("utf-8")
        self.ensure()
        fd = os.open(self.results_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                # a previous writer may have crashed mid-line: start on a fresh line
                size = os.fstat(fd).st_size
                if size > 0:
                    with open(self.results_path, "rb") as fh:
                        fh.seek(size - 1)
                        if fh.read(1) != b"\n":
                            data = b"\n" + data
                written = os.write(fd, data)
                if written != len(data):  # pragma: no cover - disk full
                    raise OSError(f"short write to {self.results_path}: {written} of {len(data)} bytes")
                os.fsync(fd)
            finally:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def read_results(self) -> list[dict[str, Any]]:
        """All records of ``results.jsonl`` in order (``[]`` if none); corrupt lines are skipped
        with a warning."""
        if not self.results_path.exists():
            return []
        out: list[dict[str, Any]] = []
        with open(self.results_path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                text = line.strip()
                if not text:
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError:
                    log.warning("%s line %d is not valid JSON (a crashed write?); skipped", self.results_path, lineno)
                    continue
                if isinstance(record, dict):
                    out.append(record)
                else:
                    log.warning("%s line %d is not a JSON object; skipped", self.results_path, lineno)
        return out
