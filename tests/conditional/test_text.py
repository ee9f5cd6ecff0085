"""Text-conditional paths with tiny models: a folder in Stable Diffusion's layout as the base
model, the prompt table through copies and reloads (what every stage relies on), the mixture
pipeline's prompt / negative prompt / no condition / class labels, its save/load with the text
encoder and tokenizer, and guided trajectory MACs against torch's FlopCounterMode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from diffusers import DDIMScheduler, UNet2DConditionModel  # noqa: E402

from experts.guidance import ClassCondition, TrajectoryMacs  # noqa: E402
from experts.intervals import Intervals  # noqa: E402
from experts.mixture import MixtureOfExperts  # noqa: E402
from experts.pipeline import MixturePipeline  # noqa: E402
from experts.text_condition import call_denoiser, encode_prompts, prompt_encoder_macs, prompt_table  # noqa: E402
from nas.text_models import TEXT_WORDS, build_text_encoder, build_tokenizer, install_class_prompts  # noqa: E402
from search_spaces.errors import UserError  # noqa: E402

L, D = 8, 16


def _unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, cross_attention_dim=D, attention_head_dim=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    ).eval()


@pytest.fixture(scope="module")
def text_parts():
    tok = build_tokenizer(TEXT_WORDS, max_length=L)
    return build_text_encoder(tok, hidden_size=D, num_layers=1, seed=0), tok


def _pipe(text_parts, with_table: bool = True) -> MixturePipeline:
    enc, tok = text_parts
    unets = [_unet(0), _unet(1)]
    if with_table:
        for u in unets:
            install_class_prompts(u, enc, tok, [str(i) for i in range(10)], "a handwritten {}")
    pipe = MixturePipeline(MixtureOfExperts(Intervals(1000, (500,)), unets), DDIMScheduler(), text_encoder=enc,
                           tokenizer=tok)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, **kw) -> torch.Tensor:
    return pipe(num_inference_steps=3, seed=0, output_type="pt", **kw).images


def test_labels_condition_a_text_unet_through_copies_and_reloads(text_parts, tmp_path):
    """The prompt table travels with the UNet config: a reloaded elastic supernet turns labels
    into the prompts' embeddings exactly; a UNet without a table is untouched."""
    from search_spaces.elastic_unet import ElasticUNet

    enc, tok = text_parts
    unet = _unet()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 700])
    plain = unet(x, t, encoder_hidden_states=torch.zeros(2, 1, D), class_labels=torch.tensor([3, 10])).sample
    prompts = install_class_prompts(unet, enc, tok, [str(i) for i in range(10)], "a handwritten {}")
    assert prompts[3] == "a handwritten three" and prompts[-1] == ""
    assert ClassCondition.from_unet(unet) == ClassCondition(num_classes=10, null_label=10)
    ElasticUNet(unet).save_pretrained(tmp_path / "sn")
    again = ElasticUNet.from_pretrained(tmp_path / "sn")
    want = unet(x, t, encoder_hidden_states=encode_prompts(enc, tok, ["a handwritten three", ""])).sample
    got = call_denoiser(again, x, t, encoder_hidden_states=torch.zeros(2, 1, D), class_labels=torch.tensor([3, 10])).sample
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)
    assert prompt_table(_unet()) is None


