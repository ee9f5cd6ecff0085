"""How well do quality proxies rank allocations of the joint steps x experts space? (Kendall tau vs FID)

On a run folder with trained experts (e.g. ``runs/demo`` after ``make demo``), draws allocations
of the joint space (per interval: step count, step placement, expert sub-network;
:func:`experts.steps_space.joint_space`) spread over trajectory-MACs budgets, plus the base model
with fewer evenly spaced steps at each budget, and scores each with:

- ``trajectory``: :class:`experts.trajectory_proxy.TrajectoryProxy` distance (the candidate's
  samples vs the base's ``--reference-steps`` samples from the same seeds, in the evaluation
  extractor's feature space, ``--proxy-images`` images);
- ``small_fid``: the FID of those same ``--proxy-images`` samples against the data;
- ``heldout``: the old proxy, each expert's held-out denoising loss weighted by the steps its
  interval gets (:func:`experts.losses.proxy_loss`; it cannot see steps);
- ``fid``: FID on ``--fid-images`` images per seed of ``--fid-seeds`` (the truth).

It logs one line per allocation and Kendall's tau of each proxy against FID, and writes
everything to ``--out`` (JSON). Budgets are fractions of the base model's trajectory MACs at the
run's ``sampling.num_steps``.

Cost (network calls): reference ``P x R`` once; per allocation ``P x S`` (proxy) plus
``F x S x seeds`` (FID), ``S`` its steps; held-out losses are one batch pass per interval.

Usage::

    python -m benchmarks.proxy_rank runs/demo --num-allocations 24 --fid-images 1000 --fid-seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from experts.intervals import Intervals
from experts.schedule import StepSchedule
from experts.steps_space import DEFAULT_SPACINGS, joint_space, split_joint
from search_spaces import Arch

log = logging.getLogger(__name__)

__all__ = ["RankSettings", "main", "rank_proxies"]


@dataclass(frozen=True)
class RankSettings:
    """What :func:`rank_proxies` draws and how it scores.

    Attributes:
        num_allocations: random allocations of the joint space, spread evenly over ``budgets``.
        budgets: target trajectory-MACs ratios; an allocation of budget ``b`` has a ratio in
            ``[0.6 b, b]``.
        fewer_steps: also score the base model with fewer evenly spaced steps at each budget.
        proxy_images, reference_steps, proxy_seed: the trajectory proxy's batch, reference
            schedule length and seed.
        fid_images, fid_seeds: the FID each proxy is ranked against.
        max_steps_factor: an interval may get up to this times its steps in the run's schedule.
        spacings: step placements offered per interval.
        draws_per_budget: random draws tried per budget before giving up on it.
        seed: of the allocation draws.
    """

    num_allocations: int = 24
    budgets: tuple[float, ...] = (0.1, 0.15, 0.3, 0.5, 0.7)
    fewer_steps: bool = True
    proxy_images: int = 64
    reference_steps: int = 50
    proxy_seed: int = 12345
    fid_images: int = 1000
    fid_seeds: tuple[int, ...] = (0,)
    max_steps_factor: float = 2.0
    spacings: tuple[str, ...] = DEFAULT_SPACINGS
    draws_per_budget: int = 4000
    seed: int = 0


@dataclass
class _Candidate:
    label: str
    budget: float
    schedule: StepSchedule
    archs: list[Arch]
    macs_ratio: float
    scores: dict[str, float] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {"label": self.label, "budget": self.budget, "macs_ratio": self.macs_ratio,
                "steps_per_interval": list(self.schedule.steps_per_interval),
                "timesteps": self.schedule.timesteps(), "archs": [a.to_dict() for a in self.archs],
                **self.scores}


def _step_counts(intervals: Intervals, steps: Sequence[int], factor: float) -> list[tuple[int, ...]]:
    """Allowed step counts per interval: 0 (1 for interval 0) to ``factor`` x today's steps."""
    out = []
    for k, ((lo, hi), s) in enumerate(zip(intervals.spans(), steps)):
        top = min(hi - lo, max(1, math.ceil(s * factor)))
        out.append(tuple(range(1 if k == 0 else 0, top + 1)))
    return out


def _shrink_to(space: Any, arch: Arch, ratio: Any, cap: float, rng: np.random.Generator) -> Arch:
    """Take steps away from random intervals until ``ratio(arch) <= cap`` (or none can go)."""
    while ratio(arch) > cap:
        movable = [k for k in arch if k.endswith("/steps/count") and space.dimension(k).index(arch[k]) > 0]
        if not movable:
            break
        key = movable[int(rng.integers(len(movable)))]
        d = space.dimension(key)
        arch = arch.with_values({key: d.choices[d.index(arch[key]) - 1]})
    return arch


