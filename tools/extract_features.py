#!/usr/bin/env python3
"""Extract test-set features (fc_embedding, GoogLeNet's pool5/7x7_s1, ...)
with pycaffe into one .npz: features (or features_<blob> when several
blobs), labels, ids. Centre crop, no mirror, the training mean and scale."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from liftedstruct.features import (  # noqa: E402
    ExtractionError,
    ImageListSource,
    LmdbSource,
    Transform,
    extract,
)
from liftedstruct.paths import import_caffe  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deploy", type=Path, required=True, help="deploy prototxt")
    parser.add_argument("--weights", type=Path, required=True, help=".caffemodel")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--lmdb", type=Path, help="test LMDB from prepare_dataset.py")
    source.add_argument("--images", type=Path, help="'path label' list of image files")
    parser.add_argument("--image-root", type=Path, help="folder the --images paths are in")
    parser.add_argument("--resize", type=int, default=256, help="--images resize (256)")
    parser.add_argument("--blobs", nargs="+", default=["fc_embedding"])
    parser.add_argument("--out", type=Path, required=True, help="output .npz")
    parser.add_argument("--train-val", type=Path,
                        help="take crop, mean and scale from this net's TEST Data layer")
    parser.add_argument("--crop", type=int, help="default: the deploy input's size")
    parser.add_argument("--mean", type=float, nargs="*", default=[104, 117, 123],
                        help="BGR mean values (default: 104 117 123)")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--gpu", type=int, help="GPU id (default: CPU)")
    args = parser.parse_args()
    for path, what in ((args.deploy, "--deploy"), (args.weights, "--weights")):
        if not path.is_file():
            print(f"extract_features: error: {what} {path}: no such file", file=sys.stderr)
            return 2
    caffe = import_caffe()
    if args.gpu is None:
        caffe.set_mode_cpu()
    else:
        caffe.set_device(args.gpu)
        caffe.set_mode_gpu()
    from caffe.proto import caffe_pb2

    try:
        net = caffe.Net(str(args.deploy), str(args.weights), caffe.TEST)
        if args.train_val:
            transform = Transform.from_train_val(args.train_val, caffe_pb2)
        else:
            crop = args.crop or net.blobs[net.inputs[0]].data.shape[-1]
            transform = Transform(crop=crop, mean=tuple(args.mean), scale=args.scale)
        data = (LmdbSource(args.lmdb, caffe_pb2) if args.lmdb else
                ImageListSource(args.images, args.image_root, args.resize))
        out = extract(net, data, args.blobs, transform, args.out, args.batch)
    except ExtractionError as error:
        print(f"extract_features: error: {error}", file=sys.stderr)
        return 2
    print(f"{out}: {len(data)} images, blobs {', '.join(args.blobs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
