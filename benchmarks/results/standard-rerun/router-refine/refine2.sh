#!/bin/bash
set -u
cd /work/std && rm -rf clone13 && git clone -q /work/main clone13 && cd clone13 && git log --oneline -1
[ -d /work/std/runs5/standard ] || cp -a /work/std/runs2 /work/std/runs5
export OMP_NUM_THREADS=1 RAY_USAGE_STATS_ENABLED=0 PYTHONPATH=/work/std/clone13 HF_HUB_OFFLINE=1
/usr/bin/time -v /work/main/.venv/bin/python -m nas route --preset standard --set run_root=/work/std/runs5
echo rc=$?
