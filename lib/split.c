/* A convolution split across a stage cut by output channels: which nodes can be split, and the
 * derived graph a stream runs when its partition splits some (split.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "split.h"

static bool is_init(const pt_value *v) {
  return !v->is_int && v->data && (v->kind == PT_VAL_PARAM || v->kind == PT_VAL_CONST);
}

const char *pt_split_refusal(const pt_model *m, int i, int C) {
  if (i < 0 || i >= m->n_nodes) return "there is no such node";
  const pt_node *nd = &m->nodes[i];
  if (nd->op != PT_OP_CONV) return "it is not a convolution";
  const pt_conv_params *p = &nd->p.conv;
  if (p->G != 1) return "it is a grouped convolution";
  if (!is_init(&m->vals[nd->in[1]])) return "its weights are not an initializer";
  if (p->has_bias && !is_init(&m->vals[nd->in[2]])) return "its bias is not an initializer";
  if (C < 1 || C >= p->OC) return "the channel count must be between 1 and the output channels - 1";
  return NULL;
}

int pt_split_step(const pt_model *m, int i) {
  if (i < 0 || i >= m->n_nodes || m->nodes[i].op != PT_OP_CONV) return 0;
  int OC = m->nodes[i].p.conv.OC;
  int step = OC % 16 == 0 && OC >= 32 ? 16 : OC % 8 == 0 && OC >= 16 ? 8 : 0;
  return step && !pt_split_refusal(m, i, step) ? step : 0;
}

/* How many nodes read value v, and whether it is a graph output. */
static int readers(const pt_model *m, int v, bool *is_output) {
  int r = 0;
  for (int i = 0; i < m->n_nodes; i++)
    for (int k = 0; k < m->nodes[i].n_in; k++) r += m->nodes[i].in[k] == v;
  *is_output = v == m->output;
  for (int k = 0; k < m->n_outputs; k++) *is_output |= m->outputs[k] == v;
  return r;
}

bool pt_split_carries_act(const pt_model *m, int i) {
  if (i + 1 >= m->n_nodes || m->nodes[i + 1].op != PT_OP_UNARY) return false;
  int y = m->nodes[i].out[0];
  bool out;
  return m->nodes[i + 1].in[0] == y && readers(m, y, &out) == 1 && !out;
}

/* Appends a value shaped like `like` with dim 1 (channels, or the weights' output rows) set to
 * `c`, of the given kind; its data, for initializers, aliases `data`. */
static int add_part(pt_model *d, const pt_value *like, const char *name, const char *suffix, int c,
                    pt_val_kind kind, float *data, pt_error *err) {
  char buf[256];
  snprintf(buf, sizeof buf, "%s%s", name, suffix);
  pt_shape sh = like->shape;
  int v = pt_graph_add_value(d, buf, err);
  if (v < 0) return -1;
  int dim = kind == PT_VAL_ACT ? 1 : 0;
  sh.d[dim] = c;
  pt_value *val = &d->vals[v];
  val->shape = sh;
  val->numel = pt_shape_numel(&sh);
  val->kind = kind;
  val->data = data;
  return v;
}

static pt_node *add_node(pt_model *d, int *cap, pt_error *err) {
  if (d->n_nodes == *cap) {
    int nc = *cap ? *cap * 2 : 16;
    pt_node *nn = realloc(d->nodes, sizeof *nn * (size_t)nc);
    if (!nn) {
      pt_error_set(err, PT_ERR_NOMEM, "%s: out of memory splitting a convolution", d->name);
      return NULL;
    }
    d->nodes = nn;
    *cap = nc;
  }
  pt_node *nd = &d->nodes[d->n_nodes++];
  memset(nd, 0, sizeof *nd);
  return nd;
}

/* Gives node nd (owned) copies of its name, `name` + `suffix`, and its op type. */
static pt_status name_node(pt_model *d, pt_node *nd, const char *name, const char *suffix,
                           const char *op_type, pt_error *err) {
  char buf[256];
  snprintf(buf, sizeof buf, "%s%s", name ? name : "", suffix);
  nd->name = strdup(buf);
  nd->op_type = strdup(op_type ? op_type : "");
  if (!nd->name || !nd->op_type)
    return pt_error_set(err, PT_ERR_NOMEM, "%s: out of memory splitting a convolution", d->name);
  return PT_OK;
}

static pt_status copy_node(pt_model *d, pt_node *dst, const pt_node *src, const char *suffix,
                           pt_error *err) {
  *dst = *src;
  return name_node(d, dst, src->name, suffix, src->op_type, err);
}

/* Replaces node i of m (and its activation, when it moves with the halves) by the two halves and
 * their Concat, appending to d. Returns the number of original nodes consumed, or -1. */