def test_sd_layout_folder_loads_as_text_base(text_parts, tmp_path):
    """A StableDiffusionPipeline folder (vae, text encoder, tokenizer, unet, scheduler) loads as
    the base model: text parts, empty-prompt context, one prompt per class of the data."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    from nas.config import load_config
    from nas.models import load_base

    enc, tok = text_parts
    vae = AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(8,), layers_per_block=1,
                        norm_num_groups=4, latent_channels=1, sample_size=8)
    sd = StableDiffusionPipeline(vae=vae, text_encoder=enc, tokenizer=tok, unet=_unet(), scheduler=DDIMScheduler(),
                                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sd.save_pretrained(tmp_path / "sd", safe_serialization=True)
    index = json.loads((tmp_path / "sd" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    cfg = load_config(None, [f"model.base={tmp_path / 'sd'}", "data.limit=20"])
    base = load_base(cfg, tmp_path / "cache", "cpu", progress=False)
    assert type(base.text_encoder).__name__ == "CLIPTextModel" and base.vae is not None
    assert torch.allclose(base.encoder_hidden_states, encode_prompts(enc, tok, [""]), atol=1e-6)
    prompts, table = prompt_table(base.unet)
    assert prompts[:2] == ["a photo of a zero", "a photo of a one"] and prompts[-1] == ""
    assert tuple(table.shape) == (len(prompts), L, D)


def test_pipeline_prompt_negative_prompt_no_condition_and_labels(text_parts):
    pipe = _pipe(text_parts)
    enc = pipe.encode_prompt
    a = _run(pipe, prompt="a handwritten three")
    assert torch.equal(a, _run(pipe, encoder_hidden_states=enc(["a handwritten three"])))
    # labels name the same prompts: the label path and the prompt path agree
    assert torch.allclose(_run(pipe, class_labels=3, guidance_scale=3.0),
                          _run(pipe, prompt="a handwritten three", guidance_scale=3.0), atol=1e-5)
    g = _run(pipe, prompt="a handwritten three", guidance_scale=3.0)
    assert torch.equal(g, _run(pipe, prompt="a handwritten three", negative_prompt="", guidance_scale=3.0))
    neg = _run(pipe, prompt="a handwritten three", negative_prompt="a handwritten eight", guidance_scale=3.0)
    assert not torch.allclose(neg, g, atol=1e-4)
    none = _run(pipe)
    assert torch.equal(none, _run(pipe, encoder_hidden_states=enc([""])))
    two = pipe(prompt=["a handwritten three", "a handwritten eight"], num_inference_steps=3, seed=0,
               output_type="pt").images
    assert two.shape[0] == 2 and torch.allclose(two[:1], a, atol=1e-5)
    with pytest.raises(UserError, match="negative_prompt needs guidance_scale"):
        _run(pipe, prompt="a handwritten three", negative_prompt="x")
    with pytest.raises(UserError, match="one string or one per image"):
        pipe(prompt=["a", "b"], batch_size=3, num_inference_steps=2, output_type="pt")


def test_mixture_pipeline_save_load_with_text_encoder(text_parts, tmp_path):
    pipe = _pipe(text_parts)
    kw = {"prompt": "a handwritten eight", "negative_prompt": "a handwritten three", "guidance_scale": 4.0}
    a = _run(pipe, **kw)
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"] and index["tokenizer"][0] == "transformers"
    again = MixturePipeline.from_pretrained(tmp_path / "p")
    again.set_progress_bar_config(disable=True)
    assert type(again.text_encoder).__name__ == "CLIPTextModel"
    assert torch.allclose(_run(again, **kw), a, atol=1e-6)
    assert torch.allclose(_run(again, class_labels=8, guidance_scale=4.0),
                          _run(pipe, class_labels=8, guidance_scale=4.0), atol=1e-6)


def test_text_pipeline_without_text_parts_takes_the_experts_prompts_only(text_parts):
    """A run's mixture folder has no text encoder: its experts' own prompts still work (their
    stored embeddings), any other prompt is one clear error."""
    unets = [_unet(0), _unet(1)]
    bare = MixturePipeline(MixtureOfExperts(Intervals(1000, (500,)), unets), DDIMScheduler())
    bare.set_progress_bar_config(disable=True)
    with pytest.raises(UserError, match="text-to-image mixture pipeline"):
        bare(prompt="a handwritten one", num_inference_steps=2, output_type="pt")
    full = _pipe(text_parts)
    tabled = MixturePipeline(full.mixture, DDIMScheduler())
    tabled.set_progress_bar_config(disable=True)
    kw = {"prompt": "a handwritten one", "negative_prompt": "a handwritten seven", "guidance_scale": 2.0}
    assert torch.allclose(_run(tabled, **kw), _run(full, **kw), atol=1e-6)
    assert torch.allclose(_run(tabled), _run(full), atol=1e-6)
    with pytest.raises(UserError, match="only the experts' prompts"):
        _run(tabled, prompt="a handwritten cat")


def test_guided_trajectory_macs_equal_flop_counter(text_parts):
    """TrajectoryMacs of a guided prompt run (text encoder for the prompt and the empty prompt,
    two UNet passes per step) equals torch's FlopCounterMode count of that pipeline call.

    Convention: FlopCounterMode counts FLOPs = 2 x MACs of matmuls and convolutions (norms,
    activations and the scheduler's elementwise updates are not counted by either side); the
    math attention kernel is forced so its matmuls are visible to FlopCounterMode (on the CPU
    the fused kernel is not counted by it)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from search_spaces.macs import count_macs

    enc, tok = text_parts
    pipe = _pipe(text_parts, with_table=False)
    steps = 4
    per_step = []
    for t in DDIMScheduler().set_timesteps(steps) or DDIMScheduler().timesteps[:0]:
        pass
    for k in range(2):
        unet = pipe.mixture.experts[k]
        macs = count_macs(unet, {"sample": torch.zeros(1, 1, 8, 8), "timestep": torch.tensor(1),
                                 "encoder_hidden_states": torch.zeros(1, L, D)}, by_module=False).total
        per_step.append(int(macs))
    sched = DDIMScheduler()
    sched.set_timesteps(steps)
    per_step_macs = [per_step[0] if int(t) < 500 else per_step[1] for t in sched.timesteps]
    parts = TrajectoryMacs.of(per_step_macs, guidance_scale=4.0, text_encoder=2 * prompt_encoder_macs(enc, tok))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        pipe(prompt="a handwritten three", guidance_scale=4.0, num_inference_steps=steps, seed=0, output_type="pt")
    counted_macs = counter.get_total_flops() / 2
    assert parts.unet_calls == 2 * steps and parts.text_encoder > 0
    assert abs(parts.total - counted_macs) / counted_macs < 0.01, (parts.to_dict(), counted_macs)


def test_text_experts_train_on_the_labels_prompts_and_keep_them(text_parts, tmp_path):
    """Expert training passes each draw's label; on a text UNet that is the prompt's embedding
    (the loss equals the loss with the embeddings given explicitly), the null label (condition
    dropout) is the empty prompt, and the saved experts keep the prompts."""
    from experts.denoising import LossBatch, expert_loss, training_scheduler
    from experts.train_loop import ExpertTrainSettings
    from experts.training import load_experts, train_experts

    enc, tok = text_parts
    unet = _unet()
    install_class_prompts(unet, enc, tok, [str(i) for i in range(10)], "a handwritten {}")
    _, table = prompt_table(unet)
    sched = training_scheduler({"num_train_timesteps": 100})
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([3, 10, 7])
    batch = LossBatch(torch.randn(3, 1, 8, 8, generator=g), torch.randn(3, 1, 8, 8, generator=g),
                      torch.tensor([5, 50, 90]), {"class_labels": y})
    by_label = expert_loss(unet, None, batch, sched, model_kwargs={"encoder_hidden_states": torch.zeros(3, 1, D)})
    explicit = expert_loss(unet, None, LossBatch(batch.x0, batch.noise, batch.t), sched,
                           model_kwargs={"encoder_hidden_states": table[y]})
    assert torch.allclose(by_label.total, explicit.total, atol=1e-6)

    images, labels = torch.randn(12, 1, 8, 8, generator=g).clamp(-1, 1), torch.arange(12) % 10
    settings = ExpertTrainSettings(steps=2, batch_size=4, random_archs=0, checkpoint_every=1)
    train_experts(unet, Intervals(100, (50,)), images, settings, tmp_path / "experts",
                  scheduler_config={"num_train_timesteps": 100}, progress=False, labels=labels,
                  condition_dropout=0.1, null_label=10, encoder_hidden_states=encode_prompts(enc, tok, [""]))
    _, experts = load_experts(tmp_path / "experts")
    assert all(ClassCondition.from_unet(e) == ClassCondition(10, 10) for e in experts)
    assert prompt_table(experts[0])[0] == prompt_table(unet)[0]


def test_run_context_samples_every_prompt_with_guidance(text_parts, tmp_path):
    """The run's sampling (bench, search FID, proxy) asks a text base for every digit's prompt,
    the empty prompt as the unconditional half of each guided pass."""
    from types import SimpleNamespace

    from nas.config import load_config
    from nas.run import RunContext

    enc, tok = text_parts
    unet = _unet()
    install_class_prompts(unet, enc, tok, [str(i) for i in range(10)], "a handwritten {}")
    _, table = prompt_table(unet)
    seen = []
    attn2 = next(m for n, m in unet.named_modules() if n.endswith("attn2"))
    attn2.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["encoder_hidden_states"].clone()),
                                    with_kwargs=True)
    cfg = load_config(None, ["name=t", f"run_root={tmp_path}", "data.image_size=8", "condition.guidance_scale=2",
                             "sampling.sampler=ddim"])
    ctx = RunContext(cfg, device="cpu", progress=False)
    ctx._cache["base"] = SimpleNamespace(unet=unet, vae=None, sample_shape=(1, 8, 8), latent_scale=1.0,
                                         encoder_hidden_states=encode_prompts(enc, tok, [""]), text_encoder=enc,
                                         tokenizer=tok, scheduler_config={"num_train_timesteps": 1000})
    images = ctx.generate(unet, 12, 0, 2, batch_size=12)
    assert images.shape == (12, 1, 8, 8)
    want = table[torch.tensor([10] * 12 + [i % 10 for i in range(12)])]
    assert torch.allclose(seen[0], want, atol=1e-6)


