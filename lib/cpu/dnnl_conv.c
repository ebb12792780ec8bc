/* Conv and ConvTranspose on oneDNN's blocked-layout kernels, forward and backward (see
 * dnnl_conv.h).
 *
 * A plan is a set of buffers and the primitives that read and write them. Each tensor the caller
 * holds (input, weights, output and their gradients) has a "user" memory object in the caller's
 * layout whose data handle is set at every call, and a buffer in the layout the primitive chose
 * ("any"): the user memory itself when the layouts agree, else a buffer of the plan's own with a
 * reorder between the two. Inputs are reordered in before the primitive that reads them, lazily and
 * at most once per call; buffers of the same tensor in the same layout are shared between forward,
 * backward data and backward weights, so backward reuses the forward's blocked input and weights
 * (see `from`). Outputs: the forward output is reordered out (overwriting); gradients are reordered
 * out with a sum post-op, which adds them into the caller's buffer as the accumulate rule of ops.h
 * wants, oneDNN's own primitives only ever overwrite.
 *
 * Inference plans keep the blocked weights between calls (`from` of the weights buffer survives a
 * forward; it is cleared at every forward of a train plan). A fused ReLU is a second forward
 * primitive with an eltwise post-op, on the same buffers, run while the inputs are finite (see
 * inputs_finite); otherwise, and where conv.c runs the forward or the bias is added here, it is a
 * pass over the output. Two linked inference plans (pt_dnnl_conv_link) share one blocked buffer:
 * the second one's input buffer is the first one's output buffer, and neither runs its reorder.
 *
 * A computation not in the plan's `ops` runs on conv.c with the plan's own scratch, so one layer
 * may mix the two (e.g. a first layer of 3 input channels: forward and weights on oneDNN, the
 * input gradient on conv.c). ConvTranspose's bias, and its gradient, are done here rather than by
 * oneDNN (see bias_outside).
 *
 * ONNX to oneDNN: oneDNN counts dilation from 0 (ONNX from 1); weights are (OC, IC, KH, KW), or
 * (G, OC/G, IC/G, KH, KW) with groups, for convolution and deconvolution alike, so ONNX's Conv
 * weights are oihw / goihw and ConvTranspose's (C, OC/G, KH, KW) are iohw / giohw. ConvTranspose's
 * output_padding needs nothing: oneDNN checks the shape relation with integer division.
 *
 * Every primitive uses a user-managed scratchpad, one buffer per plan: a primitive may be shared
 * between plans through oneDNN's primitive cache, and its library-managed scratchpad would then be
 * shared between threads as well. */
#include "dnnl_conv.h"
#include "wino.h"

/* Where F(2x2, r x r) beat direct convolution (pt_dnnl_conv_preferred's figures): 5x5 layers,
 * and 3x3 ones with 32 output channels or more; with 16, F(2x2, 3x3) was no faster, so such a
 * layer's gradients stay direct (its forward may still run on F(4x4, 3x3)). */
static bool f2x2_suits(const pt_conv_params *p) {
  return p->KH == 5 || p->OC >= 32;
}

#if PT_HAVE_DNNL

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dnnl.h>
#include <omp.h>
#include "../pointwise.h"

bool pt_dnnl_available(void) {
  return true;
}

/* The tensors of a convolution, as seen by the caller. */
enum { T_SRC, T_WEI, T_BIA, T_DST, T_DDST, T_DSRC, T_DWEI, T_DBIA, T_COUNT };

#define MAX_OBJS 48 /* memories and primitives a plan creates: about 30 at most */
#define MAX_BUFS 12
#define MAX_ARGS 6

typedef struct step {
  dnnl_primitive_t prim; /* NULL: nothing to run */
  int nargs;
  dnnl_exec_arg_t args[MAX_ARGS];
  dnnl_memory_desc_t scratch_md; /* zero size when the primitive needs none */
} step;

typedef struct buf {
  int role;          /* T_* */
  dnnl_memory_t mem; /* what the primitives read or write */
  step reorder;      /* caller <-> mem; no primitive when mem is the caller's memory */
  const float *from; /* inputs: the caller pointer mem was last filled from, NULL: stale */
  bool linked; /* shared with a linked plan, which fills (input) or reads (output) it: no reorder */
} buf;

/* A convolution primitive with the buffers it reads (refreshed before) and writes (handed to the
 * caller after). */
typedef struct conv_step {
  step run;
  int in[3], n_in;
  int out[2], n_out;
} conv_step;

struct pt_dnnl_conv {
  pt_conv_params p;
  bool transpose, train;
  unsigned ops;        /* PT_DNNL_* computations on oneDNN; conv.c runs the others */
  bool bias_outside;   /* the bias is added and its gradient summed here, not by oneDNN */
  bool relu;           /* forward writes relu(conv) (PT_DNNL_RELU) */
  bool winograd;       /* PT_DNNL_WINOGRAD */
  pt_wino *k_fwd;      /* the forward on cpu/wino.c, F(2x2, r x r) */
  pt_wino4 *k4;        /* or F(4x4, 3x3) */
  pt_wino *k_data;     /* the input gradient on cpu/wino.c */
  pt_wino *k_wts;      /* the weights' gradient on cpu/wino.c (the bias's is a sum here) */
  float *direct;       /* or the forward on cpu/direct.c, with its scratch */
  unsigned wino_ops;   /* the PT_DNNL_* computations those run; the plan's oneDNN part is built
                        * for the others (none: the plan holds nothing of oneDNN's) */
  float *gemm_scratch; /* conv.c's scratch, for the computations it runs */
  dnnl_engine_t eng;
  dnnl_stream_t strm;
  dnnl_memory_t user[T_COUNT]; /* caller layouts; data handles set per call */
  const float *ptr[T_COUNT];   /* this call's caller pointers */
  buf bufs[MAX_BUFS];
  int n_bufs;
  conv_step fwd, bwd_data, bwd_weights;
  /* with `relu`, where oneDNN runs the forward and adds the bias: fwd with the ReLU as a post-op,
   * on the same buffers, for finite inputs (see inputs_finite) */
  conv_step fwd_relu;
  const float *checked_w, *checked_b; /* the parameters params_finite is about; NULL: unknown */
  bool params_finite;
  bool out_finite;              /* the latest forward ran fwd_relu, on finite inputs */
  const pt_dnnl_conv *src_plan; /* linked: the plan whose output is this one's input */
  bool src_shared;              /* ... in the blocked buffer of its own that this one reads */
  float *zero_bias;             /* (OC): stands in for a missing bias */
  void *scratch;
  char impl[64];
  /* every object created, destroyed by pt_dnnl_conv_plan_free */
  dnnl_memory_t mems[MAX_OBJS];
  int n_mems;
  dnnl_primitive_t prims[MAX_OBJS];
  int n_prims;
};

/* ---- the calling thread alone ---- */

/* oneDNN runs on the calling thread's OpenMP thread count, read when a primitive is created (it
 * sizes the kernel's work split) and when it runs: one, so a stage stays on its core. The count is
 * per thread (an OpenMP ICV), so this touches no other thread; it is restored on the way out. */
