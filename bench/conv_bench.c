/* Single-core convolution benchmark, batch 1: libpartime's two CPU convolution paths, the gemm
 * path of lib/cpu/conv.c (im2col + pt_sgemm: OpenBLAS, or oneDNN's sgemm where OpenBLAS runs
 * its generic kernels) and the oneDNN plans of lib/cpu/dnnl_conv.c
 * (blocked-layout kernels, with the reorders from and to NCHW the executor pays), forward and
 * backward on the layer shapes of the benchmark and built-in models; plus the raw single-core
 * cblas_sgemm rate on a 1024^3 product, the ceiling of the gemm path, and OpenBLAS against
 * oneDNN's sgemm on the gemm path's shapes. The summary table is what
 * pt_dnnl_conv_preferred()'s rule is drawn from.
 *
 * With -v, oneDNN's primitives are also timed directly: on plain NCHW / OIHW tensors, and on the
 * blocked layouts it prefers, with and without the reorders around them.
 *
 * Everything runs on one thread. OpenMP (oneDNN) and OpenBLAS read their thread counts from the
 * environment when they load, so the program re-executes itself with OMP_NUM_THREADS=1 and
 * OPENBLAS_NUM_THREADS=1 when they are not set (the plans need no such setting: run with
 * OMP_NUM_THREADS=2 to see that they stay on one core). Usage: conv_bench [-v] [-s TEXT] [seconds
 * per measurement]; -s times only the layers whose name holds TEXT (and skips the sgemm figures).
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cblas.h>
#include <dnnl.h>
#include "cpu/dnnl_conv.h"
#include "cpu/ops.h"
#include "cpu/sgemm.h"

static double min_seconds = 0.3;
static bool verbose = false;    /* -v: also oneDNN's primitives used directly */
static const char *only = NULL; /* -s TEXT: only the layers whose name holds TEXT */

/* Process CPU time rather than wall time: on a shared machine it leaves out the time other
 * programs hold the core, and with one thread per library it equals the wall time of an idle
 * machine. Wall time is kept too: CPU time above wall time would mean a call used more than one
 * core. */
