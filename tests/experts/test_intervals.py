"""Interval discovery: segmentation DP, k selection, timestep similarity, the CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from experts.discovery import (
    IntervalDiscovery,
    boundaries_from_starts,
    intervals_from_similarity,
    plot_similarity,
    timestep_grid,
)
from experts.intervals import Intervals
from experts.segmentation import (
    choose_num_segments,
    optimal_segmentations,
    segment_similarity,
    segmentation_cost,
)
from experts.sketch import CountSketch
from experts.similarity import activation_similarity, gradient_similarity, timestep_similarity
from experts.timestep_batches import fixed_batches, make_training_scheduler
from tests.conftest import build_tiny_cond_unet, build_tiny_unet

# --------------------------------------------------------------------------------------------
# synthetic similarity matrices


def block_matrix(sizes, within=0.8, between=0.1, noise=0.05, seed=0) -> np.ndarray:
    """A symmetric similarity matrix with contiguous blocks of the given sizes, plus noise."""
    rng = np.random.default_rng(seed)
    G = sum(sizes)
    S = np.full((G, G), between)
    start = 0
    for n in sizes:
        S[start:start + n, start:start + n] = within
        start += n
    E = rng.normal(0.0, noise, (G, G))
    S = np.clip(S + (E + E.T) / 2, -1, 1)
    np.fill_diagonal(S, 1.0)
    return S


def starts_of(sizes) -> tuple[int, ...]:
    return tuple(int(x) for x in np.cumsum([0, *sizes[:-1]]))


LAYOUTS = [(4, 7, 3, 6), (10, 10), (2, 5, 5, 8), (6, 6, 6), (3, 4, 3, 4, 6)]


@pytest.mark.parametrize("sizes", LAYOUTS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fixed_k_recovers_exact_blocks(sizes, seed):
    S = block_matrix(sizes, seed=seed)
    seg = segment_similarity(S, num_segments=len(sizes))
    assert seg.starts == starts_of(sizes)
    assert seg.criterion == "fixed"


@pytest.mark.parametrize("sizes", LAYOUTS)
@pytest.mark.parametrize("criterion", ["elbow", "ch"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auto_k_recovers_exact_blocks(sizes, criterion, seed):
    S = block_matrix(sizes, seed=seed)
    seg = segment_similarity(S, num_segments="auto", max_segments=6, criterion=criterion)
    assert seg.num_segments == len(sizes)
    assert seg.starts == starts_of(sizes)
    assert seg.criterion == criterion
    assert len(seg.costs) == 6 and all(b <= a + 1e-12 for a, b in zip(seg.costs, seg.costs[1:]))


def test_auto_k_with_weak_contrast_and_more_noise():
    """Blocks that differ less, with more noise, are still found (elbow, the default)."""
    sizes = (5, 9, 6)
    S = block_matrix(sizes, within=0.6, between=0.3, noise=0.08, seed=3)
    seg = segment_similarity(S)
    assert seg.starts == starts_of(sizes)


def test_structureless_matrix_stays_one_interval():
    S = np.full((12, 12), 0.5)
    np.fill_diagonal(S, 1.0)
    seg = segment_similarity(S, criterion="elbow")
    assert seg.num_segments == 1 and seg.starts == (0,)
    identical = np.ones((7, 7))
    assert segment_similarity(identical).num_segments == 1


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_dp_is_optimal_against_brute_force(seed):
    """For every k, the DP cost equals the minimum over all C(G-1, k-1) contiguous splits."""
    rng = np.random.default_rng(seed)
    G = 8
    X = rng.normal(size=(G, 3))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    S = X @ X.T if seed % 2 == 0 else block_matrix((3, 5), noise=0.3, seed=seed)  # PSD and a noisy non-PSD case
    costs, starts = optimal_segmentations(S)
    assert len(costs) == G
    for k in range(1, G + 1):
        brute = min(
            segmentation_cost(S, (0, *cuts)) for cuts in itertools.combinations(range(1, G), k - 1)
        )
        assert costs[k - 1] == pytest.approx(brute, abs=1e-9)
        assert segmentation_cost(S, starts[k - 1]) == pytest.approx(costs[k - 1], abs=1e-9)
    assert costs[-1] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("min_size", [2, 3])
def test_dp_with_min_size_is_optimal_against_brute_force(min_size):
    rng = np.random.default_rng(7)
    G = 9
    X = rng.normal(size=(G, 3))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    S = X @ X.T
    costs, starts = optimal_segmentations(S, min_size=min_size)
    assert len(costs) == G // min_size
    for k in range(1, G // min_size + 1):
        feasible = [
            (0, *cuts) for cuts in itertools.combinations(range(1, G), k - 1)
            if all(b - a >= min_size for a, b in zip((0, *cuts), (*cuts, G)))
        ]
        assert costs[k - 1] == pytest.approx(min(segmentation_cost(S, st) for st in feasible), abs=1e-9)
        ends = (*starts[k - 1][1:], G)
        assert all(b - a >= min_size for a, b in zip(starts[k - 1], ends))


def test_min_size_forbids_single_point_intervals():
    S = block_matrix((5, 1, 6), seed=0)  # a lone odd grid point
    assert segment_similarity(S, num_segments=3).starts == (0, 5, 6)
    seg = segment_similarity(S, num_segments=3, min_size=2)
    ends = (*seg.starts[1:], 12)
    assert all(b - a >= 2 for a, b in zip(seg.starts, ends)) and seg.min_size == 2
    assert segment_similarity(S, min_size=2, max_segments=6).num_segments <= 6
    with pytest.raises(ValueError, match=r"num_segments must be in \[1, 4\]"):
        segment_similarity(S, num_segments=5, min_size=3)


def test_segment_cost_is_kmeans_inertia_of_unit_vectors():
    """W(A) equals the sum of squared distances of the unit vectors to their segment mean."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(6, 4))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    S = X @ X.T
    for starts in [(0,), (0, 2), (0, 1, 4)]:
        ends = (*starts[1:], 6)
        inertia = sum(((X[a:b] - X[a:b].mean(0)) ** 2).sum() for a, b in zip(starts, ends))
        assert segmentation_cost(S, starts) == pytest.approx(inertia)  # sum_ab ||u_a-u_b||^2 = 2n inertia


