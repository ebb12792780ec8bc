/* Winograd F(2x2, 3x3), F(2x2, 5x5) and F(4x4, 3x3) (lib/cpu/wino.c) against the im2col +
 * OpenBLAS convolution of conv.c, forward, input gradient and weights' gradient (F(4x4, 3x3):
 * forward only, on the shapes whose channels are multiples of 16): the benchmark layers, odd image
 * sizes (half tiles at the edges), asymmetric and zero padding, batch 2, one input channel, with
 * and without bias and ReLU; repeated calls bit-identical; weights at another address picked up;
 * weights changed in place (told, and so recomputed); NaN input confined to the tiles whose input
 * block holds it, and passed on by the ReLU; shapes it refuses. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cpu/ops.h"
#include "cpu/wino.h"
#include "conv_test.h"
#include "pt_test.h"

static unsigned long long seed = 0x853c49e6748fea9bULL;

static float *random_f(int64_t n) {
  return conv_test_random(&seed, n);
}

/* A K x K layer (conv_test.h's argument order otherwise). */
static pt_conv_params shape(int K, int N, int C, int H, int W, int OC, int pt, int pl, int pb,
                            int pr, bool bias) {
  return conv_test_shape(N, C, H, W, OC, K, K, pt, pl, pb, pr, bias);
}

static void reference(float *y, const float *x, const float *w, const float *b,
                      const pt_conv_params *p, bool relu) {
  float *scratch = malloc(sizeof(float) * (size_t)pt_conv2d_scratch(p));
  pt_conv2d_forward(y, x, w, b, p, scratch);
  free(scratch);
  int64_t n = (int64_t)p->N * p->OC * p->OH * p->OW;
  for (int64_t i = 0; relu && i < n; i++) y[i] = y[i] < 0 ? 0 : y[i];
}

/* The forward kernel under test: F(2x2, r x r) (pt_wino) or F(4x4, 3x3) (pt_wino4). */
typedef struct fwd {
  pt_wino *k2;
  pt_wino4 *k4;
} fwd;

static void fwd_run(fwd *k, float *y, const float *x, const float *w, const float *b) {
  if (k->k4)
    pt_wino4_forward(k->k4, y, x, w, b);
  else
    pt_wino_forward(k->k2, y, x, w, b);
}

static void fwd_weights_changed(fwd *k) {
  if (k->k4)
    pt_wino4_weights_changed(k->k4);
  else
    pt_wino_weights_changed(k->k2);
}

/* The forward against conv.c (within tol of the output's scale), repeated, with new weights in
 * place and at another address, and with a NaN pixel. */
