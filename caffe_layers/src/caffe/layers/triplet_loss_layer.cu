#include <vector>

#include "caffe/layers/triplet_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
__global__ void TripletHingeKernel(const int triplets, const int dim,
    const Dtype alpha, const Dtype* anchor, const Dtype* positive,
    const Dtype* negative, Dtype* hinge) {
  CUDA_KERNEL_LOOP(t, triplets) {
    Dtype d_ap = Dtype(0), d_an = Dtype(0);
    for (int c = 0; c < dim; ++c) {
      const Dtype a = anchor[t * dim + c];
      d_ap += (a - positive[t * dim + c]) * (a - positive[t * dim + c]);
      d_an += (a - negative[t * dim + c]) * (a - negative[t * dim + c]);
    }
    const Dtype h = d_ap - d_an + alpha;
    // NaN when a feature of the triplet is NaN or inf (see Forward_cpu).
    hinge[t] = (h > Dtype(0) ? h : Dtype(0)) + ((d_ap + d_an) - (d_ap + d_an));
  }
}

template <typename Dtype>
void TripletLossLayer<Dtype>::Forward_gpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  const int triplets = bottom[0]->num() / 3;
  const int dim = bottom[0]->count() / bottom[0]->num();
  const Dtype alpha = this->layer_param_.triplet_loss_param().margin();
  const Dtype* anchor = bottom[0]->gpu_data();
  // NOLINT_NEXT_LINE(whitespace/operators)
  TripletHingeKernel<Dtype><<<CAFFE_GET_BLOCKS(triplets),
      CAFFE_CUDA_NUM_THREADS>>>(triplets, dim, alpha, anchor,
      anchor + triplets * dim, anchor + 2 * triplets * dim,
      hinge_.mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
  Dtype loss;  // hinge >= 0 (or NaN), so its absolute sum is its sum
  caffe_gpu_asum(triplets, hinge_.gpu_data(), &loss);
  top[0]->mutable_cpu_data()[0] = loss / (Dtype(2) * triplets);
}

template <typename Dtype>
__global__ void TripletGradientKernel(const int triplets, const int dim,
    const Dtype scale, const Dtype* anchor, const Dtype* hinge,
    Dtype* diff) {
  CUDA_KERNEL_LOOP(i, triplets * dim) {
    const Dtype h = hinge[i / dim];
    const Dtype s = h > Dtype(0) ? scale : (h == Dtype(0) ? Dtype(0) : h);
    const Dtype a = anchor[i];
    const Dtype p = anchor[i + triplets * dim];
    const Dtype n = anchor[i + 2 * triplets * dim];
    diff[i] = s * (n - p);
    diff[i + triplets * dim] = s * (p - a);
    diff[i + 2 * triplets * dim] = s * (a - n);
  }
}

template <typename Dtype>
void TripletLossLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (bottom.size() > 1 && propagate_down[1]) {
    LOG(FATAL) << this->type()
               << " Layer cannot backpropagate to label inputs.";
  }
  if (!propagate_down[0]) { return; }
  const int triplets = bottom[0]->num() / 3;
  const int dim = bottom[0]->count() / bottom[0]->num();
  const Dtype scale = top[0]->cpu_diff()[0] / triplets;
  // NOLINT_NEXT_LINE(whitespace/operators)
  TripletGradientKernel<Dtype><<<CAFFE_GET_BLOCKS(triplets * dim),
      CAFFE_CUDA_NUM_THREADS>>>(triplets, dim, scale, bottom[0]->gpu_data(),
      hinge_.gpu_data(), bottom[0]->mutable_gpu_diff());
  CUDA_POST_KERNEL_CHECK;
}

INSTANTIATE_LAYER_GPU_FUNCS(TripletLossLayer);

}  // namespace caffe
