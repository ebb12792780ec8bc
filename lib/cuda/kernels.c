/* The CUDA backend's own kernels (kernels.h): one per-element body each, then PT_KERNEL.
 *
 * This file is C and CUDA C++ at once: gcc builds it for the simulated device, nvcc through
 * kernels.cu. So no C-only syntax (compound literals, designated initializers, void * without a
 * cast) and nothing from a C library but the math functions.
 *
 * Every body serves one index i in [0, n) and either writes its own output element or, where
 * several outputs feed one gradient element (a broadcast operand, a bias or scale, overlapping
 * pool windows, an upsampled pixel, Gemm's C), adds into it with pt_atomic_add(). The arithmetic
 * itself is ../pointwise.h, shared with lib/cpu, so the two backends differ only in the order
 * of the sums the CPU reduces in one loop and the GPU with atomics.
 *
 * Accumulate rule (ops.h): backward bodies ADD into gradients; a NULL gradient is skipped. Losses
 * WRITE their gradient, as cpu/loss.c does. */
#include "kernels.h"
#include "launch.h"

#define PTK_BODY static PT_HD

/* ---- copies ---- */

PTK_BODY void ptk_axpy_body(int64_t i, const ptk_axpy_args *a) {
  a->y[i] += a->alpha * a->x[i];
}
PT_KERNEL(ptk_axpy, ptk_axpy_args)

PTK_BODY void ptk_fill_body(int64_t i, const ptk_fill_args *a) {
  a->y[i] = a->value;
}
PT_KERNEL(ptk_fill, ptk_fill_args)

/* ---- binary ops ---- */

/* The operand offsets of output element i, and whether each operand is broadcast along some dim
 * (then other outputs share its element and its gradient needs an atomic add). */
PTK_BODY void ptk_bin_index(const pt_binary_params *p, int64_t i, int64_t *ia, int64_t *ib,
                            int *bca, int *bcb) {
  int64_t r = i, oa = 0, ob = 0;
  int ba = 0, bb = 0;
  for (int d = p->ndim - 1; d >= 0; d--) {
    const int64_t len = p->shape[d], k = r % len;
    r /= len;
    oa += k * p->sa[d];
    ob += k * p->sb[d];
    if (len > 1) {
      ba |= p->sa[d] == 0;
      bb |= p->sb[d] == 0;
    }
  }
  *ia = oa;
  *ib = ob;
  *bca = ba;
  *bcb = bb;
}

/* out: the output shape of p; a, b: the operands as addressed by p.sa, p.sb. */
PTK_BODY void ptk_binary_fwd_body(int64_t i, const ptk_binary_args *a) {
  int64_t ia, ib;
  int bca, bcb;
  ptk_bin_index(&a->p, i, &ia, &ib, &bca, &bcb);
  a->out[i] = pt_bin_f(a->p.kind, a->a[ia], a->b[ib]);
}
PT_KERNEL(ptk_binary_fwd, ptk_binary_args)

/* da, db: shaped like a and b, either NULL; they may be one buffer (x * x, never broadcast). */
PTK_BODY void ptk_binary_bwd_body(int64_t i, const ptk_binary_bwd_args *a) {
  int64_t ia, ib;
  int bca, bcb;
  ptk_bin_index(&a->p, i, &ia, &ib, &bca, &bcb);
  const float x = a->a[ia], y = a->b[ib], dy = a->dout[i];
  const int kind = a->p.kind;
  if (a->da) {
    const float g = pt_bin_da(kind, x, y, dy);
    if (bca)
      pt_atomic_add(&a->da[ia], g);
    else
      a->da[ia] += g;
  }
  if (a->db) {
    const float g = pt_bin_db(kind, x, y, dy);
    if (bcb)
      pt_atomic_add(&a->db[ib], g);
    else
      a->db[ib] += g;
  }
}
PT_KERNEL(ptk_binary_bwd, ptk_binary_bwd_args)

/* ---- unary ops ---- */

