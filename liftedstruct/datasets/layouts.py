"""The training batches of docs/BATCHES.md, in Python.

Every random choice is a pure function of the seed and of counters
(SplitMix64's finaliser `mix` and `stream`), so batch k can be formed
without forming the batches before it. This module writes the ordered
layout's LMDBs (`prepare_dataset.py --layout ordered`, read by Caffe's Data
layer) and is the oracle the C++ MetricBatchData layer is tested against
(`batch_records`).

- pairs (lifted, contrastive): each batch of B holds B/2 pairs as their B/2
  first images followed by their B/2 second images (item i and item i + B/2
  form a pair).
- triplets: each batch of B holds B/3 anchors, then their positives, then
  their negatives.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
MUL1 = 0xBF58476D1CE4E5B9
MUL2 = 0x94D049BB133111EB

# Stream tags of docs/BATCHES.md.
NEGATIVES = 1
SHUFFLE = 2
TRIPLET_NEGATIVES = 3
TRANSFORM = 4
SOLVER = 5

PAIR, TRIPLET = "pair", "triplet"
CLASS, SIMILARITY = "class", "similarity"
FIXED, RESHUFFLE = "fixed", "reshuffle"
TUPLE_SIZE = {PAIR: 2, TRIPLET: 3}


def mix(z: int) -> int:
    """SplitMix64's finaliser on an unsigned 64-bit integer (wrapping)."""
    z = (z + GOLDEN) & MASK
    z = ((z ^ (z >> 30)) * MUL1) & MASK
    z = ((z ^ (z >> 27)) * MUL2) & MASK
    return z ^ (z >> 31)


def mix_array(z: np.ndarray) -> np.ndarray:
    """`mix` of every element of a uint64 array."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(MUL1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(MUL2)
    return z ^ (z >> np.uint64(31))


def stream(seed: int, *parts: int) -> int:
    """h = mix(seed), then h = mix(h ^ part) for each part (all as uint64)."""
    h = mix(seed & MASK)
    for part in parts:
        h = mix(h ^ (part & MASK))
    return h


def _u64(value: int) -> np.uint64:
    return np.uint64(value & MASK)


# ---------------------------------------------------------------- checks

def check_labels(labels: np.ndarray) -> np.ndarray:
    """The labels as int64, refused (ValueError) when the batches cannot be
    formed: a class of one image, or a single class."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) == 0:
        raise ValueError("no training images")
    single = classes[counts == 1]
    if len(single):
        raise ValueError(f"class {int(single[0])} has one image ({len(single)} such "
                         "class(es)); a class needs two images for a positive pair, and "
                         "the authors' generator refuses it too")
    if len(classes) == 1:
        raise ValueError(f"one class only (label {int(classes[0])}): negatives need at "
                         "least two classes")
    return labels


def check_batch(tuple_kind: str, batch: int, what: str = "batch size") -> int:
    """The tuples a batch holds; ValueError for a batch that splits a tuple."""
    if tuple_kind not in TUPLE_SIZE:
        raise ValueError(f"tuple {tuple_kind!r}: {PAIR!r} or {TRIPLET!r}")
    size = TUPLE_SIZE[tuple_kind]
    if batch < size or batch % size:
        kind = "pairs" if tuple_kind == PAIR else "triplets"
        rule = "even" if tuple_kind == PAIR else "a multiple of 3"
        raise ValueError(f"{what} {batch}: a batch holds whole {kind}, so it must be "
                         f"{rule} and at least {size}")
    return batch // size


