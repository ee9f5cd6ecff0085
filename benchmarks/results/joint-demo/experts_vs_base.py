import json, sys
from nas.config import load_config
from nas.run import RunContext
from experts.schedule import StepSchedule
from experts.allocation import Allocation
from experts.mixture import MixtureOfExperts
cfg = load_config(None, ["run_root=/tmp/jd/runs", "name=joint", "device=cpu"], preset="joint-demo")
ctx = RunContext(cfg)
proxy = ctx.trajectory_proxy()
iv, experts = ctx.experts()
for b in ("0.3", "0.5"):
    r = Allocation.load(f"/tmp/jd/runs/joint/allocations/router-{b}.json")
    st = Allocation.load(f"/tmp/jd/runs/joint/allocations/steps-{b}.json")
    for label, alloc_arch_src, sched in (("router archs, router schedule", r, r.schedule), ("router archs, steps schedule", r, st.schedule)):
        a = Allocation(r.method, r.budget_ratio, r.intervals, r.archs, r.macs_per_expert, sched.steps_per_interval, r.base_trajectory_macs, schedule=sched)
        mix = MixtureOfExperts.from_allocation(a, experts)
        s = proxy.score(mix, sched.timesteps()) if True else None
        print(b, label, sched.steps_per_interval, [p.spacing for p in sched.parts], "small_fid %.3f" % s.fid, flush=True)
    # the base along both schedules
    for label, sched in (("base, router schedule", r.schedule), ("base, steps schedule", st.schedule)):
        s = proxy.score(ctx.base.unet, sched.timesteps())
        print(b, label, "small_fid %.3f" % s.fid, flush=True)
