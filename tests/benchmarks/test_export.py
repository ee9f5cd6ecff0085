"""``diffnas export``: a benchmarked mixture handed over as a pipeline folder with a model card,
loaded in a fresh process with one ``from_pretrained`` call, sampling the same images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nas.cli import main
from tests.benchmarks.fakerun import write_fake_run
from tests.conftest import build_tiny_unet

REPO = Path(__file__).resolve().parents[2]


def _save_mixture(folder: Path) -> None:
    """A real two-expert MixturePipeline folder (tiny UNets; the second a perturbed copy)."""
    from diffusers import DDIMScheduler

    from experts.intervals import Intervals
    from experts.mixture import MixtureOfExperts
    from experts.pipeline import MixturePipeline

    a, b = build_tiny_unet(), build_tiny_unet()
    with torch.no_grad():
        for p in b.parameters():
            p.mul_(0.9)
    pipe = MixturePipeline(MixtureOfExperts(Intervals(1000, (400,)), [a, b]), DDIMScheduler())
    pipe.save_pretrained(str(folder))


@pytest.fixture
def run(tmp_path):
    """The hand-written bench run, whose router-0.5 row points to a real mixture pipeline folder."""
    run = write_fake_run(tmp_path)
    _save_mixture(run / "mixtures" / "router-0.5")
    lines = []
    for line in (run / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("kind") == "bench" and r["method"] == "router" and r["budget_ratio"] == 0.5:
            r.update(model_path="mixtures/router-0.5", steps_per_expert=[8, 12], macs_per_expert=[30, 70],
                     intervals=[[0, 400], [400, 1000]])
        lines.append(json.dumps(r))
    (run / "results.jsonl").write_text("\n".join(lines) + "\n")
    return run


def _sample(folder: Path) -> np.ndarray:
    from experts.pipeline import MixturePipeline

    pipe = MixturePipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=3, num_inference_steps=4, seed=7, output_type="np").images


_FRESH = """
import sys, numpy as np, torch
torch.set_num_threads(1)
from experts.pipeline import MixturePipeline
pipe = MixturePipeline.from_pretrained(sys.argv[1])
pipe.set_progress_bar_config(disable=True)
np.save(sys.argv[2], pipe(batch_size=3, num_inference_steps=4, seed=7, output_type="np").images)
"""


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_export_loads_in_a_fresh_process_and_samples_the_same_images(run, tmp_path, capsys):
    out = tmp_path / "router-pipeline"
    assert main(["export", str(run), "--method", "router", "--budget", "0.5", "--out", str(out)]) == 0
    assert "folder: " in capsys.readouterr().out
    assert (out / "model_index.json").is_file() and (out / "mixture" / "mixture.json").is_file()
    assert not any(p.suffix in (".bin", ".pkl", ".pt") for p in out.rglob("*"))  # safetensors only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake", "router-pipeline"]  # no temporary leftovers

    npy = tmp_path / "fresh.npy"
    proc = subprocess.run([sys.executable, "-c", _FRESH, str(out), str(npy)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fresh = np.load(npy)
    direct = _sample(run / "mixtures" / "router-0.5")
    assert fresh.shape == (3, 16, 16, 1)
    assert np.array_equal(fresh, direct)

    # the model card: Hugging Face metadata, and the very figures of the report's summary.json
    assert main(["report", str(run)]) == 0
    summary = json.loads((run / "report" / "summary.json").read_text())
    row = next(r for r in summary["rows"] if r["method"] == "router" and r["budget_ratio"] == 0.5)
    base = next(r for r in summary["rows"] if r["method"] == "base")
    card = (out / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["library_name"] == "diffusers"
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"fid": row["fid_mean"], "kid": row["kid_mean"]}
    d = meta["diffnas"]
    assert (d["fid"]["mean"], d["fid"]["ci_low"], d["fid"]["ci_high"]) == (row["fid_mean"], row["fid_ci_low"],
                                                                         row["fid_ci_high"])
    assert d["base_fid"]["mean"] == base["fid_mean"]
    assert (d["macs_ratio"], d["speedup"], d["latency_ms_per_image"]) == (row["macs_ratio"], row["speedup"],
                                                                        row["latency_ms_per_image"])
    assert d["intervals"] == [[0, 400], [400, 1000]] and d["steps_per_interval"] == [8, 12]
    assert d["macs_per_expert"] == [30, 70]
    assert (d["extractor"], d["num_generated_per_seed"], d["num_reference"], d["seeds"]) == (
        "digits", 128, 1797, [0, 1, 2])
    assert d["machine"] == summary["machine"]
    assert d["command"] == "diffnas export RUN_DIR --method router --budget 0.5 --out OUT"
    assert "MixturePipeline.from_pretrained(\"router-pipeline\")" in card
    assert "name: fake" in card  # the run's config
    manifest = json.loads((out / "diffnas_export.json").read_text())
    assert sorted(manifest["files"]) == sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    # the report's verdict for 0.5 names the export command (router is the best at 0.5 there)
    v = next(v for v in summary["verdicts"] if v["budget"] == "0.5")
    assert v["ship"]["method"] == "router" and v["export_command"] == "diffnas export RUN_DIR --method router --budget 0.5"


def test_export_refuses_what_it_cannot_hand_over(run, tmp_path, capsys):
    def fails(*argv: str, expect: str) -> None:
        assert main(["export", str(run), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expect in err, err

    fails("--method", "fewer_steps", "--budget", "0.5", expect="num_inference_steps=")
    fails("--method", "router", "--budget", "0.9", expect="no benchmarked router at budget 0.9")
    fails("--method", "router", expect="--method and --budget go together")
    fails(expect="say what to export")
    fails("--max-macs-ratio", "0.4", expect="no exportable benchmarked model meets MACs ratio <= 0.4")
    assert not (run / "export").exists()

    # an existing folder of the user's: refused; forced, the user's file stays
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    fails("--method", "router", "--budget", "0.5", "--out", str(mine), expect="exists and is not empty")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert main(["export", str(run), "--max-macs-ratio", "0.6", "--out", str(mine), "--force"]) == 0
    assert (mine / "notes.txt").read_text() == "mine" and (mine / "model_index.json").is_file()
    # the best under 0.6 that is a pipeline folder: router-0.5 (the lower-FID rows have no folder)
    assert _front_matter((mine / "README.md").read_text())["diffnas"]["method"] == "router"

    # the default folder inside the run, and a forced re-export over it
    assert main(["export", str(run), "--method", "router", "--budget", "0.5"]) == 0
    assert main(["export", str(run), "--method", "router", "--budget", "0.5", "--force"]) == 0
    assert sorted(p.name for p in (run / "export").iterdir()) == ["router-0.5"]
