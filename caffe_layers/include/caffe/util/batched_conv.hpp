#ifndef CAFFE_UTIL_BATCHED_CONV_HPP_
#define CAFFE_UTIL_BATCHED_CONV_HPP_

namespace caffe {

// A 2-D convolution's shapes, per image.
struct ConvGeometry {
  int channels, height, width;  // input
  int out_channels, out_height, out_width;
  int kernel_h, kernel_w, pad_h, pad_w, stride_h, stride_w;
  int dilation_h, dilation_w;
  int groups;

  int kernel_dim() const { return channels / groups * kernel_h * kernel_w; }
  int out_spatial() const { return out_height * out_width; }
  int in_dim() const { return channels * height * width; }
  int out_dim() const { return out_channels * out_spatial(); }
};

/**
 * @brief The CPU convolution over several images at once: Caffe's own CPU
 *        path lowers one image at a time (im2col, then a gemm of
 *        out_channels x kernel_dim by kernel_dim x out_spatial), which for
 *        the small maps of the later layers and of small nets is a small
 *        gemm far from the BLAS's peak. Here the columns of a chunk of
 *        images sit side by side, so that each layer's forward, weight and
 *        input gradients are one large gemm per chunk (per group).
 *
 * The same arithmetic as Caffe's loop, in another order of summation (so
 * results agree to rounding, not bit for bit). The chunks run on OpenMP's
 * threads, each chunk's gemms on one BLAS thread; how a batch splits into
 * chunks, and the order in which the chunks' weight gradients are added,
 * do not depend on the number of threads. Each thread has one workspace,
 * shared by every layer, of at most workspace_limit() elements (more only
 * when a single image needs more).
 */
template <typename Dtype>
class BatchedConvolution {
 public:
  // 2^24 elements (64 MiB of float) unless set otherwise (tests set less to
  // make several chunks).
  static long workspace_limit();  // NOLINT(runtime/int)
  static void set_workspace_limit(long elements);  // NOLINT(runtime/int)

  // top = conv(bottom) + bias (bias may be NULL).
  static void Forward(const ConvGeometry& g, int num, const Dtype* bottom,
      const Dtype* weight, const Dtype* bias, Dtype* top);
  // Adds the weight and bias gradients (NULL: not wanted) and writes the
  // bottom gradient (NULL: not wanted).
  static void Backward(const ConvGeometry& g, int num, const Dtype* top_diff,
      const Dtype* bottom, const Dtype* weight, Dtype* weight_diff,
      Dtype* bias_diff, Dtype* bottom_diff);
  // Images per chunk for these shapes: about an eighth of the batch, at
  // least 1024 columns, within the workspace.
  static int Chunk(const ConvGeometry& g, int num);
};

// The columns of images consecutive images (each in_dim apart), image b's
// out_spatial columns at b * out_spatial of each of the kernel_dim x groups
// rows: (channels * kernel_h * kernel_w) x (images * out_spatial).
template <typename Dtype>
void im2col_batch_cpu(const ConvGeometry& g, int images, const Dtype* data,
    Dtype* col);
// The inverse accumulation: data (images x in_dim) is overwritten with the
// sum of the columns' entries at each input position.
template <typename Dtype>
void col2im_batch_cpu(const ConvGeometry& g, int images, const Dtype* col,
    Dtype* data);

}  // namespace caffe

#endif  // CAFFE_UTIL_BATCHED_CONV_HPP_
