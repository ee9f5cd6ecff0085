"""Training loop, feasibility repair, allocation export and output files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from experts.allocation import Allocation
from experts import MixtureSpace
from router.output import allocation_filename, write_outputs
from router.settings import RouterSettings
from router.synthetic import SyntheticMixture
from router.feasibility import make_feasible
from router.train import train_router
from search_spaces import Dimension, ProductSpace, SimpleSpace
from search_spaces.errors import UserError


def _small_bench() -> SyntheticMixture:
    return SyntheticMixture.default(seed=0, num_experts=3, num_blocks=3, num_skips=1)


def _coupled_space() -> ProductSpace:
    """Non-additive MACs (a skipped block makes its width free) and a tied dimension."""
    dims = [
        Dimension("blk.width", (4, 8, 12, 16)),
        Dimension("blk.keep", (False, True), "depth"),
        Dimension("blk.partner", (False, True), "depth", tied_to="blk.keep"),
        Dimension("mid.width", (8, 16, 24)),
    ]
    part = SimpleSpace(dims, macs_fn=lambda a: 20 + (a["blk.width"] * 6 if a["blk.keep"] else 0) + 3 * a["mid.width"])
    return ProductSpace({"e0": part, "e1": part}, weights={"e0": 4, "e1": 6})


def _coupled_loss(space: ProductSpace):
    rng = np.random.default_rng(0)
    table = {d.name: torch.tensor(np.sort(rng.uniform(0, 1, len(d.choices)))[::-1].copy(), dtype=torch.float32)
             for d in space.free_dimensions()}

    def loss(w):
        return sum((w[n] * table[n].to(w[n].device)).sum() for n in w)

    return loss


@pytest.mark.parametrize("budget", [0.24, 0.37, 0.55, 0.9])
def test_repair_from_the_full_arch_never_exceeds_the_budget(budget):
    space = _coupled_space()
    loss_fn = _coupled_loss(space)
    from router.agent import one_hot_weights

    def arch_loss(a):
        return float(loss_fn(one_hot_weights(space, a)))

    full = space.macs(space.full())
    arch, rep, fill, exch, ev = make_feasible(space, space.full(), budget * full, arch_loss)
    space.validate(arch)
    assert space.macs(arch) <= budget * full
    assert rep >= 1 and ev >= 1
    max_steps = sum(len(d.choices) - 1 for d in space.free_dimensions()) + 1
    assert rep <= max_steps


def test_fill_leaves_no_single_upgrade_that_fits_and_helps():
    bench = _small_bench()
    cap = 0.5 * bench.base_macs
    arch, rep, fill, _, _ = make_feasible(bench.space, bench.space.smallest(), cap, bench.loss)
    assert rep == 0 and fill >= 1
    m, base = bench.space.macs(arch), bench.loss(arch)
    for d in bench.space.free_dimensions():
        for c in d.choices[d.index(arch[d.name]) + 1:]:
            cand = arch.with_values({d.name: c})
            assert bench.space.macs(cand) > cap or bench.loss(cand) >= base - 1e-12


def test_budget_below_the_smallest_arch_is_a_user_error():
    bench = _small_bench()
    with pytest.raises(UserError, match="smallest"):
        make_feasible(bench.space, bench.space.full(), 0.01 * bench.base_macs, bench.loss)
    with pytest.raises(UserError, match="smallest"):
        train_router(bench.space, bench.task_loss, [0.01], steps=1)


@pytest.mark.parametrize("kw,match", [
    ({"budgets": [1.5]}, "budget ratios"),
    ({"budgets": []}, "at least one"),
    ({"repair_score": "random"}, "repair_score"),
    ({"resource_mode": "square"}, "resource_mode"),
    ({"steps": -1}, "steps"),
])
def test_bad_settings_are_user_errors(kw, match):
    bench = _small_bench()
    args = {"budgets": [0.5], "steps": 1, **kw}
    with pytest.raises(UserError, match=match):
        train_router(bench.space, bench.task_loss, args.pop("budgets"), **args)


def test_settings_object_and_keywords_train_the_same_router():
    bench = _small_bench()
    kw = {"steps": 15, "seed": 4, "budget_conditioned": True, "budgets_per_step": 3, "resource_mode": "log_ratio"}
    by_keywords = train_router(bench.space, bench.task_loss, [0.4, 0.6], **kw)
    settings = RouterSettings(**kw)
    by_object = train_router(bench.space, bench.task_loss, [0.4, 0.6], settings)
    overridden = train_router(bench.space, bench.task_loss, [0.4, 0.6], RouterSettings(steps=3, seed=4),
                              **{k: v for k, v in kw.items() if k != "seed"})
    for res in (by_object, overridden):
        assert [o.arch for o in res.outcomes] == [o.arch for o in by_keywords.outcomes]
        assert [o.task_loss for o in res.outcomes] == [o.task_loss for o in by_keywords.outcomes]
        assert res.log == by_keywords.log and res.settings == by_keywords.settings
    with pytest.raises(TypeError, match="stpes"):
        train_router(bench.space, bench.task_loss, [0.5], stpes=3)


def test_training_is_seeded_and_every_outcome_fits_on_a_coupled_space():
    space = _coupled_space()
    loss_fn = _coupled_loss(space)
    runs = [train_router(space, loss_fn, [0.4, 0.75], steps=30, seed=5, log_every=5) for _ in range(2)]
    assert [o.arch for o in runs[0].outcomes] == [o.arch for o in runs[1].outcomes]
    assert [r["loss"] for r in runs[0].log] == pytest.approx([r["loss"] for r in runs[1].log])
    full = space.macs(space.full())
    for o in runs[0].outcomes:
        space.validate(o.arch)
        assert o.macs <= o.budget_ratio * full
        assert o.achieved_ratio == pytest.approx(o.macs / full)
    assert {r["run"] for r in runs[0].log} == {"budget=0.4", "budget=0.75"}


def test_logits_repair_spends_no_loss_evaluations():
    bench = _small_bench()
    res = train_router(bench.space, bench.task_loss, [0.45], steps=20, repair_score="logits")
    o = res.outcome(0.45)
    assert o.evaluations == 0
    assert o.macs <= 0.45 * bench.base_macs


def test_conditioned_agent_exports_every_budget_within_it():
    bench = _small_bench()
    budgets = [0.3, 0.45, 0.6]
    res = train_router(bench.space, bench.task_loss, budgets, steps=40, budget_conditioned=True,
                       batched_task_loss=bench.batched_task_loss)
    assert len(res.agents) == 1 and res.budget_conditioned
    for b in budgets:
        o = res.outcome(b)
        assert o.macs <= b * bench.base_macs
        assert res.settings["budget_range"][0] <= o.agent_budget_ratio <= res.settings["budget_range"][1]


def test_allocation_export_and_output_files(tmp_path):
    bench = _small_bench()
    budgets = [0.35, 0.6]
    res = train_router(bench.space, bench.task_loss, budgets, steps=20, log_every=4,
                       batched_task_loss=bench.batched_task_loss)
    paths = write_outputs(res, bench.mixture, tmp_path / "router",
                          sensitivity=[1.0, 2.0, 0.5], extra_info={"note": "test"})
    assert [p.name for p in paths] == [allocation_filename(b) for b in budgets] == ["router-0.35.json", "router-0.6.json"]
    for b, p in zip(budgets, paths):
        a = Allocation.load(p)
        assert a.method == "router" and a.budget_ratio == b and a.feasible
        assert a.steps_per_expert == bench.steps_per_expert
        assert a.base_trajectory_macs == bench.base_macs
        assert a.trajectory_macs == res.outcome(b).macs
        assert bench.mixture.from_allocation(a) == res.outcome(b).arch
        for key in ("repair_steps", "fill_steps", "exchange_steps", "train_seconds", "train_evaluations", "note"):
            assert key in a.info
        # the routing cost the bench reports covers training *and* this budget's repair/fill
        o = res.outcome(b)
        assert a.info["cost"]["evaluations"] == res.train_evaluations + o.evaluations
        assert a.info["cost"]["wall_s"] == pytest.approx(res.train_seconds + o.decode_seconds)
        assert o.decode_seconds > 0
        from benchmarks.bench import normalize_cost

        assert normalize_cost(a.info)["evaluations"] == a.info["cost"]["evaluations"]
    lines = (tmp_path / "router" / "train_log.jsonl").read_text().splitlines()
    assert len(lines) == len(res.log) and json.loads(lines[0])["step"] == 0
    summary = json.loads((tmp_path / "router" / "summary.json").read_text())
    assert [row["budget_ratio"] for row in summary["budgets"]] == budgets
    assert (tmp_path / "router" / "allocation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_outputs_need_a_mixture_space(tmp_path):
    space = SimpleSpace([Dimension("w", (1, 2, 3))], macs_fn=lambda a: a["w"])
    res = train_router(space, lambda w: (w["w"] * torch.tensor([2.0, 1.0, 0.0])).sum(), [0.7], steps=5)
    assert res.outcome(0.7).arch["w"] == 2
    with pytest.raises(TypeError, match="MixtureSpace"):
        write_outputs(res, space, tmp_path / "a")
    bench = _small_bench()
    res2 = train_router(bench.space, bench.task_loss, [0.5], steps=5)
    with pytest.raises(TypeError, match="MixtureSpace"):
        write_outputs(res2, bench.space, tmp_path / "b")
    rebuilt = MixtureSpace.from_product(bench.space, bench.intervals)
    old = write_outputs(res2, rebuilt, tmp_path / "c")
    new = write_outputs(res2, bench.mixture, tmp_path / "d")
    assert Allocation.load(old[0]) == Allocation.load(new[0]) == res2.allocation(bench.mixture, 0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_trains_on_cuda():
    bench = _small_bench()
    res = train_router(bench.space, bench.task_loss, [0.5], steps=20, device="cuda",
                       batched_task_loss=bench.batched_task_loss)
    assert res.outcome(0.5).macs <= 0.5 * bench.base_macs
    res_slow = train_router(bench.space, bench.task_loss, [0.5], steps=5, device="cuda")
    assert res_slow.outcome(0.5).macs <= 0.5 * bench.base_macs
