"""Class-conditional base models end to end on the nas side: labelled data (digits, class
sub-folders), the embedded ``digits-class`` model, guided sampling, MACs of guided trajectories
(checked against FlopCounterMode), the conditional metric and the ``digits-class`` preset."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from experts.guidance import TrajectoryMacs
from nas.conditions import base_condition, sampling_kwargs, training_labels
from nas.config import DataConfig, config_to_dict, load_config
from nas.data import load_dataset, load_folder_labels, load_labels
from nas.embedded import embedded_settings
from nas.evaluation import EvalRow, format_table
from nas.models import load_base
from nas.sampling import generate, make_scheduler
from search_spaces.errors import UserError

_TINY = ["model.train_steps=4", "model.block_out_channels=[8, 8]", "model.norm_num_groups=4",
         "model.batch_size=8", "data.limit=40"]


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (value, value, value)).save(path)


def test_folder_labels_come_from_class_sub_folders(tmp_path):
    for cls, n in (("cat", 2), ("dog", 3)):
        for i in range(n):
            _png(tmp_path / cls / f"{i}.png", 40 * i)
    labels, names = load_folder_labels(tmp_path)
    assert names == ("cat", "dog") and labels.tolist() == [0, 0, 1, 1, 1]
    cfg = DataConfig(dataset="folder", path=str(tmp_path), image_size=4)
    assert load_labels(cfg)[0].shape[0] == load_dataset(cfg).shape[0]
    _png(tmp_path / "loose.png", 0)
    with pytest.raises(UserError, match="1 images in .* have no class label \\(loose.png\\)"):
        load_folder_labels(tmp_path)


def test_a_folder_of_one_class_is_refused(tmp_path):
    _png(tmp_path / "only" / "a.png", 0)
    with pytest.raises(UserError, match="at least two"):
        load_folder_labels(tmp_path)


def test_digit_labels_match_the_images_order():
    labels, names = load_labels(DataConfig(dataset="digits", limit=20))
    assert labels.tolist()[:10] == list(range(10)) and names == tuple("0123456789")


def test_the_condition_section_is_left_out_at_its_defaults():
    assert "condition" not in config_to_dict(load_config(None, []))
    assert config_to_dict(load_config(None, ["condition.guidance_scale=2"]))["condition"]["guidance_scale"] == 2.0
    with pytest.raises(UserError, match="guidance_scale"):
        load_config(None, ["condition.guidance_scale=0.5"])
    # an unconditional embedded model keeps its settings (and so its trained folder's hash)
    assert "num_classes" not in embedded_settings(None) and embedded_settings(None, 10)["num_classes"] == 10


@pytest.fixture(scope="module")
def class_base(tmp_path_factory):
    cfg = load_config(preset="digits-class", overrides=_TINY)
    base = load_base(cfg, tmp_path_factory.mktemp("base"), "cpu", progress=False)
    return cfg, base


def test_embedded_digits_class_is_a_class_conditional_pipeline_folder(class_base):
    cfg, base = class_base
    assert base.unet.config.num_class_embeds == 11
    assert base.info["settings"]["num_classes"] == 10 and base.info["settings"]["condition_dropout"] == 0.1
    cond = base_condition(cfg, base)
    assert (cond.num_classes, cond.null_label) == (10, 10)
    kw = training_labels(cfg, base, 40)
    assert kw["labels"].tolist()[:10] == list(range(10)) and kw["null_label"] == 10
    from diffusers import DDPMPipeline  # loads with the library's own call too

    pipe = DDPMPipeline.from_pretrained(base.path, use_safetensors=True)
    assert pipe.unet.config.num_class_embeds == 11


def test_guided_sampling_of_the_embedded_model(class_base):
    cfg, base = class_base
    sched = make_scheduler("ddim", base.scheduler_config)
    common = dict(num_images=4, num_steps=3, batch_size=4, seed=0, sample_shape=base.sample_shape, progress=False)
    kw = sampling_kwargs(cfg, base, 4)
    assert kw["class_labels"].tolist() == [0, 1, 2, 3] and kw["guidance_scale"] == 3.0
    guided = generate(base.unet, sched, **common, **kw)
    same = generate(base.unet, sched, **common, **kw)
    plain = generate(base.unet, sched, **common, class_labels=kw["class_labels"], null_label=10)
    uncond = generate(base.unet, sched, **common, null_label=10)
    assert guided.shape == (4, 1, 16, 16) and torch.equal(guided, same)
    assert not torch.allclose(guided, plain) and not torch.allclose(plain, uncond)
    # batch size does not change which label an image gets
    split = generate(base.unet, sched, **{**common, "batch_size": 3}, **kw)
    assert torch.allclose(split, guided, atol=1e-4)
    with pytest.raises(UserError, match="needs class_labels"):
        generate(base.unet, sched, **common, guidance_scale=2.0, null_label=10)
    with pytest.raises(UserError, match="one class per image"):
        generate(base.unet, sched, **common, class_labels=[1, 2], null_label=10)


def test_guided_trajectory_macs_equal_a_flop_counter_run(class_base):
    """Trajectory MACs with guidance = FlopCounterMode over one full guided sampling run (within 1%)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from search_spaces.macs import count_unet_macs

    cfg, base = class_base
    steps, n = 3, 2
    per_call = int(count_unet_macs(base.unet, batch_size=1))
    predicted = TrajectoryMacs.of([per_call] * steps, guidance_scale=3.0)
    sched = make_scheduler("ddim", base.scheduler_config)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        generate(base.unet, sched, num_images=n, num_steps=steps, batch_size=n, seed=0,
                 sample_shape=base.sample_shape, progress=False, **sampling_kwargs(cfg, base, n))
    measured_macs_per_image = counter.get_total_flops() / 2 / n
    assert predicted.unet_calls == 2 * steps
    assert abs(measured_macs_per_image - predicted.unet) / predicted.unet < 0.01