/* out, in: n elements (out may be in). */
PTK_BODY void ptk_unary_fwd_body(int64_t i, const ptk_unary_args *a) {
  const float x = a->in[i];
  float y;
  switch (a->p.kind) {
  case PT_UN_RELU:
    y = pt_relu_f(x);
    break;
  case PT_UN_LEAKY_RELU:
    y = pt_leaky_relu_f(x, a->p.alpha);
    break;
  case PT_UN_SIGMOID:
    y = pt_sigmoid_f(x);
    break;
  default:
    y = pt_tanh_f(x);
    break;
  }
  a->out[i] = y;
}
PT_KERNEL(ptk_unary_fwd, ptk_unary_args)

/* Relu and LeakyRelu read in, Sigmoid and Tanh out (recomputed from in when out is NULL). */
PTK_BODY void ptk_unary_bwd_body(int64_t i, const ptk_unary_bwd_args *a) {
  if (!a->din) return;
  const float dy = a->dout[i];
  float g;
  switch (a->p.kind) {
  case PT_UN_RELU:
    g = pt_relu_b(a->in[i], dy);
    break;
  case PT_UN_LEAKY_RELU:
    g = pt_leaky_relu_b(a->in[i], a->p.alpha, dy);
    break;
  case PT_UN_SIGMOID:
    g = pt_sigmoid_b(a->out ? a->out[i] : pt_sigmoid_f(a->in[i]), dy);
    break;
  default:
    g = pt_tanh_b(a->out ? a->out[i] : pt_tanh_f(a->in[i]), dy);
    break;
  }
  a->din[i] += g;
}
PT_KERNEL(ptk_unary_bwd, ptk_unary_bwd_args)

/* ---- pools ---- */

/* The window of output element i: its plane, its taps' origin and the real taps on each axis. */
typedef struct ptk_win {
  int64_t plane;
  int offh, offw, kh0, kh1, kw0, kw1;
} ptk_win;

PTK_BODY void ptk_pool_window(const pt_pool_params *p, int64_t i, ptk_win *w) {
  const int64_t P = (int64_t)p->OH * p->OW;
  const int r = (int)(i % P);
  const int oh = r / p->OW, ow = r % p->OW;
  w->plane = i / P;
  w->offh = oh * p->SH - p->PT;
  w->offw = ow * p->SW - p->PL;
  pt_pool_taps(w->offh, p->DH, p->H, p->KH, &w->kh0, &w->kh1);
  pt_pool_taps(w->offw, p->DW, p->W, p->KW, &w->kw0, &w->kw1);
}

/* The divisor of an average window, as cpu/pool.c counts it. */
PTK_BODY int ptk_avg_count(const pt_pool_params *p, const ptk_win *w) {
  const int ci = p->count_include_pad;
  return pt_pool_count(ci, w->offh, p->DH, p->H, p->PT, p->PB, p->KH, w->kh0, w->kh1) *
         pt_pool_count(ci, w->offw, p->DW, p->W, p->PL, p->PR, p->KW, w->kw0, w->kw1);
}

/* out, argmax (N,C,OH,OW) (argmax may be NULL), in (N,C,H,W); argmax is the index in the plane. */
PTK_BODY void ptk_maxpool_fwd_body(int64_t i, const ptk_pool_args *a) {
  const pt_pool_params *p = &a->p;
  ptk_win w;
  ptk_pool_window(p, i, &w);
  float best;
  const int32_t bi = pt_maxpool_window(a->in + w.plane * p->H * p->W, p->W, w.offh, w.offw, p->DH,
                                       p->DW, w.kh0, w.kh1, w.kw0, w.kw1, &best);
  a->out[i] = best;
  if (a->argmax) a->argmax[i] = bi;
}
PT_KERNEL(ptk_maxpool_fwd, ptk_pool_args)

/* out (N,C,OH,OW), in (N,C,H,W). */
PTK_BODY void ptk_avgpool_fwd_body(int64_t i, const ptk_pool_args *a) {
  const pt_pool_params *p = &a->p;
  ptk_win w;
  ptk_pool_window(p, i, &w);
  const float s = pt_avgpool_window(a->in + w.plane * p->H * p->W, p->W, w.offh, w.offw, p->DH,
                                    p->DW, w.kh0, w.kh1, w.kw0, w.kw1);
  const int count = ptk_avg_count(p, &w);
  a->out[i] = count > 0 ? s / (float)count : 0.0f;
}
PT_KERNEL(ptk_avgpool_fwd, ptk_pool_args)

