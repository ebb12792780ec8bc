/* Forward and backward of the elementwise, normalisation and shape layer families.
 *
 * Every forward is compared with a direct reference written here (indices computed from the
 * operands' own shapes, arithmetic in double), and every backward with central finite differences
 * through gradcheck.h. Each case also checks the accumulate rule: a backward into a gradient buffer
 * that already holds values must add to them. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cpu/ops.h"
#include "gradcheck.h"

static unsigned long long seed = 0x1234567887654321ULL;

static float *falloc(int64_t n) {
  return calloc((size_t)(n > 0 ? n : 1), sizeof(float));
}

static int rand_int(int lo, int hi) { /* in [lo, hi] */
  return lo + (int)(pt_test_rand_u64(&seed) % (unsigned long long)(hi - lo + 1));
}

/* Values in +-[lo, hi]: away from zero, for kinks (Relu) and divisors. */
static void fill_away(float *x, int64_t n, float lo, float hi) {
  for (int64_t i = 0; i < n; i++) {
    float v = pt_test_uniform(&seed, lo, hi);
    x[i] = (pt_test_rand_u64(&seed) >> 63) ? -v : v;
  }
}

static double max_abs_diff(const float *a, const double *b, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]) / (1.0 + fabs(b[i])));
  return m;
}

/* The accumulate rule: backward into buffers holding 0.25 must give 0.25 + the gradient. */
static void check_accumulates(gc_case *c) {
  float *r = falloc(c->out_n);
  gc_fill(r, c->out_n, &seed, -1.0f, 1.0f);
  float *g0[GC_MAX_IN] = {0}, *g1[GC_MAX_IN] = {0};
  for (int k = 0; k < c->n_in; k++) {
    if (!c->want[k]) continue;
    g0[k] = falloc(c->in_n[k]);
    g1[k] = falloc(c->in_n[k]);
    for (int64_t i = 0; i < c->in_n[k]; i++) g1[k][i] = 0.25f;
  }
  c->forward(c);
  c->backward(c, r, g0);
  c->backward(c, r, g1);
  for (int k = 0; k < c->n_in; k++) {
    if (!c->want[k]) continue;
    double worst = 0;
    for (int64_t i = 0; i < c->in_n[k]; i++)
      worst = fmax(worst, fabs((double)g1[k][i] - (g0[k][i] + 0.25)) / (1.0 + fabs(g0[k][i])));
    CHECK(worst < 1e-5, "%s input %d: backward does not accumulate (error %g)", c->name, k, worst);
    free(g0[k]);
    free(g1[k]);
  }
  free(r);
}

static void run_case(gc_case *c) {
  gc_run(c);
  check_accumulates(c);
}

/* ---- binary ---- */

typedef struct bin_case {
  pt_binary_params p;
  int ndim;
  int64_t sha[PT_MAX_DIMS], shb[PT_MAX_DIMS]; /* operand shapes, right-aligned to ndim */
} bin_case;

static const char *bin_names[] = {"add", "sub", "mul", "div"};

/* Builds the parameters the way the graph resolver does: numpy broadcasting, right-aligned. */
static void bin_setup(bin_case *bc, pt_binary_kind kind, int na, const int64_t *sa, int nb,
                      const int64_t *sb) {
  memset(bc, 0, sizeof *bc);
  int nd = na > nb ? na : nb;
  bc->ndim = nd;
  for (int d = 0; d < nd; d++) {
    int da = d - (nd - na), db = d - (nd - nb);
    bc->sha[d] = da >= 0 ? sa[da] : 1;
    bc->shb[d] = db >= 0 ? sb[db] : 1;
  }
  bc->p.kind = kind;
  bc->p.ndim = nd;
  bc->p.n = 1;
  for (int d = 0; d < nd; d++) {
    bc->p.shape[d] = bc->sha[d] > bc->shb[d] ? bc->sha[d] : bc->shb[d];
    bc->p.n *= bc->p.shape[d];
  }
  int64_t ka = 1, kb = 1;
  for (int d = nd - 1; d >= 0; d--) {
    bc->p.sa[d] = bc->sha[d] == 1 ? 0 : ka;
    bc->p.sb[d] = bc->shb[d] == 1 ? 0 : kb;
    ka *= bc->sha[d];
    kb *= bc->shb[d];
  }
}

static int64_t shape_numel(const int64_t *s, int nd) {
  int64_t n = 1;
  for (int d = 0; d < nd; d++) n *= s[d];
  return n;
}

