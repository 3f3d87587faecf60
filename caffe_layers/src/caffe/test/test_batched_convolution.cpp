// The batched CPU convolution (patch 0015, caffe/util/batched_conv.hpp):
// forward and backward agree with Caffe's loop over the images (engine:
// CAFFE) for padding, strides, dilation, groups, 1x1 kernels and no bias,
// in one chunk and in several; its gradients pass the GradientChecker; its
// results are the same bits on 1, 2 or 3 OpenMP threads.
// Caffe's own ConvolutionLayerTest runs through it too (DEFAULT engine).
#include <cmath>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/conv_layer.hpp"
#include "caffe/util/batched_conv.hpp"
#include "caffe/util/im2col.hpp"
#include "caffe/util/math_functions.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

struct ConvCase {
  int kernel, stride, pad, dilation, group, outputs;
  bool bias;
};

const ConvCase kCases[] = {
  {3, 1, 1, 1, 1, 6, true},
  {5, 2, 2, 1, 1, 4, true},
  {3, 1, 2, 2, 1, 4, true},   // dilated
  {3, 2, 1, 1, 2, 6, true},   // two groups
  {1, 1, 0, 1, 1, 5, true},   // 1x1
  {2, 3, 0, 1, 1, 3, false},  // stride past the kernel, no bias
};

template <typename Dtype>
class BatchedConvolutionTest : public CPUDeviceTest<Dtype> {
 protected:
  BatchedConvolutionTest()
      : bottom_(new Blob<Dtype>(5, 4, 9, 7)), top_(new Blob<Dtype>()) {
    FillerParameter filler_param;
    filler_param.set_std(1);
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(bottom_);
    bottom_vec_.push_back(bottom_);
    top_vec_.push_back(top_);
  }
  virtual ~BatchedConvolutionTest() {
    delete bottom_;
    delete top_;
    BatchedConvolution<Dtype>::set_workspace_limit(1L << 24);
  }

  LayerParameter Param(const ConvCase& c, bool stock) {
    LayerParameter param;
    ConvolutionParameter* conv = param.mutable_convolution_param();
    conv->add_kernel_size(c.kernel);
    conv->add_stride(c.stride);
    conv->add_pad(c.pad);
    conv->add_dilation(c.dilation);
    conv->set_group(c.group);
    conv->set_num_output(c.outputs);
    conv->set_bias_term(c.bias);
    conv->mutable_weight_filler()->set_type("gaussian");
    conv->mutable_bias_filler()->set_type("gaussian");
    if (stock) {
      conv->set_engine(ConvolutionParameter_Engine_CAFFE);
    }
    return param;
  }

  // Forward and backward of one layer; returns top, bottom diff, then each
  // parameter's diff, concatenated.
  std::vector<Dtype> Run(ConvolutionLayer<Dtype>* layer,
      const Blob<Dtype>& top_diff) {
    layer->Forward(bottom_vec_, top_vec_);
    std::vector<Dtype> out(top_->cpu_data(), top_->cpu_data() + top_->count());
    caffe_copy(top_->count(), top_diff.cpu_data(), top_->mutable_cpu_diff());
    for (int i = 0; i < layer->blobs().size(); ++i) {
      caffe_set(layer->blobs()[i]->count(), Dtype(0),
          layer->blobs()[i]->mutable_cpu_diff());
    }
    layer->Backward(top_vec_, vector<bool>(1, true), bottom_vec_);
    out.insert(out.end(), bottom_->cpu_diff(),
        bottom_->cpu_diff() + bottom_->count());
    for (int i = 0; i < layer->blobs().size(); ++i) {
      const Blob<Dtype>& blob = *layer->blobs()[i];
      out.insert(out.end(), blob.cpu_diff(), blob.cpu_diff() + blob.count());
    }
    return out;
  }

  Blob<Dtype>* const bottom_;
  Blob<Dtype>* const top_;
  vector<Blob<Dtype>*> bottom_vec_;
  vector<Blob<Dtype>*> top_vec_;
};

TYPED_TEST_CASE(BatchedConvolutionTest, TestDtypes);

TYPED_TEST(BatchedConvolutionTest, TestMatchesCaffesLoop) {
  for (int limit = 0; limit < 2; ++limit) {
    // Then two images a chunk: chunks of 2, 2 and 1.
    for (int k = 0; k < sizeof(kCases) / sizeof(kCases[0]); ++k) {
      ConvolutionLayer<TypeParam> stock(this->Param(kCases[k], true));
      stock.SetUp(this->bottom_vec_, this->top_vec_);
      ConvolutionLayer<TypeParam> batched(this->Param(kCases[k], false));
      batched.SetUp(this->bottom_vec_, this->top_vec_);
      for (int i = 0; i < stock.blobs().size(); ++i) {
        batched.blobs()[i]->CopyFrom(*stock.blobs()[i]);
      }
      if (limit) {
        const long per_image = (4 * kCases[k].kernel * kCases[k].kernel +  // NOLINT
            kCases[k].outputs + 1) * (this->top_->count() / 5 /
            kCases[k].outputs);
        BatchedConvolution<TypeParam>::set_workspace_limit(2 * per_image);
        const ConvGeometry g = {4, 9, 7, kCases[k].outputs,
            this->top_->height(), this->top_->width(), kCases[k].kernel,
            kCases[k].kernel, kCases[k].pad, kCases[k].pad, kCases[k].stride,
            kCases[k].stride, kCases[k].dilation, kCases[k].dilation,
            kCases[k].group};
        EXPECT_EQ(BatchedConvolution<TypeParam>::Chunk(g, 5), 2);
      }
      Blob<TypeParam> top_diff(this->top_->shape());
      FillerParameter filler_param;
      filler_param.set_std(1);
      GaussianFiller<TypeParam> filler(filler_param);
      filler.Fill(&top_diff);
      const std::vector<TypeParam> want = this->Run(&stock, top_diff);
      const std::vector<TypeParam> got = this->Run(&batched, top_diff);
      ASSERT_EQ(want.size(), got.size());
      for (int i = 0; i < want.size(); ++i) {
        EXPECT_NEAR(got[i], want[i], 1e-4 * (1 + std::fabs(want[i])))
            << "case " << k << ", value " << i << ", limit " << limit;
      }
    }
  }
}

