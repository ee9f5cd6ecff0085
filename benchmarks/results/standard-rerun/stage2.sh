#!/bin/bash
# the rest of the standard run at the current HEAD: router (knapsack decode, spacings-first candidates),
# search, fine-tuning and bench of router/search plus base and fewer_steps (identity check vs the committed run)
set -u
cd /work/std && rm -rf clone2 && git clone -q /work/main clone2 && cd clone2 && git log --oneline -1
export OMP_NUM_THREADS=1 RAY_USAGE_STATS_ENABLED=0 PYTHONPATH=/work/std/clone2
/usr/bin/time -v /work/main/.venv/bin/python -m nas run --preset standard --set run_root=/work/std/runs \
  --set "bench.methods=[router, search, base, fewer_steps]"
echo rc=$?
