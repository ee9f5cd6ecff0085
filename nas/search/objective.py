"""What a search evaluates: the :class:`Objective` protocol, the :class:`EvalContext` an
evaluation gets, and a cheap deterministic :class:`SyntheticObjective` with a small mixture
space (:func:`synthetic_mixture_space`) for checking the plumbing and dry runs."""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from nas.search.allocations import arch_key
from nas.search.storage import append_line
from search_spaces import Arch, Dimension, ProductSpace, SearchSpace

__all__ = ["EvalContext", "Objective", "SyntheticObjective", "synthetic_mixture_space"]


@dataclass(frozen=True)
class EvalContext:
    """What an objective knows about the trial it evaluates.

    Attributes:
        study: Optuna study name.
        trial_number: Optuna trial number (``-1`` for promotions of several trials).
        key: :func:`arch_key` of the architecture.
        fidelity: which fidelity to evaluate (one of ``Objective.fidelities``).
        device: torch device string chosen for this trial (``cuda`` when the trial was given a
            GPU and CUDA is present, else ``cpu``).
        seed: evaluation seed: the same for every trial, so trials are compared on the same
            held-out noise and timesteps (common random numbers).
        budget_ratio: the study's budget (``None`` in multi-objective mode).
        node_id, gpu_ids: where the trial runs (Ray node id, GPU ids Ray assigned; empty locally).
    """

    study: str
    trial_number: int
    key: str
    fidelity: str
    device: str = "cpu"
    seed: int = 0
    budget_ratio: float | None = None
    node_id: str = ""
    gpu_ids: tuple[str, ...] = ()


@runtime_checkable
class Objective(Protocol):
    """What the search evaluates. Lower ``quality`` is better.

    ``fidelities`` lists the fidelities cheapest first; the first is used for every trial, the
    last for promoted trials (only when there are at least two). ``evaluate`` returns a mapping
    of named metrics that must contain ``"quality"`` (finite; lower is better) and may contain
    ``"sampled_images"`` (counted in the search cost) and anything else worth recording.
    Objectives are shipped to Ray workers with cloudpickle: keep them small and load models
    lazily on first use.

    Optionally (read with ``getattr`` by the search session): ``reference_macs`` (int: the MACs
    budget ratio 1 stands for; default the full arch's) and ``known_points(budget_ratio)``
    (``[(source, arch), ...]`` evaluated first instead of the full and widest-uniform archs,
    the full-size point first; the router's allocation is added after them; ``None``: the
    defaults), ``allocation_method`` (the ``<method>`` of the allocation files written,
    default ``search``) and ``enqueue_router`` (false: the router's allocation is not
    enqueued, for a search that must not depend on it; default true).
    """

    fidelities: tuple[str, ...]

    def evaluate(self, arch: Arch, fidelity: str, context: EvalContext) -> Mapping[str, float]:
        ...  # pragma: no cover


