#ifndef CAFFE_UTIL_METRIC_BATCH_HPP_
#define CAFFE_UTIL_METRIC_BATCH_HPP_

#include <stdint.h>

#include <string>
#include <vector>

#include "caffe/common.hpp"
#include "caffe/layer.hpp"
#include "caffe/net.hpp"

namespace caffe {
namespace metric_batch {

// The batches of MetricBatchDataLayer, as docs/BATCHES.md specifies them:
// every random choice is a pure function of the seed and of counters, so a
// batch can be formed without forming the ones before it.
// liftedstruct/datasets/layouts.py is the same specification in Python (it
// writes the ordered LMDBs; a test checks that the two give the same batches).

enum StreamTag {
  kNegatives = 1, kShuffle = 2, kTripletNegatives = 3, kTransform = 4,
  kSolver = 5
};

// SplitMix64's finaliser.
inline uint64_t Mix(uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

inline uint64_t Stream(uint64_t seed, uint64_t a) {
  return Mix(Mix(seed) ^ a);
}
inline uint64_t Stream(uint64_t seed, uint64_t a, uint64_t b) {
  return Mix(Stream(seed, a) ^ b);
}
inline uint64_t Stream(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
  return Mix(Stream(seed, a, b) ^ c);
}

// Tuples of image indices, row after row: width 2 (pairs) or 3 (triplets).
struct Tuples {
  explicit Tuples(int width = 2) : width(width) {}
  int width;
  std::vector<int> items;
  size_t size() const { return items.size() / width; }
};

// Why these labels (one per image, in LMDB order) cannot form the batches,
// or "" when they can; *image is the image the problem is found at.
std::string LabelProblem(const std::vector<int>& labels, int* image);

// Epoch epoch's pairs: every positive pair (with each image's self pair),
// then the authors' negatives; unshuffled.
void EpochPairs(const std::vector<int>& labels, uint64_t seed,
    uint64_t epoch, Tuples* pairs);
// Epoch epoch's triplets: every positive pair with a negative; unshuffled.
void EpochTriplets(const std::vector<int>& labels, uint64_t seed,
    uint64_t epoch, Tuples* triplets);
// Shuffles the tuples by their keys, keeps at most max_tuples (0: all) and
// drops the ones that do not fill a whole batch of per_batch tuples.
void ShuffleCapTrim(uint64_t seed, uint64_t epoch, uint64_t max_tuples,
    int per_batch, Tuples* tuples);

// Draw d (0, 1, 2: Caffe's DataTransformer order) of item `item` (counted
// over all solvers) of global batch `batch`.
inline uint32_t TransformDraw(uint64_t seed, uint64_t batch, uint64_t item,
    int d) {
  return static_cast<uint32_t>(Mix(Stream(seed, kTransform, batch) ^
      (4 * item + d)));
}

// The seed of Caffe's generator for one iteration of one solver.
inline unsigned int IterationSeed(int64_t seed, int iter, int rank) {
  return static_cast<unsigned int>(Stream(seed, kSolver, iter, rank));
}

// The training data's fingerprint: Mix(count), then each record's CRC-32.
class Fingerprint {
 public:
  explicit Fingerprint(uint64_t count) : hash_(Mix(count)) {}
  void Add(const std::string& value);
  uint64_t value() const { return hash_; }

 private:
  uint64_t hash_;
};

// The solver's random_seed (-1: none), for the layers of the nets it builds
// in this thread (each solver of a -gpu run has its own thread).
void SetSolverSeed(int64_t seed);
int64_t SolverSeed();

// A layer whose output depends on the training iteration and on data it
// reads: the solver tells it each iteration and snapshots its fingerprint.
class IterationLayer {
 public:
  virtual ~IterationLayer() {}
  // The solver is about to run iteration iter (iter_size forward passes).
  virtual void StartIteration(int iter, int iter_size) = 0;
  virtual uint64_t DataFingerprint() const = 0;
  virtual std::string DataSource() const = 0;
};

template <typename Dtype>
void StartIteration(Net<Dtype>* net, int iter, int iter_size) {
  const vector<shared_ptr<Layer<Dtype> > >& layers = net->layers();
  for (int i = 0; i < layers.size(); ++i) {
    IterationLayer* layer = dynamic_cast<IterationLayer*>(layers[i].get());
    if (layer) {
      layer->StartIteration(iter, iter_size);
    }
  }
}

// The fingerprint of the data of net's IterationLayers (one layer's own, or
// its combination over several); false when it has none.
template <typename Dtype>
bool DataFingerprint(const Net<Dtype>& net, uint64_t* fingerprint) {
  const vector<shared_ptr<Layer<Dtype> > >& layers = net.layers();
  bool found = false;
  for (int i = 0; i < layers.size(); ++i) {
    const IterationLayer* layer =
        dynamic_cast<const IterationLayer*>(layers[i].get());
    if (layer) {
      *fingerprint = found ? Mix(*fingerprint ^ layer->DataFingerprint())
          : layer->DataFingerprint();
      found = true;
    }
  }
  return found;
}

template <typename Dtype>
std::string DataSources(const Net<Dtype>& net) {
  const vector<shared_ptr<Layer<Dtype> > >& layers = net.layers();
  std::string sources;
  for (int i = 0; i < layers.size(); ++i) {
    const IterationLayer* layer =
        dynamic_cast<const IterationLayer*>(layers[i].get());
    if (layer) {
      sources += (sources.empty() ? "" : ", ") + layer->DataSource();
    }
  }
  return sources;
}

}  // namespace metric_batch
}  // namespace caffe

#endif  // CAFFE_UTIL_METRIC_BATCH_HPP_
