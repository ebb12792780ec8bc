/* CPU binary (Add, Sub, Mul, Div) and unary (Relu, LeakyRelu, Sigmoid, Tanh) ops and plain copies.
 *
 * Binary ops broadcast numpy-style through the per-output-dim strides sa and sb. Before looping,
 * the layout is collapsed: dims of size 1 are dropped and neighbours that stay contiguous for both
 * operands are merged, so equal shapes become one flat row, a scalar operand a row with stride 0,
 * and a per-channel operand (1,C,1,1) rows of H*W against one value. Only the innermost dim is a
 * loop the compiler vectorizes; the outer dims are walked with an odometer.
 *
 * Backward reduces into a broadcast operand: each output element ADDS its contribution into the
 * operand element it read, so da and db may even be the same buffer (x * x). The kind becomes a
 * constant before the row loops (always-inline helpers), so each loop is branch-free. */
#include <string.h>
#include "ops.h"
#include "../pointwise.h"
#include "vec16.h"

#define PT_INLINE static inline __attribute__((always_inline))

/* A binary layout with size-1 dims dropped and contiguous neighbours merged; nd >= 1. */
typedef struct bin_layout {
  int nd;
  int64_t shape[PT_MAX_DIMS], sa[PT_MAX_DIMS], sb[PT_MAX_DIMS];
} bin_layout;

static void bin_collapse(const pt_binary_params *p, bin_layout *l) {
  int nd = 0;
  for (int d = 0; d < p->ndim; d++) {
    if (p->shape[d] == 1) continue;
    /* merge into the previous (outer) kept dim when both operands walk on contiguously */
    if (nd > 0 && l->sa[nd - 1] == p->sa[d] * p->shape[d] &&
        l->sb[nd - 1] == p->sb[d] * p->shape[d]) {
      l->shape[nd - 1] *= p->shape[d];
      l->sa[nd - 1] = p->sa[d];
      l->sb[nd - 1] = p->sb[d];
      continue;
    }
    l->shape[nd] = p->shape[d];
    l->sa[nd] = p->sa[d];
    l->sb[nd] = p->sb[d];
    nd++;
  }
  if (nd == 0) { /* every dim is 1: a single element */
    l->shape[0] = 1;
    l->sa[0] = l->sb[0] = 0;
    nd = 1;
  }
  l->nd = nd;
}

/* Walks the outer dims (all but the innermost) of a collapsed layout, one row at a time. */
typedef struct bin_iter {
  int64_t idx[PT_MAX_DIMS];
  int64_t ia, ib;
} bin_iter;

PT_INLINE void bin_next_row(bin_iter *it, const bin_layout *l) {
  for (int d = l->nd - 2; d >= 0; d--) {
    it->ia += l->sa[d];
    it->ib += l->sb[d];
    if (++it->idx[d] < l->shape[d]) return;
    it->ia -= l->sa[d] * l->shape[d];
    it->ib -= l->sb[d] * l->shape[d];
    it->idx[d] = 0;
  }
}

/* One output row of L elements; a and b advance by ta and tb per element. */
PT_INLINE void bin_row_f(int kind, float *o, const float *a, const float *b, int64_t L, int64_t ta,
                         int64_t tb) {
  if (ta == 1 && tb == 1) {
    for (int64_t i = 0; i < L; i++) o[i] = pt_bin_f(kind, a[i], b[i]);
  } else if (ta == 1 && tb == 0) {
    const float bv = b[0];
    for (int64_t i = 0; i < L; i++) o[i] = pt_bin_f(kind, a[i], bv);
  } else if (ta == 0 && tb == 1) {
    const float av = a[0];
    for (int64_t i = 0; i < L; i++) o[i] = pt_bin_f(kind, av, b[i]);
  } else {
    for (int64_t i = 0; i < L; i++) o[i] = pt_bin_f(kind, a[i * ta], b[i * tb]);
  }
}

PT_INLINE void bin_forward_k(int kind, float *out, const float *a, const float *b,
                             const bin_layout *l) {
  const int64_t L = l->shape[l->nd - 1], ta = l->sa[l->nd - 1], tb = l->sb[l->nd - 1];
  int64_t rows = 1;
  for (int d = 0; d < l->nd - 1; d++) rows *= l->shape[d];
  bin_iter it = {{0}, 0, 0};
  for (int64_t r = 0; r < rows; r++) {
    bin_row_f(kind, out + r * L, a + it.ia, b + it.ib, L, ta, tb);
    bin_next_row(&it, l);
  }
}

