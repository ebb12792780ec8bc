/* The CUDA backend's own kernels (lib/cuda/kernels.h) against the CPU layer functions they mirror.
 *
 * Runs as CUDA host code would: device buffers from cudaMalloc, copies with cudaMemcpy, every
 * launch on a stream from cudaStreamCreate, then cudaStreamSynchronize. Built against the
 * simulated device (PT_CUDA_SIM) it needs no GPU; the same source would drive a real one.
 *
 * Each case runs on random data and compares with the CPU by normalised error
 * max|got - want| / max(1, max|want|) (NaN must meet NaN). Backward cases prefill the gradients
 * with random values, so the accumulate rule (+=) is checked with the arithmetic, and repeat with
 * NULL gradients. Case parameters are in the messages. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cuda_runtime.h>
#include "cuda/kernels.h"
#ifdef PT_CUDA_SIM
#include "cuda/sim/include/pt_sim.h"
#endif
#include "cpu/ops.h"
#include "cuda/exec.h"
#include "pt_test.h"
#include "cuda_test.h"

#define TOL 1e-5

static unsigned long long seed = 0x5eed0fc0dac0ffeeULL;

/* ---- host and device buffers ---- */

static float *falloc(int64_t n) {
  return calloc((size_t)(n > 0 ? n : 1), sizeof(float));
}

static float *frand(int64_t n, float lo, float hi) {
  float *x = falloc(n);
  for (int64_t i = 0; i < n; i++) x[i] = pt_test_uniform(&seed, lo, hi);
  return x;
}

/* Values in +-[lo, hi]: away from zero, for divisors and the kinks of Relu. */
static float *frand_away(int64_t n, float lo, float hi) {
  float *x = falloc(n);
  for (int64_t i = 0; i < n; i++) {
    float v = pt_test_uniform(&seed, lo, hi);
    x[i] = (pt_test_rand_u64(&seed) >> 63) ? -v : v;
  }
  return x;
}

static float *fdup(const float *x, int64_t n) {
  float *y = falloc(n);
  memcpy(y, x, sizeof(float) * (size_t)n);
  return y;
}

static void *dev_alloc(size_t bytes) {
  void *p = NULL;
  cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
  CHECK(e == cudaSuccess && p, "cudaMalloc(%zu) failed (%d)", bytes, (int)e);
  return p;
}

static void *dev_copy(const void *host, size_t bytes) {
  void *p = dev_alloc(bytes);
  if (p && bytes) {
    cudaError_t e = cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice);
    CHECK(e == cudaSuccess, "cudaMemcpy to device failed (%d)", (int)e);
  }
  return p;
}

static float *dev_floats(const float *host, int64_t n) {
  return (float *)dev_copy(host, sizeof(float) * (size_t)n);
}

static void host_copy(void *host, const void *dev, size_t bytes) {
  cudaError_t e = cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost);
  CHECK(e == cudaSuccess, "cudaMemcpy to host failed (%d)", (int)e);
}

/* A device buffer's contents, in a new host buffer. */
static float *back(const float *dev, int64_t n) {
  float *h = falloc(n);
  host_copy(h, dev, sizeof(float) * (size_t)n);
  return h;
}

/* Waits for the stream, checking the launches queued on it too. */
static void stream_sync(cudaStream_t s) {
  cudaError_t e = cudaGetLastError();
  CHECK(e == cudaSuccess, "a launch failed (%d)", (int)e);
  e = cudaStreamSynchronize(s);
  CHECK(e == cudaSuccess, "cudaStreamSynchronize failed (%d)", (int)e);
}

static void dfree(void *p) {
  if (p) cudaFree(p);
}

/* ---- comparison ---- */

static double nerr(const float *got, const float *want, int64_t n) {
  double d = 0.0, m = 0.0;
  for (int64_t i = 0; i < n; i++) {
    const int gn = isnan(got[i]), wn = isnan(want[i]);
    if (gn || wn) {
      if (gn != wn) return INFINITY;
      continue;
    }
    if (got[i] == want[i]) { /* equal infinities too */
      m = fmax(m, isinf(want[i]) ? 0.0 : fabs(want[i]));
      continue;
    }
    d = fmax(d, fabs((double)got[i] - want[i]));
    m = fmax(m, fabs(want[i]));
  }
  return d / fmax(1.0, m);
}

/* got: a device buffer of n floats, compared with the host's want. */
static void expect_close(const char *name, const char *what, const float *got_dev,
                         const float *want, int64_t n, double tol) {
  float *got = back(got_dev, n);
  const double e = nerr(got, want, n);
  CHECK(e < tol, "%s: %s differs from the CPU: normalised error %g (n=%lld)", name, what, e,
        (long long)n);
  free(got);
}

/* Bit for bit: copies, and buffers that must be left alone. */
static void expect_same(const char *name, const char *what, const float *got_dev, const float *want,
                        int64_t n) {
  float *got = back(got_dev, n);
  CHECK(memcmp(got, want, sizeof(float) * (size_t)n) == 0, "%s: %s is not as expected", name, what);
  free(got);
}

/* ---- copies ---- */

static void test_axpy_fill(cudaStream_t s) {
  const int64_t n = 1000;
  float *x = frand(n, -1, 1), *y = frand(n, -1, 1), *want = fdup(y, n);
  float *dx = dev_floats(x, n), *dy = dev_floats(y, n);
  /* alpha 1 is copy backward; 0.37 a scaled sum */
  pt_copy_params cp = {n};
  pt_copy_backward(want, x, &cp);
  ptk_axpy_args a = {dy, dx, 1.0f};
  ptk_axpy(s, n, &a);
  stream_sync(s);
  expect_close("axpy alpha=1", "y", dy, want, n, TOL);
  for (int64_t i = 0; i < n; i++) want[i] += 0.37f * x[i];
  a.alpha = 0.37f;
  ptk_axpy(s, n, &a);
  stream_sync(s);
  expect_close("axpy alpha=0.37", "y", dy, want, n, TOL);

  ptk_fill_args f = {dy, -2.5f};
  ptk_fill(s, n - 1, &f);
  stream_sync(s);
  for (int64_t i = 0; i < n - 1; i++) want[i] = -2.5f;
  expect_same("fill n-1", "y", dy, want, n);
  ptk_fill(s, 0, &f); /* n = 0 launches nothing */
  stream_sync(s);
  expect_same("fill n=0", "y", dy, want, n);
  dfree(dx);
  dfree(dy);
  free(x);
  free(y);
  free(want);
}

