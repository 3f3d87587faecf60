"""Image decoding, resizing and encoding with OpenCV: what goes into a
Datum and what comes out of one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from liftedstruct.constants import IMAGE_SIZE
from liftedstruct.parallel import ordered_map

if TYPE_CHECKING:
    from liftedstruct.datasets.base import Item


@dataclass(frozen=True)
class ImageFormat:
    size: int = IMAGE_SIZE
    encoding: str = "jpg"  # "jpg", "png", or "raw" for uint8 datums
    quality: int = 95


def process_image(item: Item, fmt: ImageFormat) -> tuple[bytes | None, str | None]:
    """Decode (grayscale, CMYK and alpha become 3-channel BGR), resize to
    size x size, encode. Returns (payload, None) or (None, reason)."""
    if item.pixels is not None:
        image = item.pixels
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    else:
        try:
            data = np.fromfile(item.file, dtype=np.uint8)
        except OSError as error:
            return None, f"unreadable: {error.strerror or error}"
        if data.size == 0:
            return None, "empty file"
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if image is None:
            return None, "not a decodable image"
    if image.shape[:2] != (fmt.size, fmt.size):
        image = cv2.resize(image, (fmt.size, fmt.size), interpolation=cv2.INTER_LINEAR)
    if fmt.encoding == "raw":
        return np.ascontiguousarray(image.transpose(2, 0, 1)).tobytes(), None
    params = [cv2.IMWRITE_JPEG_QUALITY, fmt.quality] if fmt.encoding == "jpg" else []
    ok, buffer = cv2.imencode("." + fmt.encoding, image, params)
    if not ok:
        return None, f"cannot encode as {fmt.encoding}"
    return buffer.tobytes(), None


def _process_job(job: tuple[Item, ImageFormat]) -> tuple[bytes | None, str | None]:
    return process_image(*job)


def process_images(items: list[Item], fmt: ImageFormat, workers: int,
                   desc: str) -> list[tuple[bytes | None, str | None]]:
    """process_image over items in parallel processes, in order."""
    jobs = [(item, fmt) for item in items]
    workers = workers if len(items) >= 64 and workers > 1 else 1
    return ordered_map(_process_job, jobs, workers, desc=desc, unit="img", chunksize=32)


def synthetic_photo(rng: np.random.Generator, width: int, height: int,
                    detail: float = 0.0) -> np.ndarray:
    """A BGR picture whose JPEG sizes are like photos', not like noise':
    random colors 16 pixels apart, smoothly interpolated, plus (detail > 0)
    finer texture of that standard deviation (10: 256x256 quality-95 JPEG
    datums of about 37 KB)."""
    small = rng.integers(0, 256, size=(height // 16, width // 16, 3), dtype=np.uint8)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    if detail:
        fine = rng.normal(0, detail, size=(height // 2, width // 2, 3)).astype(np.float32)
        fine = cv2.resize(fine, (width, height), interpolation=cv2.INTER_CUBIC)
        image = np.clip(image + fine, 0, 255).astype(np.uint8)
    return image


def write_synthetic_jpegs(folder: Path, count: int, width: int, height: int,
                          detail: float = 0.0, seed: int = 0) -> list[str]:
    """count synthetic_photo pictures as quality-90 JPEGs img_00000.jpg, ...
    in folder (what the benchmarks prepare); returns their names."""
    rng = np.random.default_rng(seed)
    names = []
    for index in range(count):
        name = f"img_{index:05d}.jpg"
        cv2.imwrite(str(folder / name), synthetic_photo(rng, width, height, detail),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
        names.append(name)
    return names


def datum_image(datum) -> np.ndarray | None:
    """A Datum's image as BGR uint8 H x W x 3 (None if it does not decode: an
    undecodable payload, or raw bytes that do not fill channels x H x W)."""
    if datum.encoded:
        if not datum.data:
            return None
        return cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_COLOR)
    shape = (datum.channels, datum.height, datum.width)
    if datum.channels not in (1, 3) or min(shape) < 1 or len(datum.data) != np.prod(shape):
        return None
    image = np.frombuffer(datum.data, np.uint8).reshape(shape).transpose(1, 2, 0)
    if datum.channels == 1:
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_GRAY2BGR)
    return image


def read_image(path, size: int) -> np.ndarray | None:
    """An image file as BGR uint8, resized to size x size (None if unreadable)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        return None
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
