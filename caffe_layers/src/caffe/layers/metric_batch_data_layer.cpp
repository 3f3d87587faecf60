#include <lmdb.h>
#include <stdint.h>

#include <string>
#include <vector>

#include "caffe/layers/metric_batch_data_layer.hpp"
#include "caffe/util/format.hpp"

namespace caffe {

template <typename Dtype>
MetricBatchDataLayer<Dtype>::MetricBatchDataLayer(const LayerParameter& param)
  : DataLayer<Dtype>(param), param_(param.metric_batch_param()),
    fingerprint_(0), seed_(0), width_(2), share_(0), per_batch_(0),
    rank_(0), batches_per_epoch_(0), tuples_epoch_(0), have_tuples_(false),
    next_load_(0), next_forward_(0), env_(NULL) {
}

template <typename Dtype>
MetricBatchDataLayer<Dtype>::~MetricBatchDataLayer() {
  this->StopInternalThread();
  if (env_) {
    mdb_env_close(env_);
  }
}

template <typename Dtype>
std::string MetricBatchDataLayer<Dtype>::Where() const {
  return "MetricBatchData layer " + this->layer_param_.name() + ": ";
}

template <typename Dtype>
void MetricBatchDataLayer<Dtype>::DataLayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const DataParameter& data = this->layer_param_.data_param();
  CHECK_EQ(data.backend(), DataParameter_DB_LMDB) << Where()
      << "data_param.backend must be LMDB (records are read by key)";
  width_ = param_.tuple() == MetricBatchParameter_Tuple_TRIPLET ? 3 : 2;
  CHECK(!(width_ == 3 &&
          param_.label() == MetricBatchParameter_Label_SIMILARITY)) << Where()
      << "label: SIMILARITY is for pairs (tuple: PAIR)";
  const int batch_size = data.batch_size();
  CHECK(batch_size > 0 && batch_size % width_ == 0) << Where()
      << "data_param.batch_size " << batch_size << ": "
      << (width_ == 2 ? "pairs need an even batch"
          : "triplets need a multiple of 3");
  DataLayer<Dtype>::DataLayerSetUp(bottom, top);
  ReadLabels();
  // The Data layer's cursor has done its work: records are read by key.
  this->cursor_.reset();
  this->db_->Close();

  int problem_at;
  const std::string problem =
      metric_batch::LabelProblem(labels_, &problem_at);
  CHECK(problem.empty()) << Where() << data.source() << ": " << problem
      << (problem_at >= 0 ? " (record " + format_int(problem_at, 9) + ")"
          : std::string());
  const int64_t solver_seed = metric_batch::SolverSeed();
  seed_ = param_.seed() >= 0 ? param_.seed()
      : (solver_seed >= 0 ? solver_seed : 0);
  rank_ = Caffe::solver_rank();
  share_ = batch_size / width_;
  per_batch_ = share_ * Caffe::solver_count();
  {
    boost::mutex::scoped_lock lock(mutex_);
    const uint64_t tuples = EpochTuples(0).size();
    CHECK_GT(tuples, 0) << Where() << data.source() << " gives "
        << (width_ == 2 ? "fewer pairs" : "fewer triplets")
        << " than one batch of " << per_batch_ << " (batch_size "
        << batch_size << " on " << Caffe::solver_count() << " solver(s)"
        << (param_.max_tuples() ? ", max_tuples " +
            format_int(param_.max_tuples()) : std::string()) << ")";
    // Every epoch has as many: the counts depend on the classes alone.
    batches_per_epoch_ = tuples / per_batch_;
  }
  CHECK_EQ(mdb_env_create(&env_), MDB_SUCCESS);
  // Without LMDB's lock file: several envs of one file in one process (other
  // layers on the same LMDB, the solvers of a -gpu run, the Data layer's own
  // env) would each reset its reader table and could read an old meta page.
  // Training data is not written while it is read.
  const int opened = mdb_env_open(env_, data.source().c_str(),
      MDB_RDONLY | MDB_NOTLS | MDB_NOLOCK, 0664);
  CHECK_EQ(opened, MDB_SUCCESS) << Where() << data.source() << ": "
      << mdb_strerror(opened);
  LOG_IF(INFO, Caffe::root_solver()) << Where() << labels_.size()
      << " images, " << batches_per_epoch_ << " batches of " << per_batch_
      << (width_ == 2 ? " pairs" : " triplets") << " an epoch ("
      << (param_.epochs() == MetricBatchParameter_Epochs_RESHUFFLE ?
          "reshuffled" : "fixed") << "), seed " << seed_;
}