static int emit_split(pt_model *d, int *cap, const pt_model *m, int i, int C, bool act,
                      int *first_of_next, pt_error *err) {
  const pt_node *cv = &m->nodes[i];
  const pt_conv_params *p = &cv->p.conv;
  const pt_node *an = act ? &m->nodes[i + 1] : NULL;
  int y = cv->out[0], out = act ? an->out[0] : y;
  const pt_value *w = &m->vals[cv->in[1]];
  const pt_value *b = p->has_bias ? &m->vals[cv->in[2]] : NULL;
  int64_t wrow = w->numel / p->OC;
  int part_c[2] = {C, p->OC - C};
  int part_out[2];
  for (int h = 0; h < 2; h++) {
    const char *sfx = h ? "/split1" : "/split0";
    int off = h ? C : 0, c = part_c[h];
    int wv = add_part(d, w, w->name, sfx, c, w->kind, w->data + off * wrow, err);
    int bv = b ? add_part(d, b, b->name, sfx, c, b->kind, b->data + off, err) : -1;
    int yv = add_part(d, &m->vals[y], m->vals[y].name, sfx, c, PT_VAL_ACT, NULL, err);
    if (wv < 0 || (b && bv < 0) || yv < 0) return -1;
    if (h) *first_of_next = d->n_nodes;
    pt_node *nd = add_node(d, cap, err);
    if (!nd || copy_node(d, nd, cv, sfx, err)) return -1;
    nd->in[1] = wv;
    if (b) nd->in[2] = bv;
    nd->out[0] = yv;
    nd->p.conv.OC = c;
    nd->flops = cv->flops * c / p->OC;
    nd->scratch_floats = pt_conv2d_scratch(&nd->p.conv);
    part_out[h] = yv;
    if (act) {
      int av = add_part(d, &m->vals[out], m->vals[out].name, sfx, c, PT_VAL_ACT, NULL, err);
      pt_node *ad = av < 0 ? NULL : add_node(d, cap, err);
      if (!ad || copy_node(d, ad, an, sfx, err)) return -1;
      ad->in[0] = yv;
      ad->out[0] = av;
      ad->p.unary.n = d->vals[av].numel;
      ad->flops = (double)ad->p.unary.n;
      part_out[h] = av;
    }
  }
  pt_node *cn = add_node(d, cap, err);
  if (!cn || name_node(d, cn, cv->name, "/join", "Concat", err)) return -1;
  cn->op = PT_OP_CONCAT;
  cn->n_in = 2;
  cn->in[0] = part_out[0];
  cn->in[1] = part_out[1];
  cn->n_out = 1;
  cn->out[0] = out;
  const pt_shape *os = &m->vals[out].shape;
  cn->p.concat.n = 2;
  cn->p.concat.outer = os->d[0];
  cn->p.concat.inner = m->vals[out].numel / (os->d[0] * p->OC);
  cn->p.concat.dims[0] = C;
  cn->p.concat.dims[1] = p->OC - C;
  cn->flops = (double)m->vals[out].numel;
  return act ? 2 : 1;
}

pt_status pt_split_derive(const pt_model *m, const pt_partition *p, pt_model **out, int *first,
                          pt_error *err) {
  *out = NULL;
  pt_model *d = calloc(1, sizeof *d);
  if (!d) return pt_error_set(err, PT_ERR_NOMEM, "%s: out of memory", m->name);
  d->name = strdup(m->name);
  d->inputs = malloc(sizeof *d->inputs * (size_t)(m->n_inputs ? m->n_inputs : 1));
  d->outputs = malloc(sizeof *d->outputs * (size_t)(m->n_outputs ? m->n_outputs : 1));
  if (!d->name || !d->inputs || !d->outputs) {
    pt_split_free(d);
    return pt_error_set(err, PT_ERR_NOMEM, "%s: out of memory", m->name);
  }
  /* Values keep their indices and share their data with the model's (pt_split_free); only the
   * names are copies. */
  for (int v = 0; v < m->n_vals; v++) {
    if (pt_graph_add_value(d, m->vals[v].name, err) < 0) {
      pt_split_free(d);
      return PT_ERR_NOMEM;
    }
    char *name = d->vals[v].name;
    d->vals[v] = m->vals[v];
    d->vals[v].name = name;
  }
  memcpy(d->inputs, m->inputs, sizeof *d->inputs * (size_t)m->n_inputs);
  memcpy(d->outputs, m->outputs, sizeof *d->outputs * (size_t)m->n_outputs);
  d->n_inputs = m->n_inputs;
  d->n_outputs = m->n_outputs;
  d->input = m->input;
  d->output = m->output;
  d->opset = m->opset;

  int cap = 0, j = 0;
  pt_status st = PT_OK;
  first[0] = 0;
  for (int i = 0; i < m->n_nodes && !st;) {
    /* stages that begin at node i with a whole node */
    while (j + 1 < p->D && p->first[j + 1] == i && !p->split[j]) first[++j] = d->n_nodes;
    if (j + 1 < p->D && p->first[j + 1] == i && p->split[j]) {
      /* the activation moves with the halves unless the next stage holds nothing but the rest of
       * the convolution (the activation then begins the stage after) */
      bool act = pt_split_carries_act(m, i) && !(j + 2 <= p->D && p->first[j + 2] == i + 1);
      int used = emit_split(d, &cap, m, i, p->split[j], act, &first[j + 1], err);
      if (used < 0) {
        st = PT_ERR_NOMEM; /* what every step can fail with */
        break;
      }
      j++;
      i += used;
      continue;
    }
    pt_node *nd = add_node(d, &cap, err);
    if (!nd || copy_node(d, nd, &m->nodes[i], "", err)) {
      st = PT_ERR_NOMEM;
      break;
    }
    i++;
  }
  first[p->D] = d->n_nodes;
  if (!st) {
    /* producers follow the new node order; a split convolution's own output is read by no one
     * when its activation moved with the halves */
    for (int v = 0; v < d->n_vals; v++) d->vals[v].producer = -1;
    for (int i = 0; i < d->n_nodes; i++)
      for (int k = 0; k < d->nodes[i].n_out; k++)
        if (d->nodes[i].out[k] >= 0) d->vals[d->nodes[i].out[k]].producer = i;
    *out = d;
    return PT_OK;
  }
  pt_split_free(d);
  return st;
}

void pt_split_free(pt_model *d) {
  if (!d) return;
  for (int v = 0; v < d->n_vals; v++) { /* the model's, or rows of them */
    d->vals[v].data = NULL;
    d->vals[v].ival = NULL;
  }
  pt_graph_free(d);
}
