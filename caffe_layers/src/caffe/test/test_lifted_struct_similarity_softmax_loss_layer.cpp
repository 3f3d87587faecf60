#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/lifted_struct_similarity_softmax_loss_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class LiftedStructSimilaritySoftmaxLossLayerTest
    : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  LiftedStructSimilaritySoftmaxLossLayerTest()
      : blob_bottom_data_(new Blob<Dtype>(12, 5, 1, 1)),
        blob_bottom_label_(new Blob<Dtype>(12, 1, 1, 1)),
        blob_top_loss_(new Blob<Dtype>()) {
    FillerParameter filler_param;
    filler_param.set_std(1.0);
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(blob_bottom_data_);
    // Four classes of three: every item has positives and negatives.
    SetLabels(4);
    blob_bottom_vec_.push_back(blob_bottom_data_);
    blob_bottom_vec_.push_back(blob_bottom_label_);
    blob_top_vec_.push_back(blob_top_loss_);
  }
  virtual ~LiftedStructSimilaritySoftmaxLossLayerTest() {
    delete blob_bottom_data_;
    delete blob_bottom_label_;
    delete blob_top_loss_;
  }

  // Label of item i is i % num_classes; num_classes = N gives no positives,
  // 1 gives no negatives.
  void SetLabels(int num_classes) {
    for (int i = 0; i < blob_bottom_label_->count(); ++i) {
      blob_bottom_label_->mutable_cpu_data()[i] = i % num_classes;
    }
  }

  // Eq. 3-4 by brute force in double: each pair's distances from the
  // feature differences, each positive pair's log-sum-exp on its own.
  double ReferenceLoss(double margin) {
    const int num = blob_bottom_data_->num();
    const int dim = blob_bottom_data_->count() / num;
    const Dtype* x = blob_bottom_data_->cpu_data();
    const Dtype* label = blob_bottom_label_->cpu_data();
    vector<double> d(num * num);
    for (int i = 0; i < num; ++i) {
      for (int j = 0; j < num; ++j) {
        double sq = 0;
        for (int c = 0; c < dim; ++c) {
          const double diff = x[i * dim + c] - x[j * dim + c];
          sq += diff * diff;
        }
        d[i * num + j] = std::sqrt(sq);
      }
    }
    double loss = 0;
    int pairs = 0;
    for (int i = 0; i < num; ++i) {
      for (int j = i + 1; j < num; ++j) {
        if (label[i] != label[j]) { continue; }
        ++pairs;
        vector<double> terms;
        for (int k = 0; k < num; ++k) {
          if (label[k] != label[i]) { terms.push_back(margin - d[i * num + k]); }
          if (label[k] != label[j]) { terms.push_back(margin - d[j * num + k]); }
        }
        if (terms.empty()) { continue; }
        const double top = *std::max_element(terms.begin(), terms.end());
        double sum = 0;
        for (int t = 0; t < terms.size(); ++t) { sum += std::exp(terms[t] - top); }
        const double j_ij = top + std::log(sum) + d[i * num + j];
        if (j_ij > 0) { loss += j_ij * j_ij; }
      }
    }
    return pairs > 0 ? loss / (2.0 * pairs) : 0.0;
  }

  void CheckForward(const LayerParameter& layer_param, double rel_tol) {
    LiftedStructSimilaritySoftmaxLossLayer<Dtype> layer(layer_param);
    layer.SetUp(blob_bottom_vec_, blob_top_vec_);
    layer.Forward(blob_bottom_vec_, blob_top_vec_);
    const double expected = ReferenceLoss(
        layer_param.lifted_struct_sim_softmax_loss_param().margin());
    const double actual = blob_top_loss_->cpu_data()[0];
    EXPECT_TRUE(std::isfinite(actual));
    EXPECT_NEAR(actual, expected, rel_tol * std::max(1.0, std::abs(expected)));
  }

  // Runs forward and backward with the given top diff; returns the loss.
  Dtype ForwardBackward(const LayerParameter& layer_param, Dtype top_diff) {
    LiftedStructSimilaritySoftmaxLossLayer<Dtype> layer(layer_param);
    layer.SetUp(blob_bottom_vec_, blob_top_vec_);
    layer.Forward(blob_bottom_vec_, blob_top_vec_);
    blob_top_loss_->mutable_cpu_diff()[0] = top_diff;
    vector<bool> propagate_down(2, false);
    propagate_down[0] = true;
    layer.Backward(blob_top_vec_, propagate_down, blob_bottom_vec_);
    return blob_top_loss_->cpu_data()[0];
  }

  void ExpectFiniteGradient() {
    for (int i = 0; i < blob_bottom_data_->count(); ++i) {
      EXPECT_TRUE(std::isfinite(blob_bottom_data_->cpu_diff()[i])) << i;
    }
  }

  Blob<Dtype>* const blob_bottom_data_;
  Blob<Dtype>* const blob_bottom_label_;
  Blob<Dtype>* const blob_top_loss_;
  vector<Blob<Dtype>*> blob_bottom_vec_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

TYPED_TEST_CASE(LiftedStructSimilaritySoftmaxLossLayerTest,
    TestDtypesAndDevices);

TYPED_TEST(LiftedStructSimilaritySoftmaxLossLayerTest, TestForward) {
  LayerParameter layer_param;
  this->CheckForward(layer_param, 1e-4);
  EXPECT_GT(this->blob_top_loss_->cpu_data()[0], 0);
}

