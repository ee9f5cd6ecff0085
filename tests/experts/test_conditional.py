"""Class conditions through the expert stages: batches carry their images' labels (with condition
dropout), training and distillation pass them, similarity measures each batch with its labels,
and classifier-free guidance is one batched pass of twice the batch."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from experts.denoising import LossBatch, batch_model_kwargs, expert_loss, make_batch, training_scheduler
from experts.guidance import ClassCondition, ConditionedModel, TrajectoryMacs, drop_labels, guided_prediction
from experts.intervals import Intervals
from experts.similarity import timestep_similarity
from experts.train_loop import ExpertTrainSettings, run_training
from search_spaces.errors import UserError

IV = Intervals(100, (50,))


def _unet(classes: int | None = 3) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), add_attention=False,
                       num_class_embeds=None if classes is None else classes + 1)


def test_batch_labels_follow_their_images_and_leave_the_unlabelled_draws_unchanged():
    images = torch.arange(20.0).view(20, 1, 1, 1).expand(20, 1, 2, 2).contiguous()  # image i is all i
    labels = torch.arange(20) * 7
    plain = make_batch(images, IV, 0, 16, torch.Generator().manual_seed(1))
    lab = make_batch(images, IV, 0, 16, torch.Generator().manual_seed(1), labels=labels)
    assert torch.equal(plain.x0, lab.x0) and torch.equal(plain.noise, lab.noise) and torch.equal(plain.t, lab.t)
    assert torch.equal(lab.cond["class_labels"], lab.x0[:, 0, 0, 0].long() * 7)
    dropped = make_batch(images, IV, 0, 4000, torch.Generator().manual_seed(1), labels=labels,
                         condition_dropout=0.25, null_label=-1)
    frac = float((dropped.cond["class_labels"] == -1).float().mean())
    assert 0.2 < frac < 0.3
    kept = dropped.cond["class_labels"] != -1
    assert torch.equal(dropped.cond["class_labels"][kept], dropped.x0[kept, 0, 0, 0].long() * 7)
    with pytest.raises(ValueError, match="one entry per image"):
        make_batch(images, IV, 0, 4, labels=labels[:5])


def test_expert_loss_passes_the_batch_labels_to_student_and_teacher():
    seen: list[list[int]] = []

    def net(x, t, class_labels=None, encoder_hidden_states=None):
        seen.append(None if class_labels is None else class_labels.tolist())
        return torch.zeros_like(x)

    b = LossBatch(torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2), torch.tensor([3, 4]), {"class_labels": torch.tensor([5, 6])})
    expert_loss(net, net, b, training_scheduler({"num_train_timesteps": 100}), distill_weight=1.0)
    assert seen == [[5, 6], [5, 6]]
    assert batch_model_kwargs(LossBatch(b.x0, b.noise, b.t), None) is None


def test_run_training_on_a_class_conditional_unet_uses_the_labels(tmp_path):
    unet, teacher = _unet(), _unet()
    images = torch.randn(12, 1, 8, 8)
    labels = torch.arange(12) % 3
    settings = ExpertTrainSettings(steps=3, batch_size=4, checkpoint_every=10, distill_weight=1.0)
    sched = training_scheduler({"num_train_timesteps": 100})
    with pytest.raises(ValueError, match="class_labels"):  # a class-conditional UNet cannot train without them
        run_training(_unet(), None, images, IV, 0, settings, sched, tmp_path / "a", {"x": 1}, progress=False)
    before = unet.class_embedding.weight.detach().clone()
    log = run_training(unet, teacher, images, IV, 0, settings, sched, tmp_path / "b", {"x": 1}, progress=False,
                       labels=labels, condition_dropout=0.1, null_label=3)
    assert log.step == 3
    assert not torch.equal(before, unet.class_embedding.weight)  # the labels' embeddings were trained


def test_similarity_measures_each_batch_with_its_labels():
    unet = _unet()
    images = torch.randn(16, 1, 8, 8)
    labels = torch.arange(16) % 3
    kw = dict(num_batches=2, batch_size=4, seed=0, progress=False)
    with pytest.raises(ValueError, match="class_labels"):
        timestep_similarity(unet, images, dict(DDPMScheduler(num_train_timesteps=100).config), [10, 50, 90], **kw)
    S = timestep_similarity(unet, images, dict(DDPMScheduler(num_train_timesteps=100).config), [10, 50, 90],
                            labels=labels, **kw)
    A = timestep_similarity(unet, images, dict(DDPMScheduler(num_train_timesteps=100).config), [10, 50, 90],
                            labels=labels, measure="activation", **kw)
    assert S.shape == A.shape == (3, 3)
    # the labels matter: other labels give another matrix
    S2 = timestep_similarity(unet, images, dict(DDPMScheduler(num_train_timesteps=100).config), [10, 50, 90],
                             labels=(labels + 1) % 3, measure="activation", **kw)
    assert not torch.allclose(torch.from_numpy(A), torch.from_numpy(S2))


def test_guidance_is_one_batched_pass_equal_to_the_two_predictions():
    unet = _unet().eval()
    calls: list[int] = []

    def counted(x, t, **kw):
        calls.append(x.shape[0])
        return unet(x, t, **kw)

    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor(40), torch.tensor([0, 1, 2])
    with torch.no_grad():
        guided = guided_prediction(counted, x, t, y, 4.0, null_label=3)
        c = unet(x, t, class_labels=y).sample
        u = unet(x, t, class_labels=torch.full_like(y, 3)).sample
        plain = guided_prediction(counted, x, t, y, 1.0, null_label=3)
    assert calls == [6, 3]
    assert torch.allclose(guided, u + 4.0 * (c - u), atol=1e-5)
    assert torch.allclose(plain, c)
    with torch.no_grad():  # no labels: the null class (unconditional samples)
        assert torch.allclose(ConditionedModel(unet, None, null_label=3)(x, t), u)


def test_class_condition_of_a_unet_and_label_checks():
    assert ClassCondition.from_unet(_unet(None)) is None
    cond = ClassCondition.from_unet(_unet(3))
    assert (cond.num_classes, cond.null_label) == (3, 3)
    assert ClassCondition.from_unet(_unet(3), null_class=0).null_label == 0
    with pytest.raises(UserError, match="null_class=7"):
        ClassCondition.from_unet(_unet(3), null_class=7)
    with pytest.raises(UserError, match="class label 3"):
        cond.check_labels(torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="dropout"):
        drop_labels(torch.zeros(2, dtype=torch.long), 1.5, None, 0)


def test_trajectory_macs_count_both_halves_of_guided_steps():
    m = TrajectoryMacs.of([10, 10, 10], guidance_scale=2.0, vae_decode=5, text_encoder=3)
    assert (m.unet, m.unet_calls, m.total) == (60, 6, 68)
    assert TrajectoryMacs.of([10, 10, 10]).unet == 30