/* din (N,C,H,W) += dout (N,C,OH,OW) routed to each window's recorded maximum. */
PTK_BODY void ptk_maxpool_bwd_body(int64_t i, const ptk_pool_bwd_args *a) {
  const pt_pool_params *p = &a->p;
  if (!a->din) return;
  const int32_t k = a->argmax[i];
  if (k < 0) return; /* a window wholly in the padding */
  const int64_t plane = i / ((int64_t)p->OH * p->OW);
  pt_atomic_add(&a->din[plane * p->H * p->W + k], a->dout[i]);
}
PT_KERNEL(ptk_maxpool_bwd, ptk_pool_bwd_args)

/* din (N,C,H,W) += dout (N,C,OH,OW) spread evenly over each window's real taps. */
PTK_BODY void ptk_avgpool_bwd_body(int64_t i, const ptk_pool_bwd_args *a) {
  const pt_pool_params *p = &a->p;
  if (!a->din) return;
  ptk_win w;
  ptk_pool_window(p, i, &w);
  const int count = ptk_avg_count(p, &w);
  if (count <= 0) return;
  const float g = a->dout[i] / (float)count;
  float *dx = a->din + w.plane * p->H * p->W;
  for (int kh = w.kh0; kh < w.kh1; kh++) {
    float *row = dx + (int64_t)(w.offh + kh * p->DH) * p->W;
    for (int kw = w.kw0; kw < w.kw1; kw++) pt_atomic_add(&row[w.offw + kw * p->DW], g);
  }
}
PT_KERNEL(ptk_avgpool_bwd, ptk_pool_bwd_args)

/* ---- batch norm ---- */

/* out, in: (N,C,HW); scale, bias, mean, var: (C). */
PTK_BODY void ptk_batchnorm_fwd_body(int64_t i, const ptk_bn_args *a) {
  const int c = (int)((i / a->p.HW) % a->p.C);
  float k, shift;
  pt_bn_fold(a->scale[c], a->bias[c], a->mean[c], a->var[c], a->p.eps, &k, &shift);
  a->out[i] = a->in[i] * k + shift;
}
PT_KERNEL(ptk_batchnorm_fwd, ptk_bn_args)

/* din, dout, in: (N,C,HW); dscale, dbias, scale, mean, var: (C). Any gradient may be NULL. */
PTK_BODY void ptk_batchnorm_bwd_body(int64_t i, const ptk_bn_bwd_args *a) {
  const int c = (int)((i / a->p.HW) % a->p.C);
  const float inv_std = pt_bn_inv_std(a->var[c], a->p.eps);
  const float dy = a->dout[i];
  if (a->din) a->din[i] += dy * (a->scale[c] * inv_std);
  if (a->dscale) pt_atomic_add(&a->dscale[c], dy * (a->in[i] - a->mean[c]) * inv_std);
  if (a->dbias) pt_atomic_add(&a->dbias[c], dy);
}
PT_KERNEL(ptk_batchnorm_bwd, ptk_bn_bwd_args)

/* ---- softmax ---- */

/* out, in: (outer, dim, inner); element i is row (i / inner, i % inner). */
PTK_BODY void ptk_softmax_fwd_body(int64_t i, const ptk_softmax_args *a) {
  const int64_t dim = a->p.dim, inner = a->p.inner;
  if (dim <= 0) return;
  const int64_t base = (i / inner) * dim * inner + i % inner;
  pt_softmax_row(a->out + base, a->in + base, dim, inner, a->p.log);
}
PT_KERNEL(ptk_softmax_fwd, ptk_softmax_args)

/* din, dout, out: (outer, dim, inner); out is the forward's output. */
PTK_BODY void ptk_softmax_bwd_body(int64_t i, const ptk_softmax_bwd_args *a) {
  const int64_t dim = a->p.dim, inner = a->p.inner;
  if (!a->din || dim <= 0) return;
  const int64_t base = (i / inner) * dim * inner + i % inner;
  pt_softmax_row_b(a->din + base, a->dout + base, a->out + base, dim, inner, a->p.log);
}
PT_KERNEL(ptk_softmax_bwd, ptk_softmax_bwd_args)

/* ---- concat ---- */

