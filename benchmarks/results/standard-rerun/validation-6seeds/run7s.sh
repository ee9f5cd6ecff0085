cd /work/std/clone6
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONPATH=/work/std/clone6
for n in 25 50; do
/work/main/.venv/bin/python -m nas bench --preset standard --set run_root=/work/std/runs7_$n \
  --set "bench.methods=[router]" --set "bench.budgets=[0.15]" --set "bench.seeds=[0, 1, 2, 3, 4, 5]" \
  --set bench.finetune_validation_images=1024 --set experts.finetune_steps=$n
done
