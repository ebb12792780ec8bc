/* Convolution chains on oneDNN in the executor (lib/exec.c over lib/cpu/dnnl_conv.c): a Relu
 * folded into the convolution before it, tensors handed from one convolution to the next in
 * oneDNN's blocked layout (inference), weights kept between inference calls.
 *
 * Each case builds a small conv net (onnx_build.h), runs it with these (oneDNN plans as the
 * executor makes them) and without oneDNN at all (PARTIME_DNNL=0, conv.c), and compares by
 * normalised error: every graph output in inference; outputs, the input gradient and every
 * parameter gradient in training, over two ticks with a weight update between. Cases: chains of
 * Conv + Relu and a Conv feeding a Conv directly; a convolution output that another node also
 * reads, in the same range or a later one; graph outputs that are a convolution's output or a
 * folded Relu's; ranges cut inside a chain (two executors, bound like a stream's stages, the
 * boundary tensor checked as well); NaN in the input frame (it must reach the output as it does
 * without oneDNN; Winograd layers spread it over whole output tiles); weights changed in place;
 * Winograd layers (cpu/wino.c) among direct ones, 3x3 and 5x5. Then the plan alone: an inference
 * plan keeps its weights until told they changed; a fused ReLU passes NaN on. Skipped (77) when the
 * library is built without oneDNN. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cpu/dnnl_conv.h"
#include "cpu/ops.h"
#include "exec.h"
#include "graph.h"
#include "onnx/onnx_build.h"
#include "pt_test.h"

#define TOL 1e-4

static unsigned long long seed = 0x2545f4914f6cdd1dULL;

static float *random_f(int64_t n, float lo, float hi) {
  float *x = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
  for (int64_t i = 0; i < n; i++) x[i] = pt_test_uniform(&seed, lo, hi);
  return x;
}

/* Largest |got - ref| over the largest |ref|, finite elements only; infinite (the worst) where
 * got and ref disagree on which elements are NaN. */
static bool wide_nan; /* Winograd: got may hold NaN where ref does not (below) */

static double norm_err(const float *got, const float *ref, int64_t n) {
  double scale = 1e-30, worst = 0;
  for (int64_t i = 0; i < n; i++) {
    if (isnan(got[i]) != isnan(ref[i]) && !(wide_nan && isnan(got[i]))) return INFINITY;
    if (isfinite(ref[i])) scale = fmax(scale, fabs((double)ref[i]));
  }
  for (int64_t i = 0; i < n; i++)
    if (isfinite(ref[i]) && isfinite(got[i]))
      worst = fmax(worst, fabs((double)got[i] - (double)ref[i]));
    else if (!isnan(ref[i]) && got[i] != ref[i] && !(wide_nan && isnan(got[i])))
      return INFINITY;
  return worst / scale;
}

/* ---- building the nets ---- */

static void conv(tb *b, const char *name, const char *in, const char *out, int C, int OC, int k,
                 int stride) {
  char w[64], bias[64], ins[200];
  snprintf(w, sizeof w, "%s.w", name);
  snprintf(bias, sizeof bias, "%s.b", name);
  snprintf(ins, sizeof ins, "%s,%s,%s", in, w, bias);
  const int64_t wd[4] = {OC, C, k, k}, bd[1] = {OC};
  const float bound = 1.0f / sqrtf((float)(C * k * k));
  float *wv = random_f((int64_t)OC * C * k * k, -bound, bound), *bv = random_f(OC, -0.1f, 0.1f);
  tb_init_f(b, w, 4, wd, wv);
  tb_init_f(b, bias, 1, bd, bv);
  free(wv);
  free(bv);
  Onnx__NodeProto *n = tb_node(b, "Conv", name, ins, out);
  const int64_t ks[2] = {k, k}, st[2] = {stride, stride}, pads[4] = {k / 2, k / 2, k / 2, k / 2};
  tb_attr_ints(b, n, "kernel_shape", 2, ks);
  tb_attr_ints(b, n, "strides", 2, st);
  tb_attr_ints(b, n, "pads", 4, pads);
}

