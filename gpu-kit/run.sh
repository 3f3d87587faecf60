#!/usr/bin/env bash
# The kit's check: every GPU path of this Caffe tested and timed in one run.
#   gpu-kit/run.sh [--cpu] OUT
# Runs each step of steps.sh under its own time limit, goes on after a step
# that failed, and writes OUT/gpu_check.json (the steps with their status,
# seconds and figures; the GPU, driver and library versions found),
# OUT/summary.txt and OUT/logs.tar.gz. Exits 0 only when no step failed.
# --cpu runs every step that needs no GPU on the CPU at small sizes and marks
# the others skipped. KIT_TIME_LIMIT (seconds; default 420, 1800 with --cpu,
# where a 2-core machine trains for minutes) bounds the run;
# KIT_STEPS="train features ..." runs only those steps (the others: skipped).
# A setting it cannot use (a step it does not know, a limit that is not a
# number of seconds) is refused before anything runs, and a run in which no
# step ran (all skipped) is a failure: a check that ran nothing never passes.
set -uo pipefail
KIT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export KIT KIT_QUIET=1
# shellcheck source=env.sh
. "$KIT/env.sh"

usage() { echo "usage: $0 [--cpu] OUT" >&2; exit 2; }
KIT_MODE=gpu
OUT=""
for arg in "$@"; do
  case "$arg" in
    --cpu) KIT_MODE=cpu ;;
    -h|--help) usage ;;
    -*) echo "$0: unknown option $arg" >&2; usage ;;
    *) [ -z "$OUT" ] || usage; OUT=$arg ;;
  esac
done
[ -n "$OUT" ] || usage
# The steps, in order: name, limit on a GPU, limit on the CPU (seconds).
STEPS=(
  "environment 60 60"
  "gtest 240 300"
  "lifted_gpu_equals_cpu 60 60"
  "train 180 900"
  "train_all_gpus 90 90"
  "features 120 300"
  "speed_caffe 90 90"
  "speed_torch 120 120"
  "layer_speed 90 120"
  "data_layer 60 120"
)
STEP_NAMES=$(for step in "${STEPS[@]}"; do printf '%s ' "${step%% *}"; done)
MIN_STEP_SECONDS=15  # a step is not started with less time than this left
refuse() { echo "$0: $*" >&2; exit 2; }
if [ -n "${KIT_STEPS+set}" ]; then
  [ -n "${KIT_STEPS// /}" ] || refuse "KIT_STEPS is set but empty: name the steps to run" \
    "(of: ${STEP_NAMES% }), or unset it to run them all"
  for name in $KIT_STEPS; do
    [[ " $STEP_NAMES" == *" $name "* ]] ||
      refuse "KIT_STEPS: no step '$name' (the steps: ${STEP_NAMES% })"
  done
