"""Latency of materialised sub-networks vs the full model, measured side by side in one run.

For the embedded digits UNet (its default shape from ``nas.config.ModelConfig``; trained
weights are used when a run directory holds them, but latency does not depend on the values),
this script picks archs of the elastic space at about 75%, 50% and 30% of the full MACs,
materialises them, and times each together with the full model, round-robin, so that all
candidates see the same machine load. It reports, per target:

- ``macs_ratio``: MACs of the sub-network / MACs of the full model (analytic = fvcore);
- ``speedup``: median latency of the full model / median latency of the sub-network;
- ``efficiency``: ``speedup / (1 / macs_ratio)``, the fraction of the MACs reduction that
  turned into wall-clock speed-up (1.0 = perfectly proportional). Target: >= 0.8 at batch 64.

Two families of archs are timed: ``uniform`` (every width/heads/FFN at the same fraction, all
layers kept) and ``searched``: among 3000 random archs within 3% of the target ratio, the six
that keep the fewest layers and residual branches are pre-timed briefly and the fastest is
kept (a latency-aware pick, as hardware-aware NAS makes with a latency table). The final
figures come from the side-by-side timing of all chosen models with the full one.

Usage::

    python benchmarks/latency.py                       # CPU, batch 64, writes benchmarks/results/
    python benchmarks/latency.py --device cuda --batch-size 64 --repeats 20

Results go to ``benchmarks/results/latency-<device>.json`` and ``.md`` with the machine stated.

``--pipeline`` measures instead the *mixture pipeline's* overhead: a mixture of three
materialised experts (the three fastest searched archs near 50% of the MACs, one per
interval) sampled with :class:`experts.pipeline.MixturePipeline` (``--steps`` DDIM steps,
``--batch-size`` images, seeded noise) side by side with the base model in the same seeded
loop (:func:`experts.sampling_loop.denoise_batch`), plus the networks alone (the same calls
without the scheduler) to separate the network from the per-step overhead. It *appends* a
section to ``latency-<device>.md``::

    python benchmarks/latency.py --pipeline --batch-size 64 --repeats 10

:mod:`benchmarks.pipeline_overhead` (``benchmarks/pipeline_overhead.py``) measures the same
question more directly (the pipeline over zero-cost experts, i.e. everything but the networks,
timed in the same rotation) and writes ``latency-<device>-pipeline-overhead.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search_spaces import Arch, ElasticUNet, UNetSpace  # noqa: E402

logger = logging.getLogger("benchmarks.latency")

TARGETS = (0.75, 0.5, 0.3)


def embedded_unet() -> torch.nn.Module:
    """The embedded digits UNet (trained weights if a run holds them, else freshly built)."""
    from nas.config import ModelConfig
    from nas.models import build_embedded_unet, embedded_settings

    settings = embedded_settings(ModelConfig())
    return build_embedded_unet(settings)


def _biased_sample(space: UNetSpace, rng: np.random.Generator) -> Arch:
    """A random arch whose choices are drawn from the lowest ``p`` share of each dimension,
    with ``p`` drawn per arch, so that small MACs ratios are reached too."""
    p = rng.uniform(0.15, 1.0)
    values = {}
    for d in space.free_dimensions():
        hi = max(1, int(np.ceil(p * len(d.choices))))
        values[d.name] = d.choices[int(rng.integers(0, hi))] if rng.random() < 0.9 else d.full
    return space.repair(space.complete(values))


def pick_archs(space: UNetSpace, target: float, rng: np.random.Generator, n_random: int = 3000,
               n_candidates: int = 6) -> dict[str, Arch | list[Arch]]:
    """A uniform-width arch nearest to ``target`` MACs ratio, and up to ``n_candidates`` random
    archs within 3% of it that keep the fewest layers and residual branches."""
    full = space.total_macs
    fracs = np.linspace(0.05, 1.0, 96)
    uniform = min((space.uniform(float(f)) for f in fracs), key=lambda a: abs(space.macs(a) / full - target))
    # random archs near the target, fewest layers and residual branches kept first (fewer
    # kernel launches and norm/elementwise ops, which MACs do not count)
    scored: dict[Arch, tuple] = {}
    for _ in range(n_random):
        a = _biased_sample(space, rng)
        gap = abs(space.macs(a) / full - target)
        if gap > 0.03:
            continue
        n_layers = sum(1 for d in space.dimensions()
                       if (a[d.name] if isinstance(d.full, bool) else d.kind == "width" and a[d.name] > 0))
        scored[a] = (n_layers, gap)
    candidates = sorted(scored, key=scored.__getitem__)[:n_candidates]
    return {"uniform": uniform, "searched": candidates} if candidates else {"uniform": uniform}


def fastest(models: list[torch.nn.Module], inputs: dict, device: torch.device, repeats: int = 3) -> int:
    """Index of the fastest model by a short side-by-side pre-timing (a latency-aware pick,
    as hardware-aware NAS does with a latency table or measurements)."""
    times = time_side_by_side({str(i): m for i, m in enumerate(models)}, inputs, repeats, 1, device)
    return min(range(len(models)), key=lambda i: statistics.median(times[str(i)]))


def time_side_by_side(models: dict[str, torch.nn.Module], inputs: dict, repeats: int, warmup: int,
                      device: torch.device) -> dict[str, list[float]]:
    """Round-robin timing: each round runs every model once, in a rotated order."""
    names = list(models)
    times: dict[str, list[float]] = {n: [] for n in names}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(warmup):
            for n in names:
                models[n](**inputs)
        sync()
        for r in range(repeats):
            order = names[r % len(names):] + names[: r % len(names)]
            for n in order:
                sync()
                t0 = time.perf_counter()
                models[n](**inputs)
                sync()
                times[n].append((time.perf_counter() - t0) * 1000.0)
    return times


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--pipeline", action="store_true",
                   help="time the mixture pipeline against the base model instead (appends to latency-<device>.md)")
    p.add_argument("--steps", type=int, default=10, help="(--pipeline) DDIM sampling steps")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def _models(net: ElasticUNet, rng: np.random.Generator, inputs: dict[str, torch.Tensor],
            device: torch.device) -> tuple[dict[str, torch.nn.Module], dict[str, Arch]]:
    """The full model and one materialised sub-network per (family, target), with its arch."""
    models: dict[str, torch.nn.Module] = {"full": net.plain_unet().eval().to(device)}
    chosen: dict[str, Arch] = {}
    for target in TARGETS:
        for family, picked in pick_archs(net.space, target, rng).items():
            name = f"{family}@{target:.2f}"
            if isinstance(picked, list):  # candidates: keep the fastest
                subs = [net.materialize(a).eval().to(device) for a in picked]
                best = fastest(subs, inputs, device)
                chosen[name], models[name] = picked[best], subs[best]
                logger.info("%s: fastest of %d candidates within 3%% of the target", name, len(picked))
            else:
                chosen[name] = picked
                models[name] = net.materialize(picked).eval().to(device)
    return models, chosen


def _rows(space: Any, times: dict[str, list[float]], models: dict[str, torch.nn.Module],
          chosen: dict[str, Arch]) -> list[dict[str, Any]]:
    full_ms = statistics.median(times["full"])
    rows = []
    for name, ts in times.items():
        arch = chosen.get(name, space.full())
        ratio = space.macs(arch) / space.total_macs
        med = statistics.median(ts)
        speedup = full_ms / med
        rows.append({
            "model": name, "macs": space.macs(arch), "macs_ratio": round(ratio, 4),
            "latency_ms_median": round(med, 3), "latency_ms_min": round(min(ts), 3),
            "speedup": round(speedup, 3), "efficiency": round(speedup * ratio, 3),
            "params": sum(p.numel() for p in models[name].parameters()),
        })
        logger.info("%-16s macs_ratio=%.3f  median=%.2f ms  speedup=%.2fx  efficiency=%.2f",
                    name, ratio, med, speedup, speedup * ratio)
    return rows


def _write(result: dict[str, Any], out: Path, tag: str, batch_size: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"latency-{tag}.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Latency of materialised sub-networks ({tag}, batch {batch_size})", "",
             f"Machine: {json.dumps(result['machine'])}", "",
             "| model | MACs ratio | median ms | speed-up | efficiency |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['macs_ratio']:.3f} | {r['latency_ms_median']:.2f} | {r['speedup']:.2f}x | "
              f"{r['efficiency']:.2f} |" for r in result["rows"]]
    (out / f"latency-{tag}.md").write_text("\n".join(lines) + "\n")
    logger.info("wrote %s", out / f"latency-{tag}.json")


def pipeline_models(net: ElasticUNet, rng: np.random.Generator, inputs: dict, device: torch.device,
                    target: float = 0.5) -> tuple[torch.nn.Module, Any, list[Arch]]:
    """(base UNet, mixture of three materialised experts near ``target`` MACs, their archs)."""
    from experts.intervals import Intervals
    from experts.mixture import MixtureOfExperts

    picked = pick_archs(net.space, target, rng).get("searched") or [pick_archs(net.space, target, rng)["uniform"]]
    subs = [net.materialize(a).eval().to(device) for a in picked]
    pre = time_side_by_side({str(i): m for i, m in enumerate(subs)}, inputs, 3, 1, device)
    order = sorted(range(len(subs)), key=lambda i: statistics.median(pre[str(i)]))
    order = (order * 3)[:3]  # the three fastest (repeated when fewer candidates)
    iv = Intervals.uniform(1000, 3)
    mixture = MixtureOfExperts(iv, [subs[i] for i in order]).eval()
    return net.plain_unet().eval().to(device), mixture, [picked[i] for i in order]


def time_pipeline(base: torch.nn.Module, mixture: Any, batch_size: int, steps: int, repeats: int, warmup: int,
                  device: torch.device, seed: int = 0) -> dict[str, list[float]]:
    """Round-robin timing (ms) of: ``base``/``mixture`` in the seeded sampling loop, the mixture's
    :class:`~experts.pipeline.MixturePipeline` call, and ``base``/``mixture`` networks alone
    (one call per step timestep on a fixed batch, no scheduler)."""
    from diffusers import DDIMScheduler

    from experts.pipeline import MixturePipeline
    from experts.sampling_loop import TimestepPlan, denoise_batch, evenly_spaced_timesteps

    class _NoBar:
        def update(self, n: int) -> None:
            pass

    shape = (int(base.config.in_channels), int(base.config.sample_size), int(base.config.sample_size))
    pipe = MixturePipeline(mixture, DDIMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    plans = {n: TimestepPlan(DDIMScheduler(num_train_timesteps=1000), steps, None) for n in ("base", "mixture")}
    ts = [torch.tensor(t) for t in evenly_spaced_timesteps(DDIMScheduler(num_train_timesteps=1000), steps)]
    x = torch.randn(batch_size, *shape, generator=torch.Generator().manual_seed(seed)).to(device)

    def network(model: Any):
        def run() -> None:
            for t in ts:
                model(x, t.to(device))
        return run

    runs = {
        "base: sampling loop": lambda: denoise_batch(base, plans["base"], seed, 0, batch_size, shape, device, None,
                                                     _NoBar()),
        "mixture: sampling loop": lambda: denoise_batch(mixture, plans["mixture"], seed, 0, batch_size, shape, device,
                                                        None, _NoBar()),
        "mixture: MixturePipeline": lambda: pipe(batch_size=batch_size, num_inference_steps=steps, seed=seed,
                                                 output_type="pt"),
        "base: network only": network(base),
        "mixture: network only": network(mixture),
    }
    names = list(runs)
    times: dict[str, list[float]] = {n: [] for n in names}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(warmup):
            for n in names:
                runs[n]()
        for r in range(repeats):
            for n in names[r % len(names):] + names[: r % len(names)]:
                sync()
                t0 = time.perf_counter()
                runs[n]()
                sync()
                times[n].append((time.perf_counter() - t0) * 1000.0)
    return times


def pipeline_main(args: argparse.Namespace, device: torch.device) -> int:
    """``--pipeline`` (module docstring): append the mixture pipeline's speed-up / MACs section."""
    from experts.sampling_loop import evenly_spaced_timesteps
    from search_spaces.macs import count_unet_macs

    from diffusers import DDIMScheduler

    net = ElasticUNet(embedded_unet())
    rng = np.random.default_rng(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    inputs = {"sample": torch.randn(args.batch_size, 1, 16, 16, generator=g).to(device),
              "timestep": torch.full((args.batch_size,), 500, dtype=torch.long).to(device)}
    base, mixture, archs = pipeline_models(net, rng, inputs, device)
    ts = evenly_spaced_timesteps(DDIMScheduler(num_train_timesteps=1000), args.steps)
    ratio = mixture.trajectory_macs(ts) / (count_unet_macs(base, batch_size=1) * len(ts))
    times = time_pipeline(base, mixture, args.batch_size, args.steps, args.repeats, args.warmup, device, args.seed)
    med = {n: statistics.median(v) for n, v in times.items()}
    lines = ["", f"## Mixture pipeline overhead ({device.type}, batch {args.batch_size}, {args.steps} DDIM steps)", "",
             f"- command: `{'OMP_NUM_THREADS=' + os.environ['OMP_NUM_THREADS'] + ' ' if 'OMP_NUM_THREADS' in os.environ else ''}"
             f"python benchmarks/latency.py {' '.join(args.argv)}`",
             f"- machine: {json.dumps(machine())}",
             "- load: the 2 cores were shared with other jobs (a long benchmark on one core): absolute times are "
             "noisy, the ratios come from round-robin timing in this one run",
             f"- mixture: three materialised experts (the three fastest searched archs near 0.5 of the MACs, one per "
             f"uniform interval), trajectory MACs ratio {ratio:.3f} of the base model over the {len(ts)} steps",
             f"- repeats: {args.repeats} rounds after {args.warmup} warm-up rounds, rotated order; medians", "",
             "efficiency = (base ms / mixture ms) x MACs ratio: the share of the MACs reduction the mixture turns "
             "into speed (issue 13 target: >= 0.9 for the pipeline).", "",
             "Medians, and in brackets the fastest of the rounds (least disturbed by the other jobs).", "",
             "| what | base ms | mixture ms | speed-up | efficiency | efficiency (fastest rounds) |",
             "|---|---|---|---|---|---|"]
    pairs = [("sampling loop (seeded, scheduler included)", "base: sampling loop", "mixture: sampling loop"),
             ("MixturePipeline call vs base sampling loop", "base: sampling loop", "mixture: MixturePipeline"),
             ("networks alone (same calls, no scheduler)", "base: network only", "mixture: network only")]
    for what, b, m in pairs:
        sp = med[b] / med[m]
        lo_b, lo_m = min(times[b]), min(times[m])
        lines.append(f"| {what} | {med[b]:.1f} ({lo_b:.1f}) | {med[m]:.1f} ({lo_m:.1f}) | {sp:.2f}x | {sp * ratio:.3f} | "
                     f"{lo_b / lo_m * ratio:.3f} |")
    over_b = med["base: sampling loop"] - med["base: network only"]
    over_m = med["mixture: MixturePipeline"] - med["mixture: network only"]
    lines += ["", f"Per-run overhead outside the networks (loop minus networks alone): base {over_b:.1f} ms, "
              f"mixture pipeline {over_m:.1f} ms ({over_m / args.steps:.2f} ms per step).",
              "", "Experts' MACs ratios (intervals from t=0 up): "
              + ", ".join(f"{net.space.macs(a) / net.space.total_macs:.3f}" for a in archs)
              + f"; archs and every timing in `latency-{device.type}-pipeline.json`."]
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"latency-{device.type}.md").open("a") as f:
        f.write(text)
    result = {"device": str(device), "batch_size": args.batch_size, "steps": args.steps, "repeats": args.repeats,
              "machine": machine(), "macs_ratio": ratio, "times_ms": times, "median_ms": med,
              "archs": [a.to_dict() for a in archs]}
    (out / f"latency-{device.type}-pipeline.json").write_text(json.dumps(result, indent=2))
    logger.info("%s", text)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.pipeline:
        return pipeline_main(args, device)
    net = ElasticUNet(embedded_unet())
    rng = np.random.default_rng(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    inputs = {
        "sample": torch.randn(args.batch_size, 1, 16, 16, generator=g).to(device),
        "timestep": torch.full((args.batch_size,), 500, dtype=torch.long).to(device),
    }
    models, chosen = _models(net, rng, inputs, device)
    times = time_side_by_side(models, inputs, args.repeats, args.warmup, device)
    result = {"device": str(device), "batch_size": args.batch_size, "repeats": args.repeats,
              "machine": machine(), "rows": _rows(net.space, times, models, chosen),
              "archs": {k: v.to_dict() for k, v in chosen.items()},
              "definition": "efficiency = speedup / (1 / macs_ratio); target >= 0.8 at batch 64"}
    _write(result, Path(args.out), device.type, args.batch_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
