/* Simulated cuDNN: descriptors, convolution, bias, activation and pooling on float NCHW (cuda/sim).
 *
 * Each compute call checks its descriptors at the call, copies them and the alpha/beta values
 * into a task and queues it on the handle's stream. Tensors are addressed through their own
 * strides everywhere; filters are packed KCRS. The loops are plain gathers, one output element at
 * a time, summing in double (a GPU's summation order is unspecified anyway); only pooling backward
 * scatters, into a scratch buffer, because its windows overlap.
 *
 * Convolution: input channels C form G groups of Cg = C/G; output channel k belongs to group
 * k / (K/G) and sees only that group's channels through its filter (K, Cg, R, S). Tap (r, s) of
 * output (oh, ow) reads input (oh*u - pad_h + r*dil_h, ow*v - pad_w + s*dil_w); zero outside.
 * CUDNN_CROSS_CORRELATION weighs tap (r, s) with w[k][c][r][s], CUDNN_CONVOLUTION with the
 * flipped w[k][c][R-1-r][S-1-s].
 *
 * Activation backward takes the derivative from y for SIGMOID and TANH, from x for RELU,
 * CLIPPED_RELU and ELU. CUDNN_NOT_PROPAGATE_NAN: ReLU-like modes map NaN to 0 and max pooling
 * skips NaNs; CUDNN_PROPAGATE_NAN passes them on (max pooling: the first NaN wins).
 *
 * Workspaces: some algorithms (the first one each _v7 query returns) report a small non-zero
 * size, so callers carry workspaces around as they must on a GPU. The sim never touches it but
 * rejects one smaller than reported, or not in device memory. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <cudnn.h>
#include "sim.h"

typedef struct {
  int n, c, h, w;
  long long ns, cs, hs, ws;
} tdesc;

struct cudnnContext {
  cudaStream_t stream;
  int dev;
};
struct cudnnTensorStruct {
  int set;
  tdesc d;
};
struct cudnnFilterStruct {
  int set;
  int k, c, r, s;
};
struct cudnnConvolutionStruct {
  int set;
  int ph, pw, u, v, dh, dw, flip, groups;
  cudnnMathType_t math;
};
struct cudnnActivationStruct {
  int set;
  cudnnActivationMode_t mode;
  int propagate;
  double coef;
};
struct cudnnPoolingStruct {
  int set;
  cudnnPoolingMode_t mode;
  int propagate;
  int wh, ww, ph, pw, sh, sw;
};

#define BAD CUDNN_STATUS_BAD_PARAM

static inline long long at(const tdesc *t, int n, int c, int h, int w) {
  return n * t->ns + c * t->cs + h * t->hs + w * t->ws;
}

/* y = alpha * r + beta * y, never reading y when beta is 0 (it may hold NaN garbage) */
static inline void blend(float *y, double r, float alpha, float beta) {
  *y = (float)(alpha * r + (beta != 0 ? beta * (double)*y : 0));
}

static int same_dims(const tdesc *a, const tdesc *b) {
  return a->n == b->n && a->c == b->c && a->h == b->h && a->w == b->w;
}

/* The tensor's memory must be one device allocation (the real library faults later instead). */
static int dev_ok(const char *fn, const char *what, const void *p, size_t elems) {
  if (sim_dev_range(p, elems * sizeof(float)) >= 0) return 1;
  sim_warn("%s: %s (%p, %zu floats) is not inside one device allocation", fn, what, p, elems);
  return 0;
}

static int tensor_ok(const char *fn, const char *what, const tdesc *t, const void *p) {
  size_t last = (size_t)at(t, t->n - 1, t->c - 1, t->h - 1, t->w - 1);
  return dev_ok(fn, what, p, last + 1);
}

static cudnnStatus_t submit(cudnnHandle_t h, sim_run_fn run, const void *args, size_t size) {
  sim_task *t = sim_task_new(run, size);
  memcpy(sim_task_payload(t), args, size);
  return sim_submit(h->stream, h->dev, t) ? CUDNN_STATUS_EXECUTION_FAILED : CUDNN_STATUS_SUCCESS;
}

/* ---- handle, versions ---- */

size_t cudnnGetVersion(void) {
  return CUDNN_VERSION;
}

const char *cudnnGetErrorString(cudnnStatus_t status) {
  switch (status) {
  case CUDNN_STATUS_SUCCESS:
    return "CUDNN_STATUS_SUCCESS";
  case CUDNN_STATUS_NOT_INITIALIZED:
    return "CUDNN_STATUS_NOT_INITIALIZED";
  case CUDNN_STATUS_BAD_PARAM:
    return "CUDNN_STATUS_BAD_PARAM";
  case CUDNN_STATUS_INVALID_VALUE:
    return "CUDNN_STATUS_INVALID_VALUE";
  case CUDNN_STATUS_BAD_PARAM_NULL_POINTER:
    return "CUDNN_STATUS_BAD_PARAM_NULL_POINTER";
  case CUDNN_STATUS_BAD_PARAM_STREAM_MISMATCH:
    return "CUDNN_STATUS_BAD_PARAM_STREAM_MISMATCH";
  case CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH:
    return "CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH";
  case CUDNN_STATUS_NOT_SUPPORTED:
    return "CUDNN_STATUS_NOT_SUPPORTED";
  case CUDNN_STATUS_INTERNAL_ERROR:
    return "CUDNN_STATUS_INTERNAL_ERROR";
  case CUDNN_STATUS_ALLOC_FAILED:
    return "CUDNN_STATUS_ALLOC_FAILED";
  case CUDNN_STATUS_EXECUTION_FAILED:
    return "CUDNN_STATUS_EXECUTION_FAILED";
  }
  return "CUDNN_STATUS_UNKNOWN";
}