/* The gradient of one row w.r.t. operand a (wrt_b 0) or b (wrt_b 1), added into dx, which
 * advances by tx (the stride of that operand). A stride-0 operand gets the row's sum. */
PT_INLINE float bin_grad(int kind, int wrt_b, float a, float b, float dy) {
  return wrt_b ? pt_bin_db(kind, a, b, dy) : pt_bin_da(kind, a, b, dy);
}

PT_INLINE void bin_row_b(int kind, int wrt_b, float *dx, const float *dy, const float *a,
                         const float *b, int64_t L, int64_t ta, int64_t tb) {
  const int64_t tx = wrt_b ? tb : ta;
  if (tx == 0) {
    /* broadcast along this row: reduce in double, the row can be a whole image */
    double s = 0.0;
    if (ta == 1 && tb == 0) {
      const float bv = b[0];
      for (int64_t i = 0; i < L; i++) s += bin_grad(kind, wrt_b, a[i], bv, dy[i]);
    } else if (ta == 0 && tb == 1) {
      const float av = a[0];
      for (int64_t i = 0; i < L; i++) s += bin_grad(kind, wrt_b, av, b[i], dy[i]);
    } else {
      for (int64_t i = 0; i < L; i++) s += bin_grad(kind, wrt_b, a[i * ta], b[i * tb], dy[i]);
    }
    dx[0] += (float)s;
  } else if (ta == 1 && tb == 1) {
    for (int64_t i = 0; i < L; i++) dx[i] += bin_grad(kind, wrt_b, a[i], b[i], dy[i]);
  } else if (ta == 1 && tb == 0) {
    const float bv = b[0];
    for (int64_t i = 0; i < L; i++) dx[i] += bin_grad(kind, wrt_b, a[i], bv, dy[i]);
  } else if (ta == 0 && tb == 1) {
    const float av = a[0];
    for (int64_t i = 0; i < L; i++) dx[i] += bin_grad(kind, wrt_b, av, b[i], dy[i]);
  } else {
    for (int64_t i = 0; i < L; i++)
      dx[i * tx] += bin_grad(kind, wrt_b, a[i * ta], b[i * tb], dy[i]);
  }
}

PT_INLINE void bin_backward_k(int kind, int wrt_b, float *dx, const float *dout, const float *a,
                              const float *b, const bin_layout *l) {
  const int64_t L = l->shape[l->nd - 1], ta = l->sa[l->nd - 1], tb = l->sb[l->nd - 1];
  int64_t rows = 1;
  for (int d = 0; d < l->nd - 1; d++) rows *= l->shape[d];
  bin_iter it = {{0}, 0, 0};
  for (int64_t r = 0; r < rows; r++) {
    bin_row_b(kind, wrt_b, dx + (wrt_b ? it.ib : it.ia), dout + r * L, a + it.ia, b + it.ib, L, ta,
              tb);
    bin_next_row(&it, l);
  }
}

/* out: the output shape of p; a, b: the operands as addressed by p->sa, p->sb. */
void pt_binary_forward(float *out, const float *a, const float *b, const pt_binary_params *p) {
  bin_layout l;
  bin_collapse(p, &l);
  switch (p->kind) {
  case PT_BIN_ADD:
    bin_forward_k(PT_BIN_ADD, out, a, b, &l);
    break;
  case PT_BIN_SUB:
    bin_forward_k(PT_BIN_SUB, out, a, b, &l);
    break;
  case PT_BIN_MUL:
    bin_forward_k(PT_BIN_MUL, out, a, b, &l);
    break;
  case PT_BIN_DIV:
    bin_forward_k(PT_BIN_DIV, out, a, b, &l);
    break;
  }
}

