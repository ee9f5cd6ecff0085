"""``bench.parallel`` fine-tuning: one Ray task per (mixture, expert), then the mixture assembled
from its stored experts: the same weights as the sequential path bit for bit on the CPU, each
expert's job recorded, and a rerun (or a rerun after a driver died mid-stage) redoes no finished
expert."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.bench import bench_config_key, prepare_models
from benchmarks.bench.context import BenchContext
from nas.cli import main
from nas.config import load_config
from nas.methods import get_method
from nas.run import RunDir

TINY = Path(__file__).parent / "tiny_pipeline.yaml"
METHODS = ["bench.methods=[uniform, static]"]


def _weights(folder: Path) -> dict[Path, bytes]:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*.safetensors"))}


@pytest.mark.slow
@pytest.mark.ray
def test_mixture_experts_fine_tuned_one_task_each_equal_the_sequential_mixture(tmp_path):
    ray = pytest.importorskip("ray")
    import torch

    assert not ray.is_initialized()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tasks use experts.cpus_per_task = 1 thread each
    try:
        _check(tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert not ray.is_initialized()


def _check(tmp_path: Path) -> None:
    seq_root = tmp_path / "seq"
    assert main(["run", "--config", str(TINY), "--set", f"run_root={seq_root}", "-q", "--skip", "router",
                 "--skip", "search", "--skip", "finetune", "--skip", "bench", "--skip", "report"]) == 0
    for name in ("par", "died"):  # the same run (base, intervals, experts) before any fine-tuning
        shutil.copytree(seq_root / "tinypipe", tmp_path / name / "tinypipe")
    seq_cfg = load_config(TINY, [f"run_root={seq_root}", *METHODS])
    seq = RunDir.from_config(seq_cfg)
    prepare_models(seq_cfg, seq, "cpu", progress=False)
    mixture = seq.mixtures_dir / "uniform-0.7"
    assert (mixture / "finetune.json").is_file()
    expected = _weights(mixture)
    assert expected

    par_opts = [*METHODS, "bench.parallel=true", "search.num_cpus=2"]
    par_cfg = load_config(TINY, [f"run_root={tmp_path / 'par'}", *par_opts])
    par = RunDir.from_config(par_cfg)
    prepare_models(par_cfg, par, "cpu", progress=False)
    out = par.mixtures_dir / "uniform-0.7"
    assert _weights(out) == expected  # bit for bit
    assert _weights(par.mixtures_dir / "static-0.7") == _weights(seq.mixtures_dir / "static-0.7")
    assert not (out / "tuned").exists() and not (out / "checkpoints").exists()
    jobs = json.loads((par.mixtures_dir / "ray_jobs.json").read_text())["jobs"]
    uni = jobs["uniform@0.7"]
    assert sorted(uni["experts"]) == ["0", "1"]  # one task per expert
    assert all(e["node"] and e["device"] == "cpu" and e["host"] for e in uni["experts"].values())
    assert uni["device"] == "cpu" and uni["model_path"] == "mixtures/uniform-0.7"  # the assembly's task
    assert "experts" not in jobs["static@0.7"]  # not a mixture of experts: one task
    # a rerun makes nothing: no task, nothing rewritten
    text = (par.mixtures_dir / "ray_jobs.json").read_text()
    stamp = (out / "finetune.json").stat().st_mtime_ns
    prepare_models(par_cfg, par, "cpu", progress=False)
    assert (par.mixtures_dir / "ray_jobs.json").read_text() == text
    assert (out / "finetune.json").stat().st_mtime_ns == stamp

    # the driver died after expert 0's task stored its weights: the rerun submits expert 1 only
    died_cfg = load_config(TINY, [f"run_root={tmp_path / 'died'}", *par_opts])
    died = RunDir.from_config(died_cfg)
    ctx = BenchContext(died_cfg, device="cpu", progress=False, run=died)
    method = get_method("uniform")
    c = method.candidate(ctx, 0.7, bench_config_key(died_cfg))
    assert method.expert_jobs(ctx, c) == (0, 1)
    method.finetune_expert(ctx, c, 0)  # what expert 0's task did before the driver died
    assert method.expert_jobs(ctx, c) == (1,)
    prepare_models(died_cfg, died, "cpu", progress=False)
    done = json.loads((died.mixtures_dir / "ray_jobs.json").read_text())["jobs"]["uniform@0.7"]
    assert sorted(done["experts"]) == ["1"]
    assert _weights(died.mixtures_dir / "uniform-0.7") == expected
