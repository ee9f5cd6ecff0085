"""diffnas conditions text UNets through its own call path (experts.text_condition.call_denoiser),
never by patching diffusers: importing every package leaves UNet2DConditionModel.forward as
diffusers defines it, and a UNet with a prompt table still turns class labels into the prompts'
embeddings wherever diffnas calls it (plain, elastic supernet, mixture, guidance, DeepCache)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel

from experts.caching import CacheSettings, CachedUNet
from experts.guidance import ConditionedModel
from experts.intervals import Intervals
from experts.mixture import MixtureOfExperts
from experts.text_condition import PromptLabels, call_denoiser, condition_kwargs, install_prompt_table
from search_spaces.elastic_unet import ElasticUNet

D, L = 8, 3


def _unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, cross_attention_dim=D, attention_head_dim=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    ).eval()


def _tabled(seed: int = 0) -> tuple[UNet2DConditionModel, torch.Tensor]:
    unet = _unet(seed)
    table = torch.randn(4, L, D, generator=torch.Generator().manual_seed(7))  # (P,L,D): 3 prompts + ""
    install_prompt_table(unet, ["a", "b", "c", ""], table)
    return unet, table


def test_importing_diffnas_leaves_diffusers_unpatched():
    """In a fresh interpreter: diffusers' forward before == after importing every diffnas package
    and installing a prompt table; no import hook of ours is left in sys.meta_path."""
    code = textwrap.dedent("""
        import sys
        from diffusers.models.unets import unet_2d_condition as m
        before = m.UNet2DConditionModel.forward
        import experts, nas, router, benchmarks, search_spaces  # noqa: F401
        import experts.text_condition, experts.guidance, experts.mixture, experts.pipeline, nas.text_models
        import torch
        u = m.UNet2DConditionModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
            layers_per_block=1, norm_num_groups=4, cross_attention_dim=8, attention_head_dim=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
        experts.text_condition.install_prompt_table(u, ["a", ""], torch.zeros(2, 3, 8))
        assert m.UNet2DConditionModel.forward is before, "diffusers' UNet2DConditionModel.forward was replaced"
        assert not any(type(f).__module__.split(".")[0] in ("experts", "nas", "router", "benchmarks", "search_spaces")
                       for f in sys.meta_path), sys.meta_path
        print("unpatched")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "unpatched" in out.stdout, out.stderr[-2000:]
    # and in this process, where the whole test suite imported diffnas
    f = UNet2DConditionModel.forward
    assert f.__module__ == "diffusers.models.unets.unet_2d_condition" and f.__qualname__ == "UNet2DConditionModel.forward"
    assert "/diffusers/" in f.__code__.co_filename.replace("\\", "/"), f.__code__.co_filename  # no wrapper of ours
    assert not hasattr(f, "_diffnas_prompt_labels")


def test_text_unet_conditions_through_our_call_path_only():
    unet, table = _tabled()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 700])
    y = torch.tensor([2, 3])
    zeros = torch.zeros(2, 1, D)
    want = unet(x, t, encoder_hidden_states=table[y]).sample
    with torch.no_grad():
        got = call_denoiser(unet, x, t, encoder_hidden_states=zeros, class_labels=y).sample
        direct = unet(x, t, encoder_hidden_states=zeros, class_labels=y).sample  # diffusers: labels ignored
        ignored = unet(x, t, encoder_hidden_states=zeros).sample
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.equal(direct, ignored) and not torch.allclose(got, direct, atol=1e-3)
    kw = {"class_labels": y, "encoder_hidden_states": zeros}
    assert set(condition_kwargs(unet, x, kw)) == {"encoder_hidden_states"} and "class_labels" in kw  # not mutated
    # no table, or a class embedding: the keyword arguments pass unchanged
    assert condition_kwargs(_unet(), x, kw).keys() == kw.keys()
    assert condition_kwargs(unet, x, {"encoder_hidden_states": zeros}).keys() == {"encoder_hidden_states"}


def test_wrappers_mixture_guidance_and_cache_condition_like_the_unet():
    """The elastic supernet, PromptLabels, the mixture's dispatch, guidance and DeepCache all
    see the table: each equals the UNet called with the labels' embeddings."""
    unet, table = _tabled()
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([0, 2])
    ctx0 = torch.zeros(2, 1, D)
    with torch.no_grad():
        want = unet(x, torch.tensor(600), encoder_hidden_states=table[y]).sample
        assert torch.allclose(call_denoiser(ElasticUNet(unet), x, torch.tensor(600), class_labels=y,
                                            encoder_hidden_states=ctx0).sample, want, atol=1e-5)
        assert torch.allclose(PromptLabels(unet)(x, torch.tensor(600), class_labels=y).sample, want, atol=1e-6)
        other, _ = _tabled(seed=1)
        mix = MixtureOfExperts(Intervals(1000, (500,)), [other, unet])  # t=600: the second expert
        assert torch.allclose(mix(x, torch.tensor(600), class_labels=y, encoder_hidden_states=ctx0).sample, want,
                              atol=1e-6)
        per_sample = mix(x, torch.tensor([100, 600]), class_labels=y, encoder_hidden_states=ctx0).sample
        assert torch.allclose(per_sample[1], want[1], atol=1e-5)
        assert torch.allclose(per_sample[0], other(x[:1], torch.tensor([100]), encoder_hidden_states=table[y[:1]]).sample[0],
                              atol=1e-5)
        guided = ConditionedModel(unet, y, guidance_scale=3.0, null_label=3)(x, torch.tensor(600), encoder_hidden_states=ctx0)
        u = unet(x, torch.tensor(600), encoder_hidden_states=table[[3, 3]]).sample
        assert torch.allclose(guided, u + 3.0 * (want - u), atol=1e-5)
        cached = CachedUNet(unet, CacheSettings(interval=1, branch=0))
        assert torch.allclose(cached(x, torch.tensor(600), class_labels=y, encoder_hidden_states=ctx0).sample, want,
                              atol=1e-6)


def test_pipeline_labels_on_a_text_mixture_match_the_prompts():
    from experts.pipeline import MixturePipeline

    unets = [_tabled(0)[0], _tabled(1)[0]]
    _, table = _tabled(0)
    pipe = MixturePipeline(MixtureOfExperts(Intervals(1000, (500,)), unets), DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    a = pipe(class_labels=1, num_inference_steps=3, seed=0, output_type="pt").images
    b = pipe(encoder_hidden_states=table[[1]], num_inference_steps=3, seed=0, output_type="pt").images
    assert torch.allclose(a, b, atol=1e-6)
