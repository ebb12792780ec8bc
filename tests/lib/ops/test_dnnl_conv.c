/* The oneDNN convolution path (lib/cpu/dnnl_conv.c) against the im2col + OpenBLAS path of conv.c:
 * forward and the three gradients of Conv and ConvTranspose over many random shapes (odd sizes,
 * strides, asymmetric pads, dilation, groups, depthwise, with and without bias, batch 1 and 2)
 * and the layer shapes of the benchmarks; gradients added into pre-filled buffers; NULL gradients
 * skipped; repeated calls bit-identical; backward handed other input or weight pointers than the
 * forward before it; two plans of one shape run on two threads at once. Then the executor: models
 * give the same outputs and gradients with oneDNN plans and without (PARTIME_DNNL=0). Skipped (77)
 * when the library is built without oneDNN. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cpu/dnnl_conv.h"
#include "cpu/ops.h"
#include "exec.h"
#include "pt_test.h"

static unsigned long long seed = 0x9e3779b97f4a7c15ULL;

static float *alloc_f(int64_t n) {
  return calloc((size_t)(n > 0 ? n : 1), sizeof(float));
}

static float *random_f(int64_t n) {
  float *x = alloc_f(n);
  for (int64_t i = 0; i < n; i++) x[i] = pt_test_uniform(&seed, -1.0f, 1.0f);
  return x;
}

static int rnd(int lo, int hi) { /* uniform in [lo, hi] */
  return lo + (int)(pt_test_rand_u64(&seed) % (unsigned long long)(hi - lo + 1));
}

#define TOL 1e-4

typedef struct sizes {
  int64_t x, w, y, b;
} sizes;

static sizes sizes_of(const pt_conv_params *p, bool t) {
  sizes s = {(int64_t)p->N * p->C * p->H * p->W,
             (int64_t)(t ? p->C : p->OC) * (t ? p->OC : p->C) / p->G * p->KH * p->KW,
             (int64_t)p->N * p->OC * p->OH * p->OW, p->OC};
  return s;
}

static void ref_forward(float *y, const float *x, const float *w, const float *b,
                        const pt_conv_params *p, bool t, float *scratch) {
  if (t)
    pt_conv_transpose2d_forward(y, x, w, b, p, scratch);
  else
    pt_conv2d_forward(y, x, w, b, p, scratch);
}

static void ref_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                         const float *w, const pt_conv_params *p, bool t, float *scratch) {
  if (t)
    pt_conv_transpose2d_backward(dx, dw, db, dy, x, w, p, scratch);
  else
    pt_conv2d_backward(dx, dw, db, dy, x, w, p, scratch);
}

static void describe(char *buf, size_t n, const pt_conv_params *p, bool t) {
  snprintf(buf, n, "%s N%d C%d %dx%d -> OC%d %dx%d k%dx%d s%dx%d d%dx%d pad %d,%d,%d,%d g%d%s",
           t ? "convT" : "conv", p->N, p->C, p->H, p->W, p->OC, p->OH, p->OW, p->KH, p->KW, p->SH,
           p->SW, p->DH, p->DW, p->PT, p->PL, p->PB, p->PR, p->G, p->has_bias ? " bias" : "");
}

/* Runs every check on one shape with the computations `ops` on oneDNN and the others on conv.c;
 * returns 1 when a plan was made. */