/* in (outer, dim, inner) -> its slice of out (outer, total, inner) starting at `offset`. */
PTK_BODY int64_t ptk_concat_at(int64_t i, int64_t dim, int64_t offset, int64_t total,
                               int64_t inner) {
  const int64_t len = dim * inner;
  return (i / len) * total * inner + offset * inner + i % len;
}

PTK_BODY void ptk_concat_fwd_body(int64_t i, const ptk_concat_args *a) {
  a->out[ptk_concat_at(i, a->dim, a->offset, a->total, a->inner)] = a->in[i];
}
PT_KERNEL(ptk_concat_fwd, ptk_concat_args)

PTK_BODY void ptk_concat_bwd_body(int64_t i, const ptk_concat_bwd_args *a) {
  if (a->din) a->din[i] += a->dout[ptk_concat_at(i, a->dim, a->offset, a->total, a->inner)];
}
PT_KERNEL(ptk_concat_bwd, ptk_concat_bwd_args)

/* ---- resize ---- */

/* The input element (N,C,H,W) that output element i (N,C,OH,OW) copies. */
PTK_BODY int64_t ptk_resize_src(const pt_resize_params *p, int64_t i) {
  const int64_t P = (int64_t)p->OH * p->OW;
  const int r = (int)(i % P);
  const int oh = r / p->OW, ow = r % p->OW;
  const int ih = pt_resize_src_index(oh, p->H, p->OH, p->scale_h, p->coord, p->nearest);
  const int iw = pt_resize_src_index(ow, p->W, p->OW, p->scale_w, p->coord, p->nearest);
  return (i / P) * p->H * p->W + (int64_t)ih * p->W + iw;
}

PTK_BODY void ptk_resize_fwd_body(int64_t i, const ptk_resize_args *a) {
  a->out[i] = a->in[ptk_resize_src(&a->p, i)];
}
PT_KERNEL(ptk_resize_fwd, ptk_resize_args)

/* One input pixel feeds several outputs when upsampling: scatter with atomics. */
PTK_BODY void ptk_resize_bwd_body(int64_t i, const ptk_resize_bwd_args *a) {
  if (a->din) pt_atomic_add(&a->din[ptk_resize_src(&a->p, i)], a->dout[i]);
}
PT_KERNEL(ptk_resize_bwd, ptk_resize_bwd_args)

/* ---- Gemm's C term ---- */

/* The element of C that out (M,N) element i reads. */
PTK_BODY int64_t ptk_gemm_c_at(const pt_gemm_params *p, int64_t i) {
  switch (p->c_mode) {
  case PT_GEMM_C_SCALAR:
    return 0;
  case PT_GEMM_C_ROW:
    return i % p->N;
  case PT_GEMM_C_COL:
    return i / p->N;
  default:
    return i;
  }
}

/* As cpu/matmul.c, C is ignored when beta is 0 (a NaN in it must not reach the output). */
PTK_BODY void ptk_gemm_c_fwd_body(int64_t i, const ptk_gemm_c_args *a) {
  if (!a->c || a->p.c_mode == PT_GEMM_C_NONE || a->p.beta == 0.0f) return;
  a->out[i] += a->p.beta * a->c[ptk_gemm_c_at(&a->p, i)];
}
PT_KERNEL(ptk_gemm_c_fwd, ptk_gemm_c_args)

PTK_BODY void ptk_gemm_c_bwd_body(int64_t i, const ptk_gemm_c_bwd_args *a) {
  if (!a->dc || a->p.c_mode == PT_GEMM_C_NONE) return;
  const float g = a->p.beta * a->dout[i];
  if (a->p.c_mode == PT_GEMM_C_FULL)
    a->dc[i] += g;
  else
    pt_atomic_add(&a->dc[ptk_gemm_c_at(&a->p, i)], g);
}
PT_KERNEL(ptk_gemm_c_bwd, ptk_gemm_c_bwd_args)

/* ---- asymmetric convolution padding ---- */

