#ifndef CAFFE_METRIC_BATCH_DATA_LAYER_HPP_
#define CAFFE_METRIC_BATCH_DATA_LAYER_HPP_

#include <lmdb.h>
#include <stdint.h>

#include <string>
#include <vector>

#include "boost/thread/mutex.hpp"

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/layers/data_layer.hpp"
#include "caffe/proto/caffe.pb.h"
#include "caffe/util/metric_batch.hpp"

namespace caffe {

/**
 * @brief The paper's training batches of pairs or triplets, formed from an
 *        LMDB that holds each training image once (Song et al., CVPR 2016,
 *        Sec. 3 and the authors' generator; docs/BATCHES.md):
 *
 * - PAIR: every pair within a class (each image with itself included) and
 *   ceil(positives / images) negatives per image, shuffled; a batch of B
 *   holds B/2 pairs as their first images, then their second images, so
 *   items i and i + B/2 form a pair.
 * - TRIPLET: every pair within a class with a negative; a batch of B holds
 *   B/3 anchors, then their positives, then their negatives.
 *
 * The LMDB's records are Datums with their class label, keyed 000000000,
 * 000000001, ... in order (tools/prepare_dataset.py writes them so). Batch k
 * (its records, crops and mirrors) is a function of the seed and k alone:
 * told the iteration by the solver (patch 0014), the layer starts at any
 * iteration, so that a resumed training is the run it resumes. With several
 * solvers each takes its share of the batch, whole pairs (triplets) each;
 * data_param.batch_size is a solver's share. The records are decoded and
 * transformed on data_param.threads threads, as in the Data layer.
 *
 * @param top output Blob vector (length 2)
 *   -# @f$ (B \times C \times H \times W) @f$ the transformed images
 *   -# @f$ (B) @f$ the labels: each image's class (CLASS), or each pair's
 *      similarity, 1 or 0, in both halves (SIMILARITY: ContrastiveLoss)
 */
template <typename Dtype>
class MetricBatchDataLayer : public DataLayer<Dtype>,
                             public metric_batch::IterationLayer {
 public:
  explicit MetricBatchDataLayer(const LayerParameter& param);
  virtual ~MetricBatchDataLayer();
  virtual void DataLayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual inline const char* type() const { return "MetricBatchData"; }
  virtual inline int MinTopBlobs() const { return 2; }
  virtual inline int MaxTopBlobs() const { return 2; }

  virtual void StartIteration(int iter, int iter_size);
  virtual uint64_t DataFingerprint() const { return fingerprint_; }
  virtual std::string DataSource() const {
    return this->layer_param_.data_param().source();
  }

  // Batch k of this solver: its records (indices into the LMDB) in item
  // order and the labels the layer gives them.
  void BatchRecords(uint64_t k, vector<int>* records, vector<int>* labels);
  uint64_t batches_per_epoch() const { return batches_per_epoch_; }
  uint64_t seed() const { return seed_; }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void load_batch(Batch<Dtype>* batch);

  // Reads every record's label (and the fingerprint) through the Data
  // layer's cursor, checking the keys and labels.
  void ReadLabels();
  // The tuples of an epoch (computed when first asked; mutex_ held).
  const metric_batch::Tuples& EpochTuples(uint64_t epoch);
  // Restarts the prefetching at batch k.
  void Seek(uint64_t k);
  // records_ (the Data layer's) from the LMDB by key.
  void ReadRecords(const vector<int>& records);
  std::string Where() const;

  MetricBatchParameter param_;
  vector<int> labels_;  // per record
  uint64_t fingerprint_;
  uint64_t seed_;
  int width_;  // 2 (pairs) or 3 (triplets)
  int share_;  // tuples of this solver's batch
  int per_batch_;  // tuples of a batch over all solvers
  int rank_;
  uint64_t batches_per_epoch_;

  boost::mutex mutex_;  // guards tuples_ and tuples_epoch_
  metric_batch::Tuples tuples_;
  uint64_t tuples_epoch_;
  bool have_tuples_;

  uint64_t next_load_;  // the batch the prefetch thread loads next
  uint64_t next_forward_;  // the batch Forward returns next
  vector<int> batch_records_, batch_labels_;  // the prefetch thread's

  MDB_env* env_;
};

}  // namespace caffe

#endif  // CAFFE_METRIC_BATCH_DATA_LAYER_HPP_