/* Index of output element i in an operand of shape s (right-aligned to the output). */
static int64_t bin_ref_index(const bin_case *bc, const int64_t *s, int64_t i) {
  int64_t idx = 0, mul = 1;
  for (int d = bc->ndim - 1; d >= 0; d--) {
    int64_t o = i % bc->p.shape[d];
    i /= bc->p.shape[d];
    if (s[d] != 1) idx += o * mul;
    mul *= s[d];
  }
  return idx;
}

static void bin_fwd(gc_case *c) {
  bin_case *bc = c->p;
  pt_binary_forward(c->out, c->in[0], c->in[1], &bc->p);
}
static void bin_bwd(gc_case *c, const float *dout, float **din) {
  bin_case *bc = c->p;
  pt_binary_backward(din[0], din[1], dout, c->in[0], c->in[1], &bc->p);
}

static void shape_str(char *buf, size_t n, const int64_t *s, int nd) {
  size_t k = 0;
  buf[0] = 0;
  for (int d = 0; d < nd && k < n; d++)
    k += (size_t)snprintf(buf + k, n - k, "%s%lld", d ? "x" : "", (long long)s[d]);
}

static void test_binary(pt_binary_kind kind, int na, const int64_t *sa, int nb, const int64_t *sb,
                        int want_a, int want_b) {
  bin_case bc;
  bin_setup(&bc, kind, na, sa, nb, sb);
  int64_t n_a = shape_numel(sa, na), n_b = shape_numel(sb, nb);
  gc_case c = {0};
  char s1[64], s2[64];
  shape_str(s1, sizeof s1, sa, na);
  shape_str(s2, sizeof s2, sb, nb);
  snprintf(c.name, sizeof c.name, "binary %s (%s) (%s) want %d%d", bin_names[kind], s1, s2, want_a,
           want_b);
  c.n_in = 2;
  c.in[0] = falloc(n_a);
  c.in[1] = falloc(n_b);
  c.in_n[0] = n_a;
  c.in_n[1] = n_b;
  c.want[0] = want_a;
  c.want[1] = want_b;
  c.out = falloc(bc.p.n);
  c.out_n = bc.p.n;
  c.forward = bin_fwd;
  c.backward = bin_bwd;
  c.p = &bc;
  gc_fill(c.in[0], n_a, &seed, -1.5f, 1.5f);
  if (kind == PT_BIN_DIV)
    fill_away(c.in[1], n_b, 0.5f, 1.5f);
  else
    gc_fill(c.in[1], n_b, &seed, -1.5f, 1.5f);

  /* forward: exactly the float operation, element by element */
  bin_fwd(&c);
  int64_t bad = 0;
  for (int64_t i = 0; i < bc.p.n; i++) {
    float a = c.in[0][bin_ref_index(&bc, bc.sha, i)];
    float b = c.in[1][bin_ref_index(&bc, bc.shb, i)];
    float e = kind == PT_BIN_ADD   ? a + b
              : kind == PT_BIN_SUB ? a - b
              : kind == PT_BIN_MUL ? a * b
                                   : a / b;
    if (c.out[i] != e) bad++;
  }
  CHECK(bad == 0, "%s: %lld wrong forward elements", c.name, (long long)bad);
  run_case(&c);
  free(c.in[0]);
  free(c.in[1]);
  free(c.out);
}

/* Random broadcast pairs: each operand dim is either the output's or 1, ranks may differ. */
static void test_binary_random(int count) {
  for (int t = 0; t < count; t++) {
    int nd = rand_int(1, 4);
    int64_t sa[4], sb[4];
    int nb = rand_int(1, nd);
    for (int d = 0; d < nd; d++) {
      int64_t full = rand_int(1, 5);
      int r = rand_int(0, 2);
      sa[d] = r == 1 ? 1 : full;
      int db = d - (nd - nb);
      if (db >= 0) sb[db] = r == 2 ? 1 : full;
    }
    test_binary((pt_binary_kind)(t % 4), nd, sa, nb, sb, 1, 1);
  }
}

