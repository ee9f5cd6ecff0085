"""An interrupt (Ctrl-C, or SIGTERM raised by the CLI) landing inside a checkpoint's swap or its
clean-up leaves one complete checkpoint and no ``.tmp``/``.old`` folder (the base model's and the
experts' checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from experts import checkpoint as expert_ckpt
from nas import embedded


def _save(ckpt: Path, step: int) -> None:
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(net.parameters())
    ema = {k: v.clone() for k, v in net.state_dict().items()}
    embedded._save_checkpoint(ckpt, step, net, ema, opt, torch.Generator().manual_seed(0), {"seed": 0}, "d", 0.0)


def _leftovers(ckpt: Path) -> list[str]:
    return sorted(p.name for p in ckpt.parent.iterdir() if p.name.endswith((".tmp", ".old")))


def test_an_interrupt_between_the_renames_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoint"
    _save(ckpt, 1)
    real = Path.rename

    def rename(self, target):
        if self.name == "checkpoint.tmp":  # the old checkpoint is already moved aside
            raise KeyboardInterrupt
        return real(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        _save(ckpt, 2)
    assert json.loads((ckpt / "state.json").read_text())["step"] == 1
    assert _leftovers(ckpt) == []


def test_an_interrupt_inside_the_clean_up_finishes_it(tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoint"
    _save(ckpt, 1)
    real = expert_ckpt.remove_tree
    calls = []

    def remove_tree(path):
        calls.append(path.name)
        if path.name == "checkpoint.old" and calls.count("checkpoint.old") == 1:
            (path / "model.safetensors").unlink()
            raise KeyboardInterrupt  # half of .old removed
        return real(path)

    monkeypatch.setattr(expert_ckpt, "remove_tree", remove_tree)
    with pytest.raises(KeyboardInterrupt):
        _save(ckpt, 2)
    assert json.loads((ckpt / "state.json").read_text())["step"] == 2
    assert _leftovers(ckpt) == []
