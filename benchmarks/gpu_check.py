"""GPU checks of the model code: device choice, supernet vs materialised experts on CUDA, latency.

Run where a CUDA GPU is present (needs torch, diffusers, torch-pruning, fvcore; not ray, optuna
or clean-fid)::

    python benchmarks/gpu_check.py --out benchmarks/results

It checks that ``nas.device.resolve_device("auto")`` picks CUDA, that a supernet moved to
CUDA gives the same output as its materialised sub-networks there (max abs diff), and then runs
``benchmarks/latency.py`` on CUDA at the given batch sizes (side by side with the full model).
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--batch-sizes", default="64,1024")
    p.add_argument("--repeats", type=int, default=30)
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
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    logger.info("wrote %s", out / "gpu_check.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
