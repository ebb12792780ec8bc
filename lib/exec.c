/* The CPU executor: one switch on the op for forward and one for backward over a node range.
 *
 * Memory is carved at init from three arenas (activations, gradients, per-node aux) by walking the
 * values once; running a tick allocates nothing. Which values get a gradient buffer: every
 * parameter read in range, every external input when the caller asks (a stage sending a gradient
 * upstream), and every value produced in range from an input that has one. Forward and backward
 * visit nodes in order and in exact reverse.
 *
 * Convolutions on oneDNN (cpu/dnnl_conv.h) take on work around them where nothing outside the
 * range can tell: a Relu that is the only reader of a convolution's output is folded into the
 * convolution's plan (which writes relu(conv) into the convolution's output buffer; the Relu's
 * output is that same buffer, and its backward, which reads its input, sees relu(conv), which is
 * as good: relu'(x) = [x > 0] = [relu(x) > 0]). Without train, a convolution whose output (through
 * such a Relu at most) only another convolution reads hands it over in oneDNN's blocked layout:
 * the NCHW buffers in between are then never written. Values that leave the range (read by a node
 * after it, or graph outputs) are never taken over: the caller binds and reads them. */
#include <stdlib.h>
#include <string.h>
#include "exec.h"
#include "cpu/dnnl_conv.h"

#define PT_ALIGN_FLOATS 16 /* 64-byte alignment of every buffer */

static int64_t round_up(int64_t n, int64_t a) {
  return (n + a - 1) / a * a;
}

static bool in_range(const pt_exec *x, int node) {
  return node >= x->first && node < x->end;
}

/* The node that alone reads value v, once, when it is in range and v is no graph output; -1
 * otherwise (v is seen outside the range, or read twice). */
static int sole_reader(const pt_exec *x, int v) {
  const pt_model *m = x->m;
  if (v == m->output) return -1;
  for (int i = 0; i < m->n_outputs; i++)
    if (m->outputs[i] == v) return -1;
  int reader = -1, reads = 0;
  for (int i = 0; i < m->n_nodes; i++)
    for (int k = 0; k < m->nodes[i].n_in; k++)
      if (m->nodes[i].in[k] == v) reader = i, reads++;
  return reads == 1 && in_range(x, reader) ? reader : -1;
}

static bool is_conv(const pt_node *n) {
  return n->op == PT_OP_CONV || n->op == PT_OP_CONV_TRANSPOSE;
}

/* oneDNN plans, per the static rule of cpu/dnnl_conv.c; a node without one (the rule prefers
 * cpu/conv.c, or oneDNN has no JIT kernel for its shape) runs cpu/conv.c. A Relu that alone reads
 * a planned convolution's output is folded into the plan; planned convolutions that feed each
 * other alone are linked (sharing the tensor in oneDNN's layout without train). */
static void make_plans(pt_exec *x) {
  const char *dnnl_env = getenv("PARTIME_DNNL");
  if (dnnl_env && strcmp(dnnl_env, "0") == 0) return;
  const char *wino_env = getenv("PARTIME_WINOGRAD");
  const bool no_wino = wino_env && strcmp(wino_env, "0") == 0;
  const pt_model *m = x->m;
  for (int i = x->first; i < x->end; i++) {
    const pt_node *n = &m->nodes[i];
    unsigned ops = is_conv(n) ? pt_dnnl_conv_preferred(&n->p.conv, n->op != PT_OP_CONV) : 0;
    if (no_wino) ops &= ~(unsigned)PT_DNNL_WINOGRAD;
    if (!(ops & PT_DNNL_ALL)) continue;
    const int r = sole_reader(x, n->out[0]);
    const pt_node *rn = r >= 0 ? &m->nodes[r] : NULL;
    const bool relu =
        rn && rn->op == PT_OP_UNARY && rn->p.unary.kind == PT_UN_RELU && rn->in[0] == n->out[0];
    x->plan[i - x->first] =
        pt_dnnl_conv_plan_create(&n->p.conv, n->op != PT_OP_CONV, x->train,
                                 ops | PT_DNNL_JIT_ONLY | (relu ? PT_DNNL_RELU : 0), NULL);
    if (x->plan[i - x->first] && relu) x->folded[r - x->first] = true;
  }
  for (int i = x->first; i < x->end; i++) {
    if (!x->plan[i - x->first]) continue;
    int v = m->nodes[i].out[0], r = sole_reader(x, v);
    if (r >= 0 && x->folded[r - x->first]) {
      v = m->nodes[r].out[0];
      r = sole_reader(x, v);
    }
    if (r >= 0 && is_conv(&m->nodes[r]) && m->nodes[r].in[0] == v && x->plan[r - x->first])
      pt_dnnl_conv_link(x->plan[i - x->first], x->plan[r - x->first]);
  }
}

