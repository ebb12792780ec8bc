/* The CUDA simulation (lib/cuda/sim) against plain reference loops written here.
 *
 * cuBLAS and cuDNN results are compared with double-precision references by normalised error
 * |got - want| / (1 + |want|); the references scatter where the simulation gathers, so the two
 * share no indexing code. Stream tests run with PARTIME_SIM_JITTER=1 (unless the environment
 * says otherwise), so a missing dependency shows up as a wrong value, not as luck. The
 * no-device case runs in a child process, since the device count is read once per process. */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <cudnn.h>
#include <nccl.h>
#include <pt_sim.h>
#include "../lib/pt_test.h"

extern char **environ;

static unsigned long long seed = 0x5eed1234ULL;
static const double TOL = 1e-5;

static void fill_rand(float *p, size_t n, float lo, float hi) {
  for (size_t i = 0; i < n; i++) p[i] = pt_test_uniform(&seed, lo, hi);
}

static int is_garbage(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u == 0xffffffffu;
}

static float garbage(void) {
  float f;
  memset(&f, 0xff, sizeof f);
  return f;
}

/* Worst normalised error of got against want, printed when over TOL. */
static int near(const char *what, const float *got, const double *want, size_t n) {
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < n; i++) {
    double e = fabs(got[i] - want[i]) / (1 + fabs(want[i]));
    if (isnan(e)) e = INFINITY;
    if (e > worst) worst = e, at = i;
  }
  if (worst <= TOL) return 1;
  fprintf(stderr, "%s: worst error %g at %zu (got %g, want %g)\n", what, worst, at, got[at],
          want[at]);
  return 0;
}

static float *dev_upload(const float *h, size_t n) {
  float *d = NULL;
  if (cudaMalloc((void **)&d, n * sizeof *d) ||
      cudaMemcpy(d, h, n * sizeof *d, cudaMemcpyHostToDevice))
    return NULL;
  return d;
}

/* ---- kernels for the stream tests, through the launch hook ---- */

typedef struct {
  float *y;
  const float *x, *x2; /* y = a * x + b (+ x2); x NULL: y = b */
  float a, b;
} axpb_args;

static void axpb_run(const void *p, int64_t n) {
  const axpb_args *a = p;
  for (int64_t i = 0; i < n; i++)
    a->y[i] = (a->x ? a->a * a->x[i] : 0) + a->b + (a->x2 ? a->x2[i] : 0);
}

static void axpb(cudaStream_t s, int64_t n, float *y, const float *x, const float *x2, float a,
                 float b) {
  axpb_args args = {y, x, x2, a, b};
  pt_sim_launch(s, n, axpb_run, &args, sizeof args);
}

/* ---- runtime basics ---- */

static int no_device_child(void) {
  int n = 7;
  void *p;
  CHECK(cudaGetDeviceCount(&n) == cudaErrorNoDevice, "count with no device");
  CHECK(n == 0, "count %d", n);
  CHECK(cudaGetLastError() == cudaErrorNoDevice, "last error");
  CHECK(cudaSetDevice(0) == cudaErrorNoDevice, "set device");
  CHECK(cudaMalloc(&p, 16) == cudaErrorNoDevice, "malloc");
  PT_TEST_END();
}

static void test_no_device(const char *self) {
  pid_t pid;
  int status = -1;
  char *argv[] = {(char *)self, "--no-device", NULL};
  setenv("PARTIME_SIM_DEVICES", "0", 1);
  int rc = posix_spawn(&pid, "/proc/self/exe", NULL, NULL, argv, environ);
  setenv("PARTIME_SIM_DEVICES", "2", 1);
  CHECK(rc == 0 && waitpid(pid, &status, 0) == pid, "spawn");
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "no-device child failed (%d)", status);
}

static void test_devices_and_memory(void) {
  int n = -1, dev = -1, can = -1, v = 0;
  float *d, *d2, host[8] = {0}, *pinned;
  CHECK(cudaGetDeviceCount(&n) == cudaSuccess && n == 2, "count %d", n);
  CHECK(cudaSetDevice(5) == cudaErrorInvalidDevice, "set device 5");
  CHECK(cudaGetLastError() == cudaErrorInvalidDevice, "last error kept");
  CHECK(cudaGetLastError() == cudaSuccess, "last error reset");
  CHECK(!strcmp(cudaGetErrorName(cudaErrorInvalidDevice), "cudaErrorInvalidDevice"), "name");
  CHECK(cudaSetDevice(1) == cudaSuccess && cudaGetDevice(&dev) == cudaSuccess && dev == 1, "dev");
  CHECK(cudaSetDevice(0) == cudaSuccess, "set 0");
  CHECK(cudaDeviceCanAccessPeer(&can, 0, 1) == cudaSuccess && can == 1, "peer");
  CHECK(cudaDeviceEnablePeerAccess(1, 0) == cudaSuccess, "enable peer");
  CHECK(cudaDeviceEnablePeerAccess(1, 0) == cudaErrorPeerAccessAlreadyEnabled, "enable twice");
  CHECK(cudaRuntimeGetVersion(&v) == cudaSuccess && v > 0, "version");

  CHECK(cudaMalloc((void **)&d, 8 * sizeof *d) == cudaSuccess, "malloc");
  CHECK(cudaMalloc((void **)&d2, 8 * sizeof *d2) == cudaSuccess, "malloc");
  CHECK(cudaFree(host) == cudaErrorInvalidValue, "free of host memory");
  CHECK(cudaFree(d + 1) == cudaErrorInvalidValue, "free inside an allocation");
  CHECK(cudaMemcpy(host, host + 4, 4 * sizeof *host, cudaMemcpyDeviceToHost) ==
            cudaErrorInvalidValue,
        "D2H from host memory");
  CHECK(cudaMemcpy(d, host, 9 * sizeof *host, cudaMemcpyHostToDevice) == cudaErrorInvalidValue,
        "H2D overrun");
  CHECK(cudaMemcpy(host, d, 8 * sizeof *host, cudaMemcpyDeviceToHost) == cudaSuccess, "D2H");
  CHECK(is_garbage(host[3]), "fresh device memory reads as NaN garbage");
  CHECK(cudaMemset(d, 0, 8 * sizeof *d) == cudaSuccess, "memset");
  CHECK(cudaMemset(host, 0, sizeof host) == cudaErrorInvalidValue, "memset of host memory");
  CHECK(cudaMemcpy(d2, d, 8 * sizeof *d, cudaMemcpyDeviceToDevice) == cudaSuccess, "D2D");
  CHECK(cudaMemcpy(host, d2 + 4, 4 * sizeof *host, cudaMemcpyDefault) == cudaSuccess, "default");
  CHECK(host[0] == 0 && host[3] == 0, "zeros");
  CHECK(cudaMallocHost((void **)&pinned, 64) == cudaSuccess, "pinned");
  CHECK(cudaFreeHost(d) == cudaErrorInvalidValue, "free host of device memory");
  CHECK(cudaFreeHost(pinned) == cudaSuccess, "free pinned");
  cudaFree(d);
  cudaFree(d2);
  cudaGetLastError();
}

/* ---- cuBLAS ---- */

static void gemm_ref(int ta, int tb, int m, int n, int k, float alpha, const float *A, int lda,
                     const float *B, int ldb, float beta, const float *C0, int ldc, double *C) {
  for (int j = 0; j < n; j++)
    for (int i = 0; i < m; i++) {
      double acc = 0;
      for (int l = 0; l < k; l++)
        acc +=
            (double)(ta ? A[l + i * lda] : A[i + l * lda]) * (tb ? B[j + l * ldb] : B[l + j * ldb]);
      C[i + j * ldc] = alpha * acc + (beta != 0 ? beta * C0[i + j * ldc] : 0);
    }
}

