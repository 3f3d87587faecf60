#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/triplet_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class TripletLossLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  TripletLossLayerTest()
      : blob_bottom_data_(new Blob<Dtype>(15, 4, 1, 1)),
        blob_bottom_label_(new Blob<Dtype>(15, 1, 1, 1)),
        blob_top_loss_(new Blob<Dtype>()) {
    FillerParameter filler_param;
    filler_param.set_std(1.0);
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(blob_bottom_data_);
    // Anchors and positives share a class; negatives have another.
    for (int t = 0; t < 5; ++t) {
      blob_bottom_label_->mutable_cpu_data()[t] = t;
      blob_bottom_label_->mutable_cpu_data()[t + 5] = t;
      blob_bottom_label_->mutable_cpu_data()[t + 10] = t + 5;
    }
    blob_bottom_vec_.push_back(blob_bottom_data_);
    blob_top_vec_.push_back(blob_top_loss_);
  }
  virtual ~TripletLossLayerTest() {
    delete blob_bottom_data_;
    delete blob_bottom_label_;
    delete blob_top_loss_;
  }

  double ReferenceLoss(double margin) {
    const int triplets = blob_bottom_data_->num() / 3;
    const int dim = blob_bottom_data_->channels();
    const Dtype* x = blob_bottom_data_->cpu_data();
    double loss = 0;
    for (int t = 0; t < triplets; ++t) {
      double d_ap = 0, d_an = 0;
      for (int c = 0; c < dim; ++c) {
        const double a = x[t * dim + c];
        const double p = x[(t + triplets) * dim + c];
        const double n = x[(t + 2 * triplets) * dim + c];
        d_ap += (a - p) * (a - p);
        d_an += (a - n) * (a - n);
      }
      loss += std::max(0.0, d_ap - d_an + margin);
    }
    return loss / (2.0 * triplets);
  }

  Blob<Dtype>* const blob_bottom_data_;
  Blob<Dtype>* const blob_bottom_label_;
  Blob<Dtype>* const blob_top_loss_;
  vector<Blob<Dtype>*> blob_bottom_vec_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

TYPED_TEST_CASE(TripletLossLayerTest, TestDtypesAndDevices);

TYPED_TEST(TripletLossLayerTest, TestForward) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  TripletLossLayer<Dtype> layer(layer_param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  const double expected = this->ReferenceLoss(1.0);
  EXPECT_GT(expected, 0);
  EXPECT_NEAR(this->blob_top_loss_->cpu_data()[0], expected, 1e-5 * expected);
}

TYPED_TEST(TripletLossLayerTest, TestForwardWithLabelsAndMargin) {
  typedef typename TypeParam::Dtype Dtype;
  this->blob_bottom_vec_.push_back(this->blob_bottom_label_);
  LayerParameter layer_param;
  layer_param.mutable_triplet_loss_param()->set_margin(0.25);
  TripletLossLayer<Dtype> layer(layer_param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  const double expected = this->ReferenceLoss(0.25);
  EXPECT_NEAR(this->blob_top_loss_->cpu_data()[0], expected,
      1e-5 * std::max(1.0, expected));
}

TYPED_TEST(TripletLossLayerTest, TestGradient) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  TripletLossLayer<Dtype> layer(layer_param);
  GradientChecker<Dtype> checker(1e-2, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_, 0);
}

TYPED_TEST(TripletLossLayerTest, TestGradientWithLabels) {
  typedef typename TypeParam::Dtype Dtype;
  this->blob_bottom_vec_.push_back(this->blob_bottom_label_);
  LayerParameter layer_param;
  layer_param.mutable_triplet_loss_param()->set_margin(2.0);
  TripletLossLayer<Dtype> layer(layer_param);
  GradientChecker<Dtype> checker(1e-2, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_, 0);
}

TYPED_TEST(TripletLossLayerTest, TestSatisfiedTripletsHaveNoGradient) {
  typedef typename TypeParam::Dtype Dtype;
  // Negatives far beyond the margin: zero loss, zero gradient.
  Dtype* x = this->blob_bottom_data_->mutable_cpu_data();
  for (int i = 10 * 4; i < 15 * 4; ++i) { x[i] += Dtype(100); }
  LayerParameter layer_param;
  TripletLossLayer<Dtype> layer(layer_param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  EXPECT_EQ(this->blob_top_loss_->cpu_data()[0], Dtype(0));
  // A sentinel in the diff: a Backward that wrote nothing would leave it.
  caffe_set(this->blob_bottom_data_->count(), Dtype(7),
      this->blob_bottom_data_->mutable_cpu_diff());
  layer.Backward(this->blob_top_vec_, vector<bool>(1, true),
      this->blob_bottom_vec_);
  for (int i = 0; i < this->blob_bottom_data_->count(); ++i) {
    EXPECT_EQ(this->blob_bottom_data_->cpu_diff()[i], Dtype(0));
  }
}

TYPED_TEST(TripletLossLayerTest, TestNonFiniteFeatures) {
  typedef typename TypeParam::Dtype Dtype;
  // A NaN, inf or -inf entry, or one whose square overflows, in triplet 1's
  // anchor, positive or negative, with ordinary and with satisfied triplets
  // (negatives far beyond the margin, loss 0): the loss is not finite and
  // neither is triplet 1's gradient.
  const Dtype huge = sizeof(Dtype) == 4 ? Dtype(1e20) : Dtype(1e200);
  const Dtype values[] = {std::numeric_limits<Dtype>::quiet_NaN(),
                          std::numeric_limits<Dtype>::infinity(),
                          -std::numeric_limits<Dtype>::infinity(), huge};
  const int count = this->blob_bottom_data_->count();
  const vector<Dtype> clean(this->blob_bottom_data_->cpu_data(),
                            this->blob_bottom_data_->cpu_data() + count);
  LayerParameter layer_param;
  TripletLossLayer<Dtype> layer(layer_param);
  for (int satisfied = 0; satisfied < 2; ++satisfied) {
    for (int role = 0; role < 3; ++role) {
      for (int v = 0; v < 4; ++v) {
        Dtype* x = this->blob_bottom_data_->mutable_cpu_data();
        std::copy(clean.begin(), clean.end(), x);
        if (satisfied) {
          for (int i = 10 * 4; i < 15 * 4; ++i) { x[i] += Dtype(100); }
        }
        x[(role * 5 + 1) * 4 + 2] = values[v];
        layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
        layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
        EXPECT_FALSE(std::isfinite(this->blob_top_loss_->cpu_data()[0]))
            << "role " << role << " value " << v << " satisfied " << satisfied;
        this->blob_top_loss_->mutable_cpu_diff()[0] = Dtype(1);
        layer.Backward(this->blob_top_vec_, vector<bool>(1, true),
            this->blob_bottom_vec_);
        const Dtype* diff = this->blob_bottom_data_->cpu_diff();
        for (int r = 0; r < 3; ++r) {
          for (int c = 0; c < 4; ++c) {
            EXPECT_FALSE(std::isfinite(diff[(r * 5 + 1) * 4 + c]))
                << "role " << role << " value " << v << " item " << r;
          }
        }
      }
    }
  }
}

}  // namespace caffe