/* ---- binary ---- */

static const char *bin_names[] = {"add", "sub", "mul", "div"};

/* Parameters as the graph resolver builds them: numpy broadcasting of right-aligned shapes; an
 * operand's stride is 0 along a dim where it has size 1. */
static int64_t bin_params(pt_binary_params *p, int kind, int nd, const int64_t *sha,
                          const int64_t *shb, int64_t *na, int64_t *nb) {
  memset(p, 0, sizeof *p);
  p->kind = (pt_binary_kind)kind;
  p->ndim = nd;
  int64_t ta = 1, tb = 1, n = 1;
  for (int d = nd - 1; d >= 0; d--) {
    p->shape[d] = sha[d] > shb[d] ? sha[d] : shb[d];
    p->sa[d] = sha[d] == 1 ? 0 : ta;
    p->sb[d] = shb[d] == 1 ? 0 : tb;
    ta *= sha[d];
    tb *= shb[d];
    n *= p->shape[d];
  }
  p->n = n;
  *na = ta;
  *nb = tb;
  return n;
}

static void fmt_shape(char *buf, size_t size, int nd, const int64_t *sh) {
  int k = snprintf(buf, size, "(");
  for (int d = 0; d < nd && k < (int)size; d++)
    k += snprintf(buf + k, size - (size_t)k, d ? ",%lld" : "%lld", (long long)sh[d]);
  if (k < (int)size) snprintf(buf + k, size - (size_t)k, ")");
}

static void test_binary_case(cudaStream_t s, int kind, int nd, const int64_t *sha,
                             const int64_t *shb) {
  pt_binary_params p;
  int64_t na, nb;
  const int64_t n = bin_params(&p, kind, nd, sha, shb, &na, &nb);
  char name[160], sa[48], sb[48];
  fmt_shape(sa, sizeof sa, nd, sha);
  fmt_shape(sb, sizeof sb, nd, shb);
  snprintf(name, sizeof name, "binary %s %s %s", bin_names[kind], sa, sb);

  float *a = frand_away(na, 0.5f, 2.0f), *b = frand_away(nb, 0.5f, 2.0f);
  float *dy = frand(n, -1, 1), *out = falloc(n);
  float *ga = frand(na, -1, 1), *gb = frand(nb, -1, 1);
  float *wa = fdup(ga, na), *wb = fdup(gb, nb);
  float *d_a = dev_floats(a, na), *d_b = dev_floats(b, nb), *d_dy = dev_floats(dy, n);
  float *d_out = dev_floats(out, n), *d_ga = dev_floats(ga, na), *d_gb = dev_floats(gb, nb);

  pt_binary_forward(out, a, b, &p);
  ptk_binary_args fa = {d_out, d_a, d_b, p};
  ptk_binary_fwd(s, n, &fa);
  stream_sync(s);
  expect_close(name, "forward", d_out, out, n, TOL);

  /* both gradients, then each alone (the other NULL) on top of the first result */
  pt_binary_backward(wa, wb, dy, a, b, &p);
  ptk_binary_bwd_args ba = {d_ga, d_gb, d_dy, d_a, d_b, p};
  ptk_binary_bwd(s, n, &ba);
  stream_sync(s);
  expect_close(name, "da", d_ga, wa, na, TOL);
  expect_close(name, "db", d_gb, wb, nb, TOL);
  pt_binary_backward(wa, NULL, dy, a, b, &p);
  ba.db = NULL;
  ptk_binary_bwd(s, n, &ba);
  stream_sync(s);
  expect_close(name, "da alone", d_ga, wa, na, TOL);
  expect_close(name, "db untouched (NULL)", d_gb, wb, nb, TOL);
  pt_binary_backward(NULL, wb, dy, a, b, &p);
  ba.da = NULL;
  ba.db = d_gb;
  ptk_binary_bwd(s, n, &ba);
  stream_sync(s);
  expect_close(name, "da untouched (NULL)", d_ga, wa, na, TOL);
  expect_close(name, "db alone", d_gb, wb, nb, TOL);

  dfree(d_a);
  dfree(d_b);
  dfree(d_dy);
  dfree(d_out);
  dfree(d_ga);
  dfree(d_gb);
  free(a);
  free(b);
  free(dy);
  free(out);
  free(ga);
  free(gb);
  free(wa);
  free(wb);
}

/* x op x with one operand buffer and one gradient buffer for both sides. */
static void test_binary_same(cudaStream_t s) {
  const int64_t n = 60;
  const int64_t sh[2] = {6, 10};
  for (int kind = 0; kind < 4; kind++) {
    pt_binary_params p;
    int64_t na, nb;
    bin_params(&p, kind, 2, sh, sh, &na, &nb);
    char name[64];
    snprintf(name, sizeof name, "binary %s x x (6,10), da == db", bin_names[kind]);
    float *x = frand_away(n, 0.5f, 2.0f), *dy = frand(n, -1, 1), *g = frand(n, -1, 1);
    float *want = fdup(g, n);
    float *d_x = dev_floats(x, n), *d_dy = dev_floats(dy, n), *d_g = dev_floats(g, n);
    pt_binary_backward(want, want, dy, x, x, &p);
    ptk_binary_bwd_args ba = {d_g, d_g, d_dy, d_x, d_x, p};
    ptk_binary_bwd(s, n, &ba);
    stream_sync(s);
    expect_close(name, "dx", d_g, want, n, TOL);
    dfree(d_x);
    dfree(d_dy);
    dfree(d_g);
    free(x);
    free(dy);
    free(g);
    free(want);
  }
}

