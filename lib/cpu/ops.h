/* The CPU layer functions: every op's forward and backward, its parameter struct, the losses and the
 * optimizers (internal).
 *
 * Argument order, kept identical by the CUDA backend: outputs, inputs, weights, parameters, then
 * scratch. Shapes are NCHW and fully resolved in the parameter structs at load time.
 *
 * Accumulate rule: every backward ADDS into the gradients it writes (`+=`), parameter gradients and
 * activation gradients alike, so a value read by several nodes (a residual skip) collects all its
 * gradients. The executor zeroes gradient buffers before each backward pass. A NULL gradient
 * pointer means "not needed": skip that computation.
 *
 * Each family lives in one file with forward and backward side by side: conv.c (Conv,
 * ConvTranspose), matmul.c (Gemm, MatMul), elementwise.c (binary and unary ops, copies), pool.c
 * (MaxPool, AveragePool, GlobalAveragePool), norm.c (BatchNormalization, Softmax), shape.c
 * (Concat, Resize), loss.c, optim.c. Per-element arithmetic shared with the CUDA kernels lives in
 * ../pointwise.h. */
#ifndef PT_CPU_OPS_H
#define PT_CPU_OPS_H

#include <stdbool.h>
#include <stdint.h>
#include <partime/model.h>

typedef enum pt_op {
  PT_OP_CONV,           /* in: X, W, B? */
  PT_OP_CONV_TRANSPOSE, /* in: X, W, B? */
  PT_OP_GEMM,           /* in: A, B, C? */
  PT_OP_MATMUL,         /* in: A, B */
  PT_OP_BINARY,         /* Add, Sub, Mul, Div; in: A, B (numpy broadcasting) */
  PT_OP_UNARY,          /* Relu, LeakyRelu, Sigmoid, Tanh; in: X */
  PT_OP_MAXPOOL,        /* in: X */
  PT_OP_AVGPOOL,        /* AveragePool, GlobalAveragePool; in: X */
  PT_OP_BATCHNORM,      /* inference form; in: X, scale, bias, mean, var */
  PT_OP_SOFTMAX,        /* Softmax, LogSoftmax; in: X */
  PT_OP_COPY,           /* Flatten, Reshape, Identity, Dropout, Squeeze, Unsqueeze; in: X, ... */
  PT_OP_CONCAT,         /* in: X0, X1, ... */
  PT_OP_RESIZE,         /* Resize / Upsample, nearest; in: X, ... */
  PT_OP_COUNT
} pt_op;

/* Conv: X (N,C,H,W), W (OC,C/G,KH,KW), B (OC) -> Y (N,OC,OH,OW).
 * ConvTranspose: X (N,C,H,W), W (C,OC/G,KH,KW), B (OC) -> Y (N,OC,OH,OW).
 * 1-D convolutions are run as 2-D with H = 1. */
typedef struct pt_conv_params {
  int N, C, H, W;
  int OC, OH, OW;
  int KH, KW, SH, SW, DH, DW;
  int PT, PL, PB, PR; /* pads: top, left, bottom, right */
  int G;              /* groups */
  bool has_bias;
} pt_conv_params;

/* Y = alpha * op(A) * op(B) + beta * C, op(A) (M,K), op(B) (K,N), C broadcast to (M,N). */
typedef enum pt_gemm_c { PT_GEMM_C_NONE, PT_GEMM_C_SCALAR, PT_GEMM_C_ROW, PT_GEMM_C_COL,
                         PT_GEMM_C_FULL } pt_gemm_c;
typedef struct pt_gemm_params {
  int M, N, K;
  bool trans_a, trans_b;
  float alpha, beta;
  pt_gemm_c c_mode; /* ROW: C has N elements (one per column); COL: M elements */
} pt_gemm_params;

/* Batched matrix product: for b < batch, Y[b] (M,N) = A[b] (M,K) * B[b] (K,N); a_stride or
 * b_stride 0 broadcasts one matrix over the batch. */
typedef struct pt_matmul_params {
  int batch, M, K, N;
  int64_t a_stride, b_stride;
} pt_matmul_params;

typedef enum pt_binary_kind { PT_BIN_ADD, PT_BIN_SUB, PT_BIN_MUL, PT_BIN_DIV } pt_binary_kind;
/* Y = A op B with numpy broadcasting: the output has `ndim` dims `shape`; sa and sb are the element
 * strides of A and B along each output dim (0 where that operand is broadcast). */
typedef struct pt_binary_params {
  pt_binary_kind kind;
  int ndim;
  int64_t shape[PT_MAX_DIMS];
  int64_t sa[PT_MAX_DIMS], sb[PT_MAX_DIMS];
  int64_t n;
} pt_binary_params;

typedef enum pt_unary_kind { PT_UN_RELU, PT_UN_LEAKY_RELU, PT_UN_SIGMOID, PT_UN_TANH } pt_unary_kind;
typedef struct pt_unary_params {
  pt_unary_kind kind;
  float alpha; /* LeakyRelu slope */
  int64_t n;
} pt_unary_params;

