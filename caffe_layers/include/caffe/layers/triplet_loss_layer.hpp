#ifndef CAFFE_TRIPLET_LOSS_LAYER_HPP_
#define CAFFE_TRIPLET_LOSS_LAYER_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

#include "caffe/layers/loss_layer.hpp"

namespace caffe {

/**
 * @brief The triplet loss on squared Euclidean distances, the baseline of
 *        Song et al., CVPR 2016 (Eq. 2, after Schroff et al. and Wang et al.):
 * @f[
 *   E = \frac{1}{2T} \sum_{t=1}^{T}
 *       \max(0, \| a_t - p_t \|^2 - \| a_t - n_t \|^2 + \alpha)
 * @f]
 * with the batch of N = 3T items laid out as T anchors, then their T
 * positives, then their T negatives (@f$ \frac{3}{2m} @f$ in the paper).
 * A NaN or inf feature (or a distance that overflows) makes the loss and
 * its triplet's gradient NaN.
 *
 * @param bottom input Blob vector (length 1 or 2)
 *   -# @f$ (N \times C [\times 1 \times 1]) @f$ the features
 *   -# (optional) @f$ (N) @f$ labels; the layout already encodes them, so
 *      they are accepted (the Data layer produces them) and not used.
 * @param top output Blob vector (length 1): the scalar loss @f$ E @f$
 */
template <typename Dtype>
class TripletLossLayer : public LossLayer<Dtype> {
 public:
  explicit TripletLossLayer(const LayerParameter& param)
      : LossLayer<Dtype>(param) {}
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "TripletLoss"; }
  virtual inline int ExactNumBottomBlobs() const { return -1; }
  virtual inline int MinBottomBlobs() const { return 1; }
  virtual inline int MaxBottomBlobs() const { return 2; }
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

  Blob<Dtype> hinge_;  // T: max(0, d_ap - d_an + alpha), cached for backward
};

}  // namespace caffe

#endif  // CAFFE_TRIPLET_LOSS_LAYER_HPP_
