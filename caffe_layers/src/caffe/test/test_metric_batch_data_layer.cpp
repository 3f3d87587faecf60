// MetricBatchData (docs/BATCHES.md): the pairs of an epoch are every pair
// within a class with the authors' negatives; triplets are anchor, positive
// and negative; batch k depends on the seed and k alone (a layer started at
// k gives what one that ran from 0 gives there, crops and mirrors included);
// several solvers share a batch, whole pairs each; epochs replay or
// reshuffle. liftedstruct's tests check the same batches against the
// Python layout that writes the ordered LMDBs.
#include <stdint.h>

#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "boost/scoped_ptr.hpp"
#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/layers/metric_batch_data_layer.hpp"
#include "caffe/proto/caffe.pb.h"
#include "caffe/util/db.hpp"
#include "caffe/util/format.hpp"
#include "caffe/util/io.hpp"
#include "caffe/util/metric_batch.hpp"

#include "caffe/test/test_caffe_main.hpp"

namespace caffe {

using boost::scoped_ptr;

// Classes of 3, 2, 4 and 3 images, interleaved in the LMDB.
const int kLabels[] = {2, 0, 1, 3, 0, 2, 2, 3, 1, 2, 3, 0};
const int kImages = sizeof(kLabels) / sizeof(kLabels[0]);
const int kSide = 4;

template <typename TypeParam>
class MetricBatchDataLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  MetricBatchDataLayerTest()
      : blob_top_data_(new Blob<Dtype>()), blob_top_label_(new Blob<Dtype>()) {}

  virtual void SetUp() {
    MakeTempDir(&source_);
    source_ += "/db";
    // Pixel (r, c) of record i is 4 i + (r + c) % 4: the top-left pixel of
    // an uncropped item tells its record.
    scoped_ptr<db::DB> db(db::GetDB(DataParameter_DB_LMDB));
    db->Open(source_, db::NEW);
    scoped_ptr<db::Transaction> txn(db->NewTransaction());
    for (int i = 0; i < kImages; ++i) {
      Datum datum;
      datum.set_label(kLabels[i]);
      datum.set_channels(1);
      datum.set_height(kSide);
      datum.set_width(kSide);
      std::string* data = datum.mutable_data();
      for (int p = 0; p < kSide * kSide; ++p) {
        data->push_back(static_cast<uint8_t>(4 * i + (p / kSide + p % kSide) % 4));
      }
      std::string out;
      CHECK(datum.SerializeToString(&out));
      txn->Put(format_int(i, 9), out);
    }
    txn->Commit();
    db->Close();
    blob_top_vec_.push_back(blob_top_data_);
    blob_top_vec_.push_back(blob_top_label_);
  }

  virtual ~MetricBatchDataLayerTest() {
    delete blob_top_data_;
    delete blob_top_label_;
    Caffe::set_solver_count(1);
    Caffe::set_solver_rank(0);
    metric_batch::SetSolverSeed(-1);
  }

  LayerParameter Param(int batch_size, bool triplets = false) {
    LayerParameter param;
    param.set_name("data");
    DataParameter* data = param.mutable_data_param();
    data->set_source(source_);
    data->set_backend(DataParameter_DB_LMDB);
    data->set_batch_size(batch_size);
    data->set_threads(2);
    param.mutable_metric_batch_param()->set_seed(7);
    if (triplets) {
      param.mutable_metric_batch_param()->set_tuple(
          MetricBatchParameter_Tuple_TRIPLET);
    }
    return param;
  }

  // The records of the next batch, told by the top-left pixels.
  std::vector<int> Forward(MetricBatchDataLayer<Dtype>* layer) {
    layer->Forward(blob_bottom_vec_, blob_top_vec_);
    std::vector<int> records;
    for (int i = 0; i < blob_top_data_->num(); ++i) {
      records.push_back(
          static_cast<int>(blob_top_data_->cpu_data()[blob_top_data_->offset(i)]) / 4);
    }
    return records;
  }

  std::vector<Dtype> Labels() {
    return std::vector<Dtype>(blob_top_label_->cpu_data(),
        blob_top_label_->cpu_data() + blob_top_label_->count());
  }

  std::vector<Dtype> Data() {
    return std::vector<Dtype>(blob_top_data_->cpu_data(),
        blob_top_data_->cpu_data() + blob_top_data_->count());
  }

