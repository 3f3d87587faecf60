#include <cstdlib>

#include "caffe/util/cpu_threads.hpp"

// OpenBLAS's thread count, where OpenBLAS is the BLAS (weak: another BLAS
// leaves them NULL).
extern "C" int openblas_get_num_threads(void) __attribute__((weak));
extern "C" void openblas_set_num_threads(int) __attribute__((weak));

namespace caffe {

#ifdef _OPENMP
// One OpenBLAS thread unless OPENBLAS_NUM_THREADS says otherwise, set when
// libcaffe loads, before any layer runs (benchmarks/README.md has the
// glyph net with and without).
static bool SerialBlasAtLoad() {
  if (omp_get_max_threads() > 1 && openblas_set_num_threads &&
      !getenv("OPENBLAS_NUM_THREADS")) {
    openblas_set_num_threads(1);
    return true;
  }
  return false;
}
static const bool serial_blas_at_load_ = SerialBlasAtLoad();
#endif

int SerialBlas() {
  const int threads =
      openblas_get_num_threads ? openblas_get_num_threads() : 1;
  if (threads <= 1) {
    return 0;
  }
  openblas_set_num_threads(1);
  return threads;
}

void RestoreBlas(int threads) {
  if (threads > 1) {
    openblas_set_num_threads(threads);
  }
}

}  // namespace caffe
