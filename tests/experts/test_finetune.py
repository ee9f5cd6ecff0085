"""Fine-tuning the materialised experts of an allocation at a fixed budget."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDPMScheduler

from experts.allocation import Allocation
from experts.finetune import finetune_allocation
from experts.intervals import Intervals
from experts.losses import make_heldout
from experts.mixture import MixtureOfExperts
from experts.pipeline import MixturePipeline, load_model_folder
from experts.train_loop import ExpertTrainSettings
from experts.training import train_experts
from search_spaces import ElasticUNet
from search_spaces.errors import UserError
from search_spaces.materialize import arch_of
from tests.conftest import build_tiny_unet
from tests.experts.test_training import _images

IV = Intervals(1000, (400,))
SCHED = dict(DDPMScheduler().config)


def _allocation(net: ElasticUNet) -> Allocation:
    archs = (net.space.smallest(), net.space.uniform(0.5))
    macs = tuple(net.space.macs(a) for a in archs)
    return Allocation("uniform", 0.5, IV, archs, macs, (4, 6), 10 * net.space.total_macs)


@pytest.fixture(scope="module")
def experts_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "experts"
    train_experts(build_tiny_unet(), IV, _images(32),
                  ExpertTrainSettings(steps=3, batch_size=4, random_archs=1, checkpoint_every=10),
                  out, scheduler_config=SCHED, progress=False)
    return out


def test_finetune_fixed_budget_lowers_the_loss_and_saves_a_pipeline(tmp_path, experts_dir):
    sup = ElasticUNet.from_pretrained(experts_dir / "expert_0")
    alloc = _allocation(sup)
    held = make_heldout(_images(32, seed=5), IV, n_per_interval=32, seed=2)
    settings = ExpertTrainSettings(steps=30, batch_size=16, learning_rate=2e-3, checkpoint_every=10)
    out = tmp_path / "mixtures" / "uniform-0.5"
    res = finetune_allocation(alloc, experts_dir, _images(64), settings, out, scheduler_config=SCHED,
                              heldout=held, progress=False)
    assert res.steps_per_expert == 30 and res.batch_size == 16
    assert len(res.loss_before) == len(res.loss_after) == 2
    assert all(a < b for a, b in zip(res.loss_after, res.loss_before)), (res.loss_before, res.loss_after)
    assert list(res.macs_per_expert) == list(alloc.macs_per_expert)
    done = json.loads((out / "finetune.json").read_text())
    assert done["result"]["images_per_expert"] == 480
    assert not (out / "checkpoints").exists()
    pipe = MixturePipeline.from_pretrained(out)
    moe = pipe.mixture
    assert isinstance(moe, MixtureOfExperts) and moe.allocation == alloc
    assert [arch_of(moe.expert_for(k)) for k in range(2)] == list(alloc.archs)
    assert moe.info["finetune"]["steps_per_expert"] == 30
    pipe.set_progress_bar_config(disable=True)
    img = pipe(batch_size=2, num_inference_steps=3, generator=torch.manual_seed(0), output_type="pt").images
    assert img.shape == (2, 1, 16, 16) and torch.isfinite(img).all()
    loaded = load_model_folder(out)
    assert loaded.kind == "mixture-pipeline" and loaded.macs_per_call() == list(alloc.macs_per_expert)
    # a rerun reuses the result; other settings are refused
    again = finetune_allocation(alloc, experts_dir, _images(64), settings, out, scheduler_config=SCHED,
                                progress=False)
    assert again.loss_after == res.loss_after
    with pytest.raises(UserError, match="other settings"):
        finetune_allocation(alloc, experts_dir, _images(64), ExpertTrainSettings(steps=31), out,
                            scheduler_config=SCHED, progress=False)


def test_finetune_resumes_after_an_interruption(tmp_path, experts_dir):
    sup = ElasticUNet.from_pretrained(experts_dir / "expert_0")
    alloc = _allocation(sup)
    settings = ExpertTrainSettings(steps=4, batch_size=4, checkpoint_every=2)
    a = tmp_path / "a"
    b = tmp_path / "b"
    finetune_allocation(alloc, experts_dir, _images(), settings, a, scheduler_config=SCHED, progress=False)
    finetune_allocation(alloc, experts_dir, _images(), settings, b, scheduler_config=SCHED, progress=False,
                        max_steps_this_call=3)
    assert not (b / "model_index.json").exists()
    finetune_allocation(alloc, experts_dir, _images(), settings, b, scheduler_config=SCHED, progress=False)
    ma = MixtureOfExperts.from_pretrained(a / "mixture")
    mb = MixtureOfExperts.from_pretrained(b / "mixture")
    for k in range(2):
        sa, sb = ma.expert_for(k).state_dict(), mb.expert_for(k).state_dict()
        assert all(torch.equal(sa[n], sb[n]) for n in sa)


def test_finetune_with_a_shared_supernet_and_no_teacher(tmp_path):
    """Static pruning of the base model: one supernet for every interval, no experts folder."""
    net = ElasticUNet(build_tiny_unet())
    alloc = _allocation(net)
    res = finetune_allocation(alloc, net, _images(), ExpertTrainSettings(steps=2, batch_size=4), tmp_path / "m",
                              scheduler_config=SCHED, progress=False)
    assert res.steps_per_expert == 2
    moe = MixtureOfExperts.from_pretrained(tmp_path / "m" / "mixture")
    assert moe.expert_of_interval == (0, 1)


def test_cli_train_experts_finetune_sample_evaluate(capsys, tmp_path):
    """train-experts (needs intervals.json) -> finetune --allocation -> sample/evaluate --model."""
    from nas.cli import main
    from nas.run import RunDir

    folder = tmp_path / "tiny-unet"
    build_tiny_unet().save_pretrained(folder, safe_serialization=True)
    runs = tmp_path / "runs"
    common = ["--set", f"run_root={runs}", "--name", "x", "--device", "cpu", "--set", f"model.base={folder}",
              "--set", "data.limit=64", "--set", "sampling.num_steps=3", "--set", "sampling.batch_size=8",
              "--set", "experts.train_steps=2", "--set", "experts.batch_size=4", "--set", "experts.random_archs=1",
              "--set", "experts.finetune_steps=2", "--set", "experts.finetune_batch_size=4",
              "--set", "experts.heldout_per_interval=8", "-q"]
    assert main(["train-experts", *common]) == 2
    assert "run `diffnas intervals` first" in capsys.readouterr().err
    run = RunDir(runs, "x")
    IV.save(run.intervals_path)
    assert main(["train-experts", *common]) == 0
    out = capsys.readouterr().out
    assert "expert 1 [400, 1000]: 2 steps" in out and "base pruned, no fine-tuning" in out
    assert (run.experts_dir / "table.md").is_file() and (run.experts_dir / "heldout.safetensors").is_file()
    table = json.loads((run.experts_dir / "table.json").read_text())
    assert {r["arch"] for r in table["rows"]} == {"smallest", "width 0.5"} and len(table["rows"]) == 4

    sup = ElasticUNet.from_pretrained(run.experts_dir / "expert_0")
    alloc_path = run.allocations_dir / "uniform-0.5.json"
    _allocation(sup).save(alloc_path)
    assert main(["finetune", *common, "--allocation", str(alloc_path)]) == 0
    out = capsys.readouterr().out
    mix = run.mixture_dir("uniform", 0.5)
    assert f"-> {mix}" in out and (mix / "model_index.json").is_file()
    assert main(["finetune", *common, "--allocation", str(tmp_path / "nope.json")]) == 2
    capsys.readouterr()

    assert main(["sample", *common, "--model", str(mix), "--set", "sampling.num_images=4"]) == 0
    assert (run.samples_dir / "uniform-0.5-ddim-3steps-seed0.png").is_file()
    capsys.readouterr()
    assert main(["evaluate", *common, "--model", str(mix), "--set", "evaluation.num_samples=8",
                 "--set", "evaluation.latency_batch_size=2", "--set", "evaluation.latency_repeats=1"]) == 0
    rec = run.read_results()[-1]
    alloc = _allocation(sup)
    assert rec["model"] == "uniform-0.5" and rec["source"] == str(mix)
    ts = [666, 333, 0]  # DDIM, 3 steps of 1000
    assert rec["macs_per_trajectory"] == sum(alloc.macs_per_expert[IV.index(t)] for t in ts)
    assert rec["latency_ms_per_image"] > 0
    assert main(["sample", *common, "--model", str(tmp_path)]) == 2
    assert "not a model folder" in capsys.readouterr().err
