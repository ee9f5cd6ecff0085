"""Prompt accuracy of the digits-text base model by guidance scale and sampler variant: why the
accuracy fell from guidance 2 to 4 with DDIM, and what rises with guidance instead.

Samples as the bench's guidance table does (:mod:`benchmarks.bench.guidance`: the base UNet in a
one-interval ``MixturePipeline`` with its text encoder, ``sampling.num_steps`` steps, image ``i``
asks for "a handwritten <i % 10>", ``bench.num_samples`` images per seed of seeds 0, 1, 2 = 288
per point) and scores them with the run's digit classifier. Variants:

- ``ddim``: the DDIM sampler with the base's scheduler config, which clips the predicted x0 to
  [-1, 1] (``clip_sample``, DDPM's default);
- ``ddim-noclip``: the same without that clip;
- ``ddim-steps50``: DDIM (with the clip) at 50 steps;
- ``ddim-rescale0.7``: DDIM with ``guidance_rescale`` 0.7 (Lin et al. 2023, diffusers'
  ``rescale_noise_cfg``) patched into the guided prediction for this probe only;
- ``dpm++``: DPM-Solver++ (no x0 clipping), the preset's sampler.

Usage (a run folder whose base is trained, e.g. after ``diffnas run --preset digits-text``)::

    OMP_NUM_THREADS=1 python benchmarks/results/digits-text/guidance_by_sampler.py RUN_ROOT \\
        ddim,ddim-noclip,dpm++ 1,1.5,2,3,4,6 > probe.json
"""

from __future__ import annotations

import json
import logging
import sys
import time

import torch

from benchmarks.bench import guidance as bench_guidance
from experts import guidance as eg
from experts.intervals import Intervals
from experts.mixture import MixtureOfExperts
from experts.pipeline import MixturePipeline
from nas.config import load_config
from nas.digit_classifier import label_accuracy, load_or_train_digit_classifier
from nas.run import RunContext
from nas.sampling import make_scheduler

log = logging.getLogger("guidance_by_sampler")
SEEDS = (0, 1, 2)
_RESCALE = {"phi": 0.0}


def rescale_noise_cfg(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """diffusers' ``rescale_noise_cfg``: the guided prediction rescaled to the conditional one's
    per-image standard deviation, mixed with it by ``phi``."""
    dims = list(range(1, cond.ndim))
    ratio = cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    return phi * guided * ratio + (1 - phi) * guided


def _guided_call(self: eg.PromptConditionedModel, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
    """``PromptConditionedModel.__call__`` with :func:`rescale_noise_cfg` applied (probe only)."""
    kwargs.pop("encoder_hidden_states", None)
    b = x.shape[0]
    if self.guidance_scale == 1.0:
        return eg._prediction(self.model(x, t, encoder_hidden_states=self.cond[:b], **kwargs))
    t2 = torch.cat([t, t]) if torch.is_tensor(t) and t.ndim == 1 else t
    out = eg._prediction(self.model(torch.cat([x, x]), t2,
                                    encoder_hidden_states=torch.cat([self.uncond[:b], self.cond[:b]]), **kwargs))
    uncond, cond = out[:b], out[b:]
    guided = uncond + self.guidance_scale * (cond - uncond)
    return rescale_noise_cfg(guided, cond, _RESCALE["phi"]) if _RESCALE["phi"] > 0 else guided


class _Shim:
    """What ``benchmarks.bench.guidance._sample`` reads of a bench context."""

    def __init__(self, cfg, device) -> None:
        self.cfg, self.device = cfg, device


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_root = argv[0]
    variants = argv[1].split(",") if len(argv) > 1 else ["ddim", "dpm++"]
    scales = [float(s) for s in (argv[2] if len(argv) > 2 else "1,1.5,2,3,4").split(",")]
    cfg = load_config(None, [f"run_root={run_root}"], preset="digits-text")
    ctx = RunContext(cfg, progress=False)
    base = ctx.base
    classifier = load_or_train_digit_classifier(ctx.run.cache_dir, ctx.device)
    prompts = bench_guidance._class_prompts(base)
    n = int(cfg.bench.num_samples)
    wanted = torch.arange(n) % len(prompts)  # (N,) image i asks for class i % C
    asked = [prompts[int(c)] for c in wanted]
    eg.PromptConditionedModel.__call__ = _guided_call
    results: dict[str, dict[str, object]] = {}
    for var in variants:
        _RESCALE["phi"] = float(var.split("rescale")[1]) if "rescale" in var else 0.0
        sched_cfg = dict(base.scheduler_config)
        if "noclip" in var:
            sched_cfg["clip_sample"] = False
        steps = 50 if "steps50" in var else int(cfg.sampling.num_steps)
        sched = make_scheduler("dpm++" if var.startswith("dpm++") else "ddim", sched_cfg)
        pipe = MixturePipeline(MixtureOfExperts(Intervals(int(sched_cfg["num_train_timesteps"]), ()), [base.unet]),
                               sched, vae=None, text_encoder=base.text_encoder, tokenizer=base.tokenizer)
        pipe.set_progress_bar_config(disable=True)
        shim = _Shim(load_config(None, [f"run_root={run_root}", f"sampling.num_steps={steps}"],
                                 preset="digits-text"), ctx.device)
        for g in scales:
            t0 = time.perf_counter()
            per_seed = [float(label_accuracy(classifier, bench_guidance._sample(shim, pipe, asked, g, s), wanted))
                        for s in SEEDS]
            acc = sum(per_seed) / len(per_seed)
            results[f"{var} guidance {g:g}"] = {"variant": var, "guidance_scale": g, "steps": steps,
                                                "accuracy": acc, "per_seed": per_seed, "images": n * len(SEEDS)}
            log.info("%s guidance %g: %.1f%% (seeds %s) [%.1f s]", var, g, 100 * acc,
                     " ".join(f"{100 * v:.1f}" for v in per_seed), time.perf_counter() - t0)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
