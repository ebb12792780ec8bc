/* The in-memory graph behind pt_model: value table, freeing, and the read-only accessors of the
 * public model API.
 *
 * The value array grows by doubling; since pt_model has no capacity field, the capacity is implied
 * by n_vals (the next power of two, at least 8), so growth happens exactly when n_vals reaches a
 * power of two. Never keep a pt_value pointer across pt_graph_add_value. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "graph.h"
#include "onnx_internal.h"

int64_t pt_shape_numel(const pt_shape *s) {
  int64_t n = 1;
  for (int i = 0; i < s->ndim; i++) n *= s->d[i];
  return n;
}

const char *pt_shape_str(const pt_shape *s, char *buf, size_t n) {
  if (!buf || n == 0) return buf;
  buf[0] = '\0';
  if (s->ndim == 0) {
    snprintf(buf, n, "scalar");
    return buf;
  }
  size_t used = 0;
  for (int i = 0; i < s->ndim && used < n; i++) {
    int k = snprintf(buf + used, n - used, i ? "x%lld" : "%lld", (long long)s->d[i]);
    if (k < 0) break;
    used += (size_t)k;
  }
  return buf;
}

int pt_graph_add_value(pt_model *m, const char *name, pt_error *err) {
  int n = m->n_vals;
  if (n >= 8 && (n & (n - 1)) == 0) {
    pt_value *nv = realloc(m->vals, sizeof *nv * (size_t)n * 2);
    if (!nv) goto nomem;
    m->vals = nv;
  } else if (n == 0) {
    m->vals = malloc(sizeof *m->vals * 8);
    if (!m->vals) goto nomem;
  }
  pt_value *v = &m->vals[n];
  memset(v, 0, sizeof *v);
  v->name = strdup(name ? name : "");
  if (!v->name) goto nomem;
  v->producer = -1;
  v->init_index = -1;
  v->kind = PT_VAL_ACT;
  m->n_vals = n + 1;
  return n;
nomem:
  pt_error_set(err, PT_ERR_NOMEM, "%s: out of memory", m->name ? m->name : "model");
  return -1;
}

int pt_graph_find_value(const pt_model *m, const char *name) {
  for (int i = 0; i < m->n_vals; i++)
    if (strcmp(m->vals[i].name, name) == 0) return i;
  return -1;
}

void pt_graph_free(pt_model *m) {
  if (!m) return;
  for (int i = 0; i < m->n_vals; i++) {
    free(m->vals[i].name);
    free(m->vals[i].data);
    free(m->vals[i].ival);
  }
  free(m->vals);
  for (int i = 0; i < m->n_nodes; i++) {
    free(m->nodes[i].name);
    free(m->nodes[i].op_type);
  }
  free(m->nodes);
  free(m->inputs);
  free(m->outputs);
  if (m->proto) onnx__model_proto__free_unpacked((Onnx__ModelProto *)m->proto, NULL);
  free(m->name);
  free(m);
}

void pt_model_free(pt_model *m) {
  pt_graph_free(m);
}

const char *pt_model_name(const pt_model *m) {
  return m->name;
}

pt_shape pt_model_input_shape(const pt_model *m) {
  pt_shape s = {0};
  if (m->input >= 0 && m->input < m->n_vals) s = m->vals[m->input].shape;
  return s;
}

pt_shape pt_model_output_shape(const pt_model *m) {
  pt_shape s = {0};
  if (m->output >= 0 && m->output < m->n_vals) s = m->vals[m->output].shape;
  return s;
}

int pt_model_n_nodes(const pt_model *m) {
  return m->n_nodes;
}

int64_t pt_model_n_params(const pt_model *m) {
  int64_t n = 0;
  for (int i = 0; i < m->n_vals; i++)
    if (m->vals[i].kind == PT_VAL_PARAM) n += m->vals[i].numel;
  return n;
}

pt_status pt_model_node_info(const pt_model *m, int i, pt_node_info *info) {
  if (!m || !info || i < 0 || i >= m->n_nodes) return PT_ERR_INVALID;
  const pt_node *nd = &m->nodes[i];
  memset(info, 0, sizeof *info);
  info->name = nd->name;
  info->op_type = nd->op_type;
  if (nd->n_out > 0 && nd->out[0] >= 0) info->out_shape = m->vals[nd->out[0]].shape;
  info->flops = nd->flops;
  /* A parameter read by several nodes is counted at its first reader, so the per-node counts
   * add up to pt_model_n_params(). */
  for (int k = 0; k < nd->n_in; k++) {
    int v = nd->in[k];
    if (v < 0 || m->vals[v].kind != PT_VAL_PARAM) continue;
    bool first = true;
    for (int j = 0; j < i && first; j++)
      for (int l = 0; l < m->nodes[j].n_in; l++)
        if (m->nodes[j].in[l] == v) first = false;
    for (int l = 0; l < k && first; l++)
      if (nd->in[l] == v) first = false;
    if (first) info->n_params += m->vals[v].numel;
  }
  return PT_OK;
}