def test_embedded_digits_text_is_a_text_to_image_folder(tmp_path):
    """embedded:digits-text (3 training steps here) is saved in Stable Diffusion's layout and loads
    back through the folder loader a user's folder takes, with its prompts."""
    from types import SimpleNamespace

    from nas.models import load_base_model
    from nas.model_folders import load_folder

    cfg = SimpleNamespace(train_steps=3, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                          batch_size=4, checkpoint_every=2)
    base = load_base_model("embedded:digits-text", model_cfg=cfg, cache_dir=tmp_path, device="cpu", progress=False)
    index = json.loads((base.path / "model_index.json").read_text())
    assert {k: v[1] for k, v in index.items() if not k.startswith("_")} == {
        "unet": "UNet2DConditionModel", "text_encoder": "CLIPTextModel", "tokenizer": "CLIPTokenizer",
        "scheduler": "DDPMScheduler"}
    again = load_folder(base.path)
    prompts, _ = prompt_table(again.unet)
    assert prompts[7] == "a handwritten seven" and prompts[10] == ""
    assert torch.allclose(again.encoder_hidden_states, encode_prompts(again.text_encoder, again.tokenizer, [""]))
    assert ClassCondition.from_unet(again.unet) == ClassCondition(10, 10)


def test_bench_rows_of_a_text_model_count_the_text_encoder_by_part(text_parts, tmp_path):
    from types import SimpleNamespace

    from benchmarks.bench.rows import _condition_fields
    from nas.config import load_config

    enc, tok = text_parts
    unet = _unet()
    install_class_prompts(unet, enc, tok, [str(i) for i in range(10)], "a handwritten {}")
    base = SimpleNamespace(unet=unet, vae=None, text_encoder=enc, tokenizer=tok)
    cand = SimpleNamespace(macs_per_trajectory=1000, num_steps=5)
    for g, factor in ((3.0, 2), (1.0, 1)):
        ctx = SimpleNamespace(cfg=load_config(None, [f"condition.guidance_scale={g}"]), base=base, base_traj=2000)
        parts = _condition_fields(ctx, cand)["macs_parts"]
        assert parts["unet"] == factor * 1000 and parts["unet_calls"] == factor * 5
        assert parts["text_encoder"] == factor * prompt_encoder_macs(enc, tok) > 0
        assert parts["total"] == parts["unet"] + parts["text_encoder"]