static int check_shape(const pt_conv_params *p, bool t, unsigned ops, bool verbose) {
  char name[200], desc[160];
  describe(desc, sizeof desc, p, t);
  snprintf(name, sizeof name, "%s ops %u", desc, ops);
  pt_error err = {0};
  pt_dnnl_conv *plan = pt_dnnl_conv_plan_create(p, t, true, ops, &err);
  CHECK(plan != NULL, "%s: no plan: %s", name, err.msg);
  if (!plan) return 0;
  CHECK(pt_dnnl_conv_ops(plan) == (ops & PT_DNNL_ALL), "%s: plan runs %u on oneDNN", name,
        pt_dnnl_conv_ops(plan));

  const sizes n = sizes_of(p, t);
  int64_t sn = t ? pt_conv_transpose2d_scratch(p) : pt_conv2d_scratch(p);
  float *scratch = alloc_f(sn);
  float *x = random_f(n.x), *w = random_f(n.w), *b = p->has_bias ? random_f(n.b) : NULL;
  float *dy = random_f(n.y);
  float *y_ref = alloc_f(n.y), *dx_ref = alloc_f(n.x), *dw_ref = alloc_f(n.w),
        *db_ref = alloc_f(n.b);
  ref_forward(y_ref, x, w, b, p, t, scratch);
  ref_backward(dx_ref, dw_ref, db_ref, dy, x, w, p, t, scratch);

  /* forward, twice: same values, same bits */
  float *y = alloc_f(n.y), *y2 = alloc_f(n.y);
  for (int64_t i = 0; i < n.y; i++) y[i] = y2[i] = NAN; /* forward must overwrite */
  pt_dnnl_conv_forward(plan, y, x, w, b);
  double ey = pt_test_max_err(y, y_ref, n.y);
  CHECK(ey <= TOL, "%s: forward error %.3g", name, ey);
  pt_dnnl_conv_forward(plan, y2, x, w, b);
  CHECK(memcmp(y, y2, sizeof(float) * n.y) == 0, "%s: repeated forward not bit-identical", name);

  /* all three gradients into zeroed buffers */
  float *dx = alloc_f(n.x), *dw = alloc_f(n.w), *db = alloc_f(n.b);
  pt_dnnl_conv_backward(plan, dx, dw, db, dy, x, w);
  double ex = pt_test_max_err(dx, dx_ref, n.x), ew = pt_test_max_err(dw, dw_ref, n.w);
  double eb = p->has_bias ? pt_test_max_err(db, db_ref, n.b) : 0;
  CHECK(ex <= TOL, "%s: din error %.3g", name, ex);
  CHECK(ew <= TOL, "%s: dw error %.3g", name, ew);
  CHECK(eb <= TOL, "%s: db error %.3g", name, eb);
  if (!p->has_bias) {
    bool zero = true;
    for (int64_t i = 0; i < n.b; i++) zero = zero && db[i] == 0;
    CHECK(zero, "%s: db written without a bias", name);
  }
  if (verbose)
    printf("%-78s [%s] fwd %.1e din %.1e dw %.1e db %.1e\n", name, pt_dnnl_conv_impl(plan), ey, ex,
           ew, eb);

  /* again after a forward: bit-identical */
  float *dx2 = alloc_f(n.x), *dw2 = alloc_f(n.w), *db2 = alloc_f(n.b);
  pt_dnnl_conv_forward(plan, y2, x, w, b);
  pt_dnnl_conv_backward(plan, dx2, dw2, db2, dy, x, w);
  CHECK(memcmp(dx, dx2, sizeof(float) * n.x) == 0 && memcmp(dw, dw2, sizeof(float) * n.w) == 0 &&
            memcmp(db, db2, sizeof(float) * n.b) == 0,
        "%s: repeated backward not bit-identical", name);

  /* accumulation: into buffers holding base values, the result is base + gradient */
  float *bx = random_f(n.x), *bw = random_f(n.w), *bb = random_f(n.b);
  memcpy(dx2, bx, sizeof(float) * n.x);
  memcpy(dw2, bw, sizeof(float) * n.w);
  memcpy(db2, bb, sizeof(float) * n.b);
  pt_dnnl_conv_backward(plan, dx2, dw2, db2, dy, x, w);
  double ax = 0, aw = 0, ab = 0;
  for (int64_t i = 0; i < n.x; i++) ax = fmax(ax, fabs((double)dx2[i] - ((double)bx[i] + dx[i])));
  for (int64_t i = 0; i < n.w; i++) aw = fmax(aw, fabs((double)dw2[i] - ((double)bw[i] + dw[i])));
  for (int64_t i = 0; i < n.b; i++) ab = fmax(ab, fabs((double)db2[i] - ((double)bb[i] + db[i])));
  CHECK(ax <= 1e-5 && aw <= 1e-5 && ab <= 1e-5,
        "%s: backward does not add into its gradients (din %.3g dw %.3g db %.3g)", name, ax, aw,
        ab);

  /* each subset of gradients: the ones asked for are right, and only those are computed (the
   * NULL ones have no buffer to write) */
  for (int mask = 0; mask < 8; mask++) {
    memset(dx2, 0, sizeof(float) * n.x);
    memset(dw2, 0, sizeof(float) * n.w);
    memset(db2, 0, sizeof(float) * n.b);
    pt_dnnl_conv_backward(plan, mask & 1 ? dx2 : NULL, mask & 2 ? dw2 : NULL, mask & 4 ? db2 : NULL,
                          dy, x, w);
    double e1 = mask & 1 ? pt_test_max_err(dx2, dx_ref, n.x) : 0;
    double e2 = mask & 2 ? pt_test_max_err(dw2, dw_ref, n.w) : 0;
    double e3 = mask & 4 && p->has_bias ? pt_test_max_err(db2, db_ref, n.b) : 0;
    bool untouched = true;
    for (int64_t i = 0; i < n.x && !(mask & 1); i++) untouched = untouched && dx2[i] == 0;
    for (int64_t i = 0; i < n.w && !(mask & 2); i++) untouched = untouched && dw2[i] == 0;
    for (int64_t i = 0; i < n.b && !(mask & 4); i++) untouched = untouched && db2[i] == 0;
    CHECK(e1 <= TOL && e2 <= TOL && e3 <= TOL && untouched,
          "%s: gradient subset %d: errors %.3g %.3g %.3g, untouched %d", name, mask, e1, e2, e3,
          untouched);
  }

  /* backward handed other input and weights than the latest forward read: it must use them */
  float *x3 = random_f(n.x), *w3 = random_f(n.w);
  memset(dx_ref, 0, sizeof(float) * n.x);
  memset(dw_ref, 0, sizeof(float) * n.w);
  ref_backward(dx_ref, dw_ref, NULL, dy, x3, w3, p, t, scratch);
  memset(dx2, 0, sizeof(float) * n.x);
  memset(dw2, 0, sizeof(float) * n.w);
  pt_dnnl_conv_forward(plan, y2, x, w, b);
  pt_dnnl_conv_backward(plan, dx2, dw2, NULL, dy, x3, w3);
  double gx = pt_test_max_err(dx2, dx_ref, n.x), gw = pt_test_max_err(dw2, dw_ref, n.w);
  CHECK(gx <= TOL && gw <= TOL, "%s: backward on other pointers than the forward's: %.3g %.3g",
        name, gx, gw);

  /* an inference plan runs forward only */
  pt_dnnl_conv *inf = pt_dnnl_conv_plan_create(p, t, false, ops, &err);
  CHECK(inf != NULL || !(ops & PT_DNNL_FORWARD), "%s: no inference plan: %s", name, err.msg);
  if (inf) {
    pt_dnnl_conv_forward(inf, y2, x, w, b);
    CHECK(memcmp(y, y2, sizeof(float) * n.y) == 0 || pt_test_max_err(y2, y, n.y) <= TOL,
          "%s: inference forward differs", name);
    memset(dx2, 0, sizeof(float) * n.x);
    pt_dnnl_conv_backward(inf, dx2, NULL, NULL, dy, x, w);
    bool zero = true;
    for (int64_t i = 0; i < n.x; i++) zero = zero && dx2[i] == 0;
    CHECK(zero, "%s: an inference plan ran backward", name);
    pt_dnnl_conv_plan_free(inf);
  }

  pt_dnnl_conv_plan_free(plan);
  float *all[] = {scratch, x,  w,  b,   dy,  y_ref, dx_ref, dw_ref, db_ref, y,  y2,
                  dx,      dw, db, dx2, dw2, db2,   bx,     bw,     bb,     x3, w3};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
  return 1;
}

