#!/usr/bin/env python3
"""Build BVLC Caffe (pinned) with this project's layers into build/caffe."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from liftedstruct.caffe_build import BuildError, BuildOptions, build  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--caffe-src", type=Path,
                        help="a BVLC tarball or checkout at the pinned commit "
                             "instead of the Debian source package")
    parser.add_argument("--cuda", action="store_true",
                        help="build with CUDA (nvcc, cuBLAS, cuRAND)")
    parser.add_argument("--cudnn", action="store_true",
                        help="with --cuda: Caffe's cuDNN layers (cuDNN 8/9 through "
                             "patch 0008)")
    parser.add_argument("--cuda-arch", nargs="+", default=["90"],
                        help="compute capabilities; PTX for the last (default: 90)")
    parser.add_argument("--cuda-libs-from-wheels", action="store_true",
                        help="take cuBLAS/cuRAND from PyPI wheels even if the "
                             "toolkit has them")
    parser.add_argument("--all-tests", action="store_true",
                        help="build all of Caffe's gtests, not just the ones "
                             "for the layers this project uses")
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--force", action="store_true",
                        help="rebuild even if the inputs did not change")
    args = parser.parse_args()
    if args.cudnn and not args.cuda:
        parser.error("--cudnn needs --cuda")
    options = BuildOptions(cuda=args.cuda, cudnn=args.cudnn, cuda_arch=args.cuda_arch,
                           cuda_libs_from_wheels=args.cuda_libs_from_wheels,
                           all_tests=args.all_tests)
    if args.jobs:
        options.jobs = args.jobs
    try:
        build(args.caffe_src, options, force=args.force)
    except BuildError as error:
        print(f"build_caffe: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