/* Inputs of a node that carry float data through which gradients flow (the others are shapes,
 * scales, statistics: constants). */
static int n_data_inputs(const pt_node *n) {
  switch (n->op) {
  case PT_OP_COPY:
  case PT_OP_RESIZE:
  case PT_OP_UNARY:
  case PT_OP_SOFTMAX:
  case PT_OP_MAXPOOL:
  case PT_OP_AVGPOOL:
    return 1;
  case PT_OP_BATCHNORM:
    return 3; /* X, scale, bias; mean and var are statistics */
  default:
    return n->n_in;
  }
}

bool pt_exec_is_external(const pt_exec *x, int v) {
  const pt_value *val = &x->m->vals[v];
  if (val->kind == PT_VAL_PARAM || val->kind == PT_VAL_CONST || val->is_int) return false;
  if (val->producer >= 0 && in_range(x, val->producer)) return false;
  for (int i = x->first; i < x->end; i++) {
    const pt_node *n = &x->m->nodes[i];
    for (int k = 0; k < n->n_in; k++)
      if (n->in[k] == v) return true;
  }
  return false;
}

void pt_exec_plan_grads(const pt_model *m, int first, int end, bool grad_external, bool *needs_grad,
                        int *params, int *n_params) {
  const pt_exec range = {.m = (pt_model *)m, .first = first, .end = end};
  *n_params = 0;
  for (int v = 0; v < m->n_vals; v++) {
    if (m->vals[v].kind == PT_VAL_PARAM) {
      bool read = false;
      for (int i = first; i < end && !read; i++)
        for (int k = 0; k < n_data_inputs(&m->nodes[i]); k++)
          if (m->nodes[i].in[k] == v) read = true;
      if (read) {
        needs_grad[v] = true;
        params[(*n_params)++] = v;
      }
    } else if (grad_external && pt_exec_is_external(&range, v)) {
      needs_grad[v] = true;
    }
  }
  for (int i = first; i < end; i++) {
    const pt_node *n = &m->nodes[i];
    bool any = false;
    for (int k = 0; k < n_data_inputs(n); k++)
      if (n->in[k] >= 0 && needs_grad[n->in[k]]) any = true;
    for (int k = 0; k < n->n_out; k++) needs_grad[n->out[k]] = any;
  }
}

pt_status pt_exec_init(pt_exec *x, pt_model *m, int first, int end, bool train, bool grad_external,
                       pt_error *err) {
  memset(x, 0, sizeof *x);
  if (first < 0 || end > m->n_nodes || first >= end)
    return pt_error_set(err, PT_ERR_INVALID, "%s: invalid node range [%d, %d) of %d nodes", m->name,
                        first, end, m->n_nodes);
  x->m = m;
  x->first = first;
  x->end = end;
  x->train = train;
  int nv = m->n_vals, nn = end - first;
  x->act = calloc(nv, sizeof *x->act);
  x->grad = calloc(nv, sizeof *x->grad);
  x->needs_grad = calloc(nv, sizeof *x->needs_grad);
  x->aux = calloc(nn, sizeof *x->aux);
  x->plan = calloc(nn, sizeof *x->plan);
  x->folded = calloc(nn, sizeof *x->folded);
  x->params = calloc(nv, sizeof *x->params);
  if (!x->act || !x->grad || !x->needs_grad || !x->aux || !x->plan || !x->folded || !x->params)
    goto nomem;

  if (train)
    pt_exec_plan_grads(m, first, end, grad_external, x->needs_grad, x->params, &x->n_params);
  make_plans(x);

  /* Size table: a folded Relu's output is its input's buffer. */
  int64_t act_floats = 0, grad_floats = 0, aux_bytes = 0;
  for (int v = 0; v < nv; v++) {
    const pt_value *val = &m->vals[v];
    if (val->is_int) continue;
    if (val->producer >= 0 && in_range(x, val->producer) && !x->folded[val->producer - first])
      act_floats += round_up(val->numel, PT_ALIGN_FLOATS);
    if (x->needs_grad[v]) grad_floats += round_up(val->numel, PT_ALIGN_FLOATS);
  }
  for (int i = first; i < end; i++) {
    aux_bytes += round_up(m->nodes[i].aux_bytes, 64);
    if (m->nodes[i].scratch_floats > x->scratch_floats)
      x->scratch_floats = m->nodes[i].scratch_floats;
  }
  if (act_floats && !(x->act_arena = aligned_alloc(64, act_floats * sizeof(float)))) goto nomem;
  if (grad_floats && !(x->grad_arena = aligned_alloc(64, grad_floats * sizeof(float)))) goto nomem;
  if (aux_bytes && !(x->aux_arena = aligned_alloc(64, aux_bytes))) goto nomem;
  if (x->scratch_floats && !(x->scratch = aligned_alloc(
                                 64, round_up(x->scratch_floats, PT_ALIGN_FLOATS) * sizeof(float))))
    goto nomem;
  if (act_floats) memset(x->act_arena, 0, act_floats * sizeof(float));
  if (grad_floats) memset(x->grad_arena, 0, grad_floats * sizeof(float));

  /* Carve. */
  float *a = x->act_arena, *g = x->grad_arena;
  for (int v = 0; v < nv; v++) {
    pt_value *val = &m->vals[v];
    if (val->is_int) continue;
    if (val->kind == PT_VAL_PARAM || val->kind == PT_VAL_CONST) {
      x->act[v] = val->data;
    } else if (val->producer >= 0 && in_range(x, val->producer) &&
               !x->folded[val->producer - first]) {
      x->act[v] = a;
      a += round_up(val->numel, PT_ALIGN_FLOATS);
    }
    if (x->needs_grad[v]) {
      x->grad[v] = g;
      g += round_up(val->numel, PT_ALIGN_FLOATS);
    }
  }
  for (int i = first; i < end; i++)
    if (x->folded[i - first]) x->act[m->nodes[i].out[0]] = x->act[m->nodes[i].in[0]];
  unsigned char *ax = x->aux_arena;
  for (int i = first; i < end; i++) {
    if (m->nodes[i].aux_bytes) {
      x->aux[i - first] = ax;
      ax += round_up(m->nodes[i].aux_bytes, 64);
    }
  }
  return PT_OK;

nomem:
  pt_exec_free(x);
  return pt_error_set(err, PT_ERR_NOMEM, "%s: out of memory allocating a stage of nodes [%d, %d)",
                      m->name, first, end);
}