static int one_thread_enter(void) {
  int prev = omp_get_max_threads();
  if (prev != 1) omp_set_num_threads(1);
  return prev;
}

static void one_thread_leave(int prev) {
  if (prev != 1) omp_set_num_threads(prev);
}

/* ---- building a plan ---- */

static const char *status_name(dnnl_status_t s) {
  switch (s) {
  case dnnl_success:
    return "success";
  case dnnl_out_of_memory:
    return "out of memory";
  case dnnl_invalid_arguments:
    return "invalid arguments";
  case dnnl_unimplemented:
    return "unimplemented";
  default:
    return "error";
  }
}

#define TRY(call)                                                                                  \
  do {                                                                                             \
    dnnl_status_t st_ = (call);                                                                    \
    if (st_ != dnnl_success) {                                                                     \
      pt_error_set(err, st_ == dnnl_out_of_memory ? PT_ERR_NOMEM : PT_ERR_UNSUPPORTED,             \
                   "oneDNN %s: %s (line %d)", what, status_name(st_), __LINE__);                   \
      return -1;                                                                                   \
    }                                                                                              \
  } while (0)

static int new_memory(pt_dnnl_conv *c, dnnl_memory_t *m, const dnnl_memory_desc_t *md, void *h,
                      const char *what, pt_error *err) {
  if (c->n_mems == MAX_OBJS) {
    pt_error_set(err, PT_ERR_UNSUPPORTED, "oneDNN %s: too many objects", what);
    return -1;
  }
  TRY(dnnl_memory_create(m, md, c->eng, h));
  c->mems[c->n_mems++] = *m;
  return 0;
}

static const dnnl_memory_desc_t *md_of(dnnl_memory_t m) {
  const dnnl_memory_desc_t *md = NULL;
  dnnl_memory_get_memory_desc(m, &md);
  return md;
}

/* Turns primitive descriptor pd (consumed) into s, with a user-managed scratchpad to be bound by
 * bind_scratchpad(). */
static int make_step(pt_dnnl_conv *c, step *s, dnnl_primitive_desc_t pd, const char *what,
                     pt_error *err) {
  const dnnl_memory_desc_t *sp = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
  if (sp && dnnl_memory_desc_get_size(sp) > 0) s->scratch_md = *sp;
  dnnl_status_t st =
      c->n_prims < MAX_OBJS ? dnnl_primitive_create(&s->prim, pd) : dnnl_out_of_memory;
  dnnl_primitive_desc_destroy(pd);
  TRY(st);
  c->prims[c->n_prims++] = s->prim;
  return 0;
}

static void add_arg(step *s, int arg, dnnl_memory_t m) {
  s->args[s->nargs].arg = arg;
  s->args[s->nargs].memory = m;
  s->nargs++;
}

static dnnl_primitive_attr_t user_scratchpad_attr(void) {
  dnnl_primitive_attr_t a = NULL;
  if (dnnl_primitive_attr_create(&a) != dnnl_success) return NULL;
  dnnl_primitive_attr_set_scratchpad_mode(a, dnnl_scratchpad_mode_user);
  return a;
}

/* A reorder from memory `from` to memory `to`; with `add`, it adds into `to` (a sum post-op). */
static int make_reorder(pt_dnnl_conv *c, step *s, dnnl_memory_t from, dnnl_memory_t to, bool add,
                        pt_error *err) {
  const char *what = "reorder";
  dnnl_primitive_attr_t attr = user_scratchpad_attr();
  dnnl_post_ops_t po = NULL;
  if (!attr) return pt_error_set(err, PT_ERR_NOMEM, "oneDNN: no attribute"), -1;
  if (add) {
    if (dnnl_post_ops_create(&po) != dnnl_success || dnnl_post_ops_append_sum(po, 1.0f) ||
        dnnl_primitive_attr_set_post_ops(attr, po)) {
      dnnl_post_ops_destroy(po);
      dnnl_primitive_attr_destroy(attr);
      return pt_error_set(err, PT_ERR_UNSUPPORTED, "oneDNN: no sum post-op on reorders"), -1;
    }
    dnnl_post_ops_destroy(po);
  }
  dnnl_primitive_desc_t pd;
  dnnl_status_t st =
      dnnl_reorder_primitive_desc_create(&pd, md_of(from), c->eng, md_of(to), c->eng, attr);
  dnnl_primitive_attr_destroy(attr);
  TRY(st);
  if (make_step(c, s, pd, what, err)) return -1;
  add_arg(s, DNNL_ARG_FROM, from);
  add_arg(s, DNNL_ARG_TO, to);
  return 0;
}

/* The buffer holding tensor `role` in layout `md` for a primitive: an existing one of the same
 * tensor and layout, the caller's memory when its layout is md (not for gradients, which must be
 * added, not written), or a new one with its reorder. Returns its index, -1 on error. */
static int get_buf(pt_dnnl_conv *c, int role, const dnnl_memory_desc_t *md, pt_error *err) {
  for (int i = 0; i < c->n_bufs; i++)
    if (c->bufs[i].role == role && dnnl_memory_desc_equal(md_of(c->bufs[i].mem), md)) return i;
  if (c->n_bufs == MAX_BUFS)
    return pt_error_set(err, PT_ERR_UNSUPPORTED, "oneDNN: too many buffers"), -1;
  buf *b = &c->bufs[c->n_bufs];
  memset(b, 0, sizeof *b);
  b->role = role;
  const bool grad = role == T_DSRC || role == T_DWEI || role == T_DBIA;
  const bool output = grad || role == T_DST;
  dnnl_memory_t user = c->user[role];
  if (!grad && dnnl_memory_desc_equal(md_of(user), md)) {
    b->mem = user;
  } else {
    if (new_memory(c, &b->mem, md, DNNL_MEMORY_ALLOCATE, "buffer", err)) return -1;
    if (output ? make_reorder(c, &b->reorder, b->mem, user, grad, err)
               : make_reorder(c, &b->reorder, user, b->mem, false, err))
      return -1;
  }
  return c->n_bufs++;
}

/* Adds the argument `arg` of primitive pd, tensor `role`, to cs. */
static int bind(pt_dnnl_conv *c, conv_step *cs, dnnl_primitive_desc_t pd, dnnl_query_t q, int index,
                int arg, int role, pt_error *err) {
  const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, q, index);
  if (!md)
    return pt_error_set(err, PT_ERR_UNSUPPORTED, "oneDNN: no layout for argument %d", arg), -1;
  int i = get_buf(c, role, md, err);
  if (i < 0) return -1;
  add_arg(&cs->run, arg, c->bufs[i].mem);
  if (role == T_DST || role == T_DSRC || role == T_DWEI || role == T_DBIA)
    cs->out[cs->n_out++] = i;
  else
    cs->in[cs->n_in++] = i;
  return 0;
}

/* One scratchpad buffer, as large as the largest any step needs, bound to every step that needs
 * one (the steps of a plan run one after another). */
