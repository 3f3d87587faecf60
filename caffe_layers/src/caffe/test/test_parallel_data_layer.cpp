#ifdef USE_OPENCV
// The Data layer on several threads (data_param.threads, patch 0011): a
// batch's images, labels and record order are those of Caffe's own loop
// (threads: 1), with and without random crops and mirrors, and every
// cropped image is a crop of its own record, mirrored exactly or not at all.
#include <stdint.h>
#include <stdlib.h>

#include <opencv2/core/core.hpp>
#include <opencv2/imgcodecs/imgcodecs.hpp>

#include <cstdio>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "boost/scoped_ptr.hpp"
#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/layers/data_layer.hpp"
#include "caffe/proto/caffe.pb.h"
#include "caffe/util/db.hpp"
#include "caffe/util/io.hpp"
#include "caffe/util/rng.hpp"

#include "caffe/test/test_caffe_main.hpp"

namespace caffe {

using boost::scoped_ptr;

// Records of random pixels, so that a crop tells its record and offset.
const int kRecords = 10;
const int kChannels = 3;
const int kHeight = 7;
const int kWidth = 9;
const int kCrop = 4;
// Batches of 3 pairs (items i and i + 3), read past the end of the records.
const int kBatch = 6;
const int kBatches = 4;
const int kThreads = 4;  // not a divisor of kBatch
const float kMean[kChannels] = {10, 20, 30};
const float kScale = 0.5;

static void SetThreadsEnv(const char* value) {
  if (value) {
    setenv("CAFFE_DATA_THREADS", value, 1);
  } else {
    unsetenv("CAFFE_DATA_THREADS");
  }
}

template <typename TypeParam>
class ParallelDataLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  ParallelDataLayerTest()
      : blob_top_data_(new Blob<Dtype>()),
        blob_top_label_(new Blob<Dtype>()) {}
  virtual void SetUp() {
    filename_.reset(new string());
    MakeTempDir(filename_.get());
    *filename_ += "/db";
    blob_top_vec_.push_back(blob_top_data_);
    blob_top_vec_.push_back(blob_top_label_);
  }
  virtual ~ParallelDataLayerTest() {
    delete blob_top_data_;
    delete blob_top_label_;
  }

  // kRecords images with label = record index, as raw datums or encoded as
  // PNG (lossless: decoding gives back images_).
  void Fill(bool encoded) {
    rng_t rng(1234);
    scoped_ptr<db::DB> db(db::GetDB(DataParameter_DB_LMDB));
    db->Open(*filename_, db::NEW);
    scoped_ptr<db::Transaction> txn(db->NewTransaction());
    images_.clear();
    for (int i = 0; i < kRecords; ++i) {
      cv::Mat image(kHeight, kWidth, CV_8UC3);
      for (int h = 0; h < kHeight; ++h) {
        for (int w = 0; w < kWidth * kChannels; ++w) {
          image.ptr<uint8_t>(h)[w] = rng() % 256;
        }
      }
      images_.push_back(image);
      Datum datum;
      if (encoded) {
        vector<uchar> png;
        ASSERT_TRUE(cv::imencode(".png", image, png));
        datum.set_data(string(png.begin(), png.end()));
        datum.set_encoded(true);
      } else {
        CVMatToDatum(image, &datum);
      }
      datum.set_label(i);
      char key[16];
      snprintf(key, sizeof(key), "%08d", i);
      string value;
      ASSERT_TRUE(datum.SerializeToString(&value));
      txn->Put(key, value);
    }
    txn->Commit();
    db->Close();
  }

  LayerParameter Param(int threads, bool crop_and_mirror) {
    LayerParameter param;
    param.set_phase(TRAIN);
    DataParameter* data_param = param.mutable_data_param();
    data_param->set_batch_size(kBatch);
    data_param->set_source(filename_->c_str());
    data_param->set_backend(DataParameter_DB_LMDB);
    data_param->set_threads(threads);
    TransformationParameter* transform_param =
        param.mutable_transform_param();
    for (int c = 0; c < kChannels; ++c) {
      transform_param->add_mean_value(kMean[c]);
    }
    transform_param->set_scale(kScale);
    if (crop_and_mirror) {
      transform_param->set_crop_size(kCrop);
      transform_param->set_mirror(true);
    }
    return param;
  }

