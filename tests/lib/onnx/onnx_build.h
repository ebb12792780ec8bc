/* Building small ONNX models in C for the tests, with the protobuf-c structs of onnx.proto.
 *
 *   tb *b = tb_new(13);
 *   int64_t xd[] = {1, 3, 8, 8};
 *   tb_input(b, "x", TB_FLOAT, 4, xd, NULL);
 *   Onnx__NodeProto *n = tb_node(b, "Relu", "relu1", "x", "y");
 *   tb_output(b, "y", -1, NULL);
 *   size_t size; void *data = tb_pack(b, &size);   (malloc'ed)
 *   tb_free(b);
 *
 * Node inputs and outputs are comma-separated names; an empty name is an omitted optional input.
 * Everything is freed by tb_free. */
#ifndef PT_TEST_ONNX_BUILD_H
#define PT_TEST_ONNX_BUILD_H

#include <stdlib.h>
#include <string.h>
#include "onnx.pb-c.h"

#define TB_FLOAT ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT
#define TB_INT64 ONNX__TENSOR_PROTO__DATA_TYPE__INT64
#define TB_DOUBLE ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE
#define TB_MAX 64

typedef struct tb {
  void **allocs;
  int n_allocs, cap_allocs;
  Onnx__ModelProto mp;
  Onnx__GraphProto g;
  Onnx__OperatorSetIdProto opset;
  Onnx__OperatorSetIdProto *opsets[1];
  Onnx__NodeProto *nodes[TB_MAX];
  Onnx__TensorProto *inits[TB_MAX];
  Onnx__ValueInfoProto *inputs[TB_MAX], *outputs[TB_MAX];
} tb;

static inline void *tb_alloc(tb *b, size_t n) {
  if (b->n_allocs == b->cap_allocs) {
    b->cap_allocs = b->cap_allocs ? 2 * b->cap_allocs : 256;
    b->allocs = realloc(b->allocs, sizeof(void *) * (size_t)b->cap_allocs);
  }
  void *p = calloc(1, n ? n : 1);
  b->allocs[b->n_allocs++] = p;
  return p;
}

static inline char *tb_str(tb *b, const char *s) {
  char *p = tb_alloc(b, strlen(s) + 1);
  strcpy(p, s);
  return p;
}

static inline tb *tb_new(int64_t opset) {
  tb *b = calloc(1, sizeof *b);
  onnx__model_proto__init(&b->mp);
  onnx__graph_proto__init(&b->g);
  onnx__operator_set_id_proto__init(&b->opset);
  b->opset.domain = tb_str(b, "");
  b->opset.has_version = 1;
  b->opset.version = opset;
  b->opsets[0] = &b->opset;
  b->mp.has_ir_version = 1;
  b->mp.ir_version = 7;
  b->mp.producer_name = tb_str(b, "partime-tests");
  b->mp.opset_import = b->opsets;
  b->mp.n_opset_import = 1;
  b->mp.graph = &b->g;
  b->g.name = tb_str(b, "test");
  b->g.node = b->nodes;
  b->g.initializer = b->inits;
  b->g.input = b->inputs;
  b->g.output = b->outputs;
  return b;
}

static inline void tb_free(tb *b) {
  for (int i = 0; i < b->n_allocs; i++) free(b->allocs[i]);
  free(b->allocs);
  free(b);
}

/* A tensor value info; dims[i] < 0 or params[i] != NULL make dim i symbolic (params[i] or "?").
 * ndim < 0: no shape at all. */
static inline Onnx__ValueInfoProto *tb_value_info(tb *b, const char *name, int32_t dtype, int ndim,
                                                  const int64_t *dims, const char *const *params) {
  Onnx__ValueInfoProto *vi = tb_alloc(b, sizeof *vi);
  Onnx__TypeProto *tp = tb_alloc(b, sizeof *tp);
  Onnx__TypeProto__Tensor *tt = tb_alloc(b, sizeof *tt);
  onnx__value_info_proto__init(vi);
  onnx__type_proto__init(tp);
  onnx__type_proto__tensor__init(tt);
  tt->has_elem_type = 1;
  tt->elem_type = dtype;
  if (ndim >= 0) {
    Onnx__TensorShapeProto *sp = tb_alloc(b, sizeof *sp);
    onnx__tensor_shape_proto__init(sp);
    sp->dim = tb_alloc(b, sizeof *sp->dim * (size_t)(ndim ? ndim : 1));
    sp->n_dim = (size_t)ndim;
    for (int i = 0; i < ndim; i++) {
      Onnx__TensorShapeProto__Dimension *d = tb_alloc(b, sizeof *d);
      onnx__tensor_shape_proto__dimension__init(d);
      if ((params && params[i]) || dims[i] < 0) {
        d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
        d->dim_param = tb_str(b, params && params[i] ? params[i] : "?");
      } else {
        d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
        d->dim_value = dims[i];
      }
      sp->dim[i] = d;
    }
    tt->shape = sp;
  }
  tp->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
  tp->tensor_type = tt;
  vi->name = tb_str(b, name);
  vi->type = tp;
  return vi;
}

static inline void tb_input(tb *b, const char *name, int32_t dtype, int ndim, const int64_t *dims,
                            const char *const *params) {
  b->inputs[b->g.n_input++] = tb_value_info(b, name, dtype, ndim, dims, params);
}

static inline void tb_output(tb *b, const char *name, int ndim, const int64_t *dims) {
  b->outputs[b->g.n_output++] = tb_value_info(b, name, TB_FLOAT, ndim, dims, NULL);
}

