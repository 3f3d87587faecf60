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
if [ "$KIT_MODE" = gpu ] && [ "$KIT_GPU" != 1 ]; then
  echo "$0: this kit was built without CUDA; run it with --cpu" >&2; exit 2
fi
if ! mkdir -p "$OUT" || [ ! -w "$OUT" ]; then echo "$0: cannot write to $OUT" >&2; exit 2; fi
OUT=$(cd "$OUT" && pwd)
for old in gpu_check.json summary.txt logs.tar.gz; do rm -f "$OUT/$old"; done

TOTAL_LIMIT=${KIT_TIME_LIMIT:-$([ "$KIT_MODE" = gpu ] && echo 420 || echo 1800)}
START=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lifted-kit.XXXXXX")
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
  elif ((left < 15)); then
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
  figures=$(awk 'NF { printf "%s%s", sep, $0; sep = ", " }' "$FIG")
  STEP_JSON+=("{\"name\": \"$name\", \"status\": \"$status\", \"seconds\": $seconds${figures:+, $figures}}")
  SUMMARY+=$(printf '%-24s %-8s %7ss' "$name" "$status" "$seconds")$'\n'
  printf '%-24s %-8s %7ss\n' "$name" "$status" "$seconds"
}

run_step environment 60 60
run_step gtest 240 300
run_step lifted_gpu_equals_cpu 60 60
run_step train 180 900
run_step train_all_gpus 90 90
run_step features 120 300
run_step speed_caffe 90 90
run_step speed_torch 120 120
run_step layer_speed 90 120
run_step data_layer 60 120

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
echo "wrote $OUT/gpu_check.json ($([ $FAILED = 0 ] && echo 'no step failed' || echo 'a step failed'))"
exit $FAILED