static void test_sgemm(cublasHandle_t h) {
  const int m = 5, n = 7, k = 3, batch = 3;
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++)
      for (int accumulate = 0; accumulate < 2; accumulate++) {
        int lda = (ta ? k : m) + 2, ldb = (tb ? n : k) + 1, ldc = m + 3;
        long long sa = (long long)lda * (ta ? m : k) + 5, sb = (long long)ldb * (tb ? k : n) + 1,
                  sc = (long long)ldc * n + 2;
        size_t na = sa * batch, nb = sb * batch, nc = sc * batch;
        float *A = malloc(na * 4), *B = malloc(nb * 4), *C = malloc(nc * 4), *got = malloc(nc * 4);
        double *want = malloc(nc * sizeof *want);
        float alpha = accumulate ? 0.5f : 1.0f, beta = accumulate ? 1.0f : 0.0f;
        fill_rand(A, na, -1, 1);
        fill_rand(B, nb, -1, 1);
        if (accumulate)
          fill_rand(C, nc, -1, 1);
        else
          for (size_t i = 0; i < nc; i++) C[i] = garbage();
        for (size_t i = 0; i < nc; i++) want[i] = C[i]; /* what lies outside stays */
        for (int b = 0; b < batch; b++)
          gemm_ref(ta, tb, m, n, k, alpha, A + b * sa, lda, B + b * sb, ldb, beta, C + b * sc, ldc,
                   want + b * sc);
        float *dA = dev_upload(A, na), *dB = dev_upload(B, nb), *dC = dev_upload(C, nc);
        char what[64];
        cublasOperation_t oa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, ob = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
        CHECK(cublasSgemm(h, oa, ob, m, n, k, &alpha, dA, lda, dB, ldb, &beta, dC, ldc) ==
                  CUBLAS_STATUS_SUCCESS,
              "sgemm");
        CHECK(cublasSgemmStridedBatched(h, oa, ob, m, n, k, &alpha, dA + sa, lda, sa, dB + sb, ldb,
                                        sb, &beta, dC + sc, ldc, sc,
                                        batch - 1) == CUBLAS_STATUS_SUCCESS,
              "strided batched");
        cudaMemcpy(got, dC, nc * 4, cudaMemcpyDeviceToHost);
        /* outside C's m rows the garbage must survive, bit for bit */
        int kept = 1;
        for (size_t i = 0; i < nc; i++)
          if (!accumulate && is_garbage(C[i]) && isnan(want[i])) kept &= is_garbage(got[i]);
        for (size_t i = 0; i < nc; i++)
          if (isnan(want[i])) got[i] = 0, want[i] = 0;
        snprintf(what, sizeof what, "sgemm ta=%d tb=%d beta=%g", ta, tb, beta);
        CHECK(near(what, got, want, nc), "%s", what);
        CHECK(kept, "%s wrote outside C", what);
        cudaFree(dA), cudaFree(dB), cudaFree(dC);
        free(A), free(B), free(C), free(got), free(want);
      }
  /* a shared B (stride 0) and the argument checks */
  float one = 1, zero = 0, hA[6] = {1, 2, 3, 4, 5, 6}, hB[2] = {1, -1}, hC[6];
  float *dA = dev_upload(hA, 6), *dB = dev_upload(hB, 2), *dC = dev_upload(hA, 6);
  CHECK(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 2, &one, dA, 1, 2, dB, 2, 0,
                                  &zero, dC, 1, 1, 3) == CUBLAS_STATUS_SUCCESS,
        "stride 0");
  cudaMemcpy(hC, dC, sizeof hC, cudaMemcpyDeviceToHost);
  CHECK(hC[0] == -1 && hC[1] == -1 && hC[2] == -1 && hC[3] == 4, "stride 0: %g %g %g %g", hC[0],
        hC[1], hC[2], hC[3]);
  CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 3, 1, 2, &one, dA, 2, dB, 2, &zero, dC, 3) ==
            CUBLAS_STATUS_INVALID_VALUE,
        "lda < m");
  cudaFree(dA), cudaFree(dB), cudaFree(dC);
}

/* ---- cuDNN tensors: dense on the host, packed or strided on the device ---- */

typedef struct {
  int n, c, h, w;
  long long ns, cs, hs, ws;
  size_t elems;
  cudnnTensorDescriptor_t d;
} tens;

/* Strided: w every other float, gaps after rows, planes and images. */
static tens tens_make(int n, int c, int h, int w, int strided) {
  tens t = {n, c, h, w, 0, 0, 0, 1, 0, NULL};
  cudnnCreateTensorDescriptor(&t.d);
  if (!strided) {
    t.ws = 1, t.hs = w, t.cs = (long long)h * w, t.ns = t.cs * c;
    cudnnSetTensor4dDescriptor(t.d, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, c, h, w);
  } else {
    t.ws = 2, t.hs = 2 * w + 3, t.cs = t.hs * h + 1, t.ns = t.cs * c + 5;
    cudnnSetTensor4dDescriptorEx(t.d, CUDNN_DATA_FLOAT, n, c, h, w, (int)t.ns, (int)t.cs, (int)t.hs,
                                 (int)t.ws);
  }
  t.elems = (size_t)t.ns * n;
  return t;
}

static size_t tens_size(const tens *t) {
  return (size_t)t->n * t->c * t->h * t->w;
}

static long long tens_at(const tens *t, size_t i) {
  int w = i % t->w, h = i / t->w % t->h, c = i / t->w / t->h % t->c, n = i / t->w / t->h / t->c;
  return n * t->ns + c * t->cs + h * t->hs + w * t->ws;
}

/* A device copy of dense (NULL: all garbage), gaps filled with garbage. */
static float *tens_upload(const tens *t, const float *dense) {
  float *h = malloc(t->elems * sizeof *h), *d;
  for (size_t i = 0; i < t->elems; i++) h[i] = garbage();
  for (size_t i = 0; dense && i < tens_size(t); i++) h[tens_at(t, i)] = dense[i];
  d = dev_upload(h, t->elems);
  free(h);
  return d;
}

/* Dense copy of a device tensor; 0 if anything was written into the gaps. */
static int tens_download(const tens *t, const float *d, float *dense) {
  float *h = malloc(t->elems * sizeof *h);
  char *used = calloc(t->elems, 1);
  int gaps_ok = 1;
  cudaMemcpy(h, d, t->elems * sizeof *h, cudaMemcpyDeviceToHost);
  for (size_t i = 0; i < tens_size(t); i++) dense[i] = h[tens_at(t, i)], used[tens_at(t, i)] = 1;
  for (size_t i = 0; i < t->elems; i++)
    if (!used[i]) gaps_ok &= is_garbage(h[i]);
  free(h);
  free(used);
  return gaps_ok;
}

/* ---- convolution ---- */

typedef struct {
  int N, C, H, W, K, R, S, ph, pw, u, v, dh, dw, G;
  cudnnConvolutionMode_t mode;
} conv_case;

enum { FWD, BWD_DATA, BWD_FILTER };

/* Visits every (input, filter, output) triple the convolution multiplies and accumulates the
 * requested product: FWD out[y] += a[x] b[w]; BWD_DATA out[x] += a[y] b[w];
 * BWD_FILTER out[w] += a[x] b[y]. */
static void conv_ref(const conv_case *c, int OH, int OW, int which, const float *a, const float *b,
                     double *out) {
  int Cg = c->C / c->G, Kg = c->K / c->G;
  for (int n = 0; n < c->N; n++)
    for (int k = 0; k < c->K; k++)
      for (int oh = 0; oh < OH; oh++)
        for (int ow = 0; ow < OW; ow++)
          for (int cl = 0; cl < Cg; cl++)
            for (int r = 0; r < c->R; r++)
              for (int s = 0; s < c->S; s++) {
                int ih = oh * c->u - c->ph + r * c->dh, iw = ow * c->v - c->pw + s * c->dw;
                if (ih < 0 || ih >= c->H || iw < 0 || iw >= c->W) continue;
                int flip = c->mode == CUDNN_CONVOLUTION;
                size_t xi = (((size_t)n * c->C + k / Kg * Cg + cl) * c->H + ih) * c->W + iw;
                size_t wi = (((size_t)k * Cg + cl) * c->R + (flip ? c->R - 1 - r : r)) * c->S +
                            (flip ? c->S - 1 - s : s);
                size_t yi = (((size_t)n * c->K + k) * OH + oh) * OW + ow;
                if (which == FWD) out[yi] += (double)a[xi] * b[wi];
                if (which == BWD_DATA) out[xi] += (double)a[yi] * b[wi];
                if (which == BWD_FILTER) out[wi] += (double)a[xi] * b[yi];
              }
}

/* want = alpha * ref + beta * prior */
static void blend_ref(double *want, const double *ref, float alpha, float beta, const float *prior,
                      size_t n) {
  for (size_t i = 0; i < n; i++) want[i] = alpha * ref[i] + (beta != 0 ? beta * prior[i] : 0);
}