/* A random Conv or ConvTranspose shape, with the output size ONNX gives it. */
static bool random_params(pt_conv_params *p, bool t) {
  memset(p, 0, sizeof *p);
  p->N = rnd(1, 2);
  int kind = rnd(0, 3); /* 0, 1: dense; 2: grouped; 3: depthwise */
  int Cg = rnd(1, 5), OCg = rnd(1, 5);
  p->G = kind < 2 ? 1 : kind == 2 ? rnd(2, 3) : rnd(2, 6);
  if (kind == 3) { /* one input channel per group */
    Cg = 1;
    OCg = rnd(1, 2);
  }
  p->C = p->G * Cg;
  p->OC = p->G * OCg;
  p->H = rnd(1, 13);
  p->W = rnd(1, 13);
  p->KH = rnd(1, 5), p->KW = rnd(1, 5);
  p->SH = rnd(1, 3), p->SW = rnd(1, 3);
  p->DH = rnd(1, 2), p->DW = rnd(1, 2);
  const int eh = (p->KH - 1) * p->DH + 1, ew = (p->KW - 1) * p->DW + 1;
  p->PT = rnd(0, eh - 1 < 2 ? eh - 1 : 2), p->PB = rnd(0, eh - 1 < 2 ? eh - 1 : 2);
  p->PL = rnd(0, ew - 1 < 2 ? ew - 1 : 2), p->PR = rnd(0, ew - 1 < 2 ? ew - 1 : 2);
  p->has_bias = rnd(0, 1);
  if (t) {
    const int oph = rnd(0, p->SH - 1), opw = rnd(0, p->SW - 1); /* output_padding */
    p->OH = (p->H - 1) * p->SH + oph + eh - p->PT - p->PB;
    p->OW = (p->W - 1) * p->SW + opw + ew - p->PL - p->PR;
  } else {
    p->OH = (p->H + p->PT + p->PB - eh) / p->SH + 1;
    p->OW = (p->W + p->PL + p->PR - ew) / p->SW + 1;
    if (p->H + p->PT + p->PB < eh || p->W + p->PL + p->PR < ew) return false;
  }
  return p->OH >= 1 && p->OW >= 1;
}

static pt_conv_params layer(int N, int C, int H, int OC, int K, int S, int G, bool t) {
  pt_conv_params p = {.N = N,
                      .C = C,
                      .H = H,
                      .W = H,
                      .OC = OC,
                      .KH = K,
                      .KW = K,
                      .SH = S,
                      .SW = S,
                      .DH = 1,
                      .DW = 1,
                      .G = G,
                      .has_bias = true};
  int pad = t ? (K - S) / 2 : K / 2;
  p.PT = p.PL = p.PB = p.PR = pad;
  if (t) {
    p.OH = p.OW = (H - 1) * S + K - 2 * pad;
  } else {
    p.OH = p.OW = (H + 2 * pad - K) / S + 1;
  }
  return p;
}

static void test_shapes(void) {
  /* the layers of the benchmarks (smaller images where the test would get slow) */
  const struct {
    pt_conv_params p;
    bool t;
  } fixed[] = {
      {layer(1, 16, 32, 16, 3, 1, 1, false), false}, {layer(2, 32, 24, 32, 3, 1, 1, false), false},
      {layer(1, 32, 20, 32, 5, 1, 1, false), false}, {layer(1, 3, 32, 32, 5, 1, 1, false), false},
      {layer(1, 32, 32, 10, 1, 1, 1, false), false}, {layer(1, 32, 32, 32, 3, 1, 32, false), false},
      {layer(2, 32, 16, 16, 4, 2, 1, true), true},   {layer(1, 16, 16, 3, 4, 2, 1, true), true},
      {layer(1, 3, 33, 16, 3, 2, 1, false), false},  {layer(1, 8, 16, 8, 3, 2, 8, true), true},
  };
  for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
    check_shape(&fixed[i].p, fixed[i].t, PT_DNNL_ALL, true);
    /* the computations split between oneDNN and conv.c in every way */
    for (unsigned ops = 1; ops < PT_DNNL_ALL; ops++)
      check_shape(&fixed[i].p, fixed[i].t, ops, false);
  }

  int made[2] = {0, 0}, tried[2] = {0, 0};
  for (int t = 0; t <= 1; t++) {
    for (int i = 0; i < 80; i++) {
      pt_conv_params p;
      while (!random_params(&p, t)) {
      }
      tried[t]++;
      made[t] += check_shape(&p, t, PT_DNNL_ALL, false);
    }
  }
  printf("random shapes: %d/%d Conv and %d/%d ConvTranspose ran on oneDNN\n", made[0], tried[0],
         made[1], tried[1]);
}

