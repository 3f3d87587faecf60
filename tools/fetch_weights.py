#!/usr/bin/env python3
"""Get bvlc_googlenet.caffemodel (ImageNet GoogLeNet, BVLC model zoo) into
data/weights/, resumable and SHA1-checked, or take a copy you already have."""

from __future__ import annotations

import sys

import _launch  # noqa: F401  (the project's .venv, whatever started the tool)

from liftedstruct import cli
from liftedstruct.files import check_writable
from liftedstruct.weights import DEFAULT_PATH, download, install_from


def main() -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--from", dest="source", type=cli.input_file,
                        help="a bvlc_googlenet.caffemodel you already have")
    parser.add_argument("--out", type=cli.output_file, default=DEFAULT_PATH)
    args = parser.parse_args()
    check_writable(args.out, "--out", kind="file")
    path = install_from(args.source, args.out) if args.source else download(args.out)
    print(f"{path}: verified")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
