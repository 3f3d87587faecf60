#!/usr/bin/env bash
# Runs every test: sets up (builds Caffe only if an input changed), runs the
# layers' gtests and Caffe's own tests of the layers we use in Caffe's test
# binary, then pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
tools/setup.sh "$@"
echo "== gtest (build/caffe/bin/test.testbin)"
.venv/bin/python tools/run_gtests.py
echo "== pytest"
.venv/bin/python -m pytest tests