static void test_conv_case(cudnnHandle_t h, const conv_case *c, int strided) {
  char what[160];
  int OH = (c->H + 2 * c->ph - ((c->R - 1) * c->dh + 1)) / c->u + 1;
  int OW = (c->W + 2 * c->pw - ((c->S - 1) * c->dw + 1)) / c->v + 1;
  int on, oc, oh, ow, got_algos = 0;
  tens x = tens_make(c->N, c->C, c->H, c->W, strided), y = tens_make(c->N, c->K, OH, OW, strided);
  size_t nx = tens_size(&x), ny = tens_size(&y), nw = (size_t)c->K * (c->C / c->G) * c->R * c->S;
  float *hx = malloc(nx * 4), *hw = malloc(nw * 4), *hdy = malloc(ny * 4);
  float *got = malloc((nx + ny + nw) * 4), *prior = malloc((nx + ny + nw) * 4);
  double *ref = calloc(nx + ny + nw, sizeof *ref), *want = malloc((nx + ny + nw) * sizeof *want);
  cudnnFilterDescriptor_t wd;
  cudnnConvolutionDescriptor_t cd;
  snprintf(what, sizeof what,
           "conv N%d C%d %dx%d K%d %dx%d pad %d,%d stride %d,%d dil %d,%d G%d %s%s", c->N, c->C,
           c->H, c->W, c->K, c->R, c->S, c->ph, c->pw, c->u, c->v, c->dh, c->dw, c->G,
           c->mode == CUDNN_CONVOLUTION ? "conv" : "xcorr", strided ? " strided" : "");
  fill_rand(hx, nx, -1, 1), fill_rand(hw, nw, -1, 1), fill_rand(hdy, ny, -1, 1);
  cudnnCreateFilterDescriptor(&wd);
  cudnnSetFilter4dDescriptor(wd, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, c->K, c->C / c->G, c->R,
                             c->S);
  cudnnCreateConvolutionDescriptor(&cd);
  cudnnSetConvolution2dDescriptor(cd, c->ph, c->pw, c->u, c->v, c->dh, c->dw, c->mode,
                                  CUDNN_DATA_FLOAT);
  cudnnSetConvolutionGroupCount(cd, c->G);
  cudnnSetConvolutionMathType(cd, CUDNN_TENSOR_OP_MATH);
  CHECK(cudnnGetConvolution2dForwardOutputDim(cd, x.d, wd, &on, &oc, &oh, &ow) == 0 && on == c->N &&
            oc == c->K && oh == OH && ow == OW,
        "%s: output dim %d %d %d %d", what, on, oc, oh, ow);

  cudnnConvolutionFwdAlgoPerf_t fp[4];
  cudnnConvolutionBwdDataAlgoPerf_t dp[4];
  cudnnConvolutionBwdFilterAlgoPerf_t wp[4];
  CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, x.d, wd, cd, y.d, 4, &got_algos, fp) == 0 &&
            got_algos >= 1 && fp[0].status == CUDNN_STATUS_SUCCESS,
        "%s: fwd algos", what);
  CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, wd, y.d, cd, x.d, 4, &got_algos, dp) == 0 &&
            got_algos >= 1 && dp[0].status == CUDNN_STATUS_SUCCESS,
        "%s: bwd data algos", what);
  CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, x.d, y.d, cd, wd, 4, &got_algos, wp) ==
                0 &&
            got_algos >= 1 && wp[0].status == CUDNN_STATUS_SUCCESS,
        "%s: bwd filter algos", what);
  size_t fws = 0, dws = 0, wws = 0;
  cudnnGetConvolutionForwardWorkspaceSize(h, x.d, wd, cd, y.d, fp[0].algo, &fws);
  cudnnGetConvolutionBackwardDataWorkspaceSize(h, wd, y.d, cd, x.d, dp[0].algo, &dws);
  cudnnGetConvolutionBackwardFilterWorkspaceSize(h, x.d, y.d, cd, wd, wp[0].algo, &wws);
  CHECK(fws > 0 && fws == fp[0].memory && dws > 0 && wws > 0, "%s: workspace sizes", what);
  void *ws;
  size_t wsize = fws > dws ? (fws > wws ? fws : wws) : (dws > wws ? dws : wws);
  cudaMalloc(&ws, wsize);

  float *dx = tens_upload(&x, hx), *dw = dev_upload(hw, nw), *dy = tens_upload(&y, NULL);
  for (int pass = 0; pass < 2; pass++) {
    /* pass 0 overwrites garbage (beta 0), pass 1 accumulates onto pass 0's result */
    float alpha = pass ? 0.5f : 1.0f, beta = pass ? 1.0f : 0.0f;
    int gaps = tens_download(&y, dy, prior);
    CHECK(cudnnConvolutionForward(h, &alpha, x.d, dx, wd, dw, cd, fp[0].algo, ws, fws - 1, &beta,
                                  y.d, dy) == CUDNN_STATUS_BAD_PARAM,
          "%s: short workspace", what);
    CHECK(cudnnConvolutionForward(h, &alpha, x.d, dx, wd, dw, cd, fp[0].algo, ws, fws, &beta, y.d,
                                  dy) == 0,
          "%s: fwd", what);
    memset(ref, 0, ny * sizeof *ref);
    conv_ref(c, OH, OW, FWD, hx, hw, ref);
    blend_ref(want, ref, alpha, beta, prior, ny);
    gaps &= tens_download(&y, dy, got);
    CHECK(near(what, got, want, ny), "%s: forward pass %d", what, pass);
    CHECK(gaps, "%s: forward wrote into gaps", what);
  }
  /* backward: the output gradient replaces y, dx and dw get the gradients */
  float *ddy = tens_upload(&y, hdy), *ddx = tens_upload(&x, NULL), *ddw;
  cudaMalloc((void **)&ddw, nw * 4); /* fresh device memory: NaN garbage */
  for (int pass = 0; pass < 2; pass++) {
    float alpha = pass ? 2.0f : 1.0f, beta = pass ? 1.0f : 0.0f;
    int gaps = tens_download(&x, ddx, prior);
    CHECK(cudnnConvolutionBackwardData(h, &alpha, wd, dw, y.d, ddy, cd, dp[0].algo, ws, dws, &beta,
                                       x.d, ddx) == 0,
          "%s: bwd data", what);
    memset(ref, 0, nx * sizeof *ref);
    conv_ref(c, OH, OW, BWD_DATA, hdy, hw, ref);
    blend_ref(want, ref, alpha, beta, prior, nx);
    gaps &= tens_download(&x, ddx, got);
    CHECK(near(what, got, want, nx), "%s: backward data pass %d", what, pass);
    CHECK(gaps, "%s: backward data wrote into gaps", what);

    cudaMemcpy(prior, ddw, nw * 4, cudaMemcpyDeviceToHost);
    CHECK(cudnnConvolutionBackwardFilter(h, &alpha, x.d, dx, y.d, ddy, cd, wp[0].algo, ws, wws,
                                         &beta, wd, ddw) == 0,
          "%s: bwd filter", what);
    memset(ref, 0, nw * sizeof *ref);
    conv_ref(c, OH, OW, BWD_FILTER, hx, hdy, ref);
    blend_ref(want, ref, alpha, beta, prior, nw);
    cudaMemcpy(got, ddw, nw * 4, cudaMemcpyDeviceToHost);
    CHECK(near(what, got, want, nw), "%s: backward filter pass %d", what, pass);
  }
  /* bias: forward through cudnnAddTensor, backward through cudnnConvolutionBackwardBias */
  tens b = tens_make(1, c->K, 1, 1, strided);
  float *hb = malloc(c->K * 4), *db = NULL;
  fill_rand(hb, c->K, -1, 1);
  db = tens_upload(&b, hb);
  for (int pass = 0; pass < 2; pass++) {
    float alpha = pass ? 0.25f : 1.0f, beta = pass ? 1.0f : 0.0f, one = 1;
    tens_download(&y, dy, prior);
    CHECK(cudnnAddTensor(h, &alpha, b.d, db, &one, y.d, dy) == 0, "%s: add tensor", what);
    for (size_t i = 0; i < ny; i++) want[i] = prior[i] + alpha * hb[i / (OH * OW) % c->K];
    tens_download(&y, dy, got);
    CHECK(near(what, got, want, ny), "%s: bias add pass %d", what, pass);

    float *dbias = tens_upload(&b, NULL), hprior[64];
    if (pass) cudaMemcpy(dbias, db, b.elems * 4, cudaMemcpyDeviceToDevice);
    tens_download(&b, dbias, hprior);
    CHECK(cudnnConvolutionBackwardBias(h, &alpha, y.d, ddy, &beta, b.d, dbias) == 0, "%s: bwd bias",
          what);
    memset(ref, 0, c->K * sizeof *ref);
    for (size_t i = 0; i < ny; i++) ref[i / (OH * OW) % c->K] += hdy[i];
    blend_ref(want, ref, alpha, beta, hprior, c->K);
    tens_download(&b, dbias, got);
    CHECK(near(what, got, want, c->K), "%s: backward bias pass %d", what, pass);
    cudaFree(dbias);
  }
  cudaFree(db), cudaFree(dx), cudaFree(dw), cudaFree(dy), cudaFree(ddy), cudaFree(ddx);
  cudaFree(ddw), cudaFree(ws);
  cudnnDestroyTensorDescriptor(x.d), cudnnDestroyTensorDescriptor(y.d);
  cudnnDestroyTensorDescriptor(b.d);
  cudnnDestroyFilterDescriptor(wd), cudnnDestroyConvolutionDescriptor(cd);
  free(hx), free(hw), free(hdy), free(got), free(prior), free(ref), free(want), free(hb);
}

