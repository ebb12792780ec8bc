/* The CUDA backend's own kernels: everything cuDNN and cuBLAS do not do (internal).
 *
 * Each launcher enqueues one kernel on stream s over n elements (see launch.h); the argument
 * structs hold device pointers and the op's resolved parameter struct from ../cpu/ops.h, so a
 * kernel and its CPU twin read the same description. The per-element arithmetic comes from
 * ../pointwise.h, shared with lib/cpu. Backward kernels follow the accumulate rule of ops.h: they
 * ADD into gradients; a NULL gradient pointer means "not needed".
 *
 * Reductions (bias and scale gradients, a broadcast operand's gradient, pooling and resize
 * backward) accumulate with atomic adds, so on a GPU their float sums are not bit-reproducible
 * from run to run; the tests compare against the CPU within a normalised tolerance. */
#ifndef PT_CUDA_KERNELS_H
#define PT_CUDA_KERNELS_H

#include <stdint.h>
#include <cuda_runtime.h>
#include "../cpu/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* y[i] += alpha * x[i] (copy backward, gradients that pass through a stage, sums of gradients) */
typedef struct ptk_axpy_args {
  float *y;
  const float *x;
  float alpha;
} ptk_axpy_args;
void ptk_axpy(cudaStream_t s, int64_t n, const ptk_axpy_args *a);

/* y[i] = value */
typedef struct ptk_fill_args {
  float *y;
  float value;
} ptk_fill_args;
void ptk_fill(cudaStream_t s, int64_t n, const ptk_fill_args *a);

/* Binary ops with broadcasting; n = p.n (output elements). */
typedef struct ptk_binary_args {
  float *out;
  const float *a, *b;
  pt_binary_params p;
} ptk_binary_args;
void ptk_binary_fwd(cudaStream_t s, int64_t n, const ptk_binary_args *a);
typedef struct ptk_binary_bwd_args {
  float *da, *db;
  const float *dout, *a, *b;
  pt_binary_params p;
} ptk_binary_bwd_args;
void ptk_binary_bwd(cudaStream_t s, int64_t n, const ptk_binary_bwd_args *a);

/* Unary activations (all four kinds; the backend sends LeakyRelu here, the rest to cuDNN). */
typedef struct ptk_unary_args {
  float *out;
  const float *in;
  pt_unary_params p;
} ptk_unary_args;
void ptk_unary_fwd(cudaStream_t s, int64_t n, const ptk_unary_args *a);
typedef struct ptk_unary_bwd_args {
  float *din;
  const float *dout, *in, *out;
  pt_unary_params p;
} ptk_unary_bwd_args;
void ptk_unary_bwd(cudaStream_t s, int64_t n, const ptk_unary_bwd_args *a);

/* Pools, for the shapes cuDNN cannot express (asymmetric padding, dilation, ceil mode); n is the
 * number of output elements, forward and backward (backward scatters from them into din). */
typedef struct ptk_pool_args {
  float *out;
  int32_t *argmax;
  const float *in;
  pt_pool_params p;
} ptk_pool_args;
void ptk_maxpool_fwd(cudaStream_t s, int64_t n, const ptk_pool_args *a);
void ptk_avgpool_fwd(cudaStream_t s, int64_t n, const ptk_pool_args *a);
typedef struct ptk_pool_bwd_args {
  float *din;
  const float *dout;
  const int32_t *argmax;
  pt_pool_params p;
} ptk_pool_bwd_args;
void ptk_maxpool_bwd(cudaStream_t s, int64_t n, const ptk_pool_bwd_args *a);
void ptk_avgpool_bwd(cudaStream_t s, int64_t n, const ptk_pool_bwd_args *a);

/* Inference batch norm; n = N*C*HW. */
typedef struct ptk_bn_args {
  float *out;
  const float *in, *scale, *bias, *mean, *var;
  pt_batchnorm_params p;
} ptk_bn_args;
void ptk_batchnorm_fwd(cudaStream_t s, int64_t n, const ptk_bn_args *a);
typedef struct ptk_bn_bwd_args {
  float *din, *dscale, *dbias;
  const float *dout, *in, *scale, *mean, *var;
  pt_batchnorm_params p;
} ptk_bn_bwd_args;
void ptk_batchnorm_bwd(cudaStream_t s, int64_t n, const ptk_bn_bwd_args *a);

/* Softmax / LogSoftmax; n = outer * inner (one row per element). */
typedef struct ptk_softmax_args {
  float *out;
  const float *in;
  pt_softmax_params p;
} ptk_softmax_args;
void ptk_softmax_fwd(cudaStream_t s, int64_t n, const ptk_softmax_args *a);
typedef struct ptk_softmax_bwd_args {
  float *din;
  const float *dout, *out;
  pt_softmax_params p;
} ptk_softmax_bwd_args;
void ptk_softmax_bwd(cudaStream_t s, int64_t n, const ptk_softmax_bwd_args *a);