/* Winograd: the rule picks it for stride-1 layers of 16 input channels and more on images of
 * 32x32 and more, 3x3 ones with 32 output channels and more or with channels in multiples of 16,
 * 5x5 ones with 16 and more, and not elsewhere; such plans run cpu/wino.c (a 3x3 forward on
 * F(4x4, 3x3) where its channels are multiples of 16), pass every check above, and agree with
 * direct plans. */
static void test_winograd(void) {
  const struct {
    pt_conv_params p;
    bool suits;
  } rule[] = {
      {layer(1, 32, 64, 32, 3, 1, 1, false), true},  {layer(1, 64, 32, 32, 3, 1, 1, false), true},
      {layer(1, 16, 32, 16, 3, 1, 1, false), true},  {layer(1, 32, 16, 32, 3, 1, 1, false), false},
      {layer(1, 32, 64, 32, 5, 1, 1, false), true},  {layer(1, 32, 64, 32, 3, 2, 1, false), false},
      {layer(1, 3, 64, 32, 5, 1, 1, false), false},  {layer(1, 32, 16, 32, 5, 1, 1, false), false},
      {layer(1, 32, 64, 32, 3, 1, 2, false), false}, {layer(1, 3, 64, 32, 3, 1, 1, false), false},
      {layer(1, 16, 32, 32, 3, 1, 1, false), true},  {layer(1, 16, 32, 24, 3, 1, 1, false), false},
      {layer(1, 24, 32, 16, 3, 1, 1, false), false},
  };
  for (size_t i = 0; i < sizeof rule / sizeof rule[0]; i++) {
    char d[160];
    describe(d, sizeof d, &rule[i].p, false);
    unsigned ops = pt_dnnl_conv_preferred(&rule[i].p, false);
    CHECK(!!(ops & PT_DNNL_WINOGRAD) == rule[i].suits, "%s: Winograd %s by the rule", d,
          rule[i].suits ? "not picked" : "picked");
  }
  pt_conv_params shapes[] = {layer(1, 32, 32, 32, 3, 1, 1, false),
                             layer(2, 48, 36, 32, 3, 1, 1, false),
                             layer(1, 16, 32, 16, 3, 1, 1, false)};
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
    const pt_conv_params *p = &shapes[i];
    char d[160];
    describe(d, sizeof d, p, false);
    check_shape(p, false, PT_DNNL_ALL | PT_DNNL_WINOGRAD, true);
    pt_error err;
    pt_dnnl_conv *w =
        pt_dnnl_conv_plan_create(p, false, true, PT_DNNL_ALL | PT_DNNL_WINOGRAD, &err);
    pt_dnnl_conv *dir = pt_dnnl_conv_plan_create(p, false, true, PT_DNNL_ALL, &err);
    CHECK(w && dir, "%s: plans: %s", d, err.msg);
    if (!w || !dir) return;
    /* the forward on F(4x4, 3x3) */
    CHECK(strstr(pt_dnnl_conv_impl(w), "wino:F(4x4,3x3)") && pt_dnnl_conv_ops(w) == PT_DNNL_ALL,
          "%s: the plan runs cpu/wino.c, not %s", d, pt_dnnl_conv_impl(w));
    CHECK(!strstr(pt_dnnl_conv_impl(dir), "wino"), "%s: a plan without the flag runs direct (%s)",
          d, pt_dnnl_conv_impl(dir));
    const sizes n = sizes_of(p, false);
    float *x = random_f(n.x), *wt = random_f(n.w), *b = random_f(n.b), *dy = random_f(n.y);
    float *y1 = alloc_f(n.y), *y2 = alloc_f(n.y), *dx1 = alloc_f(n.x), *dx2 = alloc_f(n.x);
    float *dw1 = alloc_f(n.w), *dw2 = alloc_f(n.w), *db1 = alloc_f(n.b), *db2 = alloc_f(n.b);
    pt_dnnl_conv_forward(w, y1, x, wt, b);
    pt_dnnl_conv_backward(w, dx1, dw1, db1, dy, x, wt);
    pt_dnnl_conv_forward(dir, y2, x, wt, b);
    pt_dnnl_conv_backward(dir, dx2, dw2, db2, dy, x, wt);
    double ey = pt_test_max_err(y1, y2, n.y), ex = pt_test_max_err(dx1, dx2, n.x),
           ew = pt_test_max_err(dw1, dw2, n.w);
    CHECK(ey < 1e-5 && ex < 1e-5 && ew < 1e-5 && pt_test_max_err(db1, db2, n.b) < 1e-5,
          "%s: Winograd within 1e-5 of direct: forward %.2g, din %.2g, dw %.2g", d, ey, ex, ew);
    /* the gradients on F(2x2, 3x3) with 32 output channels; with 16, on the same direct kernels
     * as the direct plan's, so bit-identical to them */
    const bool same =
        memcmp(dx1, dx2, sizeof(float) * n.x) == 0 && memcmp(dw1, dw2, sizeof(float) * n.w) == 0;
    CHECK(same == (p->OC < 32), "%s: gradients %s the direct plan's", d,
          p->OC < 32 ? "not bit-identical to" : "bit-identical to");
    float *all[] = {x, wt, b, dy, y1, y2, dx1, dx2, dw1, dw2, db1, db2};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++) free(all[k]);
    pt_dnnl_conv_plan_free(w);
    pt_dnnl_conv_plan_free(dir);
  }

  /* random 3x3 and 5x5 stride-1 layers on cpu/wino.c: any channel counts in (output channels 16
   * or 32), odd sizes down to 1x1, pads 0 to r - 1 on each side, batch 1 or 2; every subset of
   * computations (the others on conv.c), each checked in full against conv.c */
  for (int i = 0; i < 40; i++) {
    const int K = i % 2 ? 3 : 5;
    pt_conv_params q = layer(rnd(1, 2), rnd(1, 40), rnd(1, 20), 16 * rnd(1, 2), K, 1, 1, false);
    q.W = rnd(1, 20);
    q.PT = rnd(0, K - 1), q.PB = rnd(0, K - 1), q.PL = rnd(0, K - 1), q.PR = rnd(0, K - 1);
    q.has_bias = rnd(0, 1);
    q.OH = q.H + q.PT + q.PB - K + 1, q.OW = q.W + q.PL + q.PR - K + 1;
    if (q.OH < 1 || q.OW < 1) {
      i--;
      continue;
    }
    for (unsigned ops = 1; ops <= PT_DNNL_ALL; ops++)
      check_shape(&q, false, ops | PT_DNNL_WINOGRAD, false);
  }

  pt_error err;
  /* the executor's plan for a 5x5 layer of 24 input channels: forward and weights' gradient on
   * cpu/wino.c, the input gradient (24 is no multiple of 16) on conv.c, oneDNN none */
  pt_conv_params p24 = layer(1, 24, 32, 32, 5, 1, 1, false);
  const unsigned ops24 = pt_dnnl_conv_preferred(&p24, false);
  CHECK(ops24 == (PT_DNNL_FORWARD | PT_DNNL_BACKWARD_WEIGHTS | PT_DNNL_WINOGRAD),
        "5x5 24->32: the rule picks forward and weights on Winograd (%u)", ops24);
  check_shape(&p24, false, ops24 | PT_DNNL_JIT_ONLY, true);

  /* a 5x5 layer with pads of 5, whose input gradient cpu/wino.c does not take and oneDNN has no
   * JIT kernel for: cpu/wino.c keeps the forward and the weights' gradient, conv.c the input
   * gradient */
  {
    pt_conv_params q = layer(1, 16, 20, 16, 5, 1, 1, false);
    q.PT = q.PL = q.PB = q.PR = 5;
    q.OH = q.OW = 20 + 10 - 4;
    pt_dnnl_conv *w = pt_dnnl_conv_plan_create(
        &q, false, true, PT_DNNL_ALL | PT_DNNL_WINOGRAD | PT_DNNL_JIT_ONLY, &err);
    CHECK(w && strstr(pt_dnnl_conv_impl(w), "wino:F(2x2,5x5)") &&
              pt_dnnl_conv_ops(w) == (PT_DNNL_FORWARD | PT_DNNL_BACKWARD_WEIGHTS),
          "5x5 pads 5: plan %s, ops %u", w ? pt_dnnl_conv_impl(w) : err.msg,
          w ? pt_dnnl_conv_ops(w) : 0);
    if (w) {
      const sizes n = sizes_of(&q, false);
      float *scratch = alloc_f(pt_conv2d_scratch(&q));
      float *x = random_f(n.x), *wt = random_f(n.w), *b = random_f(n.b), *dy = random_f(n.y);
      float *y = alloc_f(n.y), *dx = alloc_f(n.x), *dw = alloc_f(n.w), *db = alloc_f(n.b);
      float *y_ref = alloc_f(n.y), *dx_ref = alloc_f(n.x), *dw_ref = alloc_f(n.w),
            *db_ref = alloc_f(n.b);
      ref_forward(y_ref, x, wt, b, &q, false, scratch);
      ref_backward(dx_ref, dw_ref, db_ref, dy, x, wt, &q, false, scratch);
      pt_dnnl_conv_forward(w, y, x, wt, b);
      pt_dnnl_conv_backward(w, dx, dw, db, dy, x, wt);
      double ey = pt_test_max_err(y, y_ref, n.y), ex = pt_test_max_err(dx, dx_ref, n.x),
             ew = pt_test_max_err(dw, dw_ref, n.w), eb = pt_test_max_err(db, db_ref, n.b);
      CHECK(ey < 1e-5 && ex < 1e-5 && ew < 3e-5 && eb < 1e-5,
            "5x5 pads 5 against conv.c: forward %.2g, din %.2g, dw %.2g, db %.2g", ey, ex, ew, eb);
      float *all[] = {scratch, x, wt, b, dy, y, dx, dw, db, y_ref, dx_ref, dw_ref, db_ref};
      for (size_t k = 0; k < sizeof all / sizeof all[0]; k++) free(all[k]);
    }
    pt_dnnl_conv_plan_free(w);
  }
  /* a plan whose forward is not among its computations is named "gemm" */
  {
    pt_conv_params q = layer(1, 16, 32, 16, 5, 1, 1, false);
    pt_dnnl_conv *w = pt_dnnl_conv_plan_create(&q, false, true,
                                               PT_DNNL_BACKWARD_WEIGHTS | PT_DNNL_WINOGRAD, &err);
    CHECK(w && strcmp(pt_dnnl_conv_impl(w), "gemm") == 0, "5x5, weights only: named %s",
          w ? pt_dnnl_conv_impl(w) : err.msg);
    pt_dnnl_conv_plan_free(w);
  }

  /* 5x5 (which oneDNN has no Winograd for): plans run cpu/wino.c, training ones all three
   * computations (checked against conv.c above and against a direct plan here), and with 3 input
   * channels all but the input gradient, which stays on oneDNN */
  pt_conv_params p5 = layer(1, 32, 40, 32, 5, 1, 1, false);
  check_shape(&p5, false, PT_DNNL_ALL | PT_DNNL_WINOGRAD, true);
  pt_conv_params p5_rgb = layer(1, 3, 40, 32, 5, 1, 1, false);
  check_shape(&p5_rgb, false, PT_DNNL_ALL | PT_DNNL_WINOGRAD, true);
  {
    pt_dnnl_conv *w =
        pt_dnnl_conv_plan_create(&p5, false, true, PT_DNNL_ALL | PT_DNNL_WINOGRAD, &err);
    pt_dnnl_conv *dir = pt_dnnl_conv_plan_create(&p5, false, true, PT_DNNL_ALL, &err);
    CHECK(w && dir && strstr(pt_dnnl_conv_impl(w), "wino:F(2x2,5x5)"), "5x5 training plan: %s",
          w ? pt_dnnl_conv_impl(w) : err.msg);
    if (w && dir) {
      const sizes n = sizes_of(&p5, false);
      float *x = random_f(n.x), *wt = random_f(n.w), *b = random_f(n.b), *dy = random_f(n.y);
      float *y1 = alloc_f(n.y), *y2 = alloc_f(n.y), *dx1 = alloc_f(n.x), *dx2 = alloc_f(n.x);
      float *dw1 = alloc_f(n.w), *dw2 = alloc_f(n.w), *db1 = alloc_f(n.b), *db2 = alloc_f(n.b);
      /* two steps with the weights changed in place between them, as an optimizer does: the
       * second must use the new ones */
      for (int step = 0; step < 2; step++) {
        memset(dx1, 0, sizeof(float) * n.x), memset(dx2, 0, sizeof(float) * n.x);
        memset(dw1, 0, sizeof(float) * n.w), memset(dw2, 0, sizeof(float) * n.w);
        memset(db1, 0, sizeof(float) * n.b), memset(db2, 0, sizeof(float) * n.b);
        pt_dnnl_conv_forward(w, y1, x, wt, b);
        pt_dnnl_conv_backward(w, dx1, dw1, db1, dy, x, wt);
        pt_dnnl_conv_forward(dir, y2, x, wt, b);
        pt_dnnl_conv_backward(dir, dx2, dw2, db2, dy, x, wt);
        double ey = pt_test_max_err(y1, y2, n.y), ex = pt_test_max_err(dx1, dx2, n.x),
               ew = pt_test_max_err(dw1, dw2, n.w), eb = pt_test_max_err(db1, db2, n.b);
        CHECK(ey < 1e-5 && ex < 1e-5 && ew < 3e-5 && eb < 1e-5,
              "5x5 training, step %d: Winograd against direct: forward %.2g, din %.2g, dw %.2g, "
              "db %.2g",
              step, ey, ex, ew, eb);
        for (int64_t i = 0; i < n.w; i++) wt[i] = 0.5f - wt[i];
      }
      float *all[] = {x, wt, b, dy, y1, y2, dx1, dx2, dw1, dw2, db1, db2};
      for (size_t k = 0; k < sizeof all / sizeof all[0]; k++) free(all[k]);
    }
    pt_dnnl_conv_plan_free(w);
    pt_dnnl_conv_plan_free(dir);
  }
  pt_dnnl_conv *inf = pt_dnnl_conv_plan_create(&p5, false, false,
                                               PT_DNNL_ALL | PT_DNNL_WINOGRAD | PT_DNNL_RELU, &err);
  pt_dnnl_conv *ref = pt_dnnl_conv_plan_create(&p5, false, false, PT_DNNL_ALL | PT_DNNL_RELU, &err);
  CHECK(inf && ref && strstr(pt_dnnl_conv_impl(inf), "wino:F(2x2,5x5)") &&
            !strstr(pt_dnnl_conv_impl(ref), "wino"),
        "5x5 inference plans: %s with the flag, %s without", inf ? pt_dnnl_conv_impl(inf) : "none",
        ref ? pt_dnnl_conv_impl(ref) : "none");
  if (inf && ref) {
    const sizes n = sizes_of(&p5, false);
    float *x = random_f(n.x), *wt = random_f(n.w), *b = random_f(n.b);
    float *y1 = alloc_f(n.y), *y2 = alloc_f(n.y);
    pt_dnnl_conv_forward(inf, y1, x, wt, b);
    pt_dnnl_conv_forward(ref, y2, x, wt, b);
    double e = pt_test_max_err(y1, y2, n.y);
    bool relu = true;
    for (int64_t i = 0; i < n.y; i++) relu = relu && y1[i] >= 0;
    CHECK(e < 1e-5 && relu, "5x5 inference with ReLU: Winograd within %.2g of direct", e);
    /* weights changed in place, then told: the new weights count */
    for (int64_t i = 0; i < n.w; i++) wt[i] *= -1.0f;
    pt_dnnl_conv_weights_changed(inf);
    pt_dnnl_conv_weights_changed(ref);
    pt_dnnl_conv_forward(inf, y1, x, wt, b);
    pt_dnnl_conv_forward(ref, y2, x, wt, b);
    CHECK(pt_test_max_err(y1, y2, n.y) < 1e-5, "5x5 inference after new weights: %.2g",
          pt_test_max_err(y1, y2, n.y));
    free(x);
    free(wt);
    free(b);
    free(y1);
    free(y2);
  }
  pt_dnnl_conv_plan_free(inf);
  pt_dnnl_conv_plan_free(ref);
}