static int bind_scratchpad(pt_dnnl_conv *c, pt_error *err) {
  step *steps[4 + MAX_BUFS];
  int n = 0;
  conv_step *cs[4] = {&c->fwd, &c->fwd_relu, &c->bwd_data, &c->bwd_weights};
  for (int i = 0; i < 4; i++)
    if (cs[i]->run.prim) steps[n++] = &cs[i]->run;
  for (int i = 0; i < c->n_bufs; i++)
    if (c->bufs[i].reorder.prim) steps[n++] = &c->bufs[i].reorder;
  size_t bytes = 0;
  for (int i = 0; i < n; i++) {
    size_t b = dnnl_memory_desc_get_size(&steps[i]->scratch_md);
    if (b > bytes) bytes = b;
  }
  if (!bytes) return 0;
  if (!(c->scratch = aligned_alloc(64, (bytes + 63) / 64 * 64)))
    return pt_error_set(err, PT_ERR_NOMEM, "oneDNN: no memory for a scratchpad"), -1;
  for (int i = 0; i < n; i++) {
    if (!dnnl_memory_desc_get_size(&steps[i]->scratch_md)) continue;
    dnnl_memory_t m;
    if (new_memory(c, &m, &steps[i]->scratch_md, c->scratch, "scratchpad", err)) return -1;
    add_arg(steps[i], DNNL_ARG_SCRATCHPAD, m);
  }
  return 0;
}

/* The kernel oneDNN picked for pd: its JIT-compiled blocked-layout kernels are named "jit...", or
 * "brg..." / "brd..." (batch-reduce gemm); the others are its plain-layout gemm kernels
 * ("x64:gemm:...") and reference loops ("ref:..."). */
static bool is_jit(dnnl_primitive_desc_t pd) {
  const char *impl = "";
  dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
  return impl && (strncmp(impl, "jit", 3) == 0 || strncmp(impl, "brg", 3) == 0 ||
                  strncmp(impl, "brd", 3) == 0);
}

static void destroy_pd(dnnl_primitive_desc_t *pd) {
  if (*pd) dnnl_primitive_desc_destroy(*pd);
  *pd = NULL;
}