/* Pools over X (N,C,H,W) -> Y (N,C,OH,OW). Windows falling partly in the padding: max ignores
 * padding; average divides by the window size when count_include_pad, else by the number of
 * real elements. */
typedef struct pt_pool_params {
  int N, C, H, W, OH, OW;
  int KH, KW, SH, SW, DH, DW;
  int PT, PL, PB, PR;
  bool count_include_pad;
} pt_pool_params;

/* Inference batch norm: Y = scale * (X - mean) / sqrt(var + eps) + bias, per channel of
 * X (N,C,HW). scale and bias are trainable, mean and var are constants. */
typedef struct pt_batchnorm_params {
  int N, C;
  int64_t HW;
  float eps;
} pt_batchnorm_params;

/* Softmax over `dim` elements with stride `inner`, repeated `outer` times; `log` for LogSoftmax. */
typedef struct pt_softmax_params {
  int64_t outer, dim, inner;
  bool log;
} pt_softmax_params;

typedef struct pt_copy_params {
  int64_t n;
} pt_copy_params;

/* Concatenation of n inputs along one axis: each input is (outer, dims[i], inner). */
#define PT_MAX_CONCAT 16
typedef struct pt_concat_params {
  int n;
  int64_t outer, inner;
  int64_t dims[PT_MAX_CONCAT];
} pt_concat_params;

/* Nearest-neighbour resize of X (N,C,H,W) -> Y (N,C,OH,OW); the source index of each output row
 * and column comes from pt_resize_src_index() in ../pointwise.h. */
typedef enum pt_resize_coord { PT_COORD_HALF_PIXEL, PT_COORD_ASYMMETRIC, PT_COORD_ALIGN_CORNERS,
                               PT_COORD_PYTORCH_HALF_PIXEL, PT_COORD_TF_HALF_PIXEL_FOR_NN
} pt_resize_coord;
typedef enum pt_resize_nearest { PT_NEAREST_ROUND_PREFER_FLOOR, PT_NEAREST_ROUND_PREFER_CEIL,
                                 PT_NEAREST_FLOOR, PT_NEAREST_CEIL } pt_resize_nearest;
typedef struct pt_resize_params {
  int N, C, H, W, OH, OW;
  float scale_h, scale_w; /* output / input, as given or derived from sizes */
  pt_resize_coord coord;
  pt_resize_nearest nearest;
} pt_resize_params;

typedef union pt_op_params {
  pt_conv_params conv;
  pt_gemm_params gemm;
  pt_matmul_params matmul;
  pt_binary_params binary;
  pt_unary_params unary;
  pt_pool_params pool;
  pt_batchnorm_params bn;
  pt_softmax_params softmax;
  pt_copy_params copy;
  pt_concat_params concat;
  pt_resize_params resize;
} pt_op_params;

/* direct.c: the forward of convolutions of one group, any stride, no dilation (bias added, then
 * with relu the ReLU, NaN passed on; out overwritten). conv.c's forward runs every such layer
 * there; few taps (C x KH x KW at most PT_DIRECT_MAX_TAPS) is where the executor prefers it to
 * oneDNN. */
enum { PT_DIRECT_MAX_TAPS = 80 };
bool pt_direct_fits(const pt_conv_params *p);
bool pt_direct_few_taps(const pt_conv_params *p);
int64_t pt_direct_scratch(const pt_conv_params *p);
void pt_direct_forward(float *out, const float *in, const float *w, const float *b,
                       const pt_conv_params *p, bool relu, float *scratch);
/* direct.c: the gradients of convolutions of one group, any stride, no dilation and padding under
 * the kernel size, any number of taps: din += and dw += (the accumulate rule). conv.c's backward runs
 * each there where it suits: not on 1x1 layers of 16 channels or more on both sides (a plain
 * matrix product), and the input gradient only with 16 input channels or more and rows of 16
 * pixels or more (its vectors hold 16 of each) */
bool pt_direct_grad_fits(const pt_conv_params *p);
bool pt_direct_weights_suit(const pt_conv_params *p);
bool pt_direct_data_suits(const pt_conv_params *p);
int64_t pt_direct_grad_scratch(const pt_conv_params *p);
void pt_direct_backward_data(float *din, const float *dout, const float *w,
                             const pt_conv_params *p, float *scratch);
void pt_direct_backward_weights(float *dw, const float *dout, const float *in,
                                const pt_conv_params *p, float *scratch);
/* direct.c: ConvTranspose of one group, no dilation, padding under the kernel size: out =,
 * din += and dw += (the bias's gradient is conv.c's) */
bool pt_direct_transpose_fits(const pt_conv_params *p);
int64_t pt_direct_transpose_scratch(const pt_conv_params *p);
void pt_direct_transpose_forward(float *out, const float *in, const float *w, const float *b,
                                 const pt_conv_params *p, float *scratch);
void pt_direct_transpose_backward(float *din, float *dw, const float *dout, const float *in,
                                  const float *w, const pt_conv_params *p, float *scratch);

