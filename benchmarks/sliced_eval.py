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

Usage::

    python -m benchmarks.sliced_eval                      # writes benchmarks/results/sliced-eval-cpu.md
    python -m benchmarks.sliced_eval --threads 2 --repeats 40 --out /tmp/sliced.md
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


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/sliced-eval-cpu.md"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    net, images = demo_supernet()
    rng = np.random.default_rng(args.seed)
    archs = {t: pick_arch(net.space, t, rng) for t in TARGETS}
    kw = eval_batch(images, args.batch_size, args.seed)
    results = time_archs(net, archs, kw, args.repeats)
    header = {
        "command": "`" + (f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ
                          else "") + "python -m benchmarks.sliced_eval "
                   + " ".join(sys.argv[1:] if argv is None else argv) + "`",
        "model": "demo preset's embedded UNet2DModel (block_out_channels (16, 32, 32), layers_per_block 1, "
                 "16x16, attention), random weights, the demo's space options",
        "batch": f"{args.batch_size} noised digits at random timesteps, torch.no_grad, eval mode",
        "machine": f"{platform.platform()}, python {platform.python_version()}, torch {torch.__version__}, "
                   f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
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