def test_the_table_shows_guidance_and_class_accuracy():
    row = EvalRow("base", "embedded:digits-class", 3.5, 0.01, None, None, (3.5,), (0.01,), "digits", 500, 1797,
                  (0,), "ddim", 20, 1_000, 40_000, 1.5, 64, "cpu", "digits-16", guidance_scale=3.0,
                  class_accuracy=0.8125, unet_calls=40)
    text = format_table([row])
    assert "class acc" in text.splitlines()[0] and "0.812" in text and " 3 " in text
    plain = EvalRow(*[getattr(row, f) for f in ("model", "source", "fid", "kid", "fid_std", "kid_std", "fid_per_seed",
                                                   "kid_per_seed", "extractor", "num_generated", "num_reference",
                                                   "seeds", "sampler", "num_steps", "macs_per_call",
                                                   "macs_per_trajectory", "latency_ms_per_image",
                                                   "latency_batch_size", "device", "dataset")])
    assert "class acc" not in format_table([plain])


def test_evaluate_reports_class_accuracy_and_guided_macs(tmp_path):
    from nas.evaluation import evaluate_base
    from nas.run import RunContext

    cfg = load_config(preset="digits-class", overrides=_TINY + [
        f"run_root={tmp_path}", "name=cls", "evaluation.num_samples=20", "evaluation.latency_repeats=1",
        "evaluation.latency_batch_size=4", "evaluation.compare_untrained=false", "sampling.num_steps=2",
        "sampling.batch_size=20", "device=cpu"])
    ctx = RunContext(cfg, progress=False)
    ctx.prepare()
    (row,) = evaluate_base(ctx)
    assert row.class_accuracy is not None and 0.0 <= row.class_accuracy <= 1.0
    assert row.guidance_scale == 3.0 and row.unet_calls == 4
    assert row.macs_per_trajectory == 2 * 2 * row.macs_per_call and row.macs_vae_decode == 0
    record = ctx.run.results()[-1] if hasattr(ctx.run, "results") else None
    assert record is None or record["class_accuracy"] == row.class_accuracy


@pytest.mark.slow
def test_guidance_raises_the_requested_digit_accuracy_of_the_embedded_model(tmp_path):
    """The demo-sized embedded digits-class model: the digit classifier recognises the requested
    digit more often at guidance 4 than at guidance 1 (measured, not assumed)."""
    from nas.digit_classifier import label_accuracy, load_or_train_digit_classifier

    cfg = load_config(preset="digits-class", overrides=["device=cpu"])
    base = load_base(cfg, tmp_path / "base", "cpu", progress=False)
    clf = load_or_train_digit_classifier(tmp_path / "cache", "cpu")
    sched = make_scheduler("ddim", base.scheduler_config)
    labels = torch.arange(200) % 10
    acc = {}
    for scale in (1.0, 4.0):
        x = generate(base.unet, sched, num_images=200, num_steps=10, batch_size=100, seed=0,
                     sample_shape=base.sample_shape, progress=False, class_labels=labels, guidance_scale=scale,
                     null_label=10)
        acc[scale] = label_accuracy(clf, x, labels)
    assert acc[4.0] > acc[1.0] and acc[4.0] > 0.5, acc
