"""nas.models: embedded training (checkpoint, resume, reuse), folder/pipeline/hub loading."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel, VQModel
from safetensors.torch import load_file

import nas.embedded as embedded
import nas.models as models
from nas.models import BaseModel, load_base_model, load_folder, train_embedded_digits
from nas.sampling import generate, make_scheduler
from search_spaces.errors import UserError
from tests.conftest import build_tiny_cond_unet, build_tiny_unet, unet_inputs


def tiny_cfg(**over):
    cfg = dict(train_steps=6, batch_size=4, learning_rate=1e-3, checkpoint_every=2, block_out_channels=(8, 16),
               layers_per_block=1, norm_num_groups=4, num_train_timesteps=100, attention=True)
    cfg.update(over)
    return SimpleNamespace(**cfg)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(24, 1, 16, 16, generator=g) * 2 - 1  # (N,1,16,16) in [-1,1]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


class Interrupt(Exception):
    pass


def _interrupt_at(monkeypatch, step_index: int):
    real = embedded._lr_at

    def lr_at(step, settings):
        if step == step_index:
            raise Interrupt(f"killed at step {step}")
        return real(step, settings)

    monkeypatch.setattr(embedded, "_lr_at", lr_at)


# --------------------------------------------------------------------------------------------
# embedded training


def test_interrupted_training_resumes_from_checkpoint_and_matches_uninterrupted(tmp_path, images, monkeypatch,
                                                                                 caplog):
    cfg = tiny_cfg()
    straight = train_embedded_digits(tmp_path / "straight", images, cfg, progress=False)

    resumed_dir = tmp_path / "resumed"
    with monkeypatch.context() as m:
        _interrupt_at(m, 5)  # steps 0..4 run, the checkpoint of step 4 is on disk, then the "kill"
        with pytest.raises(Interrupt):
            train_embedded_digits(resumed_dir, images, cfg, progress=False)
    ckpt = resumed_dir / "checkpoint"
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 4
    assert sorted(p.suffix for p in ckpt.iterdir()) == [".json", ".safetensors", ".safetensors", ".safetensors"]
    assert not (resumed_dir / models.MARKER_FILE).exists()

    with caplog.at_level(logging.INFO, logger="nas.embedded"):
        train_embedded_digits(resumed_dir, images, cfg, progress=False)
    assert "resuming base-model training from step 4/6" in caplog.text
    info = json.loads((resumed_dir / models.MARKER_FILE).read_text())
    assert info["steps_this_run"] == 2
    assert not ckpt.exists()  # cleaned up once the model is saved

    a, b = _weights(straight), _weights(resumed_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # training moved the weights away from the initialisation
    torch.manual_seed(0)
    init = models.build_embedded_unet(models.embedded_settings(cfg)).state_dict()
    assert any(not torch.equal(init[k], a[k]) for k in a)


def test_saved_model_is_a_diffusers_pipeline_folder(tmp_path, images):
    from diffusers import DDPMPipeline

    out = train_embedded_digits(tmp_path / "m", images, tiny_cfg(train_steps=2), progress=False)
    assert (out / "model_index.json").is_file()
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))
    pipe = DDPMPipeline.from_pretrained(out, use_safetensors=True)
    assert pipe.scheduler.config.num_train_timesteps == 100
    assert pipe.scheduler.config.prediction_type == "epsilon"


def test_second_call_reuses_without_training(tmp_path, images, monkeypatch):
    cfg = tiny_cfg(train_steps=2)
    first = load_base_model("embedded:digits", model_cfg=cfg, images=images, cache_dir=tmp_path, progress=False)
    assert isinstance(first, BaseModel)
    assert first.source == "embedded:digits"
    assert first.sample_shape == (1, 16, 16)
    assert first.vae is None and first.encoder_hidden_states is None
    assert first.scheduler_config["num_train_timesteps"] == 100

    def no_training(*a, **k):
        raise AssertionError("retrained instead of reusing")

    monkeypatch.setattr(embedded, "build_embedded_unet", no_training)
    second = load_base_model("embedded:digits", model_cfg=cfg, images=images, cache_dir=tmp_path, progress=False)
    assert second.path == first.path
    x = unet_inputs(first.unet, batch_size=2)
    torch.testing.assert_close(first.unet(**x).sample, second.unet(**x).sample)


def test_different_config_trains_into_a_different_folder(tmp_path, images):
    a = load_base_model("embedded:digits", model_cfg=tiny_cfg(train_steps=2), images=images, cache_dir=tmp_path,
                        progress=False)
    b = load_base_model("embedded:digits", model_cfg=tiny_cfg(train_steps=2, learning_rate=5e-4), images=images,
                        cache_dir=tmp_path, progress=False)
    assert a.path != b.path and a.path.parent == b.path.parent
    # and a different data set, too
    c = load_base_model("embedded:digits", model_cfg=tiny_cfg(train_steps=2), images=images[:12],
                        cache_dir=tmp_path, progress=False)
    assert c.path not in (a.path, b.path)


def test_folder_with_another_config_is_a_clear_error(tmp_path, images):
    out = train_embedded_digits(tmp_path / "m", images, tiny_cfg(train_steps=2), progress=False)
    with pytest.raises(UserError, match="different config"):
        train_embedded_digits(out, images, tiny_cfg(train_steps=3), progress=False)


def test_checkpoint_of_another_config_is_a_clear_error(tmp_path, images, monkeypatch):
    with monkeypatch.context() as m:
        _interrupt_at(m, 3)
        with pytest.raises(Interrupt):
            train_embedded_digits(tmp_path / "m", images, tiny_cfg(), progress=False)
    with pytest.raises(UserError, match="checkpoint of a different config"):
        train_embedded_digits(tmp_path / "m", images, tiny_cfg(learning_rate=5e-4), progress=False)


def test_embedded_unet_layout_follows_config():
    s = models.embedded_settings(SimpleNamespace(block_out_channels=(16, 32, 32), layers_per_block=1,
                                                 norm_num_groups=8, attention=True))
    u = models.build_embedded_unet(s)
    assert u.config.down_block_types == ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    assert u.config.up_block_types == ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    assert u.config.add_attention is True
    s_off = dict(s, attention=False)
    u_off = models.build_embedded_unet(s_off)
    assert set(u_off.config.down_block_types) == {"DownBlock2D"} and u_off.config.add_attention is False
    assert sum(p.numel() for p in u_off.parameters()) < sum(p.numel() for p in u.parameters())


def test_unknown_embedded_name_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="embedded:digits"):
        load_base_model("embedded:cifar", cache_dir=tmp_path)


# --------------------------------------------------------------------------------------------
# folders and hub ids


def test_bare_unet_folder_with_scheduler_config(tmp_path):
    unet = build_tiny_unet()
    unet.save_pretrained(tmp_path / "m", safe_serialization=True)
    DDIMScheduler(num_train_timesteps=500, beta_schedule="scaled_linear").save_pretrained(tmp_path / "m")
    base = load_base_model(str(tmp_path / "m"), cache_dir=tmp_path / "cache")
    assert isinstance(base.unet, UNet2DModel) and not base.unet.training
    assert base.scheduler_config["num_train_timesteps"] == 500
    assert base.scheduler_config["beta_schedule"] == "scaled_linear"
    assert base.sample_shape == (1, 16, 16) and base.latent_scale == 1.0
    x = unet_inputs(unet)
    torch.testing.assert_close(base.unet(**x).sample, unet(**x).sample)
    assert make_scheduler("ddpm", base.scheduler_config).config.num_train_timesteps == 500


def test_bare_unet_folder_without_scheduler_uses_ddpm_defaults(tmp_path, caplog):
    build_tiny_unet().save_pretrained(tmp_path / "m", safe_serialization=True)
    with caplog.at_level(logging.WARNING, logger="nas.model_folders"):
        base = load_folder(tmp_path / "m")
    assert base.scheduler_config["num_train_timesteps"] == DDPMScheduler().config.num_train_timesteps
    assert "no scheduler_config.json" in caplog.text


def test_conditional_unet_gets_a_zero_context(tmp_path):
    unet = build_tiny_cond_unet()
    unet.save_pretrained(tmp_path / "c", safe_serialization=True)
    base = load_folder(tmp_path / "c")
    assert base.encoder_hidden_states is not None
    assert base.encoder_hidden_states.shape == (1, 1, unet.config.cross_attention_dim)
    assert float(base.encoder_hidden_states.abs().sum()) == 0.0
    assert base.unet_kwargs(3)["encoder_hidden_states"].shape == (3, 1, unet.config.cross_attention_dim)
    x = generate(base.unet, make_scheduler("ddim", base.scheduler_config), num_images=2, num_steps=2,
                 batch_size=2, seed=0, sample_shape=base.sample_shape,
                 encoder_hidden_states=base.encoder_hidden_states, progress=False)
    assert x.shape == (2, 4, 8, 8)


def _tiny_vq():
    torch.manual_seed(0)
    return VQModel(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=3, num_vq_embeddings=16, vq_embed_dim=3, norm_num_groups=4, sample_size=16,
    ).eval()


def test_ldm_pipeline_layout_loads_with_vqvae_and_samples_decoded_images(tmp_path):
    from diffusers import LDMPipeline

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4, add_attention=False,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    vq = _tiny_vq()
    sched = DDIMScheduler(num_train_timesteps=200, beta_schedule="linear")
    LDMPipeline(vqvae=vq, unet=unet, scheduler=sched).save_pretrained(tmp_path / "ldm", safe_serialization=True)

    base = load_base_model(str(tmp_path / "ldm"), cache_dir=tmp_path / "cache")
    assert isinstance(base.vae, VQModel)
    assert base.sample_shape == (3, 8, 8)  # latents, not pixels
    assert base.latent_scale == pytest.approx(vq.config.scaling_factor)
    assert base.scheduler_config["num_train_timesteps"] == 200
    assert base.scheduler_config["_class_name"] == "DDIMScheduler"
    images = generate(base.unet, make_scheduler("ddim", base.scheduler_config), num_images=2, num_steps=3,
                      batch_size=2, seed=0, sample_shape=base.sample_shape, vae=base.vae,
                      latent_scale=base.latent_scale, progress=False)
    assert images.shape == (2, 3, 16, 16)  # decoded to pixels
    assert torch.isfinite(images).all()


def test_pickle_only_weights_are_refused(tmp_path):
    build_tiny_unet().save_pretrained(tmp_path / "m", safe_serialization=False)
    assert list((tmp_path / "m").glob("*.bin"))
    with pytest.raises(UserError, match="safetensors"):
        load_folder(tmp_path / "m")


def test_hub_id_offline_and_not_cached_is_a_helpful_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(UserError) as err:
        load_base_model("some-org/some-ldm-model", cache_dir=tmp_path)
    msg = str(err.value)
    assert "some-org/some-ldm-model" in msg
    assert "huggingface-cli download" in msg and "save_pretrained" in msg
    assert "path" in msg and "offline" in msg
    assert "not a local folder" in msg  # a mistyped relative path looks like owner/name too


def test_hub_id_found_in_the_local_cache_loads(tmp_path, monkeypatch):
    # lay out a hub cache snapshot by hand, the way huggingface_hub stores one
    cache = tmp_path / "hf"
    repo = cache / "models--some-org--tiny-unet"
    snap = repo / "snapshots" / ("a" * 40)
    build_tiny_unet().save_pretrained(snap, safe_serialization=True)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    base = load_base_model("some-org/tiny-unet", cache_dir=tmp_path)
    assert base.source == "some-org/tiny-unet"
    assert isinstance(base.unet, UNet2DModel)


@pytest.mark.parametrize("spec, match", [
    ("./does/not/exist", "not found"),
    ("not a model", "not found"),
])
def test_missing_paths_are_user_errors(tmp_path, spec, match):
    with pytest.raises(UserError, match=match):
        load_base_model(spec, cache_dir=tmp_path)


def test_file_or_empty_folder_is_a_user_error(tmp_path):
    (tmp_path / "f.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="is a file"):
        load_base_model(str(tmp_path / "f.safetensors"), cache_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a diffusers model folder"):
        load_base_model(str(tmp_path / "empty"), cache_dir=tmp_path)