TYPED_TEST(BatchedConvolutionTest, TestColumnsAreCaffes) {
  // Image by image, the batched columns are Caffe's im2col, and col2im of
  // random columns is Caffe's col2im, bit for bit.
  const int images = 3;
  for (int k = 0; k < sizeof(kCases) / sizeof(kCases[0]); ++k) {
    const ConvCase& c = kCases[k];
    const int out_h = (9 + 2 * c.pad - (c.dilation * (c.kernel - 1) + 1)) /
        c.stride + 1;
    const int out_w = (7 + 2 * c.pad - (c.dilation * (c.kernel - 1) + 1)) /
        c.stride + 1;
    const ConvGeometry g = {4, 9, 7, c.outputs, out_h, out_w, c.kernel,
        c.kernel, c.pad, c.pad, c.stride, c.stride, c.dilation, c.dilation,
        c.group};
    const int rows = 4 * c.kernel * c.kernel, spatial = out_h * out_w;
    Blob<TypeParam> col(1, 1, rows, images * spatial);
    Blob<TypeParam> image_col(1, 1, rows, spatial);
    Blob<TypeParam> back(images, 4, 9, 7), image_back(1, 4, 9, 7);
    im2col_batch_cpu(g, images, this->bottom_->cpu_data(),
        col.mutable_cpu_data());
    col2im_batch_cpu(g, images, col.cpu_data(), back.mutable_cpu_data());
    for (int b = 0; b < images; ++b) {
      im2col_cpu(this->bottom_->cpu_data() + b * g.in_dim(), 4, 9, 7,
          c.kernel, c.kernel, c.pad, c.pad, c.stride, c.stride, c.dilation,
          c.dilation, image_col.mutable_cpu_data());
      for (int r = 0; r < rows; ++r) {
        for (int s = 0; s < spatial; ++s) {
          ASSERT_EQ(col.cpu_data()[r * images * spatial + b * spatial + s],
              image_col.cpu_data()[r * spatial + s]) << "case " << k;
          // Image b's own columns, for col2im.
          image_col.mutable_cpu_data()[r * spatial + s] =
              col.cpu_data()[r * images * spatial + b * spatial + s];
        }
      }
      col2im_cpu(image_col.cpu_data(), 4, 9, 7, c.kernel, c.kernel, c.pad,
          c.pad, c.stride, c.stride, c.dilation, c.dilation,
          image_back.mutable_cpu_data());
      for (int i = 0; i < g.in_dim(); ++i) {
        ASSERT_EQ(back.cpu_data()[b * g.in_dim() + i],
            image_back.cpu_data()[i]) << "case " << k;
      }
    }
  }
}

#ifdef _OPENMP
TYPED_TEST(BatchedConvolutionTest, TestSameBitsOnAnyThreadCount) {
  // A batch of 17 in chunks of one image (the chunks' weight gradients added
  // in their order), and in the default chunks; 1, 2 and 3 threads.
  this->bottom_->Reshape(17, 4, 9, 7);
  FillerParameter filler_param;
  filler_param.set_std(1);
  GaussianFiller<TypeParam> filler(filler_param);
  filler.Fill(this->bottom_);
  const int threads = omp_get_max_threads();
  for (int limit = 0; limit < 2; ++limit) {
    BatchedConvolution<TypeParam>::set_workspace_limit(limit ? 1000 : 1L << 24);
    for (int k = 0; k < sizeof(kCases) / sizeof(kCases[0]); ++k) {
      ConvolutionLayer<TypeParam> layer(this->Param(kCases[k], false));
      layer.SetUp(this->bottom_vec_, this->top_vec_);
      Blob<TypeParam> top_diff(this->top_->shape());
      filler.Fill(&top_diff);
      std::vector<TypeParam> want;
      for (int t = 1; t <= 3; ++t) {
        omp_set_num_threads(t);
        const std::vector<TypeParam> got = this->Run(&layer, top_diff);
        if (t == 1) {
          want = got;
          continue;
        }
        ASSERT_EQ(want.size(), got.size());
        for (int i = 0; i < want.size(); ++i) {
          ASSERT_EQ(got[i], want[i]) << "case " << k << ", value " << i
              << ", " << t << " threads, limit " << limit;
        }
      }
    }
  }
  omp_set_num_threads(threads);
}
#endif

TYPED_TEST(BatchedConvolutionTest, TestGradient) {
  BatchedConvolution<TypeParam>::set_workspace_limit(1000);  // 1-image chunks
  this->bottom_->Reshape(2, 4, 5, 4);
  FillerParameter filler_param;
  filler_param.set_std(1);
  GaussianFiller<TypeParam> filler(filler_param);
  filler.Fill(this->bottom_);
  for (int k = 0; k < sizeof(kCases) / sizeof(kCases[0]); k += 3) {
    ConvolutionLayer<TypeParam> layer(this->Param(kCases[k], false));
    GradientChecker<TypeParam> checker(1e-2, 1e-3);
    checker.CheckGradientExhaustive(&layer, this->bottom_vec_, this->top_vec_);
  }
}

}  // namespace caffe