static int plan_build(pt_dnnl_conv *c, bool jit_only, pt_error *err) {
  const pt_conv_params *p = &c->p;
  const char *what = "plan";
  const int G = p->G;
  dnnl_dims_t src_d = {p->N, p->C, p->H, p->W}, dst_d = {p->N, p->OC, p->OH, p->OW};
  dnnl_dims_t wei_d = {p->OC, p->C, p->KH, p->KW}, wei_g = {G, p->OC / G, p->C / G, p->KH, p->KW};
  dnnl_dims_t bia_d = {p->OC};
  dnnl_dims_t strides = {p->SH, p->SW}, dil = {p->DH - 1, p->DW - 1};
  dnnl_dims_t pad_l = {p->PT, p->PL}, pad_r = {p->PB, p->PR};
  const dnnl_format_tag_t wtag =
      c->transpose ? (G > 1 ? dnnl_giohw : dnnl_iohw) : (G > 1 ? dnnl_goihw : dnnl_oihw);
  const int wnd = G > 1 ? 5 : 4;
  const dnnl_dim_t *wdims = G > 1 ? wei_g : wei_d;

  TRY(dnnl_engine_create(&c->eng, dnnl_cpu, 0));
  TRY(dnnl_stream_create(&c->strm, c->eng, dnnl_stream_default_flags));

  /* the caller's layouts, and the same shapes in any layout for the primitives to choose */
  dnnl_memory_desc_t u_src, u_wei, u_bia, u_dst, a_src, a_wei, a_dst, no_bia;
  memset(&no_bia, 0, sizeof no_bia);
  TRY(dnnl_memory_desc_init_by_tag(&u_src, 4, src_d, dnnl_f32, dnnl_nchw));
  TRY(dnnl_memory_desc_init_by_tag(&u_dst, 4, dst_d, dnnl_f32, dnnl_nchw));
  TRY(dnnl_memory_desc_init_by_tag(&u_wei, wnd, wdims, dnnl_f32, wtag));
  TRY(dnnl_memory_desc_init_by_tag(&u_bia, 1, bia_d, dnnl_f32, dnnl_x));
  TRY(dnnl_memory_desc_init_by_tag(&a_src, 4, src_d, dnnl_f32, dnnl_format_tag_any));
  TRY(dnnl_memory_desc_init_by_tag(&a_dst, 4, dst_d, dnnl_f32, dnnl_format_tag_any));
  TRY(dnnl_memory_desc_init_by_tag(&a_wei, wnd, wdims, dnnl_f32, dnnl_format_tag_any));
  const dnnl_memory_desc_t *bia = p->has_bias && !c->bias_outside ? &u_bia : &no_bia;
  const dnnl_memory_desc_t *umd[T_COUNT] = {&u_src, &u_wei, &u_bia, &u_dst,
                                            &u_dst, &u_src, &u_wei, &u_bia};
  for (int r = 0; r < T_COUNT; r++)
    if (new_memory(c, &c->user[r], umd[r], DNNL_MEMORY_NONE, "user memory", err)) return -1;

  /* The forward descriptor is made even when conv.c runs the forward: the backward ones need it
   * as a hint. */
  dnnl_primitive_attr_t attr = user_scratchpad_attr();
  if (!attr) return pt_error_set(err, PT_ERR_NOMEM, "oneDNN: no attribute"), -1;
  dnnl_convolution_desc_t fd, bdd, bwd;
  dnnl_primitive_desc_t fpd = NULL, bdpd = NULL, bwpd = NULL;
  dnnl_status_t st;
  /* forward_training also for inference: for it oneDNN 2.6 picks its JIT kernels, where for
   * forward_inference it picks brgemm-based ones that ran up to 2.5x slower here at batch 1
   * (bench/conv_bench); and a layer then computes the same bits whether or not it trains */
  const dnnl_prop_kind_t prop = dnnl_forward_training;
  if (c->transpose) {
    st = dnnl_dilated_deconvolution_forward_desc_init(&fd, prop, dnnl_deconvolution_direct, &a_src,
                                                      &a_wei, bia, &a_dst, strides, dil, pad_l,
                                                      pad_r);
  } else {
    st =
        dnnl_dilated_convolution_forward_desc_init(&fd, prop, dnnl_convolution_direct, &a_src,
                                                   &a_wei, bia, &a_dst, strides, dil, pad_l, pad_r);
  }
  if (st == dnnl_success) st = dnnl_primitive_desc_create(&fpd, &fd, attr, c->eng, NULL);
  if (st == dnnl_success && (c->ops & PT_DNNL_BACKWARD_DATA)) {
    if (c->transpose)
      st = dnnl_dilated_deconvolution_backward_data_desc_init(
          &bdd, dnnl_deconvolution_direct, &a_src, &a_wei, &a_dst, strides, dil, pad_l, pad_r);
    else
      st = dnnl_dilated_convolution_backward_data_desc_init(
          &bdd, dnnl_convolution_direct, &a_src, &a_wei, &a_dst, strides, dil, pad_l, pad_r);
    if (st == dnnl_success) st = dnnl_primitive_desc_create(&bdpd, &bdd, attr, c->eng, fpd);
  }
  if (st == dnnl_success && (c->ops & PT_DNNL_BACKWARD_WEIGHTS)) {
    if (c->transpose)
      st = dnnl_dilated_deconvolution_backward_weights_desc_init(
          &bwd, dnnl_deconvolution_direct, &a_src, &a_wei, bia, &a_dst, strides, dil, pad_l, pad_r);
    else
      st = dnnl_dilated_convolution_backward_weights_desc_init(
          &bwd, dnnl_convolution_direct, &a_src, &a_wei, bia, &a_dst, strides, dil, pad_l, pad_r);
    if (st == dnnl_success) st = dnnl_primitive_desc_create(&bwpd, &bwd, attr, c->eng, fpd);
  }
  dnnl_primitive_attr_destroy(attr);
  what = c->transpose ? "deconvolution" : "convolution";
  if (st != dnnl_success) {
    destroy_pd(&fpd);
    destroy_pd(&bdpd);
    destroy_pd(&bwpd);
  }
  TRY(st);
  if (jit_only) {
    if (!is_jit(fpd)) c->ops &= ~(unsigned)PT_DNNL_FORWARD;
    if (bdpd && !is_jit(bdpd)) c->ops &= ~(unsigned)PT_DNNL_BACKWARD_DATA, destroy_pd(&bdpd);
    if (bwpd && !is_jit(bwpd)) c->ops &= ~(unsigned)PT_DNNL_BACKWARD_WEIGHTS, destroy_pd(&bwpd);
  }
  if (c->ops & PT_DNNL_FORWARD) {
    const char *impl = "?";
    dnnl_primitive_desc_query(fpd, dnnl_query_impl_info_str, 0, &impl);
    snprintf(c->impl, sizeof c->impl, "%s", impl);
  } else {
    snprintf(c->impl, sizeof c->impl, "gemm");
    destroy_pd(&fpd);
  }
  if (!c->ops) {
    pt_error_set(err, PT_ERR_UNSUPPORTED, "oneDNN: no JIT kernel for this %s", what);
    return -1;
  }

  /* The forward with the ReLU as a post-op, in the layouts the plain one chose so that the two
   * share every buffer; none where oneDNN has no (JIT) kernel for it, and the ReLU is then a pass
   * over the output. */
  dnnl_primitive_desc_t rpd = NULL;
  if (fpd && c->relu && !(c->bias_outside && p->has_bias)) {
    dnnl_convolution_desc_t rd = fd;
    rd.src_desc = *dnnl_primitive_desc_query_md(fpd, dnnl_query_src_md, 0);
    rd.weights_desc = *dnnl_primitive_desc_query_md(fpd, dnnl_query_weights_md, 0);
    rd.dst_desc = *dnnl_primitive_desc_query_md(fpd, dnnl_query_dst_md, 0);
    dnnl_primitive_attr_t rattr = user_scratchpad_attr();
    dnnl_post_ops_t po = NULL;
    if (rattr && dnnl_post_ops_create(&po) == dnnl_success &&
        dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_relu, 0.0f, 0.0f) == dnnl_success &&
        dnnl_primitive_attr_set_post_ops(rattr, po) == dnnl_success &&
        dnnl_primitive_desc_create(&rpd, &rd, rattr, c->eng, NULL) == dnnl_success && jit_only &&
        !is_jit(rpd))
      destroy_pd(&rpd);
    if (po) dnnl_post_ops_destroy(po);
    if (rattr) dnnl_primitive_attr_destroy(rattr);
  }

  /* Buffers are bound before each primitive descriptor is consumed by make_step. The forward's
   * go first, so backward finds and shares them where the layouts agree. */
  int rc = 0;
  if (fpd) {
    rc = bind(c, &c->fwd, fpd, dnnl_query_src_md, 0, DNNL_ARG_SRC, T_SRC, err) ||
         bind(c, &c->fwd, fpd, dnnl_query_weights_md, 0, DNNL_ARG_WEIGHTS, T_WEI, err) ||
         bind(c, &c->fwd, fpd, dnnl_query_dst_md, 0, DNNL_ARG_DST, T_DST, err);
    if (!rc && bia != &no_bia) add_arg(&c->fwd.run, DNNL_ARG_BIAS, c->user[T_BIA]);
  }
  if (!rc && bdpd)
    rc = bind(c, &c->bwd_data, bdpd, dnnl_query_diff_dst_md, 0, DNNL_ARG_DIFF_DST, T_DDST, err) ||
         bind(c, &c->bwd_data, bdpd, dnnl_query_weights_md, 0, DNNL_ARG_WEIGHTS, T_WEI, err) ||
         bind(c, &c->bwd_data, bdpd, dnnl_query_diff_src_md, 0, DNNL_ARG_DIFF_SRC, T_DSRC, err);
  if (!rc && bwpd) {
    rc =
        bind(c, &c->bwd_weights, bwpd, dnnl_query_src_md, 0, DNNL_ARG_SRC, T_SRC, err) ||
        bind(c, &c->bwd_weights, bwpd, dnnl_query_diff_dst_md, 0, DNNL_ARG_DIFF_DST, T_DDST, err) ||
        bind(c, &c->bwd_weights, bwpd, dnnl_query_diff_weights_md, 0, DNNL_ARG_DIFF_WEIGHTS, T_DWEI,
             err);
    if (!rc && bia != &no_bia)
      rc = bind(c, &c->bwd_weights, bwpd, dnnl_query_diff_weights_md, 1, DNNL_ARG_DIFF_BIAS, T_DBIA,
                err);
  }
  /* make_step consumes the descriptors, also after an error */
  if (!rc && rpd) { /* the same arguments: fwd's buffers are in rpd's layouts */
    c->fwd_relu = c->fwd;
    memset(&c->fwd_relu.run.scratch_md, 0, sizeof c->fwd_relu.run.scratch_md);
    c->fwd_relu.run.prim = NULL;
    rc = make_step(c, &c->fwd_relu.run, rpd, what, err);
  } else if (rpd) {
    destroy_pd(&rpd);
  }
  int rc2 = fpd ? make_step(c, &c->fwd.run, fpd, what, err) : 0;
  int rc3 = bdpd ? make_step(c, &c->bwd_data.run, bdpd, what, err) : 0;
  int rc4 = bwpd ? make_step(c, &c->bwd_weights.run, bwpd, what, err) : 0;
  if (rc || rc2 || rc3 || rc4) return -1;
  if (p->has_bias && !(c->zero_bias = calloc(p->OC, sizeof(float))))
    return pt_error_set(err, PT_ERR_NOMEM, "oneDNN: out of memory"), -1;

  return bind_scratchpad(c, err);
}

#undef TRY

