"""The joint-demo's experts vs the base model along the same step schedules (trajectory proxy).

Usage: python experts_vs_base.py [RUN_ROOT] [RUN_NAME]   (default /tmp/jd/runs joint)
"""
import logging
import sys

from experts.allocation import Allocation
from experts.mixture import MixtureOfExperts
from nas.config import load_config
from nas.run import RunContext

log = logging.getLogger("experts_vs_base")


def main(root: str, name: str) -> None:
    cfg = load_config(None, [f"run_root={root}", f"name={name}", "device=cpu"], preset="joint-demo")
    ctx = RunContext(cfg)
    proxy = ctx.trajectory_proxy()
    _, experts = ctx.experts()
    folder = f"{root}/{name}/allocations"
    for b in ("0.3", "0.5"):
        r = Allocation.load(f"{folder}/router-{b}.json")
        st = Allocation.load(f"{folder}/steps-{b}.json")
        for label, sched in (("router archs, router schedule", r.schedule), ("router archs, steps schedule", st.schedule)):
            a = Allocation(r.method, r.budget_ratio, r.intervals, r.archs, r.macs_per_expert, sched.steps_per_interval,
                           r.base_trajectory_macs, schedule=sched)
            s = proxy.score(MixtureOfExperts.from_allocation(a, experts), sched.timesteps())
            log.info("%s %s %s %s small_fid %.3f", b, label, sched.steps_per_interval,
                     [p.spacing for p in sched.parts], s.fid)
        for label, sched in (("base, router schedule", r.schedule), ("base, steps schedule", st.schedule)):
            log.info("%s %s small_fid %.3f", b, label, proxy.score(ctx.base.unet, sched.timesteps()).fid)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(*(sys.argv[1:3] or ["/tmp/jd/runs", "joint"]))
