/* The CUDA executor: runs a contiguous range of a model's nodes forward and backward on one GPU,
 * every call enqueued on the stage's stream (internal).
 *
 * The twin of ../exec.h: the same gradient plan (pt_exec_plan_grads), the same binding of external
 * values (here to device pointers), the same accumulate rule. Memory lives in per-stage device
 * arenas carved at init: activations, gradients, parameters and constants (device copies of the
 * model's values read in range), per-node aux (max-pool argmax), one workspace. cuDNN runs
 * convolutions, pooling and activations with algorithms chosen once per shape at init; cuBLAS runs
 * Gemm and MatMul; kernels.h does the rest. Nothing is allocated and nothing waits on the host
 * while a tick is enqueued. */
#ifndef PT_CUDA_EXEC_H
#define PT_CUDA_EXEC_H

#include <stdbool.h>
#include <cuda_runtime.h>
#include "../graph.h"

typedef struct pt_cuda_exec pt_cuda_exec;

/* Prepares nodes [first, end) on `device`, enqueuing on `stream` (created by the caller on that
 * device). Uploads the parameters and constants the range reads. */
pt_status pt_cuda_exec_new(pt_model *m, int first, int end, bool train, bool grad_external,
                           int device, cudaStream_t stream, pt_cuda_exec **out, pt_error *err);
void pt_cuda_exec_free(pt_cuda_exec *x);

void pt_cuda_exec_bind(pt_cuda_exec *x, int value, const float *dev);
float *pt_cuda_exec_act(const pt_cuda_exec *x, int value);
float *pt_cuda_exec_grad(const pt_cuda_exec *x, int value);
bool pt_cuda_exec_is_external(const pt_cuda_exec *x, int value);

/* Parameters read in range, in value order, with their device copies. */
int pt_cuda_exec_n_params(const pt_cuda_exec *x);
int pt_cuda_exec_param(const pt_cuda_exec *x, int i);
float *pt_cuda_exec_param_data(const pt_cuda_exec *x, int i);

void pt_cuda_exec_forward(pt_cuda_exec *x);
void pt_cuda_exec_zero_grad(pt_cuda_exec *x);
void pt_cuda_exec_backward(pt_cuda_exec *x);

/* Copies the device parameters back into the model's values (waits for the stream). */
pt_status pt_cuda_exec_download(pt_cuda_exec *x, pt_error *err);

/* The first CUDA, cuDNN or cuBLAS failure seen while enqueuing, or NULL. */
const char *pt_cuda_exec_error(const pt_cuda_exec *x);

/* Checks that "cuda:N" can be used: the runtime answers, a device N exists. Names the device and
 * the cause in err otherwise. Never touches a device other than N. */
pt_status pt_cuda_check_device(int device, pt_error *err);

#endif
