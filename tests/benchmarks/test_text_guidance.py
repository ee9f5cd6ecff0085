"""Text-to-image runs in the bench, the report and the export, with tiny models: the mixture saved
with the base's text encoder and reloaded with ``from_pretrained``, grids at guidance 1 and 4, the
prompt accuracy at 1/2/4, all stored (reused on rerun) and shown by the report; an exported text
mixture carries the text encoder and tokenizer; a run without a text encoder gets nothing."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("transformers")

from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel  # noqa: E402

from benchmarks.bench.guidance import guidance_dir, run_guidance  # noqa: E402
from experts.intervals import Intervals  # noqa: E402
from experts.mixture import MixtureOfExperts  # noqa: E402
from experts.pipeline import MixturePipeline  # noqa: E402
from experts.text_condition import encode_prompts, prompt_table  # noqa: E402
from nas.config import load_config  # noqa: E402
from nas.run import RunContext, RunDir  # noqa: E402
from nas.text_models import TEXT_WORDS, build_text_encoder, build_tokenizer, install_class_prompts  # noqa: E402
from tests.benchmarks.fakerun import KEY, write_fake_run  # noqa: E402

L, D = 8, 16


def _unet(seed: int) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, cross_attention_dim=D, attention_head_dim=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    ).eval()


def _text_parts(seed: int = 0):
    tok = build_tokenizer(TEXT_WORDS, max_length=L)
    return build_text_encoder(tok, hidden_size=D, num_layers=1, seed=seed), tok


def _save_sd_folder(folder: Path, enc, tok) -> None:
    """The text parts of a text-to-image folder in Stable Diffusion's layout (what a run's base/ holds)."""
    enc.save_pretrained(folder / "text_encoder", safe_serialization=True)
    tok.save_pretrained(folder / "tokenizer")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"]}))


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """The hand-written bench run (config KEY) whose search-0.5 row is a real text mixture folder saved
    without a text encoder (as the fine-tuning stage saves it), the base's text parts under base/
    beside a decoy of another encoder, and the guidance step run on it."""
    root = tmp_path_factory.mktemp("textrun")
    run = write_fake_run(root)
    enc, tok = _text_parts(0)
    base_unet, experts = _unet(0), [_unet(1), _unet(2)]
    for u in (base_unet, *experts):
        install_class_prompts(u, enc, tok, [str(i) for i in range(10)], "a handwritten {}")
    MixturePipeline(MixtureOfExperts(Intervals(1000, (500,)), experts), DDIMScheduler()).save_pretrained(
        str(run / "mixtures" / "search-0.5"))
    decoy_enc, decoy_tok = _text_parts(1)
    _save_sd_folder(run / "base" / "embedded-digits-text-aaaa", decoy_enc, decoy_tok)
    _save_sd_folder(run / "base" / "embedded-digits-text-bbbb", enc, tok)
    lines = []
    for line in (run / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("kind") == "bench" and r["method"] == "search" and r["budget_ratio"] == 0.5:
            r.update(model_path="mixtures/search-0.5", inputs_key="in-1")
        lines.append(json.dumps(r))
    (run / "results.jsonl").write_text("\n".join(lines) + "\n")
    cfg = load_config(None, ["name=fake", f"run_root={root}", "data.image_size=8", "bench.budgets=[0.5]",
                             "bench.methods=[router, search, base]", "bench.num_samples=10", "sampling.num_steps=2",
                             "sampling.batch_size=16", "condition.guidance_scale=2"])
    ctx = RunContext(cfg, device="cpu", progress=False, run=RunDir(root, "fake"))
    ctx._cache["base"] = SimpleNamespace(
        unet=base_unet, vae=None, sample_shape=(1, 8, 8), latent_scale=1.0, text_encoder=enc, tokenizer=tok,
        encoder_hidden_states=encode_prompts(enc, tok, [""]), scheduler_config=dict(DDPMScheduler().config))
    record = run_guidance(ctx, KEY)
    return SimpleNamespace(run=run, ctx=ctx, record=record, enc=enc, tok=tok)


def test_guidance_samples_the_reloaded_full_pipeline_and_stores_everything(text_run):
    run, rec = text_run.run, text_run.record
    out = guidance_dir(text_run.ctx.run)
    assert json.loads((out / "guidance.json").read_text()) == rec
    assert [m["name"] for m in rec["models"]] == ["base", "search-0.5"]  # router-0.5 has no pipeline folder
    assert rec["grid_prompts"] == ["a handwritten three", "a handwritten eight"]
    for m in rec["models"]:
        assert (run / m["grid"]).is_file()
        assert [(r["prompt"].split()[-1], r["guidance_scale"]) for r in m["grid_rows"]] == [
            ("three", 1.0), ("three", 4.0), ("eight", 1.0), ("eight", 4.0)]
        acc = m["prompt_accuracy"]
        assert sorted(acc) == ["1", "2", "3", "4"] and all(0.0 <= v <= 1.0 for v in acc.values())
        assert all(len(v) == 3 for v in m["prompt_accuracy_per_seed"].values())
    saved = run / rec["models"][1]["pipeline"]
    index = json.loads((saved / "model_index.json").read_text())
    assert index["text_encoder"][1] == "CLIPTextModel" and index["tokenizer"][1] == "CLIPTokenizer"
    pipe = MixturePipeline.from_pretrained(str(saved))
    pipe.set_progress_bar_config(disable=True)
    # its own text encoder: any prompt (not only the experts' stored ones), the same embeddings as the base's
    assert torch.allclose(pipe.encode_prompt(["eight a handwritten"]),
                          encode_prompts(text_run.enc, text_run.tok, ["eight a handwritten"]), atol=1e-6)
    x = pipe(prompt="a handwritten three", guidance_scale=4.0, num_inference_steps=2, seed=0, output_type="pt").images
    assert x.shape == (1, 1, 8, 8)
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no temporary sibling left


def test_guidance_is_reused_and_redone_when_its_inputs_change(text_run):
    out = guidance_dir(text_run.ctx.run)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    stamp = (out / "guidance.json").stat().st_mtime_ns
    assert run_guidance(text_run.ctx, KEY) == text_run.record
    assert (out / "guidance.json").stat().st_mtime_ns == stamp
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_no_text_encoder_no_guidance_outputs(tmp_path):
    cfg = load_config(None, ["name=u", f"run_root={tmp_path}"])
    ctx = RunContext(cfg, device="cpu", progress=False)
    ctx._cache["base"] = SimpleNamespace(unet=None, text_encoder=None, tokenizer=None)
    assert run_guidance(ctx, "k") is None
    assert not (tmp_path / "u" / "bench").exists()


def test_report_shows_the_grids_and_the_prompt_accuracy_table(text_run):
    from benchmarks.report import build_report

    res = build_report(text_run.run)
    g = res.summary["guidance"]
    assert [m["name"] for m in g["models"]] == ["base", "search-0.5"]
    assert {"guidance/base.png", "guidance/search-0.5.png"} <= set(res.summary["files"])
    md = res.report_md.read_text()
    assert "## Prompts and guidance" in md and "![base](guidance/base.png)" in md
    assert "| model | prompt acc (guidance 1) | prompt acc (guidance 2) | prompt acc (guidance 3) | prompt acc (guidance 4) |" in md
    base_acc = g["models"][0]["prompt_accuracy"]
    assert f"| base model | {100 * base_acc['1']:.1f}% |" in md
    assert 'row 2: "a handwritten three", guidance 4' in md
    page = res.index_html.read_text()
    assert f'data-guidance="4" data-value="{json.dumps(base_acc["4"])}"' in page
    assert page.count('<img alt="base model (MixturePipeline') == 1 and 'class="guidance-grids"' in page
    # a stored record of another bench configuration is left out
    path = text_run.run / "bench" / "guidance" / "guidance.json"
    saved = path.read_text()
    try:
        path.write_text(json.dumps({**json.loads(saved), "config_key": "other"}))
        assert "guidance" not in build_report(text_run.run).summary
    finally:
        path.write_text(saved)


def test_export_of_a_text_mixture_carries_the_base_text_encoder(text_run, tmp_path):
    from benchmarks.export import export_pipeline

    out = tmp_path / "exported"
    res = export_pipeline(text_run.run, out, method="search", budget=0.5)
    assert res.facts["text_encoder"] == "base/embedded-digits-text-bbbb"  # the one the experts' prompts came from
    index = json.loads((out / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert 'pipe(prompt="a handwritten three"' in (out / "README.md").read_text()
    pipe = MixturePipeline.from_pretrained(str(out))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(prompt="a handwritten three", guidance_scale=4.0, num_inference_steps=2, output_type="pt").images
    assert images.shape == (1, 1, 8, 8)
    prompts, table = prompt_table(pipe.mixture.experts[0])
    assert torch.allclose(pipe.encode_prompt(list(prompts)), table, atol=1e-5)
    pipe(prompt="three eight a", num_inference_steps=1, output_type="pt")  # outside the table: the encoder's
    manifest = json.loads((out / "diffnas_export.json").read_text())
    assert {"text_encoder/config.json", "tokenizer/tokenizer_config.json"} <= set(manifest["files"]), manifest["files"]
