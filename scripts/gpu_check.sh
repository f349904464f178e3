#!/usr/bin/env bash
# Every GPU check and benchmark of the project in one time-boxed call (default 460 s on one H100 or H200).
#
#   bash scripts/gpu_check.sh [RESULT_DIR]            # default: $OUT if set (device tool), else docs/results/gpu-DATE
#   bash scripts/gpu_check.sh --dry-run [RESULT_DIR]  # the same steps at tiny sizes on the CPU (default: a temp dir)
#   STEPS="e2e_jax study_precision" bash scripts/gpu_check.sh   # only these steps (names as in summary.txt)
#   STEPS=study_precision DEADLINE=200 bash scripts/gpu_check.sh  # the follow-up call: the precision study
#
# The precision study (13 configurations) does not fit beside the rest in one call (one call left it 60-100 s, about
# half of them: docs/benchmarks.md): a call without STEPS runs every other step and ends by naming the follow-up
# call, which gives the study the whole DEADLINE; STEPS runs exactly the steps it names; the dry run runs all.
# Steps run in order of importance, each with its own time limit, cut to what is left of the deadline (env
# DEADLINE, seconds); a step that cannot get 20 s is skipped, and a failing step does not stop the others (the dry
# run gives every step DRY_LIMIT seconds, default 300: a loaded CPU is no measure of a GPU's budgets). Each step
# logs to NAME.log and writes its results (JSON and markdown) to NAME/ or NAME.md beside it; after
# every step summary.txt, summary.jsonl (one line per step: rc, seconds, its result file and whether it exists) and,
# under the device tool ($OUT set: at most 8 files come back), gpu_results.tgz with everything are rewritten, so a
# call cut short keeps what it measured (a parity step's rc 1 with its result present is the report's verdict "JAX
# deviates"); a later call into the same RESULT_DIR appends to the summaries. Wheels in .whl/ (flax, tensorboardX)
# are installed first when present.
set -u
dry=0
positional=()
for a in "$@"; do
  case $a in
    --dry-run) dry=1 ;;
    -h|--help) sed -n '2,/^set -u$/p' "$0" | sed '$d'; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $a (see --help)" >&2; exit 2 ;;
    *) positional+=("$a") ;;
  esac
done
if (( dry )); then
  result_dir=${positional[0]:-$(mktemp -d)/gpu-dry-run}
  deadline=${DEADLINE:-1800}
  min_step=5
  pack=0
else
  result_dir=${positional[0]:-${OUT:-docs/results/gpu-$(date -u +%Y-%m-%d)}}
  deadline=${DEADLINE:-460}
  min_step=20
  pack=$([[ -n ${OUT:-} && $result_dir == "${OUT:-}" ]] && echo 1 || echo 0)
fi
mkdir -p "$result_dir" || exit 2
if (( pack )); then work=$(mktemp -d); else work=$result_dir; fi
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), DEADLINE $deadline s, STEPS ${STEPS:-(all but the follow-up call)}" \
  >> "$work/summary.txt"
touch "$work/summary.jsonl"
export PYTHONUNBUFFERED=1
# Programs compiled twice in this call (the same JAX model under another torch switch) compile once.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$(mktemp -d)}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
if compgen -G ".whl/*.whl" > /dev/null; then
  rm -rf /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
start=$(date +%s)

publish() {  # the summary (and under the device tool the tarball) as they stand now
  if (( pack )); then
    cp "$work/summary.txt" "$work/summary.jsonl" "$result_dir/"
    [[ -f $work/environment.txt ]] && cp "$work/environment.txt" "$result_dir/"
    tar -czf "$result_dir/gpu_results.tgz.part" -C "$work" --exclude=./trace --exclude=checkpoints --exclude='*.pth' \
      --exclude=tensorboard . && \
      mv "$result_dir/gpu_results.tgz.part" "$result_dir/gpu_results.tgz"
  fi
}

follow_up=study_precision  # run only when STEPS names it (or in the dry run): see the top
wanted() {
  if [[ -n ${STEPS:-} ]]; then [[ " $STEPS " == *" $1 "* ]]; else (( dry )) || [[ " $follow_up " != *" $1 "* ]]; fi
}