template <typename Dtype>
void MetricBatchDataLayer<Dtype>::ReadLabels() {
  const std::string& source = this->layer_param_.data_param().source();
  // First the count (the fingerprint starts with it), then every record.
  uint64_t count = 0;
  for (this->cursor_->SeekToFirst(); this->cursor_->valid();
       this->cursor_->Next()) {
    ++count;
  }
  metric_batch::Fingerprint fingerprint(count);
  labels_.clear();
  labels_.reserve(count);
  Datum datum;
  for (this->cursor_->SeekToFirst(); this->cursor_->valid();
       this->cursor_->Next()) {
    const std::string key = this->cursor_->key();
    const std::string expected = format_int(labels_.size(), 9);
    CHECK_EQ(key, expected) << Where() << source << ": record "
        << labels_.size() << " has the key " << key << ", not " << expected
        << " (the records of a training LMDB are keyed 000000000, "
        << "000000001, ... in order: tools/prepare_dataset.py writes them so)";
    const std::string value = this->cursor_->value();
    CHECK(datum.ParseFromString(value)) << Where() << source << ": record "
        << key << " is not a Datum";
    CHECK(datum.has_label()) << Where() << source << ": record " << key
        << " has no label (the class of each image is needed to form pairs)";
    labels_.push_back(datum.label());
    fingerprint.Add(value);
  }
  fingerprint_ = fingerprint.value();
}

template <typename Dtype>
const metric_batch::Tuples& MetricBatchDataLayer<Dtype>::EpochTuples(
    uint64_t epoch) {
  if (!have_tuples_ || tuples_epoch_ != epoch) {
    if (width_ == 2) {
      metric_batch::EpochPairs(labels_, seed_, epoch, &tuples_);
    } else {
      metric_batch::EpochTriplets(labels_, seed_, epoch, &tuples_);
    }
    metric_batch::ShuffleCapTrim(seed_, epoch, param_.max_tuples(),
        per_batch_, &tuples_);
    tuples_epoch_ = epoch;
    have_tuples_ = true;
  }
  return tuples_;
}

template <typename Dtype>
void MetricBatchDataLayer<Dtype>::BatchRecords(uint64_t k,
    vector<int>* records, vector<int>* labels) {
  const bool reshuffle =
      param_.epochs() == MetricBatchParameter_Epochs_RESHUFFLE;
  const uint64_t epoch = reshuffle ? k / batches_per_epoch_ : 0;
  const uint64_t first =
      (k % batches_per_epoch_) * per_batch_ + rank_ * share_;
  records->resize(share_ * width_);
  labels->resize(share_ * width_);
  {
    boost::mutex::scoped_lock lock(mutex_);
    const metric_batch::Tuples& tuples = EpochTuples(epoch);
    // Tuple member w of the share's s-th tuple is item w * share + s.
    for (int s = 0; s < share_; ++s) {
      for (int w = 0; w < width_; ++w) {
        (*records)[w * share_ + s] = tuples.items[(first + s) * width_ + w];
      }
    }
  }
  for (int i = 0; i < records->size(); ++i) {
    (*labels)[i] = labels_[(*records)[i]];
  }
  if (param_.label() == MetricBatchParameter_Label_SIMILARITY) {
    for (int s = 0; s < share_; ++s) {
      const int similar = (*labels)[s] == (*labels)[share_ + s];
      (*labels)[s] = (*labels)[share_ + s] = similar;
    }
  }
}

