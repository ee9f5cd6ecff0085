"""A run folder's config.yaml stores no absolute path: the same run under two roots writes the same bytes."""

from __future__ import annotations

from nas.config import load_config
from nas.run import RunDir


def test_config_yaml_leaves_out_run_root(tmp_path):
    texts = []
    for root in (tmp_path / "a" / "runs", tmp_path / "b" / "elsewhere"):
        cfg = load_config(preset="demo", overrides=[f"run_root={root}"])
        run = RunDir.from_config(cfg)
        run.write_config(cfg)
        texts.append(run.config_path.read_bytes())
    assert texts[0] == texts[1]
    assert b"run_root" not in texts[0] and str(tmp_path).encode() not in texts[0]
    # loading it back gives the same config but for where the run lives
    back = load_config(str(RunDir.from_config(cfg).config_path), [f"run_root={tmp_path / 'b' / 'elsewhere'}"])
    assert back == cfg
