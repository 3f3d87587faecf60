"""The .npz files features travel in: `features` (or `features_<blob>` when a
file holds several blobs), `labels`, `ids` (the test LMDB's keys) and, from
tools/extract_features.py, `run_key` (what they were computed from, as
JSON). NumPy only, so that scoring a file needs neither OpenCV, LMDB nor
Caffe."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from liftedstruct.errors import ScoringError
from liftedstruct.files import atomic_path


def feature_key(blob: str) -> str:
    """npz key of a blob's features when a file holds several."""
    return "features_" + blob.replace("/", "_")


def save_features(path: Path, **arrays: np.ndarray) -> Path:
    """np.savez via a temporary name: a half-written file never looks done.
    (np.savez is given an open file: given a name it would add .npz.)"""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def load_features(path: Path, blob: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features (N x C float32) and labels (N) from an .npz, checked; every
    problem is a ScoringError naming the file and what is wrong."""
    if not path.is_file():
        raise ScoringError(f"{path}: no such file")
    with path.open("rb") as handle:
        head = handle.read(6)
    # numpy would try anything without a zip or .npy header as a pickle and say so.
    if head == b"\x93NUMPY":
        raise ScoringError(f"{path}: a single array (.npy), not an .npz with 'features' "
                           "and 'labels' arrays (np.savez(path, features=..., labels=...))")
    if not head.startswith(b"PK"):
        raise ScoringError(f"{path}: not a readable .npz ("
                           f"{'empty file' if not head else 'not a zip archive'}; "
                           "np.savez(path, features=..., labels=...) writes one)")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ScoringError(f"{path}: not a readable .npz ({error})") from error
    with data:
        key = feature_key(blob) if blob else "features"
        if key not in data.files:
            keys = ", ".join(sorted(data.files)) or "none"
            raise ScoringError(f"{path}: no array {key!r} (arrays: {keys})"
                               + ("" if blob else "; pick one with --blob"))
        if "labels" not in data.files:
            raise ScoringError(f"{path}: no array 'labels'")
        try:
            features, labels = data[key], data["labels"]
        except ValueError as error:  # object arrays need pickle
            raise ScoringError(f"{path}: {key!r} or 'labels' holds Python objects, "
                               "not numbers") from error
    return check_features(features, labels, str(path), key)


def load_ids(path: Path, count: int) -> np.ndarray:
    """The `ids` array of a features file (the test LMDB's keys of its rows),
    checked against the number of rows; needed to find the rows' images."""
    with np.load(path, allow_pickle=False) as data:
        if "ids" not in data.files:
            raise ScoringError(f"{path}: no array 'ids' (the LMDB keys of its rows), so "
                               "its images cannot be found; tools/extract_features.py "
                               "writes it")
        try:
            ids = data["ids"]
        except ValueError as error:
            raise ScoringError(f"{path}: 'ids' holds Python objects, not keys") from error
    if ids.dtype.kind not in "iuUS" or ids.shape != (count,):
        raise ScoringError(f"{path}: 'ids' must be {count} keys (one per row), got dtype "
                           f"{ids.dtype} and shape {ids.shape}")
    return ids


def check_features(features: np.ndarray, labels: np.ndarray, source: str = "input",
                   key: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """N x C finite numbers, N finite labels; returns (features as float32,
    labels as a flat array)."""
    features, labels = np.asarray(features), np.asarray(labels)
    if features.dtype.kind not in "fiu":
        raise ScoringError(f"{source}: {key!r} has dtype {features.dtype}; expected numbers")
    if features.ndim != 2:
        raise ScoringError(f"{source}: {key!r} must be N x C, got shape {features.shape}")
    if len(features) == 0:
        raise ScoringError(f"{source}: {key!r} is empty")
    if features.shape[1] == 0:
        raise ScoringError(f"{source}: {key!r} has {len(features)} rows of 0 values "
                           f"(shape {features.shape}); each row needs at least one")
    if labels.dtype.kind not in "fiuUS" or (labels.ndim != 1 and labels.size != len(labels)):
        raise ScoringError(f"{source}: 'labels' must be N numbers or strings, got dtype "
                           f"{labels.dtype} and shape {labels.shape}")
    labels = labels.reshape(-1)
    if len(labels) != len(features):
        raise ScoringError(f"{source}: {len(labels)} labels for {len(features)} features")
    if labels.dtype.kind == "f" and not np.isfinite(labels).all():
        rows = np.flatnonzero(~np.isfinite(labels))
        raise ScoringError(f"{source}: {len(rows)} label(s) are NaN or inf "
                           f"(first: row {rows[0]})")
    finite = np.isfinite(features).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise ScoringError(f"{source}: {len(rows)} feature row(s) hold NaN or inf "
                           f"(first: row {rows[0]})")
    return standardize(features), labels


def standardize(features: np.ndarray) -> np.ndarray:
    """The features as float32, centred and scaled in float64 first: every
    score depends only on distances (and k-means on their ratios), which a
    common shift and a common scale leave alone, while float32 loses them to
    a large offset (|x|^2 swamps |x - y|^2) or overflows on large values.
    Scales are powers of two (exact); the result's largest coordinate lies in
    [0.5, 1), or every coordinate is 0. One float64 copy, worked on in place
    (a large matrix's temporaries cost more than its arithmetic)."""
    x = np.array(features, dtype=np.float64)  # a copy: the mean cannot overflow
    _unit_scale(x)
    x -= x.mean(axis=0)
    return _unit_scale(x).astype(np.float32)


def _unit_scale(x: np.ndarray) -> np.ndarray:
    """x scaled in place by the power of two that brings its largest
    magnitude into [0.5, 1) (left alone when all zero)."""
    largest = max(float(x.max()), -float(x.min()))  # max |x|, without |x|'s copy
    if largest > 0:
        np.ldexp(x, -np.frexp(largest)[1], out=x)
    return x
