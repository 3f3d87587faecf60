#ifndef CAFFE_UTIL_CPU_THREADS_HPP_
#define CAFFE_UTIL_CPU_THREADS_HPP_

#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>

namespace caffe {

// Built with OpenMP, libcaffe sets OpenBLAS to one thread when it loads
// (OpenBLAS's own threads would only compete with OpenMP's for the same
// cores) unless OPENBLAS_NUM_THREADS is set. Around a parallel loop,
// SerialBlas() sets it to one thread in any case and returns the count to
// give back to RestoreBlas() (0: nothing to give back).
int SerialBlas();
void RestoreBlas(int threads);

/**
 * @brief body(k) for the chunks k = 0 .. chunks - 1 of a CPU pass: on
 *        OpenMP's threads, each chunk's BLAS calls on one BLAS thread; in
 *        order, with the BLAS's own threads, where there is one thread or
 *        one chunk. Each chunk must write only its own outputs; when how
 *        the work splits into chunks does not depend on the number of
 *        threads, neither do the results.
 */
template <typename Body>
void ParallelChunks(int chunks, const Body& body) {
#ifdef _OPENMP
  const int threads = std::min(chunks, omp_get_max_threads());
  if (threads > 1 && !omp_in_parallel()) {
    const int blas = SerialBlas();
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int k = 0; k < chunks; ++k) {
      body(k);
    }
    RestoreBlas(blas);
    return;
  }
#endif
  for (int k = 0; k < chunks; ++k) {
    body(k);
  }
}

}  // namespace caffe

#endif  // CAFFE_UTIL_CPU_THREADS_HPP_
