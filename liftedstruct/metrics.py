"""The paper's retrieval and clustering scores, plus MAP@R and R-precision.

Recall@K (Euclidean, query excluded), NMI (arithmetic normalisation), pairwise
F1 from the contingency table, MAP@R and R-precision as defined in Musgrave
et al., "A Metric Learning Reality Check" (2020).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from sklearn.metrics import normalized_mutual_info_score

from liftedstruct.errors import ScoringError
from liftedstruct.featurefile import check_features

KMEANS_BACKENDS = ("faiss", "sklearn")


def nearest_neighbors(features: np.ndarray, k: int, block_rows: int = 2048,
                      backend: str = "numpy") -> np.ndarray:
    """Indices of each row's k nearest other rows by Euclidean distance.

    Exact, in row blocks, so memory stays at block_rows x N distances instead
    of N x N. Ties are broken by the lower index, the same in every block.
    """
    n = len(features)
    if k > n - 1:
        raise ScoringError(f"K = {k} is larger than N - 1 = {n - 1}")
    if backend == "faiss":
        return _faiss_neighbors(features, k)
    if backend != "numpy":
        raise ScoringError(f"unknown kNN backend {backend!r} (numpy or faiss)")
    x = np.ascontiguousarray(features, dtype=np.float32)
    sq_norms = np.einsum("ij,ij->i", x, x)
    result = np.empty((n, k), dtype=np.int64)
    threads = os.cpu_count() or 1
    with ThreadPoolExecutor(threads) as pool:
        for start in range(0, n, block_rows):
            stop = min(n, start + block_rows)
            # ||q||^2 is the same along a row, so it does not change the ranking.
            dist = (-2.0 * x[start:stop]) @ x.T
            dist += sq_norms[None, :]
            rows = np.arange(stop - start)
            dist[rows, rows + start] = np.inf  # the query itself
            # numpy's sorts and partitions release the GIL: rows in parallel.
            bounds = np.linspace(0, stop - start, threads + 1).astype(int)
            chunks = [dist[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            result[start:stop] = np.concatenate(list(pool.map(_smallest_k, chunks,
                                                              [k] * len(chunks))))
    return result


def neighbors_of(features: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The k nearest other rows of just the given query rows, exact, ties by
    the lower index (as nearest_neighbors), without the N x N product."""
    x = np.asarray(features, dtype=np.float32)
    q = x[queries]
    dist = np.einsum("ij,ij->i", x, x)[None, :] - 2.0 * (q @ x.T)
    dist[np.arange(len(queries)), queries] = np.inf
    return np.stack([_exact_row(row, k) for row in dist])


def _smallest_k(dist: np.ndarray, k: int) -> np.ndarray:
    """Per row, the k smallest columns ordered by (distance, index).

    A sample of every step-th column gives each row a threshold with about
    1.5 k columns below it; only those candidates are sorted. Rows where the
    threshold catches fewer than k fall back to a full partition, so the
    answer is exact either way.
    """
    rows, n = dist.shape
    if rows == 0:
        return np.empty((0, k), dtype=np.int64)
    step = max(1, n // max(1024, 4 * k))
    sample = dist[:, ::step]
    q = min(sample.shape[1] - 1, int(math.ceil(1.5 * k / step)) + 3)
    threshold = np.partition(sample, q, axis=1)[:, q]
    mask = dist <= threshold[:, None]
    counts = np.count_nonzero(mask, axis=1)
    row_of, col = np.nonzero(mask)  # row-major: columns ascend within a row
    order = np.argsort(dist[row_of, col], kind="stable")  # ties keep column order
    order = order[np.argsort(row_of[order], kind="stable")]
    col = col[order]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.empty((rows, k), dtype=np.int64)
    enough = counts >= k
    out[enough] = col[starts[enough, None] + np.arange(k)]
    for row in np.flatnonzero(~enough):
        out[row] = _exact_row(dist[row], k)
    return out


def _exact_row(row: np.ndarray, k: int) -> np.ndarray:
    """The k smallest of one row by (distance, index), ties included."""
    kth = np.partition(row, k - 1)[k - 1]
    candidates = np.flatnonzero(row <= kth)
    return candidates[np.lexsort((candidates, row[candidates]))][:k]


def _faiss_neighbors(features: np.ndarray, k: int) -> np.ndarray:
    try:
        import faiss
    except ImportError as error:
        raise ScoringError("backend faiss: install faiss-cpu (or faiss-gpu)") from error
    x = np.ascontiguousarray(features, dtype=np.float32)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    _, found = index.search(x, k + 1)
    out = np.empty((len(x), k), dtype=np.int64)
    for row, candidates in enumerate(found):
        others = [c for c in candidates if c != row][:k]
        out[row] = others
    return out


def recall_at_k(neighbors: np.ndarray, labels: np.ndarray,
                ks: Sequence[int]) -> dict[int, float]:
    """Fraction of queries with a same-class item among their K neighbours."""
    hits = labels[neighbors] == labels[:, None]
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), neighbors.shape[1])
    return {k: float(np.mean(first_hit < k)) for k in ks}