static void check_kernel(const pt_conv_params *p, bool relu, bool four, double tol) {
  char d[160];
  snprintf(d, sizeof d, "%s %dx%d N%d C%d %dx%d -> OC%d %dx%d pad %d,%d,%d,%d%s%s",
           four ? "F(4x4)" : "F(2x2)", p->KH, p->KW, p->N, p->C, p->H, p->W, p->OC, p->OH, p->OW,
           p->PT, p->PL, p->PB, p->PR, p->has_bias ? " bias" : "", relu ? " relu" : "");
  pt_error err;
  fwd kernel = {NULL, NULL}, *k = &kernel;
  if (four)
    k->k4 = pt_wino4_create(p, relu, &err);
  else
    k->k2 = pt_wino_create(p, relu, &err);
  CHECK(k->k2 || k->k4, "%s: %s", d, err.msg);
  if (!k->k2 && !k->k4) return;
  const int m = four ? 4 : 2; /* the output tile's size */
  const int64_t nx = (int64_t)p->N * p->C * p->H * p->W, nw = (int64_t)p->OC * p->C * p->KH * p->KW,
                ny = (int64_t)p->N * p->OC * p->OH * p->OW;
  float *x = random_f(nx), *w = random_f(nw), *b = p->has_bias ? random_f(p->OC) : NULL;
  float *y = malloc(sizeof(float) * ny), *y2 = malloc(sizeof(float) * ny),
        *ref = malloc(sizeof(float) * ny);
  for (int64_t i = 0; i < ny; i++) y[i] = y2[i] = NAN; /* every output must be written */
  reference(ref, x, w, b, p, relu);
  fwd_run(k, y, x, w, b);
  double e = pt_test_max_err(y, ref, ny);
  CHECK(e < tol, "%s: error %.3g against conv.c", d, e);
  if (four) printf("%s: error %.2g against conv.c\n", d, e);
  fwd_run(k, y2, x, w, b);
  CHECK(memcmp(y, y2, sizeof(float) * ny) == 0, "%s: a repeated forward is bit-identical", d);

  /* weights changed in place: recomputed once told */
  for (int64_t i = 0; i < nw; i++) w[i] = -0.5f * w[i] + 0.01f;
  reference(ref, x, w, b, p, relu);
  fwd_weights_changed(k);
  fwd_run(k, y, x, w, b);
  e = pt_test_max_err(y, ref, ny);
  CHECK(e < tol, "%s: new weights at the same address: error %.3g", d, e);

  /* other weights at another address: used without being told */
  float *w2 = random_f(nw);
  reference(ref, x, w2, b, p, relu);
  fwd_run(k, y, x, w2, b);
  e = pt_test_max_err(y, ref, ny);
  CHECK(e < tol, "%s: weights at another address: error %.3g", d, e);
  free(w2);
  reference(ref, x, w, b, p, relu);

  /* a NaN pixel: NaN in the outputs that read it, none outside its tiles' reach */
  if (p->N == 1 && p->H >= 12 && p->W >= 12) {
    const int cy = p->H / 2, cx = p->W / 2;
    x[((int64_t)(p->C - 1) * p->H + cy) * p->W + cx] = NAN;
    fwd_run(k, y, x, w, b);
    bool reach = true, confined = true;
    for (int oc = 0; oc < p->OC; oc++)
      for (int oy = 0; oy < p->OH; oy++)
        for (int ox = 0; ox < p->OW; ox++) {
          const float v = y[((int64_t)oc * p->OH + oy) * p->OW + ox];
          const int iy = oy - p->PT, ix = ox - p->PL; /* the window's top left in the input */
          const int K = p->KH, n = m + K - 1;
          const bool reads = cy >= iy && cy < iy + K && cx >= ix && cx < ix + K;
          /* the n x n block of the tile holding (oy, ox) */
          const int ty = (oy / m) * m - p->PT, tx = (ox / m) * m - p->PL;
          const bool block = cy >= ty && cy < ty + n && cx >= tx && cx < tx + n;
          if (reads && !isnan(v)) reach = false;
          if (!block && isnan(v)) confined = false;
        }
    CHECK(reach, "%s: a NaN input reaches every output whose window holds it", d);
    CHECK(confined, "%s: and no output outside the tiles whose input block holds it", d);
  }
  pt_wino_free(k->k2);
  pt_wino4_free(k->k4);
  free(x);
  free(w);
  free(b);
  free(y);
  free(y2);
  free(ref);
}

/* The two gradients against conv.c's: each added into base values, repeated calls bit-identical,
 * weights changed in place picked up at once (a backward-data kernel transforms them per call). */
static void check_backward(const pt_conv_params *p) {
  char d[160];
  snprintf(d, sizeof d, "backward %dx%d N%d C%d %dx%d -> OC%d %dx%d pad %d,%d,%d,%d", p->KH, p->KW,
           p->N, p->C, p->H, p->W, p->OC, p->OH, p->OW, p->PT, p->PL, p->PB, p->PR);
  pt_error err;
  const bool data = pt_wino_backward_data_fits(p);
  pt_wino *kd = data ? pt_wino_create_backward_data(p, &err) : NULL;
  CHECK(!data || kd, "%s: backward data: %s", d, err.msg);
  pt_wino *kw = pt_wino_create_backward_weights(p, &err);
  CHECK(kw != NULL, "%s: backward weights: %s", d, err.msg);
  if (!kw || (data && !kd)) return;
  const int64_t nx = (int64_t)p->N * p->C * p->H * p->W, nw = (int64_t)p->OC * p->C * p->KH * p->KW,
                ny = (int64_t)p->N * p->OC * p->OH * p->OW;
  float *x = random_f(nx), *w = random_f(nw), *dy = random_f(ny);
  float *dx_ref = random_f(nx), *dw_ref = random_f(nw); /* base values, added into */
  float *dx = malloc(sizeof(float) * nx), *dw = malloc(sizeof(float) * nw);
  float *dx2 = malloc(sizeof(float) * nx), *dw2 = malloc(sizeof(float) * nw);
  memcpy(dx, dx_ref, sizeof(float) * nx);
  memcpy(dw, dw_ref, sizeof(float) * nw);
  memcpy(dx2, dx_ref, sizeof(float) * nx);
  memcpy(dw2, dw_ref, sizeof(float) * nw);
  float *scratch = malloc(sizeof(float) * (size_t)pt_conv2d_scratch(p));
  pt_conv2d_backward(dx_ref, dw_ref, NULL, dy, x, w, p, scratch);
  if (kd) {
    pt_wino_backward_data(kd, dx, dy, w);
    double e = pt_test_max_err(dx, dx_ref, nx);
    CHECK(e < 1e-5, "%s: din error %.3g against conv.c", d, e);
    pt_wino_backward_data(kd, dx2, dy, w);
    CHECK(memcmp(dx, dx2, sizeof(float) * nx) == 0, "%s: din bit-identical when repeated", d);
  }
  /* the weights' gradient sums products of transformed values, which are up to 900 times the
   * inputs' scale (B^T d B up to 100, A dY A^T up to 9), so it rounds more: up to 8e-6 seen */
  pt_wino_backward_weights(kw, dw, dy, x);
  double e = pt_test_max_err(dw, dw_ref, nw);
  CHECK(e < 3e-5, "%s: dw error %.3g against conv.c", d, e);
  printf("%s: din error %.2g, dw error %.2g\n", d, kd ? pt_test_max_err(dx, dx_ref, nx) : 0.0, e);
  pt_wino_backward_weights(kw, dw2, dy, x);
  CHECK(memcmp(dw, dw2, sizeof(float) * nw) == 0, "%s: dw bit-identical when repeated", d);

  if (kd) { /* new weights at the same address, not told: din follows them */
    for (int64_t i = 0; i < nw; i++) w[i] = 0.3f - w[i];
    memset(dx_ref, 0, sizeof(float) * nx);
    memset(dx, 0, sizeof(float) * nx);
    pt_conv2d_backward(dx_ref, NULL, NULL, dy, x, w, p, scratch);
    pt_wino_weights_changed(kd);
    pt_wino_backward_data(kd, dx, dy, w);
    e = pt_test_max_err(dx, dx_ref, nx);
    CHECK(e < 1e-5, "%s: din after new weights: error %.3g", d, e);
  }
  pt_wino_free(kd);
  pt_wino_free(kw);
  float *all[] = {x, w, dy, dx_ref, dw_ref, dx, dw, dx2, dw2, scratch};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
}

