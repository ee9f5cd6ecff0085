"""GPU checks of the model code: device choice, supernet vs materialised experts on CUDA, latency.

Run where a CUDA GPU is present (needs torch, diffusers, torch-pruning, fvcore; not ray, optuna
or clean-fid)::

    python benchmarks/gpu_check.py --out benchmarks/results

It checks that ``nas.device.resolve_device("auto")`` picks CUDA, that a supernet moved to
CUDA gives the same output as its materialised sub-networks there (max abs diff), and then runs
``benchmarks/latency.py`` on CUDA at the given batch sizes (side by side with the full model),
and then one expert-training job on CUDA (:func:`expert_training_job`: the elastic expert of one
interval, ``--train-steps`` sandwich steps at batch 64, saved and reloaded), with its seconds per
step and its losses. Everything goes to ``<out>/gpu_check.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import latency  # noqa: E402
from search_spaces import ElasticUNet  # noqa: E402

logger = logging.getLogger("benchmarks.gpu_check")


def expert_training_job(device: str | torch.device, out_dir: Path, steps: int = 50,
                        batch_size: int = 64) -> dict:
    """Train the elastic expert of interval 0 of ``[0, 500) [500, 1000)`` from the embedded digits
    UNet on ``device`` for ``steps`` steps (random images in [-1, 1]: this checks the device path
    and its speed, not quality); save it to ``out_dir``, reload it, and return what happened.

    Example:
        >>> import tempfile
        >>> r = expert_training_job("cpu", Path(tempfile.mkdtemp()), steps=2, batch_size=4)
        >>> r["steps"], r["device"], r["reloaded"]
        (2, 'cpu', True)
    """
    import time

    from diffusers import DDPMScheduler

    from experts.intervals import Intervals
    from experts.train_loop import ExpertTrainSettings
    from experts.training import train_experts
    from search_spaces import ElasticUNet as _Elastic

    g = torch.Generator().manual_seed(0)
    images = torch.rand(max(batch_size * 2, 8), 1, 16, 16, generator=g) * 2 - 1  # (N, 1, 16, 16)
    settings = ExpertTrainSettings(steps=steps, batch_size=batch_size, random_archs=1,
                                   checkpoint_every=max(1, steps), seed=0)
    t0 = time.perf_counter()
    res = train_experts(latency.embedded_unet(), Intervals(1000, (500,)), images, settings, out_dir,
                        scheduler_config=dict(DDPMScheduler().config), device=device, progress=False, only=[0])
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    expert = res.experts[0]
    reloaded = _Elastic.from_pretrained(expert.path, device="cpu")
    return {"device": torch.device(device).type, "steps": expert.steps, "batch_size": batch_size,
            "seconds": round(seconds, 3), "seconds_per_step": round(seconds / max(1, steps), 4),
            "final_loss": expert.final_loss, "reloaded": reloaded is not None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--batch-sizes", default="64,1024")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--train-steps", type=int, default=50, help="steps of the expert-training job")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from nas.device import resolve_device

    device = resolve_device("auto")
    report: dict = {"resolved_device": str(device), "cuda_available": torch.cuda.is_available()}
    if device.type != "cuda":
        logger.error("no CUDA device: resolve_device('auto') gave %s", device)
        return 1
    report["gpu"] = torch.cuda.get_device_name(device)
    net = ElasticUNet(latency.embedded_unet()).to(device)
    rng = np.random.default_rng(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 16, 16, generator=g).to(device)
    t = torch.randint(0, 1000, (8,), generator=g).to(device)
    diffs = []
    for _ in range(10):
        arch = net.space.sample(rng)
        net.set_active(arch)
        sub = net.materialize(arch).to(device)
        with torch.no_grad():
            diffs.append(float((net(x, t).sample - sub(x, t).sample).abs().max()))
    report["supernet_vs_materialized_max_abs_diff"] = max(diffs)
    logger.info("supernet vs materialised on %s: max |diff| = %.2e over 10 archs", report["gpu"], max(diffs))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        latency.main(["--device", "cuda", "--batch-size", str(bs), "--repeats", str(args.repeats),
                      "--out", str(out / f"cuda-b{bs}")])
        report[f"latency_b{bs}"] = json.loads((out / f"cuda-b{bs}" / "latency-cuda.json").read_text())["rows"]
    report["expert_training"] = expert_training_job(device, out / "gpu-expert", steps=args.train_steps)
    logger.info("expert training on %s: %s", report["gpu"], report["expert_training"])
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    logger.info("wrote %s", out / "gpu_check.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
