"""Run directory layout, config beside outputs, results.jsonl appends; device choice."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from nas.config import ExperimentConfig, load_config
from nas.device import resolve_device
from nas.errors import UserError
from nas.run import RunDir


def test_layout_and_config(tmp_path):
    cfg = load_config(None, [f"run_root={tmp_path}", "name=r1", "sampling.num_steps=9"])
    run = RunDir.from_config(cfg)
    assert run.path == tmp_path / "r1"
    assert run.results_path == tmp_path / "r1" / "results.jsonl"
    assert run.mixture_dir("router", 0.5) == tmp_path / "r1" / "mixtures" / "router-0.5"
    written = run.write_config(cfg)
    # the run folder stores no absolute path: run_root is given when the config is loaded back
    assert "run_root" not in written.read_text()
    assert load_config(written, [f"run_root={tmp_path}"]) == cfg
    beside = run.write_config(cfg, run.experts_dir)
    assert beside == run.experts_dir / "config.yaml" and beside.exists()


def test_results_append_and_read(tmp_path):
    run = RunDir(tmp_path, "r")
    assert run.read_results() == []
    run.append_result({"model": "base", "fid": np.float32(1.5), "seeds": (0, 1), "macs": torch.tensor(7)})
    run.append_result({"model": "x", "fid": float("nan")})
    assert run.read_results() == [
        {"model": "base", "fid": 1.5, "seeds": [0, 1], "macs": 7},
        {"model": "x", "fid": None},
    ]
    lines = run.results_path.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line) for line in lines)


def test_results_survive_a_partial_line(tmp_path):
    run = RunDir(tmp_path, "r")
    run.append_result({"a": 1})
    with open(run.results_path, "a") as fh:
        fh.write('{"b": 2, "trunc')  # a crashed writer
    run.append_result({"c": 3})
    assert run.read_results() == [{"a": 1}, {"c": 3}]


def test_concurrent_appends_do_not_interleave(tmp_path):
    run = RunDir(tmp_path, "r")

    def writer(k):
        for i in range(20):
            run.append_result({"writer": k, "i": i, "pad": "x" * 500})

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = run.read_results()
    assert len(records) == 80
    assert sorted((r["writer"], r["i"]) for r in records) == [(k, i) for k in range(4) for i in range(20)]


def test_unstorable_value_is_rejected(tmp_path):
    with pytest.raises(TypeError, match="cannot store"):
        RunDir(tmp_path, "r").append_result({"x": object()})


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda:0")
    else:
        with pytest.raises(UserError, match="does not exist"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_default_run_dir_name():
    assert RunDir.from_config(ExperimentConfig()).path.as_posix() == "runs/default"