def _draw(ctx: Any, settings: RankSettings) -> list[_Candidate]:
    """Random joint-space allocations per budget, and the base with fewer steps at each."""
    from nas.sampling import sampling_timesteps

    intervals, supernets = ctx.experts()
    counts = _step_counts(intervals, ctx.steps_per_expert(), settings.max_steps_factor)
    space = joint_space(intervals, [e.space for e in supernets], counts, settings.spacings)
    full = [e.space.macs(e.space.full()) for e in supernets]
    num_steps = len(ctx.timesteps)

    def ratio(arch: Arch) -> float:  # trajectory MACs / the base's at the run's schedule
        schedule, archs = split_joint(space, arch, intervals)
        return sum(s * e.space.macs(a) / f for s, e, a, f in
                   zip(schedule.steps_per_interval, supernets, archs, full)) / num_steps

    rng = np.random.default_rng(settings.seed)
    per_budget = np.array_split(np.arange(settings.num_allocations), len(settings.budgets))
    out: list[_Candidate] = []
    seen: set[Arch] = set()
    for b, idx in zip(settings.budgets, per_budget):
        found = 0
        for _ in range(settings.draws_per_budget):
            if found == len(idx):
                break
            arch = _shrink_to(space, space.sample(rng), ratio, b, rng)
            if arch not in seen and 0.6 * b <= ratio(arch) <= b:
                seen.add(arch)
                schedule, archs = split_joint(space, arch, intervals)
                out.append(_Candidate(f"joint-{b:g}-{found}", b, schedule, archs, ratio(arch)))
                found += 1
        if found < len(idx):
            log.warning("budget %g: %d of %d allocations found in %d draws", b, found, len(idx),
                        settings.draws_per_budget)
        n = int(b * num_steps)
        if settings.fewer_steps and n >= 1 and f"fewer_steps-{n}" not in {c.label for c in out}:
            sched = StepSchedule.from_timesteps(intervals, sampling_timesteps(ctx.scheduler, n))
            out.append(_Candidate(f"fewer_steps-{n}", b, sched, [e.space.full() for e in supernets], n / num_steps))
    return out


def _sampler(ctx: Any, num_images: int, seed: int):
    """``sample(model, timesteps)`` with the run's scheduler, base shapes and device."""
    from nas.sampling import generate

    b = ctx.base

    def sample(model: Any, timesteps: Sequence[int]):
        return generate(model, ctx.scheduler, num_images=num_images, timesteps=list(timesteps),
                        batch_size=ctx.cfg.sampling.batch_size, seed=seed, device=ctx.device,
                        sample_shape=b.sample_shape, vae=b.vae, latent_scale=b.latent_scale,
                        encoder_hidden_states=b.encoder_hidden_states, progress=False)

    return sample


def _score_all(ctx: Any, candidates: list[_Candidate], settings: RankSettings) -> None:
    from experts.denoising import training_scheduler
    from experts.losses import proxy_loss
    from experts.mixture import MixtureOfExperts
    from experts.trajectory_proxy import TrajectoryProxy
    from nas.data import dataset_id, load_dataset
    from nas.metrics import (build_extractor, compute_quality, frechet_distance_from_features,
                             reference_features, resolve_extractor_kind)
    from nas.sampling import sampling_timesteps

    cfg = ctx.cfg
    kind = resolve_extractor_kind(cfg.evaluation.extractor, cfg.data.dataset)
    extractor = build_extractor(kind, device=ctx.device, cache_dir=ctx.run.cache_dir,
                                inception_weights=cfg.evaluation.inception_weights)
    ref_feats = reference_features(dataset_id(cfg.data), load_dataset(cfg.data), extractor, ctx.run.cache_dir)
    proxy = TrajectoryProxy(_sampler(ctx, settings.proxy_images, settings.proxy_seed), ctx.base.unet,
                            sampling_timesteps(ctx.scheduler, settings.reference_steps), extractor,
                            fid=lambda f: frechet_distance_from_features(f, ref_feats))
    intervals, supernets = ctx.experts()
    heldout, noise = ctx.heldout(), training_scheduler(ctx.base.scheduler_config)
    for i, c in enumerate(candidates):
        mixture = MixtureOfExperts(intervals, supernets, c.archs)
        p = proxy.score(mixture, c.schedule)
        old = proxy_loss(mixture, None, heldout, noise, step_weights=c.schedule.steps_per_interval)
        fids = [compute_quality(_sampler(ctx, settings.fid_images, int(s))(mixture, c.schedule.timesteps()),
                                ref_feats, extractor).fid for s in settings.fid_seeds]
        c.scores = {"trajectory": p.distance, "small_fid": float(p.fid), "heldout": float(old.total),
                    "fid": float(np.mean(fids)), "fid_values": [float(f) for f in fids]}
        log.info("%2d/%d %-18s macs %.3f steps %-12s trajectory %.4f small-FID %.2f held-out %.5f FID %.3f",
                 i + 1, len(candidates), c.label, c.macs_ratio, c.schedule.steps_per_interval, p.distance,
                 p.fid, old.total, c.scores["fid"])