static void test_binary(cudaStream_t s) {
  static const struct {
    int nd;
    int64_t a[4], b[4];
  } cases[] = {
      {4, {2, 3, 4, 5}, {2, 3, 4, 5}}, /* same shape */
      {4, {2, 3, 4, 5}, {1, 3, 1, 1}}, /* per channel */
      {4, {1, 3, 1, 1}, {2, 3, 4, 5}}, /* per channel on the left */
      {2, {7, 9}, {1, 1}},             /* scalar */
      {2, {1, 1}, {7, 9}},             /* scalar on the left */
      {2, {4, 1}, {1, 5}},             /* outer product: both broadcast */
      {3, {2, 1, 5}, {1, 3, 1}},       /* both broadcast, interleaved */
      {3, {2, 3, 1}, {2, 1, 4}},
      {1, {1}, {1}}, /* one element */
      {3, {1, 1, 130}, {3, 4, 130}},
  };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
    for (int kind = 0; kind < 4; kind++)
      test_binary_case(s, kind, cases[c].nd, cases[c].a, cases[c].b);
  test_binary_same(s);
}

/* ---- unary ---- */

static void test_unary(cudaStream_t s) {
  static const char *names[] = {"relu", "leaky_relu", "sigmoid", "tanh"};
  const int64_t n = 1031;
  for (int kind = 0; kind < 4; kind++) {
    pt_unary_params p = {(pt_unary_kind)kind, 0.13f, n};
    char name[64];
    snprintf(name, sizeof name, "unary %s n=%lld", names[kind], (long long)n);
    float *x = frand_away(n, 0.01f, 6.0f), *y = falloc(n), *dy = frand(n, -1, 1);
    float *g = frand(n, -1, 1), *want = fdup(g, n);
    float *d_x = dev_floats(x, n), *d_y = dev_floats(y, n), *d_dy = dev_floats(dy, n);
    float *d_g = dev_floats(g, n);
    pt_unary_forward(y, x, &p);
    ptk_unary_args fa = {d_y, d_x, p};
    ptk_unary_fwd(s, n, &fa);
    stream_sync(s);
    expect_close(name, "forward", d_y, y, n, TOL);

    pt_unary_backward(want, dy, x, y, &p);
    ptk_unary_bwd_args ba = {d_g, d_dy, d_x, d_y, p};
    ptk_unary_bwd(s, n, &ba);
    stream_sync(s);
    expect_close(name, "backward (out given)", d_g, want, n, TOL);
    pt_unary_backward(want, dy, x, NULL, &p);
    ba.out = NULL;
    ptk_unary_bwd(s, n, &ba);
    stream_sync(s);
    expect_close(name, "backward (out NULL)", d_g, want, n, TOL);
    ba.din = NULL;
    ptk_unary_bwd(s, n, &ba);
    stream_sync(s);
    expect_close(name, "din NULL skipped", d_g, want, n, TOL);

    /* in place, as the executor may run it */
    ptk_unary_args ip = {d_x, d_x, p};
    ptk_unary_fwd(s, n, &ip);
    stream_sync(s);
    expect_close(name, "forward in place", d_x, y, n, TOL);
    dfree(d_x);
    dfree(d_y);
    dfree(d_dy);
    dfree(d_g);
    free(x);
    free(y);
    free(dy);
    free(g);
    free(want);
  }
}

/* ---- pools ---- */

static int pool_out(int size, int k, int st, int d, int p0, int p1, int ceil_mode) {
  const int span = size + p0 + p1 - (d * (k - 1) + 1);
  return (ceil_mode ? (span + st - 1) / st : span / st) + 1;
}

static void test_pool_case(cudaStream_t s, pt_pool_params p, int ceil_mode, int with_nan) {
  p.OH = pool_out(p.H, p.KH, p.SH, p.DH, p.PT, p.PB, ceil_mode);
  p.OW = pool_out(p.W, p.KW, p.SW, p.DW, p.PL, p.PR, ceil_mode);
  const int64_t ni = (int64_t)p.N * p.C * p.H * p.W, no = (int64_t)p.N * p.C * p.OH * p.OW;
  char name[200];
  snprintf(name, sizeof name, "pool %dx%dx%dx%d k%dx%d s%dx%d d%dx%d pads %d,%d,%d,%d%s%s -> %dx%d",
           p.N, p.C, p.H, p.W, p.KH, p.KW, p.SH, p.SW, p.DH, p.DW, p.PT, p.PL, p.PB, p.PR,
           ceil_mode ? " ceil" : "", with_nan ? " with NaN" : "", p.OH, p.OW);

  float *x = frand(ni, -2, 2), *dy = frand(no, -1, 1), *y = falloc(no);
  if (with_nan) x[ni / 3] = NAN;
  int32_t *am = calloc((size_t)no, sizeof(int32_t)), *am_got = calloc((size_t)no, sizeof(int32_t));
  float *g = frand(ni, -1, 1), *want = fdup(g, ni);
  float *d_x = dev_floats(x, ni), *d_dy = dev_floats(dy, no), *d_y = dev_floats(y, no);
  float *d_g = dev_floats(g, ni);
  int32_t *d_am = (int32_t *)dev_alloc(sizeof(int32_t) * (size_t)no);

  /* max */
  pt_maxpool_forward(y, am, x, &p);
  ptk_pool_args fa = {d_y, d_am, d_x, p};
  ptk_maxpool_fwd(s, no, &fa);
  stream_sync(s);
  expect_close(name, "maxpool forward", d_y, y, no, TOL);
  host_copy(am_got, d_am, sizeof(int32_t) * (size_t)no);
  CHECK(memcmp(am, am_got, sizeof(int32_t) * (size_t)no) == 0, "%s: maxpool argmax differs", name);
  pt_maxpool_backward(want, dy, am, &p);
  ptk_pool_bwd_args ba = {d_g, d_dy, d_am, p};
  ptk_maxpool_bwd(s, no, &ba);
  stream_sync(s);
  expect_close(name, "maxpool backward", d_g, want, ni, TOL);

  /* average, both divisor rules */
  if (!with_nan) {
    for (int cip = 0; cip < 2; cip++) {
      p.count_include_pad = cip;
      const char *what_f = cip ? "avgpool forward (count_include_pad)" : "avgpool forward";
      const char *what_b = cip ? "avgpool backward (count_include_pad)" : "avgpool backward";
      pt_avgpool_forward(y, x, &p);
      fa.p = p;
      ptk_avgpool_fwd(s, no, &fa);
      stream_sync(s);
      expect_close(name, what_f, d_y, y, no, TOL);
      pt_avgpool_backward(want, dy, &p);
      ba.p = p;
      ptk_avgpool_bwd(s, no, &ba);
      stream_sync(s);
      expect_close(name, what_b, d_g, want, ni, TOL);
    }
  }
  ba.din = NULL;
  ptk_maxpool_bwd(s, no, &ba);
  ptk_avgpool_bwd(s, no, &ba);
  stream_sync(s);
  expect_close(name, "din NULL skipped", d_g, want, ni, TOL);

  dfree(d_x);
  dfree(d_dy);
  dfree(d_y);
  dfree(d_g);
  dfree(d_am);
  free(x);
  free(dy);
  free(y);
  free(am);
  free(am_got);
  free(g);
  free(want);
}