/* Two F(4x4, 3x3) kernels linked (the first's output handed over pixel-major): the second's
 * output bit-identical to the unlinked pair's, the first's NCHW output untouched; links that do
 * not chain refused. */
static void check_link(void) {
  const pt_conv_params p1 = shape(3, 2, 16, 13, 18, 32, 1, 1, 1, 1, true),
                       p2 = shape(3, 2, 32, 13, 18, 16, 1, 0, 2, 1, false);
  pt_error err;
  pt_wino4 *a = pt_wino4_create(&p1, true, &err), *b = pt_wino4_create(&p2, false, &err),
           *la = pt_wino4_create(&p1, true, &err), *lb = pt_wino4_create(&p2, false, &err),
           *other = pt_wino4_create(&p1, true, &err);
  CHECK(a && b && la && lb && other, "link kernels: %s", err.msg);
  if (!a || !b || !la || !lb || !other) return;
  CHECK(!pt_wino4_link(la, other), "a link whose shapes do not chain (32 -> 16 channels) refused");
  CHECK(pt_wino4_link(la, lb), "16 -> 32 -> 16 linked");
  CHECK(!pt_wino4_link(la, lb) && !pt_wino4_link(other, lb), "a kernel linked twice refused");
  const int64_t nx = (int64_t)p1.N * p1.C * p1.H * p1.W, nm = (int64_t)p1.N * p1.OC * p1.OH * p1.OW,
                ny = (int64_t)p2.N * p2.OC * p2.OH * p2.OW;
  float *x = random_f(nx), *w1 = random_f((int64_t)p1.OC * p1.C * 9), *b1 = random_f(p1.OC),
        *w2 = random_f((int64_t)p2.OC * p2.C * 9);
  float *mid = malloc(sizeof(float) * nm), *y = malloc(sizeof(float) * ny),
        *lmid = malloc(sizeof(float) * nm), *ly = malloc(sizeof(float) * ny);
  for (int64_t i = 0; i < nm; i++) lmid[i] = 1234.5f;
  for (int rep = 0; rep < 2; rep++) { /* the second time, new weights in place */
    pt_wino4_forward(a, mid, x, w1, b1);
    pt_wino4_forward(b, y, mid, w2, NULL);
    pt_wino4_forward(la, lmid, x, w1, b1);
    pt_wino4_forward(lb, ly, lmid, w2, NULL);
    CHECK(memcmp(y, ly, sizeof(float) * ny) == 0, "linked pair bit-identical to unlinked (%d)",
          rep);
    bool untouched = true;
    for (int64_t i = 0; i < nm; i++) untouched = untouched && lmid[i] == 1234.5f;
    CHECK(untouched, "the linked first kernel leaves its NCHW output alone (%d)", rep);
    for (int64_t i = 0; i < (int64_t)p2.OC * p2.C * 9; i++) w2[i] *= -0.5f;
    pt_wino4_weights_changed(b);
    pt_wino4_weights_changed(lb);
  }
  float *all[] = {x, w1, b1, w2, mid, y, lmid, ly};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
  pt_wino4 *k[] = {a, b, la, lb, other};
  for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) pt_wino4_free(k[i]);
}