/* ConvTranspose with a bias, k 3, stride 1, pads 1: the shape of its input. */
static void conv_t(tb *b, const char *name, const char *in, const char *out, int C, int OC) {
  char w[64], bias[64], ins[200];
  snprintf(w, sizeof w, "%s.w", name);
  snprintf(bias, sizeof bias, "%s.b", name);
  snprintf(ins, sizeof ins, "%s,%s,%s", in, w, bias);
  const int64_t wd[4] = {C, OC, 3, 3}, bd[1] = {OC};
  const float bound = 1.0f / sqrtf((float)(C * 9));
  float *wv = random_f((int64_t)OC * C * 9, -bound, bound), *bv = random_f(OC, -0.1f, 0.1f);
  tb_init_f(b, w, 4, wd, wv);
  tb_init_f(b, bias, 1, bd, bv);
  free(wv);
  free(bv);
  Onnx__NodeProto *n = tb_node(b, "ConvTranspose", name, ins, out);
  const int64_t ks[2] = {3, 3}, pads[4] = {1, 1, 1, 1};
  tb_attr_ints(b, n, "kernel_shape", 2, ks);
  tb_attr_ints(b, n, "pads", 4, pads);
}

static void relu(tb *b, const char *name, const char *in, const char *out) {
  tb_node(b, "Relu", name, in, out);
}

/* Seven convolutions, each but one followed by a Relu, on 1x3x24x24 (16 -> 16 layers smaller than
 * that run on cpu/direct.c whole): 3 -> 16 -> 16 -> 16 (no Relu, straight into the next) -> 32 ->
 * 16 (stride 2) -> 16 (1x1, which oneDNN runs only backward) -> 16 -> a 1x1 head of 10 channels
 * (conv.c). 14 nodes. */
static tb *net_chain(void) {
  tb *b = tb_new(13);
  const int64_t xd[4] = {1, 3, 24, 24};
  tb_input(b, "x", TB_FLOAT, 4, xd, NULL);
  conv(b, "conv0", "x", "c0", 3, 16, 3, 1);
  relu(b, "relu0", "c0", "r0");
  conv(b, "conv1", "r0", "c1", 16, 16, 3, 1);
  relu(b, "relu1", "c1", "r1");
  conv(b, "conv2", "r1", "c2", 16, 16, 3, 1);
  conv(b, "conv3", "c2", "c3", 16, 32, 3, 1);
  relu(b, "relu3", "c3", "r3");
  conv(b, "conv4", "r3", "c4", 32, 16, 3, 2);
  relu(b, "relu4", "c4", "r4");
  conv(b, "conv5", "r4", "c5", 16, 16, 1, 1);
  relu(b, "relu5", "c5", "r5");
  conv(b, "conv6", "r5", "c6", 16, 16, 3, 1);
  relu(b, "relu6", "c6", "r6");
  conv(b, "head", "r6", "y", 16, 10, 1, 1);
  tb_output(b, "y", -1, NULL);
  return b;
}

/* Branches on 1x16x12x12. conv0's output is a graph output (not folded); r0 feeds conv1 and an
 * Add (no hand-off); conv2's output is read by relu2 and by an Add (not folded, no hand-off);
 * r3, a folded Relu's output, is a graph output and read by an Add; a ConvTranspose with a bias
 * and a Relu; the last graph output y is a convolution's output. */
