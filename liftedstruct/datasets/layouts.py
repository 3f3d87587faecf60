"""Training-set orders as the paper's authors built them.

Caffe's Data layer reads an LMDB sequentially (and wraps around), so the
order of records is the batch structure:

- lifted / contrastive: pairs; each batch of B holds B/2 pairs as their B/2
  first elements followed by their B/2 second elements (item i and item
  i + B/2 form a pair).
- triplet: each batch of B holds B/3 anchors, then their positives, then
  their negatives.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np


def class_members(labels: np.ndarray) -> dict[int, np.ndarray]:
    members: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        members[int(label)].append(index)
    return {label: np.array(items) for label, items in sorted(members.items())}


def positive_pairs(labels: np.ndarray, include_self: bool = True) -> list[tuple[int, int]]:
    """Every pair within a class (all C(n, 2)), plus (i, i) when include_self."""
    pairs = []
    for items in class_members(labels).values():
        for a in range(len(items)):
            if include_self:
                pairs.append((int(items[a]), int(items[a])))
            for b in range(a + 1, len(items)):
                pairs.append((int(items[a]), int(items[b])))
    return pairs


def negative_pairs(labels: np.ndarray, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Each image of a class paired with random images of other classes,
    ceil(positives of the class / images of the class) times, so that the
    negatives about match the positives in number."""
    members = class_members(labels)
    n = len(labels)
    pairs = []
    for items in members.values():
        size = len(items)
        positives = size * (size - 1) // 2 + size
        per_image = math.ceil(positives / size)
        others = np.setdiff1d(np.arange(n), items, assume_unique=True)
        if len(others) == 0:
            continue
        for item in items:
            for partner in rng.choice(others, size=per_image, replace=True):
                pairs.append((int(item), int(partner)))
    return pairs


def _batches(rows: np.ndarray, per_batch: int, rng: np.random.Generator,
             cap: int | None, what: str, batch_size: int) -> np.ndarray:
    """Shuffle the rows, keep at most cap, trim to whole batches; return
    them as batches x per_batch x row."""
    rows = rows[rng.permutation(len(rows))]
    if cap is not None:
        rows = rows[:cap]
    rows = rows[: len(rows) // per_batch * per_batch]
    if len(rows) == 0:
        raise ValueError(f"fewer than {per_batch} {what}: too few images for batch "
                         f"{batch_size}")
    return rows.reshape(-1, per_batch, rows.shape[1])


def pair_order(labels: np.ndarray, batch_size: int, seed: int,
               max_pairs: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Record order (indices into labels) and each record's pair similarity.

    Positives and negatives are shuffled together with the seed, capped at
    max_pairs, and trimmed so that their number divides by batch_size / 2.
    """
    if batch_size % 2:
        raise ValueError(f"batch size {batch_size} must be even for pairs")
    half = batch_size // 2
    rng = np.random.default_rng(seed)
    pairs = positive_pairs(labels) + negative_pairs(labels, rng)
    pairs = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    blocks = _batches(pairs, half, rng, max_pairs, "pairs", batch_size)
    order = np.concatenate([blocks[:, :, 0], blocks[:, :, 1]], axis=1).ravel()
    similar = (labels[blocks[:, :, 0]] == labels[blocks[:, :, 1]]).astype(np.int64)
    similarity = np.concatenate([similar, similar], axis=1).ravel()
    return order, similarity


def triplet_order(labels: np.ndarray, batch_size: int, seed: int,
                  max_triplets: int | None = None) -> np.ndarray:
    """Record order for the triplet baseline: every positive pair (i < j) as
    anchor and positive, with a negative drawn at random from other classes."""
    if batch_size % 3:
        raise ValueError(f"batch size {batch_size} must divide by 3 for triplets")
    third = batch_size // 3
    rng = np.random.default_rng(seed)
    if len(np.unique(labels)) < 2:
        raise ValueError("triplets need at least two classes")
    pairs = np.array(positive_pairs(labels, include_self=False),
                     dtype=np.int64).reshape(-1, 2)
    negatives = rng.integers(len(labels), size=len(pairs))
    clash = labels[negatives] == labels[pairs[:, 0]]
    while clash.any():  # redraw the few that hit the anchor's class
        negatives[clash] = rng.integers(len(labels), size=int(clash.sum()))
        clash = labels[negatives] == labels[pairs[:, 0]]
    triplets = np.column_stack([pairs, negatives])
    blocks = _batches(triplets, third, rng, max_triplets, "triplets", batch_size)
    return np.concatenate([blocks[:, :, 0], blocks[:, :, 1], blocks[:, :, 2]], axis=1).ravel()