@dataclass(frozen=True)
class SyntheticObjective:
    """A cheap deterministic objective for checking the search plumbing (not model quality).

    ``quality = sum_d w_d * (1 - f_d)^2 / sum_d w_d``, where ``f_d`` is the position of the
    chosen value among dimension ``d``'s choices (0 smallest, 1 full) and ``w_d`` a fixed
    weight per dimension name, so dimensions matter unequally and the best allocation under a
    budget is not the uniform one. The ``full`` fidelity is a slightly different function (so
    promotion can change the ranking). Options make it useful for infrastructure tests and for
    dry runs of a cluster (``diffnas search --synthetic``): ``sleep_s`` per evaluation, a list of
    architecture keys that raise, and a JSON-lines log of every evaluation start/end.

    Example:
        >>> from search_spaces import Dimension, SimpleSpace
        >>> s = SimpleSpace([Dimension("w", (1, 2, 3))], macs_fn=lambda a: a["w"])
        >>> obj = SyntheticObjective(s)
        >>> ctx = EvalContext("s", 0, "k", "proxy")
        >>> obj.evaluate(s.full(), "proxy", ctx)["quality"], obj.evaluate(s.smallest(), "proxy", ctx)["quality"]
        (0.0, 1.0)
    """

    space: SearchSpace
    fidelities: tuple[str, ...] = ("proxy", "full")
    sleep_s: float = 0.0
    fail_keys: tuple[str, ...] = ()
    log_path: str | None = None

    def evaluate(self, arch: Arch, fidelity: str, context: EvalContext) -> Mapping[str, float]:
        if fidelity not in self.fidelities:
            raise ValueError(f"unknown fidelity {fidelity!r}; this objective has {list(self.fidelities)}")
        key = arch_key(arch)
        self._log("start", key, fidelity, context)
        if self.sleep_s > 0:
            time.sleep(self.sleep_s)
        if key in self.fail_keys:
            self._log("fail", key, fidelity, context)
            raise RuntimeError(f"synthetic failure for arch {key} (listed in fail_keys)")
        num = den = 0.0
        for d in self.space.free_dimensions():
            n = len(d.choices)
            f = d.index(arch[d.name]) / (n - 1) if n > 1 else 1.0
            w = 1.0 + (zlib.crc32(d.name.encode()) % 7) / 2.0
            num += w * (1.0 - f) ** 2
            den += w
        quality = num / den if den else 0.0
        if fidelity != self.fidelities[0]:
            quality = 1.1 * quality + 0.02 * ((zlib.crc32(key.encode()) % 100) / 100.0)
        self._log("end", key, fidelity, context)
        return {"quality": quality, "sampled_images": 0.0}

    def _log(self, event: str, key: str, fidelity: str, ctx: EvalContext) -> None:
        if not self.log_path:
            return
        line = json.dumps(
            {"event": event, "key": key, "fidelity": fidelity, "study": ctx.study,
             "number": ctx.trial_number, "pid": os.getpid(), "node_id": ctx.node_id,
             "gpu_ids": list(ctx.gpu_ids), "time": time.time()}
        ) + "\n"
        append_line(Path(self.log_path), line)


@dataclass(frozen=True)
class _LinearMacs:
    """Picklable MACs function ``base + sum(coeff * value)`` (bools count 0/1)."""

    coeffs: tuple[tuple[str, float], ...]
    base: float = 0.0

    def __call__(self, arch: Arch) -> int:
        return int(round(self.base + sum(c * float(arch[n]) for n, c in self.coeffs)))


def synthetic_mixture_space(
    num_experts: int = 3,
    blocks: int = 3,
    widths: Sequence[int] = (8, 16, 24, 32),
    steps: Sequence[int] | None = None,
) -> ProductSpace:
    """A small mixture space for dry runs and tests: per expert, ``blocks`` width dimensions
    (MACs grow with the block index) and one skippable block; expert weights are the sampling
    steps each serves (default: middle experts serve more steps).

    Example:
        >>> s = synthetic_mixture_space(num_experts=2, blocks=2)
        >>> s.free_names()
        ('e0/b0.width', 'e0/b1.width', 'e0/skip.depth', 'e1/b0.width', 'e1/b1.width', 'e1/skip.depth')
        >>> s.macs_ratio(s.smallest()) < 0.5
        True
    """
    from search_spaces import SimpleSpace

    if steps is None:
        steps = [5 + 5 * min(i, num_experts - 1 - i) for i in range(num_experts)]
    if len(steps) != num_experts:
        raise ValueError(f"steps has {len(steps)} entries for {num_experts} experts")
    parts = {}
    for e in range(num_experts):
        dims = [Dimension(f"b{i}.width", tuple(widths)) for i in range(blocks)]
        dims.append(Dimension("skip.depth", (False, True), kind="depth"))
        coeffs = tuple((f"b{i}.width", 100.0 * (i + 1)) for i in range(blocks)) + (("skip.depth", 20.0 * max(widths)),)
        parts[f"e{e}"] = SimpleSpace(dims, macs_fn=_LinearMacs(coeffs, base=10.0 * max(widths)))
    return ProductSpace(parts, weights={f"e{e}": float(s) for e, s in enumerate(steps)})
