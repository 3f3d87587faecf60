#include <vector>

#include "caffe/layers/lifted_struct_similarity_softmax_loss_layer.hpp"
#include "caffe/util/lifted_struct.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void LiftedStructSimilaritySoftmaxLossLayer<Dtype>::Reshape(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  LossLayer<Dtype>::Reshape(bottom, top);
  CHECK_EQ(bottom[1]->count(), bottom[1]->num())
      << "LiftedStructSimilaritySoftmaxLoss takes one label per item.";
  const int num = bottom[0]->num();
  vector<int> square(2, num), row(1, num);
  dot_.Reshape(square);
  dist_.Reshape(square);
  near_.Reshape(square);
  grad_dist_.Reshape(square);
  grad_near_.Reshape(square);
  row_max_.Reshape(row);
  row_sum_.Reshape(row);
  row_near_.Reshape(row);
  row_loss_.Reshape(row);
  row_pairs_.Reshape(row);
  row_weight_.Reshape(row);
  grad_row_.Reshape(row);
  num_pairs_.Reshape(vector<int>(1, 1));
  nonfinite_.Reshape(vector<int>(1, 1));
  if (ones_.count() != num) {  // refill only on a new batch size
    ones_.Reshape(row);
    caffe_set(num, Dtype(1), ones_.mutable_cpu_data());
  }
}

template <typename Dtype>
void LiftedStructSimilaritySoftmaxLossLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const int num = bottom[0]->num();
  const int dim = bottom[0]->count() / num;
  const Dtype alpha = this->layer_param_.lifted_struct_sim_softmax_loss_param()
      .margin();
  const Dtype* x = bottom[0]->cpu_data();
  const Dtype* label = bottom[1]->cpu_data();
  Dtype* dot = dot_.mutable_cpu_data();
  Dtype* dist = dist_.mutable_cpu_data();
  Dtype* near = near_.mutable_cpu_data();
  // D^2 = diag(XX^T) 1^T + 1 diag(XX^T)^T - 2 XX^T, as the paper computes it;
  // near-duplicate pairs are recomputed from x_i - x_j (LiftedDistance).
  caffe_cpu_gemm<Dtype>(CblasNoTrans, CblasTrans, num, num, dim, Dtype(1), x,
      x, Dtype(0), dot);
  for (int i = 0; i < num; ++i) {
    for (int j = 0; j < num; ++j) {
      bool is_near;
      dist[i * num + j] = LiftedDistance(i, j, num, dim, x, dot, &is_near);
      near[i * num + j] = is_near ? Dtype(1) : Dtype(0);
    }
  }
  Dtype* row_max = row_max_.mutable_cpu_data();
  Dtype* row_sum = row_sum_.mutable_cpu_data();
  for (int i = 0; i < num; ++i) {
    LiftedRowStats(i, num, label, dist, near, alpha, row_max, row_sum,
        row_near_.mutable_cpu_data());
  }
  Dtype* row_loss = row_loss_.mutable_cpu_data();
  Dtype* row_pairs = row_pairs_.mutable_cpu_data();
  for (int i = 0; i < num; ++i) {
    LiftedRowPairs(i, num, label, dist, row_max, row_sum, row_loss, row_pairs,
        row_weight_.mutable_cpu_data());
  }
  Dtype num_pairs = Dtype(0), loss = Dtype(0), nonfinite = Dtype(0);
  for (int i = 0; i < num; ++i) {
    num_pairs += row_pairs[i];
    loss += row_loss[i];
    nonfinite += LiftedNonFinite(dot[i * num + i]);
  }
  num_pairs_.mutable_cpu_data()[0] = num_pairs;
  nonfinite_.mutable_cpu_data()[0] = nonfinite;
  top[0]->mutable_cpu_data()[0] = nonfinite +
      (num_pairs > Dtype(0) ? loss / (Dtype(2) * num_pairs) : Dtype(0));
}

template <typename Dtype>
void LiftedStructSimilaritySoftmaxLossLayer<Dtype>::Backward_cpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  if (propagate_down[1]) {
    LOG(FATAL) << this->type()
               << " Layer cannot backpropagate to label inputs.";
  }
  if (!propagate_down[0]) { return; }
  const int num = bottom[0]->num();
  const int dim = bottom[0]->count() / num;
  Dtype* bottom_diff = bottom[0]->mutable_cpu_diff();
  const Dtype num_pairs = num_pairs_.cpu_data()[0];
  const Dtype nonfinite = nonfinite_.cpu_data()[0];  // 0 or NaN
  if (num_pairs == Dtype(0) && nonfinite == Dtype(0)) {
    caffe_set(bottom[0]->count(), Dtype(0), bottom_diff);
    return;
  }
  const Dtype alpha = this->layer_param_.lifted_struct_sim_softmax_loss_param()
      .margin();
  const Dtype scale = nonfinite +
      (num_pairs > Dtype(0) ? top[0]->cpu_diff()[0] / num_pairs : Dtype(0));
  const Dtype* x = bottom[0]->cpu_data();
  const Dtype* label = bottom[1]->cpu_data();
  const Dtype* dist = dist_.cpu_data();
  const Dtype* near = near_.cpu_data();
  const Dtype* row_max = row_max_.cpu_data();
  const Dtype* row_sum = row_sum_.cpu_data();
  const Dtype* row_weight = row_weight_.cpu_data();
  const Dtype* row_near = row_near_.cpu_data();
  Dtype* grad_dist = grad_dist_.mutable_cpu_data();
  Dtype* grad_near = grad_near_.mutable_cpu_data();
  for (int i = 0; i < num; ++i) {
    for (int j = 0; j < num; ++j) {
      const Dtype w = scale * LiftedDistanceGradient(
          LiftedSameLabel(label, i, j), alpha, dist[i * num + j],
          row_max[i], row_sum[i], row_weight[i],
          row_max[j], row_sum[j], row_weight[j]);
      const bool is_near = near[i * num + j] != Dtype(0);
      grad_dist[i * num + j] = is_near ? Dtype(0) : w;
      grad_near[i * num + j] = is_near ? w : Dtype(0);
    }
  }
  // dE/dx_i = sum_j W_ij (x_i - x_j) = (sum_j W_ij) x_i - (W X)_i over the
  // pairs whose distance came from the expansion.
  Dtype* grad_row = grad_row_.mutable_cpu_data();
  caffe_cpu_gemv<Dtype>(CblasNoTrans, num, num, Dtype(1), grad_dist,
      ones_.cpu_data(), Dtype(0), grad_row);
  for (int i = 0; i < num; ++i) {
    caffe_cpu_scale(dim, grad_row[i], x + i * dim, bottom_diff + i * dim);
  }
  caffe_cpu_gemm<Dtype>(CblasNoTrans, CblasNoTrans, num, dim, num, Dtype(-1),
      grad_dist, x, Dtype(1), bottom_diff);
  // Near-duplicate pairs from their differences, as the CUDA kernel adds
  // them (only rows with a near pair).
  for (int i = 0; i < num; ++i) {
    if (row_near[i] == Dtype(0)) { continue; }
    for (int c = 0; c < dim; ++c) {
      bottom_diff[i * dim + c] +=
          LiftedNearGradient(i, c, num, dim, grad_near, x);
    }
  }
}

#ifdef CPU_ONLY
STUB_GPU(LiftedStructSimilaritySoftmaxLossLayer);
#endif

INSTANTIATE_CLASS(LiftedStructSimilaritySoftmaxLossLayer);
REGISTER_LAYER_CLASS(LiftedStructSimilaritySoftmaxLoss);

}  // namespace caffe