void pt_exec_free(pt_exec *x) {
  for (int i = 0; x->plan && i < x->end - x->first; i++) pt_dnnl_conv_plan_free(x->plan[i]);
  free(x->plan);
  free(x->folded);
  free(x->act);
  free(x->grad);
  free(x->needs_grad);
  free(x->aux);
  free(x->params);
  free(x->act_arena);
  free(x->grad_arena);
  free(x->aux_arena);
  free(x->scratch);
  memset(x, 0, sizeof *x);
}

void pt_exec_bind(pt_exec *x, int value, const float *data) {
  x->act[value] = (float *)data;
}

float *pt_exec_act(const pt_exec *x, int value) {
  return x->act[value];
}

float *pt_exec_grad(const pt_exec *x, int value) {
  return x->grad[value];
}

void pt_exec_params_changed(pt_exec *x) {
  for (int i = 0; i < x->end - x->first; i++)
    if (x->plan[i]) pt_dnnl_conv_weights_changed(x->plan[i]);
}

void pt_exec_zero_grad(pt_exec *x) {
  for (int v = 0; v < x->m->n_vals; v++)
    if (x->grad[v]) memset(x->grad[v], 0, x->m->vals[v].numel * sizeof(float));
}

static void node_forward(pt_exec *x, int node) {
  const pt_node *n = &x->m->nodes[node];
  void *aux = x->aux[node - x->first], *plan = x->plan[node - x->first];
  float *const *A = x->act;
#define IN(i) ((i) < n->n_in && n->in[i] >= 0 ? A[n->in[i]] : NULL)
  float *out = A[n->out[0]];
  const pt_op_params *p = &n->p;
  if (plan) {
    pt_dnnl_conv_forward(plan, out, IN(0), IN(1), IN(2));
    return;
  }
  if (x->folded[node - x->first]) { /* done by the convolution; copied where the caller bound */
    const float *y = A[n->in[0]];
    if (out != y) memcpy(out, y, x->m->vals[n->out[0]].numel * sizeof(float));
    return;
  }
  switch (n->op) {
  case PT_OP_CONV:
    pt_conv2d_forward(out, IN(0), IN(1), IN(2), &p->conv, x->scratch);
    break;
  case PT_OP_CONV_TRANSPOSE:
    pt_conv_transpose2d_forward(out, IN(0), IN(1), IN(2), &p->conv, x->scratch);
    break;
  case PT_OP_GEMM:
    pt_gemm_forward(out, IN(0), IN(1), IN(2), &p->gemm);
    break;
  case PT_OP_MATMUL:
    pt_matmul_forward(out, IN(0), IN(1), &p->matmul);
    break;
  case PT_OP_BINARY:
    pt_binary_forward(out, IN(0), IN(1), &p->binary);
    break;
  case PT_OP_UNARY:
    pt_unary_forward(out, IN(0), &p->unary);
    break;
  case PT_OP_MAXPOOL:
    pt_maxpool_forward(out, aux, IN(0), &p->pool);
    break;
  case PT_OP_AVGPOOL:
    pt_avgpool_forward(out, IN(0), &p->pool);
    break;
  case PT_OP_BATCHNORM:
    pt_batchnorm_forward(out, IN(0), IN(1), IN(2), IN(3), IN(4), &p->bn);
    break;
  case PT_OP_SOFTMAX:
    pt_softmax_forward(out, IN(0), &p->softmax);
    break;
  case PT_OP_COPY:
    pt_copy_forward(out, IN(0), &p->copy);
    break;
  case PT_OP_CONCAT: {
    const float *ins[PT_MAX_CONCAT];
    for (int i = 0; i < n->n_in && i < PT_MAX_CONCAT; i++) ins[i] = IN(i);
    pt_concat_forward(out, ins, &p->concat);
    break;
  }
  case PT_OP_RESIZE:
    pt_resize_forward(out, IN(0), &p->resize);
    break;
  case PT_OP_COUNT:
    break;
  }
#undef IN
}

