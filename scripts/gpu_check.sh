#!/usr/bin/env bash
# Every GPU check and benchmark of the project in one time-boxed run (default 480 s on one H100).
#
#   bash scripts/gpu_check.sh [RESULT_DIR]     # default: $OUT if set (device tool), else docs/results/gpu
#
# Steps run in order of importance, each with its own time limit cut to what is left of the deadline (env
# DEADLINE, seconds); a step that cannot get 20 s is skipped, and a failing step does not stop the others. Each
# logs to NAME.log and writes its results beside it; RESULT_DIR receives summary.txt, environment.txt and
# gpu_results.tgz with everything (the device tool returns at most 8 files). Wheels in .whl/ (flax, tensorboardX)
# are installed first when present, for images that lack them.
set -u
result_dir=${1:-${OUT:-docs/results/gpu}}
deadline=${DEADLINE:-480}
out=$(mktemp -d)
mkdir -p "$result_dir"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
  rm -rf /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
start=$(date +%s)

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  local left=$(( deadline - ($(date +%s) - start) ))
  if (( left < 20 )); then
    echo "$name skipped: deadline" | tee -a "$out/summary.txt"
    return
  fi
  (( limit > left )) && limit=$left
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  printf '%-30s rc=%-3s %4ss  (total %ss)\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$(( $(date +%s) - start ))" \
    | tee -a "$out/summary.txt"
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices()); \
print('flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())"
} > "$out/environment.txt" 2>&1
cat "$out/environment.txt"

# Precision and backend study (issue 7), first: the H200 run of 2026-11-28 spent its 75 s budget on the PyTorch
# configurations and skipped JAX float32-highest, float64, bfloat16 and one-pass BN. Its own budget keeps it inside
# the step's limit.
step study_precision 180 python3 -m parity_tests.studies precision --device gpu --budget-s 150 --out "$out/precision"

parity() {  # parity NAME ARGS...: the report tool at 32^3, full width, batch 4
  local name=$1
  shift
  step "parity_$name" 45 python3 -m parity_tests.report --device gpu --grid 32 --width 32 --batch 4 "$@" \
    --out "$out/parity_$name.md"
}

# Parity on the GPU (issue 2): TF32 off and on, and channels_last_3d (cuDNN's persistent BatchNorm).
parity float32_tf32off --dtype float32 --tf32 off
parity float32_tf32on --dtype float32 --tf32 on
parity float32_channels_last --dtype float32 --tf32 off --channels-last

# Training-step speed, JAX vs PyTorch, float32 (TF32) and bfloat16, 32^3 and 88^3, with a profile (issue 8).
step bench_train_step 120 python3 bench/train_step.py --out "$out/train_step" --profile "$out/profile"

# On-device geometry throughput at batch 64 (issue 3).
step bench_geometry 45 python3 bench/geometry.py --out "$out/geometry"

# End-to-end training at the paper's configuration (88^3, width 32, batch 8) on a small synthetic set: JAX with
# on-device geometry vs the PyTorch reference with the port's per-sample NumPy pipeline in 12 DataLoader workers.
common="--preset paper --root /tmp/synth --synth-frames 680 --epochs 1 --max-steps 60 --plots false"
step e2e_jax 90 python3 train.py $common --out /tmp/e2e_jax --eval-batches 2
step e2e_torch 75 python3 -m v2v_torch_ref.train $common --out /tmp/e2e_torch --num-workers 12
grep -H "steady state" "$out"/e2e_*.log > "$out/e2e_summary.txt"

parity float64 --dtype float64 --tf32 off
step bench_upsample 30 python3 bench/upsample.py --batch 8 --out "$out/upsample"

echo "done in $(( $(date +%s) - start ))s" | tee -a "$out/summary.txt"
tar -czf "$result_dir/gpu_results.tgz" -C "$out" .
cp "$out/summary.txt" "$out/environment.txt" "$result_dir/"