static tb *net_branches(void) {
  tb *b = tb_new(13);
  const int64_t xd[4] = {1, 16, 12, 12};
  tb_input(b, "x", TB_FLOAT, 4, xd, NULL);
  conv(b, "conv0", "x", "c0", 16, 16, 3, 1);
  relu(b, "relu0", "c0", "r0");
  conv(b, "conv1", "r0", "c1", 16, 16, 3, 1);
  relu(b, "relu1", "c1", "r1");
  tb_node(b, "Add", "add0", "r1,r0", "s0");
  conv(b, "conv2", "s0", "c2", 16, 16, 3, 1);
  relu(b, "relu2", "c2", "r2");
  conv(b, "conv3", "r2", "c3", 16, 16, 3, 1);
  relu(b, "relu3", "c3", "r3");
  tb_node(b, "Add", "add1", "r3,c2", "s1");
  conv_t(b, "convt", "s1", "ct", 16, 16);
  relu(b, "relut", "ct", "rt");
  conv(b, "conv4", "rt", "y", 16, 16, 3, 1);
  tb_output(b, "y", -1, NULL);
  tb_output(b, "c0", -1, NULL);
  tb_output(b, "r3", -1, NULL);
  return b;
}

/* A skip over two convolutions on 1x16x12x12: r0 feeds conv1 and the Add after conv2, which a
 * cut before the Add puts in the next range. */
static tb *net_skip(void) {
  tb *b = tb_new(13);
  const int64_t xd[4] = {1, 16, 12, 12};
  tb_input(b, "x", TB_FLOAT, 4, xd, NULL);
  conv(b, "conv0", "x", "c0", 16, 16, 3, 1);
  relu(b, "relu0", "c0", "r0");
  conv(b, "conv1", "r0", "c1", 16, 16, 3, 1);
  relu(b, "relu1", "c1", "r1");
  conv(b, "conv2", "r1", "c2", 16, 16, 3, 1);
  tb_node(b, "Add", "add", "c2,r0", "s");
  conv(b, "conv3", "s", "c3", 16, 16, 3, 1);
  relu(b, "relu3", "c3", "y");
  tb_output(b, "y", -1, NULL);
  return b;
}

/* 3x3 layers on 1x16x32x32, whose forwards run on F(4x4, 3x3) (cpu/wino.c): 16 -> 32 -> 32 -> 32
 * (no Relu, straight into the next) -> 32 -> 16 -> a 1x1 head of 10. */
static tb *net_wino(void) {
  tb *b = tb_new(13);
  const int64_t xd[4] = {1, 16, 32, 32};
  tb_input(b, "x", TB_FLOAT, 4, xd, NULL);
  conv(b, "conv0", "x", "c0", 16, 32, 3, 1);
  relu(b, "relu0", "c0", "r0");
  conv(b, "conv1", "r0", "c1", 32, 32, 3, 1);
  relu(b, "relu1", "c1", "r1");
  conv(b, "conv2", "r1", "c2", 32, 32, 3, 1);
  conv(b, "conv3", "c2", "c3", 32, 32, 3, 1);
  relu(b, "relu3", "c3", "r3");
  conv(b, "conv4", "r3", "c4", 32, 16, 3, 1);
  relu(b, "relu4", "c4", "r4");
  conv(b, "head", "r4", "y", 16, 10, 1, 1);
  tb_output(b, "y", -1, NULL);
  return b;
}

/* 5x5 layers, which run on cpu/wino.c, on 1x16x32x32: 16 -> 32 -> 32 (no Relu,
 * straight into the next) -> 16 -> a 1x1 head of 10. */
static tb *net_wino5(void) {
  tb *b = tb_new(13);
  const int64_t xd[4] = {1, 16, 32, 32};
  tb_input(b, "x", TB_FLOAT, 4, xd, NULL);
  conv(b, "conv0", "x", "c0", 16, 32, 5, 1);
  relu(b, "relu0", "c0", "r0");
  conv(b, "conv1", "r0", "c1", 32, 32, 5, 1);
  conv(b, "conv2", "c1", "c2", 32, 16, 5, 1);
  relu(b, "relu2", "c2", "r2");
  conv(b, "head", "r2", "y", 16, 10, 1, 1);
  tb_output(b, "y", -1, NULL);
  return b;
}

static int load2(tb *b, pt_model *m[2]) {
  size_t size;
  void *data = tb_pack(b, &size);
  tb_free(b);
  pt_error err;
  int ok = 1;
  for (int k = 0; k < 2; k++) {
    m[k] = NULL;
    if (pt_model_load_memory(data, size, "chain-test", &m[k], &err) != PT_OK) {
      CHECK(0, "load: %s", err.msg);
      ok = 0;
    }
  }
  free(data);
  return ok;
}