static void test_pools(cudaStream_t s) {
  /* N, C, H, W, OH, OW (computed), KH, KW, SH, SW, DH, DW, PT, PL, PB, PR, count_include_pad */
  static const pt_pool_params cases[] = {
      {2, 3, 8, 8, 0, 0, 2, 2, 2, 2, 1, 1, 0, 0, 0, 0, false},
      {1, 2, 7, 9, 0, 0, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, false},
      {1, 3, 9, 7, 0, 0, 3, 2, 2, 3, 1, 1, 2, 0, 1, 1, false},   /* asymmetric pads and strides */
      {2, 1, 11, 10, 0, 0, 3, 3, 2, 1, 2, 2, 1, 2, 0, 1, false}, /* dilation */
      {1, 2, 6, 6, 0, 0, 7, 7, 1, 1, 1, 1, 3, 3, 3, 3, false},   /* global-like, all taps overlap */
      {1, 1, 3, 3, 0, 0, 2, 2, 2, 2, 1, 1, 0, 0, 3, 3, false},   /* windows wholly in padding */
  };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
    for (int ceil_mode = 0; ceil_mode < 2; ceil_mode++) test_pool_case(s, cases[c], ceil_mode, 0);
  test_pool_case(s, cases[1], 0, 1);
  test_pool_case(s, cases[3], 1, 1);
}

/* ---- batch norm ---- */

static void test_batchnorm(cudaStream_t s) {
  static const pt_batchnorm_params cases[] = {
      {2, 3, 20, 1e-5f}, {1, 5, 1, 1e-3f}, {3, 2, 129, 0.1f}};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    const pt_batchnorm_params p = cases[c];
    const int64_t n = (int64_t)p.N * p.C * p.HW;
    char name[96];
    snprintf(name, sizeof name, "batchnorm N=%d C=%d HW=%lld eps=%g", p.N, p.C, (long long)p.HW,
             (double)p.eps);
    float *x = frand(n, -3, 3), *y = falloc(n), *dy = frand(n, -1, 1);
    float *scale = frand(p.C, 0.5f, 2), *bias = frand(p.C, -1, 1), *mean = frand(p.C, -1, 1);
    float *var = frand(p.C, 0.1f, 3);
    float *g = frand(n, -1, 1), *gs = frand(p.C, -1, 1), *gb = frand(p.C, -1, 1);
    float *wg = fdup(g, n), *wgs = fdup(gs, p.C), *wgb = fdup(gb, p.C);
    float *d_x = dev_floats(x, n), *d_y = dev_floats(y, n), *d_dy = dev_floats(dy, n);
    float *d_scale = dev_floats(scale, p.C), *d_bias = dev_floats(bias, p.C);
    float *d_mean = dev_floats(mean, p.C), *d_var = dev_floats(var, p.C);
    float *d_g = dev_floats(g, n), *d_gs = dev_floats(gs, p.C), *d_gb = dev_floats(gb, p.C);

    pt_batchnorm_forward(y, x, scale, bias, mean, var, &p);
    ptk_bn_args fa = {d_y, d_x, d_scale, d_bias, d_mean, d_var, p};
    ptk_batchnorm_fwd(s, n, &fa);
    stream_sync(s);
    expect_close(name, "forward", d_y, y, n, TOL);

    pt_batchnorm_backward(wg, wgs, wgb, dy, x, scale, mean, var, &p);
    ptk_bn_bwd_args ba = {d_g, d_gs, d_gb, d_dy, d_x, d_scale, d_mean, d_var, p};
    ptk_batchnorm_bwd(s, n, &ba);
    stream_sync(s);
    expect_close(name, "din", d_g, wg, n, TOL);
    expect_close(name, "dscale", d_gs, wgs, p.C, TOL);
    expect_close(name, "dbias", d_gb, wgb, p.C, TOL);

    /* each gradient alone */
    for (int only = 0; only < 3; only++) {
      pt_batchnorm_backward(only == 0 ? wg : NULL, only == 1 ? wgs : NULL, only == 2 ? wgb : NULL,
                            dy, x, scale, mean, var, &p);
      ptk_bn_bwd_args oa = ba;
      oa.din = only == 0 ? d_g : NULL;
      oa.dscale = only == 1 ? d_gs : NULL;
      oa.dbias = only == 2 ? d_gb : NULL;
      ptk_batchnorm_bwd(s, n, &oa);
      stream_sync(s);
      expect_close(name, only == 0 ? "din alone" : "din (NULL)", d_g, wg, n, TOL);
      expect_close(name, only == 1 ? "dscale alone" : "dscale (NULL)", d_gs, wgs, p.C, TOL);
      expect_close(name, only == 2 ? "dbias alone" : "dbias (NULL)", d_gb, wgb, p.C, TOL);
    }
    dfree(d_x);
    dfree(d_y);
    dfree(d_dy);
    dfree(d_scale);
    dfree(d_bias);
    dfree(d_mean);
    dfree(d_var);
    dfree(d_g);
    dfree(d_gs);
    dfree(d_gb);
    free(x);
    free(y);
    free(dy);
    free(scale);
    free(bias);
    free(mean);
    free(var);
    free(g);
    free(gs);
    free(gb);
    free(wg);
    free(wgs);
    free(wgb);
  }
}

/* ---- softmax ---- */

