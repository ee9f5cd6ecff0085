"""Which cheap fidelity ranks a budget's allocations like the bench's FID? Sample size and metric.

The router and the search rank joint allocations with the trajectory proxy on the run's elastic
experts before the bench fine-tunes the chosen mixture (``schedule.proxy``: a small-sample FID,
64 images by default). With the digit extractor's 64-d features a 64-image FID has a singular
covariance; this asks what ranks better at the same or a few times the cost. For every bench row
with an allocation file (from ``--run-root``, and from ``--extra-run-root`` under a ``prefix:``),
it samples the allocation's schedule on the elastic experts sliced to its archs (what the router
sees), ``--images`` images from the proxy's seed, and scores prefixes of 64, 256, ... images:

- ``fid@n``: FID against the dataset's reference features (the run's proxy at n = 64);
- ``kid@n``: KID (clean-fid's unbiased polynomial-kernel MMD^2) against the same features;
- ``distance@64``: the paired distance to the base model's 50-step samples (the proxy's other number).

It prints Kendall's tau of each against the bench FID over all rows and per budget, and writes
``--out`` (JSON and markdown). Nothing in the run folders is written except the proxy's cache.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/proxy_fidelity.py --preset standard --run-root runs-a \\
        --extra-run-root b:runs-b --out benchmarks/results/standard-rerun/proxy-fidelity
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from proxy_vs_bench import _fmt, _latest_rows, _taus  # noqa: E402

log = logging.getLogger("proxy_fidelity")


def _rows(ctx: Any, prefix: str) -> list[tuple[str, dict[str, Any], Path]]:
    out = []
    for name, r in sorted(_latest_rows(ctx.run.read_results()).items()):
        path = ctx.run.allocations_dir / f"{name}.json"
        if path.is_file():
            out.append((prefix + name, r, path))
    return out


def _metrics(feats: Any, ref: Any, sizes: list[int]) -> dict[str, float]:
    from nas.metrics import frechet_distance_from_features
    from nas.metrics.fid_kid import kernel_distance_seeded

    out = {}
    for n in sizes:
        out[f"fid@{n}"] = float(frechet_distance_from_features(feats[:n], ref))
        out[f"kid@{n}"] = float(kernel_distance_seeded(ref, feats[:n], num_subsets=100, max_subset_size=1000))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="standard")
    p.add_argument("--run-root", required=True, type=Path)
    p.add_argument("--extra-run-root", action="append", default=[], metavar="PREFIX:PATH",
                   help="another run folder of the same preset whose rows join under PREFIX (repeatable)")
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import numpy as np

    from experts.allocation import Allocation
    from experts.mixture import MixtureOfExperts
    from nas.config import load_config
    from nas.run import RunContext

    def context(root: Path) -> Any:
        return RunContext(load_config(None, [f"run_root={root}"], preset=args.preset), device="cpu", progress=False)

    ctx = context(args.run_root)
    proxy = ctx.trajectory_proxy()
    ref = ctx.reference_features()
    extractor = ctx.extractor()
    intervals, experts = ctx.experts()
    base = ctx.base.unet.eval()
    todo = _rows(ctx, "")
    for spec in args.extra_run_root:
        prefix, _, root = spec.partition(":")
        todo += _rows(context(Path(root)), prefix + ":")
    sizes = [n for n in (64, 256, 1024, 4096) if n <= args.images]
    rows = []
    for name, r, path in todo:
        alloc = Allocation.load(path)
        # the steps-only baseline samples the base model itself along its schedule
        on_base = set(range(len(alloc.archs))) if r["method"] == "steps" else set(alloc.base_intervals or ())
        archs = [None if k in on_base else a for k, a in enumerate(alloc.archs)]
        model = MixtureOfExperts(intervals, [base if a is None else e for a, e in zip(archs, experts)], archs)
        images = ctx.generate(model, args.images, ctx.cfg.schedule.proxy_seed, 0,
                              timesteps=alloc.schedule, progress=False)
        feats = np.asarray(extractor(images), dtype=np.float64)  # (N, D)
        m = _metrics(feats, ref, sizes)
        m["distance@64"] = float(proxy.score(model, alloc.schedule).distance)
        rows.append({"name": name, "budget_ratio": r["budget_ratio"], "fid_mean": r["fid_mean"],
                     "steps_per_interval": list(alloc.schedule.steps_per_interval), "metrics": m})
        log.info("%s: bench FID %.3f, %s", name, r["fid_mean"], {k: round(v, 4) for k, v in m.items()})
    budgets = sorted({x["budget_ratio"] for x in rows})
    taus = {k: _taus([x["metrics"][k] for x in rows], rows) for k in rows[0]["metrics"]}
    result = {"rows": rows, "taus": taus, "images": args.images, "machine": platform.platform(),
              "command": " ".join(["python", "benchmarks/proxy_fidelity.py", *(argv or sys.argv[1:])])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    head = " | ".join(f"tau {b}" for b in budgets)
    lines = [f"# Cheap fidelities vs the bench's FID, before fine-tuning ({args.preset})", "",
             f"Command: `{result['command']}`  ", f"Machine: {result['machine']}", "",
             f"Kendall tau vs the bench FID over {len(rows)} allocations:", "",
             f"| fidelity | tau, all rows | per budget, mean | {head} |", "|---" * (3 + len(budgets)) + "|"]
    for k, t in taus.items():
        lines.append(f"| {k} | {_fmt(t['all'])} | {_fmt(t['per_budget_mean'])} | "
                     + " | ".join(_fmt(t["per_budget"][str(b)]) for b in budgets) + " |")
    keys = list(rows[0]["metrics"])
    lines += ["", "| allocation | steps | bench FID | " + " | ".join(keys) + " |", "|---" * (3 + len(keys)) + "|"]
    for x in sorted(rows, key=lambda x: (x["budget_ratio"], x["fid_mean"])):
        lines.append(f"| {x['name']} | {'+'.join(map(str, x['steps_per_interval']))} | {x['fid_mean']:.3f} | "
                     + " | ".join(f"{x['metrics'][k]:.4f}" for k in keys) + " |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    for k, t in taus.items():
        log.info("tau %s: all %s, per budget %s", k, _fmt(t["all"]), _fmt(t["per_budget_mean"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