/* ---- running ---- */

/* The model run as up to three executors over consecutive node ranges, bound like a stream's
 * stages: a value that crosses from one to a later one lives in a buffer of the caller's, which the
 * producer writes and the readers read. */
typedef struct runner {
  pt_model *m;
  int n;
  pt_exec x[3];
  float **bound; /* per value: the caller's buffer, or NULL */
} runner;

static int owner(const runner *r, int v) {
  int p = r->m->vals[v].producer;
  for (int e = 0; e < r->n; e++)
    if (p >= r->x[e].first && p < r->x[e].end) return e;
  return -1;
}

static int runner_init(runner *r, pt_model *m, const int *cuts, int n_cuts, bool train, bool dnnl) {
  memset(r, 0, sizeof *r);
  r->m = m;
  r->n = n_cuts + 1;
  pt_error err;
  if (!dnnl) setenv("PARTIME_DNNL", "0", 1);
  int ok = 1;
  for (int e = 0; e < r->n; e++) {
    int first = e ? cuts[e - 1] : 0, end = e < n_cuts ? cuts[e] : m->n_nodes;
    if (pt_exec_init(&r->x[e], m, first, end, train, true, &err) != PT_OK) {
      CHECK(0, "exec init [%d, %d): %s", first, end, err.msg);
      ok = 0;
    }
  }
  unsetenv("PARTIME_DNNL");
  if (!ok) return 0;
  r->bound = calloc(m->n_vals, sizeof *r->bound);
  for (int v = 0; v < m->n_vals; v++) {
    int o = owner(r, v);
    bool crosses = false;
    for (int e = o + 1; o >= 0 && e < r->n; e++)
      crosses = crosses || pt_exec_is_external(&r->x[e], v);
    if (!crosses) continue;
    r->bound[v] = calloc(m->vals[v].numel, sizeof(float));
    pt_exec_bind(&r->x[o], v, r->bound[v]);
    for (int e = o + 1; e < r->n; e++)
      if (pt_exec_is_external(&r->x[e], v)) pt_exec_bind(&r->x[e], v, r->bound[v]);
  }
  return 1;
}

static void runner_free(runner *r) {
  for (int e = 0; e < r->n; e++) pt_exec_free(&r->x[e]);
  for (int v = 0; r->bound && v < r->m->n_vals; v++) free(r->bound[v]);
  free(r->bound);
}

static void runner_forward(runner *r, const float *x) {
  for (int e = 0; e < r->n; e++) {
    pt_exec_bind(&r->x[e], r->m->input, x);
    pt_exec_forward(&r->x[e]);
  }
}

static const float *runner_act(const runner *r, int v) {
  int o = owner(r, v);
  return o >= 0 ? pt_exec_act(&r->x[o], v) : NULL;
}

/* Backward from dy[k] for graph output k: every executor's backward, last first, each passing
 * the gradients of the values it read from an earlier one on to that one. */
static void runner_backward(runner *r, float *const *dy) {
  const pt_model *m = r->m;
  for (int e = 0; e < r->n; e++) pt_exec_zero_grad(&r->x[e]);
  for (int k = 0; k < m->n_outputs; k++) {
    int v = m->outputs[k], o = owner(r, v);
    memcpy(pt_exec_grad(&r->x[o], v), dy[k], sizeof(float) * m->vals[v].numel);
  }
  for (int e = r->n - 1; e >= 0; e--) {
    pt_exec_backward(&r->x[e]);
    for (int v = 0; v < m->n_vals; v++) {
      int o = owner(r, v);
      const float *g = pt_exec_grad(&r->x[e], v);
      if (o < 0 || o >= e || !g || !pt_exec_is_external(&r->x[e], v)) continue;
      float *to = pt_exec_grad(&r->x[o], v);
      for (int64_t i = 0; i < m->vals[v].numel; i++) to[i] += g[i];
    }
  }
}