/* ---- two plans of one shape on two threads at once ---- */

/* oneDNN's primitive cache hands both plans the same primitive objects; each plan's own
 * scratchpad and buffers must keep them apart. */
typedef struct worker {
  pt_dnnl_conv *plan;
  const pt_conv_params *p;
  float *x, *w, *b, *dy, *y, *dx, *dw, *db;
  int rounds;
  bool same; /* every round gave the bits of the first */
} worker;

static void run_worker_round(worker *k, float *y, float *dx, float *dw, float *db, int64_t nx,
                             int64_t nw) {
  pt_dnnl_conv_forward(k->plan, y, k->x, k->w, k->b);
  memset(dx, 0, sizeof(float) * nx);
  memset(dw, 0, sizeof(float) * nw);
  memset(db, 0, sizeof(float) * k->p->OC);
  pt_dnnl_conv_backward(k->plan, dx, dw, db, k->dy, k->x, k->w);
}

static void *worker_main(void *arg) {
  worker *k = arg;
  const sizes n = sizes_of(k->p, false);
  float *y = alloc_f(n.y), *dx = alloc_f(n.x), *dw = alloc_f(n.w), *db = alloc_f(n.b);
  k->same = true;
  for (int r = 0; r < k->rounds; r++) {
    run_worker_round(k, y, dx, dw, db, n.x, n.w);
    k->same = k->same && memcmp(y, k->y, sizeof(float) * n.y) == 0 &&
              memcmp(dx, k->dx, sizeof(float) * n.x) == 0 &&
              memcmp(dw, k->dw, sizeof(float) * n.w) == 0 &&
              memcmp(db, k->db, sizeof(float) * n.b) == 0;
  }
  free(y), free(dx), free(dw), free(db);
  return NULL;
}

