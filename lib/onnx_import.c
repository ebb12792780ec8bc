/* Loading an ONNX model (a file, memory, or "builtin:NAME") into a pt_model.
 *
 * Order of work: unpack with protobuf-c and check it is a model at all (PT_ERR_PARSE), refuse
 * ops we do not know before anything else (PT_ERR_UNSUPPORTED naming the node), convert the
 * initializers and the run-time inputs, order the nodes topologically (the file's order is kept
 * where it is already valid; a cycle or an undefined input is PT_ERR_PARSE), fold Constant nodes,
 * then resolve each node in order so every shape is known when its consumers are resolved.
 *
 * Initializers are float or int64 (bool is read as int64 too, for Dropout's training_mode); any
 * other data type is refused, naming the tensor. Float initializers read by a trainable input
 * (pt_resolve_trainable_slot) become parameters; the rest are constants. The unpacked proto stays
 * in m->proto for pt_model_save. Raw tensor data is little-endian whatever the host. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "onnx_internal.h"

/* ---- a small string -> int map (names are owned by the proto, which outlives the map) ---- */

typedef struct name_map {
  const char **keys;
  int *vals;
  size_t cap;
} name_map;

static uint64_t hash_str(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

static bool map_init(name_map *mp, size_t n) {
  size_t cap = 16;
  while (cap < 2 * n + 1) cap *= 2;
  mp->keys = calloc(cap, sizeof *mp->keys);
  mp->vals = calloc(cap, sizeof *mp->vals);
  mp->cap = cap;
  return mp->keys && mp->vals;
}

static void map_free(name_map *mp) {
  free(mp->keys);
  free(mp->vals);
}

/* Returns the value for `k`, or -1. */
static int map_get(const name_map *mp, const char *k) {
  for (size_t i = hash_str(k) & (mp->cap - 1);; i = (i + 1) & (mp->cap - 1)) {
    if (!mp->keys[i]) return -1;
    if (strcmp(mp->keys[i], k) == 0) return mp->vals[i];
  }
}

/* The map is sized for every name up front, so it never fills. Returns false if k exists. */
static bool map_put(name_map *mp, const char *k, int v) {
  for (size_t i = hash_str(k) & (mp->cap - 1);; i = (i + 1) & (mp->cap - 1)) {
    if (!mp->keys[i]) {
      mp->keys[i] = k;
      mp->vals[i] = v;
      return true;
    }
    if (strcmp(mp->keys[i], k) == 0) return false;
  }
}

/* ---- tensors ---- */

static bool host_is_le(void) {
  const uint16_t one = 1;
  unsigned char b;
  memcpy(&b, &one, 1);
  return b == 1;
}

/* Copies n little-endian elements of `size` bytes into dst. */
static void copy_le(void *dst, const uint8_t *src, int64_t n, size_t size) {
  memcpy(dst, src, (size_t)n * size);
  if (host_is_le()) return;
  uint8_t *d = dst;
  for (int64_t i = 0; i < n; i++)
    for (size_t a = 0, b = size - 1; a < b; a++, b--) {
      uint8_t t = d[i * size + a];
      d[i * size + a] = d[i * size + b];
      d[i * size + b] = t;
    }
}

/* Fills v (shape, kind CONST, data or ival) from a TensorProto. `what` names it in messages. */
static pt_status load_tensor(pt_model *m, pt_value *v, const Onnx__TensorProto *t, const char *what,
                             pt_error *err) {
  if (t->n_dims > PT_MAX_DIMS)
    return pt_error_set(err, PT_ERR_UNSUPPORTED, "%s: %s has %zu dimensions (at most %d)", m->name,
                        what, t->n_dims, PT_MAX_DIMS);
  v->shape.ndim = (int)t->n_dims;
  int64_t n = 1;
  for (size_t i = 0; i < t->n_dims; i++) {
    if (t->dims[i] < 0 || t->dims[i] > ((int64_t)1 << 40) ||
        (n > 0 && t->dims[i] > (((int64_t)1 << 40) / n)))
      return pt_error_set(err, PT_ERR_PARSE, "%s: %s has an invalid dimension %lld", m->name, what,
                          (long long)t->dims[i]);
    v->shape.d[i] = t->dims[i];
    n *= t->dims[i];
  }
  v->numel = n;
  v->kind = PT_VAL_CONST;
  if (t->has_data_location && t->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL)
    return pt_error_set(err, PT_ERR_UNSUPPORTED, "%s: %s keeps its data in an external file",
                        m->name, what);
  int32_t dt = t->has_data_type ? t->data_type : 0;
  /* The data present must match the declared shape before anything is allocated from it: a few
   * bytes of file must not be able to ask for terabytes. */
  bool raw = t->has_raw_data && t->raw_data.len > 0;
  size_t esize = dt == ONNX__TENSOR_PROTO__DATA_TYPE__BOOL    ? 1
                 : dt == ONNX__TENSOR_PROTO__DATA_TYPE__INT64 ? sizeof(int64_t)
                                                              : sizeof(float);
  size_t have = raw ? t->raw_data.len / esize
                : dt == ONNX__TENSOR_PROTO__DATA_TYPE__INT64 ? t->n_int64_data
                : dt == ONNX__TENSOR_PROTO__DATA_TYPE__BOOL  ? t->n_int32_data
                                                             : t->n_float_data;
  bool known = dt == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT ||
               dt == ONNX__TENSOR_PROTO__DATA_TYPE__INT64 || dt == ONNX__TENSOR_PROTO__DATA_TYPE__BOOL;
  if (known && (have != (size_t)n || (raw && t->raw_data.len % esize)))
    return pt_error_set(err, PT_ERR_PARSE, "%s: %s holds %zu values but its shape needs %lld",
                        m->name, what, have, (long long)n);
  size_t alloc = (size_t)(n > 0 ? n : 1);
  if (dt == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT) {
    v->data = calloc(alloc, sizeof(float));
    if (!v->data) return pt_error_set(err, PT_ERR_NOMEM, "%s: out of memory", m->name);
    if (t->has_raw_data && t->raw_data.len > 0) {
      if (t->raw_data.len != (size_t)n * sizeof(float))
        return pt_error_set(err, PT_ERR_PARSE, "%s: %s has %zu bytes of data for %lld floats",
                            m->name, what, t->raw_data.len, (long long)n);
      copy_le(v->data, t->raw_data.data, n, sizeof(float));
    } else {
      if (t->n_float_data != (size_t)n)
        return pt_error_set(err, PT_ERR_PARSE, "%s: %s has %zu values for %lld elements", m->name,
                            what, t->n_float_data, (long long)n);
      if (n) memcpy(v->data, t->float_data, sizeof(float) * (size_t)n);
    }
    return PT_OK;
  }
  if (dt == ONNX__TENSOR_PROTO__DATA_TYPE__INT64 || dt == ONNX__TENSOR_PROTO__DATA_TYPE__BOOL) {
    bool is_bool = dt == ONNX__TENSOR_PROTO__DATA_TYPE__BOOL;
    v->is_int = true;
    v->ival = calloc(alloc, sizeof(int64_t));
    if (!v->ival) return pt_error_set(err, PT_ERR_NOMEM, "%s: out of memory", m->name);
    if (t->has_raw_data && t->raw_data.len > 0) {
      if (t->raw_data.len != (size_t)n * esize)
        return pt_error_set(err, PT_ERR_PARSE, "%s: %s has %zu bytes of data for %lld values",
                            m->name, what, t->raw_data.len, (long long)n);
      if (is_bool)
        for (int64_t i = 0; i < n; i++) v->ival[i] = t->raw_data.data[i] != 0;
      else
        copy_le(v->ival, t->raw_data.data, n, sizeof(int64_t));
    } else if (is_bool) {
      if (t->n_int32_data != (size_t)n)
        return pt_error_set(err, PT_ERR_PARSE, "%s: %s has %zu values for %lld elements", m->name,
                            what, t->n_int32_data, (long long)n);
      for (int64_t i = 0; i < n; i++) v->ival[i] = t->int32_data[i] != 0;
    } else {
      if (t->n_int64_data != (size_t)n)
        return pt_error_set(err, PT_ERR_PARSE, "%s: %s has %zu values for %lld elements", m->name,
                            what, t->n_int64_data, (long long)n);
      if (n) memcpy(v->ival, t->int64_data, sizeof(int64_t) * (size_t)n);
    }
    return PT_OK;
  }
  return pt_error_set(err, PT_ERR_UNSUPPORTED,
                      "%s: %s has data type %s; only FLOAT and INT64 tensors are supported",
                      m->name, what, pt_onnx_dtype_name(dt));
}

/* A Constant node's value: a tensor, or one of the scalar/list shorthands. */
static pt_status load_constant(pt_model *m, pt_value *v, const Onnx__NodeProto *np,
                               const char *label, pt_error *err) {
  char what[300];
  snprintf(what, sizeof what, "node '%s' (Constant)", label);
  for (size_t i = 0; i < np->n_attribute; i++) {
    const Onnx__AttributeProto *a = np->attribute[i];
    if (!a || !a->name) continue;
    if (strcmp(a->name, "value") == 0 && a->t) return load_tensor(m, v, a->t, what, err);
    v->kind = PT_VAL_CONST;
    if (strcmp(a->name, "value_float") == 0 || strcmp(a->name, "value_floats") == 0) {
      bool one = strcmp(a->name, "value_float") == 0;
      size_t n = one ? 1 : a->n_floats;
      v->shape.ndim = one ? 0 : 1;
      v->shape.d[0] = (int64_t)n;
      v->numel = (int64_t)n;
      v->data = calloc(n ? n : 1, sizeof(float));
      if (!v->data) return pt_error_set(err, PT_ERR_NOMEM, "%s: out of memory", m->name);
      if (one)
        v->data[0] = a->f;
      else if (n)
        memcpy(v->data, a->floats, n * sizeof(float));
      return PT_OK;
    }
    if (strcmp(a->name, "value_int") == 0 || strcmp(a->name, "value_ints") == 0) {
      bool one = strcmp(a->name, "value_int") == 0;
      size_t n = one ? 1 : a->n_ints;
      v->shape.ndim = one ? 0 : 1;
      v->shape.d[0] = (int64_t)n;
      v->numel = (int64_t)n;
      v->is_int = true;
      v->ival = calloc(n ? n : 1, sizeof(int64_t));
      if (!v->ival) return pt_error_set(err, PT_ERR_NOMEM, "%s: out of memory", m->name);
      if (one)
        v->ival[0] = a->i;
      else if (n)
        memcpy(v->ival, a->ints, n * sizeof(int64_t));
      return PT_OK;
    }
  }
  return pt_error_set(err, PT_ERR_UNSUPPORTED,
                      "%s: %s: only tensor, float and int constants are supported", m->name, what);
}

/* ---- the graph ---- */

static bool default_domain(const char *d) {
  return !d || d[0] == '\0' || strcmp(d, "ai.onnx") == 0;
}

/* The node's name, or "OpType_i" when the file gives none. */
static void node_label(const Onnx__NodeProto *np, size_t i, char *buf, size_t n) {
  if (np->name && np->name[0])
    snprintf(buf, n, "%s", np->name);
  else
    snprintf(buf, n, "%s_%zu", np->op_type ? np->op_type : "node", i);
}

static const char *op_of(const Onnx__NodeProto *np) {
  return np->op_type ? np->op_type : "?";
}

/* Input `i` of a runtime graph input: only float tensors of static shape (a symbolic batch dim
 * becomes 1). */
static pt_status add_graph_input(pt_model *m, const Onnx__ValueInfoProto *vi, int *out,
                                 pt_error *err) {
  const char *name = vi->name;
  const Onnx__TypeProto *tp = vi->type;
  if (!tp || tp->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE || !tp->tensor_type)
    return pt_error_set(err, PT_ERR_UNSUPPORTED, "%s: input '%s' is not a tensor", m->name, name);
  const Onnx__TypeProto__Tensor *tt = tp->tensor_type;
  int32_t et = tt->has_elem_type ? tt->elem_type : 0;
  if (et != ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT)
    return pt_error_set(err, PT_ERR_UNSUPPORTED,
                        "%s: input '%s' has data type %s; only FLOAT inputs are supported", m->name,
                        name, pt_onnx_dtype_name(et));
  if (!tt->shape)
    return pt_error_set(err, PT_ERR_UNSUPPORTED, "%s: input '%s' has no shape", m->name, name);
  const Onnx__TensorShapeProto *sp = tt->shape;
  if (sp->n_dim > PT_MAX_DIMS)
    return pt_error_set(err, PT_ERR_UNSUPPORTED, "%s: input '%s' has %zu dimensions (at most %d)",
                        m->name, name, sp->n_dim, PT_MAX_DIMS);
  pt_shape s = {.ndim = (int)sp->n_dim};
  for (size_t i = 0; i < sp->n_dim; i++) {
    const Onnx__TensorShapeProto__Dimension *d = sp->dim[i];
    bool known = d && d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE &&
                 d->dim_value > 0;
    if (known) {
      if (d->dim_value > ((int64_t)1 << 31))
        return pt_error_set(err, PT_ERR_UNSUPPORTED, "%s: input '%s': dim %zu is too large",
                            m->name, name, i);
      s.d[i] = d->dim_value;
      continue;
    }
    if (d && d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE &&
        d->dim_value == 0)
      return pt_error_set(err, PT_ERR_UNSUPPORTED,
                          "%s: input '%s' is empty (dim %zu is 0); empty tensors are not supported",
                          m->name, name, i);
    /* frames stream one at a time: a free batch dim is 1 */
    if (i == 0 && sp->n_dim >= 2) {
      s.d[i] = 1;
      continue;
    }
    const char *sym =
        d && d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM && d->dim_param
            ? d->dim_param
            : "?";
    return pt_error_set(err, PT_ERR_UNSUPPORTED,
                        "%s: input '%s' has a symbolic dimension '%s' (dim %zu); only the batch "
                        "dimension may be symbolic, every other input dim must be fixed",
                        m->name, name, sym, i);
  }
  int v = pt_graph_add_value(m, name, err);
  if (v < 0) return PT_ERR_NOMEM;
  m->vals[v].kind = PT_VAL_INPUT;
  m->vals[v].shape = s;
  m->vals[v].numel = pt_shape_numel(&s);
  *out = v;
  return PT_OK;
}

/* Orders the nodes so each reads only names defined before it: the file's order where valid.
 * `defined` holds the initializer and input names. */
static pt_status topo_order(pt_model *m, const Onnx__GraphProto *g, const name_map *defined,
                            int *order, pt_error *err) {
  size_t n = g->n_node;
  pt_status st = PT_OK;
  name_map prod = {0};
  char *done = calloc(n ? n : 1, 1);
  if (!done || !map_init(&prod, n * 2 + 1)) {
    st = pt_error_set(err, PT_ERR_NOMEM, "%s: out of memory", m->name);
    goto out;
  }
  for (size_t i = 0; i < n; i++) {
    const Onnx__NodeProto *np = g->node[i];
    for (size_t k = 0; k < np->n_output; k++) {
      const char *o = np->output[k];
      if (!o || !o[0]) continue;
      char label[256];
      node_label(np, i, label, sizeof label);
      if (map_get(defined, o) >= 0 || !map_put(&prod, o, (int)i)) {
        st = pt_error_set(err, PT_ERR_PARSE, "%s: node '%s' (%s): output '%s' is defined twice",
                          m->name, label, op_of(np), o);
        goto out;
      }
    }
  }
  size_t n_done = 0;
  while (n_done < n) {
    bool progress = false;
    for (size_t i = 0; i < n; i++) {
      if (done[i]) continue;
      const Onnx__NodeProto *np = g->node[i];
      bool ready = true;
      for (size_t k = 0; k < np->n_input && ready; k++) {
        const char *in = np->input[k];
        if (!in || !in[0] || map_get(defined, in) >= 0) continue;
        int p = map_get(&prod, in);
        if (p < 0) {
          char label[256];
          node_label(np, i, label, sizeof label);
          st = pt_error_set(err, PT_ERR_PARSE, "%s: node '%s' (%s): input '%s' is not defined",
                            m->name, label, op_of(np), in);
          goto out;
        }
        ready = done[p];
      }
      if (ready) {
        done[i] = 1;
        order[n_done++] = (int)i;
        progress = true;
      }
    }
    if (!progress) {
      size_t i = 0;
      while (done[i]) i++;
      char label[256];
      node_label(g->node[i], i, label, sizeof label);
      st = pt_error_set(err, PT_ERR_PARSE, "%s: the graph has a cycle through node '%s' (%s)",
                        m->name, label, op_of(g->node[i]));
      goto out;
    }
  }
out:
  free(done);
  map_free(&prod);
  return st;
}

/* Checks a graph output's declared type and static dims against what we computed. */
static pt_status check_output(pt_model *m, const Onnx__ValueInfoProto *vi, int v, pt_error *err) {
  const Onnx__TypeProto *tp = vi->type;
  if (!tp || tp->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE || !tp->tensor_type)
    return PT_OK;
  const Onnx__TypeProto__Tensor *tt = tp->tensor_type;
  if (tt->has_elem_type && tt->elem_type != ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT)
    return pt_error_set(err, PT_ERR_UNSUPPORTED,
                        "%s: output '%s' has data type %s; only FLOAT outputs are supported",
                        m->name, vi->name, pt_onnx_dtype_name(tt->elem_type));
  const Onnx__TensorShapeProto *sp = tt->shape;
  const pt_shape *s = &m->vals[v].shape;
  if (!sp) return PT_OK; /* shape unknown: nothing to check */
  if ((int)sp->n_dim != s->ndim) {
    char b[96];
    return pt_error_set(err, PT_ERR_SHAPE,
                        "%s: output '%s' is declared with %zu dimensions but computes to %s",
                        m->name, vi->name, sp->n_dim, pt_shape_str(s, b, sizeof b));
  }
  for (size_t i = 0; i < sp->n_dim; i++) {
    const Onnx__TensorShapeProto__Dimension *d = sp->dim[i];
    if (d && d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE &&
        d->dim_value > 0 && d->dim_value != s->d[i]) {
      char b[96];
      return pt_error_set(
          err, PT_ERR_SHAPE, "%s: output '%s' is declared with dim %zu = %lld but computes to %s",
          m->name, vi->name, i, (long long)d->dim_value, pt_shape_str(s, b, sizeof b));
    }
  }
  return PT_OK;
}

static pt_status import_graph(pt_model *m, const Onnx__ModelProto *mp, pt_error *err) {
  if (!mp->has_ir_version || mp->n_opset_import == 0 || !mp->graph)
    return pt_error_set(err, PT_ERR_PARSE,
                        "%s: not an ONNX model (no ir_version, opset_import or graph)", m->name);
  const Onnx__GraphProto *g = mp->graph;

  /* Refuse unknown ops first: it is the most useful message for a model we cannot run. */
  for (size_t i = 0; i < g->n_node; i++) {
    const Onnx__NodeProto *np = g->node[i];
    char label[256];
    node_label(np, i, label, sizeof label);
    if (!default_domain(np->domain))
      return pt_error_set(err, PT_ERR_UNSUPPORTED,
                          "%s: node '%s' (%s): unsupported op (domain '%s')", m->name, label,
                          op_of(np), np->domain);
    if (!pt_resolve_known_op(np->op_type))
      return pt_error_set(err, PT_ERR_UNSUPPORTED, "%s: node '%s' (%s): unsupported op", m->name,
                          label, op_of(np));
    for (size_t k = 1; k < np->n_output; k++)
      if (np->output[k] && np->output[k][0])
        return pt_error_set(err, PT_ERR_UNSUPPORTED,
                            "%s: node '%s' (%s): output %zu ('%s') is not supported; only the "
                            "first output is computed",
                            m->name, label, op_of(np), k, np->output[k]);
    if (np->n_output < 1 || !np->output[0] || !np->output[0][0])
      return pt_error_set(err, PT_ERR_PARSE, "%s: node '%s' (%s) has no output", m->name, label,
                          op_of(np));
    if (np->n_input > PT_MAX_NODE_IN)
      return pt_error_set(err, PT_ERR_UNSUPPORTED, "%s: node '%s' (%s) has %zu inputs (at most %d)",
                          m->name, label, op_of(np), np->n_input, PT_MAX_NODE_IN);
  }
  m->opset = -1;
  for (size_t i = 0; i < mp->n_opset_import; i++) {
    const Onnx__OperatorSetIdProto *o = mp->opset_import[i];
    if (o && default_domain(o->domain) && o->has_version) m->opset = o->version;
  }
  if (m->opset < 1)
    return pt_error_set(err, PT_ERR_PARSE, "%s: no opset for the default ONNX domain", m->name);
  if (g->n_sparse_initializer)
    return pt_error_set(err, PT_ERR_UNSUPPORTED, "%s: sparse initializers are not supported",
                        m->name);

  pt_status st = PT_OK;
  size_t n_names = g->n_initializer + g->n_input + g->n_node * 2 + 1;
  name_map vmap = {0};
  int *order = malloc(sizeof(int) * (g->n_node ? g->n_node : 1));
  if (!order || !map_init(&vmap, n_names)) {
    st = pt_error_set(err, PT_ERR_NOMEM, "%s: out of memory", m->name);
    goto out;
  }

  for (size_t i = 0; i < g->n_initializer; i++) {
    const Onnx__TensorProto *t = g->initializer[i];
    if (!t->name || !t->name[0]) {
      st = pt_error_set(err, PT_ERR_PARSE, "%s: initializer %zu has no name", m->name, i);
      goto out;
    }
    int v = pt_graph_add_value(m, t->name, err);
    if (v < 0) {
      st = PT_ERR_NOMEM;
      goto out;
    }
    if (!map_put(&vmap, t->name, v)) {
      st = pt_error_set(err, PT_ERR_PARSE, "%s: initializer '%s' is defined twice", m->name,
                        t->name);
      goto out;
    }
    char what[300];
    snprintf(what, sizeof what, "initializer '%s'", t->name);
    m->vals[v].init_index = (int)i;
    if ((st = load_tensor(m, &m->vals[v], t, what, err)) != PT_OK) goto out;
  }

  m->inputs = malloc(sizeof(int) * (g->n_input ? g->n_input : 1));
  m->outputs = malloc(sizeof(int) * (g->n_output ? g->n_output : 1));
  if (!m->inputs || !m->outputs) {
    st = pt_error_set(err, PT_ERR_NOMEM, "%s: out of memory", m->name);
    goto out;
  }
  for (size_t i = 0; i < g->n_input; i++) {
    const Onnx__ValueInfoProto *vi = g->input[i];
    if (!vi->name || !vi->name[0]) {
      st = pt_error_set(err, PT_ERR_PARSE, "%s: graph input %zu has no name", m->name, i);
      goto out;
    }
    /* an input with an initializer is a default value we keep: not a run-time input */
    if (map_get(&vmap, vi->name) >= 0) {
      if (m->vals[map_get(&vmap, vi->name)].kind == PT_VAL_INPUT) {
        st = pt_error_set(err, PT_ERR_PARSE, "%s: input '%s' is listed twice", m->name, vi->name);
        goto out;
      }
      continue;
    }
    int v = -1;
    if ((st = add_graph_input(m, vi, &v, err)) != PT_OK) goto out;
    map_put(&vmap, vi->name, v);
    m->inputs[m->n_inputs++] = v;
  }

  if ((st = topo_order(m, g, &vmap, order, err)) != PT_OK) goto out;

  m->nodes = calloc(g->n_node ? g->n_node : 1, sizeof *m->nodes);
  if (!m->nodes) {
    st = pt_error_set(err, PT_ERR_NOMEM, "%s: out of memory", m->name);
    goto out;
  }
  for (size_t oi = 0; oi < g->n_node; oi++) {
    size_t fi = (size_t)order[oi];
    const Onnx__NodeProto *np = g->node[fi];
    char label[256];
    node_label(np, fi, label, sizeof label);
    int ov = pt_graph_add_value(m, np->output[0], err);
    if (ov < 0) {
      st = PT_ERR_NOMEM;
      goto out;
    }
    map_put(&vmap, np->output[0], ov);
    if (strcmp(np->op_type, "Constant") == 0) {
      if ((st = load_constant(m, &m->vals[ov], np, label, err)) != PT_OK) goto out;
      continue;
    }
    int ni = m->n_nodes++;
    pt_node *nd = &m->nodes[ni];
    nd->name = strdup(label);
    nd->op_type = strdup(np->op_type);
    if (!nd->name || !nd->op_type) {
      st = pt_error_set(err, PT_ERR_NOMEM, "%s: out of memory", m->name);
      goto out;
    }
    nd->n_in = (int)np->n_input;
    for (size_t k = 0; k < np->n_input; k++) {
      const char *in = np->input[k];
      nd->in[k] = in && in[0] ? map_get(&vmap, in) : -1;
      if (nd->in[k] < 0) continue;
      pt_value *iv = &m->vals[nd->in[k]];
      if (iv->init_index >= 0 && !iv->is_int && iv->kind == PT_VAL_CONST &&
          pt_resolve_trainable_slot(np->op_type, (int)k))
        iv->kind = PT_VAL_PARAM;
    }
    nd->n_out = 1;
    nd->out[0] = ov;
    m->vals[ov].producer = ni;
    if ((st = pt_resolve_node(m, ni, np, err)) != PT_OK) goto out;
  }

  for (size_t i = 0; i < g->n_output; i++) {
    const Onnx__ValueInfoProto *vi = g->output[i];
    int v = vi->name ? map_get(&vmap, vi->name) : -1;
    if (v < 0) {
      st = pt_error_set(err, PT_ERR_PARSE, "%s: graph output '%s' is not defined", m->name,
                        vi->name ? vi->name : "");
      goto out;
    }
    if (m->vals[v].producer < 0) {
      st = pt_error_set(err, PT_ERR_UNSUPPORTED,
                        "%s: graph output '%s' is not computed by any node", m->name, vi->name);
      goto out;
    }
    if ((st = check_output(m, vi, v, err)) != PT_OK) goto out;
    m->outputs[m->n_outputs++] = v;
  }
  if (m->n_inputs == 0) {
    st = pt_error_set(err, PT_ERR_UNSUPPORTED, "%s: the model has no run-time input", m->name);
    goto out;
  }
  if (m->n_outputs == 0) {
    st = pt_error_set(err, PT_ERR_PARSE, "%s: the model has no output", m->name);
    goto out;
  }
  m->input = m->inputs[0];
  m->output = m->outputs[0];
out:
  free(order);
  map_free(&vmap);
  return st;
}

pt_status pt_model_load_memory(const void *data, size_t size, const char *name, pt_model **out,
                               pt_error *err) {
  if (!out) return pt_error_set(err, PT_ERR_INVALID, "load: no output pointer");
  *out = NULL;
  if (!name) name = "model";
  if (!data || size == 0)
    return pt_error_set(err, PT_ERR_PARSE, "%s: not an ONNX model (empty)", name);
  Onnx__ModelProto *mp = onnx__model_proto__unpack(NULL, size, data);
  if (!mp)
    return pt_error_set(err, PT_ERR_PARSE,
                        "%s: not an ONNX model (truncated or not a protobuf ModelProto)", name);
  /* Checkpoints write this message back: a file protobuf-c reads but whose re-encoding it then
   * refuses (a field numbered 0, say) is malformed, and is refused now rather than at save. */
  size_t packed_size = onnx__model_proto__get_packed_size(mp);
  uint8_t *packed = malloc(packed_size ? packed_size : 1);
  Onnx__ModelProto *again = NULL;
  bool allocated = packed != NULL;
  if (packed) {
    onnx__model_proto__pack(mp, packed);
    again = onnx__model_proto__unpack(NULL, packed_size, packed);
  }
  free(packed);
  if (!again) {
    onnx__model_proto__free_unpacked(mp, NULL);
    return pt_error_set(err, allocated ? PT_ERR_PARSE : PT_ERR_NOMEM,
                        "%s: not an ONNX model (malformed protobuf fields)", name);
  }
  onnx__model_proto__free_unpacked(again, NULL);
  pt_model *m = calloc(1, sizeof *m);
  if (!m || !(m->name = strdup(name))) {
    free(m);
    onnx__model_proto__free_unpacked(mp, NULL);
    return pt_error_set(err, PT_ERR_NOMEM, "%s: out of memory", name);
  }
  m->proto = mp;
  m->input = m->output = -1;
  pt_status st = import_graph(m, mp, err);
  if (st != PT_OK) {
    pt_graph_free(m);
    return st;
  }
  *out = m;
  return PT_OK;
}

static pt_status read_file(const char *path, void **data, size_t *size, pt_error *err) {
  FILE *f = fopen(path, "rb");
  if (!f) return pt_error_set(err, PT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
  size_t cap = 1 << 16, n = 0;
  unsigned char *buf = malloc(cap);
  if (!buf) {
    fclose(f);
    return pt_error_set(err, PT_ERR_NOMEM, "%s: out of memory", path);
  }
  for (;;) {
    if (n == cap) {
      unsigned char *nb = realloc(buf, cap * 2);
      if (!nb) {
        free(buf);
        fclose(f);
        return pt_error_set(err, PT_ERR_NOMEM, "%s: out of memory", path);
      }
      buf = nb;
      cap *= 2;
    }
    size_t k = fread(buf + n, 1, cap - n, f);
    n += k;
    if (k == 0) break;
  }
  if (ferror(f)) {
    int e = errno;
    free(buf);
    fclose(f);
    return pt_error_set(err, PT_ERR_IO, "%s: read failed: %s", path, strerror(e));
  }
  fclose(f);
  *data = buf;
  *size = n;
  return PT_OK;
}

pt_status pt_model_load(const char *spec, pt_model **out, pt_error *err) {
  if (out) *out = NULL;
  if (!spec || !out) return pt_error_set(err, PT_ERR_INVALID, "load: no model given");
  void *data = NULL;
  size_t size = 0;
  pt_status st;
  if (strncmp(spec, "builtin:", 8) == 0)
    st = pt_builtin_build(spec + 8, &data, &size, err);
  else
    st = read_file(spec, &data, &size, err);
  if (st != PT_OK) return st;
  st = pt_model_load_memory(data, size, spec, out, err);
  free(data);
  return st;
}
