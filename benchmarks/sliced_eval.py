"""Cost of evaluating one sub-network of the supernet: masked vs sliced vs the full pass.

On the demo-sized embedded UNet (``nas/presets/demo.yaml``'s model, the demo's space options;
random weights: cost does not depend on their values), this script picks one arch of the
space near each target MACs ratio (0.3, 0.5, 0.7, and the full arch) and times one held-out
evaluation batch (``--batch-size`` noised digits at random timesteps, ``torch.no_grad``) with:

- ``masked``: ``ElasticUNet.set_active(arch)`` then a pass (the default path: full cost);
- ``sliced``: ``set_active(arch, mode="sliced")`` then a pass, the sub-network cached
  (:meth:`search_spaces.ElasticUNet.sliced`);
- ``materialized``: the physically pruned model (``ElasticUNet.materialize``), a lower bound
  (contiguous weights, no slicing at call time);
- ``full``: the supernet at its full arch (one pass of the whole model).

All are timed side by side, round robin in a rotated order, and the medians over
``--repeats`` rounds are compared as ratios to ``full`` (the machine may be shared: only
ratios measured in the same run are meaningful). It also reports the one-off cost of building
a sliced sub-network (first call of a new arch) and ``max |sliced - masked|`` on that batch.

``--trajectory`` times instead one *trajectory-proxy evaluation* of a mixture (what the
joint search and the router's exact scoring pay per candidate: the demo's
``schedule.proxy_images`` images sampled along a 10-step DDIM schedule from the proxy seed,
their digits-classifier features and small-sample FID, :class:`experts.trajectory_proxy.TrajectoryProxy`)
of three supernet experts at archs of about 0.3 of the MACs, with the mixture's masked path
(``MixtureOfExperts.sliced_eval = False``), its sliced path (the default for evaluation) and
the materialised experts, side by side with the full-width mixture, and *appends* a section
to ``--out``.

Usage::

    python -m benchmarks.sliced_eval                      # writes benchmarks/results/sliced-eval-cpu.md
    python -m benchmarks.sliced_eval --threads 2 --repeats 40 --out /tmp/sliced.md
    python -m benchmarks.sliced_eval --trajectory --repeats 8   # appends the trajectory section
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from search_spaces import Arch, ElasticUNet, UNetSpace

logger = logging.getLogger("benchmarks.sliced_eval")

__all__ = ["EvalTimes", "main", "pick_arch", "time_archs"]

TARGETS = (0.3, 0.5, 0.7, 1.0)
MODES = ("masked", "sliced", "materialized")


@dataclass
class EvalTimes:
    """Median seconds per evaluation of one arch, by mode, and the checks made on it."""

    target: float
    macs_ratio: float
    median_s: dict[str, float]
    build_s: float
    max_abs_diff: float


def demo_supernet(preset: str = "demo") -> tuple[ElasticUNet, torch.Tensor]:
    """The preset's embedded UNet as a supernet with the preset's space options, and its
    digits images."""
    from nas.config import load_config
    from nas.embedded import build_embedded_unet, digits_16, embedded_settings
    from nas.run import space_options

    cfg = load_config(preset=preset)
    unet = build_embedded_unet(embedded_settings(cfg.model), sample_size=int(cfg.data.image_size))
    return ElasticUNet(unet, space_options(cfg)).eval(), digits_16()


def pick_arch(space: UNetSpace, target: float, rng: np.random.Generator, n_draws: int = 4000) -> Arch:
    """A random arch with MACs ratio nearest ``target`` (each draw takes its choices from the
    lowest share ``p`` of each dimension, ``p`` drawn per arch, so that low ratios occur)."""
    if target >= 1.0:
        return space.full()
    best, gap = space.full(), 1.0
    for _ in range(n_draws):
        p = rng.uniform(0.1, 1.0)
        values = {d.name: d.choices[int(rng.integers(0, max(1, int(np.ceil(p * len(d.choices))))))]
                  for d in space.free_dimensions()}
        arch = space.repair(space.complete(values))
        g = abs(space.macs(arch) / space.total_macs - target)
        if g < gap:
            best, gap = arch, g
    return best


def _runner(net: ElasticUNet, arch: Arch, mode: str, kw: dict) -> Callable[[], object]:
    if mode == "materialized":
        model = net.materialize(arch).eval()
        return lambda: model(**kw)

    def run() -> object:
        net.set_active(arch, mode="sliced" if mode == "sliced" else "masked")
        return net(**kw)

    return run


def _build_seconds(net: ElasticUNet, arch: Arch, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        net.clear_sliced_cache()
        t0 = time.perf_counter()
        net.sliced(arch)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_archs(net: ElasticUNet, archs: dict[float, Arch], kw: dict, repeats: int,
               warmup: int = 2) -> list[EvalTimes]:
    """Round-robin timing of every (arch, mode) and the full pass (module docstring)."""
    runs: dict[str, Callable[[], object]] = {"full": _runner(net, net.space.full(), "masked", kw)}
    for t, arch in archs.items():
        for mode in MODES:
            runs[f"{t}:{mode}"] = _runner(net, arch, mode, kw)
    names = list(runs)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.no_grad():
        for _ in range(warmup):
            for n in names:
                runs[n]()
        for r in range(repeats):
            for n in names[r % len(names):] + names[: r % len(names)]:
                t0 = time.perf_counter()
                runs[n]()
                times[n].append(time.perf_counter() - t0)
        out = []
        for t, arch in archs.items():
            net.set_active(arch)
            masked = net(**kw).sample
            net.set_active(arch, mode="sliced")
            diff = (net(**kw).sample - masked).abs().max().item()
            median = {m: statistics.median(times[f"{t}:{m}"]) for m in MODES}
            median["full"] = statistics.median(times["full"])
            out.append(EvalTimes(t, net.space.macs(arch) / net.space.total_macs, median,
                                 _build_seconds(net, arch, 5), diff))
    net.set_active(net.space.full())
    return out


def eval_batch(images: torch.Tensor, batch_size: int, seed: int = 0) -> dict:
    """One held-out evaluation batch: noised images at random timesteps."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(images), generator=g)[:batch_size]
    x = images[idx]
    t = torch.randint(0, 1000, (len(x),), generator=g)
    return {"sample": x + torch.randn(x.shape, generator=g), "timestep": t}


