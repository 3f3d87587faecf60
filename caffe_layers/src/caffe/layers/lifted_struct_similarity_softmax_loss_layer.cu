#include <vector>

#include "caffe/layers/lifted_struct_similarity_softmax_loss_layer.hpp"
#include "caffe/util/lifted_struct.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

// D from X X^T; the rare near-duplicate pairs recompute theirs from x.
template <typename Dtype>
__global__ void LiftedDistanceKernel(const int num, const int dim,
    const Dtype* x, const Dtype* dot, Dtype* dist, Dtype* near) {
  CUDA_KERNEL_LOOP(index, num * num) {
    bool is_near;
    dist[index] = LiftedDistance(index / num, index % num, num, dim, x, dot,
        &is_near);
    near[index] = is_near ? Dtype(1) : Dtype(0);
  }
}

// One thread per row; the rows' O(num) loops read D column-wise (coalesced).
template <typename Dtype>
__global__ void LiftedRowStatsKernel(const int num, const Dtype* label,
    const Dtype* dist, const Dtype* near, const Dtype alpha, Dtype* row_max,
    Dtype* row_sum, Dtype* row_near) {
  CUDA_KERNEL_LOOP(i, num) {
    LiftedRowStats(i, num, label, dist, near, alpha, row_max, row_sum,
        row_near);
  }
}

template <typename Dtype>
__global__ void LiftedRowPairsKernel(const int num, const Dtype* label,
    const Dtype* dist, const Dtype* row_max, const Dtype* row_sum,
    Dtype* row_loss, Dtype* row_pairs, Dtype* row_weight) {
  CUDA_KERNEL_LOOP(i, num) {
    LiftedRowPairs(i, num, label, dist, row_max, row_sum, row_loss, row_pairs,
        row_weight);
  }
}

// One block sums the rows' pair counts and losses and the squared norms'
// LiftedNonFinite, and writes |P|, that flag and the loss where they are
// needed, so nothing is copied back to the host.
template <typename Dtype>
__global__ void LiftedLossKernel(const int num, const Dtype* dot,
    const Dtype* row_loss, const Dtype* row_pairs, Dtype* num_pairs,
    Dtype* nonfinite, Dtype* loss) {
  __shared__ Dtype loss_sum[CAFFE_CUDA_NUM_THREADS];
  __shared__ Dtype pair_sum[CAFFE_CUDA_NUM_THREADS];
  __shared__ Dtype bad_sum[CAFFE_CUDA_NUM_THREADS];
  Dtype l = Dtype(0), p = Dtype(0), b = Dtype(0);
  for (int i = threadIdx.x; i < num; i += blockDim.x) {
    l += row_loss[i];
    p += row_pairs[i];
    b += LiftedNonFinite(dot[i * num + i]);
  }
  loss_sum[threadIdx.x] = l;
  pair_sum[threadIdx.x] = p;
  bad_sum[threadIdx.x] = b;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      loss_sum[threadIdx.x] += loss_sum[threadIdx.x + stride];
      pair_sum[threadIdx.x] += pair_sum[threadIdx.x + stride];
      bad_sum[threadIdx.x] += bad_sum[threadIdx.x + stride];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    num_pairs[0] = pair_sum[0];
    nonfinite[0] = bad_sum[0];
    loss[0] = bad_sum[0] + (pair_sum[0] > Dtype(0) ?
        loss_sum[0] / (Dtype(2) * pair_sum[0]) : Dtype(0));
  }
}

