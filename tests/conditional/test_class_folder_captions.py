"""A class-conditional (not text) model on a folder of class sub-folders that also holds caption
files: its training labels come from the sub-folders, and captions it never reads cannot fail it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from nas.config import load_config
from nas.data import load_labels
from nas.errors import UserError
from nas.run import train_condition
from tests.conditional.conftest import tiny_unet


def _folder(root: Path) -> Path:
    """Six 8x8 images in three class sub-folders, with an invalid metadata.jsonl beside them."""
    for i, name in enumerate(["a/1.png", "a/2.png", "b/3.png", "b/4.png", "c/5.png", "c/6.png"]):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (40 * i, 100, 200)).save(root / name)
    (root / "metadata.jsonl").write_text('{"file_name": "a/1.png", "text": "x"\n')  # broken JSON
    return root


def test_class_model_ignores_caption_files_it_does_not_need(tmp_path):
    folder = _folder(tmp_path / "data")
    cfg = load_config(None, ["name=c", f"run_root={tmp_path / 'runs'}", "data.dataset=folder",
                             f"data.path={folder}", "data.image_size=8", "experts.heldout_per_interval=2",
                             "condition.dropout=0.2"])
    base = SimpleNamespace(unet=tiny_unet(3).eval(), vae=None, sample_shape=(1, 8, 8), latent_scale=1.0,
                           encoder_hidden_states=None, scheduler_config={"num_train_timesteps": 1000})
    with pytest.raises(UserError, match="not valid JSON"):  # captions are read by default, and these are bad
        load_labels(cfg.data)
    every = train_condition(cfg, base, split=False)
    assert every["labels"].tolist() == [0, 0, 1, 1, 2, 2] and every["null_label"] == 3
    assert every["condition_dropout"] == 0.2
    train = train_condition(cfg, base)
    assert 0 < train["labels"].shape[0] < 6 and set(train["labels"].tolist()) <= {0, 1, 2}
