"""The catalogue of bad inputs and damaged runs (issue 14): each case damages a copy of a tiny,
really trained run folder (or passes a bad input), runs one ``diffnas`` command in-process and
states the exit code and the fragments its single ``diffnas: error:`` line must hold.

Used by ``tests/reliability/test_catalogue.py`` (which also checks that every file that existed
before is byte-identical after) and by ``benchmarks/reliability_catalogue.py`` (the table).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

TINY = {
    "name": "tiny", "device": "cpu",
    "model": {"block_out_channels": [8, 16], "norm_num_groups": 4, "layers_per_block": 1, "train_steps": 20,
              "batch_size": 16, "checkpoint_every": 10},
    "sampling": {"num_steps": 4, "batch_size": 32, "num_images": 4},
    "intervals": {"grid_size": 6, "num_batches": 1, "batch_size": 16, "num_intervals": 2},
    "experts": {"train_steps": 3, "batch_size": 8, "random_archs": 1, "finetune_steps": 2,
                "finetune_batch_size": 8, "heldout_per_interval": 8, "checkpoint_every": 2},
    "router": {"budgets": [0.7], "steps": 2},
    "search": {"backend": "local", "budgets": [0.7], "n_trials": 2},
    "evaluation": {"num_samples": 16, "seeds": [0]},
    "bench": {"budgets": [0.7], "num_samples": 16, "latency_batch_size": 2, "latency_repeats": 1, "grid_images": 4},
}


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """``diffnas <args>`` in-process: (exit code, stdout, stderr)."""
    from nas.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def write_config(root: Path) -> Path:
    """The tiny config as YAML in ``root`` (run_root ``runs``, relative: commands run in ``root``)."""
    import yaml

    cfg = dict(TINY, run_root="runs")  # relative: the run is the same wherever the folder is copied
    root.mkdir(parents=True, exist_ok=True)
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def build_tiny_run(root: Path) -> Path:
    """Train the tiny run: base model, intervals, experts (seconds). Returns ``root``."""
    cfg = write_config(root)
    with _inside(root):
        for command in (["train-base"], ["intervals"], ["train-experts"]):
            code, _, err = run_cli([*command, "--config", str(cfg), "-q"])
            assert code == 0, err
    return root


@contextlib.contextmanager
def _inside(folder: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


# ---------------------------------------------------------------------------------------------
# damage helpers (each takes the work folder, returns nothing)

def _run(w: Path) -> Path:
    return w / "runs" / "tiny"


def _truncate(rel: str, size: int = 200) -> Callable[[Path], None]:
    def damage(w: Path) -> None:
        p = _run(w) / rel
        p.write_bytes(p.read_bytes()[:size])
    return damage


def _write(rel: str, text: str) -> Callable[[Path], None]:
    def damage(w: Path) -> None:
        (_run(w) / rel).write_text(text)
    return damage


def _expert_weights(k: int) -> str:
    return f"experts/expert_{k}/diffusion_pytorch_model.safetensors"


def _remove(rel: str) -> Callable[[Path], None]:
    def damage(w: Path) -> None:
        p = _run(w) / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return damage


def _both(*fns: Callable[[Path], None]) -> Callable[[Path], None]:
    def damage(w: Path) -> None:
        for fn in fns:
            fn(w)
    return damage


def _pickle_folder(w: Path) -> None:
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    m = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                    norm_num_groups=4, add_attention=False, down_block_types=("DownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D"))
    m.save_pretrained(w / "pickled", safe_serialization=False)


def _unet_folder(truncate: bool) -> Callable[[Path], None]:
    def make(w: Path) -> None:
        import torch
        from diffusers import UNet2DModel

        torch.manual_seed(0)
        m = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                        layers_per_block=1, norm_num_groups=4, add_attention=False,
                        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
        m.save_pretrained(w / "unet", safe_serialization=True)
        if truncate:
            f = w / "unet" / "diffusion_pytorch_model.safetensors"
            f.write_bytes(f.read_bytes()[:300])
    return make


def _empty_folder(w: Path) -> None:
    (w / "empty").mkdir()


def _allocation(text: str) -> Callable[[Path], None]:
    def make(w: Path) -> None:
        (w / "alloc.json").write_text(text)
    return make


def _nothing(w: Path) -> None:
    return None


def _bad_yaml(w: Path) -> None:
    (w / "bad.yaml").write_text("model: [unclosed\n")


def _folder_data(w: Path) -> None:
    return None


@dataclass(frozen=True)
class Case:
    """One bad input or damaged run.

    Attributes:
        name: short id (the test id and the table's first column).
        area: config, data, models, run artefacts, signals.
        args: the command and its options; ``{cfg}`` is the tiny config, ``{w}`` the work folder.
        damage: what is done to the work folder (a copy of the tiny run) before the command.
        fragments: what the one error line must contain (``{w}`` as in args).
        code: the expected exit status.
        needs_run: the case works on a copy of the trained tiny run (else an empty work folder).
    """

    name: str
    area: str
    args: tuple[str, ...]
    fragments: tuple[str, ...]
    damage: Callable[[Path], None] = _nothing
    code: int = 2
    needs_run: bool = True
    slow: bool = False
    extra: dict = field(default_factory=dict)


C = "{cfg}"
CASES: tuple[Case, ...] = (
    # ---- config -------------------------------------------------------------------------------
    Case("unknown config key", "config", ("config", "--set", "model.trian_steps=3"),
         ("model.trian_steps", "model.train_steps"), needs_run=False),
    Case("wrong value type", "config", ("config", "--set", "sampling.num_steps=many"),
         ("sampling.num_steps",), needs_run=False),
    Case("negative budget", "config", ("config", "--set", "router.budgets=[-0.5]"), ("budgets",), needs_run=False),
    Case("unknown preset", "config", ("config", "--preset", "nosuch"), ("nosuch",), needs_run=False),
    Case("missing config file", "config", ("config", "--config", "{w}/nope.yaml"), ("nope.yaml",), needs_run=False),
    Case("broken YAML config", "config", ("config", "--config", "{w}/bad.yaml"), ("bad.yaml",),
         damage=_bad_yaml, needs_run=False),
    Case("bad run name", "config", ("config", "--name", "../escape"), ("name",), needs_run=False),
    Case("model.train_steps=0", "config", ("train-base", "--config", C, "--set", "model.train_steps=0"),
         ("model.train_steps=0", "untrained"), needs_run=False),
    Case("unknown embedded model", "config", ("train-base", "--config", C, "--set", "model.base=embedded:faces"),
         ("embedded:faces",), needs_run=False),
    Case("unknown sampler", "config", ("config", "--set", "sampling.sampler=euler9"), ("sampling.sampler",),
         needs_run=False),
    Case("unknown device", "config", ("train-base", "--config", C, "--device", "tpu"), ("tpu",), needs_run=False),
    # ---- data ---------------------------------------------------------------------------------
    Case("missing data folder", "data", ("evaluate", "--config", C, "--set", "data.dataset=folder",
                                         "--set", "data.path={w}/no-images", "--set", "model.base={w}/unet"),
         ("no-images",), damage=_unet_folder(False), needs_run=False),
    Case("embedded model on folder data", "data", ("train-base", "--config", C, "--set", "data.dataset=folder",
                                                    "--set", "data.path={w}"),
         ("embedded:digits", "data.dataset"), needs_run=False),
    # ---- models -------------------------------------------------------------------------------
    Case("evaluate --model missing folder", "models", ("evaluate", "--config", C, "--model", "{w}/nope"),
         ("{w}/nope", "does not exist")),
    Case("sample --model missing folder", "models", ("sample", "--config", C, "--model", "{w}/nope"),
         ("{w}/nope", "does not exist")),
    Case("sample --model a file", "models", ("sample", "--config", C, "--model", "{w}/tiny.yaml"),
         ("tiny.yaml", "is a file")),
    Case("sample --model pickle-only folder", "models", ("sample", "--config", C, "--model", "{w}/pickled"),
         ("{w}/pickled", "pickled weights", "safe_serialization=True"), damage=_pickle_folder),
    Case("evaluate --model pickle-only folder", "models", ("evaluate", "--config", C, "--model", "{w}/pickled"),
         ("{w}/pickled", "pickled weights"), damage=_pickle_folder),
    Case("sample --model empty folder", "models", ("sample", "--config", C, "--model", "{w}/empty"),
         ("{w}/empty", "no model weights"), damage=_empty_folder),
    Case("sample --model truncated UNet weights", "models", ("sample", "--config", C, "--model", "{w}/unet"),
         ("{w}/unet/diffusion_pytorch_model.safetensors", "truncated"), damage=_unet_folder(True)),
    Case("base model folder with truncated weights", "models",
         ("train-base", "--config", C, "--set", "model.base={w}/unet"),
         ("{w}/unet",), damage=_unet_folder(True), needs_run=False),
    Case("base model folder missing", "models", ("train-base", "--config", C, "--set", "model.base={w}/nobase"),
         ("nobase",), needs_run=False),
    Case("base model folder is not a model", "models", ("train-base", "--config", C, "--set", "model.base={w}/empty"),
         ("{w}/empty", "not a diffusers model folder"), damage=_empty_folder, needs_run=False),
    # ---- run artefacts ------------------------------------------------------------------------
    Case("route: truncated expert weights", "run artefacts", ("route", "--config", C),
         (_expert_weights(0), "truncated", "train-experts --expert 0"), damage=_truncate(_expert_weights(0))),
    Case("route: expert weights of zero bytes", "run artefacts", ("route", "--config", C),
         (_expert_weights(1), "train-experts --expert 1"), damage=_truncate(_expert_weights(1), 0)),
    Case("search: truncated expert weights", "run artefacts", ("search", "--config", C),
         (_expert_weights(0), "truncated"), damage=_truncate(_expert_weights(0))),
    Case("route: truncated experts/intervals.json", "run artefacts", ("route", "--config", C),
         ("experts/intervals.json", "not valid JSON", "train-experts"), damage=_truncate("experts/intervals.json", 20)),
    Case("route: overlapping spans in experts/intervals.json", "run artefacts", ("route", "--config", C),
         ("experts/intervals.json", "overlap"),
         damage=_write("experts/intervals.json",
                       json.dumps({"num_train_timesteps": 1000, "boundaries": [333],
                                   "spans": [[0, 600], [333, 1000]]}))),
    Case("search: decreasing boundaries in experts/intervals.json", "run artefacts", ("search", "--config", C),
         ("experts/intervals.json", "strictly increasing"),
         damage=_write("experts/intervals.json", json.dumps({"num_train_timesteps": 1000, "boundaries": [600, 333]}))),
    Case("route: non-integer boundary in experts/intervals.json", "run artefacts", ("route", "--config", C),
         ("experts/intervals.json", "not an integer"),
         damage=_write("experts/intervals.json", json.dumps({"num_train_timesteps": 1000, "boundaries": ["a"]}))),
    Case("sample --model truncated supernet", "run artefacts",
         ("sample", "--config", C, "--model", "{w}/runs/tiny/experts/supernet"),
         ("experts/supernet/diffusion_pytorch_model.safetensors", "truncated"),
         damage=_truncate("experts/supernet/diffusion_pytorch_model.safetensors")),
    Case("sample --model truncated expert", "run artefacts",
         ("sample", "--config", C, "--model", "{w}/runs/tiny/experts/expert_1"),
         (_expert_weights(1), "truncated"), damage=_truncate(_expert_weights(1), 1000)),
    Case("train-experts: truncated run intervals.json", "run artefacts", ("train-experts", "--config", C),
         ("intervals.json", "diffnas intervals --force"), damage=_truncate("intervals.json", 30)),
    Case("train-experts: overlapping run intervals.json", "run artefacts", ("train-experts", "--config", C),
         ("intervals.json", "overlap"),
         damage=_write("intervals.json", json.dumps({"num_train_timesteps": 1000, "boundaries": [333],
                                                     "spans": [[0, 500], [333, 1000]]}))),
    Case("resume: truncated expert checkpoint weights", "run artefacts", ("train-experts", "--config", C),
         ("experts/checkpoints/expert_0/model.safetensors", "truncated", "restart"),
         damage=_both(_remove("experts/expert_0"), _truncate("experts/checkpoints/expert_0/model.safetensors", 100))),
    Case("resume: truncated expert checkpoint state.json", "run artefacts", ("train-experts", "--config", C),
         ("experts/checkpoints/expert_1/state.json", "not valid JSON"),
         damage=_both(_remove("experts/expert_1"), _truncate("experts/checkpoints/expert_1/state.json", 50))),
    Case("resume: truncated optimizer state", "run artefacts", ("train-experts", "--config", C),
         ("experts/checkpoints/expert_0/optimizer.safetensors",),
         damage=_both(_remove("experts/expert_0"), _truncate("experts/checkpoints/expert_0/optimizer.safetensors", 64))),
    Case("finetune: allocation file missing", "run artefacts",
         ("finetune", "--config", C, "--allocation", "{w}/none.json"), ("none.json", "does not exist")),
    Case("finetune: allocation not JSON", "run artefacts",
         ("finetune", "--config", C, "--allocation", "{w}/alloc.json"), ("alloc.json",), damage=_allocation("{oops")),
    Case("finetune: no experts trained", "run artefacts",
         ("finetune", "--config", C, "--allocation", "{w}/alloc.json"), ("train-experts",),
         damage=_both(_allocation(json.dumps({"method": "x", "budget_ratio": 0.5, "intervals": {
             "num_train_timesteps": 1000, "boundaries": [333]}, "archs": [{}, {}], "macs_per_expert": [1, 1],
             "steps_per_expert": [2, 2], "base_trajectory_macs": 4})), _remove("experts"))),
    Case("train-experts: no intervals yet", "run artefacts", ("train-experts", "--config", C),
         ("intervals.json", "diffnas intervals"), damage=_remove("intervals.json")),
    Case("bench: run folder does not exist", "run artefacts", ("bench", "--config", C, "--name", "empty"),
         ("empty", "does not exist", "train-base"), needs_run=False),
    Case("bench: run without a base model", "run artefacts", ("bench", "--config", C),
         ("no trained base model", "train-base"), damage=_remove("base")),
    Case("bench: base of another model config", "run artefacts",
         ("bench", "--config", C, "--set", "model.train_steps=21"), ("another model.* config",)),
    Case("report: run folder does not exist", "run artefacts", ("report", "{w}/runs/none"),
         ("none", "does not exist"), needs_run=False),
)


def resolve(case: Case, work: Path) -> tuple[list[str], list[str]]:
    """The case's command line and fragments with ``{cfg}``/``{w}`` filled in for ``work``."""
    cfg = str(work / "tiny.yaml")
    args = [a.replace("{cfg}", cfg).replace("{w}", str(work)) for a in case.args]
    frags = [f.replace("{w}", str(work)) for f in case.fragments]
    return args, frags


def prepare(case: Case, work: Path, built: Path | None) -> None:
    """Fill ``work``: a copy of the tiny run (or just the config), then the case's damage."""
    if case.needs_run and built is not None:
        shutil.copytree(built, work, dirs_exist_ok=True)
    write_config(work)
    case.damage(work)


def run_case(case: Case, work: Path, built: Path | None) -> dict:
    """Prepare, snapshot, run; returns code, the error lines, stderr and what changed."""
    prepare(case, work, built)
    before = snapshot(work)
    args, frags = resolve(case, work)
    with _inside(work):
        code, out, err = run_cli([*args, "-q"])
    after = snapshot(work)
    changed = sorted(k for k, v in before.items() if after.get(k) != v)
    lines = [ln for ln in err.splitlines() if ln.startswith("diffnas: ")]
    return {"code": code, "lines": lines, "err": err, "out": out, "changed": changed, "fragments": frags}
