#ifndef CAFFE_UTIL_LIFTED_STRUCT_HPP_
#define CAFFE_UTIL_LIFTED_STRUCT_HPP_

// Per-element helpers of LiftedStructSimilaritySoftmaxLossLayer, shared by
// its CPU loops and its CUDA kernels so that both compute the same thing.
// All matrices are num x num, row-major; num is the batch size.

#include <cfloat>
#include <cmath>

#ifdef __CUDACC__
#define LIFTED_HOST_DEVICE __host__ __device__
#else
#define LIFTED_HOST_DEVICE
#endif

namespace caffe {

/// Machine epsilon of Dtype for device code (std::numeric_limits is not).
template <typename Dtype> struct LiftedEpsilon;
template <> struct LiftedEpsilon<float> {
  LIFTED_HOST_DEVICE static float value() { return FLT_EPSILON; }
};
template <> struct LiftedEpsilon<double> {
  LIFTED_HOST_DEVICE static double value() { return DBL_EPSILON; }
};

/**
 * @brief 0 when v is finite, NaN when v is inf or NaN (v - v is either).
 *
 * Taken of the squared norms |x_i|^2 (the diagonal of X X^T), which are not
 * finite exactly when a feature of item i is NaN or inf or its norm
 * overflows Dtype. Added to the loss and to the gradient's scale, the sum
 * over the batch makes both non-finite then, as a NaN or inf feature does in
 * Caffe's ContrastiveLoss; without it the comparisons below would read a
 * NaN distance as 0 and report a finite loss.
 */
template <typename Dtype>
LIFTED_HOST_DEVICE inline Dtype LiftedNonFinite(Dtype v) {
  return v - v;
}

/**
 * @brief Whether the expansion D^2 = |x_i|^2 + |x_j|^2 - 2 x_i.x_j is too
 *        close to 0 to be trusted.
 *
 * The expansion's rounding error grows with |x_i|^2 + |x_j|^2, not with D^2,
 * so near-duplicates (duplicate product photos, converged positive pairs)
 * lose every digit. Below 2^17 epsilon of the squared norms (1.6% in float,
 * 3e-11 in double) the distance is recomputed from the difference instead;
 * above it the expansion keeps D to about 1e-4 relative for C up to 1024.
 */
template <typename Dtype>
LIFTED_HOST_DEVICE inline bool LiftedNearDuplicate(Dtype sq, Dtype norm_i,
    Dtype norm_j) {
  return sq <= Dtype(131072) * LiftedEpsilon<Dtype>::value() *
      (norm_i + norm_j);
}

/**
 * @brief D_ij, and whether it was recomputed as a near-duplicate.
 *
 * From X X^T (dot), reading one triangle so that D is exactly symmetric (gemm
 * need not give bitwise-equal dot_ij and dot_ji); clamped at 0. Pairs that
 * LiftedNearDuplicate flags get sqrt(sum_c (x_ic - x_jc)^2) from x (num x dim).
 */
template <typename Dtype>
LIFTED_HOST_DEVICE inline Dtype LiftedDistance(int i, int j, int num, int dim,
    const Dtype* x, const Dtype* dot, bool* near) {
  *near = false;
  if (i == j) { return Dtype(0); }
  const int lo = i < j ? i : j, hi = i < j ? j : i;
  const Dtype norm_lo = dot[lo * num + lo], norm_hi = dot[hi * num + hi];
  Dtype sq = norm_lo + norm_hi - 2 * dot[lo * num + hi];
  if (LiftedNearDuplicate(sq, norm_lo, norm_hi)) {
    *near = true;
    sq = Dtype(0);
    for (int c = 0; c < dim; ++c) {
      const Dtype diff = x[lo * dim + c] - x[hi * dim + c];
      sq += diff * diff;
    }
  }
  return sq > Dtype(0) ? sqrt(sq) : Dtype(0);
}

/**
 * @brief The log-sum-exp over the negatives of both items of a pair, from
 *        each item's shifted row sum (the max shift keeps exp finite).
 * @return false when neither item has a negative (the sum is empty).
 */
template <typename Dtype>
LIFTED_HOST_DEVICE inline bool LiftedPairLogSumExp(Dtype max_i, Dtype sum_i,
    Dtype max_j, Dtype sum_j, Dtype* lse) {
  const bool has_i = sum_i > Dtype(0), has_j = sum_j > Dtype(0);
  if (!has_i && !has_j) { return false; }
  Dtype shift = has_i ? max_i : max_j;
  if (has_i && has_j && max_j > shift) { shift = max_j; }
  Dtype total = Dtype(0);
  if (has_i) { total += sum_i * exp(max_i - shift); }
  if (has_j) { total += sum_j * exp(max_j - shift); }
  *lse = shift + log(total);
  return true;
}

template <typename Dtype>
LIFTED_HOST_DEVICE inline bool LiftedSameLabel(const Dtype* label, int i,
    int j) {
  return static_cast<int>(label[i]) == static_cast<int>(label[j]);
}

/**
 * @brief Row i's max-shifted sum over its negatives k of exp(alpha - D_ik),
 *        and its number of near-duplicate partners (near is 0/1 per pair).
 *
 * Reads D_ik as dist[k * num + i] (D is symmetric): one GPU thread per row
 * then reads consecutive addresses across a warp.
 */
template <typename Dtype>
LIFTED_HOST_DEVICE inline void LiftedRowStats(int i, int num,
    const Dtype* label, const Dtype* dist, const Dtype* near, Dtype alpha,
    Dtype* row_max, Dtype* row_sum, Dtype* row_near) {
  bool any = false;
  Dtype max_val = Dtype(0), near_count = Dtype(0);
  for (int k = 0; k < num; ++k) {
    near_count += near[k * num + i];
    if (LiftedSameLabel(label, i, k)) { continue; }
    const Dtype v = alpha - dist[k * num + i];
    if (!any || v > max_val) { max_val = v; }
    any = true;
  }
  Dtype sum = Dtype(0);
  if (any) {
    for (int k = 0; k < num; ++k) {
      if (!LiftedSameLabel(label, i, k)) {
        sum += exp(alpha - dist[k * num + i] - max_val);
      }
    }
  }
  row_max[i] = max_val;
  row_sum[i] = sum;  // >= 1 when row i has a negative, else 0
  row_near[i] = near_count;
}

/**
 * @brief Row i's share of the loss and of the negatives' gradient weight.
 *
 * Over positives j != i: a_i = sum of max(0, J_ij) exp(m_i - lse_ij), which
 * is at most max(0, J_ij) per pair since lse_ij >= m_i. Over positives j > i
 * (each unordered pair once): the pair count and the sum of max(0, J_ij)^2.
 */
template <typename Dtype>
LIFTED_HOST_DEVICE inline void LiftedRowPairs(int i, int num,
    const Dtype* label, const Dtype* dist, const Dtype* row_max,
    const Dtype* row_sum, Dtype* row_loss, Dtype* row_pairs,
    Dtype* row_weight) {
  Dtype loss = Dtype(0), pairs = Dtype(0), weight = Dtype(0);
  for (int j = 0; j < num; ++j) {
    if (j == i || !LiftedSameLabel(label, i, j)) { continue; }
    if (j > i) { pairs += Dtype(1); }
    Dtype lse;
    if (!LiftedPairLogSumExp(row_max[i], row_sum[i], row_max[j], row_sum[j],
                             &lse)) {
      continue;  // no negative for either item: J_ij = -inf
    }
    const Dtype j_ij = lse + dist[j * num + i];
    if (j_ij <= Dtype(0)) { continue; }
    if (j > i) { loss += j_ij * j_ij; }
    if (row_sum[i] > Dtype(0)) { weight += j_ij * exp(row_max[i] - lse); }
  }
  row_loss[i] = loss;
  row_pairs[i] = pairs;
  row_weight[i] = weight;
}

/**
 * @brief dE/dD_ij divided by D_ij (0 where D_ij = 0, the zero subgradient of
 *        the norm), before the 1/|P| and top-diff scale.
 *
 * Positive pair: max(0, J_ij) (Eq. 5). Negative pair: both items' rows see
 * it as a negative, so -(a_i exp(alpha - D_ij - m_i) + a_j exp(alpha - D_ij
 * - m_j)) (Eq. 6-7 summed over every positive pair through a_i, a_j).
 */
template <typename Dtype>
LIFTED_HOST_DEVICE inline Dtype LiftedDistanceGradient(bool same_label,
    Dtype alpha, Dtype d_ij, Dtype max_i, Dtype sum_i, Dtype weight_i,
    Dtype max_j, Dtype sum_j, Dtype weight_j) {
  if (!(d_ij > Dtype(0))) { return Dtype(0); }
  Dtype grad = Dtype(0);
  if (same_label) {
    Dtype lse;
    if (LiftedPairLogSumExp(max_i, sum_i, max_j, sum_j, &lse)) {
      const Dtype j_ij = lse + d_ij;
      if (j_ij > Dtype(0)) { grad = j_ij; }
    }
  } else {
    // Each item of a negative pair has a negative, so both rows are set.
    grad = -(weight_i * exp(alpha - d_ij - max_i) +
             weight_j * exp(alpha - d_ij - max_j));
  }
  return grad / d_ij;
}

/**
 * @brief Element (i, c) of sum_j W_ij (x_i - x_j) over row i's near-duplicate
 *        partners, from the differences themselves.
 *
 * (sum_j W_ij) x_i - (W X)_i would cancel catastrophically there: W_ij ~ 1/D_ij
 * is large while x_i - x_j is tiny. grad_near holds W_ij on near pairs, else 0.
 */
template <typename Dtype>
LIFTED_HOST_DEVICE inline Dtype LiftedNearGradient(int i, int c, int num,
    int dim, const Dtype* grad_near, const Dtype* x) {
  Dtype total = Dtype(0);
  const Dtype x_ic = x[i * dim + c];
  for (int j = 0; j < num; ++j) {
    const Dtype w = grad_near[i * num + j];
    if (w != Dtype(0)) { total += w * (x_ic - x[j * dim + c]); }
  }
  return total;
}

}  // namespace caffe

#endif  // CAFFE_UTIL_LIFTED_STRUCT_HPP_