static void test_softmax(cudaStream_t s) {
  static const int64_t shapes[][3] = {{3, 7, 1}, {2, 5, 6}, {1, 1000, 1}, {4, 1, 3}, {1, 3, 50}};
  for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
    for (int lg = 0; lg < 2; lg++) {
      pt_softmax_params p = {shapes[c][0], shapes[c][1], shapes[c][2], lg != 0};
      const int64_t n = p.outer * p.dim * p.inner, rows = p.outer * p.inner;
      char name[96];
      snprintf(name, sizeof name, "%s outer=%lld dim=%lld inner=%lld",
               lg ? "logsoftmax" : "softmax", (long long)p.outer, (long long)p.dim,
               (long long)p.inner);
      float *x = frand(n, -8, 8), *y = falloc(n), *dy = frand(n, -1, 1);
      x[n / 2] = 60.0f; /* a large logit: the maximum shift must keep exp finite */
      float *g = frand(n, -1, 1), *want = fdup(g, n);
      float *d_x = dev_floats(x, n), *d_y = dev_floats(y, n), *d_dy = dev_floats(dy, n);
      float *d_g = dev_floats(g, n);
      pt_softmax_forward(y, x, &p);
      ptk_softmax_args fa = {d_y, d_x, p};
      ptk_softmax_fwd(s, rows, &fa);
      stream_sync(s);
      expect_close(name, "forward", d_y, y, n, TOL);
      /* backward from the CPU's output so the two start from the same values */
      cudaMemcpy(d_y, y, sizeof(float) * (size_t)n, cudaMemcpyHostToDevice);
      pt_softmax_backward(want, dy, y, &p);
      ptk_softmax_bwd_args ba = {d_g, d_dy, d_y, p};
      ptk_softmax_bwd(s, rows, &ba);
      stream_sync(s);
      expect_close(name, "backward", d_g, want, n, TOL);
      ba.din = NULL;
      ptk_softmax_bwd(s, rows, &ba);
      stream_sync(s);
      expect_close(name, "din NULL skipped", d_g, want, n, TOL);
      /* in place */
      ptk_softmax_args ip = {d_x, d_x, p};
      ptk_softmax_fwd(s, rows, &ip);
      stream_sync(s);
      expect_close(name, "forward in place", d_x, y, n, TOL);
      dfree(d_x);
      dfree(d_y);
      dfree(d_dy);
      dfree(d_g);
      free(x);
      free(y);
      free(dy);
      free(g);
      free(want);
    }
  }
}

/* ---- concat ---- */

static void test_concat_case(cudaStream_t s, int64_t outer, int64_t inner, int n_in,
                             const int64_t *dims) {
  pt_concat_params p;
  memset(&p, 0, sizeof p);
  p.n = n_in;
  p.outer = outer;
  p.inner = inner;
  int64_t total = 0;
  for (int i = 0; i < n_in; i++) total += p.dims[i] = dims[i];
  const int64_t no = outer * total * inner;
  char name[96];
  snprintf(name, sizeof name, "concat outer=%lld inner=%lld inputs=%d total=%lld", (long long)outer,
           (long long)inner, n_in, (long long)total);
  float *ins[PT_MAX_CONCAT], *gs[PT_MAX_CONCAT], *ws[PT_MAX_CONCAT], *d_in[PT_MAX_CONCAT],
      *d_gs[PT_MAX_CONCAT];
  float *y = falloc(no), *dy = frand(no, -1, 1);
  float *d_y = dev_floats(y, no), *d_dy = dev_floats(dy, no);
  for (int i = 0; i < n_in; i++) {
    const int64_t len = outer * dims[i] * inner;
    ins[i] = frand(len, -1, 1);
    gs[i] = frand(len, -1, 1);
    ws[i] = fdup(gs[i], len);
    d_in[i] = dev_floats(ins[i], len);
    d_gs[i] = dev_floats(gs[i], len);
  }
  pt_concat_forward(y, (const float *const *)ins, &p);
  int64_t off = 0;
  for (int i = 0; i < n_in; i++) {
    ptk_concat_args a = {d_y, d_in[i], dims[i], off, total, inner};
    ptk_concat_fwd(s, outer * dims[i] * inner, &a);
    off += dims[i];
  }
  stream_sync(s);
  expect_same(name, "forward", d_y, y, no);

  /* backward with the second input's gradient not needed */
  float *wsn[PT_MAX_CONCAT];
  for (int i = 0; i < n_in; i++) wsn[i] = i == 1 ? NULL : ws[i];
  pt_concat_backward(wsn, dy, &p);
  off = 0;
  for (int i = 0; i < n_in; i++) {
    ptk_concat_bwd_args a = {i == 1 ? NULL : d_gs[i], d_dy, dims[i], off, total, inner};
    ptk_concat_bwd(s, outer * dims[i] * inner, &a);
    off += dims[i];
  }
  stream_sync(s);
  for (int i = 0; i < n_in; i++) {
    expect_close(name, i == 1 ? "din[1] (NULL)" : "din", d_gs[i], ws[i], outer * dims[i] * inner,
                 TOL);
    dfree(d_in[i]);
    dfree(d_gs[i]);
    free(ins[i]);
    free(gs[i]);
    free(ws[i]);
  }
  dfree(d_y);
  dfree(d_dy);
  free(y);
  free(dy);
}

static void test_concat(cudaStream_t s) {
  const int64_t d3[3] = {1, 3, 2}, d2[2] = {4, 4}, d4[4] = {2, 1, 1, 5};
  test_concat_case(s, 2, 5, 3, d3);
  test_concat_case(s, 3, 1, 2, d2);
  test_concat_case(s, 1, 7, 4, d4);
  test_concat_case(s, 5, 3, 4, d4);
}

/* ---- resize ---- */