def kendall_taus(records: Sequence[dict[str, Any]], proxies: Sequence[str] = ("trajectory", "small_fid", "heldout")
                 ) -> dict[str, dict[str, float]]:
    """Kendall's tau (and its p-value) of each proxy against ``fid`` over ``records``."""
    from scipy.stats import kendalltau

    fid = [r["fid"] for r in records]
    out = {}
    for name in proxies:
        res = kendalltau([r[name] for r in records], fid)
        out[name] = {"tau": float(res.statistic), "p_value": float(res.pvalue), "n": len(records)}
    return out


def rank_proxies(ctx: Any, settings: RankSettings) -> dict[str, Any]:
    """Draw, score and rank (see the module docstring); returns the JSON-ready result."""
    candidates = _draw(ctx, settings)
    if len(candidates) < 3:
        raise ValueError(f"only {len(candidates)} allocations could be drawn; widen the budgets or draws")
    _score_all(ctx, candidates, settings)
    records = [c.record() for c in candidates]
    taus = kendall_taus(records)
    for name, t in taus.items():
        log.info("Kendall tau vs FID: %-10s %+.3f (p = %.3g, n = %d)", name, t["tau"], t["p_value"], t["n"])
    return {"run": str(ctx.run.path.name), "settings": asdict(settings), "kendall_tau": taus, "allocations": records}


def _parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, RankSettings]:
    d = RankSettings()
    p = argparse.ArgumentParser(prog="python -m benchmarks.proxy_rank", description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="run folder with trained experts (holds config.yaml)")
    p.add_argument("--num-allocations", type=int, default=d.num_allocations)
    p.add_argument("--budgets", type=float, nargs="+", default=list(d.budgets))
    p.add_argument("--no-fewer-steps", action="store_true", help="do not add the base with fewer steps")
    p.add_argument("--proxy-images", type=int, default=d.proxy_images)
    p.add_argument("--reference-steps", type=int, default=d.reference_steps)
    p.add_argument("--fid-images", type=int, default=d.fid_images)
    p.add_argument("--fid-seeds", type=int, nargs="+", default=list(d.fid_seeds))
    p.add_argument("--max-steps-factor", type=float, default=d.max_steps_factor)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=None, help="default: the run's config")
    p.add_argument("--out", type=Path, default=None, help="default: <run>/proxy_rank.json")
    a = p.parse_args(argv)
    settings = RankSettings(num_allocations=a.num_allocations, budgets=tuple(a.budgets),
                            fewer_steps=not a.no_fewer_steps, proxy_images=a.proxy_images,
                            reference_steps=a.reference_steps, fid_images=a.fid_images,
                            fid_seeds=tuple(a.fid_seeds), max_steps_factor=a.max_steps_factor, seed=a.seed)
    return a, settings


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point: ``python -m benchmarks.proxy_rank RUN [options]``."""
    from nas.config import load_config
    from nas.run import RunContext, RunDir

    args, settings = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("nas.metrics").setLevel(logging.WARNING)  # clean-fid notes on every small FID
    run_path = args.run.resolve()
    cfg = load_config(run_path / "config.yaml")
    ctx = RunContext(cfg, device=args.device, progress=False, run=RunDir(run_path.parent, run_path.name))
    result = rank_proxies(ctx, settings)
    out = args.out or run_path / "proxy_rank.json"
    out.write_text(json.dumps(result, indent=2, sort_keys=True))
    log.info("wrote %s", out)
    return result


if __name__ == "__main__":
    main()
