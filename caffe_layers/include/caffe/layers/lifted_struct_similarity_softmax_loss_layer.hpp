#ifndef CAFFE_LIFTED_STRUCT_SIMILARITY_SOFTMAX_LOSS_LAYER_HPP_
#define CAFFE_LIFTED_STRUCT_SIMILARITY_SOFTMAX_LOSS_LAYER_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

#include "caffe/layers/loss_layer.hpp"

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
 * positive pairs has zero loss. A NaN or inf feature (or a squared norm
 * that overflows) makes the loss and every gradient entry NaN, whatever the
 * labels.
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
  /// The loss E (Eq. 3-4); keeps D and the row statistics for Backward.
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  /**
   * @brief Computes the gradient of E with respect to the features
   *        (Algorithm 1 with Eq. 5-7); labels get none.
   *
   * With @f$ W_{ij} = \frac{1}{|P|} \frac{\partial E}{\partial D_{ij}}
   * \frac{1}{D_{ij}} @f$ (positive pair: @f$ \max(0, \tilde J_{ij}) @f$;
   * negative pair: minus its share of every positive pair's softmax through
   * the per-row weights), the gradient is
   * @f[
   *   \frac{\partial E}{\partial x_i}
   *     = \sum_j W_{ij} (x_i - x_j)
   *     = \Big(\sum_j W_{ij}\Big) x_i - (W X)_i ,
   * @f]
   * one gemv and one gemm, except for near-duplicate pairs, whose terms are
   * taken from the differences @f$ x_i - x_j @f$ themselves. Every negative
   * within the margin of any positive pair gets gradient, as in the paper.
   *
   * @param top output Blob vector (length 1): its diff scales the gradient
   *   (the loss weight)
   * @param propagate_down must be false for the labels
   * @param bottom input Blob vector (length 2): the features' diff is
   *   written (overwritten, not accumulated), the labels' is untouched
   */
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  Blob<Dtype> dot_;         // num x num: X X^T
  Blob<Dtype> dist_;        // num x num: D, the Euclidean distances
  Blob<Dtype> near_;        // num x num: 1 where D came from x_i - x_j
  Blob<Dtype> row_max_;     // num: max over k in N_i of (alpha - D_ik)
  Blob<Dtype> row_sum_;     // num: sum over N_i of exp(alpha - D_ik - max);
                            //      0 when item i has no negative
  Blob<Dtype> row_near_;    // num: number of near-duplicate partners of i
  Blob<Dtype> row_loss_;    // num: sum over positives j > i of max(0, J_ij)^2
  Blob<Dtype> row_pairs_;   // num: number of positives j > i
  Blob<Dtype> row_weight_;  // num: a_i = sum over positives j of
                            //      max(0, J_ij) exp(row_max_i - lse_ij)
  Blob<Dtype> num_pairs_;   // 1: |P|, kept on the device for Backward_gpu
  Blob<Dtype> nonfinite_;   // 1: 0, or NaN when some |x_i|^2 is not finite
  Blob<Dtype> grad_dist_;   // num x num: W_ij = dE/dD_ij / D_ij (0 if near)
  Blob<Dtype> grad_near_;   // num x num: W_ij on near pairs, else 0
  Blob<Dtype> grad_row_;    // num: row sums of grad_dist_
  Blob<Dtype> ones_;        // num: ones, for the row sums
};

}  // namespace caffe

#endif  // CAFFE_LIFTED_STRUCT_SIMILARITY_SOFTMAX_LOSS_LAYER_HPP_
