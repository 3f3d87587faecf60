#include <algorithm>
#include <vector>

#include "caffe/common.hpp"
#include "caffe/util/batched_conv.hpp"
#include "caffe/util/cpu_threads.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

// A layer's batch splits into about kChunks chunks, so that the cores have
// chunks to share, of at least kMinColumns columns each where the batch
// allows (a thinner gemm is far from the BLAS's peak). Neither depends on
// the number of threads, so neither do the results.
static const int kChunks = 8;
static const int kMinColumns = 1024;

// One buffer per thread and type, shared by every layer that thread runs:
// a net's layers run one after the other. Tag tells buffers apart.
template <typename Dtype, int Tag>
static Dtype* Workspace(size_t count) {
  static thread_local std::vector<Dtype> workspace;
  if (workspace.size() < count) {
    workspace.resize(count);
  }
  return workspace.data();
}

static long workspace_limit_ = 1L << 24;  // NOLINT(runtime/int)

template <typename Dtype>
long BatchedConvolution<Dtype>::workspace_limit() {  // NOLINT(runtime/int)
  return workspace_limit_;
}

template <typename Dtype>
void BatchedConvolution<Dtype>::set_workspace_limit(
    long elements) {  // NOLINT(runtime/int)
  workspace_limit_ = elements;
}

template <typename Dtype>
int BatchedConvolution<Dtype>::Chunk(const ConvGeometry& g, int num) {
  // Per image: its columns, its outputs (or output gradients), a one.
  const long per_image = static_cast<long>(  // NOLINT(runtime/int)
      g.kernel_dim() * g.groups + g.out_channels + 1) * g.out_spatial();
  const int spatial = std::max(1, g.out_spatial());
  const long chunk = std::min<long>(  // NOLINT(runtime/int)
      std::max((num + kChunks - 1) / kChunks,
               (kMinColumns + spatial - 1) / spatial),
      workspace_limit_ / per_image);
  return static_cast<int>(std::max(1L, std::min<long>(chunk, num)));  // NOLINT
}

// Chunk k of a batch of num images in chunks of size (Chunk()): its first
// image, its images and columns, and its buffers in the thread's workspace:
// the columns (kernel rows x images x spatial), the outputs or output
// gradients in the same layout (channels x images x spatial), and a row of
// ones for the bias gradient.
template <typename Dtype>
struct ChunkOf {
  ChunkOf(const ConvGeometry& g, int num, int size, int k)
      : first(k * size), images(std::min(size, num - first)),
        cols(images * g.out_spatial()) {
    const size_t columns = static_cast<size_t>(cols);
    const size_t col_count = columns * g.kernel_dim() * g.groups;
    col = Workspace<Dtype, 0>(col_count + columns * g.out_channels + columns);
    out = col + col_count;
    ones = out + columns * g.out_channels;
  }
  int first, images, cols;
  Dtype* col;
  Dtype* out;
  Dtype* ones;
};

template <typename Dtype>
void BatchedConvolution<Dtype>::Forward(const ConvGeometry& g, int num,
    const Dtype* bottom, const Dtype* weight, const Dtype* bias,
    Dtype* top) {
  const int kernel_dim = g.kernel_dim(), spatial = g.out_spatial();
  const int group_out = g.out_channels / g.groups;
  const int size = Chunk(g, num), chunks = (num + size - 1) / size;
  ParallelChunks(chunks, [&](int k) {
    const ChunkOf<Dtype> chunk(g, num, size, k);
    const int first = chunk.first, images = chunk.images, cols = chunk.cols;
    Dtype* col = chunk.col;
    Dtype* out = chunk.out;
    im2col_batch_cpu(g, images, bottom + first * g.in_dim(), col);
    for (int group = 0; group < g.groups; ++group) {
      caffe_cpu_gemm<Dtype>(CblasNoTrans, CblasNoTrans, group_out, cols,
          kernel_dim, Dtype(1), weight + group * group_out * kernel_dim,
          col + group * kernel_dim * cols, Dtype(0),
          out + group * group_out * cols);
    }
    // out is channels x (images x spatial); top is images x channels x
    // spatial.
    for (int c = 0; c < g.out_channels; ++c) {
      const Dtype b = bias ? bias[c] : Dtype(0);
      for (int i = 0; i < images; ++i) {
        const Dtype* src = out + c * cols + i * spatial;
        Dtype* dst = top + (first + i) * g.out_dim() + c * spatial;
        for (int s = 0; s < spatial; ++s) {
          dst[s] = src[s] + b;
        }
      }
    }
  });
}

