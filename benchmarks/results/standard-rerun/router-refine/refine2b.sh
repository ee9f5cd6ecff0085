#!/bin/bash
set -u
while pgrep -f "/work/std/refine2.sh" >/dev/null; do sleep 10; done
cd /work/std/clone13
export OMP_NUM_THREADS=1 RAY_USAGE_STATS_ENABLED=0 PYTHONPATH=/work/std/clone13 HF_HUB_OFFLINE=1
/usr/bin/time -v /work/main/.venv/bin/python -m nas run --preset standard --set run_root=/work/std/runs5 \
  --skip search --set "bench.methods=[router, base]"
echo rc=$?