  // The tops of kBatches forward passes of a layer seeded with seed.
  void Load(int threads, bool crop_and_mirror, int seed, vector<Dtype>* data,
      vector<Dtype>* labels) {
    Caffe::set_random_seed(seed);
    DataLayer<Dtype> layer(Param(threads, crop_and_mirror));
    layer.SetUp(blob_bottom_vec_, blob_top_vec_);
    EXPECT_EQ(threads, layer.threads());
    EXPECT_EQ(kBatch, blob_top_data_->num());
    EXPECT_EQ(kChannels, blob_top_data_->channels());
    EXPECT_EQ(crop_and_mirror ? kCrop : kHeight, blob_top_data_->height());
    EXPECT_EQ(crop_and_mirror ? kCrop : kWidth, blob_top_data_->width());
    data->clear();
    labels->clear();
    for (int iter = 0; iter < kBatches; ++iter) {
      layer.Forward(blob_bottom_vec_, blob_top_vec_);
      const Dtype* top = blob_top_data_->cpu_data();
      data->insert(data->end(), top, top + blob_top_data_->count());
      const Dtype* label = blob_top_label_->cpu_data();
      labels->insert(labels->end(), label, label + kBatch);
    }
  }

  // Item n's record: the records in order, from the start again at the end.
  void ExpectRecordOrder(const vector<Dtype>& labels) {
    ASSERT_EQ(kBatch * kBatches, labels.size());
    for (int n = 0; n < labels.size(); ++n) {
      EXPECT_EQ(n % kRecords, labels[n]) << "item " << n;
    }
  }

  // What the transform makes of pixel (h, w, c) of a record.
  Dtype Expected(int record, int h, int w, int c) {
    const uint8_t pixel = images_[record].ptr<uint8_t>(h)[w * kChannels + c];
    return (static_cast<Dtype>(pixel) - kMean[c]) * kScale;
  }

  // Whether item (C x height x width) is the crop of record at (h_off,
  // w_off), mirrored left to right if mirrored.
  bool IsCrop(const Dtype* item, int height, int width, int record,
      int h_off, int w_off, bool mirrored) {
    for (int c = 0; c < kChannels; ++c) {
      for (int h = 0; h < height; ++h) {
        for (int w = 0; w < width; ++w) {
          const int source_w = w_off + (mirrored ? width - 1 - w : w);
          if (item[(c * height + h) * width + w] !=
              Expected(record, h_off + h, source_w, c)) {
            return false;
          }
        }
      }
    }
    return true;
  }

  void TestSameWithoutCropOrMirror(bool encoded) {
    Fill(encoded);
    vector<Dtype> data1, labels1, data, labels;
    Load(1, false, 1701, &data1, &labels1);
    Load(kThreads, false, 1701, &data, &labels);
    EXPECT_TRUE(data1 == data) << "images differ from one thread's";
    EXPECT_TRUE(labels1 == labels) << "labels differ from one thread's";
    ExpectRecordOrder(labels);
    // And each item is its whole record, transformed.
    const int size = kChannels * kHeight * kWidth;
    for (int n = 0; n < labels.size(); ++n) {
      EXPECT_TRUE(IsCrop(&data[n * size], kHeight, kWidth, n % kRecords, 0, 0,
                         false))
          << "item " << n << " is not record " << n % kRecords;
    }
  }