template <typename Dtype>
void LiftedStructSimilaritySoftmaxLossLayer<Dtype>::Forward_gpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const int num = bottom[0]->num();
  const int dim = bottom[0]->count() / num;
  const Dtype alpha = this->layer_param_.lifted_struct_sim_softmax_loss_param()
      .margin();
  const Dtype* x = bottom[0]->gpu_data();
  const Dtype* label = bottom[1]->gpu_data();
  Dtype* dot = dot_.mutable_gpu_data();
  Dtype* dist = dist_.mutable_gpu_data();
  caffe_gpu_gemm<Dtype>(CblasNoTrans, CblasTrans, num, num, dim, Dtype(1), x,
      x, Dtype(0), dot);
  // NOLINT_NEXT_LINE(whitespace/operators)
  LiftedDistanceKernel<Dtype><<<CAFFE_GET_BLOCKS(num * num),
      CAFFE_CUDA_NUM_THREADS>>>(num, dim, x, dot, dist,
      near_.mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
  // NOLINT_NEXT_LINE(whitespace/operators)
  LiftedRowStatsKernel<Dtype><<<CAFFE_GET_BLOCKS(num),
      CAFFE_CUDA_NUM_THREADS>>>(num, label, dist, near_.gpu_data(), alpha,
      row_max_.mutable_gpu_data(), row_sum_.mutable_gpu_data(),
      row_near_.mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
  // NOLINT_NEXT_LINE(whitespace/operators)
  LiftedRowPairsKernel<Dtype><<<CAFFE_GET_BLOCKS(num),
      CAFFE_CUDA_NUM_THREADS>>>(num, label, dist, row_max_.gpu_data(),
      row_sum_.gpu_data(), row_loss_.mutable_gpu_data(),
      row_pairs_.mutable_gpu_data(), row_weight_.mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
  // NOLINT_NEXT_LINE(whitespace/operators)
  LiftedLossKernel<Dtype><<<1, CAFFE_CUDA_NUM_THREADS>>>(num, dot,
      row_loss_.gpu_data(), row_pairs_.gpu_data(),
      num_pairs_.mutable_gpu_data(), nonfinite_.mutable_gpu_data(),
      top[0]->mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
}

// W_ij = (top_diff / |P|) dE/dD_ij / D_ij, split into the pairs whose D came
// from the expansion (grad_dist) and the near-duplicates (grad_near); all
// zero when |P| = 0, all NaN when a feature is not finite.
template <typename Dtype>
__global__ void LiftedDistanceGradientKernel(const int num, const Dtype alpha,
    const Dtype* label, const Dtype* dist, const Dtype* near,
    const Dtype* row_max, const Dtype* row_sum, const Dtype* row_weight,
    const Dtype* num_pairs, const Dtype* nonfinite, const Dtype* top_diff,
    Dtype* grad_dist, Dtype* grad_near) {
  const Dtype scale = nonfinite[0] + (num_pairs[0] > Dtype(0) ?
      top_diff[0] / num_pairs[0] : Dtype(0));
  CUDA_KERNEL_LOOP(index, num * num) {
    const int i = index / num, j = index % num;
    const Dtype w = scale * LiftedDistanceGradient(
        LiftedSameLabel(label, i, j), alpha, dist[index],
        row_max[i], row_sum[i], row_weight[i],
        row_max[j], row_sum[j], row_weight[j]);
    const bool is_near = near[index] != Dtype(0);
    grad_dist[index] = is_near ? Dtype(0) : w;
    grad_near[index] = is_near ? w : Dtype(0);
  }
}

// y_i = (sum_j W_ij) x_i plus the near-duplicate terms of row i, which only
// rows with a near-duplicate partner loop over.
template <typename Dtype>
__global__ void LiftedScaleRowsKernel(const int num, const int dim,
    const Dtype* row_scale, const Dtype* row_near, const Dtype* grad_near,
    const Dtype* x, Dtype* y) {
  CUDA_KERNEL_LOOP(index, num * dim) {
    const int i = index / dim;
    Dtype value = row_scale[i] * x[index];
    if (row_near[i] != Dtype(0)) {
      value += LiftedNearGradient(i, index % dim, num, dim, grad_near, x);
    }
    y[index] = value;
  }
}

template <typename Dtype>
void LiftedStructSimilaritySoftmaxLossLayer<Dtype>::Backward_gpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  if (propagate_down[1]) {
    LOG(FATAL) << this->type()
               << " Layer cannot backpropagate to label inputs.";
  }
  if (!propagate_down[0]) { return; }
  const int num = bottom[0]->num();
  const int dim = bottom[0]->count() / num;
  const Dtype alpha = this->layer_param_.lifted_struct_sim_softmax_loss_param()
      .margin();
  const Dtype* x = bottom[0]->gpu_data();
  Dtype* bottom_diff = bottom[0]->mutable_gpu_diff();
  Dtype* grad_dist = grad_dist_.mutable_gpu_data();
  Dtype* grad_row = grad_row_.mutable_gpu_data();
  // NOLINT_NEXT_LINE(whitespace/operators)
  LiftedDistanceGradientKernel<Dtype><<<CAFFE_GET_BLOCKS(num * num),
      CAFFE_CUDA_NUM_THREADS>>>(num, alpha, bottom[1]->gpu_data(),
      dist_.gpu_data(), near_.gpu_data(), row_max_.gpu_data(),
      row_sum_.gpu_data(), row_weight_.gpu_data(), num_pairs_.gpu_data(),
      nonfinite_.gpu_data(), top[0]->gpu_diff(), grad_dist,
      grad_near_.mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
  // dE/dx_i = (sum_j W_ij) x_i - (W X)_i, plus the near-duplicate terms.
  caffe_gpu_gemv<Dtype>(CblasNoTrans, num, num, Dtype(1), grad_dist,
      ones_.gpu_data(), Dtype(0), grad_row);
  // NOLINT_NEXT_LINE(whitespace/operators)
  LiftedScaleRowsKernel<Dtype><<<CAFFE_GET_BLOCKS(num * dim),
      CAFFE_CUDA_NUM_THREADS>>>(num, dim, grad_row, row_near_.gpu_data(),
      grad_near_.gpu_data(), x, bottom_diff);
  CUDA_POST_KERNEL_CHECK;
  caffe_gpu_gemm<Dtype>(CblasNoTrans, CblasNoTrans, num, dim, num, Dtype(-1),
      grad_dist, x, Dtype(1), bottom_diff);
}

INSTANTIATE_LAYER_GPU_FUNCS(LiftedStructSimilaritySoftmaxLossLayer);

}  // namespace caffe