TYPED_TEST(LiftedStructSimilaritySoftmaxLossLayerTest, TestForwardMargin) {
  LayerParameter layer_param;
  layer_param.mutable_lifted_struct_sim_softmax_loss_param()->set_margin(0.3);
  this->CheckForward(layer_param, 1e-4);
  layer_param.mutable_lifted_struct_sim_softmax_loss_param()->set_margin(2.5);
  this->CheckForward(layer_param, 1e-4);
}

TYPED_TEST(LiftedStructSimilaritySoftmaxLossLayerTest, TestForwardTwoClasses) {
  this->SetLabels(2);  // many positives, larger log-sum-exps
  LayerParameter layer_param;
  this->CheckForward(layer_param, 1e-4);
}

TYPED_TEST(LiftedStructSimilaritySoftmaxLossLayerTest, TestGradient) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  LiftedStructSimilaritySoftmaxLossLayer<Dtype> layer(layer_param);
  GradientChecker<Dtype> checker(1e-2, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_, 0);
}

TYPED_TEST(LiftedStructSimilaritySoftmaxLossLayerTest, TestGradientMargin) {
  typedef typename TypeParam::Dtype Dtype;
  this->SetLabels(3);
  LayerParameter layer_param;
  layer_param.mutable_lifted_struct_sim_softmax_loss_param()->set_margin(2.0);
  LiftedStructSimilaritySoftmaxLossLayer<Dtype> layer(layer_param);
  GradientChecker<Dtype> checker(1e-2, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_, 0);
}

TYPED_TEST(LiftedStructSimilaritySoftmaxLossLayerTest, TestLossWeight) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  this->ForwardBackward(layer_param, Dtype(1));
  const int count = this->blob_bottom_data_->count();
  vector<Dtype> unit(this->blob_bottom_data_->cpu_diff(),
                     this->blob_bottom_data_->cpu_diff() + count);
  this->ForwardBackward(layer_param, Dtype(3));
  Dtype norm = 0;
  for (int i = 0; i < count; ++i) {
    EXPECT_NEAR(this->blob_bottom_data_->cpu_diff()[i], 3 * unit[i], 1e-4);
    norm += std::abs(unit[i]);
  }
  EXPECT_GT(norm, 0);
}

TYPED_TEST(LiftedStructSimilaritySoftmaxLossLayerTest, TestNoPositivePairs) {
  typedef typename TypeParam::Dtype Dtype;
  this->SetLabels(this->blob_bottom_data_->num());
  LayerParameter layer_param;
  EXPECT_EQ(this->ForwardBackward(layer_param, Dtype(1)), Dtype(0));
  for (int i = 0; i < this->blob_bottom_data_->count(); ++i) {
    EXPECT_EQ(this->blob_bottom_data_->cpu_diff()[i], Dtype(0));
  }
}

TYPED_TEST(LiftedStructSimilaritySoftmaxLossLayerTest, TestNoNegatives) {
  typedef typename TypeParam::Dtype Dtype;
  // Every pair's log-sum-exp is over an empty set: J = -inf, no loss.
  this->SetLabels(1);
  LayerParameter layer_param;
  EXPECT_EQ(this->ForwardBackward(layer_param, Dtype(1)), Dtype(0));
  for (int i = 0; i < this->blob_bottom_data_->count(); ++i) {
    EXPECT_EQ(this->blob_bottom_data_->cpu_diff()[i], Dtype(0));
  }
}

TYPED_TEST(LiftedStructSimilaritySoftmaxLossLayerTest, TestCoincidentPoints) {
  typedef typename TypeParam::Dtype Dtype;
  // All distances 0: the loss is log(#negatives e^alpha)^2 / 2 per pair and
  // the gradient takes the zero subgradient of the norm.
  caffe_set(this->blob_bottom_data_->count(), Dtype(0.5),
      this->blob_bottom_data_->mutable_cpu_data());
  LayerParameter layer_param;
  this->CheckForward(layer_param, 1e-4);
  this->ForwardBackward(layer_param, Dtype(1));
  for (int i = 0; i < this->blob_bottom_data_->count(); ++i) {
    EXPECT_EQ(this->blob_bottom_data_->cpu_diff()[i], Dtype(0));
  }
}

TYPED_TEST(LiftedStructSimilaritySoftmaxLossLayerTest, TestLargeDistances) {
  typedef typename TypeParam::Dtype Dtype;
  // Distances in the thousands: exp(alpha - D) underflows without the shift.
  caffe_scal(this->blob_bottom_data_->count(), Dtype(1000),
      this->blob_bottom_data_->mutable_cpu_data());
  LayerParameter layer_param;
  this->CheckForward(layer_param, 1e-3);
  this->ForwardBackward(layer_param, Dtype(1));
  this->ExpectFiniteGradient();
}

TYPED_TEST(LiftedStructSimilaritySoftmaxLossLayerTest, TestNCHWFeatures) {
  typedef typename TypeParam::Dtype Dtype;
  // Features as N x C x 1 x 1 (InnerProduct output) and labels as N x 1.
  this->blob_bottom_label_->Reshape(vector<int>(1, 12));
  this->SetLabels(4);
  LayerParameter layer_param;
  this->CheckForward(layer_param, 1e-4);
  this->ForwardBackward(layer_param, Dtype(1));
  this->ExpectFiniteGradient();
}

}  // namespace caffe
