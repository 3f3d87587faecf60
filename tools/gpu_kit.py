#!/usr/bin/env python3
"""Build the portable GPU kit: this Caffe for CUDA + cuDNN 9 + NCCL (sm_90
with PTX by default), every non-CUDA library it loads, and gpu-kit/run.sh,
the check that tests and times every GPU path, in one archive
OUT/lifted-gpu-kit.tar.xz that unpacks to gpu-kit/.

On the GPU machine: tar -xf lifted-gpu-kit.tar.xz && gpu-kit/run.sh RESULTS
(gpu-kit/run.sh --cpu RESULTS runs what needs no GPU). Needs tools/setup.sh
first (its Python environment makes the kit's data fixture).
"""

from __future__ import annotations

import sys

import _launch  # noqa: F401  (the project's .venv, whatever started the tool)

from liftedstruct import cli
from liftedstruct.caffebuild.kit import make_kit


def main() -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--out", type=cli.output_folder, required=True,
                        help="folder for the archive")
    parser.add_argument("--from-prefix", type=cli.input_folder,
                        help="package this Caffe install (e.g. build/caffe) instead of "
                             "building the kit's CUDA variant")
    parser.add_argument("--format", choices=["xz", "gz", "none"], default="xz",
                        help="archive compression; none leaves the gpu-kit folder in OUT")
    parser.add_argument("--cuda-arch", nargs="+", type=cli.cuda_arch, default=["90"],
                        help="compute capabilities; PTX for the last (default: 90)")
    parser.add_argument("--jobs", type=cli.positive_int)
    args = parser.parse_args()
    make_kit(args.out, args.from_prefix, args.format, args.jobs, args.cuda_arch)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
