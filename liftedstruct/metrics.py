"""The paper's retrieval and clustering scores, plus MAP@R and R-precision.

Recall@K (Euclidean, query excluded, one exact kNN: faiss's IndexFlatL2),
NMI (arithmetic normalisation), pairwise F1 from the contingency table,
MAP@R and R-precision as defined in Musgrave et al., "A Metric Learning
Reality Check" (2020).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from sklearn.metrics import normalized_mutual_info_score

from liftedstruct.errors import ScoringError
from liftedstruct.featurefile import check_features

# The k-means implementations; the first, faiss, is the default everywhere.
KMEANS_BACKEND = "faiss"
KMEANS_BACKENDS = (KMEANS_BACKEND, "sklearn")
# The clusterings NMI and F1 are scored on: k-means (later literature) or
# affinity propagation (the paper's).
KMEANS, AP = "kmeans", "ap"
CLUSTERINGS = (KMEANS, AP)


SEARCH_BLOCK = 4096  # query rows per faiss search: bounds the N x K temporaries


def nearest_neighbors(features: np.ndarray, k: int,
                      queries: np.ndarray | None = None) -> np.ndarray:
    """Indices of the k nearest other rows of each row (or of the given query
    rows only) by Euclidean distance: exact, through faiss's IndexFlatL2 (all
    distances computed, in float32; score() centres and scales first).

    Ties: rows at the same computed distance come in index order, and exact
    duplicates of the query (equal in every coordinate) come first, in index
    order. Identical rows are searched as one, because a float32 matrix
    product may give them slightly different distances; every copy of a row
    then lies at one distance from any query.
    """
    n = len(features)
    if k < 1 or k > n - 1:
        raise ScoringError(f"K = {k}: must be between 1 and N - 1 = {n - 1}")
    x = np.ascontiguousarray(features, dtype=np.float32) + np.float32(0)  # -0.0 -> 0.0
    rows = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
    # Groups of identical rows (their bytes), numbered by their first row:
    # faiss's order among equally distant groups (by id) is then the order
    # of their rows.
    _, first, inverse = np.unique(x.view(np.dtype((np.void, x.itemsize * x.shape[1]))),
                                  return_index=True, return_inverse=True)
    by_first = np.argsort(first)
    rank = np.empty(len(first), dtype=np.int64)
    rank[by_first] = np.arange(len(first))
    groups, group_of = x[first[by_first]], rank[inverse.reshape(-1)]
    members = np.argsort(group_of, kind="stable")  # rows by group, ascending
    counts = np.bincount(group_of, minlength=len(groups))
    starts = np.concatenate([[0], np.cumsum(counts)])
    query_groups = group_of[rows]
    # The query positions of each group, for writing the answers.
    by_group = np.argsort(query_groups, kind="stable")
    query_starts = np.searchsorted(query_groups[by_group], np.arange(len(groups) + 1))
    index = _flat_index(groups)
    result = np.empty((len(rows), k), dtype=np.int64)
    pending = np.unique(query_groups)
    width = min(len(groups), k + 1)
    while len(pending):
        retry = []
        for block in range(0, len(pending), SEARCH_BLOCK):
            searched = pending[block:block + SEARCH_BLOCK]
            distances, found = index.search(groups[searched], width)
            # Queries whose own group and found groups are single rows:
            # faiss's (distance, id) order is already (distance, index).
            simple = (counts[searched] == 1) & (counts[found] == 1).all(axis=1)
            if simple.any():  # then width = k + 1: every group is a single row
                hits = found[simple]
                pick = np.argsort(hits == searched[simple, None], axis=1,
                                  kind="stable")[:, :k]
                chosen = members[starts[np.take_along_axis(hits, pick, axis=1)]]
                # Every query position of those groups (a row may be asked twice).
                first_position = query_starts[searched[simple]]
                repeats = query_starts[searched[simple] + 1] - first_position
                offsets = np.arange(int(repeats.sum())) - np.repeat(
                    np.cumsum(repeats) - repeats, repeats)
                result[by_group[np.repeat(first_position, repeats) + offsets]] = np.repeat(
                    chosen, repeats, axis=0)
            for query in np.flatnonzero(~simple):
                group = searched[query]
                others = _other_rows(group, found[query], distances[query], members,
                                     counts, starts, k, exact=width >= len(groups))
                if others is None:
                    retry.append(group)
                    continue
                own = members[starts[group]:starts[group + 1]]
                for position in by_group[query_starts[group]:query_starts[group + 1]]:
                    result[position] = np.concatenate([own[own != rows[position]],
                                                       others])[:k]
        pending = np.array(retry, dtype=np.int64)
        width = min(len(groups), 2 * width)
    return result


def _other_rows(group: int, found: np.ndarray, distances: np.ndarray, members: np.ndarray,
                counts: np.ndarray, starts: np.ndarray, k: int,
                exact: bool) -> np.ndarray | None:
    """The rows of the found groups (the query's own left out) by (distance,
    index), as many as the query needs besides its own duplicates; None when
    the k-th ties with the farthest group found (a group not found might tie)."""
    need = k - (int(counts[group]) - 1)
    if need <= 0:
        return np.empty(0, dtype=np.int64)
    keep = found != group
    found, distances = found[keep], distances[keep]
    rows = np.concatenate([members[starts[g]:starts[g + 1]] for g in found])
    by = np.lexsort((rows, np.repeat(distances, counts[found])))
    rows, sorted_distances = rows[by], np.repeat(distances, counts[found])[by]
    if not exact and (len(rows) < need or sorted_distances[need - 1] >= distances[-1]):
        return None
    return rows[:need]


def _flat_index(x: np.ndarray):
    try:
        import faiss
    except ImportError as error:
        raise ScoringError("the kNN needs faiss: install faiss-cpu (requirements.txt)") \
            from error
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(x))
    return index


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
                    backend: str = KMEANS_BACKEND) -> np.ndarray:
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
          cluster: str = KMEANS, seed: int = 0, source: str = "input",
          kmeans: str = KMEANS_BACKEND) -> Scores:
    """Every score of the paper (and MAP@R) for one embedding, from features
    centred and scaled first (check_features), so that a common shift or
    scale of the features changes no score. `clustering` in the result names
    the algorithm: kmeans-faiss, kmeans-sklearn or ap."""
    features, labels = check_features(features, labels, source)
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise ScoringError(f"{source}: a single class; retrieval and clustering "
                           "scores need at least two")
    if counts.max() < 2:
        raise ScoringError(f"{source}: every class has a single item, so no query has a "
                           "match to retrieve; Recall@K and MAP@R need a class of two")
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ScoringError(f"K must be at least 1, got {ks[:1] or 'none'}")
    if ks[-1] > len(features) - 1:
        raise ScoringError(f"{source}: K = {ks[-1]} is larger than N - 1 = "
                           f"{len(features) - 1}")
    max_r = int(counts.max()) - 1
    neighbors = nearest_neighbors(features, max(ks[-1], max_r))
    recall = recall_at_k(neighbors[:, : ks[-1]], labels, ks)
    map_r, r_prec = map_at_r(features, labels, neighbors)
    if cluster == KMEANS:
        assignment = kmeans_clusters(features, len(classes), seed, kmeans)
        clustering = f"{KMEANS}-{kmeans}"
    elif cluster == AP:
        assignment = affinity_propagation_clusters(features, len(classes), seed)
        clustering = AP
    else:
        raise ScoringError(f"unknown clustering {cluster!r} ({' or '.join(CLUSTERINGS)})")
    return Scores(recall=recall, nmi=nmi(assignment, labels),
                  f1=pairwise_f1(assignment, labels)["f1"], map_at_r=map_r,
                  r_precision=r_prec, clustering=clustering, n=len(labels),
                  classes=len(classes), singleton_classes=int((counts == 1).sum()))
