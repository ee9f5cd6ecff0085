"""The real search objective on a tiny run: the mixture space of trained experts, the proxy loss
(denoising + distillation on the held-out set) and FID for promoted trials, through
``diffnas search``."""

from __future__ import annotations

import pytest

from experts.allocation import Allocation
from experts.intervals import Intervals
from nas.cli import main
from nas.config import load_config
from nas.run import RunContext, RunDir
from nas.search import EvalContext, RECORD_KIND, uniform_width_arch
from nas.search_objective import mixture_problem
from tests.conftest import build_tiny_unet

IV = Intervals(1000, (400,))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run folder with a tiny base UNet, intervals, experts (0 elastic steps: each expert is the
    base model) and the held-out set."""
    root = tmp_path_factory.mktemp("search-obj")
    folder = root / "tiny-unet"
    build_tiny_unet().save_pretrained(folder, safe_serialization=True)
    overrides = [
        f"run_root={root / 'runs'}", "name=x", "device=cpu", f"model.base={folder}", "data.limit=64",
        "sampling.num_steps=4", "sampling.batch_size=8", "experts.train_steps=0", "experts.batch_size=4",
        "experts.heldout_per_interval=8", "evaluation.num_samples=8",
    ]
    run = RunDir(root / "runs", "x")
    IV.save(run.intervals_path)
    args = [a for o in overrides for a in ("--set", o)]
    assert main(["train-experts", *args, "-q"]) == 0
    return load_config(None, overrides), run, args


def test_mixture_space_is_one_part_per_expert_weighted_by_sampling_steps(tiny_run):
    cfg, run, _ = tiny_run
    problem = mixture_problem(RunContext(cfg, device="cpu"))
    space = problem.space
    assert list(space.parts) == ["e0", "e1"] and problem.intervals == IV
    assert sum(problem.steps_per_expert) == 4 and all(s > 0 for s in problem.steps_per_expert)
    assert [space.weights[p] for p in space.parts] == list(problem.steps_per_expert)
    one_call = space.parts["e0"].macs(space.parts["e0"].full())
    assert space.macs(space.full()) == one_call * 4  # trajectory MACs of the base model
    # the uniform baseline is the benchmark's: the same UNetSpace.uniform(f) for every expert
    from benchmarks.static_pruning import uniform_fraction_arch

    arch, _ = uniform_fraction_arch(space.parts["e0"], 0.5)
    assert uniform_width_arch(space, 0.5) == space.join({"e0": arch, "e1": arch})


def test_proxy_is_the_step_weighted_heldout_denoising_plus_distillation_loss(tiny_run):
    import torch

    from experts.denoising import training_scheduler
    from experts.losses import HeldOutSet, proxy_loss
    from experts.training import load_experts
    cfg, run, _ = tiny_run
    problem = mixture_problem(RunContext(cfg, device="cpu"))
    obj, space = problem.objective, problem.space
    ctx = EvalContext("s", 0, "k", "proxy")
    full = obj.evaluate(space.full(), "proxy", ctx)
    # untrained experts at the full arch are the base model: no distillation error
    assert full["distill"] == pytest.approx(0.0, abs=1e-10)
    heldout = HeldOutSet.load(run.experts_dir / "heldout.safetensors")
    sched = training_scheduler(RunContext(cfg, device="cpu", progress=False).base.scheduler_config)
    _, experts = load_experts(run.experts_dir)
    ref = proxy_loss(experts, [space.parts["e0"].full()] * 2, heldout, sched, step_weights=problem.steps_per_expert)
    assert full["denoise"] == pytest.approx(ref.total, rel=1e-5)
    assert full["denoise_per_interval"] == pytest.approx(list(ref.per_interval), rel=1e-5)
    small = obj.evaluate(space.smallest(), "proxy", ctx)
    assert small["distill"] > 0 and small["quality"] == pytest.approx(small["denoise"] + small["distill"])
    assert small["quality"] > full["quality"]
    # the loaded models are reused, and re-evaluation is deterministic
    assert obj.evaluate(space.smallest(), "proxy", ctx)["quality"] == small["quality"]
    assert torch.is_grad_enabled()


def test_diffnas_search_on_the_experts_writes_a_usable_allocation(tiny_run, capsys):
    from experts.mixture import MixtureOfExperts
    from nas.sampling import make_scheduler, sampling_timesteps

    cfg, run, args = tiny_run
    code = main(["search", *args, "--backend", "local", "--set", "search.n_trials=5",
                 "--set", "search.budgets=[0.6]", "--set", "search.promote_top_k=1", "-q"])
    out = capsys.readouterr().out
    assert code == 0, out
    recs = [r for r in run.read_results() if r.get("kind") == RECORD_KIND]
    proxy = [r for r in recs if r["fidelity"] == "proxy"]
    fid = [r for r in recs if r["fidelity"] == "fid"]
    assert len(proxy) == 5 and len({r["key"] for r in proxy}) == 5
    assert len(fid) == 1 and fid[0]["metrics"]["sampled_images"] == 8 and fid[0]["quality"] == fid[0]["metrics"]["fid"]
    uniform = next(r for r in proxy if r["source"] == "uniform")
    alloc = Allocation.load(run.allocations_dir / "search-0.6.json")
    assert alloc.feasible and alloc.info["selected_by"] == "fid" and alloc.info["key"] == fid[0]["key"]
    assert alloc.info["search_cost"]["sampled_images"] == 8 and alloc.info["search_cost"]["trials"] == 5
    assert min(r["quality"] for r in proxy if r["feasible"]) <= uniform["quality"]
    # the allocation builds the mixture the benchmark and `diffnas finetune` build, at its MACs
    mixture = MixtureOfExperts.from_allocation(alloc, run.experts_dir)
    sched = make_scheduler(cfg.sampling.sampler, RunContext(cfg, device="cpu", progress=False).base.scheduler_config)
    assert mixture.trajectory_macs(sampling_timesteps(sched, cfg.sampling.num_steps)) == alloc.trajectory_macs
    assert "study search-b0.6: 5 evaluated" in out


@pytest.mark.slow
def test_embedded_model_constrained_search_beats_uniform_width_and_mo_front_is_written(tmp_path, capsys):
    """The issue's check on the embedded (widths-demo) model, from scratch: base model, intervals,
    experts, then a constrained search at budget 0.5 and a multi-objective search. ~15-25 min on
    2 CPU cores."""
    common = ["--preset", "widths-demo", "--name", "emb", "--set", f"run_root={tmp_path}", "--device", "cpu", "-q"]
    for cmd in ("train-base", "intervals", "train-experts"):
        assert main([cmd, *common]) == 0, cmd
    run = RunDir(tmp_path, "emb")
    assert main(["search", *common, "--set", "search.budgets=[0.5]", "--set", "search.n_trials=24",
                 "--set", "search.promote_top_k=1"]) == 0
    proxy = [r for r in run.read_results() if r.get("kind") == RECORD_KIND and r["fidelity"] == "proxy"]
    uniform = next(r for r in proxy if r["source"] == "uniform")
    alloc = Allocation.load(run.allocations_dir / "search-0.5.json")
    assert alloc.feasible and alloc.achieved_ratio <= 0.5
    assert alloc.info["quality"] < uniform["quality"]  # lower proxy loss than uniform width
    cost = alloc.info["search_cost"]
    assert cost["trials"] == 24 and cost["wall_s_all_sessions"] > 0 and cost["sampled_images"] > 0
    assert main(["search", *common, "--set", "search.mode=multi_objective", "--set", "search.n_trials=16",
                 "--set", "search.budgets=[0.5, 0.7]", "--set", "search.promote_top_k=0"]) == 0
    front = (run.search_dir / "pareto-search-mo.json")
    assert front.is_file()
    import json as _json

    points = _json.loads(front.read_text())["points"]
    assert len(points) >= 2 and all(p["quality"] is not None for p in points)
    capsys.readouterr()


def test_joint_search_writes_allocations_with_schedules_within_budget_and_the_steps_baseline(tiny_run, capsys):
    import json

    from nas.search_run import StepsSearchDir

    cfg, run, args = tiny_run
    code = main(["search", *args, "--backend", "local", "--set", "search.n_trials=4",
                 "--set", "search.budgets=[0.6]", "--set", "search.promote_top_k=1", "--set", "schedule.joint=true",
                 "--set", "schedule.proxy_images=8", "--set", "schedule.reference_steps=6",
                 "--set", "search.study_prefix=joint", "-q"])
    out = capsys.readouterr().out
    assert code == 0, out
    ctx = RunContext(load_config(None, [*cfg_overrides(cfg), "schedule.joint=true"]), device="cpu", progress=False)
    recs = [r for r in run.read_results() if r.get("kind") == RECORD_KIND and r["study"] == "joint-b0.6"]
    proxy = [r for r in recs if r["fidelity"] == "proxy"]
    assert len(proxy) == 4 and all(r["metrics"]["proxy"] == "small_fid" for r in proxy)
    assert all(r["quality"] == r["metrics"]["small_fid"] and r["metrics"]["distance"] >= 0 for r in proxy)
    # known points first (the base's steps at full width is over the budget: skipped, not evaluated)
    assert [r["source"] for r in proxy[:2]] == ["uniform", "fewer_steps"]
    assert proxy[1]["macs_ratio"] == pytest.approx(0.5) and proxy[1]["metrics"]["num_steps"] == 2
    fid = [r for r in recs if r["fidelity"] == "fid"]
    assert len(fid) == 1 and fid[0]["metrics"]["num_steps"] == sum(fid[0]["metrics"]["steps_per_interval"])
    for method in ("search", "steps"):
        alloc = Allocation.load(run.allocations_dir / f"{method}-0.6.json")
        assert alloc.schedule is not None and alloc.method == method
        assert alloc.base_trajectory_macs == ctx.base_traj and alloc.trajectory_macs <= 0.6 * ctx.base_traj
        assert alloc.steps_per_expert == alloc.schedule.steps_per_interval
        assert alloc.trajectory_macs == sum(m * s for m, s in zip(alloc.macs_per_expert, alloc.steps_per_expert))
        assert json.loads((run.allocations_dir / f"{method}-0.6.json").read_text())["schedule"]
    steps = Allocation.load(run.allocations_dir / "steps-0.6.json")
    full = [e.space.full() for e in ctx.experts()[1]]
    assert list(steps.archs) == full  # the base model's shape: only the steps were searched
    assert (StepsSearchDir(run.root, run.name).search_dir / "summary.json").is_file()
    assert ctx.run.proxy_dir.is_dir() and len(list(ctx.run.proxy_dir.glob("reference-*.pt"))) == 1


def cfg_overrides(cfg):
    return [f"run_root={cfg.run_root}", f"name={cfg.name}", "device=cpu", f"model.base={cfg.model.base}",
            "data.limit=64", "sampling.num_steps=4", "sampling.batch_size=8", "experts.train_steps=0",
            "experts.batch_size=4", "experts.heldout_per_interval=8", "evaluation.num_samples=8"]
