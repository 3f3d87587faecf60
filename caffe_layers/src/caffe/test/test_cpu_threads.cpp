// Max pooling and ReLU of the DEFAULT engine on OpenMP's threads (patch
// 0016) give Caffe's own results (engine: CAFFE) bit for bit, forward and
// backward, on 1, 2 and 3 threads: max pooling with ties, for 2x2 and 3x3
// windows inside the plane and windows clipped by padding or by the plane's
// edge, with the mask kept inside or as a top; with NaNs and values at
// -FLT_MAX the forward pass is Caffe's, and the backward pass sends each
// gradient where the mask says (nowhere for a window with no maximum, where
// Caffe's loop writes before the plane). The inner product's chunks (patch
// 0017) give the same bits on 2, 3 and 4 threads, and Caffe's single gemms'
// results (one thread) to rounding.
#include <cfloat>
#include <cmath>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/inner_product_layer.hpp"
#include "caffe/layers/pooling_layer.hpp"
#include "caffe/layers/relu_layer.hpp"
#include "caffe/util/math_functions.hpp"

#include "caffe/test/test_caffe_main.hpp"

namespace caffe {

struct PoolCase {
  int kernel, stride, pad;
};

const PoolCase kPoolCases[] = {
  {2, 2, 0},  // the glyph net's
  {3, 2, 0},  // GoogLeNet's (ceil mode: the last windows cut by the edge)
  {3, 1, 1},  // padding
  {2, 1, 0},  // overlapping windows: gradients that add up
  {4, 3, 1},  // neither 2 nor 3
};

template <typename Dtype>
class CpuThreadsTest : public CPUDeviceTest<Dtype> {
 protected:
  CpuThreadsTest() : bottom_(new Blob<Dtype>(6, 5, 11, 12)) {
    FillerParameter filler_param;
    filler_param.set_std(1);
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(bottom_);
    // Ties: a third of the values rounded to halves.
    Dtype* data = bottom_->mutable_cpu_data();
    for (int i = 0; i < bottom_->count(); i += 3) {
      data[i] = std::floor(data[i] * 2) / 2;
    }
    threads_ = 1;
#ifdef _OPENMP
    threads_ = omp_get_max_threads();
#endif
  }
  virtual ~CpuThreadsTest() {
    delete bottom_;
    SetThreads(threads_);
  }

  void SetThreads(int threads) {
#ifdef _OPENMP
    omp_set_num_threads(threads);
#endif
  }

  // NaNs, values at -FLT_MAX and below, and a plane with nothing above
  // -FLT_MAX.
  void AddNaNsAndLowest() {
    Dtype* data = bottom_->mutable_cpu_data();
    for (int i = 0; i < bottom_->count(); ++i) {
      if (i % 17 == 0) {
        data[i] = std::numeric_limits<Dtype>::quiet_NaN();
      }
      if (i % 23 == 0) {
        data[i] = i % 2 ? Dtype(-FLT_MAX) : -std::numeric_limits<Dtype>::max();
      }
    }
    caffe_set(bottom_->count(2), Dtype(-FLT_MAX),
        data + bottom_->offset(1, 2));
  }

  // Forward and backward; returns the tops (the mask too, with two), the
  // bottom diff and the parameters' diffs (added to a gradient of 0.5).
  std::vector<Dtype> Run(Layer<Dtype>* layer, int tops) {
    vector<Blob<Dtype>*> bottom_vec(1, bottom_);
    vector<Blob<Dtype>*> top_vec;
    std::vector<Blob<Dtype>*> owned;
    for (int i = 0; i < tops; ++i) {
      owned.push_back(new Blob<Dtype>());
      top_vec.push_back(owned.back());
    }
    layer->SetUp(bottom_vec, top_vec);
    layer->Forward(bottom_vec, top_vec);
    std::vector<Dtype> out;
    for (int i = 0; i < tops; ++i) {
      out.insert(out.end(), top_vec[i]->cpu_data(),
          top_vec[i]->cpu_data() + top_vec[i]->count());
    }
    // A top gradient that is not a constant, the same on every run.
    Dtype* top_diff = top_vec[0]->mutable_cpu_diff();
    for (int i = 0; i < top_vec[0]->count(); ++i) {
      top_diff[i] = Dtype(i % 7) - Dtype(3.25);
    }
    caffe_set(bottom_->count(), Dtype(7), bottom_->mutable_cpu_diff());
    for (int i = 0; i < layer->blobs().size(); ++i) {
      caffe_set(layer->blobs()[i]->count(), Dtype(0.5),
          layer->blobs()[i]->mutable_cpu_diff());
    }
    layer->Backward(top_vec, vector<bool>(1, true), bottom_vec);
    out.insert(out.end(), bottom_->cpu_diff(),
        bottom_->cpu_diff() + bottom_->count());
    for (int i = 0; i < layer->blobs().size(); ++i) {
      const Blob<Dtype>& blob = *layer->blobs()[i];
      out.insert(out.end(), blob.cpu_diff(), blob.cpu_diff() + blob.count());
    }
    for (int i = 0; i < tops; ++i) {
      delete owned[i];
    }
    return out;
  }

