"""``bench.finetune_validation_images``: a fine-tuned mixture is kept only if it beats its untuned
experts on the FID of held-out noise; else the bench scores the untuned mixture, saved beside it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.bench import RECORD_KIND, run_bench
from benchmarks.methods import _mixture
from experts.allocation import Allocation
from experts.pipeline import load_model_folder
from nas.cli import main
from nas.config import load_config
from nas.errors import UserError
from nas.run import RunContext, RunDir

TINY = Path(__file__).parent / "tiny_pipeline.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("validation")
    assert main(["run", "--config", str(TINY), "--set", f"run_root={root}", "--skip", "router", "--skip", "search",
                 "--skip", "finetune", "--skip", "bench", "--skip", "report"]) == 0
    return root


def _copy(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained run for one test (run folders hold no absolute paths)."""
    shutil.copytree(trained, tmp_path / "runs")
    return tmp_path / "runs"


def _bench(root: Path, *over: str) -> tuple[dict, RunDir]:
    cfg = load_config(TINY, [f"run_root={root}", "bench.methods=[search, base]",
                             "bench.finetune_validation_images=16", *over])
    run = RunDir(root, "tinypipe")
    ctx = RunContext(cfg, device="cpu", progress=False)
    intervals, supernets = ctx.experts()
    space = supernets[0].space
    small = space.smallest()
    Allocation("search", 0.7, intervals, (small, small), (space.macs(small),) * 2, (2, 2), ctx.base_traj).save(
        run.allocations_dir / "search-0.7.json")
    run_bench(cfg, run, "cpu", progress=False)
    rows = [r for r in run.read_results() if r.get("kind") == RECORD_KIND and r["method"] == "search"]
    return rows[-1], run


def test_harmful_finetuning_keeps_the_untuned_mixture(trained, tmp_path, monkeypatch):
    root = _copy(trained, tmp_path)
    # a learning rate that wrecks the weights: the untuned experts must win on held-out noise
    row, run = _bench(root, "experts.finetune_learning_rate=5.0")
    v = row["finetune"]["validation"]
    assert v["images"] == 16 and v["seed"] == 10_000
    assert v["fid_untuned"] < v["fid_finetuned"] and v["kept"] == "untuned"
    assert row["model_path"] == v["untuned_path"] == "mixtures/search-untuned-0.7"
    untuned = run.path / row["model_path"]
    assert (untuned / "model_index.json").is_file()
    # the untuned mixture holds the allocation's sub-networks as materialised, no optimiser step taken
    assert json.loads((untuned / "finetune.json").read_text())["result"]["steps_per_expert"] == 0
    assert load_model_folder(untuned, device="cpu").model.macs_per_expert() == row["macs_per_expert"]
    record = json.loads((run.path / "mixtures/search-0.7" / _mixture.VALIDATION_FILE).read_text())
    assert record["kept"] == "untuned" and record["fid_finetuned"] == v["fid_finetuned"]

    assert main(["report", "--config", str(TINY), "--set", f"run_root={root}", "--set", "bench.methods=[search, base]",
                 "--set", "bench.finetune_validation_images=16", "--set", "experts.finetune_learning_rate=5.0",
                 "-q"]) == 0
    report = (run.report_dir / "report.md").read_text()
    assert "untuned: untuned kept" in report and "on 16 validation images (seed 10000" in report

    # a rerun reads the stored verdict: no validation images are sampled again
    def fail(*a, **k):
        raise AssertionError("validated twice")

    monkeypatch.setattr(_mixture, "_validation_fid", fail)
    (run.path / "results.jsonl").unlink()
    again, _ = _bench(root, "experts.finetune_learning_rate=5.0")
    assert again["finetune"]["validation"] == v and again["fid_mean"] == row["fid_mean"]


def test_helpful_finetuning_is_kept_and_off_by_default(trained, tmp_path):
    root = _copy(trained, tmp_path)
    row, run = _bench(root)
    v = row["finetune"]["validation"]
    assert v["kept"] == ("untuned" if v["fid_untuned"] < v["fid_finetuned"] else "finetuned")
    if v["kept"] == "finetuned":
        assert row["model_path"] == "mixtures/search-0.7" and "untuned_path" not in v
    cfg = load_config(TINY, [f"run_root={root}"])
    assert cfg.bench.finetune_validation_images == 0  # off unless asked: fine-tuned mixtures kept as before
    assert "finetune_validation_images" not in (RunDir(trained, "tinypipe").path / "config.yaml").read_text()


def test_validation_seed_must_not_be_a_bench_seed():
    with pytest.raises(UserError, match="finetune_validation_seed.*noise the bench does not score"):
        load_config(TINY, ["bench.seeds=[0, 1, 2]", "bench.finetune_validation_seed=1"])