step() {  # step NAME SECONDS RESULT COMMAND...: run COMMAND with at most SECONDS; RESULT is the file it writes
  local name=$1 limit=$2 result=$3
  shift 3
  wanted "$name" || return 0
  local left=$(( deadline - ($(date +%s) - start) ))
  if (( left < min_step )); then
    echo "$name skipped: deadline" | tee -a "$work/summary.txt"
    printf '{"step": "%s", "status": "skipped", "reason": "deadline"}\n' "$name" >> "$work/summary.jsonl"
    publish
    return 0
  fi
  (( dry )) && limit=${DRY_LIMIT:-300}
  (( limit > left )) && limit=$left
  local t0=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$work/$name.log" 2>&1
  local rc=$? seconds=$(( $(date +%s) - t0 )) present=false
  [[ -s $work/$result ]] && present=true
  local status=ok
  (( rc == 124 || rc == 137 )) && status=timeout
  (( rc != 0 && rc != 124 && rc != 137 )) && status=failed
  [[ $status == ok && $present == false ]] && status=no-result
  printf '%-22s rc=%-3s %4ss of %4ss  (total %4ss)  %-9s %s\n' "$name" "$rc" "$seconds" "$limit" \
    "$(( $(date +%s) - start ))" "$status" "$result" | tee -a "$work/summary.txt"
  printf '{"step": "%s", "status": "%s", "rc": %d, "seconds": %d, "limit_s": %d, "result": "%s", "present": %s}\n' \
    "$name" "$status" "$rc" "$seconds" "$limit" "$result" "$present" >> "$work/summary.jsonl"
  publish
}

budget() {  # budget SECONDS MARGIN: what a step given SECONDS will really get (the deadline), less MARGIN
  local left=$(( deadline - ($(date +%s) - start) ))
  local limit=$(( $1 < left ? $1 : left ))
  echo $(( limit - $2 > 1 ? limit - $2 : 1 ))
}

if (( dry )); then
  dev=cpu grid=16 batch=2 width=4
  par_size=(--grid 16 --width 4 --batch 2 --steps 1 --conv xla)
  bench_time=(--rounds 1 --repeats 1)
  conv=xla  # the CPU default (depth_folded) compiles 4x slower; its speed is not what the dry run checks
  # One row, a few blocks, one study configuration: the dry run checks that each tool runs, not their numbers.
  fixed_budget=1 study_size=(--steps 2 --grid 16 --width 4 --samples 1 --conv xla)
  compile_precisions=(--dtypes float32 --tf32 on)
  e2e=(--grid 16 --width 4 --batch-size 2 --synth-frames 68 --synth-subjects 2 --max-steps 3)
  torch_compile_backend=eager
else
  dev=gpu grid=88 batch=8 width=32
  par_size=(--grid 32 --width 32 --batch 4)
  bench_time=(--rounds 2 --repeats 3)
  conv=auto
  fixed_budget= study_size=()
  compile_precisions=(--dtypes float32 bfloat16 --tf32 on)
  e2e=(--preset paper --synth-frames 680 --max-steps 30)
  torch_compile_backend=inductor
fi

# 1. Environment.
step environment 30 environment.txt bash -c 'set -o pipefail; {
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | head -3
  python3 -c "import jax, flax, optax, torch; print(\"jax\", jax.__version__, jax.devices()); \
print(\"flax\", flax.__version__, \"optax\", optax.__version__, \"torch\", torch.__version__, \
torch.cuda.get_device_name() if torch.cuda.is_available() else \"no CUDA\")"; } | tee "$0"' "$work/environment.txt"

# 2. The calibrated parity report on the device: float32 with TF32 off and on, and PyTorch's cuDNN (its BatchNorm
# among its kernels) on and off.
parity() {  # parity NAME ARGS...
  local name=$1
  shift
  step "parity_$name" 30 "parity_$name.json" python3 -m parity_tests.report --device "$dev" "${par_size[@]}" \
    "$@" --json "$work/parity_$name.json" --out "$work/parity_$name.md"
}
parity float32_tf32off_cudnn --dtype float32 --tf32 off --cudnn on
parity float32_tf32on_cudnn --dtype float32 --tf32 on --cudnn on
parity float32_tf32off_nocudnn --dtype float32 --tf32 off --cudnn off

# 3. The planted-bug table: every planted bug must be caught on the device too.
if [[ -f parity_tests/mutations.py ]]; then
  # One unmodified seed and three PyTorch bugs (pool, optimizer, one BatchNorm layer): a PyTorch bug reruns only
  # PyTorch's steps, a JAX bug recompiles JAX's two, so this is what fits 40 s beside the unpatched runs (~25 s,
  # like a parity step). The whole table is `python -m parity_tests.mutations --device gpu` (~32 x 5-15 s).
  mut_size=(--seeds 1 --only avg_pool_once --only rmsprop_alpha_0.9 --only bn_eps_1e-3_one_layer)
  (( dry )) && mut_size=(--grid 16 --width 4 --seeds 1 --only avg_pool_once --only rmsprop_alpha_0.9)
  step mutations 40 mutations.json python3 -m parity_tests.mutations --device "$dev" "${mut_size[@]}" \
    --json "$work/mutations.json"