/* Concat: one launch per input i (n = outer * dims[i] * inner), writing its slice at `offset`
 * (the sum of the dims before it). */
typedef struct ptk_concat_args {
  float *out;
  const float *in;
  int64_t dim, offset, total, inner;
} ptk_concat_args;
void ptk_concat_fwd(cudaStream_t s, int64_t n, const ptk_concat_args *a);
typedef struct ptk_concat_bwd_args {
  float *din;
  const float *dout;
  int64_t dim, offset, total, inner;
} ptk_concat_bwd_args;
void ptk_concat_bwd(cudaStream_t s, int64_t n, const ptk_concat_bwd_args *a);

/* Nearest resize; n = N*C*OH*OW. */
typedef struct ptk_resize_args {
  float *out;
  const float *in;
  pt_resize_params p;
} ptk_resize_args;
void ptk_resize_fwd(cudaStream_t s, int64_t n, const ptk_resize_args *a);
typedef struct ptk_resize_bwd_args {
  float *din;
  const float *dout;
  pt_resize_params p;
} ptk_resize_bwd_args;
void ptk_resize_bwd(cudaStream_t s, int64_t n, const ptk_resize_bwd_args *a);

/* Gemm's C term: out (M,N) += beta * C broadcast per p.c_mode; n = M*N. Backward: dc += beta *
 * (dout reduced to C's shape); n = M*N. */
typedef struct ptk_gemm_c_args {
  float *out;
  const float *c;
  pt_gemm_params p;
} ptk_gemm_c_args;
void ptk_gemm_c_fwd(cudaStream_t s, int64_t n, const ptk_gemm_c_args *a);
typedef struct ptk_gemm_c_bwd_args {
  float *dc;
  const float *dout;
  pt_gemm_params p;
} ptk_gemm_c_bwd_args;
void ptk_gemm_c_bwd(cudaStream_t s, int64_t n, const ptk_gemm_c_bwd_args *a);

/* Convolution padding cuDNN cannot express (asymmetric): copy X (N,C,H,W) into a zero-padded
 * (N,C,H+pt+pb,W+pl+pr) buffer; backward adds the interior of the padded gradient into dX.
 * n = elements of the padded tensor. */
typedef struct ptk_pad_args {
  float *out;
  const float *in;
  int N, C, H, W, pt, pl, pb, pr;
} ptk_pad_args;
void ptk_pad2d_fwd(cudaStream_t s, int64_t n, const ptk_pad_args *a);
typedef struct ptk_pad_bwd_args {
  float *din;
  const float *dout;
  int N, C, H, W, pt, pl, pb, pr;
} ptk_pad_bwd_args;
void ptk_pad2d_bwd(cudaStream_t s, int64_t n, const ptk_pad_bwd_args *a);

/* Losses over one frame's output of n elements, as cpu/loss.c: the gradient (=, not +=) into
 * dout and the loss into *loss (device). Cross-entropy: n = 1 (one thread; C is small). MSE:
 * launch ptk_mse_grad with n elements and ptk_mse_loss with n = 1. */
typedef struct ptk_ce_args {
  float *loss, *dout;
  const float *out;
  const int64_t *target;
  int C;
  int out_is_prob;
} ptk_ce_args;
void ptk_cross_entropy(cudaStream_t s, int64_t n, const ptk_ce_args *a);
typedef struct ptk_mse_args {
  float *loss, *dout;
  const float *out, *target;
  int64_t count;
} ptk_mse_args;
void ptk_mse_grad(cudaStream_t s, int64_t n, const ptk_mse_args *a);
void ptk_mse_loss(cudaStream_t s, int64_t n, const ptk_mse_args *a);

/* Optimizer steps, applied only where *ok != 0 (a device flag: the update was judged finite on
 * the device, so no host round trip decides it). Adam reads its 1-based step count from *t. */
typedef struct ptk_sgd_args {
  float *w, *m;
  const float *g;
  float lr, momentum, wd;
  const int *ok;
} ptk_sgd_args;
void ptk_sgd(cudaStream_t s, int64_t n, const ptk_sgd_args *a);
typedef struct ptk_adam_args {
  float *w, *m, *v;
  const float *g;
  float lr, beta1, beta2, eps, wd;
  const int64_t *t;
  const int *ok;
} ptk_adam_args;
void ptk_adam(cudaStream_t s, int64_t n, const ptk_adam_args *a);

/* *flag = 0 when any of x[0..n) is NaN or infinite (left alone otherwise). */
typedef struct ptk_finite_args {
  const float *x;
  int *flag;
} ptk_finite_args;
void ptk_check_finite(cudaStream_t s, int64_t n, const ptk_finite_args *a);

/* dst[i] = src[i] when *cond != 0 (weight backup and restore decided on the device). */
typedef struct ptk_copy_if_args {
  float *dst;
  const float *src;
  const int *cond;
} ptk_copy_if_args;
void ptk_copy_if(cudaStream_t s, int64_t n, const ptk_copy_if_args *a);

#ifdef __cplusplus
}
#endif

#endif