def test_choose_num_segments_respects_max_and_criteria():
    costs = [10.0, 4.0, 1.0, 0.9, 0.8, 0.7]
    assert choose_num_segments(costs, grid_size=20, max_segments=6)[0] == 3
    assert choose_num_segments(costs, grid_size=20, max_segments=2)[0] == 2
    assert choose_num_segments(costs, grid_size=20, criterion="ch", max_segments=6)[0] >= 2
    k, scores = choose_num_segments(costs, grid_size=20, criterion="ch", max_segments=1)
    assert k == 1
    # a large penalty keeps one interval
    assert choose_num_segments(costs, grid_size=20, max_segments=6, penalty=100.0)[0] == 1
    with pytest.raises(ValueError, match="criterion"):
        choose_num_segments(costs, grid_size=20, criterion="bic")


def test_segmentation_rejects_bad_input():
    S = block_matrix((3, 3))
    with pytest.raises(ValueError, match=r"num_segments must be in \[1, 6\]"):
        segment_similarity(S, num_segments=7)
    with pytest.raises(ValueError, match="square"):
        segment_similarity(np.ones((2, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        segment_similarity(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="starts"):
        segmentation_cost(S, (1, 3))


# --------------------------------------------------------------------------------------------
# intervals from a matrix, the record, the plot


def test_grid_and_boundaries_in_training_timesteps():
    grid = timestep_grid(1000, 20)
    assert grid[0] == 25 and grid[-1] == 975 and len(set(grid)) == 20
    assert all(0 <= t < 1000 for t in timestep_grid(10, 10))
    assert boundaries_from_starts([3, 4, 9], [0, 1, 2]) == (4, 7)  # t0 < b <= t1 even for neighbours
    with pytest.raises(ValueError, match="grid_size"):
        timestep_grid(10, 11)


def test_block_matrix_gives_intervals_at_grid_midpoints(tmp_path):
    sizes = (4, 7, 3, 6)
    S = block_matrix(sizes)
    d = intervals_from_similarity(S, timestep_grid(1000, 20), 1000, measure="gradient")
    assert d.intervals == Intervals(1000, (200, 550, 700))
    assert [d.intervals.index(t) for t in d.timesteps] == list(d.segmentation.labels())
    path = d.save(tmp_path / "intervals.json")
    assert IntervalDiscovery.load(path) == d
    assert Intervals.load(path) == d.intervals  # intervals.json is also a plain Intervals file
    data = json.loads(path.read_text())
    assert data["num_intervals"] == 4 and data["criterion"] == "elbow" and len(data["similarity"]) == 20
    assert len(data["segmentation"]["costs"]) == 6
    png = plot_similarity(d, tmp_path / "similarity.png")
    assert png.stat().st_size > 10_000


# --------------------------------------------------------------------------------------------
# timestep similarity on tiny UNets


def _images(n=16, channels=1, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g) * 2 - 1


def _check_similarity(S, G):
    assert S.shape == (G, G)
    assert np.allclose(S, S.T)
    assert np.allclose(np.diag(S), 1.0)
    assert S.min() >= -1.0 and S.max() <= 1.0
    off = S[~np.eye(G, dtype=bool)]
    assert off.max() < 0.9999  # timesteps are not all the same task


def test_gradient_similarity_on_tiny_unet_is_a_cosine_matrix_and_seeded():
    unet = build_tiny_unet()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    flags = [p.requires_grad for p in unet.parameters()]
    unet.train()
    ts = [10, 300, 600, 990]
    kw = dict(num_batches=2, batch_size=4, progress=False)
    S1 = timestep_similarity(unet, _images(), {"num_train_timesteps": 1000}, ts, seed=0, **kw)
    _check_similarity(S1, 4)
    S2 = timestep_similarity(unet, _images(), {"num_train_timesteps": 1000}, ts, seed=0, **kw)
    assert np.array_equal(S1, S2)
    S3 = timestep_similarity(unet, _images(), {"num_train_timesteps": 1000}, ts, seed=1, **kw)
    assert not np.allclose(S1, S3)
    # the model is left as it was
    assert unet.training
    assert [p.requires_grad for p in unet.parameters()] == flags
    assert all(p.grad is None for p in unet.parameters())
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())


def test_gradient_aggregates_per_batch_and_mean():
    unet = build_tiny_unet()
    sched = make_training_scheduler({"num_train_timesteps": 1000})
    ts = [20, 500, 980]
    one = fixed_batches(_images(), 1, 4, seed=0)
    # with one batch the two aggregates are the same quantity
    a = gradient_similarity(unet, one, sched, ts, aggregate="per_batch", progress=False)
    b = gradient_similarity(unet, one, sched, ts, aggregate="mean", progress=False)
    assert np.allclose(a, b, atol=1e-6)
    two = fixed_batches(_images(), 2, 4, seed=0)
    per_batch = gradient_similarity(unet, two, sched, ts, aggregate="per_batch", progress=False)
    mean = gradient_similarity(unet, two, sched, ts, aggregate="mean", progress=False)
    _check_similarity(per_batch, 3)
    _check_similarity(mean, 3)
    # per_batch is the average of the single-batch matrices
    singles = [gradient_similarity(unet, [bt], sched, ts, progress=False) for bt in two]
    assert np.allclose(per_batch, (singles[0] + singles[1]) / 2, atol=1e-6)
    assert not np.allclose(per_batch, mean, atol=1e-3)
    with pytest.raises(ValueError, match="aggregate"):
        gradient_similarity(unet, one, sched, ts, aggregate="median", progress=False)


def test_count_sketch_approximates_exact_gradient_similarity():
    unet = build_tiny_unet()
    sched = make_training_scheduler({"num_train_timesteps": 1000})
    batches = fixed_batches(_images(), 1, 4, seed=0)
    ts = [20, 500, 980]
    exact = gradient_similarity(unet, batches, sched, ts, projection_dim=None, progress=False)
    sketched = gradient_similarity(unet, batches, sched, ts, projection_dim=8192, progress=False)
    _check_similarity(sketched, 3)
    assert np.abs(exact - sketched).max() < 0.1
    assert not np.array_equal(exact, sketched)


def test_count_sketch_preserves_inner_products():
    p = [torch.nn.Parameter(torch.zeros(3000)), torch.nn.Parameter(torch.zeros(50, 40))]
    cs = CountSketch(p, dim=4096, seed=0)
    g = torch.Generator().manual_seed(0)
    a = [torch.randn(3000, generator=g), torch.randn(50, 40, generator=g)]
    b = [x + 0.5 * torch.randn(x.shape, generator=g) for x in a]
    flat = lambda v: torch.cat([x.reshape(-1) for x in v])  # noqa: E731
    exact = float(torch.nn.functional.cosine_similarity(flat(a), flat(b), dim=0))
    approx = float(torch.nn.functional.cosine_similarity(cs(a), cs(b), dim=0))
    assert approx == pytest.approx(exact, abs=0.05)


def test_activation_similarity_on_tiny_unet():
    unet = build_tiny_unet()
    sched = make_training_scheduler({"num_train_timesteps": 1000})
    batches = fixed_batches(_images(), 2, 4, seed=0)
    ts = [10, 400, 800, 990]
    S = activation_similarity(unet, batches, sched, ts, progress=False)
    _check_similarity(S, 4)
    assert np.array_equal(S, activation_similarity(unet, batches, sched, ts, progress=False))
    S_down = activation_similarity(unet, batches, sched, ts, module="down_blocks.0", progress=False)
    _check_similarity(S_down, 4)
    with pytest.raises(ValueError, match="no module named 'mid_blok'"):
        activation_similarity(unet, batches, sched, ts, module="mid_blok", progress=False)


def test_gradient_similarity_on_conditional_unet_with_context():
    unet = build_tiny_cond_unet()
    ctx = torch.zeros(1, 1, unet.config.cross_attention_dim)
    S = timestep_similarity(
        unet, _images(8, channels=4, size=8), {"num_train_timesteps": 1000}, [50, 500, 950], num_batches=1,
        batch_size=4, unet_kwargs=lambda b: {"encoder_hidden_states": ctx.expand(b, 1, -1)}, progress=False,
    )
    _check_similarity(S, 3)


def test_v_prediction_target_and_bad_inputs():
    unet = build_tiny_unet()
    cfg = {"num_train_timesteps": 100, "prediction_type": "v_prediction"}
    S = timestep_similarity(unet, _images(), cfg, [5, 50, 95], num_batches=1, batch_size=4, progress=False)
    _check_similarity(S, 3)
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 100\)"):
        timestep_similarity(unet, _images(), cfg, [5, 100], num_batches=1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="measure"):
        timestep_similarity(unet, _images(), cfg, [5, 50], measure="weights", progress=False)


# --------------------------------------------------------------------------------------------
# the CLI


def test_cli_intervals_writes_json_and_png_and_reuses(capsys, tmp_path):
    from nas.cli import main
    from nas.run import RunDir

    folder = tmp_path / "tiny-unet"
    build_tiny_unet().save_pretrained(folder, safe_serialization=True)
    common = ["--set", f"run_root={tmp_path / 'runs'}", "--name", "iv", "--device", "cpu",
              "--set", f"model.base={folder}", "--set", "intervals.grid_size=6",
              "--set", "intervals.num_batches=1", "--set", "intervals.batch_size=8", "-q"]
    assert main(["intervals", *common]) == 0
    out = capsys.readouterr().out
    run = RunDir(tmp_path / "runs", "iv")
    assert run.intervals_path.is_file() and run.similarity_path.is_file()
    d = IntervalDiscovery.load(run.intervals_path)
    assert len(d.timesteps) == 6 and d.measure == "gradient" and d.settings["num_passes"] == 6
    _check_similarity(d.matrix, 6)
    assert "measured in" in out and "gradient similarity on 6 timesteps" in out
    assert d.intervals.spans()[0][0] == 0 and f"[0, {d.intervals.spans()[0][1]})" in out
    assert Intervals.load(run.intervals_path) == d.intervals

    # same settings: reused, nothing measured
    assert main(["intervals", *common]) == 0
    out = capsys.readouterr().out
    assert "reused stored matrix" in out
    assert IntervalDiscovery.load(run.intervals_path) == d

    # only the segmentation changes: the matrix is reused, k is as asked
    assert main(["intervals", *common, "--set", "intervals.num_intervals=2"]) == 0
    out = capsys.readouterr().out
    d2 = IntervalDiscovery.load(run.intervals_path)
    assert "reused stored matrix" in out and d2.num_intervals == 2 and d2.segmentation.criterion == "fixed"
    assert np.array_equal(d2.matrix, d.matrix)

    # a measurement setting changes: measured again (activation measure)
    assert main(["intervals", *common, "--set", "intervals.measure=activation"]) == 0
    out = capsys.readouterr().out
    assert "measured in" in out and "activation similarity" in out
    assert IntervalDiscovery.load(run.intervals_path).measure == "activation"


def test_cli_intervals_config_errors_are_one_line(capsys, tmp_path):
    from nas.cli import main

    code = main(["intervals", "--set", f"run_root={tmp_path}", "--set", "intervals.num_intervals=0", "-q"])
    assert code == 2
    err = capsys.readouterr().err
    assert "intervals.num_intervals" in err and len(err.strip().splitlines()) == 1
