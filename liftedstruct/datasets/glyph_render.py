"""Glyph images for the glyphs source: FreeType renders (through Pillow),
tight-cropped, centred on a square, seeded affine jitter, 32x32; and the test
of whether two characters' renders coincide in a face."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.spatial.distance import cdist

from liftedstruct.parallel import ordered_map

RENDER_SIZE = 64  # FreeType em size in pixels
OUT_SIZE = 32  # image side
# Blank pixels around the un-jittered glyph: with the jitter below, 2 px let a
# quarter of the images touch the border, 4 px 0.04% (measured on 179 faces).
MARGIN = 4
# A noncharacter no font maps: FreeType draws the face's .notdef box for it.
NOTDEF_PROBE = "\U0010ffff"

# Two renders coincide when the ink-normalised L1 difference is below 10% (the
# same glyph rendered at 60 or 68 px instead of 64 differs by 7.5% at the
# median) and no 3x3 patch differs by more than 45% of full ink (so that a
# crossbar or a dot, H vs Pi, O vs Theta, still counts as a difference).
GLOBAL_THRESHOLD = 0.10
LOCAL_THRESHOLD = 0.45


@dataclass(frozen=True)
class Jitter:
    """Uniform random affine jitter; the shift is in output pixels."""

    max_rotation_deg: float = 4.0
    max_scale: float = 0.06
    max_shift_px: float = 1.5


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def jitter_affine(jitter: Jitter, seed: int, char: str, face: str) -> tuple[float, ...]:
    """(rotation degrees, scale, dx, dy) for one character in one face: a
    function of these and the seed only, whatever the order of rendering."""
    rng = np.random.default_rng([seed, ord(char), _stable_int(face)])
    angle, scale, dx, dy = rng.uniform(-1.0, 1.0, size=4)
    return (angle * jitter.max_rotation_deg, 1.0 + scale * jitter.max_scale,
            dx * jitter.max_shift_px, dy * jitter.max_shift_px)


def ink_crop(font: ImageFont.FreeTypeFont, char: str) -> np.ndarray | None:
    """The character's ink (255 - gray) cropped tight, or None if it has none."""
    left, top, right, bottom = font.getbbox(char, anchor="ls")
    left, top, right, bottom = (math.floor(left), math.floor(top), math.ceil(right),
                                math.ceil(bottom))
    if right <= left or bottom <= top:
        return None
    pad = 4  # the metric box is not always tight: crop from the pixels
    canvas = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 255)
    ImageDraw.Draw(canvas).text((pad - left, pad - top), char, fill=0, font=font, anchor="ls")
    ink = 255 - np.asarray(canvas, dtype=np.uint8)
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        return None
    return np.ascontiguousarray(ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])


def normalize(ink: np.ndarray, affine: tuple[float, ...] | None) -> np.ndarray:
    """Centre the ink on a square whose long side leaves MARGIN pixels, apply
    the affine at render resolution, area-resize to 32x32; black on white."""
    height, width = ink.shape
    per_out = max(height, width) / (OUT_SIZE - 2 * MARGIN)
    work = max(OUT_SIZE, round(OUT_SIZE * per_out))
    canvas = np.zeros((work, work), dtype=np.float32)
    top, left = (work - height) // 2, (work - width) // 2
    canvas[top:top + height, left:left + width] = ink
    if affine is not None:
        angle, scale, dx, dy = affine
        matrix = cv2.getRotationMatrix2D(((work - 1) / 2, (work - 1) / 2), angle, scale)
        matrix[:, 2] += (dx * per_out, dy * per_out)
        canvas = cv2.warpAffine(canvas, matrix, (work, work), flags=cv2.INTER_LINEAR,
                                borderValue=0.0)
    small = cv2.resize(canvas, (OUT_SIZE, OUT_SIZE), interpolation=cv2.INTER_AREA)
    return (255 - np.clip(np.rint(small), 0, 255)).astype(np.uint8)


def face_inks(path: str, chars: str) -> list[np.ndarray] | None:
    """Every character of chars in the face at path as its ink_crop, or None
    when any of them draws nothing or the face's .notdef box (its cmap
    promised more than it has)."""
    font = ImageFont.truetype(path, RENDER_SIZE, layout_engine=ImageFont.Layout.BASIC)
    notdef = ink_crop(font, NOTDEF_PROBE)
    inks = []
    for char in chars:
        ink = ink_crop(font, char)
        if ink is None or (notdef is not None and ink.shape == notdef.shape
                           and np.array_equal(ink, notdef)):
            return None
        inks.append(ink)
    return inks


