# shellcheck shell=bash
# Sourced by run.sh, or by you: `source gpu-kit/env.sh` puts the kit's
# programs on PATH and the machine's CUDA libraries on LD_LIBRARY_PATH.
# The kit carries every library Caffe needs except glibc, libstdc++ and
# CUDA's (cudart, cuBLAS, cuRAND, cuDNN, NCCL, and the driver's libcuda):
# those are looked for where CUDA installs put them.

KIT=${KIT:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
# shellcheck source=/dev/null
. "$KIT/kit.env"

# A JSON string of its argument (run.sh and steps.sh write their figures with it).
json_str() {
  printf '%s' "$1" | awk 'BEGIN { ORS = ""; print "\"" }
    { gsub(/\\/, "\\\\"); gsub(/"/, "\\\""); gsub(/\t/, "\\t"); gsub(/[[:cntrl:]]/, "")
      if (NR > 1) print "\\n"; print }
    END { print "\"" }'
}

# Folders that may hold CUDA libraries, most specific first: LD_LIBRARY_PATH,
# $CUDA_HOME, /usr/local/cuda*, the nvidia/*/lib folders of Python
# site-packages (PyTorch's CUDA wheels), the driver's folders.
kit_cuda_dirs() {
  local entry dir python sites=()
  local IFS=:
  for entry in ${LD_LIBRARY_PATH:-}; do [ -n "$entry" ] && echo "$entry"; done
  unset IFS
  if [ -n "${CUDA_HOME:-}" ]; then echo "$CUDA_HOME/lib64"; echo "$CUDA_HOME/lib"; fi
  echo /usr/local/cuda/lib64
  printf '%s\n' /usr/local/cuda-*/lib64 | grep -v '\*' | sort -r -V
  for python in python3 /opt/*/.venv/bin/python3 /opt/conda/bin/python3; do
    if command -v "$python" >/dev/null 2>&1; then
      while IFS= read -r dir; do sites+=("$dir"); done < <("$python" -c \
        'import site, sys; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' \
        2>/dev/null)
    fi
  done
  for dir in /usr/local/lib/python3*/dist-packages /usr/local/lib/python3*/site-packages \
             /usr/lib/python3/dist-packages; do
    sites+=("$dir")
  done
  for dir in "${sites[@]}"; do
    for lib in "$dir"/nvidia/*/lib; do [ -d "$lib" ] && echo "$lib"; done
  done
  echo /usr/local/nvidia/lib64
  echo /usr/lib/x86_64-linux-gnu
  echo /usr/lib64
  echo /usr/lib/wsl/lib
}

# The first folder holding soname, or nothing.
kit_find_lib() {
  local dir
  while IFS= read -r dir; do
    if [ -e "$dir/$1" ]; then echo "$dir"; return 0; fi
  done < <(kit_cuda_dirs)
  return 1
}

# Puts the folders of KIT_CUDA_LIBS (and, with "driver", libcuda.so.1) on
# LD_LIBRARY_PATH; KIT_MISSING names those not found (returns 1 if any).
kit_cuda_env() {
  local soname dir missing=() dirs=""
  local wanted
  read -r -a wanted <<< "$KIT_CUDA_LIBS"
  [ "${1:-}" = driver ] && wanted+=(libcuda.so.1)
  for soname in "${wanted[@]}"; do
    if dir=$(kit_find_lib "$soname"); then
      case ":$dirs:" in *":$dir:"*) ;; *) dirs="${dirs:+$dirs:}$dir" ;; esac
    else
      missing+=("$soname")
    fi
  done
  export LD_LIBRARY_PATH="${dirs}${LD_LIBRARY_PATH:+${dirs:+:}$LD_LIBRARY_PATH}"
  KIT_MISSING="${missing[*]}"
  [ -z "$KIT_MISSING" ]
}

export PATH="$KIT/bin:$PATH"
if [ "${BASH_SOURCE[0]}" != "$0" ] && [ -z "${KIT_QUIET:-}" ]; then
  if ! kit_cuda_env driver; then
    echo "gpu-kit: not found: $KIT_MISSING (searched: LD_LIBRARY_PATH, CUDA_HOME," \
         "/usr/local/cuda*, Python's nvidia/*/lib, the driver's folders)" >&2
  fi
fi