static void node_backward(pt_exec *x, int node) {
  const pt_node *n = &x->m->nodes[node];
  void *aux = x->aux[node - x->first], *plan = x->plan[node - x->first];
  float *const *A = x->act, *const *G = x->grad;
#define IN(i) ((i) < n->n_in && n->in[i] >= 0 ? A[n->in[i]] : NULL)
#define D(i) ((i) < n->n_in && n->in[i] >= 0 ? G[n->in[i]] : NULL)
  const float *out = A[n->out[0]], *dout = G[n->out[0]];
  const pt_op_params *p = &n->p;
  if (!dout) return;
  if (plan) {
    pt_dnnl_conv_backward(plan, D(0), D(1), D(2), dout, IN(0), IN(1));
    return;
  }
  switch (n->op) {
  case PT_OP_CONV:
    pt_conv2d_backward(D(0), D(1), D(2), dout, IN(0), IN(1), &p->conv, x->scratch);
    break;
  case PT_OP_CONV_TRANSPOSE:
    pt_conv_transpose2d_backward(D(0), D(1), D(2), dout, IN(0), IN(1), &p->conv, x->scratch);
    break;
  case PT_OP_GEMM:
    pt_gemm_backward(D(0), D(1), D(2), dout, IN(0), IN(1), &p->gemm);
    break;
  case PT_OP_MATMUL:
    pt_matmul_backward(D(0), D(1), dout, IN(0), IN(1), &p->matmul);
    break;
  case PT_OP_BINARY:
    pt_binary_backward(D(0), D(1), dout, IN(0), IN(1), &p->binary);
    break;
  case PT_OP_UNARY:
    pt_unary_backward(D(0), dout, IN(0), out, &p->unary);
    break;
  case PT_OP_MAXPOOL:
    pt_maxpool_backward(D(0), dout, aux, &p->pool);
    break;
  case PT_OP_AVGPOOL:
    pt_avgpool_backward(D(0), dout, &p->pool);
    break;
  case PT_OP_BATCHNORM:
    pt_batchnorm_backward(D(0), D(1), D(2), dout, IN(0), IN(1), IN(3), IN(4), &p->bn);
    break;
  case PT_OP_SOFTMAX:
    pt_softmax_backward(D(0), dout, out, &p->softmax);
    break;
  case PT_OP_COPY:
    pt_copy_backward(D(0), dout, &p->copy);
    break;
  case PT_OP_CONCAT: {
    float *dins[PT_MAX_CONCAT];
    for (int i = 0; i < n->n_in && i < PT_MAX_CONCAT; i++) dins[i] = D(i);
    pt_concat_backward(dins, dout, &p->concat);
    break;
  }
  case PT_OP_RESIZE:
    pt_resize_backward(D(0), dout, &p->resize);
    break;
  case PT_OP_COUNT:
    break;
  }
#undef IN
#undef D
}

void pt_exec_forward_node(pt_exec *x, int node) {
  node_forward(x, node);
}

void pt_exec_backward_node(pt_exec *x, int node) {
  node_backward(x, node);
}

void pt_exec_forward(pt_exec *x) {
  for (int i = x->first; i < x->end; i++) node_forward(x, i);
}

void pt_exec_backward(pt_exec *x) {
  for (int i = x->end - 1; i >= x->first; i--) node_backward(x, i);
}
