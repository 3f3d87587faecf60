#ifndef CAFFE_LIFTED_STRUCT_SIMILARITY_SOFTMAX_LOSS_LAYER_HPP_
#define CAFFE_LIFTED_STRUCT_SIMILARITY_SOFTMAX_LOSS_LAYER_HPP_

#include <cmath>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

#include "caffe/layers/loss_layer.hpp"

#ifdef __CUDACC__
#define LIFTED_HOST_DEVICE __host__ __device__
#else
#define LIFTED_HOST_DEVICE
#endif

namespace caffe {

/**
 * @brief The lifted structured similarity softmax loss of Song, Xiang,
 *        Jegelka and Savarese, "Deep Metric Learning via Lifted Structured
 *        Feature Embedding", CVPR 2016 (Eq. 3-4, gradients by Algorithm 1).
 *
 * With @f$ D_{ij} = \| x_i - x_j \|_2 @f$ over the whole batch,
 * @f$ N_i @f$ the batch items whose label differs from @f$ x_i @f$'s and
 * @f$ P @f$ the unordered pairs with equal labels,
 * @f[
 *   \tilde J_{ij} = \log \Big( \sum_{k \in N_i} e^{\alpha - D_{ik}}
 *                    + \sum_{l \in N_j} e^{\alpha - D_{jl}} \Big) + D_{ij},
 *   \qquad
 *   E = \frac{1}{2|P|} \sum_{(i,j) \in P} \max(0, \tilde J_{ij})^2 .
 * @f]
 * A pair whose two items have no negatives has an empty log-sum-exp
 * (@f$ \tilde J = -\infty @f$) and contributes nothing; a batch without
 * positive pairs has zero loss.
 *
 * @param bottom input Blob vector (length 2)
 *   -# @f$ (N \times C [\times 1 \times 1]) @f$ the features @f$ x @f$
 *   -# @f$ (N [\times 1 \times 1 \times 1]) @f$ the class labels
 * @param top output Blob vector (length 1): the scalar loss @f$ E @f$
 */
template <typename Dtype>
class LiftedStructSimilaritySoftmaxLossLayer : public LossLayer<Dtype> {
 public:
  explicit LiftedStructSimilaritySoftmaxLossLayer(const LayerParameter& param)
      : LossLayer<Dtype>(param) {}
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const {
    return "LiftedStructSimilaritySoftmaxLoss";
  }
  /// Labels get no gradient.
  virtual inline bool AllowForceBackward(const int bottom_index) const {
    return bottom_index != 1;
  }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  Blob<Dtype> dot_;         // m x m: X X^T
  Blob<Dtype> dist_;        // m x m: D, the Euclidean distances
  Blob<Dtype> row_max_;     // m: max over k in N_i of (alpha - D_ik)
  Blob<Dtype> row_sum_;     // m: sum over N_i of exp(alpha - D_ik - max); 0
                            //    when item i has no negative
  Blob<Dtype> row_loss_;    // m: sum over positives j > i of max(0, J_ij)^2
  Blob<Dtype> row_pairs_;   // m: number of positives j > i
  Blob<Dtype> row_weight_;  // m: a_i = sum over positives j of
                            //    max(0, J_ij) exp(row_max_i - lse_ij)
  Blob<Dtype> num_pairs_;   // 1: |P|, kept on the device for Backward_gpu
  Blob<Dtype> grad_dist_;   // m x m: dE/dD_ij / D_ij
  Blob<Dtype> grad_row_;    // m: row sums of grad_dist_
  Blob<Dtype> ones_;        // m: ones, for the row sums
};

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

/// D_ij from X X^T, read from one triangle so that D is exactly symmetric
/// (gemm need not give bitwise-equal dot_ij and dot_ji); clamped at 0.
template <typename Dtype>
LIFTED_HOST_DEVICE inline Dtype LiftedDistance(int i, int j, int m,
    const Dtype* dot) {
  if (i == j) { return Dtype(0); }
  const int lo = i < j ? i : j, hi = i < j ? j : i;
  const Dtype sq = dot[lo * m + lo] + dot[hi * m + hi] - 2 * dot[lo * m + hi];
  return sq > Dtype(0) ? sqrt(sq) : Dtype(0);
}

template <typename Dtype>
LIFTED_HOST_DEVICE inline bool LiftedSameLabel(const Dtype* label, int i,
    int j) {
  return static_cast<int>(label[i]) == static_cast<int>(label[j]);
}

/**
 * @brief Row i's max-shifted sum over its negatives k of exp(alpha - D_ik).
 *
 * Reads D_ik as dist[k * m + i] (D is symmetric): one GPU thread per row
 * then reads consecutive addresses across a warp.
 */
template <typename Dtype>
LIFTED_HOST_DEVICE inline void LiftedRowStats(int i, int m,
    const Dtype* label, const Dtype* dist, Dtype alpha, Dtype* row_max,
    Dtype* row_sum) {
  bool any = false;
  Dtype max_val = Dtype(0);
  for (int k = 0; k < m; ++k) {
    if (LiftedSameLabel(label, i, k)) { continue; }
    const Dtype v = alpha - dist[k * m + i];
    if (!any || v > max_val) { max_val = v; }
    any = true;
  }
  Dtype sum = Dtype(0);
  if (any) {
    for (int k = 0; k < m; ++k) {
      if (!LiftedSameLabel(label, i, k)) {
        sum += exp(alpha - dist[k * m + i] - max_val);
      }
    }
  }
  row_max[i] = max_val;
  row_sum[i] = sum;  // >= 1 when row i has a negative, else 0
}

/**
 * @brief Row i's share of the loss and of the negatives' gradient weight.
 *
 * Over positives j != i: a_i = sum of max(0, J_ij) exp(m_i - lse_ij), which
 * is at most max(0, J_ij) per pair since lse_ij >= m_i. Over positives j > i
 * (each unordered pair once): the pair count and the sum of max(0, J_ij)^2.
 */
template <typename Dtype>
LIFTED_HOST_DEVICE inline void LiftedRowPairs(int i, int m,
    const Dtype* label, const Dtype* dist, const Dtype* row_max,
    const Dtype* row_sum, Dtype* row_loss, Dtype* row_pairs,
    Dtype* row_weight) {
  Dtype loss = Dtype(0), pairs = Dtype(0), weight = Dtype(0);
  for (int j = 0; j < m; ++j) {
    if (j == i || !LiftedSameLabel(label, i, j)) { continue; }
    if (j > i) { pairs += Dtype(1); }
    Dtype lse;
    if (!LiftedPairLogSumExp(row_max[i], row_sum[i], row_max[j], row_sum[j],
                             &lse)) {
      continue;  // no negative for either item: J_ij = -inf
    }
    const Dtype j_ij = lse + dist[j * m + i];
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

}  // namespace caffe

#endif  // CAFFE_LIFTED_STRUCT_SIMILARITY_SOFTMAX_LOSS_LAYER_HPP_
