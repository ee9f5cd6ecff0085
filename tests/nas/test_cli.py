"""The command line: help for everything, one-line user errors with exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from nas.cli import build_parser, main
from nas.config import load_config
from nas.commands import all_commands

BASE_COMMANDS = ("train-base", "sample", "evaluate")


def test_top_level_help_lists_the_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: diffnas" in out
    for name in BASE_COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(all_commands()))
def test_every_command_has_help_with_the_common_options(name, capsys):
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"usage: diffnas {name}" in out
    for option in ("--config", "--preset", "--set", "--name", "--device", "--verbose"):
        assert option in out


def test_base_commands_are_registered():
    assert set(BASE_COMMANDS) <= set(all_commands())


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2
    assert "choose a command" in capsys.readouterr().err


def test_unknown_command_is_a_usage_error(capsys):
    assert main(["trian-base"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def _assert_one_line_error(capsys, code, *fragments):
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("diffnas: error: ")
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    for fragment in fragments:
        assert fragment in lines[0]


def test_bad_config_key_is_one_line(capsys, tmp_path):
    code = main(["train-base", "--set", "model.trian_steps=5", "--set", f"run_root={tmp_path}"])
    _assert_one_line_error(capsys, code, "unknown config key 'model.trian_steps'", "model.train_steps")


def test_bad_config_file_key_is_one_line(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sampling:\n  num_steps: many\n")
    code = main(["sample", "--config", str(path)])
    _assert_one_line_error(capsys, code, "config key 'sampling.num_steps' must be an int, got 'many'")


def test_missing_data_folder_is_one_line(capsys, tmp_path):
    missing = tmp_path / "no-such-folder"
    code = main(["evaluate", "--set", "data.dataset=folder", "--set", f"data.path={missing}",
                 "--set", f"run_root={tmp_path}", "--device", "cpu"])
    # the data folder is checked first, before the feature extractor or any model work
    _assert_one_line_error(capsys, code, "no-such-folder", "does not exist")


def test_unavailable_device_and_bad_name_are_one_line(capsys, tmp_path):
    code = main(["train-base", "--device", "tpu", "--set", f"run_root={tmp_path}"])
    _assert_one_line_error(capsys, code, "unknown device 'tpu'")
    code = main(["train-base", "--name", "a/b", "--set", f"run_root={tmp_path}"])
    _assert_one_line_error(capsys, code, "config key 'name'")


def test_unknown_preset_is_one_line(capsys):
    code = main(["config", "--preset", "nope"])
    _assert_one_line_error(capsys, code, "unknown preset 'nope'", "demo")


def test_config_command_prints_the_resolved_yaml(capsys):
    code = main(["config", "--preset", "demo", "--set", "sampling.num_steps=7", "--name", "x1", "--device", "cpu"])
    assert code == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["sampling"]["num_steps"] == 7
    assert data["name"] == "x1"
    assert data["device"] == "cpu"


def test_parser_keeps_repeated_set_options():
    args = build_parser().parse_args(["sample", "--set", "a=1", "--set", "b=2"])
    assert args.overrides == ["a=1", "b=2"]


def test_python_dash_m_nas_reports_user_errors_with_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "nas", "config", "--set", "sampling.nun_steps=3"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "diffnas: error: unknown config key 'sampling.nun_steps' (did you mean 'sampling.num_steps'?)"
    )


def test_unavailable_inception_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("DIFFNAS_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.delenv("DIFFNAS_ALLOW_DOWNLOAD", raising=False)
    code = main(["evaluate", "--set", "evaluation.extractor=inception", "--set", f"run_root={tmp_path}",
                 "--device", "cpu"])
    _assert_one_line_error(capsys, code, "Inception")


def _tiny_unet_folder(tmp_path):
    from tests.conftest import build_tiny_unet

    folder = tmp_path / "tiny-unet"
    build_tiny_unet().save_pretrained(folder, safe_serialization=True)
    return folder


def test_sample_and_evaluate_a_local_unet_folder(capsys, tmp_path):
    """Wiring of sample/evaluate on a bare local UNet folder (no training): grid, table, records."""
    from PIL import Image

    from nas.run import RunDir

    folder = _tiny_unet_folder(tmp_path)
    common = ["--set", f"run_root={tmp_path / 'runs'}", "--name", "w", "--device", "cpu",
              "--set", f"model.base={folder}", "--set", "sampling.num_steps=2", "--set", "sampling.batch_size=8"]
    assert main(["sample", *common, "--set", "sampling.num_images=6", "-q"]) == 0
    out = capsys.readouterr().out
    grid = tmp_path / "runs" / "w" / "samples" / "base-ddim-2steps-seed0.png"
    assert f"wrote 6 samples to {grid}" in out
    with Image.open(grid) as im:
        assert im.size[0] > 3 * 16 and im.size[1] > 2 * 16  # 3x2 tiles, upscaled

    code = main(["evaluate", *common, "--set", "evaluation.num_samples=8", "--set", "evaluation.seeds=[0, 1]",
                 "--set", "evaluation.latency_batch_size=2", "--set", "evaluation.latency_repeats=1",
                 "--compare-untrained", "-q"])
    assert code == 0
    out = capsys.readouterr().out
    assert "MACs/trajectory" in out and "untrained" in out and "digits" in out
    run = RunDir(tmp_path / "runs", "w")
    records = run.read_results()
    assert [r["model"] for r in records] == ["base", "untrained"]
    for r in records:
        assert r["extractor"] == "digits"
        assert r["num_generated"] == 8 and r["num_reference"] == 1797
        assert r["seeds"] == [0, 1] and len(r["fid_per_seed"]) == 2 and r["fid_std"] is not None
        assert r["macs_per_trajectory"] == 2 * r["macs_per_call"] > 0
        assert r["fid"] > 0
    assert records[0]["latency_ms_per_image"] > 0 and records[1]["latency_ms_per_image"] is None
    assert load_config(run.config_path).model.base == str(folder)


@pytest.mark.slow
def test_train_base_then_reuse_then_evaluate_embedded(capsys, tmp_path):
    """The embedded model trains (tiny settings), is reused on the next call, and evaluates."""
    common = ["--set", f"run_root={tmp_path}", "--name", "e", "--device", "cpu",
              "--set", "model.train_steps=6", "--set", "model.checkpoint_every=3",
              "--set", "model.block_out_channels=[8, 16]", "--set", "model.norm_num_groups=4",
              "--set", "model.layers_per_block=1", "--set", "model.attention=false",
              "--set", "sampling.num_steps=2", "-q"]
    assert main(["train-base", *common]) == 0
    first = capsys.readouterr().out
    assert "base model: embedded:digits (UNet2DModel" in first and "(1, 16, 16)" in first
    assert main(["train-base", *common]) == 0  # reused: same folder, no new training
    assert capsys.readouterr().out == first
    assert main(["evaluate", *common, "--set", "evaluation.num_samples=8",
                 "--set", "evaluation.latency_batch_size=2", "--set", "evaluation.latency_repeats=1"]) == 0
    assert "base" in capsys.readouterr().out


def test_threads_setting_applies_and_does_not_change_stage_keys(capsys):
    import torch

    from nas.run import stage_key

    before = torch.get_num_threads()
    try:
        assert main(["config", "--set", "threads=1"]) == 0
        assert yaml.safe_load(capsys.readouterr().out)["threads"] == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    code = main(["config", "--set", "threads=-1"])
    _assert_one_line_error(capsys, code, "config key 'threads'")
    a, b = load_config(None, []), load_config(None, ["threads=3"])
    assert all(stage_key(a, s) == stage_key(b, s) for s in ("base", "experts", "bench"))