def map_at_r(features: np.ndarray, labels: np.ndarray,
             neighbors: np.ndarray | None = None) -> tuple[float, float]:
    """(MAP@R, R-precision): R = number of other items of the query's class.

    Queries whose class has no other item are left out, as in the definition.
    """
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    r = counts[inverse] - 1
    max_r = int(r.max())
    if max_r == 0:
        raise ScoringError("MAP@R: every class has a single item")
    if neighbors is None or neighbors.shape[1] < max_r:
        neighbors = nearest_neighbors(features, max_r)
    hits = labels[neighbors[:, :max_r]] == labels[:, None]
    valid = r > 0
    ranks = np.arange(1, max_r + 1)
    within_r = ranks[None, :] <= r[:, None]
    hits = hits & within_r
    precision_at_i = np.cumsum(hits, axis=1) / ranks[None, :]
    ap = (precision_at_i * hits).sum(axis=1) / np.maximum(r, 1)
    r_precision = hits.sum(axis=1) / np.maximum(r, 1)
    return float(ap[valid].mean()), float(r_precision[valid].mean())


def contingency(clusters: np.ndarray, labels: np.ndarray) -> sparse.csr_matrix:
    _, cluster_ids = np.unique(clusters, return_inverse=True)
    _, class_ids = np.unique(labels, return_inverse=True)
    ones = np.ones(len(labels), dtype=np.int64)
    return sparse.coo_matrix((ones, (cluster_ids, class_ids))).tocsr()


def _pairs(counts: np.ndarray) -> float:
    counts = np.asarray(counts, dtype=np.float64)
    return float((counts * (counts - 1) / 2).sum())