fi
if [ -n "${KIT_TIME_LIMIT+set}" ]; then
  [[ "$KIT_TIME_LIMIT" =~ ^[0-9]+$ ]] ||
    refuse "KIT_TIME_LIMIT='$KIT_TIME_LIMIT': give whole seconds (e.g. 600)"
  ((10#$KIT_TIME_LIMIT >= MIN_STEP_SECONDS)) ||
    refuse "KIT_TIME_LIMIT=$KIT_TIME_LIMIT: too short for any step to run" \
      "(at least $MIN_STEP_SECONDS s; the default is 420, 1800 with --cpu)"
  KIT_TIME_LIMIT=$((10#$KIT_TIME_LIMIT))
fi
if [ -n "${KIT_FEATURE_TOLERANCE+set}" ]; then
  awk -v t="$KIT_FEATURE_TOLERANCE" 'BEGIN { exit !(t ~ /^([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$/ && t + 0 > 0) }' ||
    refuse "KIT_FEATURE_TOLERANCE='$KIT_FEATURE_TOLERANCE': give a relative difference" \
      "above 0 (e.g. 1e-3, the default)"
fi
TMP_ROOT=${TMPDIR:-/tmp}
if ! { [ -d "$TMP_ROOT" ] && [ -w "$TMP_ROOT" ]; }; then
  refuse "TMPDIR=$TMP_ROOT: not a folder this user can write (the steps work there)"
fi
if [ -e "$OUT" ] && [ ! -d "$OUT" ]; then refuse "$OUT: a file is there; give a folder"; fi
if [ "$KIT_MODE" = gpu ] && [ "$KIT_GPU" != 1 ]; then
  echo "$0: this kit was built without CUDA; run it with --cpu" >&2; exit 2
fi
if ! mkdir -p "$OUT" 2>/dev/null || [ ! -w "$OUT" ]; then refuse "cannot write to $OUT"; fi
OUT=$(cd "$OUT" && pwd)
for old in gpu_check.json summary.txt logs.tar.gz; do rm -f "$OUT/$old"; done

TOTAL_LIMIT=${KIT_TIME_LIMIT:-$([ "$KIT_MODE" = gpu ] && echo 420 || echo 1800)}
START=$(date +%s)
WORK=$(mktemp -d "$TMP_ROOT/lifted-kit.XXXXXX") || refuse "cannot make a folder in $TMP_ROOT"
LOGS=$WORK/logs
mkdir -p "$LOGS" "$WORK/figures"
# shellcheck disable=SC2317  # called by the trap
cleanup() { [ -n "${KIT_KEEP_WORK:-}" ] || rm -rf "$WORK"; }
trap cleanup EXIT
# The steps read Caffe's INFO lines (losses, timings, cuDNN): whatever the
# caller's glog settings, Caffe logs everything to the step's log.
export KIT_MODE WORK LOGS GLOG_logtostderr=1 GLOG_minloglevel=0

STEP_JSON=()
FAILED=0
RAN=0
SUMMARY=""
# run_step NAME GPU_LIMIT CPU_LIMIT: runs steps.sh NAME under the mode's
# limit (or what is left of the total), then records its status, time and
# figures.
run_step() {
  local name=$1 limit=$2 left status rc t0 t1 seconds figures
  [ "$KIT_MODE" = gpu ] || limit=$3
  left=$((TOTAL_LIMIT - ($(date +%s) - START)))
  export FIG="$WORK/figures/$name"
  : > "$FIG"
  t0=$(date +%s%N)
  if [ -n "${KIT_STEPS:-}" ] && [[ " $KIT_STEPS " != *" $name "* ]]; then
    echo "\"reason\": \"not in KIT_STEPS\"" >> "$FIG"
    rc=77
  elif ((left < MIN_STEP_SECONDS)); then
    echo "\"reason\": \"out of time: KIT_TIME_LIMIT=$TOTAL_LIMIT s was spent\"" >> "$FIG"
    rc=77
  else
    ((limit > left)) && limit=$left
    echo "== $name (limit ${limit}s)"
    timeout -k 10 "$limit" bash "$KIT/steps.sh" "$name" > "$LOGS/$name.log" 2>&1
    rc=$?
  fi
  t1=$(date +%s%N)
  seconds=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
  case $rc in
    0) status=passed ;;
    77) status=skipped ;;
    124|137) status=failed
             grep -v '^"reason"' "$FIG" > "$FIG.tmp"; mv "$FIG.tmp" "$FIG"
             echo "\"reason\": \"timed out after ${limit} s\"" >> "$FIG" ;;
    *) status=failed ;;
  esac
  if [ "$status" = failed ] && ! grep -q '^"reason"' "$FIG"; then
    echo "\"reason\": $(json_str "exit status $rc; last lines: $(tail -n 5 "$LOGS/$name.log" 2>/dev/null)")" >> "$FIG"
  fi
  [ "$status" = failed ] && FAILED=1
  [ "$status" = skipped ] || RAN=$((RAN + 1))
  figures=$(awk 'NF { printf "%s%s", sep, $0; sep = ", " }' "$FIG")
  STEP_JSON+=("{\"name\": \"$name\", \"status\": \"$status\", \"seconds\": $seconds${figures:+, $figures}}")
  SUMMARY+=$(printf '%-24s %-8s %7ss' "$name" "$status" "$seconds")$'\n'
  printf '%-24s %-8s %7ss\n' "$name" "$status" "$seconds"
}

for step in "${STEPS[@]}"; do
  # shellcheck disable=SC2086  # name and limits: three words
  run_step $step
done
NOTHING_RAN=""
if ((RAN == 0)); then
  FAILED=1
  NOTHING_RAN="no step ran (every one was skipped: ${KIT_STEPS:+KIT_STEPS=\"$KIT_STEPS\", }$KIT_MODE mode, KIT_TIME_LIMIT=$TOTAL_LIMIT s); a check that ran nothing has not passed"
  echo "$0: $NOTHING_RAN" >&2
fi
REASON_LINE=""
[ -z "$NOTHING_RAN" ] || REASON_LINE=$'\n'"  \"reason\": $(json_str "$NOTHING_RAN"),"

steps=$(printf '%s,\n' "${STEP_JSON[@]}")
machine="{\"cpu\": $(json_str "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"),"
machine+=" \"cores\": $(getconf _NPROCESSORS_ONLN),"
machine+=" \"memory_mib\": $(awk '/^MemTotal/ { print int($2 / 1024) }' /proc/meminfo),"
machine+=" \"os\": $(json_str "$(. /etc/os-release 2>/dev/null; echo "${PRETTY_NAME:-unknown}")")}"
env_figures=$(awk 'NF { printf "%s%s", sep, $0; sep = ", " }' "$WORK/figures/environment")
cat > "$OUT/gpu_check.json.tmp" <<JSON
{
  "kit": {"version": $(json_str "$KIT_VERSION"), "build": $(json_str "$KIT_VARIANT"), "built_for": $(json_str "$KIT_CUDA_ARCH")},
  "mode": "$KIT_MODE",
  "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "seconds": $(($(date +%s) - START)),
  "passed": $([ $FAILED = 0 ] && echo true || echo false),
  "steps_run": $RAN,$REASON_LINE
  "machine": $machine,
  "environment": {${env_figures}},
  "steps": [
${steps%,}
  ]
}
JSON
mv "$OUT/gpu_check.json.tmp" "$OUT/gpu_check.json"
printf '%s' "$SUMMARY" > "$OUT/summary.txt"
tar -czf "$OUT/logs.tar.gz.tmp" -C "$WORK" logs && mv "$OUT/logs.tar.gz.tmp" "$OUT/logs.tar.gz"
if [ -n "$NOTHING_RAN" ]; then verdict="no step ran"
elif [ $FAILED = 0 ]; then verdict="no step failed"
else verdict="a step failed"; fi
echo "wrote $OUT/gpu_check.json ($verdict)"
exit $FAILED