/* x * x with both gradients in one buffer: 2x. */
static void test_binary_aliased(void) {
  pt_binary_params p = {0};
  p.kind = PT_BIN_MUL;
  p.ndim = 1;
  p.shape[0] = 9;
  p.sa[0] = p.sb[0] = 1;
  p.n = 9;
  float x[9], dy[9], dx[9] = {0};
  gc_fill(x, 9, &seed, -2.0f, 2.0f);
  gc_fill(dy, 9, &seed, -1.0f, 1.0f);
  pt_binary_backward(dx, dx, dy, x, x, &p);
  double worst = 0;
  for (int i = 0; i < 9; i++) worst = fmax(worst, fabs(dx[i] - 2.0 * x[i] * dy[i]));
  CHECK(worst < 1e-6, "binary mul x*x aliased gradient error %g", worst);
}

static void test_binaries(void) {
  for (int k = 0; k < 4; k++) {
    pt_binary_kind kind = (pt_binary_kind)k;
    const int64_t eq[] = {2, 3, 5, 7}, sc[] = {1}, pc[] = {1, 3, 1, 1}, full[] = {2, 3, 4, 5};
    const int64_t ga[] = {2, 1, 3}, gb[] = {1, 4, 1}, row[] = {5}, mat[] = {3, 5};
    const int64_t c11[] = {1, 3, 1, 1}, n1[] = {2, 3, 1, 1};
    test_binary(kind, 4, eq, 4, eq, 1, 1);   /* equal shapes */
    test_binary(kind, 4, full, 1, sc, 1, 1); /* scalar b */
    test_binary(kind, 1, sc, 4, full, 1, 1); /* scalar a */
    test_binary(kind, 4, full, 4, pc, 1, 1); /* per-channel b */
    test_binary(kind, 4, pc, 4, full, 1, 1); /* per-channel a */
    test_binary(kind, 3, ga, 3, gb, 1, 1);   /* both broadcast */
    test_binary(kind, 2, mat, 1, row, 1, 1); /* lower rank b */
    test_binary(kind, 4, n1, 4, c11, 1, 1);  /* trailing dims of size 1 */
    test_binary(kind, 4, full, 4, pc, 0, 1); /* NULL da */
    test_binary(kind, 3, ga, 3, gb, 1, 0);   /* NULL db */
  }
  test_binary_random(16);
  test_binary_aliased();
}

/* ---- unary ---- */

static void un_fwd(gc_case *c) {
  pt_unary_forward(c->out, c->in[0], c->p);
}
static void un_bwd(gc_case *c, const float *dout, float **din) {
  pt_unary_backward(din[0], dout, c->in[0], c->out, c->p);
}
static void un_bwd_no_out(gc_case *c, const float *dout, float **din) {
  pt_unary_backward(din[0], dout, c->in[0], NULL, c->p);
}

static double un_ref(pt_unary_kind k, double x, double alpha) {
  switch (k) {
  case PT_UN_RELU:
    return x > 0 ? x : 0;
  case PT_UN_LEAKY_RELU:
    return x >= 0 ? x : alpha * x;
  case PT_UN_SIGMOID:
    return 1.0 / (1.0 + exp(-x));
  case PT_UN_TANH:
    return tanh(x);
  }
  return 0;
}

static void test_unary(pt_unary_kind kind, int64_t n, int use_out) {
  static const char *names[] = {"relu", "leaky_relu", "sigmoid", "tanh"};
  pt_unary_params p = {kind, 0.13f, n};
  gc_case c = {0};
  snprintf(c.name, sizeof c.name, "unary %s n=%lld%s", names[kind], (long long)n,
           use_out ? "" : " (no saved output)");
  c.n_in = 1;
  c.in[0] = falloc(n);
  c.in_n[0] = n;
  c.want[0] = 1;
  c.out = falloc(n);
  c.out_n = n;
  c.forward = un_fwd;
  c.backward = use_out ? un_bwd : un_bwd_no_out;
  c.p = &p;
  /* keep clear of the kink at 0 by more than the finite-difference step */
  fill_away(c.in[0], n, 0.1f, 3.0f);
  un_fwd(&c);
  double *ref = malloc(sizeof(double) * n);
  for (int64_t i = 0; i < n; i++) ref[i] = un_ref(kind, c.in[0][i], p.alpha);
  double e = max_abs_diff(c.out, ref, n);
  CHECK(e < 1e-6, "%s forward error %g", c.name, e);
  run_case(&c);
  free(ref);
  free(c.in[0]);
  free(c.out);
}