else
  step mutations 5 mutations.md bash -c 'echo "skipped: parity_tests/mutations.py is not in this checkout" | tee "$0"' \
    "$work/mutations.md"
fi

# 4. Training step at 88^3 batch 8: float32 with TF32 on and off and bfloat16; JAX with each formulation and XLA
# option set alone (then the winners combined) against PyTorch's fastest configuration a user would pick and its
# plain one, and a profiler trace of the first step; then torch.compile; then the largest batch that fits.
sweep=(python3 bench/train_step.py --grids "$grid" --batches "$batch" --width "$width" "${bench_time[@]}"
       --conv "$conv" folded_stem im2col_stem fft_stem --upsample einsum pad_conv --xla-flags default nhwc runtime_fusion
       autotune0 --torch plain best compiled --torch-compile-backend "$torch_compile_backend")
step train_step 90 train_step/train_step.json "${sweep[@]}" --dtypes float32 bfloat16 --tf32 on off \
  --rows baseline variants --budget-s "${fixed_budget:-$(budget 90 30)}" --out "$work/train_step" \
  --trace "$work/trace"
if [[ -d $work/trace ]] && (( pack )); then  # its own file: the trace can be large
  tar -czf "$result_dir/trace.tgz" -C "$work" trace
  (( $(stat -c %s "$result_dir/trace.tgz") > 15000000 )) && rm "$result_dir/trace.tgz"
fi
step train_step_compile 70 train_step_compile/train_step.json "${sweep[@]}" "${compile_precisions[@]}" \
  --rows compiled --budget-s "${fixed_budget:-$(budget 70 45)}" --out "$work/train_step_compile"
step train_step_large 30 train_step_large/train_step.json "${sweep[@]}" "${compile_precisions[@]}" \
  --rows large --out "$work/train_step_large"

# 5. Per block: forward + backward of each block alone, every stem and upsampling formulation, FLOPs, bytes and
# the roofline bound of each (bench/roofline.py), float32 (TF32) then bfloat16.
step blocks 35 blocks/blocks.json python3 bench/blocks.py --grid "$grid" --batch "$batch" --width "$width" \
  --dtypes float32 bfloat16 "${bench_time[@]}" --conv "$conv" folded_stem im2col_stem fft_stem \
  --upsample einsum pad_conv phases depth_to_space conv_transpose --budget-s "${fixed_budget:-$(budget 35 12)}" \
  --out "$work/blocks"

# 6. End to end at the paper's configuration on a small synthetic set: JAX with on-device geometry against the
# PyTorch reference with the port's per-sample NumPy pipeline in DataLoader workers.
workers=$(( $(nproc) > 12 ? 12 : $(nproc) ))
scratch=$(mktemp -d)  # the synthetic set
step e2e_jax 40 e2e_jax/metrics.jsonl python3 train.py "${e2e[@]}" --root "$scratch/synth" --epochs 1 --plots false \
  --eval-batches 1 --out "$work/e2e_jax"
step e2e_torch 20 e2e_torch/options.json python3 -m v2v_torch_ref.train "${e2e[@]}" --root "$scratch/synth" --epochs 1 \
  --plots false --num-workers "$workers" --out "$work/e2e_torch"
grep -h "steady state" "$work"/e2e_*.log > "$work/e2e_summary.txt" 2>/dev/null
rm -rf "$scratch" "$work"/e2e_jax/checkpoints "$work"/e2e_torch/model.pth  # the runs' weights are not results

# 7. The precision study, every configuration (the cuDNN-BatchNorm float32 rows included): the follow-up call, given
# the whole deadline; its own budget stops it starting configurations in time to write its report.
step study_precision "$deadline" precision/precision_report.md python3 -m parity_tests.studies precision \
  --device "$dev" "${study_size[@]}" --budget-s "${fixed_budget:-$(budget "$deadline" 25)}" --out "$work/precision"

echo "done in $(( $(date +%s) - start ))s" | tee -a "$work/summary.txt"
if [[ -z ${STEPS:-} ]] && (( ! dry )); then
  echo "next: STEPS=$follow_up DEADLINE=200 bash scripts/gpu_check.sh (the precision study)" | tee -a "$work/summary.txt"
fi
publish