static inline Onnx__TensorProto *tb_tensor(tb *b, const char *name, int32_t dtype, int ndim,
                                           const int64_t *dims) {
  Onnx__TensorProto *t = tb_alloc(b, sizeof *t);
  onnx__tensor_proto__init(t);
  t->name = tb_str(b, name);
  t->has_data_type = 1;
  t->data_type = dtype;
  t->dims = tb_alloc(b, sizeof(int64_t) * (size_t)(ndim ? ndim : 1));
  t->n_dims = (size_t)ndim;
  for (int i = 0; i < ndim; i++) t->dims[i] = dims[i];
  return t;
}

static inline size_t tb_numel(int ndim, const int64_t *dims) {
  size_t n = 1;
  for (int i = 0; i < ndim; i++) n *= (size_t)dims[i];
  return n;
}

/* A float initializer; vals NULL fills 0.01 * i. */
static inline Onnx__TensorProto *tb_init_f(tb *b, const char *name, int ndim, const int64_t *dims,
                                           const float *vals) {
  Onnx__TensorProto *t = tb_tensor(b, name, TB_FLOAT, ndim, dims);
  size_t n = tb_numel(ndim, dims);
  t->float_data = tb_alloc(b, sizeof(float) * n);
  t->n_float_data = n;
  for (size_t i = 0; i < n; i++) t->float_data[i] = vals ? vals[i] : 0.01f * (float)i;
  b->inits[b->g.n_initializer++] = t;
  return t;
}

static inline Onnx__TensorProto *tb_init_i(tb *b, const char *name, int ndim, const int64_t *dims,
                                           const int64_t *vals) {
  Onnx__TensorProto *t = tb_tensor(b, name, TB_INT64, ndim, dims);
  size_t n = tb_numel(ndim, dims);
  t->int64_data = tb_alloc(b, sizeof(int64_t) * n);
  t->n_int64_data = n;
  for (size_t i = 0; i < n; i++) t->int64_data[i] = vals[i];
  b->inits[b->g.n_initializer++] = t;
  return t;
}

/* A DOUBLE initializer (a data type the importer refuses). */
static inline Onnx__TensorProto *tb_init_d(tb *b, const char *name, int ndim, const int64_t *dims) {
  Onnx__TensorProto *t = tb_tensor(b, name, TB_DOUBLE, ndim, dims);
  size_t n = tb_numel(ndim, dims);
  t->double_data = tb_alloc(b, sizeof(double) * n);
  t->n_double_data = n;
  b->inits[b->g.n_initializer++] = t;
  return t;
}

static inline size_t tb_split(tb *b, const char *list, char ***out) {
  size_t n = 1;
  for (const char *p = list; *p; p++) n += *p == ',';
  if (!*list) n = 0;
  char **v = tb_alloc(b, sizeof(char *) * (n ? n : 1));
  const char *p = list;
  for (size_t i = 0; i < n; i++) {
    const char *e = strchr(p, ',');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    v[i] = tb_alloc(b, len + 1);
    memcpy(v[i], p, len);
    p += len + 1;
  }
  *out = v;
  return n;
}

static inline Onnx__NodeProto *tb_node(tb *b, const char *op, const char *name, const char *inputs,
                                       const char *outputs) {
  Onnx__NodeProto *nd = tb_alloc(b, sizeof *nd);
  onnx__node_proto__init(nd);
  nd->op_type = tb_str(b, op);
  nd->name = tb_str(b, name);
  nd->n_input = tb_split(b, inputs, &nd->input);
  nd->n_output = tb_split(b, outputs, &nd->output);
  nd->attribute = tb_alloc(b, sizeof(Onnx__AttributeProto *) * 16);
  b->nodes[b->g.n_node++] = nd;
  return nd;
}

static inline Onnx__AttributeProto *tb_attr(tb *b, Onnx__NodeProto *nd, const char *name,
                                            Onnx__AttributeProto__AttributeType type) {
  Onnx__AttributeProto *a = tb_alloc(b, sizeof *a);
  onnx__attribute_proto__init(a);
  a->name = tb_str(b, name);
  a->has_type = 1;
  a->type = type;
  nd->attribute[nd->n_attribute++] = a;
  return a;
}

static inline void tb_attr_i(tb *b, Onnx__NodeProto *nd, const char *name, int64_t v) {
  Onnx__AttributeProto *a = tb_attr(b, nd, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT);
  a->has_i = 1;
  a->i = v;
}

static inline void tb_attr_f(tb *b, Onnx__NodeProto *nd, const char *name, float v) {
  Onnx__AttributeProto *a = tb_attr(b, nd, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT);
  a->has_f = 1;
  a->f = v;
}

static inline void tb_attr_s(tb *b, Onnx__NodeProto *nd, const char *name, const char *v) {
  Onnx__AttributeProto *a = tb_attr(b, nd, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING);
  a->has_s = 1;
  a->s.data = (uint8_t *)tb_str(b, v);
  a->s.len = strlen(v);
}

static inline void tb_attr_ints(tb *b, Onnx__NodeProto *nd, const char *name, int n,
                                const int64_t *v) {
  Onnx__AttributeProto *a = tb_attr(b, nd, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS);
  a->ints = tb_alloc(b, sizeof(int64_t) * (size_t)(n ? n : 1));
  a->n_ints = (size_t)n;
  for (int i = 0; i < n; i++) a->ints[i] = v[i];
}

/* Serializes the model; the buffer is malloc'ed. */
static inline void *tb_pack(tb *b, size_t *size) {
  *size = onnx__model_proto__get_packed_size(&b->mp);
  void *buf = malloc(*size);
  onnx__model_proto__pack(&b->mp, buf);
  return buf;
}

#endif
