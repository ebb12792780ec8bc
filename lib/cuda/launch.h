/* Kernel definition and launch, one source for the GPU and the simulated device (internal).
 *
 * A kernel is a per-element body `static PT_HD void NAME_body(int64_t i, const ARGS *a)` over
 * i in [0, n), with its arguments in one struct. PT_KERNEL(NAME, ARGS) then defines the C-callable
 * launcher `void NAME(cudaStream_t s, int64_t n, const ARGS *a)`:
 *   - under nvcc, a __global__ grid-stride loop calling the body, launched on s;
 *   - in the simulated build (PT_CUDA_SIM), a queued task on s that runs the body for every i on
 *     the stream's thread, in order (cuda/sim).
 * Bodies write only their own output element, or accumulate with pt_atomic_add() (atomicAdd on
 * the GPU; the simulation runs elements one after another, so a plain add is the same). */
#ifndef PT_CUDA_LAUNCH_H
#define PT_CUDA_LAUNCH_H

#include <stdint.h>
#include <cuda_runtime.h>
#include "../pointwise.h"

#define PT_BLOCK 256

#ifdef __CUDACC__
#define PT_EXTERN_C extern "C"
/* host-callable too, so bodies stay __host__ __device__ (the host pass never runs it) */
__host__ __device__ static inline void pt_atomic_add(float *p, float v) {
#ifdef __CUDA_ARCH__
  atomicAdd(p, v);
#else
  *p += v;
#endif
}
#define PT_KERNEL(name, args_t)                                                                 \
  __global__ static void name##_k(int64_t n, args_t a) {                                         \
    int64_t stride = (int64_t)gridDim.x * blockDim.x;                                            \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)          \
      name##_body(i, &a);                                                                        \
  }                                                                                              \
  PT_EXTERN_C void name(cudaStream_t s, int64_t n, const args_t *a) {                            \
    if (n <= 0) return;                                                                          \
    int64_t blocks = (n + PT_BLOCK - 1) / PT_BLOCK;                                              \
    if (blocks > 65535) blocks = 65535;                                                          \
    name##_k<<<(unsigned)blocks, PT_BLOCK, 0, s>>>(n, *a);                                       \
  }
#else
#include "sim/include/pt_sim.h"
#define PT_EXTERN_C
static inline void pt_atomic_add(float *p, float v) { *p += v; }
#define PT_KERNEL(name, args_t)                                                                 \
  static void name##_run(const void *a, int64_t n) {                                             \
    for (int64_t i = 0; i < n; i++) name##_body(i, (const args_t *)a);                          \
  }                                                                                              \
  void name(cudaStream_t s, int64_t n, const args_t *a) {                                        \
    if (n > 0) pt_sim_launch(s, n, name##_run, a, sizeof *a);                                    \
  }
#endif

#endif
