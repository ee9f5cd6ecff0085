"""``bench.parallel``: the fine-tuning and the sampling of every (method, budget, seed) as Ray tasks
give the sequential path's rows (FID/KID per seed bit for bit on the CPU, the same fine-tuned
weights), each row committed once, and a rerun after a lost row repeats no finished job."""

from __future__ import annotations

import json
import shutil

import pytest

from benchmarks.bench import RECORD_KIND, bench_config_key, run_bench
from nas.config import config_to_dict, config_to_yaml, load_config
from nas.run import RunDir, prepare_run, stage_key
from tests.benchmarks.test_bench import TINY

TINY_PAR = [*[o for o in TINY if not o.startswith("bench.methods=")], "bench.methods=[static, base, fewer_steps]"]


def _rows(run: RunDir) -> list[dict]:
    return [r for r in run.read_results() if r.get("kind") == RECORD_KIND]


def test_bench_parallel_is_an_execution_key():
    a = load_config(None, TINY_PAR)
    b = load_config(None, [*TINY_PAR, "bench.parallel=true"])
    assert bench_config_key(a) == bench_config_key(b)
    assert all(stage_key(a, s) == stage_key(b, s) for s in ("finetune", "bench", "report"))
    assert config_to_dict(b)["bench"]["parallel"] is True  # recorded when set, left out at its default
    assert "parallel" not in config_to_dict(a)["bench"]
    assert config_to_yaml(a) == config_to_yaml(load_config(None, [*TINY_PAR, "bench.parallel=false"]))


def test_bench_address_needs_parallel(tmp_path, capsys):
    from nas.cli import main

    code = main(["bench", "--name", "r", "--set", f"run_root={tmp_path}", "--address", "auto"])
    err = capsys.readouterr().err
    assert code != 0 and "--address needs --parallel" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # refused before anything was written


@pytest.mark.slow
def test_parallel_bench_rows_equal_the_sequential_ones(tmp_path):
    ray = pytest.importorskip("ray")
    import torch

    assert not ray.is_initialized()  # the bench starts (and stops) its own local Ray, as `diffnas run` does
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tasks use experts.cpus_per_task = 1 thread each
    try:
        _check(tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert not ray.is_initialized()


def _check(tmp_path):
    seq_cfg = load_config(None, [f"run_root={tmp_path / 'seq'}", *TINY_PAR])
    seq = prepare_run(seq_cfg)
    run_bench(seq_cfg, seq, "cpu", progress=False)
    # the same run folder (trained base model) without anything the bench made
    shutil.copytree(seq.path, tmp_path / "par" / seq.name)
    par_cfg = load_config(None, [f"run_root={tmp_path / 'par'}", *TINY_PAR, "bench.parallel=true", "search.num_cpus=2"])
    par = RunDir.from_config(par_cfg)
    for made in ("mixtures", "samples"):
        shutil.rmtree(par.path / made, ignore_errors=True)
    par.results_path.write_text("".join(ln + "\n" for ln in par.results_path.read_text().splitlines()
                                        if json.loads(ln).get("kind") != RECORD_KIND))

    first = run_bench(par_cfg, par, "cpu", progress=False)
    by_seq = {r["method"]: r for r in _rows(seq)}
    by_par = {r["method"]: r for r in _rows(par)}
    assert sorted(by_par) == ["base", "fewer_steps", "static"] and len(_rows(par)) == 3 and len(first.rows) == 3
    for m, r in by_par.items():
        s = by_seq[m]
        assert r["config_key"] == s["config_key"] and r["inputs_key"] == s["inputs_key"]
        assert r["fid_values"] == s["fid_values"] and r["kid_values"] == s["kid_values"]  # bitwise per seed
        assert r["fid_mean"] == s["fid_mean"] and r["macs_per_trajectory"] == s["macs_per_trajectory"]
        assert [j["seed"] for j in r["jobs"]] == [0, 1, 2]
        assert all(j["device"] == "cpu" and j["node"] and j["host"] for j in r["jobs"])
        assert (par.path / r["grid"]).read_bytes() == (seq.path / s["grid"]).read_bytes()
    # the static model was pruned and fine-tuned in a task: the same weights
    st = by_par["static"]["model_path"]
    files = sorted(p.relative_to(seq.path / st) for p in (seq.path / st).rglob("*.safetensors"))
    assert files and all((seq.path / st / f).read_bytes() == (par.path / st / f).read_bytes() for f in files)
    assert by_par["static"]["finetune_job"]["device"] == "cpu"
    assert json.loads((par.mixtures_dir / "ray_jobs.json").read_text())["jobs"]["static@0.5"]["device"] == "cpu"

    # the driver died after static's seeds 0 and 2 but before seed 1 and the row: only seed 1 runs again
    seeds_dir = par.path / "bench" / "seeds" / "static-0.5"
    kept = {p.name: p.stat().st_mtime_ns for p in seeds_dir.iterdir()}
    assert len(kept) == 3
    lost = next(p for p in seeds_dir.iterdir() if p.name.endswith("-seed1.json"))
    lost.unlink()
    lines = par.results_path.read_text().splitlines()
    par.results_path.write_text("".join(ln + "\n" for ln in lines
                                        if not (json.loads(ln).get("kind") == RECORD_KIND
                                                and json.loads(ln).get("method") == "static")))
    again = run_bench(par_cfg, par, "cpu", progress=False)
    assert [r["method"] for r in again.rows] == ["static"] and sorted(again.reused) == ["base@base", "fewer_steps@0.5"]
    assert again.rows[0]["fid_values"] == by_seq["static"]["fid_values"]
    now = {p.name: p.stat().st_mtime_ns for p in seeds_dir.iterdir()}
    assert {n: t for n, t in now.items() if n != lost.name} == {n: t for n, t in kept.items() if n != lost.name}
    assert len(_rows(par)) == 3  # each row once
    # nothing left to do: nothing appended
    text = par.results_path.read_text()
    assert run_bench(par_cfg, par, "cpu", progress=False).rows == () and par.results_path.read_text() == text
