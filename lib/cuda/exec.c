/* The CUDA executor (see exec.h): one switch on the op for forward and one for backward, like
 * ../exec.c, with every node's cuDNN descriptors and algorithms prepared at init.
 *
 * Convolutions: cuDNN takes symmetric padding only, so a Conv whose pads differ top/bottom or
 * left/right runs on an explicitly padded copy of its input (kernels.h ptk_pad2d), and a
 * ConvTranspose computes its unpadded output and crops it. ConvTranspose is cuDNN's backward-data
 * pass of the convolution with the same filter; its backward is the forward convolution and the
 * backward-filter pass with the roles of input and output swapped. cuDNN is held to FMA math (no
 * TF32) so results agree with the CPU backend to float rounding.
 *
 * Pooling runs on cuDNN where its window arithmetic gives the model's output size (symmetric pads,
 * no dilation, floor rounding), on the own kernels otherwise. Relu, Sigmoid and Tanh run on cuDNN;
 * LeakyRelu on the own kernel. Gemm and MatMul are row-major products computed by column-major
 * cuBLAS as the transposed product (C^T = B^T A^T). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cublas_v2.h>
#include <cudnn.h>
#include "exec.h"
#include "kernels.h"
#include "../exec.h"

#define PT_ALIGN_FLOATS 64 /* 256-byte alignment of every device buffer */

typedef enum cnode_kind { CN_KERNEL, CN_CONV, CN_CONVT, CN_POOL, CN_ACT } cnode_kind;

typedef struct cnode {
  cnode_kind kind;
  cudnnTensorDescriptor_t x, y, b; /* conv: x = the (padded) input, y = the (full) output */
  cudnnTensorDescriptor_t o;       /* an asymmetric ConvTranspose's cropped output */
  cudnnFilterDescriptor_t w;
  cudnnConvolutionDescriptor_t conv;
  cudnnConvolutionFwdAlgo_t fwd;
  cudnnConvolutionBwdDataAlgo_t bwd_data;
  cudnnConvolutionBwdFilterAlgo_t bwd_filter;
  bool asym;          /* padding applied by ptk_pad2d, cuDNN sees none */
  int64_t pad_floats; /* size of the padded input (Conv) or full output (ConvTranspose) */
  cudnnPoolingDescriptor_t pool;
  cudnnActivationDescriptor_t act;
} cnode;

struct pt_cuda_exec {
  pt_model *m;
  int first, end;
  bool train;
  int device;
  cudaStream_t stream;
  cudnnHandle_t dnn;
  cublasHandle_t blas;
  float **act, **grad;
  bool *needs_grad;
  int *params, n_params;
  void **aux;
  cnode *nodes;
  float *act_arena, *grad_arena, *val_arena;
  unsigned char *aux_arena;
  float *pad_a, *pad_b; /* two padded tensors (workspace) */
  void *ws;             /* cuDNN workspace */
  size_t ws_bytes;
  int64_t grad_floats;
  char error[256];
};

static int64_t round_up(int64_t n, int64_t a) {
  return (n + a - 1) / a * a;
}

/* ---- errors -----------------------------------------------------------------------------------
 */