template <typename Dtype>
void MetricBatchDataLayer<Dtype>::ReadRecords(const vector<int>& records) {
  MDB_txn* txn;
  MDB_dbi dbi;
  CHECK_EQ(mdb_txn_begin(env_, NULL, MDB_RDONLY, &txn), MDB_SUCCESS);
  CHECK_EQ(mdb_dbi_open(txn, NULL, 0, &dbi), MDB_SUCCESS);
  this->records_.resize(records.size());
  for (int i = 0; i < records.size(); ++i) {
    std::string key = format_int(records[i], 9);
    MDB_val mdb_key, mdb_value;
    mdb_key.mv_size = key.size();
    mdb_key.mv_data = &key[0];
    const int found = mdb_get(txn, dbi, &mdb_key, &mdb_value);
    CHECK_EQ(found, MDB_SUCCESS) << Where()
        << this->layer_param_.data_param().source() << ": record " << key
        << ": " << mdb_strerror(found) << " (the LMDB changed while training?)";
    this->records_[i].assign(static_cast<const char*>(mdb_value.mv_data),
        mdb_value.mv_size);
  }
  mdb_txn_abort(txn);
}

// On the prefetch thread: batch next_load_, its records by key, its crops
// and mirrors from (seed, batch, item), decoded and transformed on the
// Data layer's threads.
template <typename Dtype>
void MetricBatchDataLayer<Dtype>::load_batch(Batch<Dtype>* batch) {
  const uint64_t k = next_load_++;
  BatchRecords(k, &batch_records_, &batch_labels_);
  ReadRecords(batch_records_);
  const int items = batch_records_.size();
  const int rand_count = this->data_transformer_->RandCount();
  this->draws_.resize(items * rand_count);
  for (int i = 0; i < items; ++i) {
    for (int d = 0; d < rand_count; ++d) {
      this->draws_[i * rand_count + d] = metric_batch::TransformDraw(
          seed_, k, static_cast<uint64_t>(rank_) * items + i, d);
    }
  }
  this->TransformBatch(batch);
  // The Datums' labels must still be those read at setup.
  Dtype* label = batch->label_.mutable_cpu_data();
  for (int i = 0; i < items; ++i) {
    CHECK_EQ(static_cast<int>(label[i]), labels_[batch_records_[i]])
        << Where() << this->layer_param_.data_param().source() << ": record "
        << format_int(batch_records_[i], 9) << " changed while training";
    label[i] = batch_labels_[i];
  }
}

template <typename Dtype>
void MetricBatchDataLayer<Dtype>::Seek(uint64_t k) {
  this->StopInternalThread();
  // Every batch but the one the net holds is free again, whatever the
  // thread was doing when it stopped.
  Batch<Dtype>* batch;
  while (this->prefetch_full_.try_pop(&batch)) {}
  while (this->prefetch_free_.try_pop(&batch)) {}
  for (int i = 0; i < this->prefetch_.size(); ++i) {
    if (this->prefetch_[i].get() != this->prefetch_current_) {
      this->prefetch_free_.push(this->prefetch_[i].get());
    }
  }
  next_load_ = next_forward_ = k;
  this->StartInternalThread();
}

template <typename Dtype>
void MetricBatchDataLayer<Dtype>::StartIteration(int iter, int iter_size) {
  const uint64_t k = static_cast<uint64_t>(iter) * iter_size;
  if (k != next_forward_) {
    LOG_IF(INFO, Caffe::root_solver()) << Where() << "starting at batch "
        << k << " (iteration " << iter << ")";
    Seek(k);
  }
}

template <typename Dtype>
void MetricBatchDataLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  BasePrefetchingDataLayer<Dtype>::Forward_cpu(bottom, top);
  ++next_forward_;
}

template <typename Dtype>
void MetricBatchDataLayer<Dtype>::Forward_gpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  BasePrefetchingDataLayer<Dtype>::Forward_gpu(bottom, top);
  ++next_forward_;
}

INSTANTIATE_CLASS(MetricBatchDataLayer);
REGISTER_LAYER_CLASS(MetricBatchData);

}  // namespace caffe