/* da, db: shaped like a and b (either NULL to skip); dout: the output shape. */
void pt_binary_backward(float *da, float *db, const float *dout, const float *a, const float *b,
                        const pt_binary_params *p) {
  bin_layout l;
  bin_collapse(p, &l);
  if (da) {
    switch (p->kind) {
    case PT_BIN_ADD: /* d/da of a + b and a - b is dout whatever the operands */
    case PT_BIN_SUB:
      bin_backward_k(PT_BIN_ADD, 0, da, dout, a, b, &l);
      break;
    case PT_BIN_MUL:
      bin_backward_k(PT_BIN_MUL, 0, da, dout, a, b, &l);
      break;
    case PT_BIN_DIV:
      bin_backward_k(PT_BIN_DIV, 0, da, dout, a, b, &l);
      break;
    }
  }
  if (db) {
    switch (p->kind) {
    case PT_BIN_ADD:
      bin_backward_k(PT_BIN_ADD, 1, db, dout, a, b, &l);
      break;
    case PT_BIN_SUB:
      bin_backward_k(PT_BIN_SUB, 1, db, dout, a, b, &l);
      break;
    case PT_BIN_MUL:
      bin_backward_k(PT_BIN_MUL, 1, db, dout, a, b, &l);
      break;
    case PT_BIN_DIV:
      bin_backward_k(PT_BIN_DIV, 1, db, dout, a, b, &l);
      break;
    }
  }
}

/* out, in: n elements (out may be in). Sigmoid's loop compiles to vector code (pt_exp_neg_f has
 * no call in it), one copy per instruction set. */
PT_CLONES void pt_unary_forward(float *out, const float *in, const pt_unary_params *p) {
  const int64_t n = p->n;
  const float alpha = p->alpha;
  switch (p->kind) {
  case PT_UN_RELU:
    for (int64_t i = 0; i < n; i++) out[i] = pt_relu_f(in[i]);
    break;
  case PT_UN_LEAKY_RELU:
    for (int64_t i = 0; i < n; i++) out[i] = pt_leaky_relu_f(in[i], alpha);
    break;
  case PT_UN_SIGMOID:
    for (int64_t i = 0; i < n; i++) out[i] = pt_sigmoid_f(in[i]);
    break;
  case PT_UN_TANH:
    for (int64_t i = 0; i < n; i++) out[i] = pt_tanh_f(in[i]);
    break;
  }
}

/* din, dout, in, out: n elements. Relu and LeakyRelu read the input, Sigmoid and Tanh the output
 * (recomputed from the input when out is NULL). */
PT_CLONES void pt_unary_backward(float *din, const float *dout, const float *in, const float *out,
                                 const pt_unary_params *p) {
  if (!din) return;
  const int64_t n = p->n;
  const float alpha = p->alpha;
  switch (p->kind) {
  case PT_UN_RELU:
    for (int64_t i = 0; i < n; i++) din[i] += pt_relu_b(in[i], dout[i]);
    break;
  case PT_UN_LEAKY_RELU:
    for (int64_t i = 0; i < n; i++) din[i] += pt_leaky_relu_b(in[i], alpha, dout[i]);
    break;
  case PT_UN_SIGMOID:
    if (out)
      for (int64_t i = 0; i < n; i++) din[i] += pt_sigmoid_b(out[i], dout[i]);
    else
      for (int64_t i = 0; i < n; i++) din[i] += pt_sigmoid_b(pt_sigmoid_f(in[i]), dout[i]);
    break;
  case PT_UN_TANH:
    if (out)
      for (int64_t i = 0; i < n; i++) din[i] += pt_tanh_b(out[i], dout[i]);
    else
      for (int64_t i = 0; i < n; i++) din[i] += pt_tanh_b(pt_tanh_f(in[i]), dout[i]);
    break;
  }
}

/* One pass over the floats' bits (an exponent of all ones is Inf or NaN) with the flags OR-ed:
 * no early exit and no chain of float additions, so it runs in vector code. The divergence guard
 * passes every parameter's gradient through it each training tick. */
PT_CLONES bool pt_all_finite(const float *x, int64_t n) {
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; i++) {
    uint32_t u;
    memcpy(&u, x + i, sizeof u);
    bad |= (u & 0x7f800000u) == 0x7f800000u;
  }
  return !bad;
}

/* out, in: n elements; a copy onto itself (an in-place reshape) is a no-op. */
void pt_copy_forward(float *out, const float *in, const pt_copy_params *p) {
  if (out != in) memmove(out, in, sizeof(float) * (size_t)p->n);
}

/* When the gradient buffer is shared with the output's (an in-place reshape), it already holds
 * dout: nothing to add. */
void pt_copy_backward(float *din, const float *dout, const pt_copy_params *p) {
  if (!din || din == dout) return;
  const int64_t n = p->n;
  for (int64_t i = 0; i < n; i++) din[i] += dout[i];
}
