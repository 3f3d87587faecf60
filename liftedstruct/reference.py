"""An independent float64 reference of the lifted structured loss, for the
tests and benchmarks of the Caffe layer.

Written straight from the paper: Eq. 3-4 for the loss, and for the gradient
Algorithm 1 with Eq. 5-7, pair by pair, with none of the layer's row sums.
"""

from __future__ import annotations

import numpy as np


def pairwise_distances(x: np.ndarray) -> np.ndarray:
    diff = x[:, None, :] - x[None, :, :]
    return np.sqrt((diff**2).sum(axis=-1))


def _log_sum_exp(values: np.ndarray) -> float:
    if values.size == 0:
        return -np.inf
    top = values.max()
    return float(top + np.log(np.exp(values - top).sum()))


def lifted_loss_and_gradient(x: np.ndarray, labels: np.ndarray,
                             margin: float = 1.0) -> tuple[float, np.ndarray]:
    """Loss (Eq. 3-4) and dLoss/dx (Algorithm 1, Eq. 5-7) in float64."""
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels)
    m = len(x)
    d = pairwise_distances(x)
    positives = [(i, j) for i in range(m) for j in range(i + 1, m)
                 if labels[i] == labels[j]]
    grad_d = np.zeros((m, m))  # dLoss/dD for each ordered (i, j): D_ij = D_ji
    loss = 0.0
    for i, j in positives:
        neg_i = np.flatnonzero(labels != labels[i])
        neg_j = np.flatnonzero(labels != labels[j])
        lse = _log_sum_exp(np.concatenate([margin - d[i, neg_i],
                                           margin - d[j, neg_j]]))
        j_ij = lse + d[i, j]
        if not j_ij > 0:
            continue
        loss += j_ij**2
        coef = j_ij / len(positives)
        grad_d[i, j] += coef  # Eq. 5
        # Eq. 6-7: -exp(alpha - D) / exp(J - D_ij)
        grad_d[i, neg_i] -= coef * np.exp(margin - d[i, neg_i] - (j_ij - d[i, j]))
        grad_d[j, neg_j] -= coef * np.exp(margin - d[j, neg_j] - (j_ij - d[i, j]))
    if not positives:
        return 0.0, np.zeros_like(x)
    loss /= 2 * len(positives)
    grad_x = np.zeros_like(x)
    for i in range(m):
        for k in range(m):
            if grad_d[i, k] != 0 and d[i, k] > 0:
                # D_ik depends on x_i and x_k: dD/dx_i = (x_i - x_k) / D_ik.
                unit = (x[i] - x[k]) / d[i, k]
                grad_x[i] += grad_d[i, k] * unit
                grad_x[k] -= grad_d[i, k] * unit
    return loss, grad_x
