"""Tiny copies of the real datasets in their exact on-disk formats.

Each image is a small generated picture; among them a grayscale JPEG, a PNG
with alpha and a CMYK JPEG, and, on request, a corrupt file.
"""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def write_image(path: Path, seed: int, kind: str = "color") -> None:
    """A 40x30 picture: color/gray JPEG, PNG with alpha, CMYK JPEG, corrupt."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=3)
    image = np.clip(base + rng.normal(0, 20, size=(30, 40, 3)), 0, 255).astype(np.uint8)
    if kind == "color":
        cv2.imwrite(str(path), image)
    elif kind == "gray":
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    elif kind == "alpha":
        alpha = np.full((30, 40, 1), 128, dtype=np.uint8)
        cv2.imwrite(str(path), np.concatenate([image, alpha], axis=2))
    elif kind == "cmyk":
        Image.fromarray(image[:, :, ::-1]).convert("CMYK").save(path, format="JPEG")
    elif kind == "corrupt":
        path.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    else:
        raise ValueError(kind)


def special_kind(index: int, corrupt: bool) -> str:
    """The first images are the unusual ones."""
    kinds = {0: "gray", 1: "cmyk"}
    if corrupt and index == 2:
        return "corrupt"
    return kinds.get(index, "color")


def make_cub(root: Path, classes=(1, 2, 3, 101, 102, 103), per_class: int = 4,
             corrupt: bool = False, archive: bool = False) -> Path:
    """CUB_200_2011/{images.txt, image_class_labels.txt, images/NNN.Name/*}."""
    base = root / "CUB_200_2011"
    images, labels = [], []
    index = 0
    for label in classes:
        folder = f"{label:03d}.Bird_{label}"
        for n in range(per_class):
            index += 1
            kind = special_kind(index - 1, corrupt)
            suffix = "png" if index == 4 else "jpg"
            rel = f"{folder}/Bird_{label}_{n:04d}.{suffix}"
            write_image(base / "images" / rel, index, "alpha" if index == 4 else kind)
            images.append(f"{index} {rel}\n")
            labels.append(f"{index} {label}\n")
    (base / "images.txt").write_text("".join(images))
    (base / "image_class_labels.txt").write_text("".join(labels))
    if not archive:
        return root
    tgz = root.parent / "CUB_200_2011.tgz"
    with tarfile.open(tgz, "w:gz") as handle:
        handle.add(base, arcname="CUB_200_2011")
    shutil.rmtree(root)
    return tgz


def make_cars196(root: Path, classes=(1, 2, 97, 98, 99, 100, 196), per_class: int = 3,
                 corrupt: bool = False) -> Path:
    """cars_annos.mat (annotations struct) + car_ims.tgz (car_ims/NNNNNN.jpg)."""
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    staging = root / "staging"
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class",
              "test"]
    records = []
    index = 0
    for label in classes:
        for _ in range(per_class):
            index += 1
            rel = f"car_ims/{index:06d}.jpg"
            write_image(staging / rel, index, special_kind(index - 1, corrupt))
            records.append((rel, 1, 1, 39, 29, label, index % 2))
    annotations = np.zeros((1, len(records)), dtype=[(f, "O") for f in fields])
    for column, record in enumerate(records):
        for name, value in zip(fields, record, strict=True):
            annotations[0, column][name] = value
    savemat(root / "cars_annos.mat", {"annotations": annotations,
                                      "class_names": np.array(["a", "b"], dtype=object)})
    with tarfile.open(root / "car_ims.tgz", "w:gz") as handle:
        handle.add(staging / "car_ims", arcname="car_ims")
    shutil.rmtree(staging)
    return root


def make_sop(root: Path, train_classes: int = 5, test_classes: int = 5,
             per_class: int = 3, archive: bool = True) -> Path:
    """Stanford_Online_Products/{Ebay_train.txt, Ebay_test.txt, <super>_final/}."""
    base = root / "Stanford_Online_Products"
    header = "image_id class_id super_class_id path\n"
    image_id = 0
    lists = {}
    class_id = 0
    for split, count in (("train", train_classes), ("test", test_classes)):
        lines = [header]
        for _ in range(count):
            class_id += 1
            super_name = ["bicycle", "chair", "mug"][class_id % 3]
            for n in range(per_class):
                image_id += 1
                rel = f"{super_name}_final/{class_id * 1000}_{n}.JPG"
                write_image(base / rel, image_id, special_kind(image_id - 1, False))
                lines.append(f"{image_id} {class_id} {class_id % 3 + 1} {rel}\n")
        lists[split] = lines
        (base / f"Ebay_{split}.txt").write_text("".join(lines))
    if not archive:
        return root
    zip_path = root.parent / "Stanford_Online_Products.zip"
    with zipfile.ZipFile(zip_path, "w") as handle:
        for path in sorted(base.rglob("*")):
            handle.write(path, path.relative_to(root))
    shutil.rmtree(root)
    return zip_path

