# shellcheck shell=bash
# The steps of run.sh, one function each, run as `bash steps.sh NAME` under a
# time limit. A step exits 0 (passed), 77 (skipped) or anything else (failed),
# and writes its figures to $FIG, one `"key": <JSON value>` per line.
set -uo pipefail
# shellcheck source=env.sh
. "$KIT/env.sh"
kit_cuda_env "$([ "$KIT_MODE" = gpu ] && echo driver)"

fig() { echo "\"$1\": $2" >> "$FIG"; }
reason() { fig reason "$(json_str "$1")"; }
skip() { reason "$1"; exit 77; }
fail() { reason "$1"; exit 1; }
gpu_only() { [ "$KIT_MODE" = gpu ] || skip "needs a GPU (--cpu run)"; }
# The mode's nets: nets/gpu (the committed SOP net and solver) or nets/cpu
# (the same net on 64x64 crops, for a CPU run in minutes).
NETS=nets/$KIT_MODE
device_args() { [ "$KIT_MODE" = gpu ] && echo "-gpu 0"; }

# Caffe runs in $WORK, where the nets find fixture/ and write snapshots/.
cd "$WORK" || exit 1
ln -sfn "$KIT/fixture" fixture
ln -sfn "$KIT/nets" nets

# Peak device memory (MiB, the whole GPU as nvidia-smi sees it, less what
# was in use before) while a command runs.
peak_memory() {
  local base peak used pid
  if ! command -v nvidia-smi >/dev/null; then "$@"; return; fi
  base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 | head -1)
  "$@" &
  pid=$!
  peak=$base
  while kill -0 "$pid" 2>/dev/null; do
    used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 | head -1)
    [[ "$used" =~ ^[0-9]+$ ]] && ((used > peak)) && peak=$used
    sleep 0.2
  done
  wait "$pid"
  local rc=$?
  echo "$((peak - base))" > "$WORK/peak_memory"
  return $rc
}