/* The gradient of value v summed over the executors that hold one (the graph input's, read by
 * several). */
static float *runner_grad(const runner *r, int v) {
  int64_t n = r->m->vals[v].numel;
  float *sum = calloc(n, sizeof(float));
  for (int e = 0; e < r->n; e++) {
    const float *g = pt_exec_grad(&r->x[e], v);
    for (int64_t i = 0; g && i < n; i++) sum[i] += g[i];
  }
  return sum;
}

static void tell_params_changed(runner *r) {
  for (int e = 0; e < r->n; e++) pt_exec_params_changed(&r->x[e]);
}

static int count_folded(const runner *r) {
  int n = 0;
  for (int e = 0; e < r->n; e++)
    for (int i = 0; i < r->x[e].end - r->x[e].first; i++) n += r->x[e].folded[i];
  return n;
}

/* ---- the cases ---- */

typedef struct cs {
  const char *name;
  tb *(*net)(void);
  int cuts[2], n_cuts;
  bool handoff; /* two convolutions within one range hand a tensor over in oneDNN's layout */
  /* Winograd layers: a NaN in the input spreads to whole output tiles, so the NaN frame's
   * outputs hold NaN wherever the reference's do, and may hold more */
  bool wide_nan;
} cs;

static bool jit_here;

/* Every graph output, and every tensor crossing a cut, against the reference. */
static double compare_forward(const runner *opt, const runner *ref, const char *what) {
  const pt_model *m = ref->m;
  double worst = 0;
  for (int k = 0; k < m->n_outputs; k++) {
    int v = m->outputs[k];
    double e = norm_err(runner_act(opt, v), runner_act(ref, v), m->vals[v].numel);
    CHECK(e <= TOL, "%s: output %s differs by %.3g", what, m->vals[v].name, e);
    worst = fmax(worst, e);
  }
  for (int v = 0; v < m->n_vals; v++) {
    if (!opt->bound[v]) continue;
    double e = norm_err(opt->bound[v], runner_act(ref, v), m->vals[v].numel);
    CHECK(e <= TOL, "%s: %s, crossing a cut, differs by %.3g", what, m->vals[v].name, e);
    worst = fmax(worst, e);
  }
  return worst;
}

