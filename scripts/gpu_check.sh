#!/usr/bin/env bash
# Every GPU check and benchmark of the project in one run (about 7 minutes on one H100).
#
#   bash scripts/gpu_check.sh [OUT_DIR]     # default: $OUT if set (device tool), else docs/results/gpu
#
# Each step has its own time limit, logs to OUT_DIR/NAME.log and writes its results under OUT_DIR; a failing step
# does not stop the others. Everything is also packed into OUT_DIR/gpu_results.tgz (the device tool returns at
# most 8 files). Wheels in .whl/ (flax, tensorboardX) are installed first when present, for images that lack them.
set -u
out=${1:-${OUT:-docs/results/gpu}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
start=$(date +%s)

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  printf '%-28s rc=%-3s %4ss  (total %ss)\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$(( $(date +%s) - start ))" \
    | tee -a "$out/summary.txt"
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import jax, jaxlib, flax, optax, torch; print('jax', jax.__version__, jax.devices()); \
print('flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())"
} > "$out/environment.txt" 2>&1
cat "$out/environment.txt"

# Parity on the GPU (issue 2): float32 with TF32 off and on, channels_last_3d (cuDNN's persistent BatchNorm),
# float64, bfloat16; 32^3 grids at full width, and one full-size 88^3 float32 check.
for args in "float32 off" "float32 on" "float64 off" "bfloat16 off"; do
  set -- $args
  step "parity_${1}_tf32${2}" 60 python3 -m parity_tests.report --device gpu --dtype "$1" --tf32 "$2" \
    --grid 32 --width 32 --batch 4 --out "$out/parity_${1}_tf32${2}.md"
done
step parity_float32_channels_last 60 python3 -m parity_tests.report --device gpu --dtype float32 --tf32 off \
  --channels-last --grid 32 --width 32 --batch 4 --out "$out/parity_float32_channels_last.md"
step parity_float32_88 90 python3 -m parity_tests.report --device gpu --dtype float32 --tf32 off \
  --grid 88 --width 32 --batch 2 --out "$out/parity_float32_88.md"

# Speed (issues 3 and 8).
step bench_geometry 60 python3 bench/geometry.py --out "$out/geometry"
step bench_upsample 45 python3 bench/upsample.py --out "$out/upsample"
step bench_train_step 150 python3 bench/train_step.py --out "$out/train_step" --profile "$out/profile"

# Precision and backend study (issue 7).
step study_precision 120 python3 -m v2v_jax.studies precision --device gpu --out "$out/precision"

tar -czf /tmp/gpu_results.tgz -C "$out" . && mv /tmp/gpu_results.tgz "$out/gpu_results.tgz"
echo "done in $(( $(date +%s) - start ))s"