  std::string source_;
  Blob<Dtype>* const blob_top_data_;
  Blob<Dtype>* const blob_top_label_;
  vector<Blob<Dtype>*> blob_bottom_vec_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

TYPED_TEST_CASE(MetricBatchDataLayerTest, TestDtypesAndDevices);

TYPED_TEST(MetricBatchDataLayerTest, TestEpochHoldsEveryPositiveAndTheNegatives) {
  typedef typename TypeParam::Dtype Dtype;
  // One pair a batch: no pair is trimmed away.
  MetricBatchDataLayer<Dtype> layer(this->Param(2));
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  EXPECT_EQ(this->blob_top_data_->num(), 2);
  std::multiset<std::pair<int, int> > positives, expected;
  std::map<int, std::vector<int> > negatives;  // first image: its partners
  for (int a = 0; a < kImages; ++a) {
    for (int b = a; b < kImages; ++b) {
      if (kLabels[a] == kLabels[b]) {
        expected.insert(std::make_pair(a, b));
      }
    }
  }
  const int per_image = (expected.size() + kImages - 1) / kImages;
  ASSERT_EQ(layer.batches_per_epoch(), expected.size() + per_image * kImages);
  for (int k = 0; k < layer.batches_per_epoch(); ++k) {
    const std::vector<int> pair = this->Forward(&layer);
    const std::vector<Dtype> labels = this->Labels();
    EXPECT_EQ(labels[0], kLabels[pair[0]]);
    EXPECT_EQ(labels[1], kLabels[pair[1]]);
    if (kLabels[pair[0]] == kLabels[pair[1]]) {
      positives.insert(std::make_pair(std::min(pair[0], pair[1]),
          std::max(pair[0], pair[1])));
    } else {
      negatives[pair[0]].push_back(pair[1]);
    }
  }
  EXPECT_TRUE(positives == expected);
  // Every image has per_image negatives; a class draws its partners without
  // replacement, in rounds when it needs more than there are: each image of
  // another class is drawn by a class as often as any other, give or take 1.
  std::map<int, std::map<int, int> > drawn;  // class: partner: times
  for (int i = 0; i < kImages; ++i) {
    EXPECT_EQ(negatives[i].size(), per_image) << "image " << i;
    for (int j = 0; j < negatives[i].size(); ++j) {
      drawn[kLabels[i]][negatives[i][j]]++;
    }
  }
  for (std::map<int, std::map<int, int> >::iterator c = drawn.begin();
       c != drawn.end(); ++c) {
    int least = 1 << 30, most = 0;
    for (int j = 0; j < kImages; ++j) {
      if (kLabels[j] == c->first) continue;
      least = std::min(least, c->second[j]);
      most = std::max(most, c->second[j]);
    }
    EXPECT_LE(most - least, 1) << "class " << c->first;
  }
}

TYPED_TEST(MetricBatchDataLayerTest, TestPairsLayoutAndSimilarity) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter param = this->Param(8);
  param.mutable_metric_batch_param()->set_label(
      MetricBatchParameter_Label_SIMILARITY);
  MetricBatchDataLayer<Dtype> layer(param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  int similar = 0;
  for (int k = 0; k < layer.batches_per_epoch(); ++k) {
    std::vector<int> records, labels;
    layer.BatchRecords(k, &records, &labels);
    EXPECT_TRUE(this->Forward(&layer) == records);
    const std::vector<Dtype> top = this->Labels();
    for (int i = 0; i < 4; ++i) {
      const int same = kLabels[records[i]] == kLabels[records[i + 4]];
      EXPECT_EQ(top[i], same);
      EXPECT_EQ(top[i + 4], same);
      similar += same;
    }
  }
  EXPECT_GT(similar, 0);
}

TYPED_TEST(MetricBatchDataLayerTest, TestTriplets) {
  typedef typename TypeParam::Dtype Dtype;
  MetricBatchDataLayer<Dtype> layer(this->Param(6, true));
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  int triplets = 0;
  for (int a = 0; a < kImages; ++a) {
    for (int b = a + 1; b < kImages; ++b) {
      triplets += kLabels[a] == kLabels[b];
    }
  }
  EXPECT_EQ(layer.batches_per_epoch(), triplets / 2);
  for (int k = 0; k < layer.batches_per_epoch(); ++k) {
    const std::vector<int> records = this->Forward(&layer);
    const std::vector<Dtype> labels = this->Labels();
    for (int t = 0; t < 2; ++t) {
      EXPECT_NE(records[t], records[t + 2]);
      EXPECT_EQ(kLabels[records[t]], kLabels[records[t + 2]]);
      EXPECT_NE(kLabels[records[t]], kLabels[records[t + 4]]);
      for (int w = 0; w < 3; ++w) {
        EXPECT_EQ(labels[t + 2 * w], kLabels[records[t + 2 * w]]);
      }
    }
  }
}

TYPED_TEST(MetricBatchDataLayerTest, TestBatchIsAFunctionOfSeedAndIndex) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter param = this->Param(4);
  param.mutable_transform_param()->set_crop_size(3);
  param.mutable_transform_param()->set_mirror(true);
  MetricBatchDataLayer<Dtype> from_start(param);
  from_start.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  // One epoch and a batch: batch E holds batch 0's records (FIXED epochs).
  const int epoch = from_start.batches_per_epoch();
  std::vector<std::vector<Dtype> > data, labels;
  std::vector<std::vector<int> > records;
  for (int k = 0; k <= epoch; ++k) {
    std::vector<int> batch, batch_labels;
    from_start.BatchRecords(k, &batch, &batch_labels);
    records.push_back(batch);
    this->Forward(&from_start);
    data.push_back(this->Data());
    labels.push_back(this->Labels());
  }
  ASSERT_GT(epoch, 12);
  // The same records, cropped and mirrored otherwise.
  EXPECT_TRUE(records[0] == records[epoch]);
  EXPECT_FALSE(data[0] == data[epoch]);
  MetricBatchDataLayer<Dtype> resumed(param);
  resumed.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  this->Forward(&resumed);
  resumed.StartIteration(9, 1);  // after batch 0, straight to 9
  for (int k = 9; k < 12; ++k) {
    this->Forward(&resumed);
    EXPECT_TRUE(this->Data() == data[k]) << "batch " << k;
    EXPECT_TRUE(this->Labels() == labels[k]) << "batch " << k;
  }
  resumed.StartIteration(2, 2);  // back to batch 4, two passes an iteration
  this->Forward(&resumed);
  EXPECT_TRUE(this->Data() == data[4]);
  this->Forward(&resumed);
  EXPECT_TRUE(this->Data() == data[5]);
  resumed.StartIteration(3, 2);  // batch 6, where it is: no restart
  this->Forward(&resumed);
  EXPECT_TRUE(this->Data() == data[6]);
}