/* Sigmoid computes e^-|x| itself (pt_exp_neg_f, a polynomial): every float step of x from -100
 * to 100 in 2^-12 (819,201 of them) against double precision, within 3 ulp of the result where
 * it is a normal float, and within the smallest normal float below that; infinities and NaN. The
 * forward runs over all of them in one call, the vector code. */
static void test_sigmoid_sweep(void) {
  const int64_t n = 200 * 4096 + 1;
  float *x = falloc(n), *y = falloc(n);
  for (int64_t i = 0; i < n; i++) x[i] = -100.0f + (float)i / 4096.0f;
  pt_unary_params p = {PT_UN_SIGMOID, 0, n};
  pt_unary_forward(y, x, &p);
  double worst = 0, worst_x = 0;
  int bad = 0;
  for (int64_t i = 0; i < n; i++) {
    const double ref = 1.0 / (1.0 + exp(-(double)x[i]));
    /* one ulp of the result (ref in [2^(k-1), 2^k) has ulps of 2^(k-24)), and no finer than the
     * normal floats go */
    int k;
    frexp(ref, &k);
    const double ulp = fmax(ldexp(1.0, k - 24), 0x1p-126);
    const double e = fabs(y[i] - ref) / ulp;
    if (!(e <= 3.0) && bad++ < 5)
      fprintf(stderr, "  sigmoid(%.9g) = %.9g, want %.9g\n", x[i], y[i], ref);
    if (e > worst || e != e) {
      worst = e;
      worst_x = x[i];
    }
    if (!(y[i] >= 0.0f && y[i] <= 1.0f)) bad++;
  }
  printf("sigmoid sweep, %lld values: worst %.2f ulp at %g\n", (long long)n, worst, worst_x);
  CHECK(bad == 0, "sigmoid sweep: %d values off, worst %.2f ulp at %g", bad, worst, worst_x);
  float sx[5] = {INFINITY, -INFINITY, NAN, -0.0f, 0.0f}, sy[5];
  p.n = 5;
  pt_unary_forward(sy, sx, &p);
  CHECK(sy[0] == 1.0f && sy[1] == 0.0f && isnan(sy[2]) && sy[3] == 0.5f && sy[4] == 0.5f,
        "sigmoid at inf, -inf, nan, -0, 0: %g %g %g %g %g", sy[0], sy[1], sy[2], sy[3], sy[4]);
  free(x);
  free(y);
}

static void test_unaries(void) {
  for (int k = 0; k < 4; k++) {
    test_unary((pt_unary_kind)k, 37, 1);
    test_unary((pt_unary_kind)k, 1, 1);
  }
  test_unary(PT_UN_SIGMOID, 23, 0);
  test_unary(PT_UN_TANH, 23, 0);
  /* saturation: finite outputs at the extremes */
  float x[4] = {-200.0f, -90.0f, 90.0f, 200.0f}, y[4];
  pt_unary_params p = {PT_UN_SIGMOID, 0, 4};
  pt_unary_forward(y, x, &p);
  CHECK(y[0] == 0.0f && y[1] >= 0.0f && y[1] < 1e-30f && y[2] == 1.0f && y[3] == 1.0f,
        "sigmoid saturation: %g %g %g %g", y[0], y[1], y[2], y[3]);
  p.kind = PT_UN_TANH;
  pt_unary_forward(y, x, &p);
  CHECK(y[0] == -1.0f && y[3] == 1.0f, "tanh saturation: %g %g", y[0], y[3]);
  test_sigmoid_sweep();
  /* relu at exactly 0: no gradient (the subgradient PyTorch uses) */
  float z = 0.0f, dz = 0.0f, one = 1.0f;
  p.kind = PT_UN_RELU;
  p.n = 1;
  pt_unary_backward(&dz, &one, &z, &z, &p);
  CHECK(dz == 0.0f, "relu gradient at 0 is %g", dz);
}

/* ---- copy ---- */

static void copy_fwd(gc_case *c) {
  pt_copy_forward(c->out, c->in[0], c->p);
}
static void copy_bwd(gc_case *c, const float *dout, float **din) {
  pt_copy_backward(din[0], dout, c->p);
}