def render(results: list[EvalTimes], header: dict[str, str]) -> str:
    """The markdown report."""
    lines = ["# Sliced vs masked evaluation of a sub-network (CPU)", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "Times are medians of the round-robin repeats; ratios are to the full pass measured in the "
              "same rounds. efficiency = (full / sliced) / (1 / MACs ratio): the share of the MACs reduction "
              "the sliced pass turns into speed.", "",
              "| target | MACs ratio | full ms | masked ms | sliced ms | materialized ms | masked/full | "
              "sliced/full | materialized/full | sliced speed-up vs masked | efficiency | build ms | "
              "max abs(sliced - masked) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        m = {k: v * 1e3 for k, v in r.median_s.items()}
        lines.append(
            f"| {r.target:.1f} | {r.macs_ratio:.3f} | {m['full']:.2f} | {m['masked']:.2f} | {m['sliced']:.2f} | "
            f"{m['materialized']:.2f} | {m['masked'] / m['full']:.3f} | {m['sliced'] / m['full']:.3f} | "
            f"{m['materialized'] / m['full']:.3f} | {m['masked'] / m['sliced']:.2f}x | "
            f"{m['full'] / m['sliced'] * r.macs_ratio:.2f} | {r.build_s * 1e3:.2f} | {r.max_abs_diff:.1e} |")
    lines += ["", "Reading it: `masked` already skips the removed layers (only widths run at full cost), so "
              "masked/full is below 1 for archs that drop layers. The 1.0 row times the same full network "
              "four ways: its spread around 1.000 is the noise of this run. `build ms` is the one-off cost "
              "of the first sliced call of a new arch (median of 5 builds); later calls reuse the cached "
              "sub-network."]
    return "\n".join(lines) + "\n"


def trajectory_mixtures(net: ElasticUNet, target: float, rng: np.random.Generator) -> dict:
    """The mixtures a trajectory-proxy evaluation is timed on: three interval experts (copies of
    ``net``) at archs near ``target`` (``masked``/``sliced``), their materialised sub-networks
    (``materialized``) and the experts at full width (``full``)."""
    import copy

    from experts.intervals import Intervals
    from experts.mixture import MixtureOfExperts

    iv = Intervals.uniform(1000, 3)
    experts = [copy.deepcopy(net).eval() for _ in range(iv.num_intervals)]
    archs = [pick_arch(net.space, target, rng) for _ in experts]
    masked = MixtureOfExperts(iv, experts, archs).eval()
    masked.sliced_eval = False
    sliced = MixtureOfExperts(iv, experts, archs).eval()
    mats = MixtureOfExperts(iv, [e.materialize(a).eval() for e, a in zip(experts, archs)]).eval()
    full = MixtureOfExperts(iv, experts, [net.space.full()] * iv.num_intervals).eval()
    return {"full": full, "masked": masked, "sliced": sliced, "materialized": mats}


def time_trajectory(net: ElasticUNet, images: torch.Tensor, target: float, repeats: int, seed: int,
                    cache_dir: Path) -> dict:
    """Round-robin timing of one trajectory-proxy score per mixture (module docstring)."""
    from diffusers import DDPMScheduler

    from experts.trajectory_proxy import TrajectoryProxy
    from nas.config import load_config
    from nas.metrics import build_extractor, frechet_distance_from_features
    from nas.sampling import generate, make_scheduler, sampling_timesteps

    cfg = load_config(preset="demo")
    s = cfg.schedule
    sched = make_scheduler(cfg.sampling.sampler, dict(DDPMScheduler(num_train_timesteps=1000).config))
    extractor = build_extractor("digits", device="cpu", cache_dir=cache_dir)
    ref_feats = np.asarray(extractor(images), dtype=np.float64)

    def sample(model, timesteps):
        return generate(model, sched, num_images=s.proxy_images, timesteps=list(timesteps),
                        batch_size=cfg.sampling.batch_size, seed=s.proxy_seed,
                        sample_shape=tuple(images.shape[1:]), progress=False)

    net.set_active(net.space.full())
    proxy = TrajectoryProxy(sample, net, sampling_timesteps(sched, s.reference_steps), extractor,
                            fid=lambda f: frechet_distance_from_features(f, ref_feats))
    proxy.reference_features  # noqa: B018  (sampled once, outside the timing)
    steps = sampling_timesteps(sched, cfg.sampling.num_steps)
    models = trajectory_mixtures(net, target, np.random.default_rng(seed))
    ratio = models["masked"].trajectory_macs(steps) / models["full"].trajectory_macs(steps)
    names = list(models)
    times: dict[str, list[float]] = {n: [] for n in names}
    scores = {n: proxy.score(models[n], steps) for n in names}  # warm-up (and sub-network builds)
    for r in range(repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            proxy.score(models[n], steps)
            times[n].append(time.perf_counter() - t0)
    return {"median_s": {n: statistics.median(v) for n, v in times.items()}, "macs_ratio": ratio,
            "steps": len(steps), "images": s.proxy_images, "scores": scores}


def render_trajectory(res: dict, header: dict[str, str]) -> str:
    """The markdown section of ``--trajectory``."""
    m = {k: v * 1e3 for k, v in res["median_s"].items()}
    sc = res["scores"]
    lines = ["", "## One trajectory-proxy evaluation of a mixture at ~0.3 of the MACs: masked vs sliced", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "Median ms per `TrajectoryProxy.score` (sampling, features, small-sample FID; the reference is "
              "computed once before timing); ratios to the full-width mixture timed in the same rounds.", "",
              "| mixture | MACs ratio | median ms | ratio to full | small FID | distance |", "|---|---|---|---|---|---|"]
    for n in ("full", "masked", "sliced", "materialized"):
        r = 1.0 if n == "full" else res["macs_ratio"]
        lines.append(f"| {n} | {r:.3f} | {m[n]:.0f} | {m[n] / m['full']:.3f} | {sc[n].fid:.6f} | "
                     f"{sc[n].distance:.6g} |")
    eq = sc["masked"].fid == sc["sliced"].fid and sc["masked"].distance == sc["sliced"].distance
    lines += ["", f"Sliced vs masked scores: {'bit-identical' if eq else 'differ'} "
              f"(|small FID difference| {abs(sc['masked'].fid - sc['sliced'].fid):.1e}). Sliced speed-up over "
              f"masked per evaluation: {m['masked'] / m['sliced']:.2f}x."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/sliced-eval-cpu.md"))
    ap.add_argument("--trajectory", action="store_true",
                    help="time one trajectory-proxy evaluation of a mixture instead; append a section to --out")
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/diffnas-sliced-eval-cache"),
                    help="(--trajectory) where the digits classifier is trained once and cached")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    net, images = demo_supernet()
    command = ("`" + (f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ
                      else "") + "python -m benchmarks.sliced_eval " + " ".join(sys.argv[1:] if argv is None else argv)
               + "`")
    machine = (f"{platform.platform()}, python {platform.python_version()}, torch {torch.__version__}, "
               f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}")
    if args.trajectory:
        res = time_trajectory(net, images, 0.3, args.repeats, args.seed, args.cache_dir)
        header = {
            "command": command,
            "model": "three interval experts (copies of the demo supernet above, random weights), DDIM "
                     f"{res['steps']} evenly spaced steps, {res['images']} images (the demo's proxy_images, "
                     "proxy seed), digits-classifier features, batch 64",
            "machine": machine,
            "load": "2 cores shared with other agents' jobs (a long benchmark ran on one core): absolute times are "
                    "noisy; the ratios come from round-robin timing in one run",
            "repeats": f"{args.repeats} rounds after one warm-up score per mixture, rotated order",
        }
        text = render_trajectory(res, header)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(text)
        logger.info("%s", text)
        return 0
    rng = np.random.default_rng(args.seed)
    archs = {t: pick_arch(net.space, t, rng) for t in TARGETS}
    kw = eval_batch(images, args.batch_size, args.seed)
    results = time_archs(net, archs, kw, args.repeats)
    header = {
        "command": command,
        "model": "demo preset's embedded UNet2DModel (block_out_channels (16, 32, 32), layers_per_block 1, "
                 "16x16, attention), random weights, the demo's space options",
        "batch": f"{args.batch_size} noised digits at random timesteps, torch.no_grad, eval mode",
        "machine": machine,
        "load": "the 2 cores were shared with other agents' jobs during the run: absolute times are noisy, "
                "the ratios come from side-by-side (round-robin) timing in one run",
        "repeats": f"{args.repeats} rounds (after 2 warm-up rounds), every model once per round in a rotated order",
    }
    text = render(results, header)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    logger.info("%s", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
