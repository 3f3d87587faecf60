#include <algorithm>
#include <vector>

#include "caffe/layers/triplet_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void TripletLossLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  // Not LossLayer::Reshape: the label bottom is optional here.
  CHECK_EQ(bottom[0]->num() % 3, 0)
      << "TripletLoss needs a batch of anchors, positives and negatives "
      << "(a multiple of 3), got " << bottom[0]->num();
  if (bottom.size() > 1) {
    CHECK_EQ(bottom[1]->num(), bottom[0]->num())
        << "TripletLoss: one label per item.";
  }
  top[0]->Reshape(vector<int>());
  hinge_.Reshape(vector<int>(1, bottom[0]->num() / 3));
}

template <typename Dtype>
void TripletLossLayer<Dtype>::Forward_cpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  const int triplets = bottom[0]->num() / 3;
  const int dim = bottom[0]->count() / bottom[0]->num();
  const Dtype alpha = this->layer_param_.triplet_loss_param().margin();
  const Dtype* anchor = bottom[0]->cpu_data();
  const Dtype* positive = anchor + triplets * dim;
  const Dtype* negative = positive + triplets * dim;
  Dtype* hinge = hinge_.mutable_cpu_data();
  Dtype loss = Dtype(0);
  for (int t = 0; t < triplets; ++t) {
    Dtype d_ap = Dtype(0), d_an = Dtype(0);
    for (int c = 0; c < dim; ++c) {
      const Dtype a = anchor[t * dim + c];
      d_ap += (a - positive[t * dim + c]) * (a - positive[t * dim + c]);
      d_an += (a - negative[t * dim + c]) * (a - negative[t * dim + c]);
    }
    // (d_ap + d_an) - (d_ap + d_an) is 0, or NaN when a feature of the
    // triplet is NaN or inf or a distance overflows: max(0, NaN) would be 0.
    hinge[t] = std::max(Dtype(0), d_ap - d_an + alpha) +
        ((d_ap + d_an) - (d_ap + d_an));
    loss += hinge[t];
  }
  top[0]->mutable_cpu_data()[0] = loss / (Dtype(2) * triplets);
}

template <typename Dtype>
void TripletLossLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (bottom.size() > 1 && propagate_down[1]) {
    LOG(FATAL) << this->type()
               << " Layer cannot backpropagate to label inputs.";
  }
  if (!propagate_down[0]) { return; }
  const int triplets = bottom[0]->num() / 3;
  const int dim = bottom[0]->count() / bottom[0]->num();
  const Dtype scale = top[0]->cpu_diff()[0] / triplets;
  const Dtype* anchor = bottom[0]->cpu_data();
  const Dtype* positive = anchor + triplets * dim;
  const Dtype* negative = positive + triplets * dim;
  Dtype* diff_a = bottom[0]->mutable_cpu_diff();
  Dtype* diff_p = diff_a + triplets * dim;
  Dtype* diff_n = diff_p + triplets * dim;
  const Dtype* hinge = hinge_.cpu_data();
  for (int t = 0; t < triplets; ++t) {
    // A non-finite triplet (NaN hinge) gets NaN gradients.
    const Dtype s = hinge[t] > Dtype(0) ? scale :
        (hinge[t] == Dtype(0) ? Dtype(0) : hinge[t]);
    for (int c = 0; c < dim; ++c) {
      const int i = t * dim + c;
      diff_a[i] = s * (negative[i] - positive[i]);
      diff_p[i] = s * (positive[i] - anchor[i]);
      diff_n[i] = s * (anchor[i] - negative[i]);
    }
  }
}

#ifdef CPU_ONLY
STUB_GPU(TripletLossLayer);
#endif

INSTANTIATE_CLASS(TripletLossLayer);
REGISTER_LAYER_CLASS(TripletLoss);

}  // namespace caffe