def class_members(labels: np.ndarray) -> dict[int, np.ndarray]:
    """{label: its images in ascending order}, labels ascending."""
    labels = np.asarray(labels, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    classes, starts = np.unique(labels[order], return_index=True)
    return {int(c): items for c, items in zip(classes, np.split(order, starts[1:]),
                                               strict=True)}


def tuple_count(labels: np.ndarray, tuple_kind: str) -> int:
    """The pairs (P + N n) or triplets of one epoch before the cap."""
    counts = np.unique(np.asarray(labels), return_counts=True)[1].astype(np.int64)
    n = int(counts.sum())
    positives = int((counts * (counts + 1) // 2).sum())
    if tuple_kind == TRIPLET:
        return positives - n
    return positives + math.ceil(positives / n) * n


def batches_per_epoch(labels: np.ndarray, tuple_kind: str, batch: int,
                      max_tuples: int | None = None) -> int:
    """Whole batches of `batch` items (over all solvers) in one epoch."""
    per_batch = check_batch(tuple_kind, batch)
    total = tuple_count(labels, tuple_kind)
    if max_tuples:
        total = min(total, max_tuples)
    return total // per_batch


# ---------------------------------------------------------------- tuples

def positive_pairs(labels: np.ndarray, include_self: bool = True) -> np.ndarray:
    """Each class's images m_0 < m_1 < ...: for each a, (m_a, m_a) when
    include_self, then (m_a, m_b) for every b > a; classes ascending. (P, 2)."""
    rows = []
    for items in class_members(labels).values():
        size = len(items)
        a, b = np.triu_indices(size, k=0 if include_self else 1)
        rows.append(np.column_stack([items[a], items[b]]))
    if not rows:
        return np.zeros((0, 2), dtype=np.int64)
    return np.concatenate(rows).astype(np.int64)


def _class_negatives(labels: np.ndarray, label: int, count: int, base: int) -> np.ndarray:
    """count partners of class `label` drawn without replacement within a
    round: j = mix(base ^ t) % n, t = 0, 1, ..., skipping the class's own
    images and images taken in this round; a round ends when it has taken
    every image outside the class."""
    n = len(labels)
    others = int((labels != label).sum())
    own = labels == label
    taken: set[int] = set()
    drawn: list[int] = []
    t = 0
    chunk = max(64, 2 * count)
    base64 = _u64(base)
    while len(drawn) < count:
        ts = np.arange(t, t + chunk, dtype=np.uint64)
        js = (mix_array(base64 ^ ts) % np.uint64(n)).astype(np.int64)
        t += chunk
        for j in js[~own[js]].tolist():
            if j in taken:
                continue
            drawn.append(j)
            if len(drawn) == count:
                break
            taken.add(j)
            if len(taken) == others:
                taken.clear()
    return np.array(drawn, dtype=np.int64)


def negative_pairs(labels: np.ndarray, seed: int, epoch: int = 0) -> np.ndarray:
    """The authors' negatives: every image gets N = ceil(P / n) partners of
    other classes; classes ascending, (m_a, draw[a N + q]). (N n, 2)."""
    labels = np.asarray(labels, dtype=np.int64)
    members = class_members(labels)
    n = len(labels)
    positives = sum(len(m) * (len(m) + 1) // 2 for m in members.values())
    per_image = math.ceil(positives / n)
    root = stream(seed, epoch, NEGATIVES)
    rows = []
    for label, items in members.items():
        drawn = _class_negatives(labels, label, per_image * len(items),
                                 mix(root ^ (label & MASK)))
        rows.append(np.column_stack([np.repeat(items, per_image), drawn]))
    return np.concatenate(rows).astype(np.int64)


def triplet_negatives(labels: np.ndarray, anchors: np.ndarray, seed: int,
                      epoch: int = 0) -> np.ndarray:
    """Negative of triplet p: the first j = mix(mix(root ^ p) ^ t) % n,
    t = 0, 1, ..., whose class is not the anchor's."""
    labels = np.asarray(labels, dtype=np.int64)
    n = np.uint64(len(labels))
    bases = mix_array(_u64(stream(seed, epoch, TRIPLET_NEGATIVES))
                      ^ np.arange(len(anchors), dtype=np.uint64))
    negatives = np.empty(len(anchors), dtype=np.int64)
    pending = np.arange(len(anchors))
    t = 0
    while len(pending):
        js = (mix_array(bases[pending] ^ np.uint64(t)) % n).astype(np.int64)
        ok = labels[js] != labels[anchors[pending]]
        negatives[pending[ok]] = js[ok]
        pending = pending[~ok]
        t += 1
    return negatives


def epoch_tuples(labels: np.ndarray, tuple_kind: str, seed: int,
                 epoch: int = 0) -> np.ndarray:
    """Epoch e's tuples before the shuffle: (P + N n, 2) pairs, positives
    then negatives, or (triplets, 3) anchor, positive, negative."""
    labels = check_labels(labels)
    if tuple_kind == PAIR:
        return np.concatenate([positive_pairs(labels), negative_pairs(labels, seed, epoch)])
    if tuple_kind == TRIPLET:
        pairs = positive_pairs(labels, include_self=False)
        return np.column_stack([pairs, triplet_negatives(labels, pairs[:, 0], seed, epoch)])
    raise ValueError(f"tuple {tuple_kind!r}: {PAIR!r} or {TRIPLET!r}")


def shuffle_order(count: int, seed: int, epoch: int = 0) -> np.ndarray:
    """Tuple p gets the key mix(stream(seed, e, SHUFFLE) ^ p); the tuples
    sorted by key, ties by p."""
    keys = mix_array(_u64(stream(seed, epoch, SHUFFLE)) ^ np.arange(count, dtype=np.uint64))
    return np.argsort(keys, kind="stable")


_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()


def epoch_list(labels: np.ndarray, tuple_kind: str, batch: int, seed: int,
               max_tuples: int | None = None, epoch: int = 0) -> np.ndarray:
    """Epoch e's tuples shuffled, capped at max_tuples (None or 0: all) and
    trimmed to whole batches of `batch` items: (batches, tuples per batch,
    2 or 3). ValueError when not one batch is left."""
    per_batch = check_batch(tuple_kind, batch)
    labels = np.asarray(labels, dtype=np.int64)
    key = (labels.tobytes(), tuple_kind, per_batch, seed, max_tuples or 0, epoch)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    tuples = epoch_tuples(labels, tuple_kind, seed, epoch)
    total = len(tuples)
    tuples = tuples[shuffle_order(total, seed, epoch)]
    if max_tuples:
        tuples = tuples[:max_tuples]
    kind = "pairs" if tuple_kind == PAIR else "triplets"
    whole = len(tuples) // per_batch * per_batch
    if whole == 0:
        capped = f" (capped at {max_tuples})" if max_tuples and max_tuples < total else ""
        raise ValueError(f"{len(tuples)} {kind}{capped} from {len(labels)} images: fewer "
                         f"than the {per_batch} of one batch of {batch}")
    blocks = tuples[:whole].reshape(-1, per_batch, tuples.shape[1])
    blocks.setflags(write=False)
    _CACHE[key] = blocks
    while len(_CACHE) > 8:
        _CACHE.popitem(last=False)
    return blocks


def _items(blocks: np.ndarray) -> np.ndarray:
    """Batches of tuples laid out as items: first elements, then seconds
    (then thirds), batch after batch."""
    return np.concatenate([blocks[:, :, i] for i in range(blocks.shape[2])], axis=1).ravel()


def pair_layout(labels: np.ndarray, batch: int, seed: int, max_tuples: int | None = None,
                epoch: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Record order (indices into labels) of every batch of epoch e with one
    solver, and each record's pair similarity (1 or 0)."""
    labels = np.asarray(labels, dtype=np.int64)
    blocks = epoch_list(labels, PAIR, batch, seed, max_tuples, epoch)
    similar = (labels[blocks[:, :, 0]] == labels[blocks[:, :, 1]]).astype(np.int64)
    return _items(blocks), np.concatenate([similar, similar], axis=1).ravel()


def triplet_layout(labels: np.ndarray, batch: int, seed: int,
                   max_tuples: int | None = None, epoch: int = 0) -> np.ndarray:
    """Record order of every batch of epoch e with one solver: anchors,
    positives, negatives of each batch."""
    return _items(epoch_list(labels, TRIPLET, batch, seed, max_tuples, epoch))


def batch_records(labels: np.ndarray, tuple_kind: str, batch: int, seed: int, k: int,
                  max_tuples: int | None = None, epochs: str = FIXED, ranks: int = 1,
                  rank: int = 0, label: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Record indices and labels of batch k for one rank of `ranks` solvers.

    batch is each solver's batch_size (the net's), so the global batch is
    ranks * batch; rank r takes tuples [r b/t, (r+1) b/t) of global batch k,
    laid out like a batch. label: "class" (the default) or "similarity"
    (pairs only: 1 or 0 for both halves, the contrastive net's labels).
    epochs "fixed": batch k is batch k mod E of epoch 0; "reshuffle": batch
    k mod E of epoch floor(k / E).
    """
    labels = np.asarray(labels, dtype=np.int64)
    label = label or CLASS
    if label not in (CLASS, SIMILARITY):
        raise ValueError(f"label {label!r}: {CLASS!r} or {SIMILARITY!r}")
    if label == SIMILARITY and tuple_kind != PAIR:
        raise ValueError("similarity labels need pairs")
    if epochs not in (FIXED, RESHUFFLE):
        raise ValueError(f"epochs {epochs!r}: {FIXED!r} or {RESHUFFLE!r}")
    if ranks < 1 or not 0 <= rank < ranks:
        raise ValueError(f"rank {rank} of {ranks} solvers")
    if k < 0:
        raise ValueError(f"batch {k}: at least 0")
    share = check_batch(tuple_kind, batch)
    per_epoch = batches_per_epoch(labels, tuple_kind, ranks * batch, max_tuples)
    epoch = k // per_epoch if epochs == RESHUFFLE and per_epoch else 0
    blocks = epoch_list(labels, tuple_kind, ranks * batch, seed, max_tuples, epoch)
    mine = blocks[k % len(blocks), rank * share:(rank + 1) * share][None]
    records = _items(mine)
    if label == SIMILARITY:
        similar = (labels[mine[0, :, 0]] == labels[mine[0, :, 1]]).astype(np.int64)
        return records, np.concatenate([similar, similar])
    return records, labels[records]
