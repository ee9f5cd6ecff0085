"""SIGTERM during training, a read-only run folder, and a run moved to another absolute path."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.reliability.cases import _inside, run_cli, snapshot, write_config

REPO = Path(__file__).resolve().parents[2]


def test_sigterm_during_base_training_exits_143_and_leaves_no_tmp(tmp_path):
    cfg = write_config(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "nas", "train-base", "--config", str(cfg), "--set", "model.train_steps=100000",
         "--set", "model.checkpoint_every=1", "-q"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt_state = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        found = list((tmp_path / "runs").glob("tiny/base/*/checkpoint/state.json"))
        if found:
            ckpt_state = found[0]
            break
        time.sleep(0.1)
    assert ckpt_state is not None, proc.communicate()
    time.sleep(0.5)  # mid-training, checkpoints being written every step
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert "diffnas: terminated (SIGTERM)" in err, err[-500:]
    base = ckpt_state.parent.parent
    assert not [p for p in base.rglob("*") if p.name.endswith((".tmp", ".old"))], sorted(base.rglob("*"))
    json.loads(ckpt_state.read_text())  # the last checkpoint is complete


def test_read_only_run_folder_is_one_line(tmp_path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to bind-mount the run read-only")
    cfg = write_config(tmp_path)
    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    (run / "marker.txt").write_text("keep")
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "--bind", "-o", "ro", str(tmp_path / "runs"), str(ro)], capture_output=True).returncode:
        pytest.skip("bind mounts are not allowed here")
    try:
        before = snapshot(ro)
        with _inside(tmp_path):
            code, _, err = run_cli(["intervals", "--config", str(cfg), "--set", "run_root=ro", "-q"])
        assert code == 2, err
        assert "Traceback" not in err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("diffnas: error: cannot write "), err
        assert "read-only file system" in lines[0] and str(ro) in lines[0] or "ro/tiny" in lines[0]
        assert snapshot(ro) == before
    finally:
        subprocess.run(["umount", str(ro)], check=False)


def test_finetune_json_survives_a_moved_run(tiny_run, tmp_path):
    """A mixture fine-tuned in one place is reused after the run folder moves (no recompute)."""
    from experts.allocation import Allocation

    first = tmp_path / "a" / "deep"
    shutil.copytree(tiny_run, first)
    cfg = first / "tiny.yaml"
    iv = json.loads((first / "runs/tiny/experts/intervals.json").read_text())
    from search_spaces.elastic_unet import ElasticUNet

    space = ElasticUNet.from_pretrained(first / "runs/tiny/experts/expert_0").space
    smallest = space.smallest().to_dict()
    alloc = {"method": "manual", "budget_ratio": 0.5, "intervals": iv, "archs": [smallest, smallest],
             "macs_per_expert": [1, 1], "steps_per_expert": [2, 2], "base_trajectory_macs": 4}
    (first / "alloc.json").write_text(json.dumps(alloc))
    Allocation.load(first / "alloc.json")
    with _inside(first):
        code, _, err = run_cli(["finetune", "--config", str(cfg), "--allocation", "alloc.json", "-q"])
    assert code == 0, err
    marker = next((first / "runs/tiny/mixtures").rglob("finetune.json"))
    assert not json.loads(marker.read_text())["identity"]["experts"].startswith("/")
    moved = tmp_path / "elsewhere"
    shutil.move(str(first), str(moved))
    before = snapshot(moved / "runs")
    with _inside(moved):
        code, out, err = run_cli(["finetune", "--config", str(moved / "tiny.yaml"), "--allocation", "alloc.json"])
    assert code == 0, err
    assert "reused" in err or "already" in err + out
    changed = [k for k, v in before.items() if snapshot(moved / "runs").get(k) != v and not k.endswith("config.yaml")]
    assert changed == []


def test_old_absolute_experts_path_still_matches(tiny_run, tmp_path):
    from experts.finetune import _same_source

    out = tmp_path / "runs/tiny/mixtures/router-0.5"
    assert _same_source("/some/old/root/runs/tiny/experts", "../../experts", out)
    assert not _same_source("/some/old/root/runs/tiny/other", "../../experts", out)