static void test_copy(void) {
  pt_copy_params p = {29};
  gc_case c = {0};
  snprintf(c.name, sizeof c.name, "copy n=29");
  c.n_in = 1;
  c.in[0] = falloc(29);
  c.in_n[0] = 29;
  c.want[0] = 1;
  c.out = falloc(29);
  c.out_n = 29;
  c.forward = copy_fwd;
  c.backward = copy_bwd;
  c.p = &p;
  gc_fill(c.in[0], 29, &seed, -2.0f, 2.0f);
  copy_fwd(&c);
  CHECK(memcmp(c.out, c.in[0], sizeof(float) * 29) == 0, "copy forward differs");
  run_case(&c);
  pt_copy_forward(c.in[0], c.in[0], &p); /* in place: unchanged */
  CHECK(memcmp(c.out, c.in[0], sizeof(float) * 29) == 0, "in-place copy changed the data");
  free(c.in[0]);
  free(c.out);
}

/* ---- batch norm ---- */

typedef struct bn_case {
  pt_batchnorm_params p;
  float *mean, *var;
} bn_case;

static void bn_fwd(gc_case *c) {
  bn_case *b = c->p;
  pt_batchnorm_forward(c->out, c->in[0], c->in[1], c->in[2], b->mean, b->var, &b->p);
}
static void bn_bwd(gc_case *c, const float *dout, float **din) {
  bn_case *b = c->p;
  pt_batchnorm_backward(din[0], din[1], din[2], dout, c->in[0], c->in[1], b->mean, b->var, &b->p);
}

static void test_batchnorm(int N, int C, int64_t HW, int want_x, int want_s, int want_b) {
  bn_case b = {{N, C, HW, 1e-5f}, falloc(C), falloc(C)};
  int64_t n = (int64_t)N * C * HW;
  gc_case c = {0};
  snprintf(c.name, sizeof c.name, "batchnorm N=%d C=%d HW=%lld want %d%d%d", N, C, (long long)HW,
           want_x, want_s, want_b);
  c.n_in = 3;
  c.in[0] = falloc(n);
  c.in[1] = falloc(C);
  c.in[2] = falloc(C);
  c.in_n[0] = n;
  c.in_n[1] = c.in_n[2] = C;
  c.want[0] = want_x;
  c.want[1] = want_s;
  c.want[2] = want_b;
  c.out = falloc(n);
  c.out_n = n;
  c.forward = bn_fwd;
  c.backward = bn_bwd;
  c.p = &b;
  gc_fill(c.in[0], n, &seed, -2.0f, 2.0f);
  gc_fill(c.in[1], C, &seed, 0.5f, 1.5f);
  gc_fill(c.in[2], C, &seed, -0.5f, 0.5f);
  gc_fill(b.mean, C, &seed, -0.5f, 0.5f);
  gc_fill(b.var, C, &seed, 0.3f, 2.0f);
  bn_fwd(&c);
  double *ref = malloc(sizeof(double) * n);
  for (int64_t i = 0; i < n; i++) {
    int ch = (int)((i / HW) % C);
    ref[i] = c.in[1][ch] * (c.in[0][i] - b.mean[ch]) / sqrt((double)b.var[ch] + 1e-5) + c.in[2][ch];
  }
  double e = max_abs_diff(c.out, ref, n);
  CHECK(e < 1e-5, "%s forward error %g", c.name, e);
  run_case(&c);
  free(ref);
  for (int k = 0; k < 3; k++) free(c.in[k]);
  free(c.out);
  free(b.mean);
  free(b.var);
}

/* ---- softmax ---- */

static void sm_fwd(gc_case *c) {
  pt_softmax_forward(c->out, c->in[0], c->p);
}
static void sm_bwd(gc_case *c, const float *dout, float **din) {
  pt_softmax_backward(din[0], dout, c->out, c->p);
}

static void test_softmax(int64_t outer, int64_t dim, int64_t inner, bool log_) {
  pt_softmax_params p = {outer, dim, inner, log_};
  int64_t n = outer * dim * inner;
  gc_case c = {0};
  snprintf(c.name, sizeof c.name, "%s outer=%lld dim=%lld inner=%lld",
           log_ ? "logsoftmax" : "softmax", (long long)outer, (long long)dim, (long long)inner);
  c.n_in = 1;
  c.in[0] = falloc(n);
  c.in_n[0] = n;
  c.want[0] = 1;
  c.out = falloc(n);
  c.out_n = n;
  c.forward = sm_fwd;
  c.backward = sm_bwd;
  c.p = &p;
  gc_fill(c.in[0], n, &seed, -3.0f, 3.0f);
  sm_fwd(&c);
  double *ref = malloc(sizeof(double) * n);
  for (int64_t o = 0; o < outer; o++)
    for (int64_t j = 0; j < inner; j++) {
      double s = 0;
      for (int64_t k = 0; k < dim; k++) s += exp(c.in[0][(o * dim + k) * inner + j]);
      for (int64_t k = 0; k < dim; k++) {
        int64_t i = (o * dim + k) * inner + j;
        ref[i] = log_ ? c.in[0][i] - log(s) : exp(c.in[0][i]) / s;
      }
    }
  double e = max_abs_diff(c.out, ref, n);
  CHECK(e < 1e-5, "%s forward error %g", c.name, e);
  run_case(&c);
  free(ref);
  free(c.in[0]);
  free(c.out);
}