static void test_conv(cudnnHandle_t h) {
  static const conv_case cases[] = {
      {2, 3, 7, 6, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION},
      {2, 3, 7, 6, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, CUDNN_CONVOLUTION},
      {1, 4, 9, 8, 6, 3, 2, 2, 1, 2, 3, 1, 2, 2, CUDNN_CROSS_CORRELATION},
      {2, 6, 8, 8, 6, 3, 3, 1, 0, 2, 2, 2, 1, 3, CUDNN_CONVOLUTION},
      {1, 2, 5, 5, 3, 2, 2, 0, 0, 1, 1, 2, 2, 1, CUDNN_CONVOLUTION},
      {3, 4, 4, 5, 4, 1, 1, 0, 0, 1, 1, 1, 1, 4, CUDNN_CROSS_CORRELATION},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
    for (int strided = 0; strided < 2; strided++) test_conv_case(h, &cases[i], strided);

  /* CONVOLUTION is CROSS_CORRELATION with the filter flipped: a 1x2 filter [1, 2] on [a, b] */
  float hx[2] = {10, 100}, hw[2] = {1, 2}, r[2];
  float *dx = dev_upload(hx, 2), *dw = dev_upload(hw, 2), *dy, one = 1, zero = 0;
  cudaMalloc((void **)&dy, sizeof r);
  tens x = tens_make(1, 1, 1, 2, 0), y = tens_make(1, 1, 1, 1, 0);
  cudnnFilterDescriptor_t wd;
  cudnnConvolutionDescriptor_t cd;
  cudnnCreateFilterDescriptor(&wd);
  cudnnSetFilter4dDescriptor(wd, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, 1, 1, 1, 2);
  cudnnCreateConvolutionDescriptor(&cd);
  for (int m = 0; m < 2; m++) {
    cudnnSetConvolution2dDescriptor(
        cd, 0, 0, 1, 1, 1, 1, m ? CUDNN_CROSS_CORRELATION : CUDNN_CONVOLUTION, CUDNN_DATA_FLOAT);
    cudnnConvolutionForward(h, &one, x.d, dx, wd, dw, cd, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                            NULL, 0, &zero, y.d, dy);
    cudaMemcpy(&r[m], dy, sizeof *r, cudaMemcpyDeviceToHost);
  }
  CHECK(r[0] == 10 * 2 + 100 * 1 && r[1] == 10 * 1 + 100 * 2, "flip: %g %g", r[0], r[1]);
  CHECK(cudnnSetTensor4dDescriptor(x.d, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, 1, 1, 1, 2) ==
            CUDNN_STATUS_NOT_SUPPORTED,
        "NHWC");
  CHECK(cudnnSetTensor4dDescriptor(x.d, CUDNN_TENSOR_NCHW, CUDNN_DATA_HALF, 1, 1, 1, 2) ==
            CUDNN_STATUS_NOT_SUPPORTED,
        "half");
  cudaFree(dx), cudaFree(dw), cudaFree(dy);
  cudnnDestroyTensorDescriptor(x.d), cudnnDestroyTensorDescriptor(y.d);
  cudnnDestroyFilterDescriptor(wd), cudnnDestroyConvolutionDescriptor(cd);
}

static void test_add_tensor_broadcast(cudnnHandle_t h) {
  /* A (2,1,3,1) onto C (2,4,3,5) */
  tens a = tens_make(2, 1, 3, 1, 0), c = tens_make(2, 4, 3, 5, 1);
  float ha[6], hc[120], got[120], alpha = 2, beta = 0.5f;
  double want[120];
  fill_rand(ha, 6, -1, 1), fill_rand(hc, 120, -1, 1);
  float *da = tens_upload(&a, ha), *dc = tens_upload(&c, hc);
  CHECK(cudnnAddTensor(h, &alpha, a.d, da, &beta, c.d, dc) == 0, "add tensor broadcast");
  for (int i = 0; i < 120; i++) want[i] = alpha * ha[i / 60 * 3 + i / 5 % 3] + beta * hc[i];
  tens_download(&c, dc, got);
  CHECK(near("add tensor broadcast", got, want, 120), "add tensor broadcast");
  tens bad = tens_make(2, 2, 3, 1, 0);
  CHECK(cudnnAddTensor(h, &alpha, bad.d, da, &beta, c.d, dc) == CUDNN_STATUS_BAD_PARAM,
        "C dims 2 vs 4");
  cudaFree(da), cudaFree(dc);
  cudnnDestroyTensorDescriptor(a.d), cudnnDestroyTensorDescriptor(c.d);
  cudnnDestroyTensorDescriptor(bad.d);
}

/* ---- activation ---- */

static double act_ref(cudnnActivationMode_t m, double coef, double x, double *dfdx) {
  double s = 1 / (1 + exp(-x)), t = tanh(x);
  switch (m) {
  case CUDNN_ACTIVATION_SIGMOID:
    *dfdx = s * (1 - s);
    return s;
  case CUDNN_ACTIVATION_RELU:
    *dfdx = x > 0;
    return x > 0 ? x : 0;
  case CUDNN_ACTIVATION_TANH:
    *dfdx = 1 - t * t;
    return t;
  case CUDNN_ACTIVATION_CLIPPED_RELU:
    *dfdx = x > 0 && x < coef;
    return x < 0 ? 0 : x > coef ? coef : x;
  default:
    *dfdx = x > 0 ? 1 : coef * exp(x);
    return x > 0 ? x : coef * (exp(x) - 1);
  }
}

static void test_activation(cudnnHandle_t h) {
  static const cudnnActivationMode_t modes[] = {
      CUDNN_ACTIVATION_SIGMOID, CUDNN_ACTIVATION_RELU, CUDNN_ACTIVATION_TANH,
      CUDNN_ACTIVATION_CLIPPED_RELU, CUDNN_ACTIVATION_ELU};
  const int N = 2, C = 3, H = 4, W = 5, n = N * C * H * W;
  float hx[120], hdy[120], y[120], dx[120], prior[120];
  double want[120], dwant[120];
  cudnnActivationDescriptor_t ad;
  cudnnCreateActivationDescriptor(&ad);
  fill_rand(hx, n, -3, 3), fill_rand(hdy, n, -1, 1);
  for (int strided = 0; strided < 2; strided++)
    for (size_t mi = 0; mi < sizeof modes / sizeof *modes; mi++) {
      char what[64];
      double coef = modes[mi] == CUDNN_ACTIVATION_CLIPPED_RELU ? 1.5 : 0.7;
      float alpha = strided ? 2.0f : 1.0f, beta = strided ? 0.5f : 0.0f;
      tens t = tens_make(N, C, H, W, strided), td = tens_make(N, C, H, W, 0);
      float *dxd = tens_upload(&t, hx), *dyd = tens_upload(&t, strided ? hdy : NULL);
      float *ddy = tens_upload(&td, hdy), *ddx = tens_upload(&t, strided ? hx : NULL);
      snprintf(what, sizeof what, "activation %d%s", modes[mi], strided ? " strided" : "");
      cudnnSetActivationDescriptor(ad, modes[mi], CUDNN_NOT_PROPAGATE_NAN, coef);
      tens_download(&t, dyd, prior);
      CHECK(cudnnActivationForward(h, ad, &alpha, t.d, dxd, &beta, t.d, dyd) == 0, "%s", what);
      for (int i = 0; i < n; i++) {
        double d;
        want[i] = alpha * act_ref(modes[mi], coef, hx[i], &d) + beta * (beta ? prior[i] : 0);
      }
      CHECK(tens_download(&t, dyd, y) && near(what, y, want, n), "%s forward", what);
      /* backward from the plain (alpha 1, beta 0) outputs */
      float one = 1, zero = 0;
      cudnnActivationForward(h, ad, &one, t.d, dxd, &zero, t.d, dyd);
      tens_download(&t, ddx, prior);
      CHECK(cudnnActivationBackward(h, ad, &alpha, t.d, dyd, td.d, ddy, t.d, dxd, &beta, t.d,
                                    ddx) == 0,
            "%s", what);
      for (int i = 0; i < n; i++) {
        double d;
        act_ref(modes[mi], coef, hx[i], &d);
        dwant[i] = alpha * d * hdy[i] + beta * (beta ? prior[i] : 0);
      }
      CHECK(tens_download(&t, ddx, dx) && near(what, dx, dwant, n), "%s backward", what);
      cudaFree(dxd), cudaFree(dyd), cudaFree(ddy), cudaFree(ddx);
      cudnnDestroyTensorDescriptor(t.d), cudnnDestroyTensorDescriptor(td.d);
    }
  /* NaN through ReLU: dropped or kept as asked */
  tens t = tens_make(1, 1, 1, 2, 0);
  float hn[2] = {NAN, -1}, r[2], one = 1, zero = 0;
  float *dn = dev_upload(hn, 2), *dr = tens_upload(&t, NULL);
  for (int prop = 0; prop < 2; prop++) {
    cudnnSetActivationDescriptor(ad, CUDNN_ACTIVATION_RELU,
                                 prop ? CUDNN_PROPAGATE_NAN : CUDNN_NOT_PROPAGATE_NAN, 0);
    cudnnActivationForward(h, ad, &one, t.d, dn, &zero, t.d, dr);
    cudaMemcpy(r, dr, sizeof r, cudaMemcpyDeviceToHost);
    CHECK(prop ? isnan(r[0]) : r[0] == 0, "relu NaN propagate=%d: %g", prop, r[0]);
  }
  cudaFree(dn), cudaFree(dr);
  cudnnDestroyTensorDescriptor(t.d);
  cudnnDestroyActivationDescriptor(ad);
}

/* ---- pooling ---- */

/* Forward into y and, given dy, backward into dx (both dense, dx accumulated). */
static void pool_ref(cudnnPoolingMode_t mode, const float *x, int N, int C, int H, int W, int win,
                     int pad, int stride, int OH, int OW, double *y, const float *dy, double *dx) {
  for (int p = 0; p < N * C; p++)
    for (int oh = 0; oh < OH; oh++)
      for (int ow = 0; ow < OW; ow++) {
        int best = -1, count = 0;
        double sum = 0;
        for (int i = 0; i < win; i++)
          for (int j = 0; j < win; j++) {
            int hh = oh * stride - pad + i, ww = ow * stride - pad + j;
            if (hh < 0 || hh >= H || ww < 0 || ww >= W) continue;
            int at = (p * H + hh) * W + ww;
            if (best < 0 || x[at] > x[best]) best = at;
            sum += x[at], count++;
          }
        int div = mode == CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING ? win * win : count;
        int yi = (p * OH + oh) * OW + ow;
        int is_max = mode == CUDNN_POOLING_MAX || mode == CUDNN_POOLING_MAX_DETERMINISTIC;
        y[yi] = is_max ? x[best] : sum / div;
        if (is_max) {
          dx[best] += dy[yi];
          continue;
        }
        for (int i = 0; i < win; i++)
          for (int j = 0; j < win; j++) {
            int hh = oh * stride - pad + i, ww = ow * stride - pad + j;
            if (hh >= 0 && hh < H && ww >= 0 && ww < W) dx[(p * H + hh) * W + ww] += dy[yi] / div;
          }
      }
}

static void test_pooling(cudnnHandle_t h) {
  static const cudnnPoolingMode_t modes[] = {CUDNN_POOLING_MAX, CUDNN_POOLING_MAX_DETERMINISTIC,
                                             CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING,
                                             CUDNN_POOLING_AVERAGE_COUNT_EXCLUDE_PADDING};
  const int N = 1, C = 2, H = 7, W = 6, win = 3, pad = 1, stride = 2;
  float hx[84], hdy[64], got[84], prior[84];
  double y[84], dx[84], want[84];
  cudnnPoolingDescriptor_t pd;
  cudnnCreatePoolingDescriptor(&pd);
  for (int i = 0; i < 84; i++) hx[i] = (float)((i * 37) % 84) / 10 - 4; /* distinct: no ties */
  fill_rand(hdy, 64, -1, 1);
  for (int strided = 0; strided < 2; strided++)
    for (size_t mi = 0; mi < sizeof modes / sizeof *modes; mi++) {
      char what[64];
      int n, c, OH, OW;
      float alpha = strided ? 0.5f : 1.0f, beta = strided ? 2.0f : 0.0f, one = 1, zero = 0;
      snprintf(what, sizeof what, "pooling %d%s", modes[mi], strided ? " strided" : "");
      cudnnSetPooling2dDescriptor(pd, modes[mi], CUDNN_NOT_PROPAGATE_NAN, win, win, pad, pad,
                                  stride, stride);
      tens x = tens_make(N, C, H, W, strided);
      CHECK(cudnnGetPooling2dForwardOutputDim(pd, x.d, &n, &c, &OH, &OW) == 0 && OH == 4 && OW == 3,
            "%s: dims %d %d", what, OH, OW);
      tens yt = tens_make(N, C, OH, OW, strided);
      size_t ny = tens_size(&yt);
      float *dx_ = tens_upload(&x, hx), *dy_ = tens_upload(&yt, strided ? hdy : NULL);
      float *ddy = tens_upload(&yt, hdy), *ddx = tens_upload(&x, strided ? hx : NULL);
      memset(dx, 0, sizeof dx);
      pool_ref(modes[mi], hx, N, C, H, W, win, pad, stride, OH, OW, y, hdy, dx);
      tens_download(&yt, dy_, prior);
      CHECK(cudnnPoolingForward(h, pd, &alpha, x.d, dx_, &beta, yt.d, dy_) == 0, "%s", what);
      blend_ref(want, y, alpha, beta, prior, ny);
      CHECK(tens_download(&yt, dy_, got) && near(what, got, want, ny), "%s forward", what);
      cudnnPoolingForward(h, pd, &one, x.d, dx_, &zero, yt.d, dy_);
      tens_download(&x, ddx, prior);
      CHECK(cudnnPoolingBackward(h, pd, &alpha, yt.d, dy_, yt.d, ddy, x.d, dx_, &beta, x.d, ddx) ==
                0,
            "%s", what);
      blend_ref(want, dx, alpha, beta, prior, 84);
      CHECK(tens_download(&x, ddx, got) && near(what, got, want, 84), "%s backward", what);
      cudaFree(dx_), cudaFree(dy_), cudaFree(ddy), cudaFree(ddx);
      cudnnDestroyTensorDescriptor(x.d), cudnnDestroyTensorDescriptor(yt.d);
    }
  cudnnDestroyPoolingDescriptor(pd);
}

/* ---- streams and events ---- */

typedef struct {
  pthread_mutex_t m;
  pthread_cond_t c;
  int open;
} gate;

static void gate_wait(void *p) {
  gate *g = p;
  pthread_mutex_lock(&g->m);
  while (!g->open) pthread_cond_wait(&g->c, &g->m);
  pthread_mutex_unlock(&g->m);
}

static void sleep_us(long us) {
  struct timespec ts = {us / 1000000, us % 1000000 * 1000};
  nanosleep(&ts, NULL);
}

typedef struct {
  int *log, *n, idx;
  long sleep;
} log_entry;

static void log_append(void *p) {
  log_entry *e = p;
  if (e->sleep) sleep_us(e->sleep);
  e->log[(*e->n)++] = e->idx;
}

/* h -> d1 on A; d2 = 2 d1 + 1 on A; B, on the other device, waits; d3 = d2 + d1 and copies back
 * on B. */
static void test_stream_chain(void) {
  enum { N = 4096, ROUNDS = 40 };
  cudaStream_t A, B;
  cudaEvent_t e;
  float *h, *out, *d1, *d2, *d3, *d4;
  int bad = 0;
  cudaStreamCreateWithFlags(&A, cudaStreamNonBlocking);
  cudaSetDevice(1);
  cudaStreamCreate(&B);
  cudaSetDevice(0);
  cudaEventCreateWithFlags(&e, cudaEventDisableTiming);
  cudaMallocHost((void **)&h, N * 4), cudaMallocHost((void **)&out, N * 4);
  cudaMalloc((void **)&d1, N * 4), cudaMalloc((void **)&d2, N * 4);
  cudaMalloc((void **)&d3, N * 4), cudaMalloc((void **)&d4, N * 4);
  for (int r = 0; r < ROUNDS; r++) {
    for (int i = 0; i < N; i++) h[i] = (float)(r * 7 + i % 13);
    cudaMemcpyAsync(d1, h, N * 4, cudaMemcpyHostToDevice, A);
    axpb(A, N, d2, d1, NULL, 2, 1);
    cudaEventRecord(e, A);
    cudaStreamWaitEvent(B, e, 0);
    cudaSetDevice(1);
    axpb(B, N, d3, d2, d1, 1, 0);
    cudaSetDevice(0);
    cudaMemcpyAsync(d4, d3, N * 4, cudaMemcpyDeviceToDevice, B);
    cudaMemcpyAsync(out, d4, N * 4, cudaMemcpyDeviceToHost, B);
    cudaStreamSynchronize(B);
    for (int i = 0; i < N; i++) bad += out[i] != 3 * h[i] + 1;
    cudaStreamSynchronize(A); /* h is rewritten next round */
  }
  CHECK(!bad, "stream chain: %d wrong values", bad);
  CHECK(cudaEventQuery(e) == cudaSuccess && cudaStreamQuery(A) == cudaSuccess, "idle");
  cudaFree(d1), cudaFree(d2), cudaFree(d3), cudaFree(d4), cudaFreeHost(h), cudaFreeHost(out);
  cudaEventDestroy(e);
  cudaStreamDestroy(A), cudaStreamDestroy(B);
}

/* Round r: A waits for B's read of round r-1, writes r into x (slowly), B waits and reads.
 * Without either wait, jitter makes B see r-1 or r+1. */
static void test_event_wait_matters(void) {
  enum { N = 20000, ROUNDS = 300 };
  cudaStream_t A, B;
  cudaEvent_t written, read;
  float *x, *res, out[ROUNDS];
  int bad = 0;
  cudaStreamCreate(&A), cudaStreamCreate(&B);
  cudaEventCreate(&written), cudaEventCreate(&read);
  cudaMalloc((void **)&x, N * 4), cudaMalloc((void **)&res, ROUNDS * 4);
  cudaStreamWaitEvent(A, read, 0); /* never recorded: nothing to wait for */
  for (int r = 0; r < ROUNDS; r++) {
    cudaStreamWaitEvent(A, read, 0);
    axpb(A, N, x, NULL, NULL, 0, (float)r);
    cudaEventRecord(written, A);
    cudaStreamWaitEvent(B, written, 0);
    axpb(B, 1, res + r, x + N - 1, NULL, 1, 0);
    cudaEventRecord(read, B);
  }
  cudaMemcpyAsync(out, res, sizeof out, cudaMemcpyDeviceToHost, B);
  cudaStreamSynchronize(B);
  for (int r = 0; r < ROUNDS; r++) bad += out[r] != r;
  CHECK(!bad, "event waits: %d of %d rounds read the wrong value", bad, ROUNDS);

  /* a gate on A holds B back: the wait is really honoured, not just lucky */
  gate g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
  float v = -1;
  axpb(A, N, x, NULL, NULL, 0, 1);
  cudaLaunchHostFunc(A, gate_wait, &g);
  axpb(A, N, x, NULL, NULL, 0, 2);
  cudaEventRecord(written, A);
  cudaStreamWaitEvent(B, written, 0);
  axpb(B, 1, res, x, NULL, 1, 0);
  sleep_us(20000);
  CHECK(cudaEventQuery(written) == cudaErrorNotReady, "event done behind a closed gate");
  CHECK(cudaStreamQuery(B) == cudaErrorNotReady, "B ran past its wait");
  pthread_mutex_lock(&g.m);
  g.open = 1;
  pthread_cond_signal(&g.c);
  pthread_mutex_unlock(&g.m);
  cudaEventSynchronize(written);
  cudaStreamSynchronize(B);
  cudaMemcpy(&v, res, 4, cudaMemcpyDeviceToHost);
  CHECK(v == 2, "B read %g behind the gate, want 2", v);
  cudaFree(x), cudaFree(res);
  cudaEventDestroy(written), cudaEventDestroy(read);
  cudaStreamDestroy(A), cudaStreamDestroy(B);
}

static void test_host_func_order(void) {
  enum { N = 100 };
  cudaStream_t A;
  int log[N + 3], n = 0, in_order = 1;
  log_entry e[N + 3];
  float *d, v = 0;
  cudaStreamCreate(&A);
  cudaMalloc((void **)&d, 4);
  for (int i = 0; i < N; i++) {
    e[i] = (log_entry){log, &n, i, i % 10 == 0 ? 300 : 0};
    cudaLaunchHostFunc(A, log_append, &e[i]);
    axpb(A, 1, d, NULL, NULL, 0, (float)i);
  }
  cudaStreamSynchronize(A);
  for (int i = 0; i < N; i++) in_order &= log[i] == i;
  CHECK(n == N && in_order, "host functions out of order");
  /* the NULL stream waits for blocking streams: a synchronous copy sees A's last kernel */
  e[N] = (log_entry){log, &n, N, 20000};
  cudaLaunchHostFunc(A, log_append, &e[N]);
  axpb(A, 1, d, NULL, NULL, 0, 1234);
  cudaMemcpy(&v, d, 4, cudaMemcpyDeviceToHost);
  CHECK(v == 1234, "cudaMemcpy did not wait for stream A (%g)", v);
  /* destroy lets queued work finish */
  int before = n;
  e[N + 1] = (log_entry){log, &n, N + 1, 20000};
  cudaLaunchHostFunc(A, log_append, &e[N + 1]);
  cudaStreamDestroy(A);
  CHECK(n == before + 1, "destroy returned before the queue drained");
  /* a kernel on a stream of another device fails like a real launch */
  cudaStream_t other;
  cudaSetDevice(1);
  cudaStreamCreate(&other);
  cudaSetDevice(0);
  cudaGetLastError();
  axpb(other, 1, d, NULL, NULL, 0, 1);
  CHECK(cudaGetLastError() == cudaErrorInvalidResourceHandle, "launch on another device's stream");
  cudaStreamDestroy(other);
  /* cudaFree waits for queued work that still uses the memory (ASan would see it otherwise) */
  cudaStreamCreate(&A);
  e[N + 2] = (log_entry){log, &n, N + 2, 20000};
  cudaLaunchHostFunc(A, log_append, &e[N + 2]);
  axpb(A, 1, d, NULL, NULL, 0, 5);
  cudaFree(d);
  cudaStreamDestroy(A);
}

/* ---- stream capture ---- */

static void gate_open(gate *g) {
  pthread_mutex_lock(&g->m);
  g->open = 1;
  pthread_cond_signal(&g->c);
  pthread_mutex_unlock(&g->m);
}

/* Captured: h -> d1, d2 = 2 d1 + 1 (arguments changed after the call), a GEMM reading d2 (alpha
 * changed after the call), an event recorded and waited on inside, a host function, d2 -> out.
 * Nothing runs at capture; each launch runs it all and reads h anew. */
static void test_capture_chain(void) {
  enum { N = 1024 };
  cudaStream_t A;
  cudaEvent_t e;
  cudaGraph_t graph = NULL;
  cudaGraphExec_t exec = NULL;
  cublasHandle_t blas;
  enum cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
  float *h, *out, *c_out, *d1, *d2, *dA, *dc, hA[4] = {1, 2, 3, 4};
  int log[8], n = 0, bad = 0;
  log_entry le = {log, &n, 7, 0};
  cudaStreamCreateWithFlags(&A, cudaStreamNonBlocking);
  cudaEventCreateWithFlags(&e, cudaEventDisableTiming);
  cublasCreate(&blas);
  cublasSetStream(blas, A);
  cudaMallocHost((void **)&h, N * 4), cudaMallocHost((void **)&out, N * 4);
  cudaMallocHost((void **)&c_out, 2 * 4);
  cudaMalloc((void **)&d1, N * 4), cudaMalloc((void **)&d2, N * 4), cudaMalloc((void **)&dc, 8);
  dA = dev_upload(hA, 4);
  for (int i = 0; i < N; i++) out[i] = -1;

  CHECK(cudaStreamBeginCapture(A, cudaStreamCaptureModeGlobal) == cudaSuccess, "begin capture");
  CHECK(cudaStreamIsCapturing(A, &cs) == cudaSuccess && cs == cudaStreamCaptureStatusActive,
        "capturing");
  CHECK(cudaMemcpyAsync(d1, h, N * 4, cudaMemcpyHostToDevice, A) == cudaSuccess, "captured H2D");
  axpb_args args = {d2, d1, NULL, 2, 1};
  pt_sim_launch(A, N, axpb_run, &args, sizeof args);
  args.a = 100; /* the launch copied its arguments */
  float alpha = 1, beta = 0;
  CHECK(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, 2, 1, 2, &alpha, dA, 2, d2, 2, &beta, dc, 2) ==
            CUBLAS_STATUS_SUCCESS,
        "captured GEMM");
  alpha = 100;
  CHECK(cudaEventRecord(e, A) == cudaSuccess, "record in the capture");
  CHECK(cudaStreamWaitEvent(A, e, 0) == cudaSuccess, "wait in the capture");
  CHECK(cudaLaunchHostFunc(A, log_append, &le) == cudaSuccess, "captured host function");
  CHECK(cudaMemcpyAsync(out, d2, N * 4, cudaMemcpyDeviceToHost, A) == cudaSuccess, "captured D2H");
  CHECK(cudaMemcpyAsync(c_out, dc, 8, cudaMemcpyDeviceToHost, A) == cudaSuccess, "captured D2H");
  CHECK(cudaStreamEndCapture(A, &graph) == cudaSuccess && graph, "end capture");
  CHECK(cudaStreamIsCapturing(A, &cs) == cudaSuccess && cs == cudaStreamCaptureStatusNone,
        "not capturing");
  CHECK(cudaEventQuery(e) == cudaErrorCapturedEvent, "query of an event recorded in a capture");
  CHECK(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess && exec, "instantiate");
  CHECK(cudaGraphDestroy(graph) == cudaSuccess, "the graph goes, its executable stays");
  sleep_us(2000);
  CHECK(n == 0 && out[0] == -1, "captured work ran at capture");

  for (int round = 0; round < 2; round++) {
    for (int i = 0; i < N; i++) h[i] = (float)(round * 10 + i % 7);
    CHECK(cudaGraphLaunch(exec, A) == cudaSuccess, "launch %d", round);
    cudaStreamSynchronize(A);
    for (int i = 0; i < N; i++) bad += out[i] != 2 * h[i] + 1;
    for (int i = 0; i < 2; i++) bad += c_out[i] != hA[i] * out[0] + hA[2 + i] * out[1];
    CHECK(n == round + 1 && log[round] == 7, "launch %d: host function ran %d times", round, n);
  }
  CHECK(!bad, "graph launches: %d wrong values", bad);

  /* launches of one graph are ordered even across streams, and destroying it while queued is
   * safe */
  cudaStream_t B;
  cudaGraph_t g2 = NULL;
  cudaGraphExec_t x2 = NULL;
  gate gt = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
  float v = 0;
  cudaStreamCreateWithFlags(&B, cudaStreamNonBlocking);
  cudaMemset(d1, 0, 4);
  cudaStreamBeginCapture(A, cudaStreamCaptureModeThreadLocal);
  cudaLaunchHostFunc(A, gate_wait, &gt);
  axpb(A, 1, d1, d1, NULL, 1, 1);
  CHECK(cudaStreamEndCapture(A, &g2) == cudaSuccess, "end");
  cudaGraphInstantiate(&x2, g2, 0);
  cudaGraphDestroy(g2);
  CHECK(cudaGraphLaunch(x2, A) == cudaSuccess && cudaGraphLaunch(x2, B) == cudaSuccess, "launch");
  CHECK(cudaGraphExecDestroy(x2) == cudaSuccess, "destroy while queued");
  sleep_us(20000);
  CHECK(cudaStreamQuery(B) == cudaErrorNotReady, "the second launch passed the first");
  gate_open(&gt);
  cudaStreamSynchronize(B);
  cudaMemcpy(&v, d1, 4, cudaMemcpyDeviceToHost);
  CHECK(v == 2, "two launches added %g, want 2", v);

  cudaStreamDestroy(B);
  cudaGraphExecDestroy(exec);
  cublasDestroy(blas);
  cudaFree(d1), cudaFree(d2), cudaFree(dA), cudaFree(dc);
  cudaFreeHost(h), cudaFreeHost(out), cudaFreeHost(c_out);
  cudaEventDestroy(e);
  cudaStreamDestroy(A);
}

