"""liftedstruct.datasets.layouts against docs/BATCHES.md, step by step, with
independent pure-Python references where the module vectorizes."""

from __future__ import annotations

import math
import zlib
from collections import Counter

import numpy as np
import pytest

from liftedstruct.datasets import layouts as L

M64 = (1 << 64) - 1


class SplitMix64:
    """Vigna's generator as published: state += golden, then the finaliser."""

    def __init__(self, seed: int):
        self.state = seed & M64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & M64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)


def one_step(z: int) -> int:
    """mix(z) is the first output of SplitMix64 seeded with z."""
    return SplitMix64(z).next()


LABELS = np.repeat(np.arange(6), [3, 4, 5, 3, 6, 4])  # 25 images, P = 68, N = 3
# Labels not sorted by image, not 0-based: classes are taken by value.
SCATTERED = np.array([7, 3, 7, 9, 3, 3, 9, 7, 12, 12, 3, 9, 12, 7])


def test_mix_is_splitmix64():
    generator = SplitMix64(0)
    assert [generator.next() for _ in range(3)] == [
        0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    for seed in (0, 1, 42, M64, 0x0123456789ABCDEF):
        generator = SplitMix64(seed)
        for step in range(5):  # output k+1 is mix(seed + k golden)
            assert L.mix((seed + step * L.GOLDEN) & M64) == generator.next()
    values = np.array([0, 1, 2**63, M64, 12345678901234567], dtype=np.uint64)
    assert L.mix_array(values).tolist() == [one_step(int(v)) for v in values]


def test_stream_chains_mix_over_uint64_parts():
    assert L.stream(5) == one_step(5)
    assert L.stream(5, 0, L.SHUFFLE) == one_step(one_step(one_step(5) ^ 0) ^ 2)
    assert L.stream(-1, 3) == one_step(one_step(M64) ^ 3)  # the seed as uint64
    assert L.stream(5, 1) != L.stream(5, 2) != L.stream(6, 1)


def test_positives_are_every_within_class_pair_and_self_pairs_in_order():
    pairs = L.positive_pairs(SCATTERED)
    expected = []
    for label in sorted(set(SCATTERED.tolist())):
        members = [i for i, y in enumerate(SCATTERED) if y == label]
        for a in range(len(members)):
            expected.append((members[a], members[a]))
            expected += [(members[a], members[b]) for b in range(a + 1, len(members))]
    assert [tuple(p) for p in pairs.tolist()] == expected
    without = L.positive_pairs(SCATTERED, include_self=False)
    assert [tuple(p) for p in without.tolist()] == [p for p in expected if p[0] != p[1]]


def reference_negatives(labels: np.ndarray, seed: int, epoch: int) -> list[tuple[int, int]]:
    """The spec's step 2 as a plain loop, one draw at a time."""
    n = len(labels)
    positives = sum(c * (c + 1) // 2 for c in Counter(labels.tolist()).values())
    per_image = math.ceil(positives / n)
    root = one_step(one_step(one_step(seed) ^ epoch) ^ 1)
    pairs = []
    for label in sorted(set(labels.tolist())):
        members = [i for i in range(n) if labels[i] == label]
        others = n - len(members)
        base = one_step(root ^ label)
        drawn, taken, t = [], set(), 0
        while len(drawn) < per_image * len(members):
            j = one_step(base ^ t) % n
            t += 1
            if labels[j] == label or j in taken:
                continue
            drawn.append(j)
            taken.add(j)
            if len(taken) == others:
                taken = set()
        pairs += [(m, drawn[a * per_image + q]) for a, m in enumerate(members)
                  for q in range(per_image)]
    return pairs


@pytest.mark.parametrize("labels", [LABELS, SCATTERED,
                                    np.repeat(np.arange(3), 6)])  # rounds: N n_c > others
def test_negatives_follow_the_authors_draw(labels):
    negatives = L.negative_pairs(labels, seed=3, epoch=1)
    assert [tuple(p) for p in negatives.tolist()] == reference_negatives(labels, 3, 1)
    n = len(labels)
    positives = len(L.positive_pairs(labels))
    per_image = math.ceil(positives / n)
    assert Counter(negatives[:, 0].tolist()) == {i: per_image for i in range(n)}
    assert (labels[negatives[:, 0]] != labels[negatives[:, 1]]).all()
    for label in set(labels.tolist()):  # no repeat within a round
        drawn = negatives[labels[negatives[:, 0]] == label, 1].tolist()
        others = int((labels != label).sum())
        for start in range(0, len(drawn), others):
            part = drawn[start:start + others]
            assert len(set(part)) == len(part)
    assert not np.array_equal(negatives, L.negative_pairs(labels, seed=3, epoch=2))


def test_rounds_repeat_partners_only_across_rounds():
    labels = np.repeat(np.arange(3), 6)  # N = ceil(63 / 18) = 4: 24 draws, 12 others
    negatives = L.negative_pairs(labels, seed=0)
    drawn = negatives[labels[negatives[:, 0]] == 0, 1].tolist()
    assert len(drawn) == 24
    assert sorted(drawn[:12]) == sorted(drawn[12:]) == list(range(6, 18))


def test_shuffle_is_a_permutation_sorted_by_keys():
    order = L.shuffle_order(1000, seed=9, epoch=2)
    assert sorted(order.tolist()) == list(range(1000))
    root = L.stream(9, 2, L.SHUFFLE)
    keys = [one_step(root ^ p) for p in range(1000)]
    assert order.tolist() == sorted(range(1000), key=lambda p: (keys[p], p))
    assert not np.array_equal(order, L.shuffle_order(1000, seed=9, epoch=3))


def test_pair_layout_is_the_shuffled_capped_trimmed_list():
    batch = 8
    order, similarity = L.pair_layout(LABELS, batch, seed=1, max_tuples=50)
    tuples = L.epoch_tuples(LABELS, L.PAIR, seed=1)
    assert len(tuples) == 68 + 3 * 25
    expected = tuples[L.shuffle_order(len(tuples), seed=1)][:48]  # cap 50, trim to 4s
    blocks = order.reshape(-1, 2, batch // 2)  # item i and i + B/2 pair
    pairs = blocks.transpose(0, 2, 1).reshape(-1, 2)
    assert pairs.tolist() == expected.tolist()
    sims = similarity.reshape(-1, 2, batch // 2)
    assert np.array_equal(sims[:, 0], sims[:, 1])
    assert np.array_equal(sims[:, 0] == 1, LABELS[blocks[:, 0]] == LABELS[blocks[:, 1]])
    full, _ = L.pair_layout(LABELS, batch, seed=1)
    assert len(full) == 143 // 4 * 8
    other, _ = L.pair_layout(LABELS, batch, seed=2)
    assert not np.array_equal(full, other)


def test_triplets_anchor_positive_negative():
    batch = 6
    order = L.triplet_layout(SCATTERED, batch, seed=4)
    triplets = order.reshape(-1, 3, 2).transpose(0, 2, 1).reshape(-1, 3)
    anchors = L.positive_pairs(SCATTERED, include_self=False)
    assert len(triplets) == len(anchors) // 2 * 2
    expected_pairs = anchors[L.shuffle_order(len(anchors), seed=4)][:len(triplets)]
    assert triplets[:, :2].tolist() == expected_pairs.tolist()
    assert (SCATTERED[triplets[:, 0]] == SCATTERED[triplets[:, 1]]).all()
    assert (SCATTERED[triplets[:, 0]] != SCATTERED[triplets[:, 2]]).all()
    root = L.stream(4, 0, L.TRIPLET_NEGATIVES)
    negatives = L.triplet_negatives(SCATTERED, anchors[:, 0], seed=4)
    for p, (anchor, _) in enumerate(anchors.tolist()):
        t = 0  # the first draw outside the anchor's class
        while SCATTERED[(j := one_step(one_step(root ^ p) ^ t) % len(SCATTERED))] == \
                SCATTERED[anchor]:
            t += 1
        assert negatives[p] == j


@pytest.mark.parametrize("kind,batch,ranks", [(L.PAIR, 4, 2), (L.PAIR, 2, 4),
                                              (L.TRIPLET, 3, 2)])
def test_rank_shares_make_the_global_batch(kind, batch, ranks):
    size = L.TUPLE_SIZE[kind]
    for k in (0, 5):
        whole, _ = L.batch_records(LABELS, kind, ranks * batch, seed=2, k=k)
        global_tuples = whole.reshape(size, -1).T.tolist()
        shares = []
        for rank in range(ranks):
            records, labels = L.batch_records(LABELS, kind, batch, seed=2, k=k,
                                              ranks=ranks, rank=rank)
            assert len(records) == batch and labels.tolist() == LABELS[records].tolist()
            shares += records.reshape(size, -1).T.tolist()
        assert shares == global_tuples  # in order, so no overlap and nothing missing


def test_batch_k_is_a_pure_function_of_seed_and_k():
    order, similarity = L.pair_layout(LABELS, 8, seed=7)
    per_epoch = len(order) // 8
    for k in (0, 3, per_epoch - 1):
        records, labels = L.batch_records(LABELS, L.PAIR, 8, seed=7, k=k)
        assert records.tolist() == order[k * 8:(k + 1) * 8].tolist()
        assert labels.tolist() == LABELS[records].tolist()
        _, sims = L.batch_records(LABELS, L.PAIR, 8, seed=7, k=k, label=L.SIMILARITY)
        assert sims.tolist() == similarity[k * 8:(k + 1) * 8].tolist()
    triplets = L.triplet_layout(LABELS, 6, seed=7, max_tuples=40)
    records, _ = L.batch_records(LABELS, L.TRIPLET, 6, seed=7, k=4, max_tuples=40)
    assert records.tolist() == triplets[24:30].tolist()
    other, _ = L.batch_records(LABELS, L.PAIR, 8, seed=8, k=0)
    assert other.tolist() != order[:8].tolist()


def test_fixed_epochs_repeat_reshuffled_epochs_differ():
    per_epoch = L.batches_per_epoch(LABELS, L.PAIR, 8)
    assert per_epoch == 143 // 4
    first, _ = L.batch_records(LABELS, L.PAIR, 8, seed=1, k=2)
    fixed, _ = L.batch_records(LABELS, L.PAIR, 8, seed=1, k=2 + per_epoch)
    assert fixed.tolist() == first.tolist()
    again, _ = L.batch_records(LABELS, L.PAIR, 8, seed=1, k=2, epochs=L.RESHUFFLE)
    assert again.tolist() == first.tolist()  # epoch 0 is the same either way
    epoch1 = [L.batch_records(LABELS, L.PAIR, 8, seed=1, k=k + per_epoch,
                              epochs=L.RESHUFFLE)[0].tolist() for k in range(per_epoch)]
    epoch0 = [L.batch_records(LABELS, L.PAIR, 8, seed=1, k=k)[0].tolist()
              for k in range(per_epoch)]
    assert epoch1 != epoch0
    order1, _ = L.pair_layout(LABELS, 8, seed=1, epoch=1)
    assert sum(epoch1, []) == order1.tolist()


@pytest.mark.parametrize("labels,kind,batch,max_tuples,message", [
    (np.array([0, 0, 1, 2, 2]), L.PAIR, 2, None,
     "class 1 has one image .*authors' generator refuses it too"),
    (np.array([0, 0, 1, 2, 2]), L.TRIPLET, 3, None, "class 1 has one image"),
    (np.array([4, 4, 4]), L.PAIR, 2, None, "one class only \\(label 4\\)"),
    (LABELS, L.PAIR, 7, None, "batch size 7: .*whole pairs.*even"),
    (LABELS, L.TRIPLET, 8, None, "batch size 8: .*whole triplets.*multiple of 3"),
    (LABELS, L.PAIR, 8, 3, "3 pairs \\(capped at 3\\) .*fewer than the 4 of one batch"),
    (np.array([0, 0, 1, 1]), L.TRIPLET, 9, None,
     "2 triplets from 4 images: fewer than the 3 of one batch of 9"),
])
def test_bad_inputs_are_refused(labels, kind, batch, max_tuples, message):
    with pytest.raises(ValueError, match=message):
        L.batch_records(labels, kind, batch, seed=0, k=0, max_tuples=max_tuples)


def test_fingerprint_of_an_lmdb(tmp_path):
    from liftedstruct.lmdbio import fingerprint, write_lmdb

    values = [b"first datum", b"", b"\x00\x01 third"]
    write_lmdb(tmp_path / "a", iter(values), len(values), "a", 1 << 20)
    expected = one_step(3)
    for value in values:
        expected = one_step(expected ^ zlib.crc32(value))
    assert fingerprint(tmp_path / "a") == expected
    swapped = [values[0], values[2], values[1]]
    write_lmdb(tmp_path / "b", iter(swapped), len(swapped), "b", 1 << 20)
    assert fingerprint(tmp_path / "b") != expected