/* Destroys everything of oneDNN's that c holds, leaving a plan with no oneDNN part. */
static void drop_dnnl(pt_dnnl_conv *c) {
  for (int i = 0; i < c->n_prims; i++) dnnl_primitive_destroy(c->prims[i]);
  for (int i = 0; i < c->n_mems; i++) dnnl_memory_destroy(c->mems[i]);
  if (c->strm) dnnl_stream_destroy(c->strm);
  if (c->eng) dnnl_engine_destroy(c->eng);
  free(c->scratch);
  free(c->zero_bias);
  c->n_prims = c->n_mems = c->n_bufs = 0;
  c->strm = NULL;
  c->eng = NULL;
  c->scratch = NULL;
  c->zero_bias = NULL;
  c->bias_outside = false;
  memset(c->user, 0, sizeof c->user);
  memset(c->bufs, 0, sizeof c->bufs);
  memset(&c->fwd, 0, sizeof c->fwd);
  memset(&c->fwd_relu, 0, sizeof c->fwd_relu);
  memset(&c->bwd_data, 0, sizeof c->bwd_data);
  memset(&c->bwd_weights, 0, sizeof c->bwd_weights);
}

pt_dnnl_conv *pt_dnnl_conv_plan_create(const pt_conv_params *p, bool transpose, bool train,
                                       unsigned ops, pt_error *err) {
  const unsigned flags = PT_DNNL_JIT_ONLY | PT_DNNL_RELU | PT_DNNL_WINOGRAD;
  ops &= (train ? (unsigned)PT_DNNL_ALL : (unsigned)PT_DNNL_FORWARD) | flags;
  if (!(ops & PT_DNNL_ALL)) {
    pt_error_set(err, PT_ERR_UNSUPPORTED, "no computation asked of oneDNN");
    return NULL;
  }
  pt_dnnl_conv *c = calloc(1, sizeof *c);
  if (!c) {
    pt_error_set(err, PT_ERR_NOMEM, "oneDNN: out of memory");
    return NULL;
  }
  c->p = *p;
  c->transpose = transpose;
  c->train = train;
  c->ops = ops & PT_DNNL_ALL;
  c->relu = (ops & PT_DNNL_RELU) != 0;
  c->winograd = (ops & PT_DNNL_WINOGRAD) && !transpose;
  snprintf(c->impl, sizeof c->impl, "gemm");
  /* stride-1 layers of few taps on cpu/direct.c; 3x3 and 5x5 stride-1 layers on cpu/wino.c;
   * oneDNN keeps what they do not take (an input gradient of other than a multiple of 16
   * channels) */
  if (!transpose && (c->ops & PT_DNNL_FORWARD) && pt_direct_few_taps(p)) {
    if (!(c->direct =
              aligned_alloc(64, ((size_t)pt_direct_scratch(p) * sizeof(float) + 63) / 64 * 64))) {
      pt_error_set(err, PT_ERR_NOMEM, "out of memory for convolution scratch");
      goto fail;
    }
    c->wino_ops |= PT_DNNL_FORWARD;
  } else if (c->winograd && (c->ops & PT_DNNL_FORWARD) && pt_wino4_fits(p)) {
    if (!(c->k4 = pt_wino4_create(p, c->relu, err))) goto fail;
    c->wino_ops |= PT_DNNL_FORWARD;
  } else if (c->winograd && (c->ops & PT_DNNL_FORWARD) && pt_wino_fits(p)) {
    if (!(c->k_fwd = pt_wino_create(p, c->relu, err))) goto fail;
    c->wino_ops |= PT_DNNL_FORWARD;
  }
  const bool wino_grads = c->winograd && f2x2_suits(p);
  if (wino_grads && (c->ops & PT_DNNL_BACKWARD_DATA) && pt_wino_backward_data_fits(p)) {
    if (!(c->k_data = pt_wino_create_backward_data(p, err))) goto fail;
    c->wino_ops |= PT_DNNL_BACKWARD_DATA;
  }
  if (wino_grads && (c->ops & PT_DNNL_BACKWARD_WEIGHTS) && pt_wino_fits(p)) {
    if (!(c->k_wts = pt_wino_create_backward_weights(p, err))) goto fail;
    c->wino_ops |= PT_DNNL_BACKWARD_WEIGHTS;
  }
  c->ops &= ~c->wino_ops;
  if (c->ops) {
    /* oneDNN's deconvolution adds the bias, and sums its gradient, in a slow generic loop (0.1
     * ms on a 16x32x32 output, more than the deconvolution itself) */
    c->bias_outside = transpose;
    int prev = one_thread_enter();
    int rc = plan_build(c, (ops & PT_DNNL_JIT_ONLY) != 0, err);
    one_thread_leave(prev);
    if (rc && !c->wino_ops) goto fail;
    if (rc) { /* no oneDNN kernel for what wino.c left: conv.c runs it */
      drop_dnnl(c);
      c->ops = 0;
      pt_error_clear(err);
      snprintf(c->impl, sizeof c->impl, "gemm");
    }
  }
  if (c->k_fwd) snprintf(c->impl, sizeof c->impl, "wino:F(2x2,%dx%d)", p->KH, p->KW);
  if (c->k4) snprintf(c->impl, sizeof c->impl, "wino:F(4x4,3x3)");
  if (c->direct) snprintf(c->impl, sizeof c->impl, "direct");
  c->ops |= c->wino_ops;
  /* conv.c's scratch, when it runs any of the computations the plan is for (also where wino.c
   * runs the others and oneDNN none) */
  const unsigned needed = train ? (unsigned)PT_DNNL_ALL : (unsigned)PT_DNNL_FORWARD;
  if (needed & ~c->ops) {
    int64_t n = transpose ? pt_conv_transpose2d_scratch(p) : pt_conv2d_scratch(p);
    if (!(c->gemm_scratch = aligned_alloc(64, ((size_t)n * sizeof(float) + 63) / 64 * 64 + 64))) {
      pt_error_set(err, PT_ERR_NOMEM, "out of memory for convolution scratch");
      goto fail;
    }
  }
  return c;
fail:
  pt_dnnl_conv_plan_free(c);
  return NULL;
}

void pt_dnnl_conv_plan_free(pt_dnnl_conv *c) {
  if (!c) return;
  pt_wino_free(c->k_fwd);
  pt_wino4_free(c->k4);
  pt_wino_free(c->k_data);
  pt_wino_free(c->k_wts);
  drop_dnnl(c);
  free(c->gemm_scratch);
  free(c->direct);
  free(c);
}

unsigned pt_dnnl_conv_ops(const pt_dnnl_conv *c) {
  return c->ops;
}

const char *pt_dnnl_conv_impl(const pt_dnnl_conv *c) {
  return c->impl;
}

/* ---- running a plan ---- */

static void run_step(pt_dnnl_conv *c, const step *s) {
  dnnl_primitive_execute(s->prim, c->strm, s->nargs, s->args);
}

/* Points the caller-side memory of `role` at this call's pointer. */
static void set_user(pt_dnnl_conv *c, int role, const float *ptr) {
  c->ptr[role] = ptr;
  if (ptr) dnnl_memory_set_data_handle(c->user[role], (void *)ptr);
}