int main(void) {
  pt_blas_init();
  const struct {
    pt_conv_params p;
    bool relu;
  } cases[] = {
      {shape(5, 1, 32, 64, 64, 32, 2, 2, 2, 2, true), true}, /* `large`'s layers */
      {shape(5, 1, 32, 64, 64, 32, 2, 2, 2, 2, true), false},
      {shape(5, 1, 3, 64, 64, 32, 2, 2, 2, 2, true), true},   /* its first */
      {shape(5, 1, 16, 13, 17, 16, 2, 2, 2, 2, true), true},  /* odd sizes: half tiles */
      {shape(5, 2, 8, 11, 9, 48, 1, 3, 0, 2, false), false},  /* batch 2, asymmetric pads */
      {shape(5, 1, 1, 5, 5, 16, 0, 0, 0, 0, true), true},     /* one output pixel */
      {shape(5, 1, 20, 40, 21, 64, 0, 0, 0, 0, false), true}, /* no padding, 32 + 32 channels */
      {shape(5, 1, 17, 24, 36, 80, 2, 1, 2, 1, true), false}, /* 32 + 32 + 16 channels */
      {shape(3, 1, 16, 32, 32, 16, 1, 1, 1, 1, true), true},  /* `small`'s layers */
      {shape(3, 1, 3, 32, 32, 16, 1, 1, 1, 1, true), true},   /* its first */
      {shape(3, 1, 32, 64, 64, 32, 1, 1, 1, 1, false), true}, /* 32 tiles a row */
      {shape(3, 1, 16, 13, 17, 16, 1, 1, 1, 1, true), true},  /* odd sizes: half tiles */
      {shape(3, 2, 8, 11, 9, 48, 0, 2, 1, 0, false), false},  /* batch 2, asymmetric pads */
      {shape(3, 1, 1, 3, 3, 16, 0, 0, 0, 0, true), true},     /* one output pixel */
      {shape(3, 1, 48, 8, 70, 32, 2, 0, 2, 1, true), false},  /* 35 tiles a row, pads of 2 */
      {shape(3, 2, 17, 9, 9, 80, 1, 1, 1, 1, true), true},    /* 32 + 32 + 16 channels */
      {shape(3, 2, 32, 14, 10, 16, 0, 2, 1, 0, true), true},  /* batch 2, 16-channel vectors */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    check_kernel(&cases[i].p, cases[i].relu, false, 1e-5);
    if (pt_wino4_fits(&cases[i].p)) check_kernel(&cases[i].p, cases[i].relu, true, 1e-5);
    check_backward(&cases[i].p);
  }
  check_link();
  /* input gradients: only with input channels a multiple of 16 and pads of 0 to r - 1 */
  const pt_conv_params data_no[] = {
      shape(5, 1, 3, 64, 64, 32, 2, 2, 2, 2, true), shape(5, 1, 16, 20, 20, 16, 5, 2, 2, 2, true),
      shape(3, 1, 8, 20, 20, 16, 1, 1, 1, 1, true), shape(3, 1, 16, 20, 20, 16, 1, 3, 1, 1, true)};
  for (size_t i = 0; i < sizeof data_no / sizeof data_no[0]; i++) {
    pt_error err;
    pt_wino *k = pt_wino_create_backward_data(&data_no[i], &err);
    CHECK(!k && err.code == PT_ERR_UNSUPPORTED,
          "input gradient %zu (3 or 8 channels, pad 5 on 5x5 or 3 on 3x3) refused", i);
    pt_wino_free(k);
  }

  pt_conv_params no[] = {
      shape(5, 1, 8, 16, 16, 16, 2, 2, 2, 2, true), shape(5, 1, 8, 16, 16, 24, 2, 2, 2, 2, true),
      shape(5, 1, 8, 16, 16, 16, 2, 2, 2, 2, true), shape(5, 1, 8, 16, 16, 16, 2, 2, 2, 2, true),
      shape(3, 1, 8, 16, 16, 16, 1, 1, 1, 1, true)};
  no[0].KH = no[0].KW = 7, no[0].OH = no[0].OW = 14; /* 7x7 */
  no[2].SH = no[2].SW = 2, no[2].OH = no[2].OW = 8;  /* stride 2 */
  no[3].G = 2;                                       /* groups */
  no[4].KW = 5, no[4].OW = 14;                       /* 3x5 */
  for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
    pt_error err;
    pt_wino *k = pt_wino_create(&no[i], false, &err);
    CHECK(!k && !pt_wino_fits(&no[i]) && err.code == PT_ERR_UNSUPPORTED,
          "shape %zu (7x7, 24 output channels, stride 2, groups, 3x5) refused", i);
    pt_wino_free(k);
  }
  PT_TEST_END();
}
