#!/usr/bin/env python3
"""Build BVLC Caffe (pinned) with this project's layers into build/caffe."""

from __future__ import annotations

import sys

import _launch  # noqa: F401  (the project's .venv, whatever started the tool)

from liftedstruct import cli
from liftedstruct.caffebuild.cmake import BuildOptions, build


def main() -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--caffe-src", type=cli.input_path,
                        help="a BVLC tarball or checkout at the pinned commit "
                             "instead of the Debian source package")
    parser.add_argument("--cuda", action="store_true",
                        help="build with CUDA (nvcc, cuBLAS, cuRAND)")
    parser.add_argument("--cudnn", action="store_true",
                        help="with --cuda: Caffe's cuDNN layers (cuDNN 8/9 through "
                             "patch 0008)")
    parser.add_argument("--nccl", action="store_true",
                        help="with --cuda: multi-GPU training through NCCL")
    parser.add_argument("--cuda-arch", nargs="+", type=cli.cuda_arch, default=["90"],
                        help="compute capabilities; PTX for the last (default: 90)")
    parser.add_argument("--cuda-from-wheels", action="store_true",
                        help="take the CUDA toolchain and libraries from the PyPI wheels "
                             "pinned in tools/cuda-wheels.txt even if a toolkit is "
                             "installed (without a toolkit this is what happens)")
    parser.add_argument("--all-tests", action="store_true",
                        help="build all of Caffe's gtests, not just the ones "
                             "for the layers this project uses")
    parser.add_argument("--jobs", type=cli.positive_int, default=None)
    parser.add_argument("--force", action="store_true",
                        help="rebuild even if the inputs did not change")
    args = parser.parse_args()
    if (args.cudnn or args.nccl or args.cuda_from_wheels) and not args.cuda:
        parser.error("--cudnn, --nccl and --cuda-from-wheels need --cuda")
    options = BuildOptions(cuda=args.cuda, cudnn=args.cudnn, nccl=args.nccl,
                           cuda_arch=args.cuda_arch, cuda_from_wheels=args.cuda_from_wheels,
                           all_tests=args.all_tests)
    if args.jobs:
        options.jobs = args.jobs
    build(args.caffe_src, options, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
