#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/lifted_struct_similarity_softmax_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

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

  // D by brute force in double, from the feature differences.
  vector<double> ReferenceDistances() {
    const int num = blob_bottom_data_->num();
    const int dim = blob_bottom_data_->count() / num;
    const Dtype* x = blob_bottom_data_->cpu_data();
    vector<double> d(num * num);
    for (int i = 0; i < num; ++i) {
      for (int j = 0; j < num; ++j) {
        double sq = 0;
        for (int c = 0; c < dim; ++c) {
          const double diff =
              static_cast<double>(x[i * dim + c]) - x[j * dim + c];
          sq += diff * diff;
        }
        d[i * num + j] = std::sqrt(sq);
      }
    }
    return d;
  }

  // The log-sum-exp of Eq. 4 for the positive pair (i, j), over the
  // negatives of both items; false when there are none.
  bool PairLogSumExp(const vector<double>& d, int i, int j, double margin,
      double* lse) {
    const int num = blob_bottom_data_->num();
    const Dtype* label = blob_bottom_label_->cpu_data();
    vector<double> terms;
    for (int k = 0; k < num; ++k) {
      if (label[k] != label[i]) { terms.push_back(margin - d[i * num + k]); }
      if (label[k] != label[j]) { terms.push_back(margin - d[j * num + k]); }
    }
    if (terms.empty()) { return false; }
    const double top = *std::max_element(terms.begin(), terms.end());
    double sum = 0;
    for (int t = 0; t < terms.size(); ++t) { sum += std::exp(terms[t] - top); }
    *lse = top + std::log(sum);
    return true;
  }

  // Eq. 3-4 by brute force in double, each positive pair on its own.
  double ReferenceLoss(double margin) {
    const int num = blob_bottom_data_->num();
    const Dtype* label = blob_bottom_label_->cpu_data();
    const vector<double> d = ReferenceDistances();
    double loss = 0;
    int pairs = 0;
    for (int i = 0; i < num; ++i) {
      for (int j = i + 1; j < num; ++j) {
        if (label[i] != label[j]) { continue; }
        ++pairs;
        double lse;
        if (!PairLogSumExp(d, i, j, margin, &lse)) { continue; }
        const double j_ij = lse + d[i * num + j];
        if (j_ij > 0) { loss += j_ij * j_ij; }
      }
    }
    return pairs > 0 ? loss / (2.0 * pairs) : 0.0;
  }

  // Algorithm 1 (Eq. 5-7) pair by pair in double: dE/dx, num x dim.
  vector<double> ReferenceGradient(double margin) {
    const int num = blob_bottom_data_->num();
    const int dim = blob_bottom_data_->count() / num;
    const Dtype* x = blob_bottom_data_->cpu_data();
    const Dtype* label = blob_bottom_label_->cpu_data();
    const vector<double> d = ReferenceDistances();
    vector<double> grad_d(num * num, 0.0);  // dE/dD_ik, ordered pairs
    int pairs = 0;
    for (int i = 0; i < num; ++i) {
      for (int j = i + 1; j < num; ++j) { pairs += label[i] == label[j]; }
    }
    for (int i = 0; i < num; ++i) {
      for (int j = i + 1; j < num; ++j) {
        if (label[i] != label[j]) { continue; }
        double lse;
        if (!PairLogSumExp(d, i, j, margin, &lse)) { continue; }
        const double j_ij = lse + d[i * num + j];
        if (j_ij <= 0) { continue; }
        const double coef = j_ij / pairs;
        grad_d[i * num + j] += coef;  // Eq. 5
        for (int k = 0; k < num; ++k) {  // Eq. 6-7
          if (label[k] != label[i]) {
            grad_d[i * num + k] -=
                coef * std::exp(margin - d[i * num + k] - lse);
          }
          if (label[k] != label[j]) {
            grad_d[j * num + k] -=
                coef * std::exp(margin - d[j * num + k] - lse);
          }
        }
      }
    }
    vector<double> grad(num * dim, 0.0);
    for (int i = 0; i < num; ++i) {
      for (int k = 0; k < num; ++k) {
        if (grad_d[i * num + k] == 0 || d[i * num + k] == 0) { continue; }
        for (int c = 0; c < dim; ++c) {
          const double unit =
              (static_cast<double>(x[i * dim + c]) - x[k * dim + c]) /
              d[i * num + k];
          grad[i * dim + c] += grad_d[i * num + k] * unit;
          grad[k * dim + c] -= grad_d[i * num + k] * unit;
        }
      }
    }
    return grad;
  }

  // num / 2 positive pairs: item p and p + num / 2 share label p; each pair's
  // second item is its first moved by `gap` in a random direction (ordinary
  // pairs for a gap near the norm, near-duplicates for a tiny one). Features
  // of norm about `norm` in dim dimensions.
  void MakePairs(int num, int dim, double norm, double gap) {
    blob_bottom_data_->Reshape(num, dim, 1, 1);
    blob_bottom_label_->Reshape(num, 1, 1, 1);
    FillerParameter filler_param;
    filler_param.set_std(norm / std::sqrt(static_cast<double>(dim)));
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(blob_bottom_data_);
    Blob<Dtype> direction(num / 2, dim, 1, 1);
    filler.Fill(&direction);
    Dtype* x = blob_bottom_data_->mutable_cpu_data();
    const Dtype* u = direction.cpu_data();
    for (int p = 0; p < num / 2; ++p) {
      double length = 0;
      for (int c = 0; c < dim; ++c) {
        length += static_cast<double>(u[p * dim + c]) * u[p * dim + c];
      }
      length = std::sqrt(length);
      for (int c = 0; c < dim; ++c) {
        x[(p + num / 2) * dim + c] =
            x[p * dim + c] + gap * u[p * dim + c] / length;
      }
      blob_bottom_label_->mutable_cpu_data()[p] = p;
      blob_bottom_label_->mutable_cpu_data()[p + num / 2] = p;
    }
  }

  // The layer's loss and gradient against the double reference, the
  // gradient relative to its largest entry.
  void CheckAgainstReference(double loss_tol, double grad_tol) {
    LayerParameter layer_param;
    const Dtype loss = ForwardBackward(layer_param, Dtype(1));
    const double expected = ReferenceLoss(1.0);
    EXPECT_NEAR(loss, expected, loss_tol * std::max(1.0, std::abs(expected)));
    const vector<double> reference = ReferenceGradient(1.0);
    double largest = 0;
    for (int i = 0; i < reference.size(); ++i) {
      largest = std::max(largest, std::abs(reference[i]));
    }
    ASSERT_GT(largest, 0);
    double worst = 0;
    for (int i = 0; i < reference.size(); ++i) {
      worst = std::max(worst, std::abs(
          blob_bottom_data_->cpu_diff()[i] - reference[i]) / largest);
    }
    EXPECT_LT(worst, grad_tol);
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
    // A sentinel in the diff: a Backward that skipped writing would leave it.
    caffe_set(blob_bottom_data_->count(), Dtype(7),
        blob_bottom_data_->mutable_cpu_diff());
    vector<bool> propagate_down(2, false);
    propagate_down[0] = true;
    layer.Backward(blob_top_vec_, propagate_down, blob_bottom_vec_);
    return blob_top_loss_->cpu_data()[0];
  }

  // Forward and backward must both say that the input was not finite: a
  // non-finite loss and no finite gradient entry (the sentinel 7 of
  // ForwardBackward included).
  void ExpectNonFinite(const char* what) {
    LayerParameter layer_param;
    const Dtype loss = ForwardBackward(layer_param, Dtype(1));
    EXPECT_FALSE(std::isfinite(loss)) << what << ": loss " << loss;
    for (int i = 0; i < blob_bottom_data_->count(); ++i) {
      EXPECT_FALSE(std::isfinite(blob_bottom_data_->cpu_diff()[i]))
          << what << ": diff " << i;
    }
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

TYPED_TEST(LiftedStructSimilaritySoftmaxLossLayerTest, TestBlobShapes) {
  typedef typename TypeParam::Dtype Dtype;
  // Features N x C x 1 x 1 (InnerProduct's output) and labels N x 1 x 1 x 1
  // (the Data layer's) give what N x C features and N labels give.
  LayerParameter layer_param;
  ASSERT_EQ(this->blob_bottom_data_->num_axes(), 4);
  ASSERT_EQ(this->blob_bottom_label_->num_axes(), 4);
  const Dtype loss_4d = this->ForwardBackward(layer_param, Dtype(1));
  const int count = this->blob_bottom_data_->count();
  vector<Dtype> grad_4d(this->blob_bottom_data_->cpu_diff(),
                        this->blob_bottom_data_->cpu_diff() + count);
  vector<int> features(2), labels(1, 12);
  features[0] = 12;
  features[1] = 5;
  this->blob_bottom_data_->Reshape(features);
  this->blob_bottom_label_->Reshape(labels);
  const Dtype loss_2d = this->ForwardBackward(layer_param, Dtype(1));
  EXPECT_EQ(loss_2d, loss_4d);
  EXPECT_GT(loss_2d, 0);
  for (int i = 0; i < count; ++i) {
    EXPECT_EQ(this->blob_bottom_data_->cpu_diff()[i], grad_4d[i]) << i;
  }
}

TYPED_TEST(LiftedStructSimilaritySoftmaxLossLayerTest, TestAgainstReference) {
  // Ordinary random batches, including 1-D features, where many pairs are
  // close relative to their norms.
  this->MakePairs(32, 64, 1.0, 0.8);
  this->CheckAgainstReference(1e-5, 1e-4);
  this->MakePairs(128, 1, 2.0, 0.05);
  this->CheckAgainstReference(1e-5, 1e-4);
}

TYPED_TEST(LiftedStructSimilaritySoftmaxLossLayerTest, TestNearDuplicates) {
  // Positive pairs 1e-3 and 1e-4 apart at feature norms of 2.3: D^2 from the
  // expansion alone would be all rounding error there (gradients 84% off,
  // the pull lost entirely at 1e-4).
  this->MakePairs(64, 256, 2.3, 1e-3);
  this->CheckAgainstReference(1e-5, 1e-3);
  this->MakePairs(64, 256, 2.3, 1e-4);
  this->CheckAgainstReference(1e-5, 1e-3);
}

TYPED_TEST(LiftedStructSimilaritySoftmaxLossLayerTest, TestNonFiniteFeatures) {
  typedef typename TypeParam::Dtype Dtype;
  // One NaN, inf or -inf entry, one entry whose square overflows Dtype, or
  // every entry NaN: whatever the labels (ordinary, no positive pair, no
  // negative), the loss and the gradient are not finite.
  const Dtype huge = sizeof(Dtype) == 4 ? Dtype(1e20) : Dtype(1e200);
  const Dtype values[] = {std::numeric_limits<Dtype>::quiet_NaN(),
                          std::numeric_limits<Dtype>::infinity(),
                          -std::numeric_limits<Dtype>::infinity(), huge};
  const char* names[] = {"NaN", "inf", "-inf", "overflowing square"};
  const int count = this->blob_bottom_data_->count();
  const int num = this->blob_bottom_data_->num();
  const vector<Dtype> clean(this->blob_bottom_data_->cpu_data(),
                            this->blob_bottom_data_->cpu_data() + count);
  const int classes[] = {4, num, 1};
  for (int c = 0; c < 3; ++c) {
    this->SetLabels(classes[c]);
    for (int v = 0; v < 4; ++v) {
      std::copy(clean.begin(), clean.end(),
                this->blob_bottom_data_->mutable_cpu_data());
      this->blob_bottom_data_->mutable_cpu_data()[7] = values[v];
      this->ExpectNonFinite(names[v]);
    }
    caffe_set(count, std::numeric_limits<Dtype>::quiet_NaN(),
              this->blob_bottom_data_->mutable_cpu_data());
    this->ExpectNonFinite("all NaN");
  }
  // Finite features again: a finite loss (nothing left over).
  std::copy(clean.begin(), clean.end(),
            this->blob_bottom_data_->mutable_cpu_data());
  this->SetLabels(4);
  LayerParameter layer_param;
  EXPECT_TRUE(std::isfinite(this->ForwardBackward(layer_param, Dtype(1))));
  this->ExpectFiniteGradient();
}

#ifndef CPU_ONLY
// The GPU path against the CPU path on the same batch: both must agree to
// float rounding, on ordinary and on degenerate batches.
template <typename Dtype>
class LiftedStructSimilaritySoftmaxLossLayerGPUvsCPUTest
    : public GPUDeviceTest<Dtype> {
 protected:
  LiftedStructSimilaritySoftmaxLossLayerGPUvsCPUTest()
      : data_(new Blob<Dtype>()), label_(new Blob<Dtype>()),
        loss_(new Blob<Dtype>()) {
    bottom_.push_back(data_.get());
    bottom_.push_back(label_.get());
    top_.push_back(loss_.get());
  }

  // num features of dim dimensions, Gaussian of the given norm; item i has
  // label i % num_classes.
  void MakeBatch(int num, int dim, double norm, int num_classes) {
    data_->Reshape(num, dim, 1, 1);
    label_->Reshape(num, 1, 1, 1);
    FillerParameter filler_param;
    filler_param.set_std(norm / std::sqrt(static_cast<double>(dim)));
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(data_.get());
    for (int i = 0; i < num; ++i) {
      label_->mutable_cpu_data()[i] = i % num_classes;
    }
  }

  // Moves the second half of the batch to within gap of the first half.
  void MakeNearDuplicates(double gap) {
    const int num = data_->num(), dim = data_->count() / num;
    Dtype* x = data_->mutable_cpu_data();
    for (int p = 0; p < num / 2; ++p) {
      for (int c = 0; c < dim; ++c) {
        x[(p + num / 2) * dim + c] = x[p * dim + c] +
            gap * ((p + c) % 2 ? 1 : -1) / std::sqrt(static_cast<double>(dim));
      }
      label_->mutable_cpu_data()[p + num / 2] = label_->cpu_data()[p];
    }
  }

  // Loss and gradient in the current mode; the diff starts as a sentinel.
  void Run(Dtype* loss, vector<Dtype>* grad) {
    LayerParameter param;
    LiftedStructSimilaritySoftmaxLossLayer<Dtype> layer(param);
    layer.SetUp(bottom_, top_);
    layer.Forward(bottom_, top_);
    loss_->mutable_cpu_diff()[0] = Dtype(1);
    caffe_set(data_->count(), Dtype(7), data_->mutable_cpu_diff());
    vector<bool> propagate_down(2, false);
    propagate_down[0] = true;
    layer.Backward(top_, propagate_down, bottom_);
    *loss = loss_->cpu_data()[0];
    grad->assign(data_->cpu_diff(), data_->cpu_diff() + data_->count());
  }

  void ExpectDevicesAgree(double tol) {
    Dtype cpu_loss, gpu_loss;
    vector<Dtype> cpu_grad, gpu_grad;
    Caffe::set_mode(Caffe::CPU);
    Run(&cpu_loss, &cpu_grad);
    Caffe::set_mode(Caffe::GPU);
    Run(&gpu_loss, &gpu_grad);
    EXPECT_TRUE(std::isfinite(gpu_loss));
    EXPECT_NEAR(gpu_loss, cpu_loss,
                tol * std::max(Dtype(1), std::abs(cpu_loss)));
    double largest = 0;
    for (int i = 0; i < cpu_grad.size(); ++i) {
      largest = std::max(largest, std::abs(static_cast<double>(cpu_grad[i])));
    }
    for (int i = 0; i < cpu_grad.size(); ++i) {
      EXPECT_NEAR(gpu_grad[i], cpu_grad[i], tol * std::max(largest, 1e-30))
          << "entry " << i;
    }
  }

  shared_ptr<Blob<Dtype> > data_, label_, loss_;
  vector<Blob<Dtype>*> bottom_, top_;
};

TYPED_TEST_CASE(LiftedStructSimilaritySoftmaxLossLayerGPUvsCPUTest,
    TestDtypes);

TYPED_TEST(LiftedStructSimilaritySoftmaxLossLayerGPUvsCPUTest, TestPaperBatch) {
  // The paper's batch: 128 embeddings of 512, 64 classes in pairs.
  this->MakeBatch(128, 512, 1.0, 64);
  this->ExpectDevicesAgree(1e-4);
}

TYPED_TEST(LiftedStructSimilaritySoftmaxLossLayerGPUvsCPUTest, TestFewClasses) {
  this->MakeBatch(96, 64, 1.0, 3);
  this->ExpectDevicesAgree(1e-4);
}

TYPED_TEST(LiftedStructSimilaritySoftmaxLossLayerGPUvsCPUTest, TestOneClass) {
  this->MakeBatch(32, 16, 1.0, 1);  // no negatives: no loss
  this->ExpectDevicesAgree(1e-4);
}

TYPED_TEST(LiftedStructSimilaritySoftmaxLossLayerGPUvsCPUTest,
    TestAllDistinct) {
  this->MakeBatch(32, 16, 1.0, 32);  // no positive pairs: no loss
  this->ExpectDevicesAgree(1e-4);
}

TYPED_TEST(LiftedStructSimilaritySoftmaxLossLayerGPUvsCPUTest, TestBatchOfTwo) {
  this->MakeBatch(2, 8, 1.0, 1);
  this->ExpectDevicesAgree(1e-4);
  this->MakeBatch(2, 8, 1.0, 2);
  this->ExpectDevicesAgree(1e-4);
}

TYPED_TEST(LiftedStructSimilaritySoftmaxLossLayerGPUvsCPUTest,
    TestNearDuplicates) {
  this->MakeBatch(64, 256, 2.3, 32);
  this->MakeNearDuplicates(1e-3);
  this->ExpectDevicesAgree(1e-4);
  this->MakeBatch(64, 256, 2.3, 32);
  this->MakeNearDuplicates(1e-5);
  this->ExpectDevicesAgree(1e-4);
}

TYPED_TEST(LiftedStructSimilaritySoftmaxLossLayerGPUvsCPUTest,
    TestLargeDistances) {
  this->MakeBatch(64, 32, 3000.0, 8);
  this->ExpectDevicesAgree(1e-4);
}
#endif  // CPU_ONLY

}  // namespace caffe