template <typename Dtype>
void BatchedConvolution<Dtype>::Backward(const ConvGeometry& g, int num,
    const Dtype* top_diff, const Dtype* bottom, const Dtype* weight,
    Dtype* weight_diff, Dtype* bias_diff, Dtype* bottom_diff) {
  const int kernel_dim = g.kernel_dim(), spatial = g.out_spatial();
  const int group_out = g.out_channels / g.groups;
  const int size = Chunk(g, num), chunks = (num + size - 1) / size;
  // Each chunk's weight and bias gradients go to a buffer of their own and
  // are added in the chunks' order: the same sums whichever threads ran
  // them. A single chunk adds to the gradients directly.
  const int weight_count = g.out_channels * kernel_dim;
  const int part = weight_count + g.out_channels;
  Dtype* parts = chunks > 1 && (weight_diff || bias_diff) ?
      Workspace<Dtype, 1>(static_cast<size_t>(chunks) * part) : NULL;
  ParallelChunks(chunks, [&](int k) {
    const ChunkOf<Dtype> chunk(g, num, size, k);
    const int first = chunk.first, images = chunk.images, cols = chunk.cols;
    Dtype* col = chunk.col;
    Dtype* dy = chunk.out;
    Dtype* w_grad = parts ? parts + k * part : weight_diff;
    Dtype* b_grad = parts ? parts + k * part + weight_count : bias_diff;
    const Dtype beta = parts ? Dtype(0) : Dtype(1);
    for (int c = 0; c < g.out_channels; ++c) {
      for (int i = 0; i < images; ++i) {
        caffe_copy(spatial, top_diff + (first + i) * g.out_dim() + c * spatial,
            dy + c * cols + i * spatial);
      }
    }
    if (bias_diff) {
      caffe_set(cols, Dtype(1), chunk.ones);
      caffe_cpu_gemv<Dtype>(CblasNoTrans, g.out_channels, cols, Dtype(1), dy,
          chunk.ones, beta, b_grad);
    }
    if (weight_diff) {
      im2col_batch_cpu(g, images, bottom + first * g.in_dim(), col);
      for (int group = 0; group < g.groups; ++group) {
        caffe_cpu_gemm<Dtype>(CblasNoTrans, CblasTrans, group_out, kernel_dim,
            cols, Dtype(1), dy + group * group_out * cols,
            col + group * kernel_dim * cols, beta,
            w_grad + group * group_out * kernel_dim);
      }
    }
    if (bottom_diff) {
      for (int group = 0; group < g.groups; ++group) {
        caffe_cpu_gemm<Dtype>(CblasTrans, CblasNoTrans, kernel_dim, cols,
            group_out, Dtype(1), weight + group * group_out * kernel_dim,
            dy + group * group_out * cols, Dtype(0),
            col + group * kernel_dim * cols);
      }
      col2im_batch_cpu(g, images, col, bottom_diff + first * g.in_dim());
    }
  });
  for (int k = 0; parts && k < chunks; ++k) {
    if (weight_diff) {
      caffe_axpy(weight_count, Dtype(1), parts + k * part, weight_diff);
    }
    if (bias_diff) {
      caffe_axpy(g.out_channels, Dtype(1), parts + k * part + weight_count,
          bias_diff);
    }
  }
}