static void case_inference(const cs *c) {
  char what[200];
  snprintf(what, sizeof what, "%s inference cut at %d,%d", c->name, c->n_cuts ? c->cuts[0] : -1,
           c->n_cuts > 1 ? c->cuts[1] : -1);
  pt_model *m[2];
  if (!load2(c->net(), m)) return;
  runner opt, ref;
  if (!runner_init(&opt, m[0], c->cuts, c->n_cuts, false, true) ||
      !runner_init(&ref, m[1], NULL, 0, false, false))
    return;
  const int in = m[0]->input;
  const int64_t nin = m[0]->vals[in].numel;

  /* the NCHW buffers of tensors handed over in oneDNN's layout are never written: fill them */
  const float sentinel = 1234.5f;
  for (int v = 0; v < m[0]->n_vals; v++) {
    int o = owner(&opt, v);
    if (o < 0 || opt.bound[v] || m[0]->vals[v].kind != PT_VAL_ACT) continue;
    float *a = pt_exec_act(&opt.x[o], v);
    for (int64_t i = 0; i < m[0]->vals[v].numel; i++) a[i] = sentinel;
  }

  double worst = 0;
  for (int step = 0; step < 3; step++) {
    float *x = random_f(nin, -1.0f, 1.0f);
    if (step == 2) x[nin / 2 + 3] = NAN; /* a corrupt frame */
    runner_forward(&opt, x);
    runner_forward(&ref, x);
    wide_nan = c->wide_nan && step == 2;
    worst = fmax(worst, compare_forward(&opt, &ref, what));
    wide_nan = false;
    if (step == 2) {
      bool nan_out = false;
      for (int64_t i = 0; i < m[1]->vals[m[1]->output].numel; i++)
        nan_out = nan_out || isnan(runner_act(&ref, m[1]->output)[i]);
      CHECK(nan_out, "%s: a NaN in the input reaches the reference's output", what);
    }
    free(x);
  }
  int untouched = 0;
  for (int v = 0; v < m[0]->n_vals; v++) {
    int o = owner(&opt, v);
    if (o < 0 || opt.bound[v] || m[0]->vals[v].kind != PT_VAL_ACT) continue;
    untouched += pt_exec_act(&opt.x[o], v)[0] == sentinel;
  }

  /* weights changed in place (both models), the optimized executors told so */
  for (int v = 0; v < m[0]->n_vals; v++) {
    if (m[0]->vals[v].kind != PT_VAL_PARAM) continue;
    for (int64_t i = 0; i < m[0]->vals[v].numel; i++) {
      m[0]->vals[v].data[i] *= -0.75f;
      m[1]->vals[v].data[i] *= -0.75f;
    }
  }
  tell_params_changed(&opt);
  float *x = random_f(nin, -1.0f, 1.0f);
  runner_forward(&opt, x);
  runner_forward(&ref, x);
  free(x);
  char changed[240];
  snprintf(changed, sizeof changed, "%s, weights changed", what);
  worst = fmax(worst, compare_forward(&opt, &ref, changed));

  printf("%s: %d Relu folded, %d tensors never written in NCHW, worst error %.2e\n", what,
         count_folded(&opt), untouched, worst);
  CHECK(!jit_here || count_folded(&opt) > 0, "%s: no Relu folded", c->name);
  CHECK(!jit_here || !c->handoff || untouched > 0, "%s: no tensor handed over in oneDNN's layout",
        c->name);
  runner_free(&opt);
  runner_free(&ref);
  pt_model_free(m[0]);
  pt_model_free(m[1]);
}

static void case_training(const cs *c) {
  char what[200];
  snprintf(what, sizeof what, "%s training cut at %d,%d", c->name, c->n_cuts ? c->cuts[0] : -1,
           c->n_cuts > 1 ? c->cuts[1] : -1);
  pt_model *m[2];
  if (!load2(c->net(), m)) return;
  runner opt, ref;
  if (!runner_init(&opt, m[0], c->cuts, c->n_cuts, true, true) ||
      !runner_init(&ref, m[1], NULL, 0, true, false))
    return;
  const int in = m[0]->input;
  const int64_t nin = m[0]->vals[in].numel;
  float *dy[8] = {0};
  for (int k = 0; k < m[0]->n_outputs && k < 8; k++)
    dy[k] = random_f(m[0]->vals[m[0]->outputs[k]].numel, -1.0f, 1.0f);
  double worst_out = 0, worst_grad = 0;
  for (int step = 0; step < 2; step++) {
    float *x = random_f(nin, -1.0f, 1.0f);
    runner_forward(&opt, x);
    runner_forward(&ref, x);
    worst_out = fmax(worst_out, compare_forward(&opt, &ref, what));
    runner_backward(&opt, dy);
    runner_backward(&ref, dy);
    for (int v = 0; v < m[0]->n_vals; v++) {
      if (m[0]->vals[v].kind != PT_VAL_PARAM && v != in) continue;
      float *g0 = runner_grad(&opt, v), *g1 = runner_grad(&ref, v);
      double e = norm_err(g0, g1, m[0]->vals[v].numel);
      CHECK(e <= TOL, "%s step %d: gradient of %s differs by %.3g", what, step, m[0]->vals[v].name,
            e);
      worst_grad = fmax(worst_grad, e);
      /* a step of SGD with the reference's gradient on both: the weights stay equal */
      if (m[0]->vals[v].kind == PT_VAL_PARAM)
        for (int64_t i = 0; i < m[0]->vals[v].numel; i++) {
          m[0]->vals[v].data[i] -= 0.05f * g1[i];
          m[1]->vals[v].data[i] -= 0.05f * g1[i];
        }
      free(g0);
      free(g1);
    }
    free(x);
  }
  printf("%s: %d Relu folded, worst output error %.2e, worst gradient error %.2e\n", what,
         count_folded(&opt), worst_out, worst_grad);
  for (int k = 0; k < 8; k++) free(dy[k]);
  runner_free(&opt);
  runner_free(&ref);
  pt_model_free(m[0]);
  pt_model_free(m[1]);
}

