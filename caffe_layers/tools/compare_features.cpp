// Reads features written by extract_features (Datums of float_data, in key
// order) and scores them: Recall@K of each feature against all others by
// Euclidean distance, with the labels of a second database. Given a second
// feature database of the same images (another device, say), also reports
// how far the two are apart and fails beyond a tolerance.
//   compare_features -features A [-other B] -labels L [-tolerance 1e-3]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "boost/scoped_ptr.hpp"
#include "gflags/gflags.h"

#include "caffe/common.hpp"
#include "caffe/proto/caffe.pb.h"
#include "caffe/util/db.hpp"

DEFINE_string(features, "", "feature database (from extract_features)");
DEFINE_string(other, "", "optional: the same images' features from elsewhere");
DEFINE_string(labels, "", "labels: extract_features' database of the label "
              "blob, or the data database (Datum.label)");
DEFINE_string(backend, "lmdb", "database backend");
DEFINE_string(recall, "1,2,4,8", "K of Recall@K");
DEFINE_double(tolerance, 1e-3, "largest difference between -features and "
              "-other, relative to the largest feature entry");

namespace {

typedef std::vector<std::vector<double> > Rows;

// Each Datum's float_data (or, where it has none, its label) in key order.
Rows ReadRows(const std::string& source, bool label_only) {
  boost::scoped_ptr<caffe::db::DB> db(caffe::db::GetDB(FLAGS_backend));
  db->Open(source, caffe::db::READ);
  boost::scoped_ptr<caffe::db::Cursor> cursor(db->NewCursor());
  Rows rows;
  caffe::Datum datum;
  for (; cursor->valid(); cursor->Next()) {
    CHECK(datum.ParseFromString(cursor->value()))
        << source << ": record '" << cursor->key() << "' is not a Datum";
    std::vector<double> row;
    if (datum.float_data_size() > 0) {
      for (int i = 0; i < (label_only ? 1 : datum.float_data_size()); ++i) {
        row.push_back(datum.float_data(i));
      }
    } else {
      CHECK(label_only) << source << ": record '" << cursor->key()
                        << "' has no float_data";
      row.push_back(datum.label());
    }
    rows.push_back(row);
  }
  CHECK(!rows.empty()) << source << ": no records";
  return rows;
}

// Recall@K: the share of queries with an item of their own label among their
// K nearest others (ties to the lower index).
std::vector<double> RecallAtK(const Rows& x, const std::vector<double>& label,
                              const std::vector<int>& ks) {
  const int n = x.size();
  const int top = *std::max_element(ks.begin(), ks.end());
  std::vector<double> hits(ks.size(), 0);
  std::vector<std::pair<double, int> > order(n - 1);
  for (int q = 0; q < n; ++q) {
    int filled = 0;
    for (int j = 0; j < n; ++j) {
      if (j == q) { continue; }
      double d = 0;
      for (size_t c = 0; c < x[q].size(); ++c) {
        const double diff = x[q][c] - x[j][c];
        d += diff * diff;
      }
      order[filled++] = std::make_pair(d, j);
    }
    const int keep = std::min(top, n - 1);
    std::partial_sort(order.begin(), order.begin() + keep, order.end());
    int first_hit = n;  // rank of the first same-label neighbour
    for (int r = 0; r < keep; ++r) {
      if (label[order[r].second] == label[q]) {
        first_hit = r;
        break;
      }
    }
    for (size_t k = 0; k < ks.size(); ++k) { hits[k] += first_hit < ks[k]; }
  }
  for (size_t k = 0; k < ks.size(); ++k) { hits[k] = 100.0 * hits[k] / n; }
  return hits;
}

std::string RecallJson(const std::vector<int>& ks,
                       const std::vector<double>& recall) {
  std::ostringstream out;
  out << "{";
  for (size_t k = 0; k < ks.size(); ++k) {
    out << (k ? ", " : "") << "\"" << ks[k] << "\": " << recall[k];
  }
  return out.str() + "}";
}

}  // namespace

int main(int argc, char** argv) {
  FLAGS_alsologtostderr = 1;
  gflags::SetUsageMessage("compare_features -features A [-other B] -labels L");
  caffe::GlobalInit(&argc, &argv);
  CHECK(!FLAGS_features.empty()) << "-features is required";
  CHECK(!FLAGS_labels.empty()) << "-labels is required";
  std::vector<int> ks;
  std::stringstream list(FLAGS_recall);
  for (std::string item; std::getline(list, item, ',');) {
    ks.push_back(std::atoi(item.c_str()));
    CHECK_GT(ks.back(), 0) << "-recall: not a positive K: '" << item << "'";
  }
  const Rows x = ReadRows(FLAGS_features, false);
  const Rows label_rows = ReadRows(FLAGS_labels, true);
  // extract_features writes whole batches: the labels may run longer.
  CHECK_LE(x.size(), label_rows.size())
      << FLAGS_labels << " has fewer records than " << FLAGS_features;
  std::vector<double> label(x.size());
  for (size_t i = 0; i < x.size(); ++i) { label[i] = label_rows[i][0]; }
  for (size_t i = 0; i < x.size(); ++i) {
    CHECK_EQ(x[i].size(), x[0].size()) << "record " << i << ": other size";
    for (size_t c = 0; c < x[i].size(); ++c) {
      CHECK(std::isfinite(x[i][c])) << FLAGS_features << ": record " << i
                                    << " is not finite";
    }
  }
  std::printf("{\"n\": %zu, \"dim\": %zu, \"recall_at\": %s", x.size(),
              x[0].size(), RecallJson(ks, RecallAtK(x, label, ks)).c_str());
  bool within = true;
  if (!FLAGS_other.empty()) {
    const Rows y = ReadRows(FLAGS_other, false);
    CHECK_EQ(y.size(), x.size()) << FLAGS_other << ": other record count";
    double largest = 0, worst = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      CHECK_EQ(y[i].size(), x[i].size()) << FLAGS_other << ": record " << i;
      for (size_t c = 0; c < x[i].size(); ++c) {
        largest = std::max(largest, std::abs(x[i][c]));
        // NaN fails the comparison below through !(worst <= ...).
        const double diff = std::abs(x[i][c] - y[i][c]);
        worst = std::isnan(diff) ? diff : std::max(worst, diff);
      }
    }
    const double relative = largest > 0 ? worst / largest : worst;
    within = relative <= FLAGS_tolerance;
    std::printf(", \"other\": {\"max_abs_diff\": %.9g, \"max_abs\": %.9g, "
                "\"relative\": %.9g, \"tolerance\": %g, \"within\": %s, "
                "\"recall_at\": %s}", worst, largest, relative,
                FLAGS_tolerance, within ? "true" : "false",
                RecallJson(ks, RecallAtK(y, label, ks)).c_str());
  }
  std::printf("}\n");
  return within ? 0 : 3;
}
