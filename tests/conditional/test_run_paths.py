"""The run's conditional wiring: labels follow the experts' data split into the held-out set and
the training labels, the run context samples every class with guidance, stage keys (the
``condition`` section), and the bench/report fields of a class-conditional run."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from experts.intervals import Intervals
from nas.config import load_config
from nas.data import load_dataset, load_labels
from nas.run import RunContext, RunDir, all_stages, experts_data, stage_key, train_condition
from tests.conditional.conftest import tiny_unet

IV = Intervals(1000, (500,))


def _base(classes: int | None = 10) -> SimpleNamespace:
    return SimpleNamespace(unet=tiny_unet(classes).eval(), vae=None, sample_shape=(1, 8, 8), latent_scale=1.0,
                           encoder_hidden_states=None, scheduler_config={"num_train_timesteps": 1000})


def _cfg(tmp_path, *extra: str):
    return load_config(None, ["name=c", f"run_root={tmp_path}", "data.image_size=8", "data.limit=60",
                              "experts.heldout_per_interval=16", "condition.dropout=0.2", *extra])


def test_labels_follow_the_split_into_heldout_and_training(tmp_path):
    cfg = _cfg(tmp_path)
    base = _base()
    run = RunDir.from_config(cfg)
    train, heldout = experts_data(cfg, run, base, IV, "cpu")
    images, labels = load_dataset(cfg.data), load_labels(cfg.data)[0]

    def label_of(x: torch.Tensor) -> list[int]:  # each image's label, by finding the image in the data
        return [int(labels[int((images - xi).flatten(1).abs().sum(1).argmin())]) for xi in x]

    cond = train_condition(cfg, base)
    assert cond["condition_dropout"] == 0.2 and cond["null_label"] == 10
    assert cond["labels"].shape[0] == train.shape[0]
    assert cond["labels"].tolist() == label_of(train)
    for k in range(2):
        assert heldout.labels[k].tolist() == label_of(heldout.x0[k])
    # an unconditional base: no labels anywhere, and the same split and draws as before
    plain_run = RunDir(tmp_path / "p", "p")
    plain_train, plain_held = experts_data(cfg, plain_run, _base(None), IV, "cpu")
    assert train_condition(cfg, _base(None)) == {} and plain_held.labels is None
    assert torch.equal(plain_train, train) and torch.equal(plain_held.x0[1], heldout.x0[1])
    # a stored unlabelled held-out set is redrawn for a conditional base
    _, again = experts_data(cfg, plain_run, base, IV, "cpu")
    assert again.labels is not None


def test_run_context_samples_every_class_with_guidance(tmp_path):
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = SimpleNamespace(num_class_embeds=11)

        def forward(self, x, t, class_labels=None):
            seen.append(None if class_labels is None else class_labels.tolist())
            return torch.zeros_like(x)

    cfg = _cfg(tmp_path, "condition.guidance_scale=2", "sampling.sampler=ddim")
    ctx = RunContext(cfg, device="cpu", progress=False)
    ctx._cache["base"] = SimpleNamespace(**{**vars(_base()), "unet": Spy()})
    ctx.generate(ctx.base.unet, 12, 0, 2, batch_size=12)
    assert seen[0] == [10] * 12 + [i % 10 for i in range(12)]  # null half, then classes 0..9, 0, 1
    seen.clear()
    ctx._cache["base"] = SimpleNamespace(**{**vars(_base(None)), "unet": Spy()})
    ctx._cache["base"].unet.config = SimpleNamespace(num_class_embeds=None)
    ctx.generate(ctx.base.unet, 4, 0, 2, batch_size=4)
    assert seen[0] is None  # unconditional: no labels passed


def test_condition_section_keys():
    names = [s.name for s in all_stages()]
    demo = load_config(preset="demo")
    explicit = load_config(preset="demo", overrides=["condition.guidance_scale=1", "condition.dropout=0.1"])
    assert all(stage_key(demo, s) == stage_key(explicit, s) for s in names)  # at its defaults: as before
    a = load_config(preset="digits-class")
    b = load_config(preset="digits-class", overrides=["condition.dropout=0.3"])
    same = {s: stage_key(a, s) == stage_key(b, s) for s in names}
    assert same["base"] and same["intervals"] and not same["experts"] and not same["bench"]


def test_report_rows_show_class_accuracy_with_the_guidance():
    from benchmarks.report.documents import _cells

    row = {"method": "base", "fid_mean": 10.0, "kid_mean": 0.01, "macs_ratio": 1.0, "class_accuracy": 0.825,
           "guidance_scale": 3.0}
    cells = {c[0]: c[1] for c in _cells(row)}
    assert cells["class acc (guidance 3)"] == "82.5%"
    plain = [c[0] for c in _cells({k: v for k, v in row.items() if k not in ("class_accuracy", "guidance_scale")})]
    assert not any(c.startswith("class acc") for c in plain)