/* ---- the plan alone ---- */

static pt_conv_params layer16(void) {
  pt_conv_params p = {.N = 1,
                      .C = 16,
                      .H = 12,
                      .W = 12,
                      .OC = 16,
                      .OH = 12,
                      .OW = 12,
                      .KH = 3,
                      .KW = 3,
                      .SH = 1,
                      .SW = 1,
                      .DH = 1,
                      .DW = 1,
                      .PT = 1,
                      .PL = 1,
                      .PB = 1,
                      .PR = 1,
                      .G = 1,
                      .has_bias = true};
  return p;
}

/* An inference plan reorders its weights once: weights changed in place behind the same pointer
 * give the old result until pt_dnnl_conv_weights_changed(). */
static void test_weights_kept(void) {
  pt_conv_params p = layer16();
  pt_error err;
  pt_dnnl_conv *plan = pt_dnnl_conv_plan_create(&p, false, false, PT_DNNL_FORWARD, &err);
  CHECK(plan != NULL, "inference plan: %s", err.msg);
  if (!plan) return;
  const int64_t nx = 16 * 144, nw = 16 * 16 * 9;
  float *x = random_f(nx, -1, 1), *w = random_f(nw, -0.3f, 0.3f), *b = random_f(16, -0.1f, 0.1f);
  float *y0 = calloc(nx, sizeof(float)), *y1 = calloc(nx, sizeof(float)),
        *ref = calloc(nx, sizeof(float));
  float *scratch = calloc(pt_conv2d_scratch(&p), sizeof(float));
  pt_dnnl_conv_forward(plan, y0, x, w, b);
  for (int64_t i = 0; i < nw; i++) w[i] *= 2.0f;
  pt_dnnl_conv_forward(plan, y1, x, w, b);
  CHECK(memcmp(y0, y1, sizeof(float) * nx) == 0,
        "inference plan: weights changed behind the same pointer are not read again");
  pt_dnnl_conv_weights_changed(plan);
  pt_dnnl_conv_forward(plan, y1, x, w, b);
  pt_conv2d_forward(ref, x, w, b, &p, scratch);
  double e = norm_err(y1, ref, nx);
  CHECK(e <= TOL, "inference plan: after weights_changed, error %.3g", e);
  pt_dnnl_conv_plan_free(plan);
  free(x), free(w), free(b), free(y0), free(y1), free(ref), free(scratch);
}

/* PT_DNNL_RELU: relu(conv) as conv.c and pt_relu_f give it, NaN in the input (or the weights)
 * passed on as the Relu node does, for an inference and a train plan, and for two linked
 * inference plans (the second reading the first's output in oneDNN's layout). */
