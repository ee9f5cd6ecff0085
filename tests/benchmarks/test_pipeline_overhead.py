"""benchmarks/pipeline_overhead.py on tiny models: what it times, the bitwise check, the rows (no timing asserted)."""

from __future__ import annotations

import torch
from diffusers import UNet2DModel

from benchmarks.pipeline_overhead import PAIRS, candidates, efficiency_rows
from experts.intervals import Intervals
from experts.mixture import MixtureOfExperts
from nas.latency import compare_latency


def _unet(width: int) -> UNet2DModel:
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(width, 2 * width),
                       layers_per_block=1, norm_num_groups=4, add_attention=False,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D")).eval()


def test_candidates_check_the_pipeline_bitwise_and_rows_pair_them():
    torch.manual_seed(0)
    base = _unet(8)
    mixture = MixtureOfExperts(Intervals.uniform(1000, 2), [_unet(4), _unet(4)]).eval()
    fns = candidates(base, mixture, batch_size=3, steps=4, device=torch.device("cpu"))
    assert set(fns) == {"base: sampling loop", "mixture: MixturePipeline", "mixture: sampling loop",
                        "base: network only", "experts: network only", "base: sampling loop, free network",
                        "mixture: MixturePipeline, free experts"}
    with torch.inference_mode():
        times = compare_latency(fns, repeats=1, warmup=0)
    rows = efficiency_rows(times, 0.5)
    assert [r["what"] for r in rows] == [p[0] for p in PAIRS]
    for r in rows:
        assert r["efficiency"] == r["speedup"] * 0.5 and r["base_ms"] == times[r["base"]].median_ms
    # the experts-only run calls each step's own expert: the mixture's output, without the mixture
    with torch.inference_mode():
        x = torch.randn(3, 1, 8, 8)
        t = torch.tensor(900)
        assert torch.equal(mixture(x, t).sample, mixture.expert_for(1)(x, t).sample)
