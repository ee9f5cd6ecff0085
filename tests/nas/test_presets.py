"""The ``standard`` preset (issue 12's benchmark workload): it loads, resolves and meets the
workload's requirements, without training anything."""

from __future__ import annotations

from typing import Any

import yaml

from nas.config import config_to_dict, dump_config, load_config
from nas.embedded import build_embedded_unet, embedded_settings
from nas.run import all_stages, stage_key


def test_standard_preset_loads_and_round_trips(tmp_path):
    cfg = load_config(preset="standard")
    assert cfg.name == "standard"
    path = dump_config(cfg, tmp_path / "config.yaml")
    assert load_config(path) == cfg
    assert yaml.safe_load(path.read_text()) == config_to_dict(cfg)
    keys = {s.name: stage_key(cfg, s.name) for s in all_stages()}
    assert {"base", "intervals", "experts", "router", "search", "bench", "report"} <= set(keys)
    assert len(set(keys.values())) == len(keys)


def test_standard_preset_meets_the_workload_requirements():
    cfg = load_config(preset="standard")
    demo = load_config(preset="demo")
    assert cfg.sampling.num_steps == 50
    assert cfg.schedule.joint and cfg.schedule.steps_limit(cfg.sampling) == 50
    assert cfg.schedule.reference_steps == cfg.sampling.num_steps
    assert {0.1, 0.15, 0.3, 0.5} <= set(cfg.bench.budgets)
    # the router and search make allocations for exactly the budgets the bench compares
    assert tuple(cfg.search.budgets) == tuple(cfg.router.budgets) == tuple(cfg.bench.budgets)
    assert cfg.bench.num_samples >= 1000 and len(cfg.bench.seeds) >= 3
    assert {"router", "search", "uniform", "static", "base", "fewer_steps", "steps"} <= set(cfg.bench.methods)
    assert cfg.search.promote_top_k >= 1
    # every fewer-steps budget keeps at least one step of the 50
    assert all(int(b * cfg.sampling.num_steps) >= 1 for b in cfg.bench.budgets)
    # wider than the demo's base model, and more training for the experts
    assert all(w >= d for w, d in zip(cfg.model.block_out_channels, demo.model.block_out_channels))
    assert sum(cfg.model.block_out_channels) > sum(demo.model.block_out_channels)
    assert cfg.experts.train_steps > demo.experts.train_steps
    assert cfg.experts.finetune_steps > demo.experts.finetune_steps


def test_standard_base_model_is_over_parameterised_against_the_demo():
    def params(model_cfg: Any) -> int:
        unet = build_embedded_unet(embedded_settings(model_cfg))
        return sum(p.numel() for p in unet.parameters())

    std, demo = load_config(preset="standard").model, load_config(preset="demo").model
    assert params(std) >= 3 * params(demo)