static void test_softmaxes(void) {
  for (int l = 0; l < 2; l++) {
    test_softmax(1, 7, 1, l); /* classifier output */
    test_softmax(3, 5, 1, l); /* last axis, several rows */
    test_softmax(2, 4, 3, l); /* middle axis */
    test_softmax(1, 6, 5, l); /* first axis */
    test_softmax(2, 1, 3, l); /* a single class */
  }
  /* huge logits, the largest last: no overflow */
  float x[3] = {999.0f, -1000.0f, 1000.0f}, y[3];
  pt_softmax_params p = {1, 3, 1, false};
  pt_softmax_forward(y, x, &p);
  CHECK(fabsf(y[0] + y[1] + y[2] - 1.0f) < 1e-6f && fabsf(y[2] - 0.7310586f) < 1e-6f &&
            y[1] == 0.0f,
        "softmax of large logits: %g %g %g", y[0], y[1], y[2]);
  p.log = true;
  pt_softmax_forward(y, x, &p);
  CHECK(fabsf(y[2] + 0.3132617f) < 1e-6f && fabsf(y[0] + 1.3132617f) < 1e-6f &&
            fabsf(y[1] + 2000.3132617f) < 1e-2f,
        "logsoftmax of large logits: %g %g %g", y[0], y[1], y[2]);
  float z[3] = {-1000.0f, 0.0f, 1000.0f};
  pt_softmax_forward(y, z, &p);
  CHECK(y[2] == 0.0f && y[1] == -1000.0f && y[0] == -2000.0f,
        "logsoftmax of {-1000, 0, 1000}: "
        "%g %g %g",
        y[0], y[1], y[2]);
  p.log = false;
  pt_softmax_forward(y, z, &p);
  CHECK(y[2] == 1.0f && y[1] == 0.0f && y[0] == 0.0f, "softmax of {-1000, 0, 1000}: %g %g %g", y[0],
        y[1], y[2]);
}

/* ---- concat ---- */

typedef struct cat_case {
  pt_concat_params p;
} cat_case;

static void cat_fwd(gc_case *c) {
  cat_case *k = c->p;
  pt_concat_forward(c->out, (const float *const *)c->in, &k->p);
}
static void cat_bwd(gc_case *c, const float *dout, float **din) {
  cat_case *k = c->p;
  pt_concat_backward(din, dout, &k->p);
}

static void test_concat(int64_t outer, int n, const int64_t *dims, int64_t inner, int skip) {
  cat_case k = {{0}};
  k.p.n = n;
  k.p.outer = outer;
  k.p.inner = inner;
  int64_t total = 0;
  gc_case c = {0};
  int len = snprintf(c.name, sizeof c.name, "concat outer=%lld inner=%lld dims", (long long)outer,
                     (long long)inner);
  c.n_in = n;
  for (int i = 0; i < n; i++) {
    k.p.dims[i] = dims[i];
    total += dims[i];
    len += snprintf(c.name + len, sizeof c.name - (size_t)len, " %lld", (long long)dims[i]);
    c.in_n[i] = outer * dims[i] * inner;
    c.in[i] = falloc(c.in_n[i]);
    c.want[i] = i != skip;
    gc_fill(c.in[i], c.in_n[i], &seed, -1.0f, 1.0f);
  }
  if (skip >= 0) snprintf(c.name + len, sizeof c.name - (size_t)len, " skip %d", skip);
  c.out_n = outer * total * inner;
  c.out = falloc(c.out_n);
  c.forward = cat_fwd;
  c.backward = cat_bwd;
  c.p = &k;
  cat_fwd(&c);
  int64_t bad = 0;
  for (int64_t o = 0; o < outer; o++) {
    int64_t at = 0;
    for (int i = 0; i < n; i++)
      for (int64_t d = 0; d < dims[i]; d++, at++)
        for (int64_t j = 0; j < inner; j++)
          if (c.out[(o * total + at) * inner + j] != c.in[i][(o * dims[i] + d) * inner + j]) bad++;
  }
  CHECK(bad == 0, "%s: %lld wrong forward elements", c.name, (long long)bad);
  run_case(&c);
  for (int i = 0; i < n; i++) free(c.in[i]);
  free(c.out);
}