static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double wall(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double worst_cores = 0; /* the most CPU seconds per wall second any round used */

typedef void (*bench_fn)(void *ctx);

/* Seconds per call: the best of 5 rounds, each long enough to be timed reliably. */
static double time_call(bench_fn fn, void *ctx) {
  fn(ctx); /* warm up: first-touch, JIT, caches */
  int reps = 1;
  for (;;) {
    double t0 = now();
    for (int i = 0; i < reps; i++) fn(ctx);
    double t = now() - t0;
    if (t >= min_seconds / 5 || reps >= (1 << 20)) break;
    reps *= 2;
  }
  double best = 1e30;
  for (int round = 0; round < 5; round++) {
    double w0 = wall(), t0 = now();
    for (int i = 0; i < reps; i++) fn(ctx);
    double tc = now() - t0, tw = wall() - w0;
    if (tc / tw > worst_cores) worst_cores = tc / tw;
    if (tc / reps < best) best = tc / reps;
  }
  return best;
}

static void report(const char *what, double sec, double flops) {
  printf("  %-58s %8.3f ms  %6.1f GFLOP/s\n", what, sec * 1e3, flops / sec * 1e-9);
}

static void fill(float *x, size_t n, unsigned *s) {
  for (size_t i = 0; i < n; i++) {
    *s = *s * 1664525u + 1013904223u;
    x[i] = (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
  }
}

/* ---- libpartime: the gemm path (conv.c) and the oneDNN plans (dnnl_conv.c) ---- */

typedef struct pt_ctx {
  pt_conv_params p;
  bool t; /* ConvTranspose */
  pt_dnnl_conv *plan;
  float *x, *w, *b, *y, *dx, *dw, *db, *dy, *scratch;
} pt_ctx;

static void gemm_fwd(void *c) {
  pt_ctx *k = c;
  if (k->t)
    pt_conv_transpose2d_forward(k->y, k->x, k->w, k->b, &k->p, k->scratch);
  else
    pt_conv2d_forward(k->y, k->x, k->w, k->b, &k->p, k->scratch);
}
static void gemm_bwd(pt_ctx *k, float *dx, float *dw, float *db) {
  if (k->t)
    pt_conv_transpose2d_backward(dx, dw, db, k->dy, k->x, k->w, &k->p, k->scratch);
  else
    pt_conv2d_backward(dx, dw, db, k->dy, k->x, k->w, &k->p, k->scratch);
}
static void gemm_bwd_data(void *c) {
  pt_ctx *k = c;
  gemm_bwd(k, k->dx, NULL, NULL);
}
static void gemm_bwd_weights(void *c) {
  pt_ctx *k = c;
  gemm_bwd(k, NULL, k->dw, k->db);
}
static void gemm_bwd_all(void *c) {
  pt_ctx *k = c;
  gemm_bwd(k, k->dx, k->dw, k->db);
}
static void plan_fwd(void *c) {
  pt_ctx *k = c;
  pt_dnnl_conv_forward(k->plan, k->y, k->x, k->w, k->b);
}
/* Backward as the executor runs it: after a forward, whose blocked copies of the input and the
 * weights it reuses. */
static void plan_bwd_data(void *c) {
  pt_ctx *k = c;
  pt_dnnl_conv_backward(k->plan, k->dx, NULL, NULL, k->dy, k->x, k->w);
}
static void plan_bwd_weights(void *c) {
  pt_ctx *k = c;
  pt_dnnl_conv_backward(k->plan, NULL, k->dw, k->db, k->dy, k->x, k->w);
}
static void plan_bwd_all(void *c) {
  pt_ctx *k = c;
  pt_dnnl_conv_backward(k->plan, k->dx, k->dw, k->db, k->dy, k->x, k->w);
}
/* ---- oneDNN ---- */

#define DNNL_TRY(call)                                                                             \
  do {                                                                                             \
    dnnl_status_t st_ = (call);                                                                    \
    if (st_ != dnnl_success) {                                                                     \
      fprintf(stderr, "%s:%d: %s failed (status %d)\n", __FILE__, __LINE__, #call, (int)st_);      \
      return -1;                                                                                   \
    }                                                                                              \
  } while (0)

/* A sequence of primitives run back to back (reorders around a convolution, or one primitive). */
#define DNNL_MAX_STEPS 8
typedef struct dnnl_ctx {
  dnnl_stream_t stream;
  int n;
  dnnl_primitive_t prim[DNNL_MAX_STEPS];
  int nargs[DNNL_MAX_STEPS];
  dnnl_exec_arg_t args[DNNL_MAX_STEPS][4];
} dnnl_ctx;

static void dnnl_run(void *c) {
  dnnl_ctx *k = c;
  for (int i = 0; i < k->n; i++)
    dnnl_primitive_execute(k->prim[i], k->stream, k->nargs[i], k->args[i]);
  dnnl_stream_wait(k->stream);
}

static void dnnl_ctx_free(dnnl_ctx *k) {
  for (int i = 0; i < k->n; i++) dnnl_primitive_destroy(k->prim[i]);
  k->n = 0;
}

/* Appends primitive `pd` with its arguments to k. */
static int dnnl_step(dnnl_ctx *k, dnnl_primitive_desc_t pd, int nargs,
                     const dnnl_exec_arg_t *args) {
  if (k->n == DNNL_MAX_STEPS || dnnl_primitive_create(&k->prim[k->n], pd) != dnnl_success)
    return -1;
  k->nargs[k->n] = nargs;
  memcpy(k->args[k->n], args, sizeof(dnnl_exec_arg_t) * nargs);
  k->n++;
  return 0;
}

/* Appends a reorder from memory `from` to memory `to`. */
static int dnnl_reorder_step(dnnl_ctx *k, dnnl_memory_t from, dnnl_memory_t to, dnnl_engine_t eng) {
  const dnnl_memory_desc_t *fmd, *tmd;
  dnnl_primitive_desc_t pd;
  dnnl_memory_get_memory_desc(from, &fmd);
  dnnl_memory_get_memory_desc(to, &tmd);
  if (dnnl_reorder_primitive_desc_create(&pd, fmd, eng, tmd, eng, NULL) != dnnl_success) return -1;
  dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
  int rc = dnnl_step(k, pd, 2, args);
  dnnl_primitive_desc_destroy(pd);
  return rc;
}

typedef struct dnnl_shape {
  dnnl_dims_t src, wei, bia, dst, strides, pad_l, pad_r;
} dnnl_shape;

static dnnl_shape dnnl_shape_of(const pt_conv_params *p) {
  dnnl_shape s = {{p->N, p->C, p->H, p->W},
                  {p->OC, p->C, p->KH, p->KW},
                  {p->OC},
                  {p->N, p->OC, p->OH, p->OW},
                  {p->SH, p->SW},
                  {p->PT, p->PL},
                  {p->PB, p->PR}};
  return s;
}

/* A memory object with descriptor md (NULL: none), filled with random data. */
static dnnl_memory_t dnnl_mem(const dnnl_memory_desc_t *md, dnnl_engine_t eng, unsigned *seed) {
  dnnl_memory_t m = NULL;
  if (!md || dnnl_memory_create(&m, md, eng, DNNL_MEMORY_ALLOCATE) != dnnl_success) return NULL;
  void *h = NULL;
  dnnl_memory_get_data_handle(m, &h);
  fill(h, dnnl_memory_desc_get_size(md) / sizeof(float), seed);
  return m;
}

static const dnnl_memory_desc_t *dnnl_md(dnnl_primitive_desc_t pd, dnnl_query_t what, int i) {
  return dnnl_primitive_desc_query_md(pd, what, i);
}

static const char *dnnl_impl(dnnl_primitive_desc_t pd) {
  const char *s = "?";
  dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &s);
  return s;
}

/* Times oneDNN's forward, backward data and backward weights on plain NCHW tensors, then on the
 * layouts it prefers (the forward also with the reorders from and to NCHW that using them inside
 * an NCHW library would take: input, weights, which change every training step, and output). */
static int bench_dnnl(const pt_conv_params *p, double flops, dnnl_engine_t eng,
                      dnnl_stream_t stream) {
  dnnl_shape s = dnnl_shape_of(p);
  unsigned seed = 7;
  dnnl_memory_desc_t src, wei, bia, dst, src_any, wei_any, dst_any;
  DNNL_TRY(dnnl_memory_desc_init_by_tag(&src, 4, s.src, dnnl_f32, dnnl_nchw));
  DNNL_TRY(dnnl_memory_desc_init_by_tag(&wei, 4, s.wei, dnnl_f32, dnnl_oihw));
  DNNL_TRY(dnnl_memory_desc_init_by_tag(&bia, 1, s.bia, dnnl_f32, dnnl_x));
  DNNL_TRY(dnnl_memory_desc_init_by_tag(&dst, 4, s.dst, dnnl_f32, dnnl_nchw));
  DNNL_TRY(dnnl_memory_desc_init_by_tag(&src_any, 4, s.src, dnnl_f32, dnnl_format_tag_any));
  DNNL_TRY(dnnl_memory_desc_init_by_tag(&wei_any, 4, s.wei, dnnl_f32, dnnl_format_tag_any));
  DNNL_TRY(dnnl_memory_desc_init_by_tag(&dst_any, 4, s.dst, dnnl_f32, dnnl_format_tag_any));
  /* NCHW copies for the reorder measurement */
  dnnl_memory_t plain_src = dnnl_mem(&src, eng, &seed), plain_wei = dnnl_mem(&wei, eng, &seed);
  dnnl_memory_t plain_dst = dnnl_mem(&dst, eng, &seed), plain_dx = dnnl_mem(&src, eng, &seed);
  dnnl_memory_t plain_dw = dnnl_mem(&wei, eng, &seed);
  if (!plain_src || !plain_wei || !plain_dst || !plain_dx || !plain_dw) return -1;

  for (int any = 0; any < 2; any++) {
    const char *layout = any ? "blocked" : "NCHW";
    char what[128];
    dnnl_convolution_desc_t fd, bdd, bwd;
    DNNL_TRY(dnnl_convolution_forward_desc_init(
        &fd, dnnl_forward_training, dnnl_convolution_direct, any ? &src_any : &src,
        any ? &wei_any : &wei, &bia, any ? &dst_any : &dst, s.strides, s.pad_l, s.pad_r));
    dnnl_primitive_desc_t fpd, bdpd, bwpd;
    DNNL_TRY(dnnl_primitive_desc_create(&fpd, &fd, NULL, eng, NULL));
    DNNL_TRY(dnnl_convolution_backward_data_desc_init(
        &bdd, dnnl_convolution_direct, any ? &src_any : &src, any ? &wei_any : &wei,
        any ? &dst_any : &dst, s.strides, s.pad_l, s.pad_r));
    DNNL_TRY(dnnl_primitive_desc_create(&bdpd, &bdd, NULL, eng, fpd));
    DNNL_TRY(dnnl_convolution_backward_weights_desc_init(
        &bwd, dnnl_convolution_direct, any ? &src_any : &src, any ? &wei_any : &wei, &bia,
        any ? &dst_any : &dst, s.strides, s.pad_l, s.pad_r));
    DNNL_TRY(dnnl_primitive_desc_create(&bwpd, &bwd, NULL, eng, fpd));

    dnnl_memory_t ms = dnnl_mem(dnnl_md(fpd, dnnl_query_src_md, 0), eng, &seed);
    dnnl_memory_t mw = dnnl_mem(dnnl_md(fpd, dnnl_query_weights_md, 0), eng, &seed);
    dnnl_memory_t mb = dnnl_mem(dnnl_md(fpd, dnnl_query_weights_md, 1), eng, &seed);
    dnnl_memory_t md = dnnl_mem(dnnl_md(fpd, dnnl_query_dst_md, 0), eng, &seed);
    dnnl_memory_t mdd = dnnl_mem(dnnl_md(bdpd, dnnl_query_diff_dst_md, 0), eng, &seed);
    dnnl_memory_t mds = dnnl_mem(dnnl_md(bdpd, dnnl_query_diff_src_md, 0), eng, &seed);
    dnnl_memory_t mwd = dnnl_mem(dnnl_md(bwpd, dnnl_query_diff_dst_md, 0), eng, &seed);
    dnnl_memory_t mws = dnnl_mem(dnnl_md(bwpd, dnnl_query_src_md, 0), eng, &seed);
    dnnl_memory_t mdw = dnnl_mem(dnnl_md(bwpd, dnnl_query_diff_weights_md, 0), eng, &seed);
    dnnl_memory_t mdb = dnnl_mem(dnnl_md(bwpd, dnnl_query_diff_weights_md, 1), eng, &seed);
    dnnl_memory_t mwb = dnnl_mem(dnnl_md(bdpd, dnnl_query_weights_md, 0), eng, &seed);
    if (!ms || !mw || !mb || !md || !mdd || !mds || !mwd || !mws || !mdw || !mdb || !mwb) return -1;

    dnnl_exec_arg_t fargs[4] = {
        {DNNL_ARG_SRC, ms}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_BIAS, mb}, {DNNL_ARG_DST, md}};
    dnnl_ctx k = {.stream = stream};
    if (dnnl_step(&k, fpd, 4, fargs) != 0) return -1;
    snprintf(what, sizeof what, "oneDNN forward, %s [%s]", layout, dnnl_impl(fpd));
    report(what, time_call(dnnl_run, &k), flops);
    dnnl_ctx_free(&k);

    if (any) {
      if (dnnl_reorder_step(&k, plain_src, ms, eng) || dnnl_reorder_step(&k, plain_wei, mw, eng) ||
          dnnl_step(&k, fpd, 4, fargs) || dnnl_reorder_step(&k, md, plain_dst, eng))
        return -1;
      report("oneDNN forward, blocked, with reorders from/to NCHW", time_call(dnnl_run, &k), flops);
      dnnl_ctx_free(&k);
    }

    dnnl_exec_arg_t dargs[3] = {
        {DNNL_ARG_DIFF_DST, mdd}, {DNNL_ARG_WEIGHTS, mwb}, {DNNL_ARG_DIFF_SRC, mds}};
    if (dnnl_step(&k, bdpd, 3, dargs) != 0) return -1;
    snprintf(what, sizeof what, "oneDNN backward data, %s [%s]", layout, dnnl_impl(bdpd));
    report(what, time_call(dnnl_run, &k), flops);
    dnnl_ctx_free(&k);

    dnnl_exec_arg_t wargs[4] = {{DNNL_ARG_SRC, mws},
                                {DNNL_ARG_DIFF_DST, mwd},
                                {DNNL_ARG_DIFF_WEIGHTS, mdw},
                                {DNNL_ARG_DIFF_BIAS, mdb}};
    if (dnnl_step(&k, bwpd, 4, wargs) != 0) return -1;
    snprintf(what, sizeof what, "oneDNN backward weights+bias, %s [%s]", layout, dnnl_impl(bwpd));
    report(what, time_call(dnnl_run, &k), flops);
    dnnl_ctx_free(&k);

    if (any) {
      /* the whole backward as an NCHW library would call it */
      if (dnnl_reorder_step(&k, plain_dst, mdd, eng) ||
          dnnl_reorder_step(&k, plain_dst, mwd, eng) ||
          dnnl_reorder_step(&k, plain_src, mws, eng) ||
          dnnl_reorder_step(&k, plain_wei, mwb, eng) || dnnl_step(&k, bdpd, 3, dargs) ||
          dnnl_step(&k, bwpd, 4, wargs) || dnnl_reorder_step(&k, mds, plain_dx, eng) ||
          dnnl_reorder_step(&k, mdw, plain_dw, eng))
        return -1;
      report("oneDNN backward all, blocked, with reorders", time_call(dnnl_run, &k), 2 * flops);
      dnnl_ctx_free(&k);
    }

    dnnl_memory_t mems[] = {ms, mw, mb, md, mdd, mds, mwd, mws, mdw, mdb, mwb};
    for (size_t i = 0; i < sizeof mems / sizeof mems[0]; i++) dnnl_memory_destroy(mems[i]);
    dnnl_primitive_desc_destroy(bwpd);
    dnnl_primitive_desc_destroy(bdpd);
    dnnl_primitive_desc_destroy(fpd);
  }
  dnnl_memory_destroy(plain_src);
  dnnl_memory_destroy(plain_wei);
  dnnl_memory_destroy(plain_dst);
  dnnl_memory_destroy(plain_dx);
  dnnl_memory_destroy(plain_dw);
  return 0;
}

/* One row of the summary: seconds per call of each path. */
typedef struct row {
  char name[64];
  double fwd[2], bwd_data[2], bwd_weights[2], bwd[2]; /* [0] gemm path, [1] oneDNN plan */
  double rule_fwd, rule_bwd;                          /* the plan the executor makes */
  unsigned rule;
  char impl[64];
} row;

static double timed(const char *what, bench_fn fn, void *ctx, double flops) {
  double t = time_call(fn, ctx);
  report(what, t, flops);
  return t;
}

/* Times the gemm path, a plan with everything on oneDNN, and the plan the executor's rule makes
 * on layer p: forward, backward data, backward weights and bias, and all of backward. */
static int bench_pt(const pt_conv_params *p, bool t, double flops, row *r) {
  pt_ctx k = {.p = *p, .t = t};
  unsigned seed = 1;
  size_t xn = (size_t)p->N * p->C * p->H * p->W, yn = (size_t)p->N * p->OC * p->OH * p->OW;
  size_t wn = (size_t)p->OC * (p->C / p->G) * p->KH * p->KW;
  size_t sn = (size_t)(t ? pt_conv_transpose2d_scratch(p) : pt_conv2d_scratch(p));
  k.x = malloc(xn * 4), k.dx = calloc(xn, 4);
  k.w = malloc(wn * 4), k.dw = calloc(wn, 4);
  k.b = malloc(p->OC * 4), k.db = calloc(p->OC, 4);
  k.y = malloc(yn * 4), k.dy = malloc(yn * 4);
  k.scratch = malloc((sn ? sn : 1) * 4);
  fill(k.x, xn, &seed), fill(k.w, wn, &seed), fill(k.b, p->OC, &seed), fill(k.dy, yn, &seed);
  r->fwd[0] = timed("gemm path: forward", gemm_fwd, &k, flops);
  r->bwd_data[0] = timed("gemm path: backward data", gemm_bwd_data, &k, flops);
  r->bwd_weights[0] = timed("gemm path: backward weights+bias", gemm_bwd_weights, &k, flops);
  r->bwd[0] = timed("gemm path: backward all", gemm_bwd_all, &k, 2 * flops);

  int rc = 0;
  pt_error err = {0};
  k.plan = pt_dnnl_conv_plan_create(p, t, true, PT_DNNL_ALL, &err);
  if (k.plan) {
    snprintf(r->impl, sizeof r->impl, "%s", pt_dnnl_conv_impl(k.plan));
    char what[128];
    snprintf(what, sizeof what, "oneDNN plan: forward [%s]", r->impl);
    r->fwd[1] = timed(what, plan_fwd, &k, flops);
    plan_fwd(&k); /* backward reuses the forward's blocked input and weights, as in a tick */
    r->bwd_data[1] = timed("oneDNN plan: backward data", plan_bwd_data, &k, flops);
    r->bwd_weights[1] = timed("oneDNN plan: backward weights+bias", plan_bwd_weights, &k, flops);
    r->bwd[1] = timed("oneDNN plan: backward all", plan_bwd_all, &k, 2 * flops);
    pt_dnnl_conv_plan_free(k.plan);
  } else {
    printf("  no oneDNN plan: %s\n", err.msg);
    rc = -1;
  }

  r->rule = pt_dnnl_conv_preferred(p, t);
  k.plan = r->rule ? pt_dnnl_conv_plan_create(p, t, true, r->rule | PT_DNNL_JIT_ONLY, &err) : NULL;
  r->rule = k.plan ? pt_dnnl_conv_ops(k.plan) : 0;
  if (k.plan) {
    r->rule_fwd = timed("executor's plan: forward", plan_fwd, &k, flops);
    plan_fwd(&k);
    timed("executor's plan: backward data", plan_bwd_data, &k, flops);
    timed("executor's plan: backward weights+bias", plan_bwd_weights, &k, flops);
    r->rule_bwd = timed("executor's plan: backward all", plan_bwd_all, &k, 2 * flops);
    pt_dnnl_conv_plan_free(k.plan);
  } else {
    r->rule_fwd = r->fwd[0];
    r->rule_bwd = r->bwd[0];
  }
  /* inference plans may run another kernel (Winograd on cpu/wino.c) */
  unsigned inf_ops = pt_dnnl_conv_preferred(p, t);
  k.plan = inf_ops ? pt_dnnl_conv_plan_create(p, t, false, inf_ops | PT_DNNL_JIT_ONLY, &err) : NULL;
  if (k.plan) {
    char what[128];
    snprintf(what, sizeof what, "executor's inference plan: forward [%s]",
             pt_dnnl_conv_impl(k.plan));
    timed(what, plan_fwd, &k, flops);
    pt_dnnl_conv_plan_free(k.plan);
  }
  free(k.x), free(k.dx), free(k.w), free(k.dw), free(k.b), free(k.db), free(k.y), free(k.dy);
  free(k.scratch);
  return rc;
}

/* One row-major product C (m, n) = A (m, k) B (k, n), on OpenBLAS or oneDNN directly. */
typedef struct shape_gemm {
  int m, n, k;
  bool onednn;
  float *a, *b, *c;
} shape_gemm;

static void shape_gemm_run(void *c) {
  shape_gemm *g = c;
  if (g->onednn)
    dnnl_sgemm('N', 'N', g->m, g->n, g->k, 1.0f, g->a, g->k, g->b, g->n, 0.0f, g->c, g->n);
  else
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, g->m, g->n, g->k, 1.0f, g->a, g->k, g->b,
                g->n, 0.0f, g->c, g->n);
}