cudnnStatus_t cudnnCreate(cudnnHandle_t *handle) {
  int dev;
  if (!handle) return BAD;
  if (cudaGetDevice(&dev) != cudaSuccess) return CUDNN_STATUS_NOT_INITIALIZED;
  if (!(*handle = calloc(1, sizeof **handle))) return CUDNN_STATUS_ALLOC_FAILED;
  (*handle)->dev = dev;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnDestroy(cudnnHandle_t handle) {
  free(handle);
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetStream(cudnnHandle_t handle, cudaStream_t streamId) {
  if (!handle || !sim_stream_valid(streamId)) return BAD;
  if (streamId && sim_stream_device(streamId) != handle->dev)
    return CUDNN_STATUS_BAD_PARAM_STREAM_MISMATCH;
  handle->stream = streamId;
  return CUDNN_STATUS_SUCCESS;
}

/* ---- descriptors ---- */

#define CREATE_DESTROY(type, create, destroy)                                                      \
  cudnnStatus_t create(type *d) {                                                                  \
    if (!d) return BAD;                                                                            \
    return (*d = calloc(1, sizeof **d)) ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_ALLOC_FAILED;        \
  }                                                                                                \
  cudnnStatus_t destroy(type d) {                                                                  \
    free(d);                                                                                       \
    return CUDNN_STATUS_SUCCESS;                                                                   \
  }

CREATE_DESTROY(cudnnTensorDescriptor_t, cudnnCreateTensorDescriptor, cudnnDestroyTensorDescriptor)
CREATE_DESTROY(cudnnFilterDescriptor_t, cudnnCreateFilterDescriptor, cudnnDestroyFilterDescriptor)
CREATE_DESTROY(cudnnActivationDescriptor_t, cudnnCreateActivationDescriptor,
               cudnnDestroyActivationDescriptor)
CREATE_DESTROY(cudnnPoolingDescriptor_t, cudnnCreatePoolingDescriptor,
               cudnnDestroyPoolingDescriptor)

cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t *convDesc) {
  if (!convDesc) return BAD;
  if (!(*convDesc = calloc(1, sizeof **convDesc))) return CUDNN_STATUS_ALLOC_FAILED;
  (*convDesc)->groups = 1;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t convDesc) {
  free(convDesc);
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetTensor4dDescriptorEx(cudnnTensorDescriptor_t tensorDesc,
                                           cudnnDataType_t dataType, int n, int c, int h, int w,
                                           int nStride, int cStride, int hStride, int wStride) {
  if (!tensorDesc || n <= 0 || c <= 0 || h <= 0 || w <= 0 || nStride <= 0 || cStride <= 0 ||
      hStride <= 0 || wStride <= 0)
    return BAD;
  if (dataType != CUDNN_DATA_FLOAT) return CUDNN_STATUS_NOT_SUPPORTED;
  tensorDesc->d = (tdesc){n, c, h, w, nStride, cStride, hStride, wStride};
  tensorDesc->set = 1;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t tensorDesc,
                                         cudnnTensorFormat_t format, cudnnDataType_t dataType,
                                         int n, int c, int h, int w) {
  if (format != CUDNN_TENSOR_NCHW) return CUDNN_STATUS_NOT_SUPPORTED;
  if (h > 0 && w > 0 && c > 0 && (long long)c * h * w > 0x7fffffff) return BAD;
  return cudnnSetTensor4dDescriptorEx(tensorDesc, dataType, n, c, h, w, c * h * w, h * w, w, 1);
}

cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t filterDesc,
                                         cudnnDataType_t dataType, cudnnTensorFormat_t format,
                                         int k, int c, int h, int w) {
  if (!filterDesc || k <= 0 || c <= 0 || h <= 0 || w <= 0) return BAD;
  if (dataType != CUDNN_DATA_FLOAT || format != CUDNN_TENSOR_NCHW)
    return CUDNN_STATUS_NOT_SUPPORTED;
  *filterDesc = (struct cudnnFilterStruct){1, k, c, h, w};
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t convDesc, int pad_h,
                                              int pad_w, int u, int v, int dilation_h,
                                              int dilation_w, cudnnConvolutionMode_t mode,
                                              cudnnDataType_t computeType) {
  if (!convDesc || pad_h < 0 || pad_w < 0 || u <= 0 || v <= 0 || dilation_h <= 0 ||
      dilation_w <= 0 || (mode != CUDNN_CONVOLUTION && mode != CUDNN_CROSS_CORRELATION))
    return BAD;
  if (computeType != CUDNN_DATA_FLOAT) return CUDNN_STATUS_NOT_SUPPORTED;
  convDesc->set = 1;
  convDesc->ph = pad_h, convDesc->pw = pad_w, convDesc->u = u, convDesc->v = v;
  convDesc->dh = dilation_h, convDesc->dw = dilation_w;
  convDesc->flip = mode == CUDNN_CONVOLUTION;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetConvolutionGroupCount(cudnnConvolutionDescriptor_t convDesc, int groupCount) {
  if (!convDesc || groupCount < 1) return BAD;
  convDesc->groups = groupCount;
  return CUDNN_STATUS_SUCCESS;
}

/* Any math type computes the same here: float in, double sums. */
cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t convDesc,
                                          cudnnMathType_t mathType) {
  if (!convDesc || (unsigned)mathType > CUDNN_FMA_MATH) return BAD;
  convDesc->math = mathType;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetActivationDescriptor(cudnnActivationDescriptor_t activationDesc,
                                           cudnnActivationMode_t mode,
                                           cudnnNanPropagation_t reluNanOpt, double coef) {
  if (!activationDesc || (unsigned)reluNanOpt > CUDNN_PROPAGATE_NAN ||
      (unsigned)mode > CUDNN_ACTIVATION_SWISH)
    return BAD;
  if (mode == CUDNN_ACTIVATION_SWISH) return CUDNN_STATUS_NOT_SUPPORTED;
  *activationDesc =
      (struct cudnnActivationStruct){1, mode, reluNanOpt == CUDNN_PROPAGATE_NAN, coef};
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetPooling2dDescriptor(cudnnPoolingDescriptor_t poolingDesc,
                                          cudnnPoolingMode_t mode,
                                          cudnnNanPropagation_t maxpoolingNanOpt, int windowHeight,
                                          int windowWidth, int verticalPadding,
                                          int horizontalPadding, int verticalStride,
                                          int horizontalStride) {
  if (!poolingDesc || (unsigned)mode > CUDNN_POOLING_MAX_DETERMINISTIC ||
      (unsigned)maxpoolingNanOpt > CUDNN_PROPAGATE_NAN || windowHeight <= 0 || windowWidth <= 0 ||
      verticalPadding < 0 || horizontalPadding < 0 || verticalStride <= 0 || horizontalStride <= 0)
    return BAD;
  struct cudnnPoolingStruct *p = poolingDesc;
  p->mode = mode, p->propagate = maxpoolingNanOpt == CUDNN_PROPAGATE_NAN;
  p->wh = windowHeight, p->ww = windowWidth, p->ph = verticalPadding, p->pw = horizontalPadding;
  p->sh = verticalStride, p->sw = horizontalStride;
  p->set = 1;
  return CUDNN_STATUS_SUCCESS;
}

/* ---- convolution ---- */

typedef struct {
  tdesc x, y; /* input (or dx) and output (or dy) */
  int K, Cg, R, S, Kg;
  int ph, pw, u, v, dh, dw, flip;
} conv_geom;

/* Checks that x, w, conv describe a valid convolution and fills g; y (may be NULL) must match the
 * output shape. */
static cudnnStatus_t conv_setup(const cudnnTensorDescriptor_t x, const cudnnFilterDescriptor_t w,
                                const cudnnConvolutionDescriptor_t conv,
                                const cudnnTensorDescriptor_t y, conv_geom *g) {
  if (!x || !w || !conv || !x->set || !w->set || !conv->set) return BAD;
  int G = conv->groups;
  if (x->d.c != w->c * G || w->k % G) return BAD;
  int eff_h = (w->r - 1) * conv->dh + 1, eff_w = (w->s - 1) * conv->dw + 1;
  int span_h = x->d.h + 2 * conv->ph - eff_h, span_w = x->d.w + 2 * conv->pw - eff_w;
  if (span_h < 0 || span_w < 0) return BAD;
  *g = (conv_geom){.x = x->d, .K = w->k, .Cg = w->c, .R = w->r, .S = w->s, .Kg = w->k / G};
  g->y = (tdesc){.n = x->d.n, .c = w->k, .h = span_h / conv->u + 1, .w = span_w / conv->v + 1};
  g->ph = conv->ph, g->pw = conv->pw, g->u = conv->u, g->v = conv->v;
  g->dh = conv->dh, g->dw = conv->dw, g->flip = conv->flip;
  if (y) {
    if (!y->set || !same_dims(&y->d, &g->y)) return BAD;
    g->y = y->d;
  }
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolution2dForwardOutputDim(const cudnnConvolutionDescriptor_t convDesc,
                                                    const cudnnTensorDescriptor_t inputTensorDesc,
                                                    const cudnnFilterDescriptor_t filterDesc,
                                                    int *n, int *c, int *h, int *w) {
  conv_geom g;
  cudnnStatus_t st = conv_setup(inputTensorDesc, filterDesc, convDesc, NULL, &g);
  if (st) return st;
  if (!n || !c || !h || !w) return BAD;
  *n = g.y.n, *c = g.y.c, *h = g.y.h, *w = g.y.w;
  return CUDNN_STATUS_SUCCESS;
}

/* The filter element weighing tap (r, s). */
static inline long long widx(const conv_geom *g, int k, int c, int r, int s) {
  if (g->flip) r = g->R - 1 - r, s = g->S - 1 - s;
  return (((long long)k * g->Cg + c) * g->R + r) * g->S + s;
}

/* ws_algo: 1 for the algorithms that report a workspace. */
static size_t conv_ws(const conv_geom *g, int ws_algo) {
  return ws_algo ? 256 + (size_t)g->Cg * g->R * g->S * sizeof(float) : 0;
}

static cudnnStatus_t ws_check(const char *fn, size_t need, const void *ws, size_t have) {
  if (have < need || (need && !ws)) return BAD;
  return !need || dev_ok(fn, "workspace", ws, need / sizeof(float)) ? CUDNN_STATUS_SUCCESS : BAD;
}

typedef struct {
  conv_geom g;
  float alpha, beta;
  const float *in, *w; /* fwd: x, w; bwd data: dy, w; bwd filter: x, dy (in w) */
  float *out;
} conv_args;

static void conv_fwd_run(void *p) {
  const conv_args *a = p;
  const conv_geom *g = &a->g;
  for (int n = 0; n < g->y.n; n++)
    for (int k = 0; k < g->K; k++)
      for (int oh = 0; oh < g->y.h; oh++)
        for (int ow = 0; ow < g->y.w; ow++) {
          int c0 = k / g->Kg * g->Cg;
          double acc = 0;
          for (int c = 0; c < g->Cg; c++)
            for (int r = 0; r < g->R; r++) {
              int ih = oh * g->u - g->ph + r * g->dh;
              if (ih < 0 || ih >= g->x.h) continue;
              for (int s = 0; s < g->S; s++) {
                int iw = ow * g->v - g->pw + s * g->dw;
                if (iw < 0 || iw >= g->x.w) continue;
                acc += (double)a->in[at(&g->x, n, c0 + c, ih, iw)] * a->w[widx(g, k, c, r, s)];
              }
            }
          blend(&a->out[at(&g->y, n, k, oh, ow)], acc, a->alpha, a->beta);
        }
}

/* dx[n][c][ih][iw] gathers every (k, oh, ow) whose tap (r, s) landed on it. */
static void conv_bwd_data_run(void *p) {
  const conv_args *a = p;
  const conv_geom *g = &a->g;
  for (int n = 0; n < g->x.n; n++)
    for (int c = 0; c < g->x.c; c++)
      for (int ih = 0; ih < g->x.h; ih++)
        for (int iw = 0; iw < g->x.w; iw++) {
          int grp = c / g->Cg, cl = c % g->Cg;
          double acc = 0;
          for (int k = grp * g->Kg; k < (grp + 1) * g->Kg; k++)
            for (int r = 0; r < g->R; r++) {
              int th = ih + g->ph - r * g->dh;
              if (th < 0 || th % g->u || th / g->u >= g->y.h) continue;
              for (int s = 0; s < g->S; s++) {
                int tw = iw + g->pw - s * g->dw;
                if (tw < 0 || tw % g->v || tw / g->v >= g->y.w) continue;
                acc += (double)a->in[at(&g->y, n, k, th / g->u, tw / g->v)] *
                       a->w[widx(g, k, cl, r, s)];
              }
            }
          blend(&a->out[at(&g->x, n, c, ih, iw)], acc, a->alpha, a->beta);
        }
}

static void conv_bwd_filter_run(void *p) {
  const conv_args *a = p;
  const conv_geom *g = &a->g;
  const float *x = a->in, *dy = a->w;
  for (int k = 0; k < g->K; k++)
    for (int cl = 0; cl < g->Cg; cl++)
      for (int r = 0; r < g->R; r++)
        for (int s = 0; s < g->S; s++) {
          int c = k / g->Kg * g->Cg + cl;
          double acc = 0;
          for (int n = 0; n < g->y.n; n++)
            for (int oh = 0; oh < g->y.h; oh++) {
              int ih = oh * g->u - g->ph + r * g->dh;
              if (ih < 0 || ih >= g->x.h) continue;
              for (int ow = 0; ow < g->y.w; ow++) {
                int iw = ow * g->v - g->pw + s * g->dw;
                if (iw < 0 || iw >= g->x.w) continue;
                acc += (double)x[at(&g->x, n, c, ih, iw)] * dy[at(&g->y, n, k, oh, ow)];
              }
            }
          blend(&a->out[widx(g, k, cl, r, s)], acc, a->alpha, a->beta);
        }
}

static size_t filter_elems(const conv_geom *g) {
  return (size_t)g->K * g->Cg * g->R * g->S;
}

static int fwd_ws_algo(int algo) {
  return algo != CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM &&
         algo != CUDNN_CONVOLUTION_FWD_ALGO_DIRECT;
}

cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc, const cudnnFilterDescriptor_t wDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnTensorDescriptor_t yDesc,
    cudnnConvolutionFwdAlgo_t algo, size_t *sizeInBytes) {
  conv_geom g;
  cudnnStatus_t st;
  if (!handle || !sizeInBytes || (unsigned)algo >= CUDNN_CONVOLUTION_FWD_ALGO_COUNT) return BAD;
  if ((st = conv_setup(xDesc, wDesc, convDesc, yDesc, &g))) return st;
  *sizeInBytes = conv_ws(&g, fwd_ws_algo(algo));
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolutionBackwardDataWorkspaceSize(
    cudnnHandle_t handle, const cudnnFilterDescriptor_t wDesc, const cudnnTensorDescriptor_t dyDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnTensorDescriptor_t dxDesc,
    cudnnConvolutionBwdDataAlgo_t algo, size_t *sizeInBytes) {
  conv_geom g;
  cudnnStatus_t st;
  if (!handle || !sizeInBytes || (unsigned)algo >= CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT)
    return BAD;
  if ((st = conv_setup(dxDesc, wDesc, convDesc, dyDesc, &g))) return st;
  *sizeInBytes = conv_ws(&g, algo != CUDNN_CONVOLUTION_BWD_DATA_ALGO_0);
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolutionBackwardFilterWorkspaceSize(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc, const cudnnTensorDescriptor_t dyDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnFilterDescriptor_t gradDesc,
    cudnnConvolutionBwdFilterAlgo_t algo, size_t *sizeInBytes) {
  conv_geom g;
  cudnnStatus_t st;
  if (!handle || !sizeInBytes || (unsigned)algo >= CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT)
    return BAD;
  if ((st = conv_setup(xDesc, gradDesc, convDesc, dyDesc, &g))) return st;
  *sizeInBytes = conv_ws(&g, algo != CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0);
  return CUDNN_STATUS_SUCCESS;
}

/* The _v7 heuristics: the algorithm with a workspace first, then one without; mem[i] is the
 * workspace of the i-th. */
static cudnnStatus_t algo_v7(cudnnHandle_t h, const cudnnTensorDescriptor_t x,
                             const cudnnFilterDescriptor_t w,
                             const cudnnConvolutionDescriptor_t conv,
                             const cudnnTensorDescriptor_t y, int requested, int *returned,
                             const void *perf, size_t mem[2]) {
  conv_geom g;
  cudnnStatus_t st;
  if (!h || !returned || !perf || requested < 1) return BAD;
  if ((st = conv_setup(x, w, conv, y, &g))) return st;
  *returned = requested < 2 ? requested : 2;
  mem[0] = conv_ws(&g, 1), mem[1] = 0;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t srcDesc,
    const cudnnFilterDescriptor_t filterDesc, const cudnnConvolutionDescriptor_t convDesc,
    const cudnnTensorDescriptor_t destDesc, const int requestedAlgoCount, int *returnedAlgoCount,
    cudnnConvolutionFwdAlgoPerf_t *perfResults) {
  static const cudnnConvolutionFwdAlgo_t algo[2] = {
      CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM};
  size_t mem[2];
  cudnnStatus_t st = algo_v7(handle, srcDesc, filterDesc, convDesc, destDesc, requestedAlgoCount,
                             returnedAlgoCount, perfResults, mem);
  for (int i = 0; !st && i < *returnedAlgoCount; i++)
    perfResults[i] = (cudnnConvolutionFwdAlgoPerf_t){.algo = algo[i],
                                                     .status = CUDNN_STATUS_SUCCESS,
                                                     .time = 1.0f + i,
                                                     .memory = mem[i],
                                                     .determinism = CUDNN_DETERMINISTIC,
                                                     .mathType = convDesc->math};
  return st;
}

cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithm_v7(
    cudnnHandle_t handle, const cudnnFilterDescriptor_t filterDesc,
    const cudnnTensorDescriptor_t diffDesc, const cudnnConvolutionDescriptor_t convDesc,
    const cudnnTensorDescriptor_t gradDesc, const int requestedAlgoCount, int *returnedAlgoCount,
    cudnnConvolutionBwdDataAlgoPerf_t *perfResults) {
  static const cudnnConvolutionBwdDataAlgo_t algo[2] = {CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
                                                        CUDNN_CONVOLUTION_BWD_DATA_ALGO_0};
  size_t mem[2];
  cudnnStatus_t st = algo_v7(handle, gradDesc, filterDesc, convDesc, diffDesc, requestedAlgoCount,
                             returnedAlgoCount, perfResults, mem);
  for (int i = 0; !st && i < *returnedAlgoCount; i++)
    perfResults[i] = (cudnnConvolutionBwdDataAlgoPerf_t){.algo = algo[i],
                                                         .status = CUDNN_STATUS_SUCCESS,
                                                         .time = 1.0f + i,
                                                         .memory = mem[i],
                                                         .determinism = CUDNN_DETERMINISTIC,
                                                         .mathType = convDesc->math};
  return st;
}

cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithm_v7(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t srcDesc,
    const cudnnTensorDescriptor_t diffDesc, const cudnnConvolutionDescriptor_t convDesc,
    const cudnnFilterDescriptor_t gradDesc, const int requestedAlgoCount, int *returnedAlgoCount,
    cudnnConvolutionBwdFilterAlgoPerf_t *perfResults) {
  static const cudnnConvolutionBwdFilterAlgo_t algo[2] = {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
                                                          CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0};
  size_t mem[2];
  cudnnStatus_t st = algo_v7(handle, srcDesc, gradDesc, convDesc, diffDesc, requestedAlgoCount,
                             returnedAlgoCount, perfResults, mem);
  for (int i = 0; !st && i < *returnedAlgoCount; i++)
    perfResults[i] = (cudnnConvolutionBwdFilterAlgoPerf_t){.algo = algo[i],
                                                           .status = CUDNN_STATUS_SUCCESS,
                                                           .time = 1.0f + i,
                                                           .memory = mem[i],
                                                           .determinism = CUDNN_DETERMINISTIC,
                                                           .mathType = convDesc->math};
  return st;
}

/* The shared tail of the three convolutions: scalars, memory checks, queueing. */
static cudnnStatus_t conv_submit(cudnnHandle_t h, const char *fn, sim_run_fn run,
                                 const conv_geom *g, const void *alpha, const void *beta,
                                 const void *in, const tdesc *in_d, const void *w, const tdesc *w_d,
                                 void *out, const tdesc *out_d) {
  conv_args a = {.g = *g, .in = in, .w = w, .out = out};
  size_t fe = filter_elems(g);
  if (!alpha || !beta) return BAD;
  a.alpha = *(const float *)alpha, a.beta = *(const float *)beta;
  if (!(in_d ? tensor_ok(fn, "input", in_d, in) : dev_ok(fn, "filter", in, fe)) ||
      !(w_d ? tensor_ok(fn, "input", w_d, w) : dev_ok(fn, "filter", w, fe)) ||
      !(out_d ? tensor_ok(fn, "output", out_d, out) : dev_ok(fn, "filter", out, fe)))
    return BAD;
  return submit(h, run, &a, sizeof a);
}

cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t handle, const void *alpha,
                                      const cudnnTensorDescriptor_t xDesc, const void *x,
                                      const cudnnFilterDescriptor_t wDesc, const void *w,
                                      const cudnnConvolutionDescriptor_t convDesc,
                                      cudnnConvolutionFwdAlgo_t algo, void *workSpace,
                                      size_t workSpaceSizeInBytes, const void *beta,
                                      const cudnnTensorDescriptor_t yDesc, void *y) {
  static const char fn[] = "cudnnConvolutionForward";
  conv_geom g;
  cudnnStatus_t st;
  if (!handle || (unsigned)algo >= CUDNN_CONVOLUTION_FWD_ALGO_COUNT) return BAD;
  if ((st = conv_setup(xDesc, wDesc, convDesc, yDesc, &g)) ||
      (st = ws_check(fn, conv_ws(&g, fwd_ws_algo(algo)), workSpace, workSpaceSizeInBytes)))
    return st;
  return conv_submit(handle, fn, conv_fwd_run, &g, alpha, beta, x, &g.x, w, NULL, y, &g.y);
}

cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t handle, const void *alpha,
                                           const cudnnFilterDescriptor_t wDesc, const void *w,
                                           const cudnnTensorDescriptor_t dyDesc, const void *dy,
                                           const cudnnConvolutionDescriptor_t convDesc,
                                           cudnnConvolutionBwdDataAlgo_t algo, void *workSpace,
                                           size_t workSpaceSizeInBytes, const void *beta,
                                           const cudnnTensorDescriptor_t dxDesc, void *dx) {
  static const char fn[] = "cudnnConvolutionBackwardData";
  conv_geom g;
  cudnnStatus_t st;
  if (!handle || (unsigned)algo >= CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT) return BAD;
  if ((st = conv_setup(dxDesc, wDesc, convDesc, dyDesc, &g)) ||
      (st = ws_check(fn, conv_ws(&g, algo != CUDNN_CONVOLUTION_BWD_DATA_ALGO_0), workSpace,
                     workSpaceSizeInBytes)))
    return st;
  return conv_submit(handle, fn, conv_bwd_data_run, &g, alpha, beta, dy, &g.y, w, NULL, dx, &g.x);
}

cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t handle, const void *alpha,
                                             const cudnnTensorDescriptor_t xDesc, const void *x,
                                             const cudnnTensorDescriptor_t dyDesc, const void *dy,
                                             const cudnnConvolutionDescriptor_t convDesc,
                                             cudnnConvolutionBwdFilterAlgo_t algo, void *workSpace,
                                             size_t workSpaceSizeInBytes, const void *beta,
                                             const cudnnFilterDescriptor_t dwDesc, void *dw) {
  static const char fn[] = "cudnnConvolutionBackwardFilter";
  conv_geom g;
  cudnnStatus_t st;
  if (!handle || (unsigned)algo >= CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT) return BAD;
  if ((st = conv_setup(xDesc, dwDesc, convDesc, dyDesc, &g)) ||
      (st = ws_check(fn, conv_ws(&g, algo != CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0), workSpace,
                     workSpaceSizeInBytes)))
    return st;
  return conv_submit(handle, fn, conv_bwd_filter_run, &g, alpha, beta, x, &g.x, dy, &g.y, dw, NULL);
}

/* ---- bias ---- */

typedef struct {
  tdesc a, c; /* bias backward: a = dy, c = db */
  float alpha, beta;
  const float *A;
  float *C;
} bias_args;

static void add_tensor_run(void *p) {
  const bias_args *b = p;
  const tdesc *a = &b->a, *c = &b->c;
  for (int n = 0; n < c->n; n++)
    for (int ch = 0; ch < c->c; ch++)
      for (int h = 0; h < c->h; h++)
        for (int w = 0; w < c->w; w++) {
          /* a dimension of size 1 broadcasts */
          float v =
              b->A[at(a, a->n > 1 ? n : 0, a->c > 1 ? ch : 0, a->h > 1 ? h : 0, a->w > 1 ? w : 0)];
          blend(&b->C[at(c, n, ch, h, w)], v, b->alpha, b->beta);
        }
}

static void bias_bwd_run(void *p) {
  const bias_args *b = p;
  const tdesc *dy = &b->a;
  for (int k = 0; k < dy->c; k++) {
    double acc = 0;
    for (int n = 0; n < dy->n; n++)
      for (int h = 0; h < dy->h; h++)
        for (int w = 0; w < dy->w; w++) acc += b->A[at(dy, n, k, h, w)];
    blend(&b->C[at(&b->c, 0, k, 0, 0)], acc, b->alpha, b->beta);
  }
}

static cudnnStatus_t bias_submit(cudnnHandle_t h, const char *fn, sim_run_fn run, const void *alpha,
                                 const cudnnTensorDescriptor_t aDesc, const void *A,
                                 const void *beta, const cudnnTensorDescriptor_t cDesc, void *C) {
  bias_args b = {.A = A, .C = C};
  if (!alpha || !beta) return BAD;
  b.a = aDesc->d, b.c = cDesc->d;
  b.alpha = *(const float *)alpha, b.beta = *(const float *)beta;
  if (!tensor_ok(fn, "A", &b.a, A) || !tensor_ok(fn, "C", &b.c, C)) return BAD;
  return submit(h, run, &b, sizeof b);
}

cudnnStatus_t cudnnAddTensor(cudnnHandle_t handle, const void *alpha,
                             const cudnnTensorDescriptor_t aDesc, const void *A, const void *beta,
                             const cudnnTensorDescriptor_t cDesc, void *C) {
  if (!handle || !aDesc || !cDesc || !aDesc->set || !cDesc->set) return BAD;
  const tdesc *a = &aDesc->d, *c = &cDesc->d;
  if ((a->n != c->n && a->n != 1) || (a->c != c->c && a->c != 1) || (a->h != c->h && a->h != 1) ||
      (a->w != c->w && a->w != 1))
    return BAD;
  return bias_submit(handle, "cudnnAddTensor", add_tensor_run, alpha, aDesc, A, beta, cDesc, C);
}

cudnnStatus_t cudnnConvolutionBackwardBias(cudnnHandle_t handle, const void *alpha,
                                           const cudnnTensorDescriptor_t dyDesc, const void *dy,
                                           const void *beta, const cudnnTensorDescriptor_t dbDesc,
                                           void *db) {
  if (!handle || !dyDesc || !dbDesc || !dyDesc->set || !dbDesc->set) return BAD;
  const tdesc *b = &dbDesc->d;
  if (b->n != 1 || b->c != dyDesc->d.c || b->h != 1 || b->w != 1) return BAD;
  return bias_submit(handle, "cudnnConvolutionBackwardBias", bias_bwd_run, alpha, dyDesc, dy, beta,
                     dbDesc, db);
}

/* ---- activation ---- */

typedef struct {
  struct cudnnActivationStruct act;
  tdesc yd, dyd, xd, dxd; /* forward: xd -> yd */
  float alpha, beta;
  const float *y, *dy, *x;
  float *out;
} act_args;

static float act_f(const struct cudnnActivationStruct *a, float x) {
  float c = (float)a->coef;
  if (isnan(x) && a->propagate) return x;
  switch (a->mode) {
  case CUDNN_ACTIVATION_SIGMOID:
    return 1 / (1 + expf(-x));
  case CUDNN_ACTIVATION_RELU:
    return fmaxf(x, 0); /* fmaxf drops a NaN: not propagated */
  case CUDNN_ACTIVATION_TANH:
    return tanhf(x);
  case CUDNN_ACTIVATION_CLIPPED_RELU:
    return fminf(fmaxf(x, 0), c);
  case CUDNN_ACTIVATION_ELU:
    return x > 0 ? x : c * expm1f(x);
  default:
    return x;
  }
}

/* d f / d x at x, where f(x) = y. */
static float act_df(const struct cudnnActivationStruct *a, float y, float x) {
  float c = (float)a->coef;
  switch (a->mode) {
  case CUDNN_ACTIVATION_SIGMOID:
    return y * (1 - y);
  case CUDNN_ACTIVATION_RELU:
    return x > 0;
  case CUDNN_ACTIVATION_TANH:
    return 1 - y * y;
  case CUDNN_ACTIVATION_CLIPPED_RELU:
    return x > 0 && x < c;
  case CUDNN_ACTIVATION_ELU:
    return x > 0 ? 1 : c * expf(x);
  default:
    return 1;
  }
}

static void act_fwd_run(void *p) {
  const act_args *a = p;
  const tdesc *xd = &a->xd;
  for (int n = 0; n < xd->n; n++)
    for (int c = 0; c < xd->c; c++)
      for (int h = 0; h < xd->h; h++)
        for (int w = 0; w < xd->w; w++)
          blend(&a->out[at(&a->yd, n, c, h, w)], act_f(&a->act, a->x[at(xd, n, c, h, w)]), a->alpha,
                a->beta);
}

static void act_bwd_run(void *p) {
  const act_args *a = p;
  const tdesc *xd = &a->xd;
  for (int n = 0; n < xd->n; n++)
    for (int c = 0; c < xd->c; c++)
      for (int h = 0; h < xd->h; h++)
        for (int w = 0; w < xd->w; w++) {
          float y = a->y[at(&a->yd, n, c, h, w)], x = a->x[at(xd, n, c, h, w)];
          float dy = a->dy[at(&a->dyd, n, c, h, w)];
          blend(&a->out[at(&a->dxd, n, c, h, w)], dy * act_df(&a->act, y, x), a->alpha, a->beta);
        }
}

static cudnnStatus_t act_check(cudnnHandle_t h, cudnnActivationDescriptor_t d, const void *alpha,
                               const void *beta, act_args *a) {
  if (!h || !d || !d->set || !alpha || !beta) return BAD;
  if (d->mode == CUDNN_ACTIVATION_IDENTITY) return BAD; /* only valid in fused convolutions */
  a->act = *d;
  a->alpha = *(const float *)alpha, a->beta = *(const float *)beta;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnActivationForward(cudnnHandle_t handle,
                                     cudnnActivationDescriptor_t activationDesc, const void *alpha,
                                     const cudnnTensorDescriptor_t xDesc, const void *x,
                                     const void *beta, const cudnnTensorDescriptor_t yDesc,
                                     void *y) {
  static const char fn[] = "cudnnActivationForward";
  act_args a = {.x = x, .out = y};
  cudnnStatus_t st = act_check(handle, activationDesc, alpha, beta, &a);
  if (st) return st;
  if (!xDesc || !yDesc || !xDesc->set || !yDesc->set || !same_dims(&xDesc->d, &yDesc->d))
    return BAD;
  a.xd = xDesc->d, a.yd = yDesc->d;
  if (!tensor_ok(fn, "x", &a.xd, x) || !tensor_ok(fn, "y", &a.yd, y)) return BAD;
  return submit(handle, act_fwd_run, &a, sizeof a);
}

cudnnStatus_t cudnnActivationBackward(cudnnHandle_t handle,
                                      cudnnActivationDescriptor_t activationDesc, const void *alpha,
                                      const cudnnTensorDescriptor_t yDesc, const void *y,
                                      const cudnnTensorDescriptor_t dyDesc, const void *dy,
                                      const cudnnTensorDescriptor_t xDesc, const void *x,
                                      const void *beta, const cudnnTensorDescriptor_t dxDesc,
                                      void *dx) {
  static const char fn[] = "cudnnActivationBackward";
  act_args a = {.y = y, .dy = dy, .x = x, .out = dx};
  cudnnStatus_t st = act_check(handle, activationDesc, alpha, beta, &a);
  if (st) return st;
  if (!yDesc || !dyDesc || !xDesc || !dxDesc || !yDesc->set || !dyDesc->set || !xDesc->set ||
      !dxDesc->set || !same_dims(&xDesc->d, &yDesc->d) || !same_dims(&xDesc->d, &dyDesc->d) ||
      !same_dims(&xDesc->d, &dxDesc->d))
    return BAD;
  a.yd = yDesc->d, a.dyd = dyDesc->d, a.xd = xDesc->d, a.dxd = dxDesc->d;
  if (!tensor_ok(fn, "y", &a.yd, y) || !tensor_ok(fn, "dy", &a.dyd, dy) ||
      !tensor_ok(fn, "x", &a.xd, x) || !tensor_ok(fn, "dx", &a.dxd, dx))
    return BAD;
  return submit(handle, act_bwd_run, &a, sizeof a);
}

/* ---- pooling ---- */

typedef struct {
  struct cudnnPoolingStruct pool;
  tdesc xd, yd, dyd, dxd;
  float alpha, beta;
  const float *x, *dy;
  float *out;
} pool_args;

static int pool_out(int in, int window, int pad, int stride) {
  int span = in + 2 * pad - window;
  return span < 0 ? 0 : span / stride + 1;
}

cudnnStatus_t cudnnGetPooling2dForwardOutputDim(const cudnnPoolingDescriptor_t poolingDesc,
                                                const cudnnTensorDescriptor_t inputTensorDesc,
                                                int *n, int *c, int *h, int *w) {
  const struct cudnnPoolingStruct *p = poolingDesc;
  if (!p || !inputTensorDesc || !p->set || !inputTensorDesc->set || !n || !c || !h || !w)
    return BAD;
  const tdesc *x = &inputTensorDesc->d;
  *n = x->n, *c = x->c;
  *h = pool_out(x->h, p->wh, p->ph, p->sh), *w = pool_out(x->w, p->ww, p->pw, p->sw);
  return *h && *w ? CUDNN_STATUS_SUCCESS : BAD;
}

static int pool_is_max(const struct cudnnPoolingStruct *p) {
  return p->mode == CUDNN_POOLING_MAX || p->mode == CUDNN_POOLING_MAX_DETERMINISTIC;
}

/* Visits window (oh, ow) of plane (n, c). Max pooling: returns the chosen element as h * W + w
 * (the first largest; the first NaN when NaNs propagate; -1 for none) and its value in *val.
 * Average pooling: returns -1, the mean in *val and its divisor in *count. */
static long long pool_window(const pool_args *a, int n, int c, int oh, int ow, float *val,
                             int *count) {
  const struct cudnnPoolingStruct *p = &a->pool;
  int h0 = oh * p->sh - p->ph, w0 = ow * p->sw - p->pw, inside = 0;
  long long best = -1;
  float m = -INFINITY;
  double sum = 0;
  for (int h = h0 < 0 ? 0 : h0; h < h0 + p->wh && h < a->xd.h; h++)
    for (int w = w0 < 0 ? 0 : w0; w < w0 + p->ww && w < a->xd.w; w++) {
      float v = a->x[at(&a->xd, n, c, h, w)];
      int take =
          isnan(v) ? p->propagate && !(best >= 0 && isnan(m)) : best < 0 || (!isnan(m) && v > m);
      if (take) best = (long long)h * a->xd.w + w, m = v;
      inside++;
      sum += v;
    }
  if (pool_is_max(p)) {
    *val = m;
    return best;
  }
  *count = p->mode == CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING ? p->wh * p->ww : inside;
  *val = *count ? (float)(sum / *count) : 0;
  return -1;
}

static void pool_fwd_run(void *p) {
  const pool_args *a = p;
  const tdesc *y = &a->yd;
  for (int n = 0; n < y->n; n++)
    for (int c = 0; c < y->c; c++)
      for (int oh = 0; oh < y->h; oh++)
        for (int ow = 0; ow < y->w; ow++) {
          float v;
          int count;
          pool_window(a, n, c, oh, ow, &v, &count);
          blend(&a->out[at(y, n, c, oh, ow)], v, a->alpha, a->beta);
        }
}

/* Windows overlap, so gradients are summed in a dense scratch plane first, then blended. */
static void pool_bwd_run(void *p) {
  const pool_args *a = p;
  const tdesc *x = &a->xd, *dy = &a->dyd;
  tdesc dense = {x->n, x->c, x->h, x->w, (long long)x->c * x->h * x->w, (long long)x->h * x->w,
                 x->w, 1};
  double *acc = calloc((size_t)dense.ns * x->n, sizeof *acc);
  if (!acc) abort();
  for (int n = 0; n < dy->n; n++)
    for (int c = 0; c < dy->c; c++)
      for (int oh = 0; oh < dy->h; oh++)
        for (int ow = 0; ow < dy->w; ow++) {
          float g = a->dy[at(dy, n, c, oh, ow)], v;
          int count;
          long long best = pool_window(a, n, c, oh, ow, &v, &count);
          if (pool_is_max(&a->pool)) {
            if (best >= 0) acc[at(&dense, n, c, 0, 0) + best] += g;
            continue;
          }
          int h0 = oh * a->pool.sh - a->pool.ph, w0 = ow * a->pool.sw - a->pool.pw;
          for (int h = h0 < 0 ? 0 : h0; h < h0 + a->pool.wh && h < x->h; h++)
            for (int w = w0 < 0 ? 0 : w0; w < w0 + a->pool.ww && w < x->w; w++)
              acc[at(&dense, n, c, h, w)] += (double)g / count;
        }
  for (int n = 0; n < x->n; n++)
    for (int c = 0; c < x->c; c++)
      for (int h = 0; h < x->h; h++)
        for (int w = 0; w < x->w; w++)
          blend(&a->out[at(&a->dxd, n, c, h, w)], acc[at(&dense, n, c, h, w)], a->alpha, a->beta);
  free(acc);
}

static cudnnStatus_t pool_check(cudnnHandle_t h, const cudnnPoolingDescriptor_t pd,
                                const void *alpha, const void *beta,
                                const cudnnTensorDescriptor_t xDesc,
                                const cudnnTensorDescriptor_t yDesc, pool_args *a) {
  int n, c, oh, ow;
  if (!h || !alpha || !beta || !yDesc || !yDesc->set) return BAD;
  if (cudnnGetPooling2dForwardOutputDim(pd, xDesc, &n, &c, &oh, &ow)) return BAD;
  const tdesc *y = &yDesc->d;
  if (y->n != n || y->c != c || y->h != oh || y->w != ow) return BAD;
  a->pool = *pd;
  a->xd = xDesc->d, a->yd = yDesc->d;
  a->alpha = *(const float *)alpha, a->beta = *(const float *)beta;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnPoolingForward(cudnnHandle_t handle, const cudnnPoolingDescriptor_t poolingDesc,
                                  const void *alpha, const cudnnTensorDescriptor_t xDesc,
                                  const void *x, const void *beta,
                                  const cudnnTensorDescriptor_t yDesc, void *y) {
  static const char fn[] = "cudnnPoolingForward";
  pool_args a = {.x = x, .out = y};
  cudnnStatus_t st = pool_check(handle, poolingDesc, alpha, beta, xDesc, yDesc, &a);
  if (st) return st;
  if (!tensor_ok(fn, "x", &a.xd, x) || !tensor_ok(fn, "y", &a.yd, y)) return BAD;
  return submit(handle, pool_fwd_run, &a, sizeof a);
}

cudnnStatus_t cudnnPoolingBackward(cudnnHandle_t handle, const cudnnPoolingDescriptor_t poolingDesc,
                                   const void *alpha, const cudnnTensorDescriptor_t yDesc,
                                   const void *y, const cudnnTensorDescriptor_t dyDesc,
                                   const void *dy, const cudnnTensorDescriptor_t xDesc,
                                   const void *x, const void *beta,
                                   const cudnnTensorDescriptor_t dxDesc, void *dx) {
  static const char fn[] = "cudnnPoolingBackward";
  pool_args a = {.x = x, .dy = dy, .out = dx};
  cudnnStatus_t st = pool_check(handle, poolingDesc, alpha, beta, xDesc, yDesc, &a);
  if (st) return st;
  if (!dyDesc || !dxDesc || !dyDesc->set || !dxDesc->set || !same_dims(&dyDesc->d, &a.yd) ||
      !same_dims(&dxDesc->d, &a.xd))
    return BAD;
  a.dyd = dyDesc->d, a.dxd = dxDesc->d;
  if (!tensor_ok(fn, "y", &a.yd, y) || !tensor_ok(fn, "dy", &a.dyd, dy) ||
      !tensor_ok(fn, "x", &a.xd, x) || !tensor_ok(fn, "dx", &a.dxd, dx))
    return BAD;
  return submit(handle, pool_bwd_run, &a, sizeof a);
}
