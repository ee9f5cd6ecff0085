from nas.config import load_config
from nas.run import RunContext
from nas.metrics import frechet_distance_from_features
for sampler in ("dpm++", "ddim"):
    ctx = RunContext(load_config(None, ["run_root=/work/std/runs5", f"sampling.sampler={sampler}", "bench.finetune_target=denoise"], preset="standard"), device="cpu", progress=False)
    ref = ctx.reference_features(); ex = ctx.extractor()
    for steps in (5, 7, 15):
        vals = []
        for seed in (0, 1):
            imgs = ctx.generate(ctx.base.unet, 1000, seed, steps, progress=False)
            vals.append(frechet_distance_from_features(ex(imgs), ref))
        print(sampler, steps, [round(v, 4) for v in vals], flush=True)