static void test_concats(void) {
  const int64_t d2[] = {3, 4}, d3[] = {2, 1, 3}, d3b[] = {2, 5, 1};
  test_concat(2, 2, d2, 5, -1);  /* channels of a batch of 2 */
  test_concat(1, 3, d3, 6, -1);  /* outermost axis */
  test_concat(3, 3, d3b, 1, -1); /* innermost axis */
  test_concat(2, 3, d3, 3, 1);   /* one input wants no gradient */
}

/* ---- resize ---- */

static const char *coord_names[] = {"half_pixel", "asymmetric", "align_corners",
                                    "pytorch_half_pixel", "tf_half_pixel_for_nn"};
static const char *nearest_names[] = {"round_prefer_floor", "round_prefer_ceil", "floor", "ceil"};

/* ONNX Resize's coordinate transform and rounding, in float as onnxruntime computes it: with a
 * scale like 0.6f, (1 + 0.5) / scale - 0.5 rounds to exactly 2 in float but not in double. */
static int ref_src(int o, int in, int out, float scale, int coord, int nearest) {
  float x;
  switch (coord) {
  case PT_COORD_HALF_PIXEL:
    x = ((float)o + 0.5f) / scale - 0.5f;
    break;
  case PT_COORD_ALIGN_CORNERS:
    x = out > 1 ? (float)o * (float)(in - 1) / (float)(out - 1) : 0.0f;
    break;
  case PT_COORD_PYTORCH_HALF_PIXEL:
    x = out > 1 ? ((float)o + 0.5f) / scale - 0.5f : 0.0f;
    break;
  case PT_COORD_TF_HALF_PIXEL_FOR_NN:
    x = ((float)o + 0.5f) / scale;
    break;
  default:
    x = (float)o / scale;
    break;
  }
  double i, f = floor(x);
  switch (nearest) {
  case PT_NEAREST_ROUND_PREFER_CEIL:
    i = x - f >= 0.5 ? f + 1 : f;
    break;
  case PT_NEAREST_FLOOR:
    i = f;
    break;
  case PT_NEAREST_CEIL:
    i = ceil(x);
    break;
  default:
    i = x - f > 0.5 ? f + 1 : f;
    break;
  }
  if (i < 0) i = 0;
  if (i > in - 1) i = in - 1;
  return (int)i;
}

static void rs_fwd(gc_case *c) {
  pt_resize_forward(c->out, c->in[0], c->p);
}
static void rs_bwd(gc_case *c, const float *dout, float **din) {
  pt_resize_backward(din[0], dout, c->p);
}

static void test_resize(int N, int C, int H, int W, int OH, int OW, float sh, float sw, int coord,
                        int nearest, int grad) {
  pt_resize_params p = {
      N, C, H, W, OH, OW, sh, sw, (pt_resize_coord)coord, (pt_resize_nearest)nearest};
  int64_t n_in = (int64_t)N * C * H * W, n_out = (int64_t)N * C * OH * OW;
  gc_case c = {0};
  snprintf(c.name, sizeof c.name, "resize %dx%dx%dx%d->%dx%d %s %s", N, C, H, W, OH, OW,
           coord_names[coord], nearest_names[nearest]);
  c.n_in = 1;
  c.in[0] = falloc(n_in);
  c.in_n[0] = n_in;
  c.want[0] = 1;
  c.out = falloc(n_out);
  c.out_n = n_out;
  c.forward = rs_fwd;
  c.backward = rs_bwd;
  c.p = &p;
  for (int64_t i = 0; i < n_in; i++) c.in[0][i] = (float)i; /* value = source index */
  rs_fwd(&c);
  int64_t bad = 0;
  for (int pl = 0; pl < N * C; pl++)
    for (int oh = 0; oh < OH; oh++)
      for (int ow = 0; ow < OW; ow++) {
        int ih = ref_src(oh, H, OH, sh, coord, nearest),
            iw = ref_src(ow, W, OW, sw, coord, nearest);
        float e = (float)(((int64_t)pl * H + ih) * W + iw);
        if (c.out[((int64_t)pl * OH + oh) * OW + ow] != e) bad++;
      }
  CHECK(bad == 0, "%s: %lld wrong forward elements", c.name, (long long)bad);
  if (grad) {
    gc_fill(c.in[0], n_in, &seed, -1.0f, 1.0f);
    run_case(&c);
  }
  free(c.in[0]);
  free(c.out);
}

