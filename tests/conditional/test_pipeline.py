"""The mixture pipeline of class-conditional experts: ``class_labels`` and ``guidance_scale`` like
diffusers' pipelines, the null class saved with the pipeline and restored by ``from_pretrained``;
unconditional pipelines keep their files and refuse class arguments."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler

from experts.guidance import guided_prediction
from experts.intervals import Intervals
from experts.mixture import MixtureOfExperts
from experts.pipeline import MixturePipeline
from search_spaces.errors import UserError
from tests.conditional.conftest import tiny_unet

IV = Intervals(1000, (500,))


def _pipe(classes: int | None = 3, null: int | None = None) -> MixturePipeline:
    a, b = tiny_unet(classes, seed=0), tiny_unet(classes, seed=1)
    if classes is not None:
        with torch.no_grad():
            for u in (a, b):
                u.class_embedding.weight.mul_(20.0)  # the class changes the samples visibly
    pipe = MixturePipeline(MixtureOfExperts(IV, [a, b]), DDIMScheduler(num_train_timesteps=1000), null_class_label=null)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _images(pipe: MixturePipeline, **kw) -> torch.Tensor:
    return pipe(batch_size=3, num_inference_steps=4, generator=torch.manual_seed(0), output_type="pt", **kw).images


def test_class_labels_and_guidance_change_the_samples_and_survive_save_load(tmp_path):
    pipe = _pipe()
    assert pipe.class_condition.null_label == 3 and pipe.config.null_class_label == 3
    y = [0, 1, 2]
    cond = _images(pipe, class_labels=y)
    guided = _images(pipe, class_labels=y, guidance_scale=4.0)
    uncond = _images(pipe)  # the null class
    other = _images(pipe, class_labels=[2, 0, 1])
    assert not torch.equal(cond, guided) and not torch.equal(cond, uncond) and not torch.equal(cond, other)
    assert torch.equal(_images(pipe, class_labels=1), _images(pipe, class_labels=[1, 1, 1]))
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["null_class_label"] == 3
    again = MixturePipeline.from_pretrained(str(tmp_path))
    again.set_progress_bar_config(disable=True)
    assert again.config.null_class_label == 3
    assert torch.equal(_images(again, class_labels=y, guidance_scale=4.0), guided)
    assert torch.equal(_images(again, class_labels=y), cond)
    # the seeded path (nas.sampling.generate's noise) takes the labels too
    seeded = again(batch_size=3, num_inference_steps=4, seed=0, output_type="pt", class_labels=y,
                   guidance_scale=4.0).images
    assert seeded.shape == (3, 1, 8, 8)


def test_guided_step_is_the_null_and_class_predictions_combined():
    pipe = _pipe()
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor(700), torch.tensor([0, 1, 2])
    model = pipe._conditioned(y, 3.0, 3)
    with torch.no_grad():
        u = pipe.mixture(x, t, class_labels=torch.full((3,), 3)).sample
        c = pipe.mixture(x, t, class_labels=y).sample
        assert torch.allclose(model(x, t), u + 3.0 * (c - u), atol=1e-5)
        assert torch.allclose(model(x, t), guided_prediction(pipe.mixture, x, t, y, 3.0, 3), atol=1e-6)


def test_a_stated_null_class_is_kept_and_bad_labels_are_refused(tmp_path):
    pipe = _pipe(null=0)
    assert pipe.class_condition.null_label == 0
    pipe.save_pretrained(tmp_path)
    assert MixturePipeline.from_pretrained(str(tmp_path)).class_condition.null_label == 0
    with pytest.raises(UserError, match="null class"):
        _images(pipe, class_labels=[0, 1, 2])
    with pytest.raises(UserError, match="one class per image"):
        _images(_pipe(), class_labels=[0, 1])
    with pytest.raises(UserError, match="needs class_labels"):
        _images(_pipe(), guidance_scale=2.0)


def test_unconditional_pipelines_store_no_null_class_and_refuse_class_arguments(tmp_path):
    pipe = _pipe(None)
    assert pipe.class_condition is None
    pipe.save_pretrained(tmp_path)
    assert "null_class_label" not in json.loads((tmp_path / "model_index.json").read_text())
    again = MixturePipeline.from_pretrained(str(tmp_path))
    again.set_progress_bar_config(disable=True)
    assert torch.equal(_images(again), _images(pipe))
    with pytest.raises(UserError, match="class-conditional"):
        _images(pipe, class_labels=[0, 1, 2])