/* Refreshes the inputs of cs (a linked one is filled by the plan before). */
static void refresh_inputs(pt_dnnl_conv *c, const conv_step *cs) {
  for (int i = 0; i < cs->n_in; i++) {
    buf *b = &c->bufs[cs->in[i]];
    const float *want = c->ptr[b->role];
    if (b->reorder.prim && !b->linked && b->from != want) {
      run_step(c, &b->reorder);
      b->from = want;
    }
  }
}

/* Hands the outputs of cs to the caller (those the caller wants: a NULL pointer skips one; a
 * linked one is read in place by the plan after). */
static void hand_out(pt_dnnl_conv *c, const conv_step *cs) {
  for (int i = 0; i < cs->n_out; i++) {
    const buf *b = &c->bufs[cs->out[i]];
    if (b->reorder.prim && !b->linked && c->ptr[b->role]) run_step(c, &b->reorder);
  }
}

static void run_conv_step(pt_dnnl_conv *c, const conv_step *cs) {
  refresh_inputs(c, cs);
  run_step(c, &cs->run);
  hand_out(c, cs);
}

/* out (N, OC, P) += b (OC) broadcast over P. */
static void add_bias(float *out, const float *b, const pt_conv_params *p) {
  const int64_t P = (int64_t)p->OH * p->OW;
  for (int n = 0; n < p->N; n++)
    for (int oc = 0; oc < p->OC; oc++) {
      float *y = out + ((int64_t)n * p->OC + oc) * P;
      const float v = b[oc];
      for (int64_t i = 0; i < P; i++) y[i] += v;
    }
}

/* db (OC) += sum of dout (N, OC, P) over N and P: eight float partial sums per plane (which the
 * compiler vectorizes), then double across planes. */
static void bias_grad(float *db, const float *dout, const pt_conv_params *p) {
  const int64_t P = (int64_t)p->OH * p->OW;
  for (int oc = 0; oc < p->OC; oc++) {
    double s = 0;
    for (int n = 0; n < p->N; n++) {
      const float *d = dout + ((int64_t)n * p->OC + oc) * P;
      float part[8] = {0};
      int64_t i = 0;
      for (; i + 8 <= P; i += 8)
        for (int k = 0; k < 8; k++) part[k] += d[i + k];
      for (; i < P; i++) part[0] += d[i];
      s +=
          ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
    }
    db[oc] += (float)s;
  }
}

/* y = relu(y) over n floats, pt_relu_f's rule as the Relu node would apply it: any layout, and
 * a blocked one's zero padding stays zero. */
static void relu_pass(float *y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = pt_relu_f(y[i]);
}

static float *mem_data(dnnl_memory_t m, int64_t *n) {
  void *h = NULL;
  dnnl_memory_get_data_handle(m, &h);
  *n = (int64_t)(dnnl_memory_desc_get_size(md_of(m)) / sizeof(float));
  return h;
}

static int buf_of(const pt_dnnl_conv *c, int role) {
  for (int i = 0; i < c->n_bufs; i++)
    if (c->bufs[i].role == role) return i;
  return -1;
}

/* Whether the forward may run fwd_relu. Its post-op maps NaN to 0 (oneDNN's JIT ReLU is a max
 * with 0), where the Relu node, pt_relu_f, passes NaN on so that a corrupt frame shows in the
 * loss; a NaN in the output needs a NaN or an infinity among the inputs (or an overflow within
 * a sum), so fwd_relu runs only where there is none. The parameters are checked once per
 * pointer in an inference plan, at every forward in a train plan; the input at every forward,
 * unless it is the output of the plan linked before, which came out of its fwd_relu (finite
 * inputs, finite outputs: only an overflow to infinity there escapes both checks). */
static bool inputs_finite(pt_dnnl_conv *c, const float *in, const float *w, const float *b) {
  const pt_conv_params *p = &c->p;
  if (c->train || c->checked_w != w || c->checked_b != b) {
    const int64_t nw = (int64_t)p->OC * (p->C / p->G) * p->KH * p->KW;
    c->params_finite = pt_all_finite(w, nw) && (!b || pt_all_finite(b, p->OC));
    c->checked_w = w;
    c->checked_b = b;
  }
  if (!c->params_finite) return false;
  if (c->src_plan && c->src_plan->out_finite) return true;
  if (c->src_shared) {
    int64_t n;
    const float *x = mem_data(c->bufs[buf_of(c, T_SRC)].mem, &n);
    return pt_all_finite(x, n);
  }
  return pt_all_finite(in, (int64_t)p->N * p->C * p->H * p->W);
}

void pt_dnnl_conv_forward(pt_dnnl_conv *c, float *out, const float *in, const float *w,
                          const float *b) {
  /* the caller may have changed anything since the last call: every blocked copy is stale, but
   * for an inference plan's weights (see pt_dnnl_conv_weights_changed) */
  for (int i = 0; i < c->n_bufs; i++)
    if (c->train || c->bufs[i].role != T_WEI) c->bufs[i].from = NULL;
  const pt_conv_params *p = &c->p;
  const int64_t n_out = (int64_t)p->N * p->OC * p->OH * p->OW;
  c->out_finite = false;
  if (c->k_fwd) {
    if (c->train) pt_wino_weights_changed(c->k_fwd); /* an optimizer step changes them in place */
    pt_wino_forward(c->k_fwd, out, in, w, b);
    return;
  }
  if (c->k4) {
    if (c->train) pt_wino4_weights_changed(c->k4);
    pt_wino4_forward(c->k4, out, in, w, b);
    return;
  }
  if (c->direct) {
    pt_direct_forward(out, in, w, b, p, c->relu, c->direct);
    return;
  }
  if (!(c->ops & PT_DNNL_FORWARD)) {
    if (c->transpose)
      pt_conv_transpose2d_forward(out, in, w, b, p, c->gemm_scratch);
    else
      pt_conv2d_forward(out, in, w, b, p, c->gemm_scratch);
    if (c->relu) relu_pass(out, n_out);
    return;
  }
  int prev = one_thread_enter();
  set_user(c, T_SRC, in);
  set_user(c, T_WEI, w);
  set_user(c, T_DST, out);
  if (p->has_bias && !c->bias_outside) set_user(c, T_BIA, b ? b : c->zero_bias);
  const bool fused = c->fwd_relu.run.prim && inputs_finite(c, in, w, b);
  const conv_step *cs = fused ? &c->fwd_relu : &c->fwd;
  refresh_inputs(c, cs);
  run_step(c, &cs->run);
  const bool bias_here = p->has_bias && c->bias_outside;
  if (c->relu && !fused && !bias_here) { /* on the output buffer, before it is handed on */
    dnnl_stream_wait(c->strm);
    int64_t n;
    float *y = mem_data(c->bufs[buf_of(c, T_DST)].mem, &n);
    relu_pass(y, n);
  }
  hand_out(c, cs);
  dnnl_stream_wait(c->strm);
  one_thread_leave(prev);
  c->out_finite = fused;
  if (bias_here && b) add_bias(out, b, p);
  if (c->relu && bias_here) relu_pass(out, n_out);
}