  void TestSameWithCropAndMirror(bool encoded) {
    Fill(encoded);
    vector<Dtype> data1, labels1, data, labels;
    Load(1, true, 1701, &data1, &labels1);
    Load(kThreads, true, 1701, &data, &labels);
    // The threads replay the numbers Caffe's loop draws, item for item.
    EXPECT_TRUE(data1 == data) << "crops differ from one thread's";
    EXPECT_TRUE(labels1 == labels) << "labels differ from one thread's";
    ExpectRecordOrder(labels);
    const int size = kChannels * kCrop * kCrop;
    int mirrored_items = 0;
    std::set<std::pair<int, int> > offsets;
    for (int n = 0; n < labels.size(); ++n) {
      int matches = 0;
      for (int h_off = 0; h_off <= kHeight - kCrop; ++h_off) {
        for (int w_off = 0; w_off <= kWidth - kCrop; ++w_off) {
          for (int mirrored = 0; mirrored < 2; ++mirrored) {
            if (IsCrop(&data[n * size], kCrop, kCrop, n % kRecords, h_off,
                       w_off, mirrored)) {
              ++matches;
              mirrored_items += mirrored;
              offsets.insert(std::make_pair(h_off, w_off));
            }
          }
        }
      }
      EXPECT_EQ(1, matches) << "item " << n << " is not one crop of record "
          << n % kRecords;
    }
    // Random, not a fixed crop or flip (fixed by the seed: no flakiness).
    EXPECT_GT(mirrored_items, 0);
    EXPECT_LT(mirrored_items, labels.size());
    EXPECT_GT(offsets.size(), 1);
    // Another seed, other crops.
    vector<Dtype> data2, labels2;
    Load(kThreads, true, 1702, &data2, &labels2);
    EXPECT_TRUE(labels2 == labels);
    EXPECT_FALSE(data2 == data) << "the seed did not change the crops";
  }

  int Threads(int field) {
    DataLayer<Dtype> layer(Param(field, false));
    layer.SetUp(blob_bottom_vec_, blob_top_vec_);
    return layer.threads();
  }

  shared_ptr<string> filename_;
  vector<cv::Mat> images_;
  Blob<Dtype>* const blob_top_data_;
  Blob<Dtype>* const blob_top_label_;
  vector<Blob<Dtype>*> blob_bottom_vec_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

TYPED_TEST_CASE(ParallelDataLayerTest, TestDtypesAndDevices);

TYPED_TEST(ParallelDataLayerTest, TestSameWithoutCropOrMirrorRaw) {
  this->TestSameWithoutCropOrMirror(false);
}

TYPED_TEST(ParallelDataLayerTest, TestSameWithoutCropOrMirrorEncoded) {
  this->TestSameWithoutCropOrMirror(true);
}

TYPED_TEST(ParallelDataLayerTest, TestSameWithCropAndMirrorRaw) {
  this->TestSameWithCropAndMirror(false);
}

TYPED_TEST(ParallelDataLayerTest, TestSameWithCropAndMirrorEncoded) {
  this->TestSameWithCropAndMirror(true);
}

// With several solvers, each reads every solver_count-th record (Skip):
// the same ones on threads as in the loop.
TYPED_TEST(ParallelDataLayerTest, TestSkipWithSolvers) {
  typedef typename TypeParam::Dtype Dtype;
  this->Fill(false);
  Caffe::set_solver_count(3);
  Caffe::set_solver_rank(1);
  vector<Dtype> data1, labels1, data, labels;
  this->Load(1, true, 1701, &data1, &labels1);
  this->Load(kThreads, true, 1701, &data, &labels);
  Caffe::set_solver_count(1);
  Caffe::set_solver_rank(0);
  EXPECT_TRUE(data1 == data);
  EXPECT_TRUE(labels1 == labels);
  for (int n = 0; n < labels.size(); ++n) {
    EXPECT_EQ((1 + 3 * n) % kRecords, labels[n]) << "item " << n;
  }
}

// data_param.threads, else CAFFE_DATA_THREADS, else the cores; at most the
// batch size.
TYPED_TEST(ParallelDataLayerTest, TestThreadCount) {
  this->Fill(false);
  const char* saved = getenv("CAFFE_DATA_THREADS");
  const string saved_value = saved ? saved : "";
  SetThreadsEnv("3");
  EXPECT_EQ(3, this->Threads(0));
  EXPECT_EQ(2, this->Threads(2));
  EXPECT_EQ(kBatch, this->Threads(kBatch + 10));
  SetThreadsEnv(NULL);
  EXPECT_EQ(2, this->Threads(2));
  const int automatic = this->Threads(0);
  EXPECT_GE(automatic, 1);
  EXPECT_LE(automatic, kBatch);
  SetThreadsEnv(saved ? saved_value.c_str() : NULL);
}

}  // namespace caffe
#endif  // USE_OPENCV