typedef struct {
  cudaError_t malloc_rc, end_rc;
  cudaStream_t end_stream;
} other_thread;

/* Another thread's cudaMalloc (freed at once), or its attempt to end a capture. */
static void *other_malloc(void *p) {
  other_thread *o = p;
  void *d = NULL;
  if (o->end_stream) {
    cudaGraph_t g = NULL;
    o->end_rc = cudaStreamEndCapture(o->end_stream, &g);
    return NULL;
  }
  o->malloc_rc = cudaMalloc(&d, 64);
  if (!o->malloc_rc) cudaFree(d);
  return NULL;
}

static cudaError_t malloc_from_other_thread(void) {
  other_thread o = {cudaSuccess, cudaSuccess, NULL};
  pthread_t t;
  pthread_create(&t, NULL, other_malloc, &o);
  pthread_join(t, NULL);
  return o.malloc_rc;
}

/* Ends the capture on A and says whether it had been invalidated (and gave no graph). */
static int end_invalidated(cudaStream_t A) {
  cudaGraph_t g = (cudaGraph_t)&g;
  cudaError_t rc = cudaStreamEndCapture(A, &g);
  if (rc == cudaSuccess) cudaGraphDestroy(g);
  return rc == cudaErrorStreamCaptureInvalidated && !g;
}

