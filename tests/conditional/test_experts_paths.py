"""Class labels through the expert stages' library functions: the held-out set, the proxy loss,
elastic training (manifest and checkpoint identity), fine-tuning, the router's loss and the
trajectory proxy; the unconditional path keeps its draws, files and identities."""

from __future__ import annotations

import json

import pytest
import torch

from experts.allocation import Allocation
from experts.denoising import training_scheduler
from experts.finetune import finetune_allocation
from experts.intervals import Intervals
from experts.losses import HeldOutSet, make_heldout, proxy_loss
from experts.train_loop import ExpertTrainSettings, condition_identity
from experts.training import load_experts, train_experts
from experts.trajectory_proxy import TrajectoryProxy
from router.mixture import MixtureRoutingLoss
from search_spaces.errors import UserError
from tests.conditional.conftest import tiny_unet

IV = Intervals(100, (50,))
SCHED = {"num_train_timesteps": 100}


def _data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, torch.arange(n) % 3


def test_heldout_labels_follow_the_drawn_images_and_round_trip(tmp_path):
    images, labels = _data()
    images[:, 0, 0, 0] = torch.arange(24.0)  # image i marked by i
    plain = make_heldout(images, IV, 16, seed=2)
    lab = make_heldout(images, IV, 16, seed=2, labels=labels)
    assert plain.labels is None
    for k in range(2):  # the same draws as without labels, and each label is its image's
        assert torch.equal(plain.x0[k], lab.x0[k]) and torch.equal(plain.t[k], lab.t[k])
        assert torch.equal(lab.labels[k], labels[lab.x0[k][:, 0, 0, 0].long()])
    lab.save(tmp_path / "h.safetensors")
    plain.save(tmp_path / "p.safetensors")
    back = HeldOutSet.load(tmp_path / "h.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(back.labels, lab.labels))
    assert HeldOutSet.load(tmp_path / "p.safetensors").labels is None
    with pytest.raises(ValueError, match="one entry per image"):
        make_heldout(images, IV, 4, labels=labels[:3])


def test_proxy_loss_scores_each_draw_with_its_label():
    images, labels = _data()
    unet = tiny_unet().eval()
    with torch.no_grad():
        unet.class_embedding.weight.mul_(50.0)  # labels matter a lot
    sched = training_scheduler(SCHED)
    h = make_heldout(images, IV, 12, seed=0, labels=labels)
    other = HeldOutSet(h.intervals, h.x0, h.noise, h.t, h.seed, tuple((y + 1) % 3 for y in h.labels))
    a = proxy_loss(unet, None, h, sched).per_interval
    assert a == proxy_loss(unet, None, h, sched).per_interval
    assert a != proxy_loss(unet, None, other, sched).per_interval
    with pytest.raises(ValueError, match="class_labels should be provided"):  # no labels: the UNet refuses
        proxy_loss(unet, None, make_heldout(images, IV, 12, seed=0), sched)


def test_condition_identity_leaves_unconditional_identities_alone():
    ident = {"settings": {"lr": 1}, "k": 0}
    assert condition_identity(ident, None, 0.3, 5) == ident
    cond = condition_identity(ident, torch.tensor([0]), 0.1, 3)
    assert cond["condition"] == {"dropout": 0.1, "null_label": 3} and cond["settings"] == ident["settings"]


def test_elastic_experts_train_with_labels_and_the_dropout_is_their_identity(tmp_path):
    images, labels = _data()
    settings = ExpertTrainSettings(steps=2, batch_size=4, random_archs=0, checkpoint_every=1)
    out = tmp_path / "experts"
    res = train_experts(tiny_unet(), IV, images, settings, out, scheduler_config=SCHED, progress=False,
                        labels=labels, condition_dropout=0.2, null_label=3)
    assert [r.steps for r in res.experts] == [2, 2]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["condition"] == {"dropout": 0.2, "null_label": 3}
    meta = json.loads((out / "expert_0" / "diffnas_expert.json").read_text())
    assert meta["identity"]["condition"] == {"dropout": 0.2, "null_label": 3}
    # the same condition: reused; another dropout: another set of experts (refused in this folder)
    again = train_experts(tiny_unet(), IV, images, settings, out, scheduler_config=SCHED, progress=False,
                          labels=labels, condition_dropout=0.2, null_label=3)
    assert [r.final_loss for r in again.experts] == [r.final_loss for r in res.experts]
    with pytest.raises(UserError, match="condition"):
        train_experts(tiny_unet(), IV, images, settings, out, scheduler_config=SCHED, progress=False,
                      labels=labels, condition_dropout=0.5, null_label=3)
    # unconditional experts: no condition in the manifest
    plain_out = tmp_path / "plain"
    train_experts(tiny_unet(None), IV, images, settings, plain_out, scheduler_config=SCHED, progress=False)
    assert "condition" not in json.loads((plain_out / "manifest.json").read_text())


def test_finetune_router_loss_and_proxy_on_class_conditional_experts(tmp_path):
    images, labels = _data()
    settings = ExpertTrainSettings(steps=1, batch_size=4, random_archs=0, checkpoint_every=1)
    out = tmp_path / "experts"
    train_experts(tiny_unet(), IV, images, settings, out, scheduler_config=SCHED, progress=False,
                  labels=labels, condition_dropout=0.1, null_label=3)
    intervals, experts = load_experts(out)
    h = make_heldout(images, IV, 8, seed=1, labels=labels)
    space = experts[0].space
    archs = (space.smallest(), space.full())
    alloc = Allocation("test", 0.9, intervals, archs, tuple(space.macs(a) for a in archs), (3, 2),
                       5 * space.macs(space.full()))
    res = finetune_allocation(alloc, out, images, settings, tmp_path / "mix", scheduler_config=SCHED,
                              heldout=h, progress=False, labels=labels, condition_dropout=0.1, null_label=3)
    assert len(res.loss_before) == len(res.loss_after) == 2
    assert all(torch.isfinite(torch.tensor(res.loss_after)))
    marker = json.loads((tmp_path / "mix" / "finetune.json").read_text())
    assert "condition" in json.dumps(marker)

    loss = MixtureRoutingLoss(experts, intervals, [3, 2], tiny_unet(), training_scheduler(SCHED), images, h,
                              batch_size=4, labels=labels)
    full = loss.space.full()
    assert torch.isfinite(torch.tensor(loss.arch_loss(full)))
    with pytest.raises(ValueError, match="one entry per image"):
        MixtureRoutingLoss(experts, intervals, [3, 2], None, training_scheduler(SCHED), images, h,
                           labels=labels[:2])

    calls = []

    def sample(model, timesteps):
        calls.append(list(timesteps))
        return torch.zeros(4, 1, 2, 2)

    proxy = TrajectoryProxy(sample, None, [80, 40, 0], features=lambda x: x, guidance_scale=3.0)
    score = proxy.score(None, [60, 0])
    assert score.unet_calls == 4 * 2 * 2 and proxy.cost([60, 0]) == 16  # two passes per guided step
    assert TrajectoryProxy(sample, None, [80, 0], features=lambda x: x).cost([60, 0]) == 8
