#include <boost/crc.hpp>
#include <boost/thread/tss.hpp>

#include <algorithm>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "caffe/util/metric_batch.hpp"

namespace caffe {
namespace metric_batch {

// Each class's images in ascending order, the classes in ascending order.
static std::map<int, std::vector<int> > ClassMembers(
    const std::vector<int>& labels) {
  std::map<int, std::vector<int> > members;
  for (int i = 0; i < labels.size(); ++i) {
    members[labels[i]].push_back(i);
  }
  return members;
}

std::string LabelProblem(const std::vector<int>& labels, int* image) {
  *image = -1;
  if (labels.empty()) {
    return "no records";
  }
  for (int i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0) {
      *image = i;
      std::ostringstream problem;
      problem << "label " << labels[i] << " is negative (classes are 0, 1, ...)";
      return problem.str();
    }
  }
  const std::map<int, std::vector<int> > members = ClassMembers(labels);
  if (members.size() < 2) {
    return "a single class: negatives need images of at least two classes";
  }
  for (std::map<int, std::vector<int> >::const_iterator it = members.begin();
       it != members.end(); ++it) {
    if (it->second.size() < 2) {
      *image = it->second[0];
      std::ostringstream problem;
      problem << "class " << it->first << " has a single image: positive "
          << "pairs need two images of a class (the authors' generator "
          << "refuses such a class too); leave it out of the training set";
      return problem.str();
    }
  }
  return "";
}

void EpochPairs(const std::vector<int>& labels, uint64_t seed,
    uint64_t epoch, Tuples* pairs) {
  pairs->width = 2;
  std::vector<int>& items = pairs->items;
  items.clear();
  const std::map<int, std::vector<int> > members = ClassMembers(labels);
  typedef std::map<int, std::vector<int> >::const_iterator Class;
  for (Class it = members.begin(); it != members.end(); ++it) {
    const std::vector<int>& m = it->second;
    for (int a = 0; a < m.size(); ++a) {
      items.push_back(m[a]);
      items.push_back(m[a]);
      for (int b = a + 1; b < m.size(); ++b) {
        items.push_back(m[a]);
        items.push_back(m[b]);
      }
    }
  }
  const uint64_t n = labels.size();
  const uint64_t positives = pairs->size();
  // The authors' count: every image gets ceil(positives / images) negatives.
  const uint64_t per_image = (positives + n - 1) / n;
  const uint64_t stream = Stream(seed, epoch, kNegatives);
  // taken[j] == round: image j was drawn in the current round of a class.
  std::vector<uint64_t> taken(n, 0);
  uint64_t round = 0;
  std::vector<int> drawn;
  for (Class it = members.begin(); it != members.end(); ++it) {
    const int label = it->first;
    const std::vector<int>& m = it->second;
    const uint64_t outside = n - m.size();
    const uint64_t wanted = per_image * m.size();
    const uint64_t class_stream = Mix(stream ^ static_cast<uint64_t>(label));
    drawn.clear();
    ++round;
    uint64_t in_round = 0;
    // Without replacement, as the authors drew; a class that needs more
    // negatives than there are images outside it draws them in rounds.
    for (uint64_t t = 0; drawn.size() < wanted; ++t) {
      const uint64_t j = Mix(class_stream ^ t) % n;
      if (labels[j] == label || taken[j] == round) {
        continue;
      }
      taken[j] = round;
      drawn.push_back(j);
      if (++in_round == outside) {
        ++round;
        in_round = 0;
      }
    }
    for (int a = 0; a < m.size(); ++a) {
      for (uint64_t q = 0; q < per_image; ++q) {
        items.push_back(m[a]);
        items.push_back(drawn[a * per_image + q]);
      }
    }
  }
}

void EpochTriplets(const std::vector<int>& labels, uint64_t seed,
    uint64_t epoch, Tuples* triplets) {
  triplets->width = 3;
  std::vector<int>& items = triplets->items;
  items.clear();
  const std::map<int, std::vector<int> > members = ClassMembers(labels);
  const uint64_t n = labels.size();
  const uint64_t stream = Stream(seed, epoch, kTripletNegatives);
  uint64_t p = 0;
  for (std::map<int, std::vector<int> >::const_iterator it = members.begin();
       it != members.end(); ++it) {
    const std::vector<int>& m = it->second;
    for (int a = 0; a < m.size(); ++a) {
      for (int b = a + 1; b < m.size(); ++b, ++p) {
        const uint64_t triplet_stream = Mix(stream ^ p);
        uint64_t j = 0;
        for (uint64_t t = 0; ; ++t) {
          j = Mix(triplet_stream ^ t) % n;
          if (labels[j] != it->first) {
            break;
          }
        }
        items.push_back(m[a]);
        items.push_back(m[b]);
        items.push_back(j);
      }
    }
  }
}

void ShuffleCapTrim(uint64_t seed, uint64_t epoch, uint64_t max_tuples,
    int per_batch, Tuples* tuples) {
  const uint64_t stream = Stream(seed, epoch, kShuffle);
  const uint64_t count = tuples->size();
  std::vector<std::pair<uint64_t, uint64_t> > keys(count);
  for (uint64_t p = 0; p < count; ++p) {
    keys[p] = std::make_pair(Mix(stream ^ p), p);  // ties by p
  }
  std::sort(keys.begin(), keys.end());
  uint64_t kept = count;
  if (max_tuples > 0 && max_tuples < kept) {
    kept = max_tuples;
  }
  kept = kept / per_batch * per_batch;
  const int width = tuples->width;
  std::vector<int> items(kept * width);
  for (uint64_t t = 0; t < kept; ++t) {
    std::copy(tuples->items.begin() + keys[t].second * width,
        tuples->items.begin() + (keys[t].second + 1) * width,
        items.begin() + t * width);
  }
  tuples->items.swap(items);
}

void Fingerprint::Add(const std::string& value) {
  boost::crc_32_type crc;  // zlib's CRC-32
  crc.process_bytes(value.data(), value.size());
  hash_ = Mix(hash_ ^ static_cast<uint64_t>(crc.checksum()));
}

// The solver's seed, per thread: each solver builds its nets in its own.
static boost::thread_specific_ptr<int64_t> solver_seed_;

void SetSolverSeed(int64_t seed) {
  if (!solver_seed_.get()) {
    solver_seed_.reset(new int64_t(seed));
  }
  *solver_seed_ = seed;
}

int64_t SolverSeed() {
  return solver_seed_.get() ? *solver_seed_ : -1;
}

}  // namespace metric_batch
}  // namespace caffe