/* The element of X (N,C,H,W) at padded element i (N,C,H+pt+pb,W+pl+pr), or -1 in the padding. */
PTK_BODY int64_t ptk_pad_src(int64_t i, int H, int W, int pt, int pl, int pb, int pr) {
  const int PH = H + pt + pb, PW = W + pl + pr;
  const int64_t P = (int64_t)PH * PW;
  const int r = (int)(i % P);
  const int y = r / PW - pt, x = r % PW - pl;
  if (y < 0 || y >= H || x < 0 || x >= W) return -1;
  return (i / P) * H * W + (int64_t)y * W + x;
}

PTK_BODY void ptk_pad2d_fwd_body(int64_t i, const ptk_pad_args *a) {
  const int64_t k = ptk_pad_src(i, a->H, a->W, a->pt, a->pl, a->pb, a->pr);
  a->out[i] = k < 0 ? 0.0f : a->in[k];
}
PT_KERNEL(ptk_pad2d_fwd, ptk_pad_args)

PTK_BODY void ptk_pad2d_bwd_body(int64_t i, const ptk_pad_bwd_args *a) {
  if (!a->din) return;
  const int64_t k = ptk_pad_src(i, a->H, a->W, a->pt, a->pl, a->pb, a->pr);
  if (k >= 0) a->din[k] += a->dout[i];
}
PT_KERNEL(ptk_pad2d_bwd, ptk_pad_bwd_args)

/* ---- losses ---- */

/* One thread (n = 1): C is a class count, small. */
PTK_BODY void ptk_cross_entropy_body(int64_t i, const ptk_ce_args *a) {
  if (i != 0) return;
  const float l = pt_ce(a->dout, a->out, *a->target, a->C, a->out_is_prob);
  if (a->loss) *a->loss = l;
}
PT_KERNEL(ptk_cross_entropy, ptk_ce_args)

/* dout, out, target: (count); n = count. */
PTK_BODY void ptk_mse_grad_body(int64_t i, const ptk_mse_args *a) {
  if (a->dout) a->dout[i] = pt_mse_b(a->out[i], a->target[i], 1.0f / (float)a->count);
}
PT_KERNEL(ptk_mse_grad, ptk_mse_args)

/* One thread (n = 1) sums in order, so the loss is cpu/loss.c's to the bit. */
PTK_BODY void ptk_mse_loss_body(int64_t i, const ptk_mse_args *a) {
  if (i == 0 && a->loss) *a->loss = pt_mse_f(a->out, a->target, a->count);
}
PT_KERNEL(ptk_mse_loss, ptk_mse_args)

/* ---- optimizers ---- */

/* w, g, m: (n); m may be NULL when momentum is 0. */
PTK_BODY void ptk_sgd_body(int64_t i, const ptk_sgd_args *a) {
  if (!*a->ok) return;
  if (a->momentum == 0.0f || !a->m) {
    float unused = 0.0f;
    pt_sgd_1(&a->w[i], a->g[i], &unused, a->lr, 0.0f, a->wd);
  } else {
    pt_sgd_1(&a->w[i], a->g[i], &a->m[i], a->lr, a->momentum, a->wd);
  }
}
PT_KERNEL(ptk_sgd, ptk_sgd_args)

/* w, g, m, v: (n). The bias corrections are recomputed per element from the step count on the
 * device: two pows per weight cost less than reading t back to the host every step. */
PTK_BODY void ptk_adam_body(int64_t i, const ptk_adam_args *a) {
  if (!*a->ok) return;
  float bc1, sqrt_bc2;
  pt_adam_bias(a->beta1, a->beta2, *a->t, &bc1, &sqrt_bc2);
  pt_adam_1(&a->w[i], a->g[i], &a->m[i], &a->v[i], a->lr, a->beta1, a->beta2, a->eps, a->wd, bc1,
            sqrt_bc2);
}
PT_KERNEL(ptk_adam, ptk_adam_args)

/* ---- device-side decisions ---- */

/* Every failing element writes the same 0, so the race between threads is harmless. */
PTK_BODY void ptk_check_finite_body(int64_t i, const ptk_finite_args *a) {
  if (!isfinite(a->x[i])) *a->flag = 0;
}
PT_KERNEL(ptk_check_finite, ptk_finite_args)

PTK_BODY void ptk_copy_if_body(int64_t i, const ptk_copy_if_args *a) {
  if (*a->cond) a->dst[i] = a->src[i];
}
PT_KERNEL(ptk_copy_if, ptk_copy_if_args)