/* What capture forbids fails, invalidates the capture, and leaves the stream usable. */
static void test_capture_rules(void) {
  cudaStream_t A, Bk;
  cudaEvent_t e;
  cudaGraph_t g = NULL;
  enum cudaStreamCaptureStatus cs;
  float *d, v = 0, one = 1;
  void *p = NULL;
  cudaStreamCreateWithFlags(&A, cudaStreamNonBlocking);
  cudaStreamCreate(&Bk); /* blocking: the legacy stream synchronizes with it */
  cudaEventCreate(&e);
  cudaMalloc((void **)&d, 16);
  cudaMemset(d, 0, 16);

  CHECK(cudaStreamBeginCapture(NULL, cudaStreamCaptureModeGlobal) ==
            cudaErrorStreamCaptureUnsupported,
        "capture of the legacy stream");
  CHECK(cudaStreamEndCapture(A, &g) == cudaErrorIllegalState, "end without a capture");
  cudaGetLastError();

  cudaStreamBeginCapture(A, cudaStreamCaptureModeGlobal);
  CHECK(cudaStreamBeginCapture(A, cudaStreamCaptureModeGlobal) == cudaErrorIllegalState,
        "begin twice");
  CHECK(cudaStreamSynchronize(A) == cudaErrorStreamCaptureUnsupported, "sync of a capture");
  CHECK(cudaStreamIsCapturing(A, &cs) == cudaSuccess && cs == cudaStreamCaptureStatusInvalidated,
        "invalidated");
  CHECK(cudaMemsetAsync(d, 0, 4, A) == cudaErrorStreamCaptureInvalidated, "work after that");
  CHECK(end_invalidated(A), "sync: capture not invalidated");

  cudaStreamBeginCapture(A, cudaStreamCaptureModeGlobal);
  axpb(A, 1, d, NULL, NULL, 0, 5); /* captured, then dropped: never runs */
  CHECK(cudaMemcpy(&v, d, 4, cudaMemcpyDeviceToHost) == cudaErrorStreamCaptureUnsupported,
        "synchronous copy during capture");
  CHECK(cudaStreamQuery(A) == cudaErrorStreamCaptureUnsupported, "query of a capture");
  CHECK(end_invalidated(A), "cudaMemcpy: capture not invalidated");
  CHECK(cudaMemcpy(&v, d, 4, cudaMemcpyDeviceToHost) == cudaSuccess && v == 0,
        "dropped captured work ran (%g)", v);

  cudaStreamBeginCapture(A, cudaStreamCaptureModeGlobal);
  CHECK(cudaMalloc(&p, 64) == cudaErrorStreamCaptureUnsupported, "cudaMalloc in a global capture");
  CHECK(end_invalidated(A), "cudaMalloc: capture not invalidated");

  cudaStreamBeginCapture(A, cudaStreamCaptureModeGlobal);
  CHECK(malloc_from_other_thread() == cudaErrorStreamCaptureUnsupported,
        "cudaMalloc on another thread during a global capture");
  CHECK(end_invalidated(A), "other thread's cudaMalloc: capture not invalidated");

  cudaStreamBeginCapture(A, cudaStreamCaptureModeThreadLocal);
  CHECK(malloc_from_other_thread() == cudaSuccess,
        "cudaMalloc on another thread during a thread-local capture");
  other_thread o = {cudaSuccess, cudaSuccess, A};
  pthread_t t;
  pthread_create(&t, NULL, other_malloc, &o);
  pthread_join(t, NULL);
  CHECK(o.end_rc == cudaErrorStreamCaptureWrongThread, "end from another thread");
  CHECK(cudaStreamEndCapture(A, &g) == cudaSuccess && g, "thread-local capture survived");
  cudaGraphDestroy(g);

  cudaStreamBeginCapture(A, cudaStreamCaptureModeRelaxed);
  CHECK(cudaMalloc(&p, 64) == cudaSuccess, "cudaMalloc in a relaxed capture");
  CHECK(cudaStreamEndCapture(A, &g) == cudaSuccess && g, "relaxed capture survived");
  cudaGraphDestroy(g);
  cudaFree(p);

  cudaEventRecord(e, A); /* outside any capture */
  cudaStreamBeginCapture(A, cudaStreamCaptureModeGlobal);
  CHECK(cudaStreamWaitEvent(A, e, 0) == cudaErrorStreamCaptureIsolation,
        "wait on an event recorded outside the capture");
  CHECK(end_invalidated(A), "isolation: capture not invalidated");

  cudaStreamBeginCapture(A, cudaStreamCaptureModeGlobal);
  cudaEventRecord(e, A);
  CHECK(cudaStreamWaitEvent(Bk, e, 0) == cudaErrorNotSupported, "fork into a capture");
  CHECK(cudaStreamEndCapture(A, &g) == cudaSuccess, "a refused fork leaves the capture alone");
  cudaGraphDestroy(g);
  cudaEventRecord(e, A);
  CHECK(cudaEventQuery(e) == cudaSuccess, "an event recorded again outside works");

  cudaStreamBeginCapture(Bk, cudaStreamCaptureModeRelaxed);
  CHECK(cudaMemsetAsync(d, 0, 4, NULL) == cudaErrorStreamCaptureImplicit,
        "legacy work while a blocking stream captures");
  CHECK(cudaStreamIsCapturing(NULL, &cs) == cudaErrorStreamCaptureImplicit, "legacy status");
  CHECK(end_invalidated(Bk), "implicit: capture not invalidated");

  /* a graph launched into a capture joins it */
  cudaGraphExec_t x = NULL;
  cudaStreamBeginCapture(A, cudaStreamCaptureModeGlobal);
  axpb(A, 1, d, d, NULL, 1, one);
  cudaStreamEndCapture(A, &g);
  cudaGraphInstantiate(&x, g, 0);
  cudaGraphDestroy(g);
  cudaStreamBeginCapture(A, cudaStreamCaptureModeGlobal);
  CHECK(cudaGraphLaunch(x, A) == cudaSuccess && cudaGraphLaunch(x, A) == cudaSuccess,
        "launch into a capture");
  CHECK(cudaStreamEndCapture(A, &g) == cudaSuccess, "end");
  cudaGraphExecDestroy(x);
  cudaGraphInstantiate(&x, g, 0);
  cudaGraphDestroy(g);
  cudaGraphLaunch(x, A);
  cudaStreamSynchronize(A);
  cudaMemcpy(&v, d, 4, cudaMemcpyDeviceToHost);
  CHECK(v == 2, "nested launches added %g, want 2", v);
  cudaGraphExecDestroy(x);

  cudaStreamBeginCapture(A, cudaStreamCaptureModeGlobal);
  axpb(A, 1, d, NULL, NULL, 0, 5);
  CHECK(cudaStreamDestroy(A) == cudaSuccess, "destroy a capturing stream");
  cudaGetLastError();
  cudaFree(d);
  cudaEventDestroy(e);
  cudaStreamDestroy(Bk);
}

