/* Entry points of the CUDA simulation that have no CUDA counterpart (cuda/sim).
 *
 * pt_sim_launch is the kernel launch hook behind PT_KERNEL in lib/cuda/launch.h: it copies
 * args_size bytes of args into a task queued on s; the stream's thread later calls run(copy, n).
 * A launch on a stream of another device than the calling thread's current one fails like a real
 * launch would: nothing runs and cudaGetLastError() reports cudaErrorInvalidResourceHandle.
 * The rest is for tests. */
#ifndef PT_SIM_H
#define PT_SIM_H

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

void pt_sim_launch(cudaStream_t s, int64_t n, void (*run)(const void *args, int64_t n),
                   const void *args, size_t args_size);

/* Live streams and live device allocations (leak checks). */
int pt_sim_streams_live(void);
int pt_sim_allocs_live(void);

#ifdef __cplusplus
}
#endif

#endif
