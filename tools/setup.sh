#!/usr/bin/env bash
# Sets up everything this project needs on Debian 12: the build packages that
# are missing, the Python environment .venv (with this project's package
# installed into it), and Caffe with this project's layers in build/caffe
# (rebuilt only when an input changed). Caffe's programs are linked into
# .venv/bin, so `source .venv/bin/activate` puts `caffe` on the PATH.
# Arguments go to tools/build_caffe.py (e.g. --cuda, --caffe-src PATH).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

mapfile -t packages < <(grep -v '^\s*\(#\|$\)' tools/debian-packages.txt)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "[setup] installing Debian packages: ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" > /dev/null
fi

# Debian's own interpreter by default: the one python3-dev and Boost.Python
# are built for, and what the Dockerfile and a fresh Debian 12 machine have.
if [ -z "${PYTHON:-}" ]; then
  if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
fi
interpreter=$("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')
wanted=$( { cat requirements.txt pyproject.toml; echo "$interpreter"; } | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.requirements.sha256 2>/dev/null)" != "$wanted" ]; then
  echo "[setup] creating .venv with $interpreter from requirements.txt"
  rm -rf .venv
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.txt
  .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
  echo "$wanted" > .venv/.requirements.sha256
fi

.venv/bin/python tools/build_caffe.py "$@"

# Caffe's programs beside the venv's python: `.venv/bin/caffe train ...`, or
# `caffe train ...` after `source .venv/bin/activate`.
prefix=${CAFFE_ROOT:-$root/build/caffe}
for program in caffe convert_imageset compute_image_mean extract_features upgrade_net_proto_text; do
  if [ -x "$prefix/bin/$program" ]; then ln -sfn "$prefix/bin/$program" ".venv/bin/$program"; fi
done