pt_status pt_model_copy_weights(pt_model *dst, const pt_model *src, pt_error *err) {
  if (!dst || !src) return pt_error_set(err, PT_ERR_INVALID, "copy weights: no model");
  int n_src = 0, n_dst = 0;
  for (int i = 0; i < dst->n_vals; i++) n_dst += dst->vals[i].kind == PT_VAL_PARAM;
  /* Check everything before copying anything, so a mismatch leaves dst untouched. */
  for (int i = 0; i < src->n_vals; i++) {
    const pt_value *s = &src->vals[i];
    if (s->kind != PT_VAL_PARAM) continue;
    n_src++;
    int j = pt_graph_find_value(dst, s->name);
    if (j < 0 || dst->vals[j].kind != PT_VAL_PARAM)
      return pt_error_set(err, PT_ERR_INVALID, "%s: no parameter '%s' (from %s)", dst->name,
                          s->name, src->name);
    const pt_value *d = &dst->vals[j];
    if (d->numel != s->numel || d->shape.ndim != s->shape.ndim ||
        memcmp(d->shape.d, s->shape.d, sizeof(int64_t) * (size_t)s->shape.ndim) != 0) {
      char a[64], b[64];
      return pt_error_set(err, PT_ERR_SHAPE, "%s: parameter '%s' is %s, but %s in %s", dst->name,
                          s->name, pt_shape_str(&d->shape, a, sizeof a),
                          pt_shape_str(&s->shape, b, sizeof b), src->name);
    }
  }
  if (n_src != n_dst)
    return pt_error_set(err, PT_ERR_INVALID, "%s: has %d parameters, %s has %d", dst->name, n_dst,
                        src->name, n_src);
  for (int i = 0; i < src->n_vals; i++) {
    const pt_value *s = &src->vals[i];
    if (s->kind != PT_VAL_PARAM) continue;
    pt_value *d = &dst->vals[pt_graph_find_value(dst, s->name)];
    if (d->data != s->data) memcpy(d->data, s->data, sizeof(float) * (size_t)s->numel);
  }
  return PT_OK;
}

const char *const *pt_builtin_names(void) {
  static const char *const names[] = {"autoencoder", "classifier", NULL};
  return names;
}

const char *pt_onnx_dtype_name(int32_t dtype) {
  static const char *const names[] = {"UNDEFINED",  "FLOAT",   "UINT8",  "INT8",   "UINT16",
                                      "INT16",      "INT32",   "INT64",  "STRING", "BOOL",
                                      "FLOAT16",    "DOUBLE",  "UINT32", "UINT64", "COMPLEX64",
                                      "COMPLEX128", "BFLOAT16"};
  if (dtype >= 0 && dtype < (int32_t)(sizeof names / sizeof names[0])) return names[dtype];
  return "unknown";
}