bool pt_dnnl_conv_link(pt_dnnl_conv *from, pt_dnnl_conv *to) {
  if (from == to || to->src_plan) return false;
  to->src_plan = from;
  /* consecutive F(4x4, 3x3) forwards in inference hand the tensor over pixel-major; otherwise
   * Winograd plans read and write NCHW */
  if (from->k4 && to->k4 && !from->train && !to->train) return pt_wino4_link(from->k4, to->k4);
  if (from->k_fwd || to->k_fwd || from->k4 || to->k4 || from->direct || to->direct) return false;
  if (from->train || to->train || !(from->ops & PT_DNNL_FORWARD) || !(to->ops & PT_DNNL_FORWARD) ||
      (from->bias_outside && from->p.has_bias))
    return false;
  const int d = buf_of(from, T_DST), s = buf_of(to, T_SRC);
  if (d < 0 || s < 0) return false;
  buf *bd = &from->bufs[d], *bs = &to->bufs[s];
  /* both must be buffers of the plans' own, behind a reorder: a caller-layout one has nothing to
   * skip */
  if (!bd->reorder.prim || !bs->reorder.prim || bd->linked || bs->linked ||
      !dnnl_memory_desc_equal(md_of(bd->mem), md_of(bs->mem)))
    return false;
  void *h = NULL;
  if (dnnl_memory_get_data_handle(bd->mem, &h) != dnnl_success || !h ||
      dnnl_memory_set_data_handle(bs->mem, h) != dnnl_success)
    return false;
  bd->linked = bs->linked = true;
  to->src_shared = true;
  return true;
}

void pt_dnnl_conv_weights_changed(pt_dnnl_conv *c) {
  if (c->k_fwd) pt_wino_weights_changed(c->k_fwd);
  if (c->k4) pt_wino4_weights_changed(c->k4);
  for (int i = 0; i < c->n_bufs; i++)
    if (c->bufs[i].role == T_WEI) c->bufs[i].from = NULL;
  c->checked_w = c->checked_b = NULL;
}

void pt_dnnl_conv_backward(pt_dnnl_conv *c, float *din, float *dw, float *db, const float *dout,
                           const float *in, const float *w) {
  if (!c->train) return;
  const pt_conv_params *p = &c->p;
  if (!p->has_bias) db = NULL;
  const bool wino_d = din && c->k_data, wino_w = c->k_wts != NULL;
  const bool dnnl_d = din && !c->k_data && (c->ops & PT_DNNL_BACKWARD_DATA);
  const bool dnnl_w = !wino_w && (c->ops & PT_DNNL_BACKWARD_WEIGHTS);
  float *gd = dnnl_d || wino_d ? NULL : din, *gw = dnnl_w || wino_w ? NULL : dw,
        *gb = dnnl_w || wino_w ? NULL : db;
  if (wino_d) {
    pt_wino_weights_changed(c->k_data);
    pt_wino_backward_data(c->k_data, din, dout, w);
  }
  if (wino_w && dw) pt_wino_backward_weights(c->k_wts, dw, dout, in);
  if (wino_w && db) bias_grad(db, dout, p);
  if (gd || gw || gb) {
    if (c->transpose)
      pt_conv_transpose2d_backward(gd, gw, gb, dout, in, w, p, c->gemm_scratch);
    else
      pt_conv2d_backward(gd, gw, gb, dout, in, w, p, c->gemm_scratch);
  }
  /* oneDNN's weights primitive sums the bias gradient along the way; alone it is a plain sum */
  if (dnnl_w && db && (!dw || c->bias_outside)) bias_grad(db, dout, p);
  if (!dnnl_d && !(dnnl_w && dw)) return;

  int prev = one_thread_enter();
  for (int i = 0; i < c->n_bufs; i++)
    if (c->bufs[i].role == T_DDST) c->bufs[i].from = NULL;
  set_user(c, T_SRC, in);
  set_user(c, T_WEI, w);
  set_user(c, T_DDST, dout);
  set_user(c, T_DSRC, din);
  set_user(c, T_DWEI, dw);
  set_user(c, T_DBIA, c->bias_outside ? NULL : db);
  if (dnnl_d) run_conv_step(c, &c->bwd_data);
  if (dnnl_w && dw) run_conv_step(c, &c->bwd_weights);
  dnnl_stream_wait(c->strm);
  one_thread_leave(prev);
}

#else /* built without oneDNN */

bool pt_dnnl_available(void) {
  return false;
}

pt_dnnl_conv *pt_dnnl_conv_plan_create(const pt_conv_params *p, bool transpose, bool train,
                                       unsigned ops, pt_error *err) {
  pt_error_set(err, PT_ERR_UNSUPPORTED, "built without oneDNN");
  return NULL;
}

unsigned pt_dnnl_conv_ops(const pt_dnnl_conv *plan) {
  return 0;
}

bool pt_dnnl_conv_link(pt_dnnl_conv *from, pt_dnnl_conv *to) {
  return false;
}

void pt_dnnl_conv_weights_changed(pt_dnnl_conv *plan) {}

void pt_dnnl_conv_plan_free(pt_dnnl_conv *plan) {}

const char *pt_dnnl_conv_impl(const pt_dnnl_conv *plan) {
  return "none";
}

void pt_dnnl_conv_forward(pt_dnnl_conv *plan, float *out, const float *in, const float *w,
                          const float *b) {}

void pt_dnnl_conv_backward(pt_dnnl_conv *plan, float *din, float *dw, float *db, const float *dout,
                           const float *in, const float *w) {}

#endif

/* Drawn from bench/conv_bench on a single AVX-512 core (oneDNN 2.6). oneDNN's kernels work on
 * blocks of 16 channels and pad the rest, so what decides is the channel count each computation
 * writes: the output for forward, the input for backward data. Conv:
 *  - forward and backward weights where the output channels per group are a multiple of 16
 *    (1.4-3x faster; 24 or 10 channels ran 0.65-0.95x), backward data where the input channels
 *    are (1.5-3.3x; 3 or 8 input channels ran 0.3-0.7x, which is the first layer, whose input
 *    gradient is seldom wanted);
 *  - pointwise (1x1, stride 1, no padding) only backward weights: conv.c runs it as one plain
 *    sgemm with no im2col, which oneDNN's kernels with their reorders do not beat (0.3-1.0x);
 *  - the forward of a stride-1 layer summing over few taps runs on cpu/direct.c instead (the
 *    plan still folds its ReLU): it ran the first layers of the benchmark networks 1.2-2x faster
 *    (5x5 3->32 at 64x64 0.169 against 0.205 ms, 3x3 3->16 at 32x32 0.010 against 0.020, 3x3
 *    3->32 at 64x64 0.074 against 0.144), and allocates nothing, where each oneDNN execution
 *    does;
 *  - depthwise (one input and one output channel per group) everything (1.4-6x).
 * ConvTranspose, whose kernels are oneDNN's convolution ones run the other way round, is faster
 * down to 8 channels (1.4-3.4x): forward where the output channels per group are a multiple of 8
 * (3 ran 0.5x), backward data where the input channels are, and backward weights where either
 * is (1.4-3.2x).
 * A computation for which oneDNN picks no JIT kernel stays on conv.c (PT_DNNL_JIT_ONLY).
 * Winograd runs on cpu/wino.c (F(2x2, 3x3) and F(2x2, 5x5)). Against oneDNN's direct kernels
 * (Xeon, forward / backward data / backward weights): 5x5 32->32 at 64x64 1.8-2.0 / 1.7-1.9 /
 * 1.6-1.7x (three runs); 3x3 32->32 at 64x64 1.7-1.9 / 1.5 / 1.0x, 3x3 16->32 at 32x32 2.0 /
 * 1.0 / 0.9x (inference forward; oneDNN's own F(4x4, 3x3) ran these 1.1 and 1.0x); but 3x3
 * 16->16 at 32x32 0.8-1.0x, the input transform being shared by too few output channels, and
 * images under 32x32 fill too few of the 16 tiles a vector holds. F(4x4, 3x3) over channel
 * vectors runs the forward where the channels are multiples of 16: 3x3 32->32 at 64x64 2.2x
 * direct (against F(2x2, 3x3)'s 1.6x), 16->16 at 32x32 1.0-1.5x, and `small` end to end
 * (partime bench, against the build without it, three runs each) 1.0-1.9x on one stage and
 * 1.1-1.3x on two; its gradients stay on F(2x2, 3x3) or, with 16 output channels, direct. */