static void test_resize(cudaStream_t s) {
  static const int shapes[][6] = {
      {1, 2, 5, 4, 12, 9}, {2, 1, 6, 8, 3, 5}, {1, 3, 4, 4, 8, 8}, {1, 1, 7, 3, 7, 1}};
  static const char *coords[] = {"half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel",
                                 "tf_half_pixel_for_nn"};
  static const char *nearests[] = {"round_prefer_floor", "round_prefer_ceil", "floor", "ceil"};
  for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
    for (int co = 0; co < 5; co++) {
      for (int ne = 0; ne < 4; ne++) {
        const int *sh = shapes[c];
        pt_resize_params p = {sh[0], sh[1], sh[2], sh[3], sh[4], sh[5]};
        p.coord = (pt_resize_coord)co;
        p.nearest = (pt_resize_nearest)ne;
        p.scale_h = (float)p.OH / (float)p.H;
        p.scale_w = (float)p.OW / (float)p.W;
        const int64_t ni = (int64_t)p.N * p.C * p.H * p.W, no = (int64_t)p.N * p.C * p.OH * p.OW;
        char name[128];
        snprintf(name, sizeof name, "resize %dx%dx%dx%d->%dx%d %s %s", p.N, p.C, p.H, p.W, p.OH,
                 p.OW, coords[co], nearests[ne]);
        float *x = frand(ni, -1, 1), *y = falloc(no), *dy = frand(no, -1, 1);
        float *g = frand(ni, -1, 1), *want = fdup(g, ni);
        float *d_x = dev_floats(x, ni), *d_y = dev_floats(y, no), *d_dy = dev_floats(dy, no);
        float *d_g = dev_floats(g, ni);
        pt_resize_forward(y, x, &p);
        ptk_resize_args fa = {d_y, d_x, p};
        ptk_resize_fwd(s, no, &fa);
        stream_sync(s);
        expect_same(name, "forward", d_y, y, no);
        pt_resize_backward(want, dy, &p);
        ptk_resize_bwd_args ba = {d_g, d_dy, p};
        ptk_resize_bwd(s, no, &ba);
        ba.din = NULL;
        ptk_resize_bwd(s, no, &ba);
        stream_sync(s);
        expect_close(name, "backward", d_g, want, ni, TOL);
        dfree(d_x);
        dfree(d_y);
        dfree(d_dy);
        dfree(d_g);
        free(x);
        free(y);
        free(dy);
        free(g);
        free(want);
      }
    }
  }
}

/* ---- Gemm's C term ---- */

static void test_gemm_c(cudaStream_t s) {
  static const char *modes[] = {"none", "scalar", "row", "col", "full"};
  const int M = 5, N = 7, K = 3;
  const float betas[] = {1.0f, 0.5f, 0.0f};
  for (int mode = 0; mode < 5; mode++) {
    for (int bi = 0; bi < 3; bi++) {
      pt_gemm_params p = {M, N, K, false, true, 0.75f, betas[bi], (pt_gemm_c)mode};
      const int64_t nc = mode == PT_GEMM_C_SCALAR ? 1
                         : mode == PT_GEMM_C_ROW  ? N
                         : mode == PT_GEMM_C_COL  ? M
                                                  : (int64_t)M * N;
      const int64_t no = (int64_t)M * N;
      char name[64];
      snprintf(name, sizeof name, "gemm C %s beta=%g M=%d N=%d", modes[mode], (double)betas[bi], M,
               N);
      float *a = frand((int64_t)M * K, -1, 1), *b = frand((int64_t)N * K, -1, 1);
      float *c = frand(nc, -1, 1), *dy = frand(no, -1, 1);
      if (betas[bi] == 0.0f) c[0] = NAN; /* beta 0 ignores C, NaN included */
      float *y0 = falloc(no), *y = falloc(no), *gc = frand(nc, -1, 1), *want = fdup(gc, nc);
      pt_gemm_forward(y0, a, b, NULL, &p);
      pt_gemm_forward(y, a, b, c, &p);
      float *d_y = dev_floats(y0, no), *d_c = dev_floats(c, nc), *d_dy = dev_floats(dy, no);
      float *d_gc = dev_floats(gc, nc);
      ptk_gemm_c_args fa = {d_y, d_c, p};
      ptk_gemm_c_fwd(s, no, &fa);
      stream_sync(s);
      expect_close(name, "forward", d_y, y, no, TOL);
      if (betas[bi] != 0.0f) {
        pt_gemm_backward(NULL, NULL, want, dy, a, b, &p);
        ptk_gemm_c_bwd_args ba = {d_gc, d_dy, p};
        ptk_gemm_c_bwd(s, no, &ba);
        ba.dc = NULL;
        ptk_gemm_c_bwd(s, no, &ba);
        stream_sync(s);
        expect_close(name, "dc", d_gc, want, nc, TOL);
      }
      dfree(d_y);
      dfree(d_c);
      dfree(d_dy);
      dfree(d_gc);
      free(a);
      free(b);
      free(c);
      free(dy);
      free(y0);
      free(y);
      free(gc);
      free(want);
    }
  }
}

/* ---- asymmetric padding (no CPU twin: conv.c pads inside im2col; a direct reference here) ---- */

static void test_pad2d(cudaStream_t s) {
  static const int cases[][8] = {
      {2, 3, 4, 5, 1, 2, 0, 3}, {1, 1, 3, 3, 0, 0, 0, 0}, {1, 2, 1, 6, 2, 0, 1, 1}};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    const int N = cases[c][0], C = cases[c][1], H = cases[c][2], W = cases[c][3];
    const int pt = cases[c][4], pl = cases[c][5], pb = cases[c][6], pr = cases[c][7];
    const int PH = H + pt + pb, PW = W + pl + pr;
    const int64_t ni = (int64_t)N * C * H * W, no = (int64_t)N * C * PH * PW;
    char name[96];
    snprintf(name, sizeof name, "pad2d %dx%dx%dx%d pads %d,%d,%d,%d", N, C, H, W, pt, pl, pb, pr);
    float *x = frand(ni, -1, 1), *y = frand(no, -1, 1), *dy = frand(no, -1, 1);
    float *g = frand(ni, -1, 1), *want = fdup(g, ni);
    float *d_x = dev_floats(x, ni), *d_y = dev_floats(y, no), *d_dy = dev_floats(dy, no);
    float *d_g = dev_floats(g, ni);
    for (int64_t pl_ = 0; pl_ < (int64_t)N * C; pl_++)
      for (int yy = 0; yy < PH; yy++)
        for (int xx = 0; xx < PW; xx++) {
          const int iy = yy - pt, ix = xx - pl;
          const int64_t o = (pl_ * PH + yy) * PW + xx;
          const int inside = iy >= 0 && iy < H && ix >= 0 && ix < W;
          const int64_t k = (pl_ * H + iy) * W + ix;
          y[o] = inside ? x[k] : 0.0f;
          if (inside) want[k] += dy[o];
        }
    ptk_pad_args fa = {d_y, d_x, N, C, H, W, pt, pl, pb, pr};
    ptk_pad2d_fwd(s, no, &fa);
    ptk_pad_bwd_args ba = {d_g, d_dy, N, C, H, W, pt, pl, pb, pr};
    ptk_pad2d_bwd(s, no, &ba);
    ba.din = NULL;
    ptk_pad2d_bwd(s, no, &ba);
    stream_sync(s);
    expect_same(name, "forward", d_y, y, no);
    expect_close(name, "backward", d_g, want, ni, TOL);
    dfree(d_x);
    dfree(d_y);
    dfree(d_dy);
    dfree(d_g);
    free(x);
    free(y);
    free(dy);
    free(g);
    free(want);
  }
}