def normalize_inks(inks: Sequence[np.ndarray], path: str, chars: str,
                   jitter: Jitter | None = None, seed: int = 0) -> list[np.ndarray]:
    """face_inks normalised to images, jittered when jitter is given."""
    face = os.path.basename(path)
    return [normalize(ink, None if jitter is None else jitter_affine(jitter, seed, char, face))
            for ink, char in zip(inks, chars, strict=True)]


def render_face(path: str, chars: str, jitter: Jitter | None = None,
                seed: int = 0) -> list[np.ndarray] | None:
    """Every character of chars in the face at path, or None when the face
    fails face_inks."""
    inks = face_inks(path, chars)
    return None if inks is None else normalize_inks(inks, path, chars, jitter, seed)


@dataclass(frozen=True)
class FaceRenders:
    """One face from one FreeType pass: the plain images, the jittered ones,
    and face_coincidences of the plain ones."""

    plain: list[np.ndarray]
    jittered: list[np.ndarray]
    found: np.ndarray


def render_face_both(path: str, chars: str, jitter: Jitter,
                     seed: int = 0) -> FaceRenders | None:
    """render_face without and with the jitter, and which characters coincide
    in the face, from one pass of FreeType; None when the face fails face_inks."""
    inks = face_inks(path, chars)
    if inks is None:
        return None
    plain = normalize_inks(inks, path, chars)
    return FaceRenders(plain, normalize_inks(inks, path, chars, jitter, seed),
                       face_coincidences(np.stack(plain)))


def _render_job(job: tuple[str, str, Jitter | None, int]) -> list[np.ndarray] | None:
    return render_face(*job)


def _render_both_job(job: tuple[str, str, Jitter, int]) -> FaceRenders | None:
    return render_face_both(*job)


def render_faces(paths: Sequence[str], chars: str, jitter: Jitter | None = None,
                 seed: int = 0, workers: int | None = None) -> list[list[np.ndarray] | None]:
    """render_face over faces, in order, spread over processes."""
    return ordered_map(_render_job, [(path, chars, jitter, seed) for path in paths],
                       workers, chunksize=2)


def render_faces_both(paths: Sequence[str], chars: str, jitter: Jitter, seed: int = 0,
                      workers: int | None = None,
                      desc: str | None = None) -> list[FaceRenders | None]:
    """render_face_both over faces, in order, spread over processes."""
    # Small chunks: faces differ in cost, and a face's result is about 350 kB.
    return ordered_map(_render_both_job, [(path, chars, jitter, seed) for path in paths],
                       workers, desc, "face", chunksize=2)


def face_coincidences(images: np.ndarray) -> np.ndarray:
    """chars x chars booleans: which characters' renders coincide in one face
    (images: chars x 32 x 32, un-jittered)."""
    chars = images.shape[0]
    found = np.zeros((chars, chars), dtype=bool)
    for i, j in globally_close(images):
        diff = np.abs(images[i].astype(np.float32) - images[j].astype(np.float32)) / 255.0
        local = cv2.blur(diff, (3, 3), borderType=cv2.BORDER_CONSTANT).max()
        if local < LOCAL_THRESHOLD:
            found[i, j] = found[j, i] = True
    return found


def globally_close(images: np.ndarray) -> list[tuple[int, int]]:
    """The pairs i < j (row-major) whose ink-normalised L1 difference is below
    GLOBAL_THRESHOLD. Exact, and cheaper than every pair's full L1: the L1 of
    4x4-block sums is a lower bound of the pixels' L1 (both are sums of
    integers, exact in float64), so a pair whose bound already reaches the
    threshold is out, and only the others get the full L1."""
    chars, height, width = images.shape
    ink = 255.0 - images.reshape(chars, -1).astype(np.float64)
    mass = ink.sum(axis=1)
    total = mass[:, None] + mass[None, :]
    block = 4 if height % 4 == 0 and width % 4 == 0 else 1
    coarse = ink.reshape(chars, height // block, block, width // block, block).sum(axis=(2, 4))
    bound = cdist(coarse.reshape(chars, -1), coarse.reshape(chars, -1), "cityblock") / total
    close = []
    for i, j in np.argwhere(np.triu(bound < GLOBAL_THRESHOLD, k=1)):
        if np.abs(ink[i] - ink[j]).sum() / total[i, j] < GLOBAL_THRESHOLD:
            close.append((int(i), int(j)))
    return close


def coincidences(images: np.ndarray) -> np.ndarray:
    """faces x chars x chars booleans: which characters' renders coincide in
    which face (images: faces x chars x 32 x 32, un-jittered)."""
    found = np.zeros((images.shape[0], images.shape[1], images.shape[1]), dtype=bool)
    for face in range(images.shape[0]):
        found[face] = face_coincidences(images[face])
    return found
