// Prints, as one JSON object, the versions of the CUDA libraries this Caffe
// was built against and of those it loaded, and the GPUs the driver sees.
// A portable install checks with it that the machine's libraries fit the
// build before anything else runs.
#include <cstdio>
#include <string>

#include "caffe/common.hpp"

#ifndef CPU_ONLY
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <curand.h>
#ifdef USE_CUDNN
#include <cudnn.h>
#endif
#ifdef USE_NCCL
#include <nccl.h>
#endif
#endif

namespace {

// JSON string with the characters a device name can hold escaped.
std::string Quote(const std::string& text) {
  std::string out = "\"";
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) >= 0x20) {
      out += c;
    }
  }
  return out + "\"";
}

}  // namespace

int main() {
#ifdef CPU_ONLY
  std::printf("{\"cpu_only\": true}\n");
  return 0;
#else
  std::printf("{\"cpu_only\": false");
  int runtime = 0, driver = 0;
  cudaRuntimeGetVersion(&runtime);
  cudaDriverGetVersion(&driver);  // 0 where no driver is loaded
  std::printf(", \"cudart\": {\"built\": %d, \"loaded\": %d}",
              CUDART_VERSION, runtime);
  std::printf(", \"driver_cuda\": %d", driver);
  int major = 0, minor = 0, patch = 0;
  cublasGetProperty(MAJOR_VERSION, &major);
  cublasGetProperty(MINOR_VERSION, &minor);
  cublasGetProperty(PATCH_LEVEL, &patch);
  std::printf(", \"cublas\": {\"built\": %d, \"loaded\": %d}",
              CUBLAS_VERSION, major * 10000 + minor * 100 + patch);
  int curand = 0;
  curandGetVersion(&curand);
  std::printf(", \"curand\": {\"built\": %d, \"loaded\": %d}",
              CURAND_VERSION, curand);
#ifdef USE_CUDNN
  std::printf(", \"cudnn\": {\"built\": %d, \"loaded\": %zu}", CUDNN_VERSION,
              cudnnGetVersion());
#endif
#ifdef USE_NCCL
  int nccl = 0;
  ncclGetVersion(&nccl);
  std::printf(", \"nccl\": {\"built\": %d, \"loaded\": %d}", NCCL_VERSION_CODE,
              nccl);
#endif
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    count = 0;
    std::printf(", \"device_error\": %s",
                Quote(cudaGetErrorString(error)).c_str());
  }
  std::printf(", \"devices\": [");
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) { continue; }
    std::printf("%s{\"index\": %d, \"name\": %s, \"compute_capability\": "
                "\"%d.%d\", \"memory_mib\": %zu, \"multiprocessors\": %d}",
                i ? ", " : "", i, Quote(prop.name).c_str(), prop.major,
                prop.minor, prop.totalGlobalMem >> 20,
                prop.multiProcessorCount);
  }
  std::printf("]}\n");
  return count > 0 ? 0 : 2;
#endif
}