/* Expected outputs of ONNX's own Resize examples. */
static void test_resize_onnx_examples(void) {
  float x4[16], y[64];
  for (int i = 0; i < 16; i++) x4[i] = (float)(i + 1);
  {
    pt_resize_params p = {
        1, 1, 2, 2, 4, 6, 2.0f, 3.0f, PT_COORD_HALF_PIXEL, PT_NEAREST_ROUND_PREFER_FLOOR};
    const float e[24] = {1, 1, 1, 2, 2, 2, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 3, 3, 3, 4, 4, 4};
    float x[4] = {1, 2, 3, 4};
    pt_resize_forward(y, x, &p);
    CHECK(memcmp(y, e, sizeof e) == 0, "resize_upsample_scales_nearest differs");
  }
  {
    pt_resize_params p = {
        1, 1, 2, 4, 1, 2, 0.6f, 0.6f, PT_COORD_HALF_PIXEL, PT_NEAREST_ROUND_PREFER_FLOOR};
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    pt_resize_forward(y, x, &p);
    CHECK(y[0] == 1 && y[1] == 3, "resize_downsample_scales_nearest: %g %g", y[0], y[1]);
  }
  struct {
    int coord, nearest;
    float row0[8];
  } rows[] = {
      {PT_COORD_HALF_PIXEL, PT_NEAREST_CEIL, {1, 2, 2, 3, 3, 4, 4, 4}},
      {PT_COORD_ALIGN_CORNERS, PT_NEAREST_FLOOR, {1, 1, 1, 2, 2, 3, 3, 4}},
      {PT_COORD_ASYMMETRIC, PT_NEAREST_ROUND_PREFER_CEIL, {1, 2, 2, 3, 3, 4, 4, 4}},
  };
  for (size_t k = 0; k < sizeof rows / sizeof rows[0]; k++) {
    pt_resize_params p = {1,
                          1,
                          4,
                          4,
                          8,
                          8,
                          2.0f,
                          2.0f,
                          (pt_resize_coord)rows[k].coord,
                          (pt_resize_nearest)rows[k].nearest};
    pt_resize_forward(y, x4, &p);
    CHECK(memcmp(y, rows[k].row0, sizeof rows[k].row0) == 0,
          "resize 4x4->8x8 %s %s first row: %g %g %g %g %g %g %g %g", coord_names[rows[k].coord],
          nearest_names[rows[k].nearest], y[0], y[1], y[2], y[3], y[4], y[5], y[6], y[7]);
  }
}

static void test_resizes(void) {
  for (int coord = 0; coord < 5; coord++) {
    for (int nearest = 0; nearest < 4; nearest++) {
      /* integer scales 2 and 3, then non-integer up in one axis and down in the other */
      test_resize(2, 2, 3, 4, 6, 8, 2.0f, 2.0f, coord, nearest, nearest == 0);
      test_resize(1, 1, 3, 5, 9, 15, 3.0f, 3.0f, coord, nearest, nearest == 0);
      test_resize(1, 2, 5, 4, 3, 7, 0.6f, 1.75f, coord, nearest, 1);
      test_resize(1, 1, 4, 3, 6, 4, 1.5f, 4.0f / 3.0f, coord, nearest, 0);
    }
  }
  /* more output columns than one pass of the column table */
  test_resize(1, 2, 2, 150, 4, 300, 2.0f, 2.0f, PT_COORD_ASYMMETRIC, PT_NEAREST_FLOOR, 0);
  test_resize_onnx_examples();
}

int main(void) {
  test_binaries();
  test_unaries();
  test_copy();
  test_batchnorm(1, 3, 7, 1, 1, 1);
  test_batchnorm(2, 4, 5, 1, 1, 1);
  test_batchnorm(2, 3, 1, 1, 0, 1);
  test_batchnorm(3, 2, 3, 0, 1, 0);
  test_softmaxes();
  test_concats();
  test_resizes();
  PT_TEST_END();
}