/* ---- NCCL ---- */

typedef struct {
  ncclComm_t comm;
  int rank, rounds, bad, err;
} nccl_worker;

static float pattern(int rank, int round, size_t i) {
  return (float)(rank * 100000 + round * 1000 + (int)(i % 997));
}

/* Each rank sends to and receives from the other in one group, from its own thread. */
static void *nccl_exchange(void *p) {
  nccl_worker *w = p;
  int peer = 1 - w->rank, count = 0;
  cudaStream_t s;
  cudaSetDevice(w->rank);
  cudaStreamCreate(&s);
  ncclCommCount(w->comm, &count);
  if (count != 2) w->err++;
  for (int r = 0; r < w->rounds; r++) {
    size_t n = 1000 + 37 * r;
    float *h = malloc(n * 4), *send, *recv;
    for (size_t i = 0; i < n; i++) h[i] = pattern(w->rank, r, i);
    cudaMalloc((void **)&send, n * 4), cudaMalloc((void **)&recv, n * 4);
    cudaMemcpyAsync(send, h, n * 4, cudaMemcpyHostToDevice, s);
    w->err += ncclGroupStart() != ncclSuccess;
    w->err += ncclSend(send, n, ncclFloat, peer, w->comm, s) != ncclSuccess;
    w->err += ncclRecv(recv, n, ncclFloat32, peer, w->comm, s) != ncclSuccess;
    w->err += ncclGroupEnd() != ncclSuccess;
    cudaMemcpyAsync(h, recv, n * 4, cudaMemcpyDeviceToHost, s);
    cudaStreamSynchronize(s);
    for (size_t i = 0; i < n; i++) w->bad += h[i] != pattern(peer, r, i);
    cudaFree(send), cudaFree(recv);
    free(h);
  }
  cudaStreamDestroy(s);
  return NULL;
}

