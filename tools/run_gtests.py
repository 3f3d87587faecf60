#!/usr/bin/env python3
"""Run Caffe's test binary on our layers' gtests and Caffe's tests of the
layers this project uses (with cuDNN, also their CuDNN* cases); exit non-zero
on any failure or if none of the lifted layer's ran."""

from __future__ import annotations

import re
import subprocess
import sys

import _launch  # noqa: F401  (the project's .venv, whatever started the tool)

from liftedstruct import cli
from liftedstruct.caffebuild.cmake import TEST_WORKDIR, installed_options
from liftedstruct.caffebuild.gtests import gtest_filter
from liftedstruct.paths import caffe_binary, caffe_root


def main() -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--filter", help="gtest filter (default: this project's set for "
                                         "the installed build)")
    args = parser.parse_args()
    testbin = caffe_binary("test.testbin")
    cudnn = bool(installed_options().get("cudnn"))
    cmd = [str(testbin), f"--gtest_filter={args.filter or gtest_filter(cudnn)}"]
    print(" ".join(cmd), flush=True)
    result = subprocess.run(cmd, capture_output=True, text=True,
                            cwd=caffe_root() / TEST_WORKDIR)
    output = result.stdout + result.stderr
    failed = [line for line in output.splitlines() if line.startswith("[  FAILED  ]")]
    summary = [line for line in output.splitlines()
               if line.startswith(("[==========]", "[  PASSED  ]", "[  FAILED  ]"))]
    print("\n".join(summary or output.splitlines()[-40:]))
    ran = re.search(r"\[==========\] (\d+) tests? from", output)
    lifted = output.count("[       OK ] LiftedStructSimilaritySoftmaxLoss")
    if result.returncode != 0 or failed:
        print(output[-20000:])
        return 1
    if not ran or int(ran.group(1)) == 0 or lifted == 0:
        print("run_gtests: no tests (or none of the lifted layer's) ran")
        return 1
    print(f"gtest: {ran.group(1)} passed, 0 failed ({lifted} of the lifted layer)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
