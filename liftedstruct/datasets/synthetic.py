"""An Online Products-format download of generated pictures: Ebay_train.txt,
Ebay_test.txt and <super class>_final/<class>_<n>.JPG, as in
Stanford_Online_Products.zip. For checks that need the real format at the
real image size without the real images (the GPU kit's training fixture).

Each class is a coloured shape on a shaded background; the images of a class
move, scale and tint the shape a little, so an embedding can learn the
classes and a training loss falls."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from liftedstruct.constants import IMAGE_SIZE
from liftedstruct.datasets.sop import HEADER

SUPER_CLASSES = ("bicycle", "cabinet", "chair", "coffee_maker", "fan", "kettle",
                 "lamp", "mug", "sofa", "stapler", "table", "toaster")


def class_picture(class_id: int, image: int, size: int, seed: int) -> np.ndarray:
    """The image-th picture (BGR, size x size) of class class_id."""
    look = np.random.default_rng([seed, class_id])  # the class's look
    jitter = np.random.default_rng([seed, class_id, image])  # this picture's
    background, colour = look.integers(0, 256, size=(2, 3))
    shade = (np.arange(size) / size)[None, :, None]
    picture = (background * (1 - 0.4 * shade) + (255 - background) * 0.4 * shade)
    picture = np.ascontiguousarray(np.broadcast_to(picture, (size, size, 3)),
                                   dtype=np.uint8)
    cx, cy = (look.uniform(0.3, 0.7, 2) * size + jitter.normal(0, size / 32, 2)).astype(int)
    radius = int(look.uniform(0.12, 0.3) * size * jitter.uniform(0.9, 1.1))
    tint = tuple(int(c) for c in np.clip(colour + jitter.normal(0, 10, 3), 0, 255))
    shape = int(look.integers(0, 3))
    if shape == 0:
        cv2.circle(picture, (cx, cy), radius, tint, -1, cv2.LINE_AA)
    elif shape == 1:
        cv2.rectangle(picture, (cx - radius, cy - radius // 2),
                      (cx + radius, cy + radius // 2), tint, -1, cv2.LINE_AA)
    else:
        corners = np.array([[cx, cy - radius], [cx - radius, cy + radius],
                            [cx + radius, cy + radius]], np.int32)
        cv2.fillConvexPoly(picture, corners, tint, cv2.LINE_AA)
    return picture


def write_online_products(root: Path, train_classes: int, test_classes: int,
                          per_class: int, size: int = IMAGE_SIZE, seed: int = 0) -> Path:
    """Write root/Stanford_Online_Products/ and return it: train classes
    1..train_classes, test classes after them, per_class images each."""
    base = root / "Stanford_Online_Products"
    image_id, class_id = 0, 0
    for split, count in (("train", train_classes), ("test", test_classes)):
        lines = [" ".join(HEADER) + "\n"]
        for _ in range(count):
            class_id += 1
            super_id = class_id % len(SUPER_CLASSES)
            folder = base / f"{SUPER_CLASSES[super_id]}_final"
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(per_class):
                image_id += 1
                rel = f"{folder.name}/{class_id}_{n}.JPG"
                if not cv2.imwrite(str(base / rel), class_picture(class_id, n, size, seed),
                                   [cv2.IMWRITE_JPEG_QUALITY, 95]):
                    raise OSError(f"could not write {base / rel}")
                lines.append(f"{image_id} {class_id} {super_id + 1} {rel}\n")
        (base / f"Ebay_{split}.txt").write_text("".join(lines))
    return base