  // Bitwise: NaN equals NaN.
  void ExpectSameBits(const std::vector<Dtype>& want,
      const std::vector<Dtype>& got, const char* what, int k, int threads) {
    ASSERT_EQ(want.size(), got.size()) << what;
    for (int i = 0; i < want.size(); ++i) {
      if (std::isnan(want[i])) {
        ASSERT_TRUE(std::isnan(got[i])) << what << " case " << k << " value "
            << i << ", " << threads << " threads";
      } else {
        ASSERT_EQ(want[i], got[i]) << what << " case " << k << " value " << i
            << ", " << threads << " threads";
      }
    }
  }

  Blob<Dtype>* const bottom_;
  int threads_;
};

TYPED_TEST_CASE(CpuThreadsTest, TestDtypes);

LayerParameter MaxPooling(const PoolCase& c) {
  LayerParameter param;
  PoolingParameter* pool = param.mutable_pooling_param();
  pool->set_pool(PoolingParameter_PoolMethod_MAX);
  pool->set_kernel_size(c.kernel);
  pool->set_stride(c.stride);
  pool->set_pad(c.pad);
  return param;
}

TYPED_TEST(CpuThreadsTest, TestMaxPoolingIsCaffes) {
  for (int tops = 1; tops <= 2; ++tops) {
    for (int k = 0; k < sizeof(kPoolCases) / sizeof(kPoolCases[0]); ++k) {
      LayerParameter param = MaxPooling(kPoolCases[k]);
      PoolingParameter* pool = param.mutable_pooling_param();
      pool->set_engine(PoolingParameter_Engine_CAFFE);
      this->SetThreads(1);
      PoolingLayer<TypeParam> stock(param);
      const std::vector<TypeParam> want = this->Run(&stock, tops);
      pool->set_engine(PoolingParameter_Engine_DEFAULT);
      for (int threads = 1; threads <= 3; ++threads) {
        this->SetThreads(threads);
        PoolingLayer<TypeParam> layer(param);
        this->ExpectSameBits(want, this->Run(&layer, tops), "max pooling", k,
            threads);
      }
    }
  }
}

TYPED_TEST(CpuThreadsTest, TestMaxPoolingNaNsAndLowest) {
  this->AddNaNsAndLowest();
  const int planes = this->bottom_->count(0, 2);
  const int plane = this->bottom_->count(2);
  for (int k = 0; k < sizeof(kPoolCases) / sizeof(kPoolCases[0]); ++k) {
    LayerParameter param = MaxPooling(kPoolCases[k]);
    param.mutable_pooling_param()->set_engine(PoolingParameter_Engine_CAFFE);
    vector<Blob<TypeParam>*> bottom_vec(1, this->bottom_);
    Blob<TypeParam> top, mask;
    vector<Blob<TypeParam>*> top_vec;
    top_vec.push_back(&top);
    top_vec.push_back(&mask);
    this->SetThreads(1);
    PoolingLayer<TypeParam> stock(param);
    stock.SetUp(bottom_vec, top_vec);
    stock.Forward(bottom_vec, top_vec);
    const std::vector<TypeParam> want_top(top.cpu_data(),
        top.cpu_data() + top.count());
    const std::vector<TypeParam> want_mask(mask.cpu_data(),
        mask.cpu_data() + mask.count());
    param.mutable_pooling_param()->set_engine(
        PoolingParameter_Engine_DEFAULT);
    for (int threads = 1; threads <= 3; ++threads) {
      this->SetThreads(threads);
      PoolingLayer<TypeParam> layer(param);
      layer.SetUp(bottom_vec, top_vec);
      layer.Forward(bottom_vec, top_vec);
      this->ExpectSameBits(want_top, std::vector<TypeParam>(top.cpu_data(),
          top.cpu_data() + top.count()), "top", k, threads);
      this->ExpectSameBits(want_mask, std::vector<TypeParam>(mask.cpu_data(),
          mask.cpu_data() + mask.count()), "mask", k, threads);
      // The gradient goes where the mask says, nowhere for -1.
      const int pooled = top.count(2);
      std::vector<TypeParam> want_diff(this->bottom_->count(), TypeParam(0));
      int empty = 0;
      for (int i = 0; i < top.count(); ++i) {
        top.mutable_cpu_diff()[i] = TypeParam(i % 5) + TypeParam(0.5);
        const int index = static_cast<int>(mask.cpu_data()[i]);
        if (index < 0) {
          ++empty;
        } else {
          want_diff[i / pooled * plane + index] += top.cpu_diff()[i];
        }
      }
      EXPECT_GE(empty, pooled) << "the plane of -FLT_MAX";
      layer.Backward(top_vec, vector<bool>(1, true), bottom_vec);
      this->ExpectSameBits(want_diff, std::vector<TypeParam>(
          this->bottom_->cpu_diff(), this->bottom_->cpu_diff() + planes * plane),
          "bottom diff", k, threads);
    }
  }
}

TYPED_TEST(CpuThreadsTest, TestReLUIsCaffes) {
  // Enough values for the threads (above 65,536).
  this->bottom_->Reshape(4, 16, 40, 32);
  FillerParameter filler_param;
  filler_param.set_std(1);
  GaussianFiller<TypeParam> filler(filler_param);
  filler.Fill(this->bottom_);
  for (int leaky = 0; leaky < 2; ++leaky) {
    LayerParameter param;
    param.mutable_relu_param()->set_negative_slope(leaky ? 0.1 : 0);
    param.mutable_relu_param()->set_engine(ReLUParameter_Engine_CAFFE);
    this->SetThreads(1);
    ReLULayer<TypeParam> stock(param);
    const std::vector<TypeParam> want = this->Run(&stock, 1);
    param.mutable_relu_param()->set_engine(ReLUParameter_Engine_DEFAULT);
    for (int threads = 1; threads <= 3; ++threads) {
      this->SetThreads(threads);
      ReLULayer<TypeParam> layer(param);
      this->ExpectSameBits(want, this->Run(&layer, 1), "ReLU", leaky, threads);
    }
  }
}

TYPED_TEST(CpuThreadsTest, TestInnerProductChunks) {
  // 6 x 660 inputs; 40 outputs (chunks of 16, 16, 8), then a batch of 37
  // (chunks of 16, 16, 5) and 5 outputs.
  FillerParameter filler_param;
  filler_param.set_std(1);
  GaussianFiller<TypeParam> filler(filler_param);
  for (int shape = 0; shape < 2; ++shape) {
    if (shape) {
      this->bottom_->Reshape(37, 3, 4, 5);
      filler.Fill(this->bottom_);
    }
    LayerParameter param;
    InnerProductParameter* ip = param.mutable_inner_product_param();
    ip->set_num_output(shape ? 5 : 40);
    ip->mutable_weight_filler()->set_type("gaussian");
    ip->mutable_bias_filler()->set_type("gaussian");
    Caffe::set_random_seed(1701);
    InnerProductLayer<TypeParam> layer(param);
    this->SetThreads(1);
    const std::vector<TypeParam> stock = this->Run(&layer, 1);
    std::vector<TypeParam> want;
    for (int threads = 2; threads <= 4; ++threads) {
      this->SetThreads(threads);
      const std::vector<TypeParam> got = this->Run(&layer, 1);
      ASSERT_EQ(stock.size(), got.size());
      for (int i = 0; i < got.size(); ++i) {
        EXPECT_NEAR(got[i], stock[i], 1e-4 * (1 + std::fabs(stock[i])))
            << "shape " << shape << ", value " << i;
      }
      if (threads == 2) {
        want = got;
      } else {
        this->ExpectSameBits(want, got, "inner product", shape, threads);
      }
    }
  }
}

}  // namespace caffe