/* conv.c */
int64_t pt_conv2d_scratch(const pt_conv_params *p); /* floats of scratch forward/backward need */
void pt_conv2d_forward(float *out, const float *in, const float *w, const float *b,
                       const pt_conv_params *p, float *scratch);
void pt_conv2d_backward(float *din, float *dw, float *db, const float *dout, const float *in,
                        const float *w, const pt_conv_params *p, float *scratch);
int64_t pt_conv_transpose2d_scratch(const pt_conv_params *p);
void pt_conv_transpose2d_forward(float *out, const float *in, const float *w, const float *b,
                                 const pt_conv_params *p, float *scratch);
void pt_conv_transpose2d_backward(float *din, float *dw, float *db, const float *dout,
                                  const float *in, const float *w, const pt_conv_params *p,
                                  float *scratch);

/* matmul.c */
void pt_gemm_forward(float *out, const float *a, const float *b, const float *c,
                     const pt_gemm_params *p);
void pt_gemm_backward(float *da, float *db, float *dc, const float *dout, const float *a,
                      const float *b, const pt_gemm_params *p);
void pt_matmul_forward(float *out, const float *a, const float *b, const pt_matmul_params *p);
void pt_matmul_backward(float *da, float *db, const float *dout, const float *a, const float *b,
                        const pt_matmul_params *p);

/* elementwise.c */
void pt_binary_forward(float *out, const float *a, const float *b, const pt_binary_params *p);
void pt_binary_backward(float *da, float *db, const float *dout, const float *a, const float *b,
                        const pt_binary_params *p);
void pt_unary_forward(float *out, const float *in, const pt_unary_params *p);
void pt_unary_backward(float *din, const float *dout, const float *in, const float *out,
                       const pt_unary_params *p);
/* No NaN or infinity among x's n floats. */
bool pt_all_finite(const float *x, int64_t n);

void pt_copy_forward(float *out, const float *in, const pt_copy_params *p);
void pt_copy_backward(float *din, const float *dout, const pt_copy_params *p);

/* pool.c */
void pt_maxpool_forward(float *out, int32_t *argmax, const float *in, const pt_pool_params *p);
void pt_maxpool_backward(float *din, const float *dout, const int32_t *argmax,
                         const pt_pool_params *p);
void pt_avgpool_forward(float *out, const float *in, const pt_pool_params *p);
void pt_avgpool_backward(float *din, const float *dout, const pt_pool_params *p);

/* norm.c */
void pt_batchnorm_forward(float *out, const float *in, const float *scale, const float *bias,
                          const float *mean, const float *var, const pt_batchnorm_params *p);
void pt_batchnorm_backward(float *din, float *dscale, float *dbias, const float *dout,
                           const float *in, const float *scale, const float *mean,
                           const float *var, const pt_batchnorm_params *p);
void pt_softmax_forward(float *out, const float *in, const pt_softmax_params *p);
void pt_softmax_backward(float *din, const float *dout, const float *out,
                         const pt_softmax_params *p);

/* shape.c */
void pt_concat_forward(float *out, const float *const *ins, const pt_concat_params *p);
void pt_concat_backward(float *const *dins, const float *dout, const pt_concat_params *p);
void pt_resize_forward(float *out, const float *in, const pt_resize_params *p);
void pt_resize_backward(float *din, const float *dout, const pt_resize_params *p);

/* loss.c: losses over one frame's output of n elements. Each returns the loss and writes (=, not
 * +=) the gradient of the loss w.r.t. the output into dout when dout is not NULL.
 * Cross-entropy: `out` holds C logits, or C probabilities when out_is_prob (the model ends in
 * Softmax), target a class index in [0, C). */
float pt_cross_entropy(float *dout, const float *out, int64_t target, int C, bool out_is_prob);
/* Mean squared error: mean over n of (out - target)^2. */
float pt_mse(float *dout, const float *out, const float *target, int64_t n);

/* optim.c: one step on n weights with gradient g, PyTorch's update rules.
 * SGD: g' = g + wd*w; m = momentum*m + g'; w -= lr*m (m unused when momentum == 0).
 * Adam: g' = g + wd*w; m, v moments; t is the 1-based step count for bias correction. */
void pt_sgd_step(float *w, const float *g, float *m, int64_t n, float lr, float momentum,
                 float wd);
void pt_adam_step(float *w, const float *g, float *m, float *v, int64_t n, float lr, float beta1,
                  float beta2, float eps, float wd, int64_t t);

/* blas.c: sets the BLAS library to one thread (parallelism comes from stages); idempotent. */
void pt_blas_init(void);

/* blas.c: the name of OpenBLAS's kernels when they are its generic ones (no AVX) on a CPU with
 * AVX2 or AVX-512, and in *better (may be NULL) the OPENBLAS_CORETYPE that fits the CPU; NULL
 * when the kernels fit. */
const char *pt_blas_slow_kernels(const char **better);

/* blas.c: OpenBLAS's kernels for this CPU's widest vectors (SkylakeX: AVX-512 F, VL and BW;
 * Haswell: AVX2), as OPENBLAS_CORETYPE names them; NULL below AVX2 or off x86-64. */
const char *pt_blas_fitting_core(void);

#endif
