"""Stage keys hash what a stage computes, not where or how fast it runs."""

from __future__ import annotations

from nas.config import load_config
from nas.run import stage_key


def test_expert_execution_keys_leave_every_stage_key_unchanged():
    plain = load_config(preset="demo")
    ray = load_config(preset="demo", overrides=["experts.parallel=true", "experts.cpus_per_task=2",
                                                 "experts.max_retries=5"])
    for stage in ("base", "intervals", "experts", "router", "search", "finetune", "bench", "report"):
        assert stage_key(plain, stage) == stage_key(ray, stage), stage
    # what the experts learn does change it
    longer = load_config(preset="demo", overrides=["experts.train_steps=61"])
    assert stage_key(plain, "experts") != stage_key(longer, "experts")
    assert stage_key(plain, "intervals") == stage_key(longer, "intervals")