static void test_concurrent(void) {
  pt_conv_params p = layer(1, 32, 32, 32, 3, 1, 1, false);
  const sizes n = sizes_of(&p, false);
  worker k[2];
  pt_error err;
  for (int i = 0; i < 2; i++) {
    k[i] = (worker){.p = &p, .rounds = 50};
    k[i].plan = pt_dnnl_conv_plan_create(&p, false, true, PT_DNNL_ALL, &err);
    CHECK(k[i].plan != NULL, "concurrent: no plan: %s", err.msg);
    if (!k[i].plan) return;
    k[i].x = random_f(n.x), k[i].w = random_f(n.w), k[i].b = random_f(n.b);
    k[i].dy = random_f(n.y);
    k[i].y = alloc_f(n.y), k[i].dx = alloc_f(n.x), k[i].dw = alloc_f(n.w), k[i].db = alloc_f(n.b);
    run_worker_round(&k[i], k[i].y, k[i].dx, k[i].dw, k[i].db, n.x, n.w); /* alone: the reference */
  }
  pthread_t th[2];
  for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, worker_main, &k[i]);
  for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
  CHECK(k[0].same && k[1].same,
        "two plans of one shape on two threads: results differ from a "
        "run alone (%d %d)",
        k[0].same, k[1].same);
  printf("two plans of one shape on two threads: %s\n",
         k[0].same && k[1].same ? "bit-identical to runs alone" : "DIFFERENT");
  for (int i = 0; i < 2; i++) {
    pt_dnnl_conv_plan_free(k[i].plan);
    float *all[] = {k[i].x, k[i].w, k[i].b, k[i].dy, k[i].y, k[i].dx, k[i].dw, k[i].db};
    for (size_t j = 0; j < sizeof all / sizeof all[0]; j++) free(all[j]);
  }
}