/* OpenBLAS against oneDNN's sgemm on the products conv.c makes (M = output channels, N = pixels,
 * K = input channels x kernel area), which is what cpu/blas.c's choice between them rests on. */
static void bench_shape_gemms(void) {
  static const struct {
    const char *name;
    int m, n, k;
  } g[] = {
      {"1x1 16->10 32x32 (small's head)", 10, 32 * 32, 16},
      {"1x1 32->10 64x64 (large's head)", 10, 64 * 64, 32},
      {"3x3 16->16 32x32 im2col", 16, 32 * 32, 16 * 9},
      {"5x5 32->32 64x64 im2col", 32, 64 * 64, 32 * 25},
  };
  printf("sgemm on the gemm path's shapes, one core (pt_sgemm uses %s here):\n",
         pt_sgemm_library());
  for (size_t i = 0; i < sizeof g / sizeof g[0]; i++) {
    shape_gemm k = {g[i].m, g[i].n, g[i].k, false, NULL, NULL, NULL};
    unsigned seed = 5;
    k.a = malloc(sizeof(float) * k.m * k.k), k.b = malloc(sizeof(float) * k.k * k.n);
    k.c = malloc(sizeof(float) * k.m * k.n);
    fill(k.a, (size_t)k.m * k.k, &seed), fill(k.b, (size_t)k.k * k.n, &seed);
    double flops = 2.0 * k.m * k.n * k.k;
    char what[96];
    for (int lib = 0; lib < 2; lib++) {
      k.onednn = lib == 1;
      snprintf(what, sizeof what, "%s, %s", g[i].name, lib ? "dnnl_sgemm" : "cblas_sgemm");
      report(what, time_call(shape_gemm_run, &k), flops);
    }
    free(k.a), free(k.b), free(k.c);
  }
}

