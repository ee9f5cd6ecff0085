"""Per-unit costs for sizing the ``standard`` preset (``benchmarks/results/standard-sizing.md``).

Short timed runs of the project's own functions at one thread, for one base-model shape:

- ``base_step_s``: one optimiser step of the embedded model's training
  (:func:`nas.embedded.train_embedded_digits`, ``model.batch_size`` images);
- ``call64_s``: one UNet call on 64 images without gradients, inside
  :func:`nas.sampling.generate` (DDIM), so sampling N images x S steps costs
  ``N / 64 * S * call64_s`` at full width;
- ``sandwich_step_s``: one elastic expert step (:func:`experts.training.run_expert_job`: the
  full, the smallest and ``random_archs`` random archs, distillation to the frozen teacher);
- ``finetune_step_s``: one step of the same loop with ``sandwich=False`` (full arch only): an
  upper bound of a pruned expert's fine-tuning step, which runs a smaller network;
- ``call64_b<N>_s``: the same call inside batches of N images (per 64 images), for
  ``sampling.batch_size``;
- ``uniform<b>_call_ratio``: a call of the materialised uniform-width sub-network meeting
  MACs budget b (:func:`search_spaces.uniform.uniform_arch`, ``ElasticUNet.materialize``), as
  a share of the full call: what a pruned model's sampling and fine-tuning cost per step;
- with ``--run``, on a :class:`nas.run.RunContext` of the ``standard`` preset (this shape, a
  base trained for a few steps: costs do not depend on the weights): ``intervals_s`` (the
  intervals stage, :func:`nas.intervals.run_intervals`), ``proxy_reference_s`` (the trajectory
  proxy's reference: ``schedule.proxy_images`` x 50 base steps), ``proxy_base<k>_s`` (one
  :meth:`~experts.trajectory_proxy.TrajectoryProxy.score` of the base model along k steps:
  sampling, features and small-sample FID), ``proxy_smallest25_ratio`` (a mixture of three
  supernets at the smallest arch, sliced, against the base, 25 steps each) and
  ``cache<b>_time_ratio`` (DeepCache at budget b against the base, 50 steps);
- with ``--static``: ``static<b>_macs_ratio``, ``static<b>_call_ratio`` and ``static<b>_prune_s``
  (:func:`benchmarks.static_pruning.prune_to_budget`, Taylor, 10 iterations, at b = 0.1 and 0.3);
- ``fid_1000_s``: features and FID/KID of 1,000 images (:func:`nas.metrics.compute_quality`,
  the digits extractor), the reference features cached first.

Usage (one shape per process, so two shapes can be measured side by side)::

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.standard_sizing --channels 32,64,64 --layers 1
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

log = logging.getLogger(__name__)

__all__ = ["SizingOptions", "measure"]


def _timed(fn, *args, **kwargs) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def _base_cost(tmp: Path, images: torch.Tensor, channels: tuple[int, ...], layers: int, steps: int) -> dict:
    """Seconds per base training step (two runs, ``steps`` apart, so set-up and saving cancel)."""
    from nas.embedded import train_embedded_digits

    def run(n: int) -> float:
        cfg = SimpleNamespace(train_steps=n, batch_size=64, block_out_channels=channels, layers_per_block=layers,
                              checkpoint_every=10**6)
        s, _ = _timed(train_embedded_digits, tmp / f"base-{n}", images, cfg, "cpu", False)
        return s

    short, long_ = run(2), run(2 + steps)
    return {"base_step_s": (long_ - short) / steps, "base_folder": str(tmp / f"base-{2 + steps}")}


def _sampling_cost(unet, scheduler_config: dict, steps: int) -> float:
    """Seconds per UNet call on 64 images (DDIM, 64 images x ``steps`` steps, minus a 1-step run)."""
    from nas.sampling import generate, make_scheduler

    def run(n: int) -> float:
        s, _ = _timed(generate, unet, make_scheduler("ddim", scheduler_config), num_images=64, num_steps=n,
                      batch_size=64, seed=0, sample_shape=(1, 16, 16), progress=False)
        return s

    return (run(1 + steps) - run(1)) / steps


def _batch_costs(unet, scheduler_config: dict, steps: int, batches: tuple[int, ...]) -> dict:
    """Seconds per 64 images of one UNet call when sampling in batches of each size."""
    from nas.sampling import generate, make_scheduler

    out = {}
    for b in batches:
        def run(n: int) -> float:
            s, _ = _timed(generate, unet, make_scheduler("ddim", scheduler_config), num_images=b, num_steps=n,
                          batch_size=b, seed=0, sample_shape=(1, 16, 16), progress=False)
            return s

        out[f"call64_b{b}_s"] = (run(1 + steps) - run(1)) / steps * 64 / b
    return out


def _pruned_costs(unet, scheduler_config: dict, steps: int, budgets: tuple[float, ...]) -> dict:
    """Per-call time of the materialised uniform sub-network at each MACs budget / the full call."""
    from search_spaces import ElasticUNet
    from search_spaces.uniform import uniform_arch

    sup = ElasticUNet(unet).eval()
    full = _sampling_cost(unet, scheduler_config, steps)
    out = {}
    for b in budgets:
        u = uniform_arch(sup.space, b)
        if u is None:
            out[f"uniform{b:g}_call_ratio"] = None
            continue
        small = sup.materialize(u.arch).eval()
        out[f"uniform{b:g}_call_ratio"] = _sampling_cost(small, scheduler_config, steps) / full
        out[f"uniform{b:g}_macs_ratio"] = sup.space.macs(u.arch) / sup.space.macs(sup.space.full())
    return out


def _run_costs(tmp: Path, channels: tuple[int, ...], layers: int) -> dict:
    """Costs measured through a RunContext of the ``standard`` preset (see the module docstring)."""
    from experts.caching import CachedUNet, branch_macs, choose_cache
    from experts.intervals import Intervals
    from experts.mixture import MixtureOfExperts
    from nas.config import load_config
    from nas.intervals import run_intervals
    from nas.run import RunContext
    from nas.sampling import sampling_timesteps
    from search_spaces import ElasticUNet

    widths = ",".join(str(c) for c in channels)
    cfg = load_config(None, [f"run_root={tmp / 'runs'}", "device=cpu", "model.train_steps=4",
                             f"model.block_out_channels=[{widths}]", f"model.layers_per_block={layers}"],
                      preset="standard")
    ctx = RunContext(cfg)
    unet = ctx.base.unet
    out = {}
    out["intervals_s"], _ = _timed(run_intervals, ctx)
    proxy = ctx.trajectory_proxy()
    out["proxy_reference_s"], _ = _timed(lambda: proxy.reference_features)
    for k in (5, 25):
        out[f"proxy_base{k}_s"], _ = _timed(proxy.score, unet, sampling_timesteps(ctx.scheduler, k))
    sup = ElasticUNet(unet).eval()
    mix = MixtureOfExperts(Intervals.uniform(cfg.model.num_train_timesteps, 3), [sup, sup, sup],
                           [sup.space.smallest()] * 3)
    ts25 = sampling_timesteps(ctx.scheduler, 25)
    mix_s, _ = _timed(proxy.score, mix, ts25)
    out["proxy_smallest25_ratio"] = mix_s / out["proxy_base25_s"]
    per_branch = branch_macs(unet, batch_size=1)
    ts50 = sampling_timesteps(ctx.scheduler, 50)
    base50_s, _ = _timed(proxy.score, unet, ts50)
    for b in (0.15, 0.3, 0.5):
        choice = choose_cache(per_branch, 50, b)
        if choice is not None:
            s, _ = _timed(proxy.score, CachedUNet(unet, choice.settings), ts50)
            out[f"cache{b:g}_time_ratio"] = s / base50_s
            out[f"cache{b:g}_macs_ratio"] = choice.ratio
    return out


def _static_costs(unet, images: torch.Tensor, scheduler_config: dict, steps: int) -> dict:
    """MACs reached, per-call time ratio and pruning seconds of static pruning at 0.1 and 0.3."""
    from benchmarks.static_pruning import prune_to_budget

    full = _sampling_cost(unet, scheduler_config, steps)
    out = {}
    for b in (0.1, 0.3):
        s, res = _timed(prune_to_budget, unet, b, images=images, scheduler_config=scheduler_config,
                        max_iterations=10)
        out[f"static{b:g}_prune_s"] = s
        out[f"static{b:g}_macs_ratio"] = res.macs_ratio
        out[f"static{b:g}_call_ratio"] = _sampling_cost(res.model.eval(), scheduler_config, steps) / full
    return out


def _expert_costs(tmp: Path, unet, images: torch.Tensor, scheduler_config: dict, steps: int,
                  random_archs: int) -> dict:
    """Seconds per sandwich step and per full-arch (fine-tuning-like) step of one expert."""
    from experts.intervals import Intervals
    from experts.train_loop import ExpertTrainSettings
    from experts.training import prepare_expert_jobs, run_expert_job

    out = {}
    for key, sandwich in (("sandwich_step_s", True), ("finetune_step_s", False)):
        times = []
        for n in (1, 1 + steps):
            settings = ExpertTrainSettings(steps=n, batch_size=32, random_archs=random_archs, sandwich=sandwich,
                                           checkpoint_every=10**6)
            folder = tmp / f"experts-{key}-{n}"
            prep_s, jobs = _timed(prepare_expert_jobs, unet, Intervals.uniform(1000, 3), images, settings, folder,
                                  scheduler_config=scheduler_config)
            s, _ = _timed(run_expert_job, jobs[1], "cpu", False)
            times.append(s)
            out["supernet_prepare_s"] = prep_s
        out[key] = (times[1] - times[0]) / steps
    return out


def _fid_cost(tmp: Path, images: torch.Tensor) -> dict:
    """Seconds for FID/KID of 1,000 generated images (reference features cached beforehand)."""
    from nas.metrics import build_extractor, compute_quality, reference_features

    ext = build_extractor("digits", device="cpu", cache_dir=tmp)
    ref_s, ref = _timed(reference_features, "digits-16", images, ext, tmp)
    fake = images[torch.randint(0, images.shape[0], (1000,), generator=torch.Generator().manual_seed(0))]
    s, _ = _timed(compute_quality, fake + 0.05 * torch.randn_like(fake), ref, ext)
    s64, _ = _timed(compute_quality, fake[:64], ref, ext)
    return {"fid_1000_s": s, "fid_64_s": s64, "reference_features_s": ref_s}


@dataclass(frozen=True)
class SizingOptions:
    """What :func:`measure` times besides the base step and the sampling call.

    Attributes:
        train_steps: base training steps timed (difference of a 2- and a 2 + n-step run).
        sample_steps: sampling steps timed per measurement.
        expert_steps: elastic and fine-tuning steps timed (0: skip them).
        random_archs: random sub-networks per sandwich step.
        fid, pruned, run, static: also time FID, materialised uniform sub-networks, the
            RunContext costs (intervals, proxy, DeepCache) and static pruning.
        batches: sampling batch sizes to time besides 64.
    """

    train_steps: int = 20
    sample_steps: int = 5
    expert_steps: int = 6
    random_archs: int = 1
    fid: bool = False
    pruned: bool = False
    run: bool = False
    static: bool = False
    batches: tuple[int, ...] = ()


def measure(channels: tuple[int, ...], layers: int, options: SizingOptions = SizingOptions()) -> dict:
    """All per-unit costs of one base shape (see the module docstring); a JSON-able dict."""
    from diffusers import UNet2DModel

    from nas.embedded import build_training_scheduler, digits_16, embedded_settings

    o = options
    torch.set_num_threads(1)
    images = digits_16()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        out = {"block_out_channels": list(channels), "layers_per_block": layers}
        out.update(_base_cost(tmp, images, channels, layers, o.train_steps))
        unet = UNet2DModel.from_pretrained(Path(out.pop("base_folder")) / "unet").eval()
        out["parameters_m"] = sum(p.numel() for p in unet.parameters()) / 1e6
        settings = embedded_settings(SimpleNamespace(block_out_channels=channels, layers_per_block=layers))
        sched_cfg = dict(build_training_scheduler(settings).config)
        out["call64_s"] = _sampling_cost(unet, sched_cfg, o.sample_steps)
        if o.batches:
            out.update(_batch_costs(unet, sched_cfg, o.sample_steps, o.batches))
        if o.pruned:
            out.update(_pruned_costs(unet, sched_cfg, o.sample_steps, (0.1, 0.15, 0.3, 0.5)))
        if o.static:
            out.update(_static_costs(unet, images, sched_cfg, o.sample_steps))
        if o.run:
            out.update(_run_costs(tmp, channels, layers))
        if o.expert_steps:
            out.update(_expert_costs(tmp, unet, images, sched_cfg, o.expert_steps, o.random_archs))
        if o.fid:
            out.update(_fid_cost(tmp, images))
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: measure one shape and print (and optionally append) its costs as JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", default="32,64,64", help="block_out_channels, comma separated")
    p.add_argument("--layers", type=int, default=1, help="layers_per_block")
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--expert-steps", type=int, default=6)
    p.add_argument("--random-archs", type=int, default=1)
    p.add_argument("--fid", action="store_true", help="also time FID/KID of 1,000 images")
    p.add_argument("--batches", default="", help="also time sampling in these batch sizes (comma separated)")
    p.add_argument("--pruned", action="store_true", help="also time materialised uniform sub-networks")
    p.add_argument("--run", action="store_true", help="also time the intervals stage, the proxy and DeepCache")
    p.add_argument("--static", action="store_true", help="also time static pruning at budgets 0.1 and 0.3")
    p.add_argument("--out", type=Path, default=None, help="append the JSON line to this file")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    options = SizingOptions(train_steps=a.train_steps, expert_steps=a.expert_steps, random_archs=a.random_archs,
                            fid=a.fid, pruned=a.pruned, run=a.run, static=a.static,
                            batches=tuple(int(b) for b in a.batches.split(",") if b))
    res = measure(tuple(int(c) for c in a.channels.split(",")), a.layers, options)
    line = json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()})
    if a.out is not None:
        with open(a.out, "a") as f:
            f.write(line + "\n")
    sys.stdout.write(line + "\n")  # the result itself (a JSON line), not a log message


if __name__ == "__main__":
    main()
