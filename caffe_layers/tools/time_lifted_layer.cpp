// Times the lifted structured loss layer alone, forward + backward, on the
// CPU or a GPU, for batches of m features of c dimensions laid out as the
// paper's batches are (item i and item i + m/2 share a class). One JSON line
// per size: the median and the fastest of the timed iterations.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "gflags/gflags.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/lifted_struct_similarity_softmax_loss_layer.hpp"
#include "caffe/util/benchmark.hpp"

DEFINE_int32(gpu, -1, "GPU to run on; -1 runs on the CPU");
DEFINE_string(sizes, "128,256,512,1024", "batch sizes m (even)");
DEFINE_string(dims, "64,512", "feature dimensions c");
DEFINE_int32(iterations, 100, "timed forward + backward passes per size");
DEFINE_int32(warmup, 10, "untimed passes before them");

namespace {

std::vector<int> ParseList(const std::string& text) {
  std::vector<int> values;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) {
    values.push_back(std::atoi(item.c_str()));
    CHECK_GT(values.back(), 0) << "not a positive size: '" << item << "'";
  }
  return values;
}

// Milliseconds of each of `iterations` forward + backward passes.
std::vector<float> TimeLayer(int num, int dim) {
  using caffe::Blob;
  Blob<float> features(num, dim, 1, 1), labels(num, 1, 1, 1), loss;
  caffe::FillerParameter filler_param;
  // Embedding-like scale: distances around the margin, so both terms of
  // the loss are active.
  filler_param.set_std(1.0 / std::sqrt(static_cast<double>(dim)));
  caffe::GaussianFiller<float> filler(filler_param);
  filler.Fill(&features);
  for (int i = 0; i < num; ++i) {
    labels.mutable_cpu_data()[i] = i % (num / 2);
  }
  std::vector<Blob<float>*> bottom(1, &features), top(1, &loss);
  bottom.push_back(&labels);
  caffe::LayerParameter param;
  param.mutable_lifted_struct_sim_softmax_loss_param()->set_margin(1);
  caffe::LiftedStructSimilaritySoftmaxLossLayer<float> layer(param);
  layer.SetUp(bottom, top);
  std::vector<bool> propagate_down(2, false);
  propagate_down[0] = true;
  std::vector<float> times;
  caffe::Timer timer;
  for (int i = 0; i < FLAGS_warmup + FLAGS_iterations; ++i) {
    timer.Start();
    layer.Forward(bottom, top);
    layer.Backward(top, propagate_down, bottom);
    timer.Stop();  // waits for the GPU: events around both passes
    // Microseconds: on the CPU, Timer's milliseconds are whole numbers.
    if (i >= FLAGS_warmup) { times.push_back(timer.MicroSeconds() / 1000); }
  }
  CHECK(std::isfinite(loss.cpu_data()[0])) << "non-finite loss";
  return times;
}

}  // namespace

int main(int argc, char** argv) {
  FLAGS_alsologtostderr = 1;
  gflags::SetUsageMessage("time_lifted_layer [-gpu N] [-sizes 128,256] "
                          "[-dims 64,512] [-iterations 100]");
  caffe::GlobalInit(&argc, &argv);
  if (FLAGS_gpu >= 0) {
    caffe::Caffe::SetDevice(FLAGS_gpu);
    caffe::Caffe::set_mode(caffe::Caffe::GPU);
  } else {
    caffe::Caffe::set_mode(caffe::Caffe::CPU);
  }
  CHECK_GT(FLAGS_iterations, 0);
  const std::vector<int> sizes = ParseList(FLAGS_sizes);
  const std::vector<int> dims = ParseList(FLAGS_dims);
  for (size_t s = 0; s < sizes.size(); ++s) {
    CHECK_EQ(sizes[s] % 2, 0) << "batch sizes are even (pairs)";
    for (size_t d = 0; d < dims.size(); ++d) {
      std::vector<float> times = TimeLayer(sizes[s], dims[d]);
      std::sort(times.begin(), times.end());
      std::printf("{\"device\": \"%s\", \"m\": %d, \"c\": %d, "
                  "\"iterations\": %d, \"median_ms\": %.6f, "
                  "\"min_ms\": %.6f}\n",
                  FLAGS_gpu >= 0 ? "gpu" : "cpu", sizes[s], dims[d],
                  FLAGS_iterations, times[times.size() / 2], times[0]);
      std::fflush(stdout);
    }
  }
  return 0;
}
