cd /work/std/clone6
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONPATH=/work/std/clone6
/work/main/.venv/bin/python -m nas run --preset standard --set run_root=/work/std/runs6a --skip router --skip search \
  --set "bench.methods=[router, search, base, fewer_steps, steps, fewer_steps_tuned, uniform_steps]" --set "bench.budgets=[0.1, 0.15, 0.3]" --set "bench.seeds=[0, 1, 2, 3, 4, 5]" \
  --set bench.finetune_validation_images=1024