# Python with PyTorch on CUDA for the peer benchmarks, if there is one.
torch_python() {
  local python
  for python in python3 /opt/*/.venv/bin/python3 /opt/conda/bin/python3; do
    if command -v "$python" >/dev/null 2>&1 &&
       "$python" -c 'import torch, torchvision; assert torch.cuda.is_available()' 2>/dev/null
    then echo "$python"; return 0; fi
  done
  return 1
}

losses() { sed -n 's/.*Iteration \([0-9]*\).*, loss = \([^ ]*\).*/\1 \2/p' "$1"; }

step_environment() {
  local versions rc
  if [ -n "$KIT_CUDA_LIBS" ]; then
    if [ -n "$KIT_MISSING" ]; then
      fig missing_libraries "$(json_str "$KIT_MISSING")"
      fail "not found: $KIT_MISSING (searched LD_LIBRARY_PATH, CUDA_HOME, /usr/local/cuda*, Python's nvidia/*/lib folders, the driver's folders)"
    fi
    fig library_path "$(json_str "$LD_LIBRARY_PATH")"
  fi
  versions=$(cuda_versions)
  rc=$?
  echo "$versions"
  [ -n "$versions" ] || fail "cuda_versions printed nothing (exit $rc)"
  fig cuda "$versions"
  if command -v nvidia-smi >/dev/null; then
    fig nvidia_smi "$(json_str "$(nvidia-smi --query-gpu=name,driver_version,memory.total \
      --format=csv,noheader 2>&1 | head -4)")"
  fi
  [ "$KIT_MODE" = gpu ] || exit 0
  ((rc == 0)) || fail "no GPU: $(echo "$versions" | sed -n 's/.*"device_error": "\([^"]*\)".*/\1/p')"
  # Each library's major version as built; the driver must run that CUDA.
  local name built loaded problems=""
  for name in cudart cublas curand cudnn nccl; do
    built=$(echo "$versions" | sed -n "s/.*\"$name\": {\"built\": \([0-9]*\), \"loaded\": \([0-9]*\)}.*/\1/p")
    loaded=$(echo "$versions" | sed -n "s/.*\"$name\": {\"built\": \([0-9]*\), \"loaded\": \([0-9]*\)}.*/\2/p")
    [ -n "$built" ] || continue
    echo "$name: built $built, loaded $loaded"
    if [ "$name" = curand ]; then
      ((built / 1000 == loaded / 1000)) || problems+="$name $loaded (built for $built); "
    elif [ "$name" = cudart ]; then
      ((built / 1000 == loaded / 1000)) || problems+="$name $loaded (built for $built); "
    else
      ((built / 10000 == loaded / 10000)) || problems+="$name $loaded (built for $built); "
    fi
    ((loaded < built)) && fig "older_$name" "\"loaded $loaded, built for $built\""
  done
  local driver
  driver=$(echo "$versions" | sed -n 's/.*"driver_cuda": \([0-9]*\).*/\1/p')
  built=$(echo "$versions" | sed -n 's/.*"cudart": {"built": \([0-9]*\).*/\1/p')
  ((driver >= built)) || problems+="the driver runs CUDA $driver, the kit needs $built; "
  [ -z "$problems" ] || fail "version mismatch: $problems"
}

gtest_run() {  # FILTER
  (cd "$KIT/share/caffe" && test.testbin --gtest_filter="$1")
  local rc=$? log=$LOGS/$STEP.log passed failed
  passed=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)
  failed=$(sed -n 's/^\[  FAILED  \] \([^ ,]*\).*/\1/p' "$log" | grep -v '^[0-9]' | sort -u)
  fig tests_passed "${passed:-0}"
  [ -z "$failed" ] || fig failed_tests "$(json_str "$failed")"
  ((rc == 0)) || fail "test.testbin exited with $rc"
  ((${passed:-0} > 0)) || fail "no test matched the filter"
}

step_gtest() {
  if [ "$KIT_MODE" = gpu ]; then gtest_run "$KIT_GTEST_GPU_FILTER"
  else gtest_run "$KIT_GTEST_CPU_FILTER"; fi
}

step_lifted_gpu_equals_cpu() {
  gpu_only
  gtest_run "$KIT_GTEST_DEVICES_FILTER"
}

# Training through the committed solver; the loss is finite and falls, the
# final snapshot is written, cuDNN computes (GPU).
step_train() {
  local solver=$NETS/solver.prototxt max_iter log=$WORK/train.log
  max_iter=$(sed -n 's/^max_iter: *//p' "$solver")
  # shellcheck disable=SC2046
  caffe train -solver "$solver" $(device_args) 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  ((rc == 0)) || fail "caffe train exited with $rc"
  local list first last count
  list=$(losses "$log")
  count=$(echo "$list" | grep -c .)
  fig losses "[$(echo "$list" | awk 'NF { printf "%s[%s, %s]", sep, $1, ($2 ~ /^[-+.0-9eE]+$/ ? $2 : "\"" $2 "\""); sep = ", " }')]"
  ((count >= 3)) || fail "fewer than 3 losses in the log"
  echo "$list" | awk '$2 !~ /^[-+]?[0-9.]+([eE][-+]?[0-9]+)?$/ { exit 1 }' || fail "a loss is not finite"
  first=$(echo "$list" | head -1 | awk '{ print $2 }')
  last=$(echo "$list" | tail -2 | awk '{ s += $2 } END { print s / NR }')
  fig loss_first "$first"
  fig loss_last "$last"
  awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a) }' || fail "the loss did not fall: $first at first, $last at the end"
  local snapshot
  snapshot=$(find snapshots -name "*_iter_${max_iter}.caffemodel" 2>/dev/null | head -1)
  [ -s "$snapshot" ] || fail "no snapshot of iteration $max_iter under $WORK/snapshots"
  fig snapshot_bytes "$(stat -c %s "$snapshot")"
  cp "$snapshot" "$WORK/trained.caffemodel"
  # Throughput of the last logged interval: "(N iter/s, ...)".
  local rate batch
  rate=$(sed -n 's/.*Iteration [0-9]* (\([0-9.]*\) iter\/s.*/\1/p' "$log" | tail -1)
  batch=$(sed -n '/phase: TRAIN/,/^}/s/.*batch_size: *\([0-9]*\).*/\1/p' "$NETS/train_val.prototxt" | head -1)
  if [ -n "$rate" ]; then
    fig iterations_per_s "$rate"
    fig images_per_s "$(awk -v r="$rate" -v b="$batch" 'BEGIN { printf "%.1f", r * b }')"
  fi
  if [ "$KIT_MODE" = gpu ]; then
    local cudnn
    cudnn=$(grep -c "runs on cuDNN" "$log")
    fig cudnn_layers "$cudnn"
    ((cudnn > 0)) || fail "the log shows no layer on cuDNN"
  fi
}

step_train_all_gpus() {
  gpu_only
  local log=$WORK/train_all.log
  caffe train -solver "$NETS/solver_all.prototxt" -gpu all 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  fig gpus "$(json_str "$(sed -n 's/.*Using GPUs \(.*\)/\1/p' "$log" | head -1)")"
  ((rc == 0)) || fail "caffe train -gpu all exited with $rc"
  losses "$log" | awk '$2 !~ /^[-+]?[0-9.]+([eE][-+]?[0-9]+)?$/ { exit 1 }' || fail "a loss is not finite"
}