/* ---- losses ---- */

static void test_cross_entropy(cudaStream_t s) {
  const int C = 10;
  const int64_t targets[] = {0, 3, 9, -1, 10};
  for (int prob = 0; prob < 2; prob++) {
    for (size_t ti = 0; ti < sizeof targets / sizeof targets[0]; ti++) {
      char name[64];
      snprintf(name, sizeof name, "cross-entropy C=%d target=%lld%s", C, (long long)targets[ti],
               prob ? " over probabilities" : "");
      float *y = frand(C, -5, 5);
      y[2] = 40.0f; /* a dominant logit */
      if (prob) {
        pt_softmax_params sp = {1, C, 1, false};
        pt_softmax_forward(y, y, &sp);
        y[3] = 0.0f; /* a ruled-out class: clamped, not infinite */
      }
      float *g = frand(C, -1, 1), loss = 0.0f, got_loss = -1.0f;
      const float want_loss = pt_cross_entropy(g, y, targets[ti], C, prob != 0);
      float *d_y = dev_floats(y, C), *d_g = dev_floats(g, C), *d_loss = dev_floats(&loss, 1);
      /* the device gradient starts as garbage: the loss must write it (=) */
      float *junk = frand(C, 50, 60);
      cudaMemcpy(d_g, junk, sizeof(float) * C, cudaMemcpyHostToDevice);
      int64_t *d_t = (int64_t *)dev_copy(&targets[ti], sizeof(int64_t));
      ptk_ce_args a = {d_loss, d_g, d_y, d_t, C, prob};
      ptk_cross_entropy(s, 1, &a);
      stream_sync(s);
      host_copy(&got_loss, d_loss, sizeof(float));
      const double e = fabs((double)got_loss - want_loss) / fmax(1.0, fabs(want_loss));
      CHECK(e < TOL, "%s: loss %g, CPU %g", name, (double)got_loss, (double)want_loss);
      expect_close(name, "gradient", d_g, g, C, TOL);
      /* no gradient wanted */
      a.dout = NULL;
      ptk_cross_entropy(s, 1, &a);
      stream_sync(s);
      host_copy(&got_loss, d_loss, sizeof(float));
      CHECK(fabs((double)got_loss - want_loss) / fmax(1.0, fabs(want_loss)) < TOL,
            "%s: loss without gradient %g, CPU %g", name, (double)got_loss, (double)want_loss);
      dfree(d_y);
      dfree(d_g);
      dfree(d_loss);
      dfree(d_t);
      free(y);
      free(g);
      free(junk);
    }
  }
}

static void test_mse(cudaStream_t s) {
  const int64_t sizes[] = {1, 257, 4096};
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    const int64_t n = sizes[k];
    char name[48];
    snprintf(name, sizeof name, "mse n=%lld", (long long)n);
    float *y = frand(n, -3, 3), *t = frand(n, -3, 3), *g = falloc(n), loss = 0.0f, got = -1.0f;
    const float want = pt_mse(g, y, t, n);
    float *junk = frand(n, 50, 60);
    float *d_y = dev_floats(y, n), *d_t = dev_floats(t, n), *d_g = dev_floats(junk, n);
    float *d_loss = dev_floats(&loss, 1);
    ptk_mse_args a = {d_loss, d_g, d_y, d_t, n};
    ptk_mse_grad(s, n, &a);
    ptk_mse_loss(s, 1, &a);
    stream_sync(s);
    host_copy(&got, d_loss, sizeof(float));
    CHECK(fabs((double)got - want) / fmax(1.0, fabs(want)) < TOL, "%s: loss %g, CPU %g", name,
          (double)got, (double)want);
    expect_close(name, "gradient", d_g, g, n, TOL);
    dfree(d_y);
    dfree(d_t);
    dfree(d_g);
    dfree(d_loss);
    free(y);
    free(t);
    free(g);
    free(junk);
  }
}

/* ---- optimizers ---- */

static void test_sgd(cudaStream_t s) {
  const int64_t n = 333;
  const float moms[] = {0.0f, 0.9f};
  for (int mi = 0; mi < 2; mi++) {
    for (int with_m = 0; with_m < 2; with_m++) {
      if (moms[mi] != 0.0f && !with_m) continue;
      const float lr = 0.05f, mom = moms[mi], wd = 1e-2f;
      char name[64];
      snprintf(name, sizeof name, "sgd n=%lld momentum=%g%s", (long long)n, (double)mom,
               with_m ? "" : " m=NULL");
      float *w = frand(n, -1, 1), *m = frand(n, -0.1f, 0.1f), *g = frand(n, -1, 1);
      float *ww = fdup(w, n), *wm = fdup(m, n);
      float *d_w = dev_floats(w, n), *d_m = dev_floats(m, n), *d_g = dev_floats(g, n);
      int ok = 0;
      int *d_ok = (int *)dev_copy(&ok, sizeof ok);
      ptk_sgd_args a = {d_w, with_m ? d_m : NULL, d_g, lr, mom, wd, d_ok};
      /* ok = 0: nothing moves */
      ptk_sgd(s, n, &a);
      stream_sync(s);
      expect_same(name, "w with ok=0", d_w, w, n);
      expect_same(name, "m with ok=0", d_m, m, n);
      /* three steps with ok = 1 (a nonzero flag other than 1 counts too) */
      ok = 7;
      cudaMemcpy(d_ok, &ok, sizeof ok, cudaMemcpyHostToDevice);
      for (int step = 0; step < 3; step++) {
        pt_sgd_step(ww, g, with_m ? wm : NULL, n, lr, mom, wd);
        ptk_sgd(s, n, &a);
      }
      stream_sync(s);
      expect_close(name, "w after 3 steps", d_w, ww, n, TOL);
      expect_close(name, "m after 3 steps", d_m, wm, n, TOL);
      dfree(d_w);
      dfree(d_m);
      dfree(d_g);
      dfree(d_ok);
      free(w);
      free(m);
      free(g);
      free(ww);
      free(wm);
    }
  }
}

