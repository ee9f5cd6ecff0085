"""Static pruning baseline: reaches the MACs budget, saves and loads back in one call."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.static_pruning import fewer_steps_for_budget, prune_to_budget, uniform_fraction_arch
from experts.pruned import PRUNED_KEY, is_pruned_folder, load_pruned, save_pruned
from search_spaces.errors import UserError
from search_spaces.macs import count_unet_macs
from tests.conftest import build_tiny_attn_unet, build_tiny_unet, unet_inputs


def _scheduler_config() -> dict:
    from diffusers import DDPMScheduler

    return dict(DDPMScheduler(num_train_timesteps=100).config)


def test_static_pruning_reaches_budget_and_loads_back(tmp_path):
    unet = build_tiny_attn_unet()
    res = prune_to_budget(unet, 0.5, importance="magnitude", max_iterations=8)
    base = count_unet_macs(unet)
    assert res.base_macs == base
    assert res.macs == count_unet_macs(res.model)
    assert res.macs <= 0.5 * base
    assert res.macs_ratio > 0.2  # pruned to the budget, not to nothing
    assert len(res.tries) <= 8
    n_params = sum(p.numel() for p in res.model.parameters())
    assert n_params < sum(p.numel() for p in unet.parameters())

    folder = save_pruned(res.model, tmp_path / "static", info={"budget_ratio": 0.5})
    assert is_pruned_folder(folder)
    record = json.loads((folder / "config.json").read_text())[PRUNED_KEY]
    assert record["shapes"], "pruning changed no tensor shape"
    assert record["info"] == {"budget_ratio": 0.5}
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))

    loaded = load_pruned(folder)
    assert count_unet_macs(loaded) == res.macs
    assert sum(p.numel() for p in loaded.parameters()) == n_params
    kw = unet_inputs(unet)
    with torch.no_grad():
        assert torch.equal(loaded(**kw).sample, res.model(**kw).sample)
    # `--model DIR` of the CLI (load_model_folder) recognises the format
    from experts.pipeline import load_model_folder

    via_cli = load_model_folder(folder)
    assert via_cli.kind == "pruned-unet"
    with torch.no_grad():
        assert torch.equal(via_cli.model(**kw).sample, res.model(**kw).sample)
    # the loaded model saves again to the same record
    again = save_pruned(loaded, tmp_path / "again")
    rec2 = json.loads((again / "config.json").read_text())[PRUNED_KEY]
    assert rec2["shapes"] == record["shapes"] and rec2["attributes"] == record["attributes"]


def test_taylor_importance_uses_denoising_gradients():
    unet = build_tiny_unet()
    images = torch.rand(16, 1, 16, 16) * 2 - 1
    res = prune_to_budget(unet, 0.6, importance="taylor", images=images, scheduler_config=_scheduler_config(),
                          taylor_batches=2, batch_size=4, max_iterations=6)
    assert res.importance == "taylor"
    assert res.macs <= 0.6 * res.base_macs
    with pytest.raises(ValueError, match="taylor importance needs"):
        prune_to_budget(unet, 0.6, importance="taylor")


def test_frozen_model_under_no_grad_is_pruned_too():
    unet = build_tiny_unet().requires_grad_(False)  # as a loaded base model is
    with torch.no_grad():
        res = prune_to_budget(unet, 0.5, importance="magnitude", max_iterations=4)
        taylor = prune_to_budget(unet, 0.5, importance="taylor", images=torch.rand(8, 1, 16, 16) * 2 - 1,
                                 scheduler_config=_scheduler_config(), taylor_batches=1, batch_size=4, max_iterations=4)
    assert res.macs <= 0.5 * res.base_macs and taylor.macs <= 0.5 * taylor.base_macs
    assert all(not p.requires_grad for p in unet.parameters())  # the caller's model is untouched


def test_unreachable_budget_is_a_user_error():
    with pytest.raises(UserError, match="cannot reach"):
        prune_to_budget(build_tiny_unet(), 0.01, importance="magnitude", max_iterations=3)


def test_load_pruned_rejects_plain_folder(tmp_path):
    unet = build_tiny_unet()
    unet.save_pretrained(str(tmp_path / "plain"))
    assert not is_pruned_folder(tmp_path / "plain")
    with pytest.raises(UserError, match="save_pruned"):
        load_pruned(tmp_path / "plain")


def test_fewer_steps_and_uniform_fraction():
    assert fewer_steps_for_budget(20, 0.5) == 10
    assert fewer_steps_for_budget(20, 0.3) == 6
    assert fewer_steps_for_budget(3, 0.1) == 1
    from search_spaces import UNetSpace

    space = UNetSpace.from_unet(build_tiny_attn_unet())
    full = space.macs(space.full())
    arch, frac = uniform_fraction_arch(space, 0.5)
    assert space.macs(arch) <= 0.5 * full
    larger = sorted({round(c / d.full, 6) for d in space.dimensions() if not isinstance(d.full, bool)
                     for c in d.choices if c / d.full > frac + 1e-9})
    for f in larger:  # every wider uniform arch is over the budget
        assert space.macs(space.uniform(f)) > 0.5 * full
    assert uniform_fraction_arch(space, 1e-6) is None
