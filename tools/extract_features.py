#!/usr/bin/env python3
"""Extract test-set features (fc_embedding, GoogLeNet's pool5/7x7_s1, ...)
with pycaffe into one .npz: features (or features_<blob> when several
blobs), labels, ids. Centre crop, no mirror, the training mean and scale.

The weights must hold every learnable layer that computes the blobs (Caffe
would silently leave the others at their random start). An interrupted run
resumes; parts from a run with other weights, net, images or settings are
discarded, never mixed in."""

from __future__ import annotations

import sys

import _launch  # noqa: F401  (the project's .venv, whatever started the tool)

from liftedstruct import cli
from liftedstruct.constants import IMAGE_SIZE, IMAGENET_MEAN_BGR
from liftedstruct.errors import ExtractionError
from liftedstruct.features import (
    ImageListSource,
    LmdbSource,
    Transform,
    extract_checked,
    open_net,
)
from liftedstruct.files import check_not_input, check_writable
from liftedstruct.paths import check_gpu, import_caffe


def main() -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--deploy", type=cli.input_file, required=True, help="deploy prototxt")
    parser.add_argument("--weights", type=cli.input_file, required=True, help=".caffemodel")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--lmdb", type=cli.datum_lmdb, help="test LMDB from prepare_dataset.py")
    source.add_argument("--images", type=cli.input_file, help="'path label' list of image files")
    parser.add_argument("--image-root", type=cli.input_folder,
                        help="folder the --images paths are in")
    parser.add_argument("--resize", type=cli.positive_int, default=IMAGE_SIZE,
                        help=f"--images resize ({IMAGE_SIZE})")
    parser.add_argument("--blobs", nargs="+", default=["fc_embedding"])
    parser.add_argument("--out", type=cli.output_file, required=True, help="output .npz")
    parser.add_argument("--train-val", type=cli.input_file,
                        help="take crop, mean and scale from this net's TEST Data layer")
    parser.add_argument("--crop", type=cli.positive_int,
                        help="centre crop (default: the deploy input's size; a crop much "
                             "smaller than the images is refused unless given here)")
    parser.add_argument("--mean", type=float, nargs="*", default=list(IMAGENET_MEAN_BGR),
                        help="BGR mean values (default: 104 117 123)")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--batch", type=cli.positive_int, default=64)
    parser.add_argument("--gpu", type=int, help="GPU id (default: CPU)")
    args = parser.parse_args()
    for path, what in ((args.deploy, "--deploy"), (args.weights, "--weights")):
        if not path.is_file():
            raise ExtractionError(f"{what} {path}: no such file")
    check_writable(args.out, "--out", kind="file")
    check_not_input(args.out, "--out", {"--deploy": args.deploy, "--weights": args.weights,
                                        "--train-val": args.train_val,
                                        "--images": args.images})
    caffe = import_caffe()
    check_gpu(args.gpu)
    net = open_net(caffe, args.deploy, args.weights, args.blobs, args.gpu)
    if args.train_val:
        transform = Transform.from_train_val(args.train_val)
    else:
        crop = args.crop or net.blobs[net.inputs[0]].data.shape[-1]
        transform = Transform(crop=crop, mean=tuple(args.mean), scale=args.scale)
    data = (LmdbSource(args.lmdb) if args.lmdb else
            ImageListSource(args.images, args.image_root, args.resize))
    out = extract_checked(net, args.deploy, args.weights, data, args.blobs, transform,
                          args.out, allow_small=args.crop is not None or bool(args.train_val),
                          batch=args.batch)
    print(f"{out}: {len(data)} images, blobs {', '.join(args.blobs)}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
