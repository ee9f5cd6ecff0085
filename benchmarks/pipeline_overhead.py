"""The mixture pipeline's own overhead: does its speed-up realise its MACs reduction?

On the embedded digits UNet (random weights: latency does not depend on their values), this
script builds a mixture of three *materialised* experts near 0.5 of the base model's MACs (the
three fastest searched archs of :func:`benchmarks.latency.pipeline_models`, one per uniform
interval) and times, side by side round-robin (order rotated every round, so a change of
machine load hits every candidate alike; :func:`nas.latency.compare_latency`):

- ``base: sampling loop``: the base model's whole seeded trajectory
  (:func:`experts.sampling_loop.denoise_batch`, what ``nas.sampling.generate`` and the bench
  run), ``--steps`` DDIM steps at ``--batch-size`` images;
- ``mixture: MixturePipeline``: the same trajectory through
  :class:`experts.pipeline.MixturePipeline` (``seed=``), scheduler and routing included;
- ``mixture: sampling loop``: the mixture in the bench's loop;
- ``base: network only`` / ``experts: network only``: the same network calls on a fixed batch
  (no scheduler, no noise, no routing: each step calls its own expert directly), the floor a
  pipeline can reach.

It reports the trajectory MACs ratio ``r`` (mixture / base, fvcore), each speed-up, and the
*efficiency* ``speed-up x r``: the share of the MACs reduction turned into wall-clock speed-up
(issue 13: the pipeline must reach >= 0.9 at batch 64 on CPU). The pipeline's samples are
checked to be bitwise equal to the bench loop's before anything is timed.

Usage (one thread, as the issue's figure is stated)::

    OMP_NUM_THREADS=1 python benchmarks/pipeline_overhead.py --threads 1 --repeats 20
    # the experts the earlier latency run measured (reproducible, no pick by pre-timing):
    OMP_NUM_THREADS=1 python benchmarks/pipeline_overhead.py --archs benchmarks/results/latency-cpu-pipeline.json

Results go to ``benchmarks/results/latency-<device>-pipeline-overhead.json`` and ``.md``, with
the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.latency import embedded_unet, machine, pipeline_models  # noqa: E402
from search_spaces import ElasticUNet  # noqa: E402

logger = logging.getLogger("benchmarks.pipeline_overhead")

__all__ = ["candidates", "efficiency_rows", "main", "mixture_of_archs"]

#: (what, base run, mixture run): the pairs the report compares
PAIRS = (
    ("MixturePipeline vs base sampling loop (the target)", "base: sampling loop", "mixture: MixturePipeline"),
    ("mixture vs base, both in the bench's sampling loop", "base: sampling loop", "mixture: sampling loop"),
    ("experts alone vs base alone (network calls only)", "base: network only", "experts: network only"),
)


class _NoBar:
    def update(self, n: int) -> None:
        pass


class FreeExpert(torch.nn.Module):
    """A stand-in network that costs nothing (returns its input as the noise prediction), with
    the UNet's ``config`` shape: a pipeline over such experts times everything *but* the
    networks (noise, scheduler, routing, Python per step)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # dtype/device for the pipeline

    def forward(self, sample: torch.Tensor, timestep: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        return sample


def candidates(base: torch.nn.Module, mixture: Any, batch_size: int, steps: int, device: torch.device,
               seed: int = 0) -> dict[str, Callable[[], object]]:
    """The callables timed side by side (module docstring), by name.

    Raises:
        AssertionError: the pipeline's samples differ from the bench loop's (bitwise).
    """
    from diffusers import DDIMScheduler

    from experts.pipeline import MixturePipeline
    from experts.sampling_loop import TimestepPlan, denoise_batch, evenly_spaced_timesteps

    cfg = base.config
    shape = (int(cfg.in_channels), int(cfg.sample_size), int(cfg.sample_size))
    pipe = MixturePipeline(mixture, DDIMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    plans = {n: TimestepPlan(DDIMScheduler(num_train_timesteps=1000), steps, None) for n in ("base", "mixture")}
    ts = evenly_spaced_timesteps(DDIMScheduler(num_train_timesteps=1000), steps)
    t_dev = [torch.tensor(t, device=device) for t in ts]
    owners = [mixture.expert_for(int(mixture.interval_index(float(t)))) for t in ts]  # the expert of each step
    x = torch.randn(batch_size, *shape, generator=torch.Generator().manual_seed(seed)).to(device)  # (B,C,H,W)

    def loop(model: Any) -> Callable[[], object]:
        return lambda: denoise_batch(model, plans["base" if model is base else "mixture"], seed, 0, batch_size,
                                     shape, device, None, _NoBar())

    def pipeline() -> object:
        return pipe(batch_size=batch_size, num_inference_steps=steps, seed=seed, output_type="pt").images

    def networks(models: list[Any]) -> Callable[[], object]:
        def run() -> object:
            for m, t in zip(models, t_dev):
                out = m(x, t)
            return out
        return run

    from experts.mixture import MixtureOfExperts

    free_base = FreeExpert(cfg).to(device)
    free_mix = MixtureOfExperts(mixture.intervals, [FreeExpert(cfg).to(device) for _ in range(mixture.num_experts)])
    free_pipe = MixturePipeline(free_mix, DDIMScheduler(num_train_timesteps=1000))
    free_pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        want = (loop(mixture)() / 2 + 0.5).clamp(0, 1)
        got = pipeline()
    assert torch.equal(want, got), "MixturePipeline samples differ from the sampling loop's"
    return {
        "base: sampling loop, free network": lambda: denoise_batch(free_base, plans["base"], seed, 0, batch_size,
                                                                   shape, device, None, _NoBar()),
        "mixture: MixturePipeline, free experts": lambda: free_pipe(batch_size=batch_size, num_inference_steps=steps,
                                                                    seed=seed, output_type="pt"),
        "base: sampling loop": loop(base),
        "mixture: MixturePipeline": pipeline,
        "mixture: sampling loop": loop(mixture),
        "base: network only": networks([base] * len(ts)),
        "experts: network only": networks(owners),
    }


def efficiency_rows(times: dict[str, Any], macs_ratio: float) -> list[dict[str, Any]]:
    """One row per :data:`PAIRS` entry: medians, speed-up and efficiency (= speed-up x MACs ratio),
    also from the fastest rounds (``min_ms``, the least disturbed by other load).

    Example:
        >>> from nas.latency import LatencyResult
        >>> t = {n: LatencyResult(m, m, m, 1) for n, m in [("base: sampling loop", 100.0),
        ...      ("mixture: MixturePipeline", 55.0), ("mixture: sampling loop", 52.0),
        ...      ("base: network only", 98.0), ("experts: network only", 50.0)]}
        >>> round(efficiency_rows(t, 0.5)[0]["efficiency"], 3)
        0.909
    """
    rows = []
    for what, b, m in PAIRS:
        sp = times[b].median_ms / times[m].median_ms
        sp_min = times[b].min_ms / times[m].min_ms
        rows.append({"what": what, "base": b, "mixture": m, "base_ms": times[b].median_ms,
                     "mixture_ms": times[m].median_ms, "base_min_ms": times[b].min_ms,
                     "mixture_min_ms": times[m].min_ms, "speedup": sp, "efficiency": sp * macs_ratio,
                     "efficiency_fastest": sp_min * macs_ratio})
    return rows


def mixture_of_archs(net: ElasticUNet, path: str | Path, device: torch.device) -> tuple[torch.nn.Module, Any, list]:
    """(base UNet, mixture of the materialised archs listed in ``path``'s ``archs``, one per
    uniform interval, the archs)."""
    from experts.intervals import Intervals
    from experts.mixture import MixtureOfExperts
    from search_spaces import Arch

    archs = [Arch(a) for a in json.loads(Path(path).read_text())["archs"]]
    subs = [net.materialize(a).eval().to(device) for a in archs]
    mixture = MixtureOfExperts(Intervals.uniform(1000, len(subs)), subs).eval()
    return net.plain_unet().eval().to(device), mixture, archs


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="DDIM sampling steps")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--archs", default=None, metavar="JSON",
                   help="the experts' archs: a JSON file with an 'archs' list (one per interval, e.g. "
                        "latency-cpu-pipeline.json) instead of picking them (default: pick, as benchmarks/latency.py does)")
    p.add_argument("--note", default="", help="a line about the machine's load, written into the .md")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def _markdown(args: argparse.Namespace, device: torch.device, ratio: float, rows: list[dict[str, Any]],
              times: dict[str, Any], expert_ratios: list[float]) -> str:
    env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    lines = [f"# Mixture pipeline overhead ({device.type}, batch {args.batch_size}, {args.steps} DDIM steps)", "",
             f"- command: `{env}python benchmarks/pipeline_overhead.py {' '.join(args.argv)}`",
             f"- machine: {json.dumps(machine())}",
             f"- mixture: three materialised experts (one per uniform interval, MACs ratios "
             f"{', '.join(f'{r:.3f}' for r in expert_ratios)} from t=0 up); trajectory MACs ratio "
             f"r = {ratio:.3f} of the base model",
             f"- timing: {args.repeats} rounds after {args.warmup} warm-up rounds, round-robin, order rotated every "
             "round (`nas.latency.compare_latency`); medians, and the fastest round in brackets",
             "- samples: the pipeline's images are bitwise equal to the bench loop's (checked before timing)"]
    if args.note:
        lines.append(f"- load: {args.note}")
    lines += ["", "efficiency = speed-up x r: the share of the MACs reduction turned into wall-clock speed-up "
              "(issue 13 target for the pipeline: >= 0.9).", "",
              "| what | base ms | mixture ms | speed-up | efficiency | efficiency (fastest rounds) |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['what']} | {r['base_ms']:.1f} ({r['base_min_ms']:.1f}) | {r['mixture_ms']:.1f} "
                     f"({r['mixture_min_ms']:.1f}) | {r['speedup']:.2f}x | {r['efficiency']:.3f} | "
                     f"{r['efficiency_fastest']:.3f} |")
    free_p = times["mixture: MixturePipeline, free experts"]
    free_b = times["base: sampling loop, free network"]
    pipe_ms = times["mixture: MixturePipeline"].median_ms
    lines += ["", "Everything but the networks, timed directly (the same pipeline / loop over experts that cost "
              "nothing: seeded noise, scheduler, routing, Python per step): "
              f"mixture pipeline {free_p.median_ms:.2f} ms per run ({free_p.median_ms / args.steps:.3f} ms per step, "
              f"{100 * free_p.median_ms / pipe_ms:.2f}% of the pipeline's run), base loop {free_b.median_ms:.2f} ms "
              f"per run. Efficiency with that removed from both (networks and their own Python only): "
              f"{(rows[0]['base_ms'] - free_b.median_ms) / (pipe_ms - free_p.median_ms) * ratio:.3f}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Build, check, time, and write ``latency-<device>-pipeline-overhead.{json,md}``."""
    from diffusers import DDIMScheduler

    from experts.sampling_loop import evenly_spaced_timesteps
    from nas.latency import compare_latency
    from search_spaces.macs import count_unet_macs

    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    net = ElasticUNet(embedded_unet())
    g = torch.Generator().manual_seed(args.seed)
    inputs = {"sample": torch.randn(args.batch_size, 1, 16, 16, generator=g).to(device),
              "timestep": torch.full((args.batch_size,), 500, dtype=torch.long).to(device)}
    if args.archs:
        base, mixture, archs = mixture_of_archs(net, args.archs, device)
    else:
        base, mixture, archs = pipeline_models(net, np.random.default_rng(args.seed), inputs, device)
    ts = evenly_spaced_timesteps(DDIMScheduler(num_train_timesteps=1000), args.steps)
    ratio = mixture.trajectory_macs(ts) / (count_unet_macs(base, batch_size=1) * len(ts))
    fns = candidates(base, mixture, args.batch_size, args.steps, device, args.seed)
    with torch.inference_mode():
        times = compare_latency(fns, repeats=args.repeats, warmup=args.warmup, device=device)
    rows = efficiency_rows(times, ratio)
    expert_ratios = [net.space.macs(a) / net.space.total_macs for a in archs]
    text = _markdown(args, device, ratio, rows, times, expert_ratios)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"latency-{device.type}-pipeline-overhead"
    (out / f"{stem}.md").write_text(text)
    result = {"command": f"python benchmarks/pipeline_overhead.py {' '.join(args.argv)}", "device": str(device),
              "batch_size": args.batch_size, "steps": args.steps, "repeats": args.repeats, "warmup": args.warmup,
              "machine": machine(), "macs_ratio": ratio, "expert_macs_ratios": expert_ratios, "rows": rows,
              "times_ms": {n: r.to_dict() for n, r in times.items()}, "archs": [a.to_dict() for a in archs]}
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    logger.info("%s", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
