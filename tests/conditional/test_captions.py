"""Caption data (Hugging Face imagefolder convention): metadata.jsonl and .txt side files give each
image its caption, the distinct captions become a text model's prompts (labels), and every bad or
missing caption is one UserError line naming the file and the fix, raised when the base model
loads (before any training) - including through `diffnas run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from nas.config import DataConfig
from nas.data import MAX_CAPTIONS, load_caption_labels, load_dataset, load_folder_captions, load_labels
from search_spaces.errors import UserError


def _images(root: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (20 * i % 255, 100, 200)).save(root / name)


def _meta(folder: Path, rows: list[object]) -> Path:
    path = folder / "metadata.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_metadata_and_side_files_give_captions_and_labels(tmp_path):
    _images(tmp_path, ["a.png", "b.png", "c.png", "sub/d.png"])
    _meta(tmp_path, [{"file_name": "a.png", "text": "a red cat", "score": 3},
                     {"file_name": "sub/d.png", "text": "a blue dog"}])
    (tmp_path / "b.txt").write_text("  a blue dog\n")
    _meta(tmp_path / "sub", [])  # an empty metadata file in a sub-folder: no rows
    (tmp_path / "c.txt").write_text("a red cat")
    cfg = DataConfig(dataset="folder", path=str(tmp_path), image_size=8)
    assert load_folder_captions(tmp_path) == ["a red cat", "a blue dog", "a red cat", "a blue dog"]
    labels, names = load_caption_labels(cfg)
    assert names == ("a blue dog", "a red cat") and labels.tolist() == [1, 0, 1, 0]
    assert load_labels(cfg)[0].tolist() == labels.tolist()  # load_labels prefers captions
    assert load_labels(cfg)[0].shape[0] == load_dataset(cfg).shape[0]
    with pytest.raises(UserError, match="no class label"):  # class labels (not captions) need sub-folders
        load_labels(cfg, captions=False)
    limited = DataConfig(dataset="folder", path=str(tmp_path), image_size=8, limit=2)
    assert load_caption_labels(limited)[1] == ("a blue dog", "a red cat")
    # a folder without captions: none, and class folders as before
    plain = tmp_path / "plain"
    _images(plain, ["x/1.png", "y/2.png"])
    assert load_folder_captions(plain) is None
    assert load_labels(DataConfig(dataset="folder", path=str(plain)))[1] == ("x", "y")


@pytest.mark.parametrize("case, match", [
    ("missing", r"1 of 3 images in .* have no caption \(c\.png\) while others have one"),
    ("empty_line", r"metadata\.jsonl line 2 is empty; remove it"),
    ("invalid_json", r"metadata\.jsonl line 1 is not valid JSON"),
    ("no_file_name", r"metadata\.jsonl line 1 has no file_name"),
    ("other_column", r"metadata\.jsonl line 1 has no 'text' column \(it has 'caption'\).*rename the caption column"),
    ("missing_file", r"metadata\.jsonl line 2 has a caption for 'gone\.png', which does not exist"),
    ("empty_caption", r"metadata\.jsonl line 1: the caption of 'a\.png' is empty"),
    ("empty_txt", r"b\.txt is empty"),
    ("two_captions", r"b\.png has two different captions"),
    ("duplicate", r"metadata\.jsonl line 2: 'a\.png' has a second caption line"),
])
def test_bad_captions_are_one_clear_error(tmp_path, case, match):
    _images(tmp_path, ["a.png", "b.png", "c.png"])
    good = [{"file_name": n, "text": f"cap {n}"} for n in ("a.png", "b.png", "c.png")]
    rows: list[object] = {
        "missing": good[:2],
        "empty_line": [good[0], "", good[1], good[2]],
        "invalid_json": ['{"file_name": "a.png", "text": "x"', *good[1:]],
        "no_file_name": [{"text": "x"}, *good[1:]],
        "other_column": [{"file_name": "a.png", "caption": "x"}, *good[1:]],
        "missing_file": [good[0], {"file_name": "gone.png", "text": "x"}, *good[1:]],
        "empty_caption": [{"file_name": "a.png", "text": "  "}, *good[1:]],
        "empty_txt": good,
        "two_captions": good,
        "duplicate": [good[0], good[0], *good[1:]],
    }[case]
    _meta(tmp_path, rows)
    if case == "empty_txt":
        (tmp_path / "b.txt").write_text("\n")
    if case == "two_captions":
        (tmp_path / "b.txt").write_text("something else")
    with pytest.raises(UserError, match=match) as err:
        load_folder_captions(tmp_path)
    assert "\n" not in str(err.value)


def test_too_many_distinct_captions(tmp_path):
    _images(tmp_path, ["a.png"])
    _meta(tmp_path, [{"file_name": "a.png", "text": "x"}])
    assert load_caption_labels(DataConfig(dataset="folder", path=str(tmp_path))) is not None
    import nas.data as data

    old = data.MAX_CAPTIONS
    data.MAX_CAPTIONS = 0
    try:
        with pytest.raises(UserError, match="distinct captions; diffnas conditions on at most 0"):
            load_caption_labels(DataConfig(dataset="folder", path=str(tmp_path)))
    finally:
        data.MAX_CAPTIONS = old
    assert MAX_CAPTIONS == old


# -- through the base model and `diffnas run` ------------------------------------------------------

L, D = 8, 16


def _sd_folder(root: Path) -> Path:
    pytest.importorskip("transformers")
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from nas.text_models import build_text_encoder, build_tokenizer

    tok = build_tokenizer(("a", "red", "cat", "blue", "dog"), max_length=L)
    enc = build_text_encoder(tok, hidden_size=D, num_layers=1, seed=0)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, cross_attention_dim=D, attention_head_dim=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    folder = root / "sd"
    for name, part in (("unet", unet), ("text_encoder", enc), ("tokenizer", tok)):
        part.save_pretrained(str(folder / name))
    DDIMScheduler().save_pretrained(str(folder / "scheduler"))
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.0",
             "unet": ["diffusers", "UNet2DConditionModel"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDIMScheduler"]}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def test_caption_data_become_the_text_models_prompts(tmp_path):
    from experts.guidance import ClassCondition
    from experts.text_condition import encode_prompts, prompt_table
    from nas.conditions import training_labels
    from nas.config import load_config
    from nas.models import load_base

    data = tmp_path / "data"
    _images(data, ["a.png", "b.png", "c.png"])
    _meta(data, [{"file_name": "a.png", "text": "a red cat"}, {"file_name": "c.png", "text": "a red cat"}])
    (data / "b.txt").write_text("a blue dog")
    cfg = load_config(None, [f"model.base={_sd_folder(tmp_path)}", "data.dataset=folder", f"data.path={data}",
                             "data.image_size=8"])
    base = load_base(cfg, tmp_path / "cache", "cpu", progress=False)
    prompts, table = prompt_table(base.unet)
    assert prompts == ["a blue dog", "a red cat", ""]
    assert torch.allclose(table, encode_prompts(base.text_encoder, base.tokenizer, prompts), atol=1e-6)
    assert ClassCondition.from_unet(base.unet) == ClassCondition(num_classes=2, null_label=2)
    cond = training_labels(cfg, base, 3)
    assert cond["labels"].tolist() == [1, 0, 1] and cond["null_label"] == 2


def test_diffnas_run_refuses_bad_captions_before_training(tmp_path):
    """`diffnas run` on a text folder and data with a caption missing: one UserError line at the
    base stage (loading the model), nothing trained (no intervals, no experts)."""
    from nas.config import load_config
    from nas.run import run_pipeline

    data = tmp_path / "data"
    _images(data, ["a.png", "b.png", "c.png"])
    _meta(data, [{"file_name": "a.png", "text": "a red cat"}, {"file_name": "b.png", "text": "a blue dog"}])
    cfg = load_config(None, ["name=caps", f"run_root={tmp_path / 'runs'}", f"model.base={_sd_folder(tmp_path)}",
                             "data.dataset=folder", f"data.path={data}", "data.image_size=8", "device=cpu"])
    with pytest.raises(UserError, match=r"1 of 3 images in .* have no caption \(c\.png\)") as err:
        run_pipeline(cfg, progress=False)
    assert "\n" not in str(err.value)
    run = tmp_path / "runs" / "caps"
    assert not (run / "intervals").exists() or not any((run / "intervals").iterdir())
    assert not (run / "experts").exists() or not any((run / "experts").iterdir())
