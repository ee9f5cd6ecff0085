#!/bin/bash
# the same run folder: the stronger baselines (searched steps, fewer_steps_tuned, uniform_steps) measured
# beside the router/search rows of stage 2; router and search are reused, nothing else re-run
set -u
cd /work/std && rm -rf clone3 && git clone -q /work/main clone3 && cd clone3 && git log --oneline -1
export OMP_NUM_THREADS=1 RAY_USAGE_STATS_ENABLED=0 PYTHONPATH=/work/std/clone3
/usr/bin/time -v /work/main/.venv/bin/python -m nas run --preset standard --set run_root=/work/std/runs \
  --set "bench.methods=[router, search, base, fewer_steps, steps, fewer_steps_tuned, uniform_steps]"
echo rc=$?