def pairwise_f1(clusters: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of 'same cluster' against 'same class' over
    all pairs of items, from the contingency table (no pair enumeration)."""
    table = contingency(clusters, labels)
    true_positive = _pairs(table.data)
    same_cluster = _pairs(np.asarray(table.sum(axis=1)).ravel())
    same_class = _pairs(np.asarray(table.sum(axis=0)).ravel())
    precision = true_positive / same_cluster if same_cluster else 0.0
    recall = true_positive / same_class if same_class else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def nmi(clusters: np.ndarray, labels: np.ndarray) -> float:
    """I(clusters; classes) / ((H(clusters) + H(classes)) / 2)."""
    return float(normalized_mutual_info_score(labels, clusters,
                                              average_method="arithmetic"))


def kmeans_clusters(features: np.ndarray, n_clusters: int, seed: int = 0,
                    backend: str = "faiss") -> np.ndarray:
    """k-means with a fixed seed, by one named algorithm whatever the size:
    faiss (20 iterations from random centroids, as pytorch-metric-learning's
    accuracy calculator) or scikit-learn (k-means++, up to 300 iterations)."""
    if backend == "faiss":
        try:
            import faiss
        except ImportError as error:
            raise ScoringError("--kmeans faiss: install faiss-cpu (or use --kmeans "
                               "sklearn)") from error
        x = np.ascontiguousarray(features, dtype=np.float32)
        km = faiss.Kmeans(x.shape[1], n_clusters, niter=20, seed=seed, verbose=False)
        km.train(x)
        return km.index.search(x, 1)[1].ravel()
    if backend == "sklearn":
        from sklearn.cluster import KMeans

        model = KMeans(n_clusters=n_clusters, n_init=1, random_state=seed)
        return model.fit_predict(features)
    raise ScoringError(f"unknown k-means backend {backend!r} "
                       f"({', '.join(KMEANS_BACKENDS)})")


AP_MEMORY_LIMIT_BYTES = 4 * 1024**3


def affinity_propagation_clusters(features: np.ndarray, n_clusters: int,
                                  seed: int = 0, max_rounds: int = 30,
                                  memory_limit: int = AP_MEMORY_LIMIT_BYTES) -> np.ndarray:
    """Affinity propagation with the preference bisected until the number of
    clusters equals n_clusters (the paper's clustering); the closest count
    reached when bisection runs out of rounds."""
    from sklearn.cluster import AffinityPropagation

    n = len(features)
    # sklearn keeps S, R, A and temporaries: about 5 float64 N x N arrays.
    needed = 5 * 8 * n * n
    if needed > memory_limit:
        raise ScoringError(
            f"affinity propagation on N = {n} needs about {needed / 1024**3:.1f} GiB "
            f"(N x N similarities), more than {memory_limit / 1024**3:.1f} GiB; "
            "use --cluster kmeans")
    x = np.asarray(features, dtype=np.float64)
    sq = np.einsum("ij,ij->i", x, x)
    similarity = -np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0)
    off_diagonal = similarity[~np.eye(n, dtype=bool)]
    low, high = float(off_diagonal.min()) * 2, 0.0
    best, best_gap = None, math.inf
    for _ in range(max_rounds):
        preference = (low + high) / 2
        model = AffinityPropagation(affinity="precomputed", preference=preference,
                                    damping=0.9, max_iter=500, convergence_iter=30,
                                    random_state=seed)
        assignment = model.fit_predict(similarity)
        found = len(np.unique(assignment))
        if abs(found - n_clusters) < best_gap:
            best, best_gap = assignment, abs(found - n_clusters)
        if found == n_clusters:
            break
        if found > n_clusters:
            high = preference  # lower preference, fewer exemplars
        else:
            low = preference
    return best


@dataclass
class Scores:
    recall: dict[int, float]
    nmi: float
    f1: float
    map_at_r: float
    r_precision: float
    clustering: str
    n: int
    classes: int
    singleton_classes: int

    def to_json(self) -> dict:
        out = {f"recall@{k}": v for k, v in self.recall.items()}
        out.update({"nmi": self.nmi, "f1": self.f1, "map@r": self.map_at_r,
                    "r_precision": self.r_precision, "clustering": self.clustering,
                    "n": self.n, "classes": self.classes,
                    "singleton_classes": self.singleton_classes})
        return out


def score(features: np.ndarray, labels: np.ndarray, ks: Sequence[int],
          cluster: str = "kmeans", seed: int = 0, source: str = "input",
          backend: str = "numpy", kmeans: str = "faiss") -> Scores:
    """Every score of the paper (and MAP@R) for one embedding. `clustering`
    in the result names the algorithm: kmeans-faiss, kmeans-sklearn or ap."""
    features, labels = check_features(features, labels, source)
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise ScoringError(f"{source}: a single class; retrieval and clustering "
                           "scores need at least two")
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ScoringError(f"K must be at least 1, got {ks[:1] or 'none'}")
    if ks[-1] > len(features) - 1:
        raise ScoringError(f"{source}: K = {ks[-1]} is larger than N - 1 = "
                           f"{len(features) - 1}")
    max_r = int(counts.max()) - 1
    neighbors = nearest_neighbors(features, max(ks[-1], max_r), backend=backend)
    recall = recall_at_k(neighbors[:, : ks[-1]], labels, ks)
    map_r, r_prec = map_at_r(features, labels, neighbors)
    if cluster == "kmeans":
        assignment = kmeans_clusters(features, len(classes), seed, kmeans)
        clustering = f"kmeans-{kmeans}"
    elif cluster == "ap":
        assignment = affinity_propagation_clusters(features, len(classes), seed)
        clustering = "ap"
    else:
        raise ScoringError(f"unknown clustering {cluster!r} (kmeans or ap)")
    return Scores(recall=recall, nmi=nmi(assignment, labels),
                  f1=pairwise_f1(assignment, labels)["f1"], map_at_r=map_r,
                  r_precision=r_prec, clustering=clustering, n=len(labels),
                  classes=len(classes), singleton_classes=int((counts == 1).sum()))
