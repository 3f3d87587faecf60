#!/usr/bin/env bash
# Sets up everything this project needs on Debian 12: the build packages that
# are missing, the Python environment .venv, and Caffe with this project's
# layers in build/caffe (rebuilt only when an input changed).
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

python=${PYTHON:-python3}
wanted=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.requirements.sha256 2>/dev/null)" != "$wanted" ]; then
  echo "[setup] creating .venv from requirements.txt"
  "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.txt
  echo "$wanted" > .venv/.requirements.sha256
fi

exec .venv/bin/python tools/build_caffe.py "$@"