static void test_fused_relu(void) {
  pt_conv_params p = layer16();
  const int64_t nx = 16 * 144, nw = 16 * 16 * 9;
  float *x = random_f(nx, -1, 1), *w = random_f(nw, -0.3f, 0.3f), *b = random_f(16, -0.1f, 0.1f);
  float *w2 = random_f(nw, -0.3f, 0.3f);
  float *scratch = calloc(pt_conv2d_scratch(&p), sizeof(float));
  float *y = calloc(nx, sizeof(float)), *y2 = calloc(nx, sizeof(float)),
        *r1 = calloc(nx, sizeof(float)), *r2 = calloc(nx, sizeof(float));
  for (int nan = 0; nan <= 2; nan++) { /* none, in the input, in the weights */
    if (nan == 1) x[5 * 12 + 7] = NAN;
    if (nan == 2) x[5 * 12 + 7] = 0.5f, w[40] = NAN;
    pt_conv2d_forward(r1, x, w, b, &p, scratch);
    for (int64_t i = 0; i < nx; i++) r1[i] = r1[i] < 0 ? 0 : r1[i];
    pt_conv2d_forward(r2, r1, w2, b, &p, scratch);
    for (int64_t i = 0; i < nx; i++) r2[i] = r2[i] < 0 ? 0 : r2[i];
    for (int train = 0; train <= 1; train++) {
      pt_error err;
      pt_dnnl_conv *a =
          pt_dnnl_conv_plan_create(&p, false, train, PT_DNNL_ALL | PT_DNNL_RELU, &err);
      pt_dnnl_conv *c =
          pt_dnnl_conv_plan_create(&p, false, train, PT_DNNL_ALL | PT_DNNL_RELU, &err);
      CHECK(a && c, "relu plans: %s", err.msg);
      if (!a || !c) continue;
      pt_dnnl_conv_forward(a, y, x, w, b);
      double e = norm_err(y, r1, nx);
      CHECK(e <= TOL, "fused relu, %s plan, NaN case %d: error %.3g", train ? "train" : "inference",
            nan, e);
      bool shared = pt_dnnl_conv_link(a, c);
      CHECK(train || shared, "two inference plans of 16 channels share their tensor");
      memset(y, 0, sizeof(float) * nx);
      pt_dnnl_conv_forward(a, y, x, w, b);
      pt_dnnl_conv_forward(c, y2, y, w2, b);
      e = norm_err(y2, r2, nx);
      CHECK(e <= TOL, "linked fused relu, %s plans, NaN case %d: error %.3g",
            train ? "train" : "inference", nan, e);
      pt_dnnl_conv_plan_free(c);
      pt_dnnl_conv_plan_free(a);
    }
  }
  free(x), free(w), free(b), free(w2), free(scratch), free(y), free(y2), free(r1), free(r2);
}

int main(void) {
  if (!pt_dnnl_available()) {
    printf("built without oneDNN: skipped\n");
    return 77;
  }
  pt_blas_init();
  pt_conv_params p = layer16();
  pt_error err;
  pt_dnnl_conv *plan =
      pt_dnnl_conv_plan_create(&p, false, true, PT_DNNL_ALL | PT_DNNL_JIT_ONLY, &err);
  jit_here = plan && (pt_dnnl_conv_ops(plan) & PT_DNNL_FORWARD);
  pt_dnnl_conv_plan_free(plan);
  if (!jit_here) printf("oneDNN has no JIT kernels on this machine\n");
  if (jit_here) {
    test_weights_kept();
    test_fused_relu();
  }
  const cs cases[] = {
      {"chain", net_chain, {0}, 0, true},
      {"chain", net_chain, {3}, 1, true},    /* after conv1: its output crosses, relu1 reads it */
      {"chain", net_chain, {7, 9}, 2, true}, /* after relu3 and relu4: folded Relus' outputs */
      {"chain", net_chain, {5}, 1, true},    /* after conv2, which feeds conv3 directly */
      /* nothing to hand over: every convolution output is read twice, leaves, or gets a bias
       * added outside oneDNN (the ConvTranspose) */
      {"branches", net_branches, {0}, 0, false},
      {"branches", net_branches, {6}, 1, false}, /* after conv2: r0 and c2 cross, skips too */
      {"skip", net_skip, {0}, 0, true},
      {"skip", net_skip, {5}, 1, true}, /* before the Add: r0 is read on both sides */
      /* F(4x4, 3x3) forwards hand their output over pixel-major in inference */
      {"wino 3x3", net_wino, {0}, 0, true, true},
      {"wino 3x3", net_wino, {4}, 1, true, true}, /* after conv2, which feeds conv3 directly */
      /* F(2x2, 5x5) reads and writes NCHW: nothing to hand over */
      {"wino 5x5", net_wino5, {0}, 0, false, true},
      {"wino 5x5", net_wino5, {3}, 1, false, true}, /* after conv1, which feeds conv2 directly */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    case_inference(&cases[i]);
    case_training(&cases[i]);
  }
  PT_TEST_END();
}