/* Enqueue-time failures are kept (the first one) and reported by pt_cuda_exec_error(). */
static void note(pt_cuda_exec *x, const char *what, const char *msg) {
  if (!x->error[0]) snprintf(x->error, sizeof x->error, "cuda:%d: %s: %s", x->device, what, msg);
}
#define CK_RT(x, call)                                                                             \
  do {                                                                                             \
    cudaError_t e_ = (call);                                                                       \
    if (e_ != cudaSuccess) note((x), #call, cudaGetErrorString(e_));                               \
  } while (0)
#define CK_DNN(x, call)                                                                            \
  do {                                                                                             \
    cudnnStatus_t e_ = (call);                                                                     \
    if (e_ != CUDNN_STATUS_SUCCESS) note((x), #call, cudnnGetErrorString(e_));                     \
  } while (0)
#define CK_BLAS(x, call)                                                                           \
  do {                                                                                             \
    cublasStatus_t e_ = (call);                                                                    \
    if (e_ != CUBLAS_STATUS_SUCCESS) note((x), #call, cublasGetStatusString(e_));                  \
  } while (0)

const char *pt_cuda_exec_error(const pt_cuda_exec *x) {
  return x->error[0] ? x->error : NULL;
}

pt_status pt_cuda_check_device(int device, pt_error *err) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e == cudaErrorNoDevice || (e == cudaSuccess && count == 0))
    return pt_error_set(err, PT_ERR_DEVICE, "device 'cuda:%d': this machine has no CUDA GPU",
                        device);
  if (e == cudaErrorInsufficientDriver)
    return pt_error_set(err, PT_ERR_DEVICE,
                        "device 'cuda:%d': the NVIDIA driver is missing or older than this build "
                        "of the CUDA runtime needs (%s)",
                        device, cudaGetErrorString(e));
  if (e != cudaSuccess)
    return pt_error_set(err, PT_ERR_DEVICE, "device 'cuda:%d': the CUDA runtime failed: %s", device,
                        cudaGetErrorString(e));
  if (device < 0 || device >= count)
    return pt_error_set(err, PT_ERR_DEVICE,
                        "device 'cuda:%d': no such GPU (this machine has %d: cuda:0-%d)", device,
                        count, count - 1);
  return PT_OK;
}

/* ---- the algorithm cache ----------------------------------------------------------------------
 */

/* cuDNN's heuristics are asked once per convolution shape per process. */
typedef struct algo_entry {
  pt_conv_params p;
  bool transposed;
  int device;
  cudnnConvolutionFwdAlgo_t fwd;
  cudnnConvolutionBwdDataAlgo_t bwd_data;
  cudnnConvolutionBwdFilterAlgo_t bwd_filter;
} algo_entry;

#define PT_ALGO_CACHE 256
static algo_entry algo_cache[PT_ALGO_CACHE];
static int algo_cache_n;
static pthread_mutex_t algo_mu = PTHREAD_MUTEX_INITIALIZER;

static bool algo_lookup(algo_entry *e) {
  bool found = false;
  pthread_mutex_lock(&algo_mu);
  for (int i = 0; i < algo_cache_n && !found; i++) {
    const algo_entry *c = &algo_cache[i];
    if (c->transposed == e->transposed && c->device == e->device &&
        memcmp(&c->p, &e->p, sizeof c->p) == 0) {
      *e = *c;
      found = true;
    }
  }
  pthread_mutex_unlock(&algo_mu);
  return found;
}

static void algo_store(const algo_entry *e) {
  pthread_mutex_lock(&algo_mu);
  if (algo_cache_n < PT_ALGO_CACHE) algo_cache[algo_cache_n++] = *e;
  pthread_mutex_unlock(&algo_mu);
}

/* ---- init -------------------------------------------------------------------------------------
 */

static cudnnTensorDescriptor_t tensor4(pt_cuda_exec *x, int n, int c, int h, int w) {
  cudnnTensorDescriptor_t d = NULL;
  CK_DNN(x, cudnnCreateTensorDescriptor(&d));
  if (d) CK_DNN(x, cudnnSetTensor4dDescriptor(d, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, c, h, w));
  return d;
}

/* Conv and ConvTranspose: descriptors, algorithms, workspace and pad sizes. In cuDNN's terms a
 * ConvTranspose is the convolution from its output (cuDNN's x) to its input (cuDNN's y). */
static void plan_conv(pt_cuda_exec *x, cnode *c, const pt_node *n, size_t *ws) {
  const pt_conv_params *p = &n->p.conv;
  bool t = n->op == PT_OP_CONV_TRANSPOSE;
  c->kind = t ? CN_CONVT : CN_CONV;
  c->asym = p->PT != p->PB || p->PL != p->PR;
  int ph = c->asym ? 0 : p->PT, pw = c->asym ? 0 : p->PL;
  /* the convolution's input side: Conv's (padded) X, ConvTranspose's (full) Y */
  int ic = t ? p->OC : p->C, oc = t ? p->C : p->OC;
  int ih = t ? p->OH : p->H, iw = t ? p->OW : p->W;
  int oh = t ? p->H : p->OH, ow = t ? p->W : p->OW;
  if (c->asym) {
    ih += p->PT + p->PB;
    iw += p->PL + p->PR;
    c->pad_floats = (int64_t)p->N * ic * ih * iw;
  }
  c->x = tensor4(x, p->N, ic, ih, iw);
  c->y = tensor4(x, p->N, oc, oh, ow);
  c->b = tensor4(x, 1, p->OC, 1, 1);
  if (t && c->asym) c->o = tensor4(x, p->N, p->OC, p->OH, p->OW);
  CK_DNN(x, cudnnCreateFilterDescriptor(&c->w));
  /* the weights are (out, in/G, kh, kw) for Conv and (C, OC/G, kh, kw) for ConvTranspose: in both
   * cases (cuDNN's output channels, cuDNN's input channels / G) */
  if (c->w)
    CK_DNN(x, cudnnSetFilter4dDescriptor(c->w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, oc, ic / p->G,
                                         p->KH, p->KW));
  CK_DNN(x, cudnnCreateConvolutionDescriptor(&c->conv));
  if (c->conv) {
    CK_DNN(x, cudnnSetConvolution2dDescriptor(c->conv, ph, pw, p->SH, p->SW, p->DH, p->DW,
                                              CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    CK_DNN(x, cudnnSetConvolutionGroupCount(c->conv, p->G));
    CK_DNN(x, cudnnSetConvolutionMathType(c->conv, CUDNN_FMA_MATH));
  }
  if (x->error[0]) return;

  algo_entry e = {.p = *p, .transposed = t, .device = x->device};
  if (!algo_lookup(&e)) {
    int got = 0;
    cudnnConvolutionFwdAlgoPerf_t fp[8];
    cudnnConvolutionBwdDataAlgoPerf_t dp[8];
    cudnnConvolutionBwdFilterAlgoPerf_t wp[8];
    CK_DNN(x,
           cudnnGetConvolutionForwardAlgorithm_v7(x->dnn, c->x, c->w, c->conv, c->y, 8, &got, fp));
    e.fwd = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
    for (int i = got - 1; i >= 0; i--)
      if (fp[i].status == CUDNN_STATUS_SUCCESS) e.fwd = fp[i].algo;
    got = 0;
    CK_DNN(x, cudnnGetConvolutionBackwardDataAlgorithm_v7(x->dnn, c->w, c->y, c->conv, c->x, 8,
                                                          &got, dp));
    e.bwd_data = CUDNN_CONVOLUTION_BWD_DATA_ALGO_0;
    for (int i = got - 1; i >= 0; i--)
      if (dp[i].status == CUDNN_STATUS_SUCCESS) e.bwd_data = dp[i].algo;
    got = 0;
    if (x->train) {
      CK_DNN(x, cudnnGetConvolutionBackwardFilterAlgorithm_v7(x->dnn, c->x, c->y, c->conv, c->w, 8,
                                                              &got, wp));
    }
    e.bwd_filter = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0;
    for (int i = got - 1; i >= 0; i--)
      if (wp[i].status == CUDNN_STATUS_SUCCESS) e.bwd_filter = wp[i].algo;
    if (x->error[0]) return;
    algo_store(&e);
  }
  c->fwd = e.fwd;
  c->bwd_data = e.bwd_data;
  c->bwd_filter = e.bwd_filter;
  size_t s = 0;
  /* Conv forward and ConvTranspose backward run the forward convolution; the other direction
   * runs backward data; training adds backward filter. */
  CK_DNN(x, cudnnGetConvolutionForwardWorkspaceSize(x->dnn, c->x, c->w, c->conv, c->y, c->fwd, &s));
  if (s > *ws) *ws = s;
  s = 0;
  CK_DNN(x, cudnnGetConvolutionBackwardDataWorkspaceSize(x->dnn, c->w, c->y, c->conv, c->x,
                                                         c->bwd_data, &s));
  if (s > *ws) *ws = s;
  if (x->train) {
    s = 0;
    CK_DNN(x, cudnnGetConvolutionBackwardFilterWorkspaceSize(x->dnn, c->x, c->y, c->conv, c->w,
                                                             c->bwd_filter, &s));
    if (s > *ws) *ws = s;
  }
}

/* cuDNN pooling where its output size is the model's; otherwise the own kernels. */
static void plan_pool(pt_cuda_exec *x, cnode *c, const pt_node *n) {
  const pt_pool_params *p = &n->p.pool;
  bool global = n->op == PT_OP_AVGPOOL && p->KH == p->H && p->KW == p->W;
  if (p->DH != 1 || p->DW != 1 || p->PT != p->PB || p->PL != p->PR) return;
  if ((p->H + 2 * p->PT - p->KH) / p->SH + 1 != p->OH ||
      (p->W + 2 * p->PL - p->KW) / p->SW + 1 != p->OW)
    return;
  if (n->op == PT_OP_MAXPOOL && (p->PT >= p->KH || p->PL >= p->KW)) return;
  cudnnPoolingMode_t mode = n->op == PT_OP_MAXPOOL ? CUDNN_POOLING_MAX
                            : p->count_include_pad ? CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING
                                                   : CUDNN_POOLING_AVERAGE_COUNT_EXCLUDE_PADDING;
  (void)global;
  CK_DNN(x, cudnnCreatePoolingDescriptor(&c->pool));
  if (c->pool)
    CK_DNN(x, cudnnSetPooling2dDescriptor(c->pool, mode, CUDNN_PROPAGATE_NAN, p->KH, p->KW, p->PT,
                                          p->PL, p->SH, p->SW));
  c->x = tensor4(x, p->N, p->C, p->H, p->W);
  c->y = tensor4(x, p->N, p->C, p->OH, p->OW);
  c->kind = CN_POOL;
}

static void plan_act(pt_cuda_exec *x, cnode *c, const pt_node *n) {
  const pt_unary_params *p = &n->p.unary;
  cudnnActivationMode_t mode;
  switch (p->kind) {
  case PT_UN_RELU:
    mode = CUDNN_ACTIVATION_RELU;
    break;
  case PT_UN_SIGMOID:
    mode = CUDNN_ACTIVATION_SIGMOID;
    break;
  case PT_UN_TANH:
    mode = CUDNN_ACTIVATION_TANH;
    break;
  default:
    return; /* LeakyRelu: own kernel */
  }
  if (p->n > 0x7fffffff) return;
  CK_DNN(x, cudnnCreateActivationDescriptor(&c->act));
  if (c->act) CK_DNN(x, cudnnSetActivationDescriptor(c->act, mode, CUDNN_PROPAGATE_NAN, 0.0));
  c->x = tensor4(x, 1, 1, 1, (int)p->n);
  c->kind = CN_ACT;
}

static void free_cnode(cnode *c) {
  if (c->x) cudnnDestroyTensorDescriptor(c->x);
  if (c->y) cudnnDestroyTensorDescriptor(c->y);
  if (c->o) cudnnDestroyTensorDescriptor(c->o);
  if (c->b) cudnnDestroyTensorDescriptor(c->b);
  if (c->w) cudnnDestroyFilterDescriptor(c->w);
  if (c->conv) cudnnDestroyConvolutionDescriptor(c->conv);
  if (c->pool) cudnnDestroyPoolingDescriptor(c->pool);
  if (c->act) cudnnDestroyActivationDescriptor(c->act);
}

static bool in_range(const pt_cuda_exec *x, int node) {
  return node >= x->first && node < x->end;
}

bool pt_cuda_exec_is_external(const pt_cuda_exec *x, int v) {
  const pt_exec range = {.m = x->m, .first = x->first, .end = x->end};
  return pt_exec_is_external(&range, v);
}

/* Whether value v is read by a node in range. */
static bool read_in_range(const pt_cuda_exec *x, int v) {
  for (int i = x->first; i < x->end; i++)
    for (int k = 0; k < x->m->nodes[i].n_in; k++)
      if (x->m->nodes[i].in[k] == v) return true;
  return false;
}

static pt_status dev_alloc(pt_cuda_exec *x, void **p, size_t bytes, const char *what,
                           pt_error *err) {
  *p = NULL;
  if (!bytes) return PT_OK;
  cudaError_t e = cudaMalloc(p, bytes);
  if (e != cudaSuccess) {
    *p = NULL;
    return pt_error_set(err, e == cudaErrorMemoryAllocation ? PT_ERR_NOMEM : PT_ERR_DEVICE,
                        "cuda:%d: could not allocate %zu bytes of device memory for %s: %s",
                        x->device, bytes, what, cudaGetErrorString(e));
  }
  return PT_OK;
}

pt_status pt_cuda_exec_new(pt_model *m, int first, int end, bool train, bool grad_external,
                           int device, cudaStream_t stream, pt_cuda_exec **out, pt_error *err) {
  *out = NULL;
  if (first < 0 || end > m->n_nodes || first >= end)
    return pt_error_set(err, PT_ERR_INVALID, "%s: invalid node range [%d, %d) of %d nodes", m->name,
                        first, end, m->n_nodes);
  pt_status st = pt_cuda_check_device(device, err);
  if (st) return st;
  pt_cuda_exec *x = calloc(1, sizeof *x);
  if (!x) return pt_error_set(err, PT_ERR_NOMEM, "out of memory");
  x->m = m;
  x->first = first;
  x->end = end;
  x->train = train;
  x->device = device;
  x->stream = stream;
  int nv = m->n_vals, nn = end - first;
  x->act = calloc(nv, sizeof *x->act);
  x->grad = calloc(nv, sizeof *x->grad);
  x->needs_grad = calloc(nv, sizeof *x->needs_grad);
  x->params = calloc(nv, sizeof *x->params);
  x->aux = calloc(nn, sizeof *x->aux);
  x->nodes = calloc(nn, sizeof *x->nodes);
  if (!x->act || !x->grad || !x->needs_grad || !x->params || !x->aux || !x->nodes) {
    pt_cuda_exec_free(x);
    return pt_error_set(err, PT_ERR_NOMEM, "out of memory");
  }
  if (train)
    pt_exec_plan_grads(m, first, end, grad_external, x->needs_grad, x->params, &x->n_params);

  if (cudaSetDevice(device) != cudaSuccess) goto device_fail;
  if (cudnnCreate(&x->dnn) != CUDNN_STATUS_SUCCESS) {
    x->dnn = NULL;
    note(x, "cudnnCreate", "cuDNN could not start");
    goto device_fail;
  }
  if (cublasCreate(&x->blas) != CUBLAS_STATUS_SUCCESS) {
    x->blas = NULL;
    note(x, "cublasCreate", "cuBLAS could not start");
    goto device_fail;
  }
  CK_DNN(x, cudnnSetStream(x->dnn, stream));
  CK_BLAS(x, cublasSetStream(x->blas, stream));

  /* Size table: activations produced in range, gradients, device copies of the weights and
   * constants read in range, aux, pads, cuDNN workspace. */
  int64_t act_floats = 0, val_floats = 0, aux_bytes = 0, pad_floats = 0;
  for (int v = 0; v < nv; v++) {
    const pt_value *val = &m->vals[v];
    if (val->is_int) continue;
    if (val->producer >= 0 && in_range(x, val->producer))
      act_floats += round_up(val->numel, PT_ALIGN_FLOATS);
    else if ((val->kind == PT_VAL_PARAM || val->kind == PT_VAL_CONST) && read_in_range(x, v))
      val_floats += round_up(val->numel, PT_ALIGN_FLOATS);
    if (x->needs_grad[v]) x->grad_floats += round_up(val->numel, PT_ALIGN_FLOATS);
  }
  size_t ws = 0;
  for (int i = first; i < end && !x->error[0]; i++) {
    const pt_node *n = &m->nodes[i];
    cnode *c = &x->nodes[i - first];
    switch (n->op) {
    case PT_OP_CONV:
    case PT_OP_CONV_TRANSPOSE:
      plan_conv(x, c, n, &ws);
      break;
    case PT_OP_MAXPOOL:
    case PT_OP_AVGPOOL:
      plan_pool(x, c, n);
      break;
    case PT_OP_UNARY:
      plan_act(x, c, n);
      break;
    default:
      break;
    }
    if (c->pad_floats > pad_floats) pad_floats = c->pad_floats;
    if (c->kind == CN_KERNEL) aux_bytes += round_up(n->aux_bytes, 256);
  }
  if (x->error[0]) goto device_fail;
  pad_floats = round_up(pad_floats, PT_ALIGN_FLOATS);
  x->ws_bytes = ws;
  if ((st = dev_alloc(x, (void **)&x->act_arena, act_floats * sizeof(float), "activations", err)) ||
      (st = dev_alloc(x, (void **)&x->grad_arena, x->grad_floats * sizeof(float), "gradients",
                      err)) ||
      (st = dev_alloc(x, (void **)&x->val_arena, val_floats * sizeof(float), "weights", err)) ||
      (st = dev_alloc(x, (void **)&x->aux_arena, aux_bytes, "pooling indices", err)) ||
      (st = dev_alloc(x, (void **)&x->pad_a, 2 * pad_floats * sizeof(float), "padding", err)) ||
      (st = dev_alloc(x, &x->ws, ws, "the cuDNN workspace", err))) {
    pt_cuda_exec_free(x);
    return st;
  }
  x->pad_b = x->pad_a ? x->pad_a + pad_floats : NULL;

  /* Carve and upload. */
  float *a = x->act_arena, *g = x->grad_arena, *w = x->val_arena;
  for (int v = 0; v < nv; v++) {
    pt_value *val = &m->vals[v];
    if (val->is_int) continue;
    if (val->producer >= 0 && in_range(x, val->producer)) {
      x->act[v] = a;
      a += round_up(val->numel, PT_ALIGN_FLOATS);
    } else if ((val->kind == PT_VAL_PARAM || val->kind == PT_VAL_CONST) && read_in_range(x, v)) {
      x->act[v] = w;
      CK_RT(x, cudaMemcpy(w, val->data, val->numel * sizeof(float), cudaMemcpyHostToDevice));
      w += round_up(val->numel, PT_ALIGN_FLOATS);
    }
    if (x->needs_grad[v]) {
      x->grad[v] = g;
      g += round_up(val->numel, PT_ALIGN_FLOATS);
    }
  }
  unsigned char *ax = x->aux_arena;
  for (int i = first; i < end; i++)
    if (x->nodes[i - first].kind == CN_KERNEL && m->nodes[i].aux_bytes) {
      x->aux[i - first] = ax;
      ax += round_up(m->nodes[i].aux_bytes, 256);
    }
  if (act_floats) CK_RT(x, cudaMemset(x->act_arena, 0, act_floats * sizeof(float)));
  if (x->grad_floats) CK_RT(x, cudaMemset(x->grad_arena, 0, x->grad_floats * sizeof(float)));
  if (x->error[0]) goto device_fail;
  *out = x;
  return PT_OK;

device_fail:
  st = pt_error_set(err, PT_ERR_DEVICE, "%s: stage of nodes [%d, %d) on %s", m->name, first, end,
                    x->error[0] ? x->error : "cudaSetDevice failed");
  pt_cuda_exec_free(x);
  return st;
}

void pt_cuda_exec_free(pt_cuda_exec *x) {
  if (!x) return;
  cudaSetDevice(x->device);
  if (x->stream) cudaStreamSynchronize(x->stream);
  for (int i = 0; x->nodes && i < x->end - x->first; i++) free_cnode(&x->nodes[i]);
  if (x->dnn) cudnnDestroy(x->dnn);
  if (x->blas) cublasDestroy(x->blas);
  cudaFree(x->act_arena);
  cudaFree(x->grad_arena);
  cudaFree(x->val_arena);
  cudaFree(x->aux_arena);
  cudaFree(x->pad_a);
  cudaFree(x->ws);
  free(x->nodes);
  free(x->act);
  free(x->grad);
  free(x->needs_grad);
  free(x->params);
  free(x->aux);
  free(x);
}

void pt_cuda_exec_bind(pt_cuda_exec *x, int value, const float *dev) {
  x->act[value] = (float *)dev;
}

float *pt_cuda_exec_act(const pt_cuda_exec *x, int value) {
  return x->act[value];
}

float *pt_cuda_exec_grad(const pt_cuda_exec *x, int value) {
  return x->grad[value];
}

int pt_cuda_exec_n_params(const pt_cuda_exec *x) {
  return x->n_params;
}

int pt_cuda_exec_param(const pt_cuda_exec *x, int i) {
  return x->params[i];
}

float *pt_cuda_exec_param_data(const pt_cuda_exec *x, int i) {
  return x->act[x->params[i]];
}

pt_status pt_cuda_exec_download(pt_cuda_exec *x, pt_error *err) {
  cudaSetDevice(x->device);
  cudaError_t e = cudaStreamSynchronize(x->stream);
  for (int i = 0; i < x->n_params && e == cudaSuccess; i++) {
    pt_value *val = &x->m->vals[x->params[i]];
    e = cudaMemcpy(val->data, x->act[x->params[i]], val->numel * sizeof(float),
                   cudaMemcpyDeviceToHost);
  }
  if (e != cudaSuccess)
    return pt_error_set(err, PT_ERR_DEVICE, "cuda:%d: could not read the weights back: %s",
                        x->device, cudaGetErrorString(e));
  return PT_OK;
}

void pt_cuda_exec_zero_grad(pt_cuda_exec *x) {
  if (x->grad_floats)
    CK_RT(x, cudaMemsetAsync(x->grad_arena, 0, x->grad_floats * sizeof(float), x->stream));
}

/* ---- products ---------------------------------------------------------------------------------
 */

/* Row-major C (M,N) = alpha * op(A) * op(B) + beta * C with A stored (M,K) or (K,M) when ta and B
 * stored (K,N) or (N,K) when tb, batched with element strides (0: one matrix for the batch). */
static void rm_gemm(pt_cuda_exec *x, bool ta, bool tb, int M, int N, int K, float alpha,
                    const float *A, int64_t sa, const float *B, int64_t sb, float beta, float *C,
                    int64_t sc, int batch) {
  const int lda = ta ? M : K, ldb = tb ? K : N;
  const cublasOperation_t oa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, ob = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  if (batch == 1)
    CK_BLAS(x, cublasSgemm(x->blas, ob, oa, N, M, K, &alpha, B, ldb, A, lda, &beta, C, N));
  else
    CK_BLAS(x, cublasSgemmStridedBatched(x->blas, ob, oa, N, M, K, &alpha, B, ldb, sb, A, lda, sa,
                                         &beta, C, N, sc, batch));
}

static void gemm_fwd(pt_cuda_exec *x, float *out, const float *a, const float *b, const float *c,
                     const pt_gemm_params *p) {
  rm_gemm(x, p->trans_a, p->trans_b, p->M, p->N, p->K, p->alpha, a, 0, b, 0, 0.0f, out, 0, 1);
  if (c && p->c_mode != PT_GEMM_C_NONE && p->beta != 0.0f) {
    ptk_gemm_c_args ga = {out, c, *p};
    ptk_gemm_c_fwd(x->stream, (int64_t)p->M * p->N, &ga);
  }
}

static void gemm_bwd(pt_cuda_exec *x, float *da, float *db, float *dc, const float *dout,
                     const float *a, const float *b, const pt_gemm_params *p) {
  const int M = p->M, N = p->N, K = p->K;
  if (da) {
    if (!p->trans_a) /* dA (M,K) += alpha * dY * op(B)^T */
      rm_gemm(x, false, !p->trans_b, M, K, N, p->alpha, dout, 0, b, 0, 1.0f, da, 0, 1);
    else /* dA (K,M) += alpha * op(B) * dY^T */
      rm_gemm(x, p->trans_b, true, K, M, N, p->alpha, b, 0, dout, 0, 1.0f, da, 0, 1);
  }
  if (db) {
    if (!p->trans_b) /* dB (K,N) += alpha * op(A)^T * dY */
      rm_gemm(x, !p->trans_a, false, K, N, M, p->alpha, a, 0, dout, 0, 1.0f, db, 0, 1);
    else /* dB (N,K) += alpha * dY^T * op(A) */
      rm_gemm(x, true, p->trans_a, N, K, M, p->alpha, dout, 0, a, 0, 1.0f, db, 0, 1);
  }
  if (dc && p->c_mode != PT_GEMM_C_NONE) {
    ptk_gemm_c_bwd_args ga = {dc, dout, *p};
    ptk_gemm_c_bwd(x->stream, (int64_t)M * N, &ga);
  }
}

static void matmul_fwd(pt_cuda_exec *x, float *out, const float *a, const float *b,
                       const pt_matmul_params *p) {
  rm_gemm(x, false, false, p->M, p->N, p->K, 1.0f, a, p->a_stride, b, p->b_stride, 0.0f, out,
          (int64_t)p->M * p->N, p->batch);
}

/* A gradient of a matrix shared by the batch sums over it: one product per item, in order, into
 * the same matrix (a batched call would race on it). */
static void matmul_bwd(pt_cuda_exec *x, float *da, float *db, const float *dout, const float *a,
                       const float *b, const pt_matmul_params *p) {
  const int64_t so = (int64_t)p->M * p->N;
  if (da) { /* dA[i] (M,K) += dY[i] * B[i]^T */
    if (p->a_stride)
      rm_gemm(x, false, true, p->M, p->K, p->N, 1.0f, dout, so, b, p->b_stride, 1.0f, da,
              p->a_stride, p->batch);
    else
      for (int i = 0; i < p->batch; i++)
        rm_gemm(x, false, true, p->M, p->K, p->N, 1.0f, dout + i * so, 0, b + i * p->b_stride, 0,
                1.0f, da, 0, 1);
  }
  if (db) { /* dB[i] (K,N) += A[i]^T * dY[i] */
    if (p->b_stride)
      rm_gemm(x, true, false, p->K, p->N, p->M, 1.0f, a, p->a_stride, dout, so, 1.0f, db,
              p->b_stride, p->batch);
    else
      for (int i = 0; i < p->batch; i++)
        rm_gemm(x, true, false, p->K, p->N, p->M, 1.0f, a + i * p->a_stride, 0, dout + i * so, 0,
                1.0f, db, 0, 1);
  }
}

/* ---- convolutions -----------------------------------------------------------------------------
 */

static const float one = 1.0f, zero = 0.0f;

static ptk_pad_args pad_args(const pt_conv_params *p, bool t, float *out, const float *in) {
  ptk_pad_args a = {out,   in,    p->N, t ? p->OC : p->C, t ? p->OH : p->H, t ? p->OW : p->W, p->PT,
                    p->PL, p->PB, p->PR};
  return a;
}

static void conv_fwd(pt_cuda_exec *x, const cnode *c, float *out, const float *in, const float *w,
                     const float *b, const pt_conv_params *p) {
  if (c->kind == CN_CONV) {
    const float *src = in;
    if (c->asym) {
      ptk_pad_args pa = pad_args(p, false, x->pad_a, in);
      ptk_pad2d_fwd(x->stream, c->pad_floats, &pa);
      src = x->pad_a;
    }
    CK_DNN(x, cudnnConvolutionForward(x->dnn, &one, c->x, src, c->w, w, c->conv, c->fwd, x->ws,
                                      x->ws_bytes, &zero, c->y, out));
  } else {
    float *dst = c->asym ? x->pad_a : out;
    CK_DNN(x, cudnnConvolutionBackwardData(x->dnn, &one, c->w, w, c->y, in, c->conv, c->bwd_data,
                                           x->ws, x->ws_bytes, &zero, c->x, dst));
    if (c->asym) { /* crop the full output: Y = 0, Y += interior */
      CK_RT(x, cudaMemsetAsync(out, 0, (size_t)p->N * p->OC * p->OH * p->OW * sizeof(float),
                               x->stream));
      ptk_pad_bwd_args pb = {out, x->pad_a, p->N, p->OC, p->OH, p->OW, p->PT, p->PL, p->PB, p->PR};
      ptk_pad2d_bwd(x->stream, c->pad_floats, &pb);
    }
  }
  if (b) {
    cudnnTensorDescriptor_t yd = c->kind == CN_CONV ? c->y : c->asym ? c->o : c->x;
    CK_DNN(x, cudnnAddTensor(x->dnn, &one, c->b, b, &one, yd, out));
  }
}

static void conv_bwd(pt_cuda_exec *x, const cnode *c, float *din, float *dw, float *db,
                     const float *dout, const float *in, const float *w, const pt_conv_params *p) {
  if (c->kind == CN_CONV) {
    if (db) CK_DNN(x, cudnnConvolutionBackwardBias(x->dnn, &one, c->y, dout, &one, c->b, db));
    const float *src = in;
    if (c->asym && dw) {
      ptk_pad_args pa = pad_args(p, false, x->pad_a, in);
      ptk_pad2d_fwd(x->stream, c->pad_floats, &pa);
      src = x->pad_a;
    }
    if (dw)
      CK_DNN(x, cudnnConvolutionBackwardFilter(x->dnn, &one, c->x, src, c->y, dout, c->conv,
                                               c->bwd_filter, x->ws, x->ws_bytes, &one, c->w, dw));
    if (din && !c->asym)
      CK_DNN(x, cudnnConvolutionBackwardData(x->dnn, &one, c->w, w, c->y, dout, c->conv,
                                             c->bwd_data, x->ws, x->ws_bytes, &one, c->x, din));
    if (din && c->asym) {
      CK_DNN(x,
             cudnnConvolutionBackwardData(x->dnn, &one, c->w, w, c->y, dout, c->conv, c->bwd_data,
                                          x->ws, x->ws_bytes, &zero, c->x, x->pad_b));
      ptk_pad_bwd_args pb = {din, x->pad_b, p->N, p->C, p->H, p->W, p->PT, p->PL, p->PB, p->PR};
      ptk_pad2d_bwd(x->stream, c->pad_floats, &pb);
    }
    return;
  }
  /* ConvTranspose: cuDNN's x is our (full) output, its y our input. */
  const float *full = dout;
  if (c->asym) {
    ptk_pad_args pa = pad_args(p, true, x->pad_a, dout);
    ptk_pad2d_fwd(x->stream, c->pad_floats, &pa);
    full = x->pad_a;
  }
  if (db)
    CK_DNN(x,
           cudnnConvolutionBackwardBias(x->dnn, &one, c->asym ? c->o : c->x, dout, &one, c->b, db));
  if (dw)
    CK_DNN(x, cudnnConvolutionBackwardFilter(x->dnn, &one, c->x, full, c->y, in, c->conv,
                                             c->bwd_filter, x->ws, x->ws_bytes, &one, c->w, dw));
  if (din)
    CK_DNN(x, cudnnConvolutionForward(x->dnn, &one, c->x, full, c->w, w, c->conv, c->fwd, x->ws,
                                      x->ws_bytes, &one, c->y, din));
}

/* ---- the switch -------------------------------------------------------------------------------
 */

static void node_forward(pt_cuda_exec *x, const pt_node *n, const cnode *c, void *aux) {
  float *const *A = x->act;
#define IN(i) ((i) < n->n_in && n->in[i] >= 0 ? A[n->in[i]] : NULL)
  float *out = A[n->out[0]];
  const pt_op_params *p = &n->p;
  cudaStream_t s = x->stream;
  switch (n->op) {
  case PT_OP_CONV:
  case PT_OP_CONV_TRANSPOSE:
    conv_fwd(x, c, out, IN(0), IN(1), IN(2), &p->conv);
    break;
  case PT_OP_GEMM:
    gemm_fwd(x, out, IN(0), IN(1), IN(2), &p->gemm);
    break;
  case PT_OP_MATMUL:
    matmul_fwd(x, out, IN(0), IN(1), &p->matmul);
    break;
  case PT_OP_BINARY: {
    ptk_binary_args a = {out, IN(0), IN(1), p->binary};
    ptk_binary_fwd(s, p->binary.n, &a);
    break;
  }
  case PT_OP_UNARY:
    if (c->kind == CN_ACT) {
      CK_DNN(x, cudnnActivationForward(x->dnn, c->act, &one, c->x, IN(0), &zero, c->x, out));
    } else {
      ptk_unary_args a = {out, IN(0), p->unary};
      ptk_unary_fwd(s, p->unary.n, &a);
    }
    break;
  case PT_OP_MAXPOOL:
  case PT_OP_AVGPOOL: {
    const pt_pool_params *q = &p->pool;
    if (c->kind == CN_POOL) {
      CK_DNN(x, cudnnPoolingForward(x->dnn, c->pool, &one, c->x, IN(0), &zero, c->y, out));
    } else {
      ptk_pool_args a = {out, aux, IN(0), *q};
      int64_t no = (int64_t)q->N * q->C * q->OH * q->OW;
      if (n->op == PT_OP_MAXPOOL)
        ptk_maxpool_fwd(s, no, &a);
      else
        ptk_avgpool_fwd(s, no, &a);
    }
    break;
  }
  case PT_OP_BATCHNORM: {
    ptk_bn_args a = {out, IN(0), IN(1), IN(2), IN(3), IN(4), p->bn};
    ptk_batchnorm_fwd(s, (int64_t)p->bn.N * p->bn.C * p->bn.HW, &a);
    break;
  }
  case PT_OP_SOFTMAX: {
    ptk_softmax_args a = {out, IN(0), p->softmax};
    ptk_softmax_fwd(s, p->softmax.outer * p->softmax.inner, &a);
    break;
  }
  case PT_OP_COPY:
    if (out != IN(0))
      CK_RT(x, cudaMemcpyAsync(out, IN(0), p->copy.n * sizeof(float), cudaMemcpyDeviceToDevice, s));
    break;
  case PT_OP_CONCAT: {
    const pt_concat_params *q = &p->concat;
    int64_t total = 0, off = 0;
    for (int i = 0; i < q->n; i++) total += q->dims[i];
    for (int i = 0; i < q->n; i++) {
      ptk_concat_args a = {out, IN(i), q->dims[i], off, total, q->inner};
      ptk_concat_fwd(s, q->outer * q->dims[i] * q->inner, &a);
      off += q->dims[i];
    }
    break;
  }
  case PT_OP_RESIZE: {
    const pt_resize_params *q = &p->resize;
    ptk_resize_args a = {out, IN(0), *q};
    ptk_resize_fwd(s, (int64_t)q->N * q->C * q->OH * q->OW, &a);
    break;
  }
  case PT_OP_COUNT:
    break;
  }
#undef IN
}

static void node_backward(pt_cuda_exec *x, const pt_node *n, const cnode *c, void *aux) {
  float *const *A = x->act, *const *G = x->grad;
#define IN(i) ((i) < n->n_in && n->in[i] >= 0 ? A[n->in[i]] : NULL)
#define D(i) ((i) < n->n_in && n->in[i] >= 0 ? G[n->in[i]] : NULL)
  const float *out = A[n->out[0]], *dout = G[n->out[0]];
  const pt_op_params *p = &n->p;
  cudaStream_t s = x->stream;
  if (!dout) return;
  switch (n->op) {
  case PT_OP_CONV:
  case PT_OP_CONV_TRANSPOSE:
    conv_bwd(x, c, D(0), D(1), D(2), dout, IN(0), IN(1), &p->conv);
    break;
  case PT_OP_GEMM:
    gemm_bwd(x, D(0), D(1), D(2), dout, IN(0), IN(1), &p->gemm);
    break;
  case PT_OP_MATMUL:
    matmul_bwd(x, D(0), D(1), dout, IN(0), IN(1), &p->matmul);
    break;
  case PT_OP_BINARY: {
    if (!D(0) && !D(1)) break;
    ptk_binary_bwd_args a = {D(0), D(1), dout, IN(0), IN(1), p->binary};
    ptk_binary_bwd(s, p->binary.n, &a);
    break;
  }
  case PT_OP_UNARY:
    if (!D(0)) break;
    if (c->kind == CN_ACT) {
      CK_DNN(x, cudnnActivationBackward(x->dnn, c->act, &one, c->x, out, c->x, dout, c->x, IN(0),
                                        &one, c->x, D(0)));
    } else {
      ptk_unary_bwd_args a = {D(0), dout, IN(0), out, p->unary};
      ptk_unary_bwd(s, p->unary.n, &a);
    }
    break;
  case PT_OP_MAXPOOL:
  case PT_OP_AVGPOOL: {
    if (!D(0)) break;
    const pt_pool_params *q = &p->pool;
    if (c->kind == CN_POOL) {
      CK_DNN(x, cudnnPoolingBackward(x->dnn, c->pool, &one, c->y, out, c->y, dout, c->x, IN(0),
                                     &one, c->x, D(0)));
    } else {
      ptk_pool_bwd_args a = {D(0), dout, aux, *q};
      int64_t no = (int64_t)q->N * q->C * q->OH * q->OW;
      if (n->op == PT_OP_MAXPOOL)
        ptk_maxpool_bwd(s, no, &a);
      else
        ptk_avgpool_bwd(s, no, &a);
    }
    break;
  }
  case PT_OP_BATCHNORM: {
    ptk_bn_bwd_args a = {D(0), D(1), D(2), dout, IN(0), IN(1), IN(3), IN(4), p->bn};
    ptk_batchnorm_bwd(s, (int64_t)p->bn.N * p->bn.C * p->bn.HW, &a);
    break;
  }
  case PT_OP_SOFTMAX: {
    if (!D(0)) break;
    ptk_softmax_bwd_args a = {D(0), dout, out, p->softmax};
    ptk_softmax_bwd(s, p->softmax.outer * p->softmax.inner, &a);
    break;
  }
  case PT_OP_COPY: {
    if (!D(0)) break;
    ptk_axpy_args a = {D(0), dout, 1.0f};
    ptk_axpy(s, p->copy.n, &a);
    break;
  }
  case PT_OP_CONCAT: {
    const pt_concat_params *q = &p->concat;
    int64_t total = 0, off = 0;
    for (int i = 0; i < q->n; i++) total += q->dims[i];
    for (int i = 0; i < q->n; i++) {
      if (D(i)) {
        ptk_concat_bwd_args a = {D(i), dout, q->dims[i], off, total, q->inner};
        ptk_concat_bwd(s, q->outer * q->dims[i] * q->inner, &a);
      }
      off += q->dims[i];
    }
    break;
  }
  case PT_OP_RESIZE: {
    if (!D(0)) break;
    const pt_resize_params *q = &p->resize;
    ptk_resize_bwd_args a = {D(0), dout, *q};
    ptk_resize_bwd(s, (int64_t)q->N * q->C * q->OH * q->OW, &a);
    break;
  }
  case PT_OP_COUNT:
    break;
  }
#undef IN
#undef D
}

void pt_cuda_exec_forward(pt_cuda_exec *x) {
  for (int i = x->first; i < x->end; i++)
    node_forward(x, &x->m->nodes[i], &x->nodes[i - x->first], x->aux[i - x->first]);
}

void pt_cuda_exec_backward(pt_cuda_exec *x) {
  for (int i = x->end - 1; i >= x->first; i--)
    node_backward(x, &x->m->nodes[i], &x->nodes[i - x->first], x->aux[i - x->first]);
}
