"""The trainable: one evaluation, run by Tune on a worker."""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import ray
from ray import tune

from nas.ray_backend._cluster import trial_device
from nas.run import to_jsonable
from nas.search import EvalContext, Objective
from search_spaces import Arch

__all__ = ["trainable", "trial_dirname"]


def trainable(config: dict[str, Any], objective: Objective | None = None) -> None:
    """One evaluation: the architecture and fidelity come in ``config["diffnas"]``."""
    job = config["diffnas"]
    if objective is None:  # pragma: no cover - always passed with tune.with_parameters
        raise RuntimeError("no objective passed to the trial")
    gpu_ids = tuple(str(g) for g in ray.get_gpu_ids())
    node_id = ray.get_runtime_context().get_node_id()
    device = trial_device(gpu_ids)
    ctx = EvalContext(
        study=job["study"], trial_number=int(job["number"]), key=job["key"], fidelity=job["fidelity"],
        device=device, seed=int(job["seed"]), budget_ratio=job["budget_ratio"], node_id=node_id, gpu_ids=gpu_ids,
    )
    start = time.time()
    cpu0 = time.process_time()
    metrics = dict(objective.evaluate(Arch(job["arch"]), job["fidelity"], ctx))
    end = time.time()
    cpu_s = time.process_time() - cpu0  # the worker process, all its threads
    try:
        quality = float(metrics.get("quality"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        quality = float("nan")
    payload = {
        "metrics": metrics,
        "placement": {"node_id": node_id, "gpu_ids": list(gpu_ids), "pid": os.getpid(),
                      "host": socket.gethostname(), "device": device, "start": start, "end": end,
                      "cpu_s": cpu_s},
        "eval_s": end - start,
    }
    tune.report({"quality": quality, "macs_ratio": float(job["macs_ratio"]),
                 "diffnas_payload": json.dumps(to_jsonable(payload))})


def trial_dirname(trial: Any) -> str:
    """Name and folder of a Tune trial: ``trial_<id>`` (short; the arch is in the config)."""
    return f"trial_{trial.trial_id}"