int main(int argc, char **argv) {
  if (!getenv("OMP_NUM_THREADS") || !getenv("OPENBLAS_NUM_THREADS")) {
    setenv("OMP_NUM_THREADS", "1", 0);
    setenv("OPENBLAS_NUM_THREADS", "1", 0);
    execv("/proc/self/exe", argv);
    perror("re-executing with one thread");
  }
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "-v") == 0)
      verbose = true;
    else if (strcmp(argv[i], "-s") == 0 && i + 1 < argc)
      only = argv[++i];
    else
      min_seconds = atof(argv[i]);
  }
  pt_blas_init();
  printf("threads: OMP_NUM_THREADS=%s OPENBLAS_NUM_THREADS=%s, OpenBLAS %d thread(s) [%s]\n",
         getenv("OMP_NUM_THREADS"), getenv("OPENBLAS_NUM_THREADS"), openblas_get_num_threads(),
         openblas_get_config());
  const dnnl_version_t *v = dnnl_version();
  printf("oneDNN %d.%d.%d, cpu isa %d\n", v->major, v->minor, v->patch,
         (int)dnnl_get_effective_cpu_isa());

  if (!only) {
    shape_gemm g = {1024, 1024, 1024, false, NULL, NULL, NULL};
    unsigned seed = 3;
    g.a = malloc(sizeof(float) << 20), g.b = malloc(sizeof(float) << 20);
    g.c = malloc(sizeof(float) << 20);
    fill(g.a, 1 << 20, &seed), fill(g.b, 1 << 20, &seed);
    printf("cblas_sgemm 1024x1024x1024, one core:\n");
    report("sgemm", time_call(shape_gemm_run, &g), 2.0 * 1024 * 1024 * 1024);
    free(g.a), free(g.b), free(g.c);
    bench_shape_gemms();
  }

  dnnl_engine_t eng;
  dnnl_stream_t stream;
  if (dnnl_engine_create(&eng, dnnl_cpu, 0) != dnnl_success ||
      dnnl_stream_create(&stream, eng, dnnl_stream_default_flags) != dnnl_success) {
    fprintf(stderr, "no oneDNN CPU engine\n");
    return 1;
  }

  /* Layers of the benchmark models and of the built-in ones. Pads keep the size (Conv) or
   * double it (the stride-2 ConvTranspose). */
  static const struct {
    const char *name;
    int C, H, OC, K, S, G;
    bool t;
  } shapes[] = {
      {"3x3 16->16 32x32", 16, 32, 16, 3, 1, 1, false},
      {"3x3 32->32 64x64", 32, 64, 32, 3, 1, 1, false},
      {"5x5 32->32 64x64", 32, 64, 32, 5, 1, 1, false},
      {"5x5 3->32 64x64", 3, 64, 32, 5, 1, 1, false},
      {"1x1 32->10 64x64", 32, 64, 10, 1, 1, 1, false},
      {"depthwise 3x3 32ch 64x64", 32, 64, 32, 3, 1, 32, false},
      {"convT 4x4 s2 32->16 16x16", 32, 16, 16, 4, 2, 1, true},
      /* more: first layers, heads, small images, the built-in models */
      {"3x3 3->16 32x32", 3, 32, 16, 3, 1, 1, false},
      {"3x3 3->32 64x64", 3, 64, 32, 3, 1, 1, false},
      {"1x1 16->10 32x32", 16, 32, 10, 1, 1, 1, false},
      {"1x1 32->32 64x64", 32, 64, 32, 1, 1, 1, false},
      {"1x1 64->64 16x16", 64, 16, 64, 1, 1, 1, false},
      {"3x3 16->16 8x8", 16, 8, 16, 3, 1, 1, false},
      {"3x3 64->64 8x8", 64, 8, 64, 3, 1, 1, false},
      {"3x3 32->32 16x16", 32, 16, 32, 3, 1, 1, false},
      {"3x3 24->24 32x32", 24, 32, 24, 3, 1, 1, false},
      {"3x3 8->8 32x32", 8, 32, 8, 3, 1, 1, false},
      {"3x3 g2 32->32 32x32", 32, 32, 32, 3, 1, 2, false},
      {"3x3 g4 64->64 32x32", 64, 32, 64, 3, 1, 4, false},
      {"depthwise 3x3 8ch 32x32", 8, 32, 8, 3, 1, 8, false},
      {"depthwise 5x5 32ch 32x32", 32, 32, 32, 5, 1, 32, false},
      {"3x3 s2 3->16 64x64", 3, 64, 16, 3, 2, 1, false},
      {"3x3 s2 16->32 32x32", 16, 32, 32, 3, 2, 1, false},
      {"3x3 16->32 32x32", 16, 32, 32, 3, 1, 1, false},
      {"3x3 16->32 16x16", 16, 16, 32, 3, 1, 1, false},
      {"convT 4x4 s2 16->3 32x32", 16, 32, 3, 4, 2, 1, true},
      {"convT 4x4 s2 64->32 8x8", 64, 8, 32, 4, 2, 1, true},
      {"convT 2x2 s2 32->32 16x16", 32, 16, 32, 2, 2, 1, true},
      {"convT 3x3 s1 32->32 32x32", 32, 32, 32, 3, 1, 1, true},
      {"convT 4x4 s2 8->8 16x16", 8, 16, 8, 4, 2, 1, true},
      {"convT depthwise 4x4 s2 32ch 16x16", 32, 16, 32, 4, 2, 32, true},
  };
  enum { NS = sizeof shapes / sizeof shapes[0] };
  row rows[NS];
  memset(rows, 0, sizeof rows);
  int rc = 0;
  bool picked[NS];
  for (size_t i = 0; i < NS; i++) {
    picked[i] = !only || strstr(shapes[i].name, only);
    if (!picked[i]) continue;
    const int K = shapes[i].K, S = shapes[i].S, H = shapes[i].H;
    const bool t = shapes[i].t;
    const int pad = t ? (K - S) / 2 : K / 2;
    const int OH = t ? (H - 1) * S + K - 2 * pad : (H + 2 * pad - K) / S + 1;
    pt_conv_params p = {.N = 1,
                        .C = shapes[i].C,
                        .H = H,
                        .W = H,
                        .OC = shapes[i].OC,
                        .OH = OH,
                        .OW = OH,
                        .KH = K,
                        .KW = K,
                        .SH = S,
                        .SW = S,
                        .DH = 1,
                        .DW = 1,
                        .PT = pad,
                        .PL = pad,
                        .PB = pad,
                        .PR = pad,
                        .G = shapes[i].G,
                        .has_bias = true};
    /* multiply-adds over the larger image: the output for Conv, the input's spread for
     * ConvTranspose */
    double flops = 2.0 * (t ? p.C : p.OC) * (t ? p.OC : p.C) / p.G * K * K *
                   (t ? (double)p.H * p.W : (double)p.OH * p.OW);
    printf("%s, batch 1 (%.1f MFLOP per pass):\n", shapes[i].name, flops * 1e-6);
    snprintf(rows[i].name, sizeof rows[i].name, "%s", shapes[i].name);
    if (bench_pt(&p, t, flops, &rows[i]) != 0) rc = 1;
    if (verbose && !t && p.G == 1 && bench_dnnl(&p, flops, eng, stream) != 0) rc = 1;
  }

  printf(
      "\nms per call, one core, batch 1: the gemm path (gemm), everything on oneDNN (dnnl), and "
      "what"
      "\nthe executor runs (exec: F, D, W = forward, backward data, backward weights on oneDNN)\n");
  printf("%-26s %-21s %-21s %-21s %-21s %-28s\n", "", "forward", "backward data",
         "backward weights", "backward all", "exec");
  printf("%-26s", "layer");
  for (int i = 0; i < 4; i++) printf(" %6s %6s %6s ", "gemm", "dnnl", "x");
  printf(" %-4s %6s %6s %5s %5s\n", "ops", "fwd", "bwd", "fwd x", "bwd x");
  for (size_t i = 0; i < NS; i++) {
    if (!picked[i]) continue;
    const row *r = &rows[i];
    printf("%-26s", r->name);
    const double *col[4] = {r->fwd, r->bwd_data, r->bwd_weights, r->bwd};
    for (int j = 0; j < 4; j++)
      printf(" %6.3f %6.3f %5.2fx", col[j][0] * 1e3, col[j][1] * 1e3,
             col[j][1] > 0 ? col[j][0] / col[j][1] : 0);
    printf("  %c%c%c  %6.3f %6.3f %4.2fx %4.2fx\n", r->rule & PT_DNNL_FORWARD ? 'F' : '-',
           r->rule & PT_DNNL_BACKWARD_DATA ? 'D' : '-',
           r->rule & PT_DNNL_BACKWARD_WEIGHTS ? 'W' : '-', r->rule_fwd * 1e3, r->rule_bwd * 1e3,
           r->fwd[0] / r->rule_fwd, r->bwd[0] / r->rule_bwd);
  }
  printf("most cores used by one call: %.2f\n", worst_cores);
  dnnl_stream_destroy(stream);
  dnnl_engine_destroy(eng);
  return rc;
}