static bool winograd_suits(const pt_conv_params *p) {
  return pt_wino_fits(p) && p->C >= 16 && (f2x2_suits(p) || pt_wino4_fits(p)) &&
         (int64_t)p->OH * p->OW >= 32 * 32;
}

/* Where cpu/direct.c's gradients take over from oneDNN's (conv_bench, Xeon, ms per call, weights /
 * input): the first layers (fewer than 16 input channels), whose weights' gradient ran 1.0-1.9x
 * slower but is a small part of a frame (3x3 3->16 at 32x32 0.014 against 0.010, 5x5 3->32 at
 * 64x64 0.145 against 0.143); and 3x3 16->16 on 32x32, where they ran even (0.038 / 0.039 against
 * 0.034-0.036 / 0.040-0.042). Wider layers on small images stay on oneDNN: 3x3 32->32 at 16x16
 * ran 1.4x slower, 64->64 at 8x8 2.6x / 5.5x, 1x1 64->64 at 16x16 1.9x / 1.5x. Neither allocates
 * on cpu/direct.c; oneDNN does at every call. */
static bool direct_grads_suit(const pt_conv_params *p) {
  return p->C < 16 || (p->C <= 16 && p->OC <= 16 && (int64_t)p->OH * p->OW >= 32 * 32);
}

/* Small layers of one group run on cpu/direct.c whole, forward and gradients, though oneDNN's
 * kernels ran them 1.0-2.3x faster (conv_bench, Xeon, ms per call, direct / oneDNN: forward,
 * input gradient, weights' gradient). On layers this small oneDNN's lead is a few microseconds a
 * pass, and each of its executions allocates on the heap (17 blocks for a forward):
 *  - strided convolutions and ConvTransposes of at most 2.5 M multiply-adds a pass: 3x3 s2 16->32
 *    at 32x32 0.025 / 0.021, 0.034 / 0.027, 0.021 / 0.022; ConvTranspose 4x4 s2 32->16 at 16x16
 *    0.058 / 0.040, 0.071 / 0.031, 0.040 / 0.035; 4x4 s2 16->3 at 32x32 0.072 / 0.069, 0.022 /
 *    0.019, 0.019 / 0.012;
 *  - stride-1 layers of at most 1.2 M that Winograd does not take and whose gradients both suit
 *    the direct kernels: 3x3 16->32 at 16x16 0.023-0.027 / 0.019-0.020, 0.024-0.031 /
 *    0.018-0.019, 0.024-0.029 / 0.021.
 * A first layer (few taps) keeps its plan, whose forward already runs on the direct kernel with
 * the ReLU folded in (3x3 s2 3->16 at 64x64 0.035 / 0.036). These are the built-in models'
 * layers. End to end (partime bench, one stage, alternated pairs) builtin:autoencoder ran
 * 0.79-0.82x as fast in inference and 0.87-0.89x in training, builtin:classifier 0.87-1.31x in
 * inference and 1.00-1.23x in training; neither allocates a frame any more (28 and 17 times in
 * inference before, 140 and 48 in training). */
static bool direct_small(const pt_conv_params *p, bool transpose) {
  if (p->G != 1) return false;
  const int64_t pixels = transpose ? (int64_t)p->H * p->W : (int64_t)p->OH * p->OW;
  const int64_t macs = (int64_t)p->C * p->OC * p->KH * p->KW * pixels;
  if (macs > 2500000) return false;
  if (transpose) return pt_direct_transpose_fits(p);
  /* a forward the plan already runs directly (few taps), folding its ReLU, keeps the plan */
  if (pt_direct_few_taps(p)) return false;
  if (p->SH > 1 || p->SW > 1) return pt_direct_grad_fits(p);
  /* stride 1: up to 1.2 M, where Winograd does not take it and both gradients suit the direct
   * kernels */
  return macs <= 1200000 && !winograd_suits(p) && pt_direct_weights_suit(p) &&
         pt_direct_data_suits(p);
}

unsigned pt_dnnl_conv_preferred(const pt_conv_params *p, bool transpose) {
  if (!pt_dnnl_available()) return 0;
  const int Cg = p->C / p->G, OCg = p->OC / p->G;
  if (p->G > 1 && Cg == 1 && OCg == 1) return PT_DNNL_ALL;
  if (direct_small(p, transpose)) return 0;
  unsigned ops = 0;
  if (transpose) {
    if (OCg % 8 == 0) ops |= PT_DNNL_FORWARD;
    if (Cg % 8 == 0) ops |= PT_DNNL_BACKWARD_DATA;
    if (OCg % 8 == 0 || Cg % 8 == 0) ops |= PT_DNNL_BACKWARD_WEIGHTS;
    return ops;
  }
  const bool pointwise = p->KH == 1 && p->KW == 1 && p->SH == 1 && p->SW == 1 && p->PT == 0 &&
                         p->PL == 0 && p->PB == 0 && p->PR == 0;
  /* gradients cpu/wino.c does not take, where cpu/direct.c runs them (through conv.c) */
  const bool direct = !(winograd_suits(p) && f2x2_suits(p)) && direct_grads_suit(p);
  const bool direct_w = direct && pt_direct_weights_suit(p),
             direct_d = direct && pt_direct_data_suits(p);
  if (OCg % 16 == 0 && !direct_w) ops |= PT_DNNL_BACKWARD_WEIGHTS;
  if (OCg % 16 == 0 && !pointwise) ops |= PT_DNNL_FORWARD;
  if (Cg % 16 == 0 && !pointwise && !direct_d) ops |= PT_DNNL_BACKWARD_DATA;
  if (winograd_suits(p)) ops |= PT_DNNL_WINOGRAD;
  return ops;
}
