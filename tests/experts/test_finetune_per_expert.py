"""Fine-tuning one expert per call (``experts_only``, one Ray task each under ``bench.parallel``):
the assembled mixture equals the one-call mixture bit for bit, stored experts are reused (nothing
trained again), and an expert stored for other settings is not."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import experts._finetune_loops as ft  # where the per-expert loop calls run_training
from experts.finetune import TUNED_DIR, finetune_allocation, split_experts, tuned_expert_done
from experts.losses import make_heldout
from experts.mixture import MixtureOfExperts
from experts.train_loop import ExpertTrainSettings
from experts.training import train_experts
from search_spaces import ElasticUNet
from tests.conftest import build_tiny_unet
from tests.experts.test_finetune import IV, SCHED, _allocation
from tests.experts.test_training import _images


@pytest.fixture(scope="module")
def experts_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "experts"
    train_experts(build_tiny_unet(), IV, _images(32),
                  ExpertTrainSettings(steps=3, batch_size=4, random_archs=1, checkpoint_every=10),
                  out, scheduler_config=SCHED, progress=False)
    return out


def _weights(folder):
    moe = MixtureOfExperts.from_pretrained(folder / "mixture")
    return [moe.expert_for(k).state_dict() for k in range(IV.num_intervals)]


def _no_training(*args, **kwargs):
    raise AssertionError("an expert was trained again")


def test_experts_one_call_each_then_assembled_equal_one_call_for_all(tmp_path, experts_dir, monkeypatch):
    torch.set_num_threads(1)
    alloc = _allocation(ElasticUNet.from_pretrained(experts_dir / "expert_0"))
    held = make_heldout(_images(16, seed=5), IV, n_per_interval=8, seed=2)
    settings = ExpertTrainSettings(steps=3, batch_size=4, checkpoint_every=2)
    kw = dict(scheduler_config=SCHED, heldout=held, progress=False)
    whole = finetune_allocation(alloc, experts_dir, _images(), settings, tmp_path / "a", **kw)

    split = tmp_path / "b"
    assert split_experts(alloc) == (0, 1)
    for k in reversed(split_experts(alloc)):  # any order: the experts are independent
        part = finetune_allocation(alloc, experts_dir, _images(), settings, split, experts_only=(k,), **kw)
        assert part.macs_per_expert == () and len(part.loss_after) == 1
        assert tuned_expert_done(split, k) and (split / TUNED_DIR / f"expert_{k}" / "model.safetensors").is_file()
        assert not (split / "model_index.json").exists()  # no mixture from a partial call
        assert not list((split / TUNED_DIR).glob(".*.tmp"))  # committed by rename, no temp folder left
    stamp = {k: (split / TUNED_DIR / f"expert_{k}" / "expert.json").stat().st_mtime_ns for k in (0, 1)}
    with monkeypatch.context() as m:  # a stored expert is reused, not trained again
        m.setattr(ft, "run_training", _no_training)
        again = finetune_allocation(alloc, experts_dir, _images(), settings, split, experts_only=(0,), **kw)
        assert (split / TUNED_DIR / "expert_0" / "expert.json").stat().st_mtime_ns == stamp[0]
        assembled = finetune_allocation(alloc, experts_dir, _images(), settings, split, **kw)
    assert again.loss_after == (whole.loss_after[0],)
    assert assembled.loss_before == whole.loss_before and assembled.loss_after == whole.loss_after
    assert assembled.macs_per_expert == whole.macs_per_expert
    for sa, sb in zip(_weights(tmp_path / "a"), _weights(split)):
        assert sa.keys() == sb.keys() and all(torch.equal(sa[n], sb[n]) for n in sa)
    a_files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.safetensors"))
    assert a_files and all((tmp_path / "a" / f).read_bytes() == (split / f).read_bytes() for f in a_files)
    assert not (split / TUNED_DIR).exists() and not (split / "checkpoints").exists()  # dropped once saved
    # the finished mixture: a rerun of any per-expert call does nothing
    marker = (split / "finetune.json").read_text()
    with monkeypatch.context() as m:
        m.setattr(ft, "run_training", _no_training)
        finetune_allocation(alloc, experts_dir, _images(), settings, split, experts_only=(1,), **kw)
    assert tuned_expert_done(split, 1) and (split / "finetune.json").read_text() == marker
    assert not (split / TUNED_DIR).exists()


def test_an_expert_stored_for_other_settings_is_trained_again(tmp_path, experts_dir):
    alloc = _allocation(ElasticUNet.from_pretrained(experts_dir / "expert_0"))
    out = tmp_path / "m"
    finetune_allocation(alloc, experts_dir, _images(), ExpertTrainSettings(steps=2, batch_size=4), out,
                        scheduler_config=SCHED, progress=False, experts_only=(0,))
    stale = json.loads((out / TUNED_DIR / "expert_0" / "expert.json").read_text())
    assert stale["identity"]["k"] == 0 and stale["identity"]["steps"] == 2
    # its checkpoint would be refused with one line (the training loop's rule); without it, the
    # stored weights of other settings are ignored and the expert trains again
    shutil.rmtree(out / "checkpoints")
    settings = ExpertTrainSettings(steps=3, batch_size=4)
    finetune_allocation(alloc, experts_dir, _images(), settings, out, scheduler_config=SCHED, progress=False)
    ref = tmp_path / "ref"
    finetune_allocation(alloc, experts_dir, _images(), settings, ref, scheduler_config=SCHED, progress=False)
    for sa, sb in zip(_weights(ref), _weights(out)):
        assert all(torch.equal(sa[n], sb[n]) for n in sa)


def test_experts_only_names_existing_intervals(tmp_path, experts_dir):
    alloc = _allocation(ElasticUNet.from_pretrained(experts_dir / "expert_0"))
    with pytest.raises(ValueError, match="intervals 0..1"):
        finetune_allocation(alloc, experts_dir, _images(), ExpertTrainSettings(steps=1, batch_size=4), tmp_path / "m",
                            scheduler_config=SCHED, progress=False, experts_only=(2,))


def test_trajectory_target_experts_one_call_each_equal_one_call_for_all(tmp_path, experts_dir, monkeypatch):
    from diffusers import DDIMScheduler, DDPMScheduler

    from experts.allocation import Allocation
    from experts.schedule import StepSchedule

    torch.set_num_threads(1)
    sup = ElasticUNet.from_pretrained(experts_dir / "expert_0")
    sched = StepSchedule.from_timesteps(IV, [900, 600, 300, 100])
    alloc = Allocation("search", 0.1, IV, (sup.space.smallest(), sup.space.full()),
                       (sup.space.macs(sup.space.smallest()), sup.space.total_macs), sched.steps_per_interval,
                       50 * sup.space.total_macs, schedule=sched, base_intervals=(1,))
    assert split_experts(alloc, "trajectory") == (0, 1)  # the base-served interval learns too
    settings = ExpertTrainSettings(steps=2, batch_size=4, checkpoint_every=2)
    kw = dict(scheduler_config=SCHED, sampler_scheduler=DDIMScheduler.from_config(DDPMScheduler().config),
              progress=False, target="trajectory", reference_timesteps=list(range(980, -1, -20)))
    finetune_allocation(alloc, experts_dir, _images(), settings, tmp_path / "a", **kw)
    for k in (1, 0):
        finetune_allocation(alloc, experts_dir, _images(), settings, tmp_path / "b", experts_only=(k,), **kw)
    with monkeypatch.context() as m:
        m.setattr("experts.schedule_distill.distill_along_schedule", _no_training)
        finetune_allocation(alloc, experts_dir, _images(), settings, tmp_path / "b", **kw)
    for sa, sb in zip(_weights(tmp_path / "a"), _weights(tmp_path / "b")):
        assert all(torch.equal(sa[n], sb[n]) for n in sa)