# Test features from the trained snapshot, on the GPU and the CPU, compared
# and scored (Recall@K on the fixture's test classes).
step_features() {
  [ -s "$WORK/trained.caffemodel" ] || fail "no trained snapshot (the train step failed)"
  local net=$NETS/train_val.prototxt batches
  batches=$(cat "$KIT/fixture/test_batches")
  extract_features "$WORK/trained.caffemodel" "$net" fc_embedding,label \
    "$WORK/features_cpu,$WORK/labels" "$batches" lmdb CPU || fail "CPU extraction failed"
  local compare=(compare_features -features "$WORK/features_cpu" -labels "$WORK/labels")
  if [ "$KIT_MODE" = gpu ]; then
    extract_features "$WORK/trained.caffemodel" "$net" fc_embedding \
      "$WORK/features_gpu" "$batches" lmdb GPU 0 || fail "GPU extraction failed"
    compare+=(-other "$WORK/features_gpu" -tolerance "${KIT_FEATURE_TOLERANCE:-1e-3}")
  fi
  local result rc
  result=$("${compare[@]}")
  rc=$?
  echo "$result"
  [ -n "$result" ] && fig features "$result"
  ((rc == 0)) || fail "compare_features exited with $rc (GPU and CPU features differ beyond the tolerance?)"
}

caffe_time_ms() {  # LOG: "Average Forward-Backward: X ms."
  sed -n 's/.*Average Forward-Backward: \([0-9.]*\) ms.*/\1/p' "$1" | tail -1
}

# The paper's lifted GoogLeNet, batch 128 at 227x227, synthetic input:
# forward + backward (caffe time does no solver update) in fp32 and TF32.
step_speed_caffe() {
  gpu_only
  local precision log ms
  for precision in fp32 tf32; do
    log=$WORK/time_$precision.log
    if [ $precision = tf32 ]; then export CAFFE_CUDNN_TF32=1; else unset CAFFE_CUDNN_TF32; fi
    peak_memory caffe time -model "$NETS/time.prototxt" -gpu 0 -iterations 20 > "$log" 2>&1
    local rc=$?
    cat "$log"
    ((rc == 0)) || fail "caffe time ($precision) exited with $rc"
    ms=$(caffe_time_ms "$log")
    fig "${precision}_ms_per_iteration" "${ms:-null}"
    fig "${precision}_peak_memory_mib" "$(cat "$WORK/peak_memory" 2>/dev/null || echo null)"
  done
  unset CAFFE_CUDNN_TF32
}

step_speed_torch() {
  gpu_only
  local python
  python=$(torch_python) || skip "no python3 with torch, torchvision and CUDA"
  local result
  result=$(peak_memory "$python" "$KIT/peers.py" googlenet --batch 128 --iterations 20)
  local rc=$?
  echo "$result"
  ((rc == 0)) || fail "peers.py googlenet exited with $rc"
  fig torchvision_googlenet "[$(echo "$result" | grep '^{' | paste -sd, -)]"
  fig peak_memory_mib "$(cat "$WORK/peak_memory" 2>/dev/null || echo null)"
}

# The lifted layer alone, forward + backward; pytorch-metric-learning's
# LiftedStructureLoss beside it where PyTorch is installed.
step_layer_speed() {
  local sizes=128,256,512,1024 dims=64,512 iterations=100 gpu_flag="-gpu 0"
  if [ "$KIT_MODE" = cpu ]; then sizes=128; iterations=10; gpu_flag=""; fi
  local result
  # shellcheck disable=SC2086
  result=$(time_lifted_layer $gpu_flag -sizes "$sizes" -dims "$dims" -iterations "$iterations") \
    || fail "time_lifted_layer failed"
  echo "$result"
  fig caffe "[$(echo "$result" | grep '^{' | paste -sd, -)]"
  local python
  if [ "$KIT_MODE" = gpu ] && python=$(torch_python); then
    result=$("$python" "$KIT/peers.py" lifted --sizes "$sizes" --dims "$dims" \
      --iterations "$iterations") || fail "peers.py lifted failed"
    echo "$result"
    fig pytorch_metric_learning "[$(echo "$result" | grep '^{' | paste -sd, -)]"
  else
    fig pytorch_metric_learning null
  fi
}

# Caffe's Data layer alone on the fixture's JPEG datums with the paper's
# transform: decode + crop + mirror + mean on this machine's CPU, stock (one
# thread) and on every core (patch 0011's threads).
step_data_layer() {
  local cores threads log ms rates=""
  cores=$(getconf _NPROCESSORS_ONLN)
  for threads in 1 "$cores"; do
    log=$WORK/data_layer_$threads.log
    CAFFE_DATA_THREADS=$threads caffe time -model nets/data_layer.prototxt -iterations 50 \
      > "$log" 2>&1 || { cat "$log"; fail "caffe time on the data layer failed"; }
    cat "$log"
    ms=$(sed -n 's/.*Average Forward pass: \([0-9.]*\) ms.*/\1/p' "$log" | tail -1)
    [ -n "$ms" ] || fail "no forward time in the log"
    rates+="${rates:+, }\"$threads\": $(awk -v m="$ms" 'BEGIN { printf "%.0f", 128000 / m }')"
    [ "$cores" = 1 ] && break
  done
  fig images_per_s_by_threads "{$rates}"
  fig cores "$cores"
}

STEP=$1
"step_$STEP"