static void test_nccl(void) {
  ncclComm_t comms[2];
  int devs[2] = {0, 1}, rank = -1;
  pthread_t t[2];
  nccl_worker w[2];
  CHECK(ncclCommInitAll(comms, 2, devs) == ncclSuccess, "init");
  CHECK(ncclCommUserRank(comms[1], &rank) == ncclSuccess && rank == 1, "rank");
  for (int r = 0; r < 2; r++) {
    w[r] = (nccl_worker){comms[r], r, 20, 0, 0};
    pthread_create(&t[r], NULL, nccl_exchange, &w[r]);
  }
  for (int r = 0; r < 2; r++) pthread_join(t[r], NULL);
  for (int r = 0; r < 2; r++)
    CHECK(!w[r].bad && !w[r].err, "rank %d: %d wrong values, %d errors", r, w[r].bad, w[r].err);

  /* one thread driving both ranks in one group; then an ungrouped send before its receive */
  cudaStream_t s[2];
  int32_t *buf[2], hv[3] = {7, 8, 9}, got[3] = {0};
  for (int r = 0; r < 2; r++) {
    cudaSetDevice(r);
    cudaStreamCreate(&s[r]);
    cudaMalloc((void **)&buf[r], sizeof hv);
  }
  cudaSetDevice(0);
  cudaMemcpy(buf[0], hv, sizeof hv, cudaMemcpyHostToDevice);
  ncclGroupStart();
  ncclSend(buf[0], 3, ncclInt32, 1, comms[0], s[0]);
  ncclRecv(buf[1], 3, ncclInt32, 0, comms[1], s[1]);
  CHECK(ncclGroupEnd() == ncclSuccess, "single-thread group");
  cudaStreamSynchronize(s[1]);
  cudaMemcpy(got, buf[1], sizeof got, cudaMemcpyDeviceToHost);
  CHECK(got[0] == 7 && got[2] == 9, "single-thread group moved %d %d", got[0], got[2]);
  hv[0] = 42;
  cudaMemcpy(buf[1], hv, sizeof hv, cudaMemcpyHostToDevice);
  CHECK(ncclSend(buf[1], 3, ncclInt32, 0, comms[1], s[1]) == ncclSuccess, "lone send");
  CHECK(ncclRecv(buf[0], 3, ncclInt32, 1, comms[0], s[0]) == ncclSuccess, "lone recv");
  cudaStreamSynchronize(s[0]);
  cudaMemcpy(got, buf[0], sizeof got, cudaMemcpyDeviceToHost);
  CHECK(got[0] == 42, "lone send moved %d", got[0]);
  /* mismatched counts: paired anyway (nothing hangs), the shorter length moves, and it is an error
   */
  ncclGroupStart();
  ncclSend(buf[0], 3, ncclInt32, 1, comms[0], s[0]);
  ncclRecv(buf[1], 2, ncclInt32, 0, comms[1], s[1]);
  CHECK(ncclGroupEnd() == ncclInvalidUsage, "count mismatch");
  cudaStreamSynchronize(s[1]);
  CHECK(ncclSend(hv, 3, ncclInt32, 1, comms[0], s[0]) == ncclInvalidArgument, "host buffer");
  CHECK(ncclSend(buf[0], 3, ncclInt32, 1, comms[0], s[1]) == ncclInvalidArgument,
        "stream of another device");
  CHECK(ncclGroupEnd() == ncclInvalidUsage, "end without start");
  for (int r = 0; r < 2; r++) cudaStreamDestroy(s[r]), cudaFree(buf[r]);
  for (int r = 0; r < 2; r++) ncclCommDestroy(comms[r]);
}

int main(int argc, char **argv) {
  if (argc > 1 && !strcmp(argv[1], "--no-device")) return no_device_child();
  test_no_device(argv[0]); /* before any thread exists: it spawns a process */
  setenv("PARTIME_SIM_JITTER", "1", 0);

  cublasHandle_t blas;
  cudnnHandle_t dnn;
  cudaStream_t s;
  test_devices_and_memory();
  cudaStreamCreate(&s);
  REQUIRE(cublasCreate(&blas) == CUBLAS_STATUS_SUCCESS, "cublasCreate");
  REQUIRE(cudnnCreate(&dnn) == CUDNN_STATUS_SUCCESS, "cudnnCreate");
  /* half the checks on the NULL stream, half on a worker stream */
  test_sgemm(blas);
  cublasSetStream(blas, s);
  test_sgemm(blas);
  cudnnSetStream(dnn, s);
  test_conv(dnn);
  test_add_tensor_broadcast(dnn);
  cudnnSetStream(dnn, NULL);
  test_activation(dnn);
  cudnnSetStream(dnn, s);
  test_pooling(dnn);
  cublasDestroy(blas);
  cudnnDestroy(dnn);
  cudaStreamDestroy(s);

  test_stream_chain();
  test_event_wait_matters();
  test_host_func_order();
  test_capture_chain();
  test_capture_rules();
  test_nccl();
  CHECK(pt_sim_streams_live() == 0, "%d streams left", pt_sim_streams_live());
  CHECK(pt_sim_allocs_live() == 0, "%d allocations left", pt_sim_allocs_live());
  PT_TEST_END();
}