TYPED_TEST(MetricBatchDataLayerTest, TestSeedFromTheSolver) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter param = this->Param(4);
  param.mutable_metric_batch_param()->clear_seed();
  MetricBatchDataLayer<Dtype> unseeded(param);
  unseeded.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  EXPECT_EQ(unseeded.seed(), 0);
  metric_batch::SetSolverSeed(7);
  MetricBatchDataLayer<Dtype> solver_seeded(param);
  solver_seeded.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  EXPECT_EQ(solver_seeded.seed(), 7);
  MetricBatchDataLayer<Dtype> seeded(this->Param(4));
  seeded.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  for (int k = 0; k < 5; ++k) {
    std::vector<int> a, b, c, labels;
    unseeded.BatchRecords(k, &a, &labels);
    solver_seeded.BatchRecords(k, &b, &labels);
    seeded.BatchRecords(k, &c, &labels);
    EXPECT_TRUE(b == c);
    if (a != b) return;
  }
  ADD_FAILURE() << "seeds 0 and 7 gave the same five batches";
}

TYPED_TEST(MetricBatchDataLayerTest, TestEpochs) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter param = this->Param(4);
  MetricBatchDataLayer<Dtype> fixed(param);
  fixed.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  param.mutable_metric_batch_param()->set_epochs(
      MetricBatchParameter_Epochs_RESHUFFLE);
  MetricBatchDataLayer<Dtype> reshuffled(param);
  reshuffled.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  const uint64_t epoch = fixed.batches_per_epoch();
  ASSERT_EQ(reshuffled.batches_per_epoch(), epoch);
  bool differ = false;
  for (uint64_t k = 0; k < epoch; ++k) {
    std::vector<int> first, again, labels;
    fixed.BatchRecords(k, &first, &labels);
    fixed.BatchRecords(k + epoch, &again, &labels);
    EXPECT_TRUE(first == again);
    reshuffled.BatchRecords(k, &again, &labels);
    EXPECT_TRUE(first == again);  // epoch 0 is the same list
    reshuffled.BatchRecords(k + epoch, &again, &labels);
    differ = differ || first != again;
  }
  EXPECT_TRUE(differ);
}

TYPED_TEST(MetricBatchDataLayerTest, TestSolversShareTheBatch) {
  typedef typename TypeParam::Dtype Dtype;
  for (int triplets = 0; triplets < 2; ++triplets) {
    const int width = triplets ? 3 : 2;
    MetricBatchDataLayer<Dtype> whole(this->Param(4 * width, triplets));
    whole.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
    Caffe::set_solver_count(2);
    std::vector<shared_ptr<MetricBatchDataLayer<Dtype> > > ranks;
    for (int rank = 0; rank < 2; ++rank) {
      Caffe::set_solver_rank(rank);
      ranks.push_back(shared_ptr<MetricBatchDataLayer<Dtype> >(
          new MetricBatchDataLayer<Dtype>(this->Param(2 * width, triplets))));
      ranks[rank]->SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
    }
    Caffe::set_solver_count(1);
    Caffe::set_solver_rank(0);
    EXPECT_EQ(ranks[0]->batches_per_epoch(), whole.batches_per_epoch());
    for (int k = 0; k < 3; ++k) {
      std::vector<int> batch, labels;
      whole.BatchRecords(k, &batch, &labels);
      for (int rank = 0; rank < 2; ++rank) {
        std::vector<int> share;
        ranks[rank]->BatchRecords(k, &share, &labels);
        // Member w of the share's tuple s is member w of tuple 2 rank + s.
        for (int w = 0; w < width; ++w) {
          for (int s = 0; s < 2; ++s) {
            EXPECT_EQ(share[w * 2 + s], batch[w * 4 + 2 * rank + s]);
          }
        }
      }
    }
  }
}

}  // namespace caffe