static void test_adam(cudaStream_t s) {
  const int64_t n = 517;
  const int64_t t0s[] = {1, 0, 1000};
  for (size_t k = 0; k < sizeof t0s / sizeof t0s[0]; k++) {
    for (int wdi = 0; wdi < 2; wdi++) {
      const float lr = 1e-3f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = wdi ? 1e-2f : 0.0f;
      char name[64];
      snprintf(name, sizeof name, "adam n=%lld t0=%lld wd=%g", (long long)n, (long long)t0s[k],
               (double)wd);
      float *w = frand(n, -1, 1), *m = frand(n, -0.1f, 0.1f), *v = frand(n, 0, 0.01f);
      float *ww = fdup(w, n), *wm = fdup(m, n), *wv = fdup(v, n);
      float *g = frand(n, -1, 1);
      float *d_w = dev_floats(w, n), *d_m = dev_floats(m, n), *d_v = dev_floats(v, n);
      float *d_g = dev_floats(g, n);
      int ok = 0;
      int64_t t = t0s[k];
      int *d_ok = (int *)dev_copy(&ok, sizeof ok);
      int64_t *d_t = (int64_t *)dev_copy(&t, sizeof t);
      ptk_adam_args a = {d_w, d_m, d_v, d_g, lr, b1, b2, eps, wd, d_t, d_ok};
      ptk_adam(s, n, &a);
      stream_sync(s);
      expect_same(name, "w with ok=0", d_w, w, n);
      expect_same(name, "m with ok=0", d_m, m, n);
      expect_same(name, "v with ok=0", d_v, v, n);
      ok = 1;
      cudaMemcpy(d_ok, &ok, sizeof ok, cudaMemcpyHostToDevice);
      for (int step = 0; step < 4; step++, t++) {
        pt_adam_step(ww, g, wm, wv, n, lr, b1, b2, eps, wd, t);
        cudaMemcpy(d_t, &t, sizeof t, cudaMemcpyHostToDevice);
        ptk_adam(s, n, &a);
        stream_sync(s);
      }
      expect_close(name, "w after 4 steps", d_w, ww, n, TOL);
      expect_close(name, "m after 4 steps", d_m, wm, n, TOL);
      expect_close(name, "v after 4 steps", d_v, wv, n, TOL);
      dfree(d_w);
      dfree(d_m);
      dfree(d_v);
      dfree(d_g);
      dfree(d_ok);
      dfree(d_t);
      free(w);
      free(m);
      free(v);
      free(ww);
      free(wm);
      free(wv);
      free(g);
    }
  }
}

/* ---- device-side decisions ---- */

static void test_check_finite(cudaStream_t s) {
  const int64_t n = 300;
  const float bad[] = {NAN, INFINITY, -INFINITY};
  const char *bad_names[] = {"NaN", "+Inf", "-Inf"};
  for (int k = -1; k < 3; k++) {
    float *x = frand(n, -1e30f, 1e30f);
    if (k >= 0) x[n - 1 - 37 * k] = bad[k];
    int flag = 1, got = -1;
    float *d_x = dev_floats(x, n);
    int *d_flag = (int *)dev_copy(&flag, sizeof flag);
    ptk_finite_args a = {d_x, d_flag};
    ptk_check_finite(s, n, &a);
    stream_sync(s);
    host_copy(&got, d_flag, sizeof got);
    CHECK(got == (k < 0 ? 1 : 0), "check_finite with %s: flag %d",
          k < 0 ? "no bad value" : bad_names[k], got);
    /* a flag already 0 stays 0 */
    flag = 0;
    cudaMemcpy(d_flag, &flag, sizeof flag, cudaMemcpyHostToDevice);
    ptk_check_finite(s, n, &a);
    stream_sync(s);
    host_copy(&got, d_flag, sizeof got);
    CHECK(got == 0, "check_finite: a flag of 0 became %d", got);
    dfree(d_x);
    dfree(d_flag);
    free(x);
  }
}

static void test_copy_if(cudaStream_t s) {
  const int64_t n = 123;
  float *src = frand(n, -1, 1), *dst = frand(n, -1, 1);
  float *d_src = dev_floats(src, n), *d_dst = dev_floats(dst, n);
  int cond = 0;
  int *d_cond = (int *)dev_copy(&cond, sizeof cond);
  ptk_copy_if_args a = {d_dst, d_src, d_cond};
  ptk_copy_if(s, n, &a);
  stream_sync(s);
  expect_same("copy_if cond=0", "dst", d_dst, dst, n);
  cond = 1;
  cudaMemcpy(d_cond, &cond, sizeof cond, cudaMemcpyHostToDevice);
  ptk_copy_if(s, n, &a);
  stream_sync(s);
  expect_same("copy_if cond=1", "dst (now src)", d_dst, src, n);
  dfree(d_src);
  dfree(d_dst);
  dfree(d_cond);
  free(src);
  free(dst);
}

int main(void) {
  int gate = pt_cuda_test_gate();
  if (gate >= 0) return gate;
  cudaStream_t s = NULL;
  REQUIRE(cudaStreamCreate(&s) == cudaSuccess, "cudaStreamCreate failed");
  test_axpy_fill(s);
  test_binary(s);
  test_unary(s);
  test_pools(s);
  test_batchnorm(s);
  test_softmax(s);
  test_concat(s);
  test_resize(s);
  test_gemm_c(s);
  test_pad2d(s);
  test_cross_entropy(s);
  test_mse(s);
  test_sgd(s);
  test_adam(s);
  test_check_finite(s);
  test_copy_if(s);
  cudaStreamDestroy(s);
#ifdef PT_CUDA_SIM
  CHECK(pt_sim_allocs_live() == 0, "%d device allocations leaked", pt_sim_allocs_live());
  CHECK(pt_sim_streams_live() == 0, "%d streams left", pt_sim_streams_live());
#endif
  PT_TEST_END();
}