// The output columns [*first, *last) at which kernel column j reads inside
// the input's width (the others read padding).
static void InsideColumns(const ConvGeometry& g, int j, int* first,
    int* last) {
  const int offset = j * g.dilation_w - g.pad_w;  // iw = ow * stride + offset
  *first = offset >= 0 ? 0 : (-offset + g.stride_w - 1) / g.stride_w;
  *last = offset >= g.width ? 0 : (g.width - 1 - offset) / g.stride_w + 1;
  *last = std::max(*first, std::min(*last, g.out_width));
  *first = std::min(*first, *last);
}

// Row (c, i, j) of the columns (Caffe's im2col order), image b's entries at
// b * spatial: the input pixel under kernel tap (i, j) at each output
// position, 0 in the padding.
template <typename Dtype>
void im2col_batch_cpu(const ConvGeometry& g, int images, const Dtype* data,
    Dtype* col) {
  const int spatial = g.out_spatial();
  const int cols = images * spatial;
  const int plane = g.height * g.width;
  for (int c = 0; c < g.channels; ++c) {
    for (int i = 0; i < g.kernel_h; ++i) {
      for (int j = 0; j < g.kernel_w; ++j) {
        Dtype* row = col + ((c * g.kernel_h + i) * g.kernel_w + j) * cols;
        int first, last;
        InsideColumns(g, j, &first, &last);
        const int offset = j * g.dilation_w - g.pad_w;
        for (int b = 0; b < images; ++b) {
          const Dtype* src = data + b * g.in_dim() + c * plane;
          Dtype* dst = row + b * spatial;
          for (int oh = 0; oh < g.out_height; ++oh, dst += g.out_width) {
            const int ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
            if (ih < 0 || ih >= g.height) {
              std::fill(dst, dst + g.out_width, Dtype(0));
              continue;
            }
            const Dtype* line = src + ih * g.width;
            std::fill(dst, dst + first, Dtype(0));
            if (g.stride_w == 1 && last > first) {
              std::copy(line + first + offset, line + last + offset,
                  dst + first);
            } else {
              for (int ow = first; ow < last; ++ow) {
                dst[ow] = line[ow * g.stride_w + offset];
              }
            }
            std::fill(dst + last, dst + g.out_width, Dtype(0));
          }
        }
      }
    }
  }
}

template <typename Dtype>
void col2im_batch_cpu(const ConvGeometry& g, int images, const Dtype* col,
    Dtype* data) {
  caffe_set(images * g.in_dim(), Dtype(0), data);
  const int spatial = g.out_spatial();
  const int cols = images * spatial;
  const int plane = g.height * g.width;
  for (int c = 0; c < g.channels; ++c) {
    for (int i = 0; i < g.kernel_h; ++i) {
      for (int j = 0; j < g.kernel_w; ++j) {
        const Dtype* row =
            col + ((c * g.kernel_h + i) * g.kernel_w + j) * cols;
        int first, last;
        InsideColumns(g, j, &first, &last);
        const int offset = j * g.dilation_w - g.pad_w;
        for (int b = 0; b < images; ++b) {
          Dtype* dst = data + b * g.in_dim() + c * plane;
          const Dtype* src = row + b * spatial;
          for (int oh = 0; oh < g.out_height; ++oh, src += g.out_width) {
            const int ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
            if (ih < 0 || ih >= g.height) {
              continue;
            }
            Dtype* line = dst + ih * g.width;
            for (int ow = first; ow < last; ++ow) {
              line[ow * g.stride_w + offset] += src[ow];
            }
          }
        }
      }
    }
  }
}

template void im2col_batch_cpu<float>(const ConvGeometry&, int, const float*,
    float*);
template void im2col_batch_cpu<double>(const ConvGeometry&, int,
    const double*, double*);
template void col2im_batch_cpu<float>(const ConvGeometry&, int, const float*,
    float*);
template void col2im_batch_cpu<double>(const ConvGeometry&, int,
    const double*, double*);

INSTANTIATE_CLASS(BatchedConvolution);

}  // namespace caffe