/* ---- the executor with plans and without ---- */

static int count_plans(const pt_exec *x) {
  int n = 0;
  for (int i = 0; i < x->end - x->first; i++) n += x->plan[i] != NULL;
  return n;
}

static bool jit_here; /* oneDNN has JIT kernels on this machine */

/* The built-in models' convolutions are small enough that the rule leaves them to cpu/direct.c
 * (forward and gradients): their only plans are the first layers', whose forward runs on
 * cpu/direct.c with the ReLU folded in, and no oneDNN kernel runs. */
static void test_exec(const char *spec, bool train) {
  pt_model *m[2] = {NULL, NULL};
  pt_error err;
  for (int k = 0; k < 2; k++)
    if (pt_model_load(spec, &m[k], &err) != PT_OK) {
      CHECK(0, "%s: %s", spec, err.msg);
      pt_model_free(m[0]);
      return;
    }
  pt_exec x[2];
  /* x[0] without oneDNN, x[1] with */
  setenv("PARTIME_DNNL", "0", 1);
  pt_status s0 = pt_exec_init(&x[0], m[0], 0, m[0]->n_nodes, train, false, &err);
  unsetenv("PARTIME_DNNL");
  pt_status s1 = pt_exec_init(&x[1], m[1], 0, m[1]->n_nodes, train, false, &err);
  CHECK(s0 == PT_OK && s1 == PT_OK, "%s: exec init", spec);
  if (s0 != PT_OK || s1 != PT_OK) return;
  /* the executor follows the static rule: a plan for each convolution with a computation (of
   * those it runs) that the rule gives to oneDNN, where this machine has oneDNN JIT kernels */
  int n_conv = 0, expected = 0, direct = 0;
  for (int i = 0; i < m[0]->n_nodes; i++) {
    const pt_node *n = &m[0]->nodes[i];
    const bool t = n->op == PT_OP_CONV_TRANSPOSE;
    if (n->op != PT_OP_CONV && !t) continue;
    n_conv++;
    unsigned ops = pt_dnnl_conv_preferred(&n->p.conv, t) & (train ? PT_DNNL_ALL : PT_DNNL_FORWARD);
    pt_dnnl_conv *plan =
        ops ? pt_dnnl_conv_plan_create(&n->p.conv, t, train, ops | PT_DNNL_JIT_ONLY, &err) : NULL;
    expected += plan != NULL;
    direct += plan && strcmp(pt_dnnl_conv_impl(plan), "direct") == 0;
    pt_dnnl_conv_plan_free(plan);
  }
  const int p0 = count_plans(&x[0]), p1 = count_plans(&x[1]);
  printf("%s%s: %d convolutions, %d on oneDNN (none with PARTIME_DNNL=0: %d)\n", spec,
         train ? " training" : "", n_conv, p1, p0);
  CHECK(p0 == 0, "%s: PARTIME_DNNL=0 still made %d plans", spec, p0);
  CHECK(p1 == expected, "%s: %d convolutions on oneDNN, the rule gives %d", spec, p1, expected);
  CHECK(expected == direct, "%s: %d of %d plans run oneDNN's kernels, none expected", spec,
        expected - direct, expected);
  CHECK(expected > 0 || !jit_here, "%s: no plan for the first layer", spec);

  const int in = m[0]->input, out = m[0]->output;
  const int64_t nin = m[0]->vals[in].numel, nout = m[0]->vals[out].numel;
  float *xin = random_f(nin), *gout = random_f(nout);
  for (int step = 0; step < 2; step++) { /* twice: the second tick runs on the same plans */
    for (int k = 0; k < 2; k++) {
      pt_exec_bind(&x[k], in, xin);
      pt_exec_forward(&x[k]);
      if (!train) continue;
      pt_exec_zero_grad(&x[k]);
      memcpy(pt_exec_grad(&x[k], out), gout, sizeof(float) * nout);
      pt_exec_backward(&x[k]);
    }
    double e = pt_test_max_err(pt_exec_act(&x[1], out), pt_exec_act(&x[0], out), nout);
    CHECK(e <= TOL, "%s: output with oneDNN differs by %.3g", spec, e);
    double worst = 0;
    for (int i = 0; i < x[0].n_params; i++) {
      int v = x[0].params[i];
      worst = fmax(worst, pt_test_max_err(pt_exec_grad(&x[1], v), pt_exec_grad(&x[0], v),
                                          m[0]->vals[v].numel));
    }
    CHECK(worst <= TOL, "%s: parameter gradients with oneDNN differ by %.3g", spec, worst);
    if (step == 0)
      printf("%s%s: output error %.2e, worst parameter gradient error %.2e\n", spec,
             train ? " training" : "", e, worst);
    for (int64_t i = 0; i < nin; i++) xin[i] = pt_test_uniform(&seed, -1.0f, 1.0f);
  }
  free(xin);
  free(gout);
  for (int k = 0; k < 2; k++) {
    pt_exec_free(&x[k]);
    pt_model_free(m[k]);
  }
}

int main(void) {
  if (!pt_dnnl_available()) {
    printf("built without oneDNN: skipped\n");
    return 77;
  }
  pt_blas_init();
  test_shapes();
  test_winograd();
  test_concurrent();
  pt_conv_params p = layer(1, 16, 16, 16, 3, 1, 1, false);
  pt_error err;
  pt_dnnl_conv *plan =
      pt_dnnl_conv_plan_create(&p, false, true, PT_DNNL_ALL | PT_DNNL_JIT_ONLY, &err);
  jit_here = plan != NULL;
  pt_dnnl_conv_plan_free(plan);
  if (!jit_here) printf("oneDNN has no JIT kernels on this machine: %s\n", err.msg);
  for (int train = 0; train <= 1; train++) {
    test_exec("builtin:classifier", train);
    test_exec("builtin:autoencoder", train);
  }
  PT_TEST_END();
}
