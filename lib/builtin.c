/* The built-in models ("builtin:autoencoder", "builtin:classifier[:N]").
 *
 * Each is built as an ONNX ModelProto with protobuf-c, serialized, and then loaded through the
 * ordinary importer, so a built-in model behaves, resolves and saves exactly like a file a user
 * exported from PyTorch (opset 13, IR version 7, producer "partime"). Weights follow PyTorch's
 * default initialisation for Conv2d, ConvTranspose2d and Linear: uniform in +-1/sqrt(fan_in) for
 * weights and biases alike, with fan_in = weight.size(1) * kernel area, drawn from a fixed seed so
 * every load gives the same model. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "onnx_internal.h"

#define B_MAX_NODES 32
#define B_MAX_INITS 32
#define B_MAX_ALLOCS 1024

typedef struct builder {
  void *allocs[B_MAX_ALLOCS];
  int n_allocs;
  bool oom;
  Onnx__NodeProto *nodes[B_MAX_NODES];
  size_t n_nodes;
  Onnx__TensorProto *inits[B_MAX_INITS];
  size_t n_inits;
  uint64_t rng;
} builder;

static void *b_alloc(builder *b, size_t size) {
  if (b->oom || b->n_allocs == B_MAX_ALLOCS) {
    b->oom = true;
    return NULL;
  }
  void *p = calloc(1, size ? size : 1);
  if (!p) {
    b->oom = true;
    return NULL;
  }
  b->allocs[b->n_allocs++] = p;
  return p;
}

static char *b_str(builder *b, const char *s) {
  char *p = b_alloc(b, strlen(s) + 1);
  if (p) strcpy(p, s);
  return p;
}

/* splitmix64: a fixed, platform-independent stream */
static uint64_t b_next(builder *b) {
  uint64_t z = (b->rng += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static float b_uniform(builder *b, float bound) {
  float u = (float)((double)(b_next(b) >> 40) / 16777216.0); /* [0, 1) */
  return (2.0f * u - 1.0f) * bound;
}

static Onnx__AttributeProto *b_attr_ints(builder *b, const char *name, const int64_t *v, size_t n) {
  Onnx__AttributeProto *a = b_alloc(b, sizeof *a);
  int64_t *ints = b_alloc(b, sizeof(int64_t) * n);
  if (!a || !ints) return NULL;
  onnx__attribute_proto__init(a);
  a->name = b_str(b, name);
  a->has_type = 1;
  a->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS;
  memcpy(ints, v, sizeof(int64_t) * n);
  a->ints = ints;
  a->n_ints = n;
  return a;
}

static Onnx__AttributeProto *b_attr_int(builder *b, const char *name, int64_t v) {
  Onnx__AttributeProto *a = b_alloc(b, sizeof *a);
  if (!a) return NULL;
  onnx__attribute_proto__init(a);
  a->name = b_str(b, name);
  a->has_type = 1;
  a->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT;
  a->has_i = 1;
  a->i = v;
  return a;
}

static void b_node(builder *b, const char *op, const char *name, const char *const *inputs,
                   size_t n_in, const char *output, Onnx__AttributeProto **attrs, size_t n_attrs) {
  if (b->n_nodes == B_MAX_NODES) {
    b->oom = true;
    return;
  }
  Onnx__NodeProto *nd = b_alloc(b, sizeof *nd);
  char **in = b_alloc(b, sizeof(char *) * n_in);
  char **out = b_alloc(b, sizeof(char *));
  Onnx__AttributeProto **at = b_alloc(b, sizeof *at * (n_attrs ? n_attrs : 1));
  if (!nd || !in || !out || !at) return;
  onnx__node_proto__init(nd);
  for (size_t i = 0; i < n_in; i++) in[i] = b_str(b, inputs[i]);
  out[0] = b_str(b, output);
  for (size_t i = 0; i < n_attrs; i++) at[i] = attrs[i];
  nd->op_type = b_str(b, op);
  nd->name = b_str(b, name);
  nd->input = in;
  nd->n_input = n_in;
  nd->output = out;
  nd->n_output = 1;
  nd->attribute = at;
  nd->n_attribute = n_attrs;
  b->nodes[b->n_nodes++] = nd;
}

/* A float initializer of `dims`, uniform in +-1/sqrt(fan_in). */
static void b_param(builder *b, const char *name, const int64_t *dims, size_t ndim,
                    int64_t fan_in) {
  if (b->n_inits == B_MAX_INITS) {
    b->oom = true;
    return;
  }
  size_t n = 1;
  for (size_t i = 0; i < ndim; i++) n *= (size_t)dims[i];
  Onnx__TensorProto *t = b_alloc(b, sizeof *t);
  int64_t *d = b_alloc(b, sizeof(int64_t) * ndim);
  float *v = b_alloc(b, sizeof(float) * n);
  if (!t || !d || !v) return;
  onnx__tensor_proto__init(t);
  memcpy(d, dims, sizeof(int64_t) * ndim);
  float bound = 1.0f / sqrtf((float)fan_in);
  for (size_t i = 0; i < n; i++) v[i] = b_uniform(b, bound);
  t->name = b_str(b, name);
  t->dims = d;
  t->n_dims = ndim;
  t->has_data_type = 1;
  t->data_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
  t->float_data = v;
  t->n_float_data = n;
  b->inits[b->n_inits++] = t;
}

static Onnx__ValueInfoProto *b_value_info(builder *b, const char *name, const int64_t *dims,
                                          size_t ndim) {
  Onnx__ValueInfoProto *vi = b_alloc(b, sizeof *vi);
  Onnx__TypeProto *tp = b_alloc(b, sizeof *tp);
  Onnx__TypeProto__Tensor *tt = b_alloc(b, sizeof *tt);
  Onnx__TensorShapeProto *sp = b_alloc(b, sizeof *sp);
  Onnx__TensorShapeProto__Dimension **dv = b_alloc(b, sizeof *dv * ndim);
  if (!vi || !tp || !tt || !sp || !dv) return NULL;
  onnx__value_info_proto__init(vi);
  onnx__type_proto__init(tp);
  onnx__type_proto__tensor__init(tt);
  onnx__tensor_shape_proto__init(sp);
  for (size_t i = 0; i < ndim; i++) {
    dv[i] = b_alloc(b, sizeof **dv);
    if (!dv[i]) return NULL;
    onnx__tensor_shape_proto__dimension__init(dv[i]);
    dv[i]->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
    dv[i]->dim_value = dims[i];
  }
  sp->dim = dv;
  sp->n_dim = ndim;
  tt->has_elem_type = 1;
  tt->elem_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
  tt->shape = sp;
  tp->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
  tp->tensor_type = tt;
  vi->name = b_str(b, name);
  vi->type = tp;
  return vi;
}

/* conv: weight (OC, C/G, K, K); transposed: weight (C, OC/G, K, K). */
static void b_conv(builder *b, const char *name, const char *in, const char *out, int64_t C,
                   int64_t OC, int64_t K, int64_t stride, int64_t pad, bool transpose) {
  char w[64], bias[64];
  snprintf(w, sizeof w, "%s.weight", name);
  snprintf(bias, sizeof bias, "%s.bias", name);
  int64_t wd[4] = {transpose ? C : OC, transpose ? OC : C, K, K};
  int64_t fan_in = wd[1] * K * K;
  b_param(b, w, wd, 4, fan_in);
  b_param(b, bias, &OC, 1, fan_in);
  int64_t k2[2] = {K, K}, s2[2] = {stride, stride}, p4[4] = {pad, pad, pad, pad};
  Onnx__AttributeProto *at[3] = {b_attr_ints(b, "kernel_shape", k2, 2),
                                 b_attr_ints(b, "strides", s2, 2), b_attr_ints(b, "pads", p4, 4)};
  const char *ins[3] = {in, w, bias};
  b_node(b, transpose ? "ConvTranspose" : "Conv", name, ins, 3, out, at, 3);
}

static void b_unary(builder *b, const char *op, const char *name, const char *in, const char *out) {
  const char *ins[1] = {in};
  b_node(b, op, name, ins, 1, out, NULL, 0);
}

static void b_maxpool(builder *b, const char *name, const char *in, const char *out) {
  int64_t k2[2] = {2, 2};
  Onnx__AttributeProto *at[2] = {b_attr_ints(b, "kernel_shape", k2, 2),
                                 b_attr_ints(b, "strides", k2, 2)};
  const char *ins[1] = {in};
  b_node(b, "MaxPool", name, ins, 1, out, at, 2);
}

/* Linear as PyTorch exports it: Gemm with transB=1, weight (OUT, IN). */
static void b_linear(builder *b, const char *name, const char *in, const char *out, int64_t IN,
                     int64_t OUT) {
  char w[64], bias[64];
  snprintf(w, sizeof w, "%s.weight", name);
  snprintf(bias, sizeof bias, "%s.bias", name);
  int64_t wd[2] = {OUT, IN};
  b_param(b, w, wd, 2, IN);
  b_param(b, bias, &OUT, 1, IN);
  Onnx__AttributeProto *at[3] = {b_attr_int(b, "transB", 1), NULL, NULL};
  const char *ins[3] = {in, w, bias};
  b_node(b, "Gemm", name, ins, 3, out, at, 1);
}

static void build_autoencoder(builder *b) {
  b_conv(b, "conv1", "input", "conv1", 3, 16, 3, 2, 1, false);
  b_unary(b, "Relu", "relu1", "conv1", "relu1");
  b_conv(b, "conv2", "relu1", "conv2", 16, 32, 3, 2, 1, false);
  b_unary(b, "Relu", "relu2", "conv2", "relu2");
  b_conv(b, "deconv1", "relu2", "deconv1", 32, 16, 4, 2, 1, true);
  b_unary(b, "Relu", "relu3", "deconv1", "relu3");
  b_conv(b, "deconv2", "relu3", "deconv2", 16, 3, 4, 2, 1, true);
  b_unary(b, "Sigmoid", "sigmoid", "deconv2", "output");
}

static void build_classifier(builder *b, int64_t classes) {
  b_conv(b, "conv1", "input", "conv1", 3, 16, 3, 1, 1, false);
  b_unary(b, "Relu", "relu1", "conv1", "relu1");
  b_maxpool(b, "pool1", "relu1", "pool1");
  b_conv(b, "conv2", "pool1", "conv2", 16, 32, 3, 1, 1, false);
  b_unary(b, "Relu", "relu2", "conv2", "relu2");
  b_maxpool(b, "pool2", "relu2", "pool2");
  Onnx__AttributeProto *axis = b_attr_int(b, "axis", 1);
  const char *fin[1] = {"pool2"};
  b_node(b, "Flatten", "flatten", fin, 1, "flatten", &axis, 1);
  b_linear(b, "fc1", "flatten", "fc1", 32 * 8 * 8, 64);
  b_unary(b, "Relu", "relu3", "fc1", "relu3");
  b_linear(b, "fc2", "relu3", "output", 64, classes);
}

pt_status pt_builtin_build(const char *name, void **data, size_t *size, pt_error *err) {
  *data = NULL;
  *size = 0;
  builder *b = calloc(1, sizeof *b);
  if (!b) return pt_error_set(err, PT_ERR_NOMEM, "builtin:%s: out of memory", name);
  b->rng = 0x70617274696d65ull; /* fixed seed: the same weights on every load */
  int64_t in_dims[4] = {1, 3, 64, 64}, out_dims[4] = {1, 3, 64, 64};
  size_t out_ndim = 4;
  const char *graph_name;
  pt_status st = PT_OK;
  if (strcmp(name, "autoencoder") == 0) {
    graph_name = "autoencoder";
    build_autoencoder(b);
  } else if (strncmp(name, "classifier", 10) == 0 && (name[10] == '\0' || name[10] == ':')) {
    long long classes = 10;
    if (name[10] == ':') {
      char *end;
      classes = strtoll(name + 11, &end, 10);
      if (end == name + 11 || *end || classes < 1 || classes > 100000) {
        st = pt_error_set(err, PT_ERR_INVALID,
                          "builtin:%s: the class count must be a number from 1 to 100000", name);
        goto out;
      }
    }
    graph_name = "classifier";
    in_dims[2] = in_dims[3] = 32;
    out_dims[1] = classes;
    out_ndim = 2;
    build_classifier(b, classes);
  } else {
    st = pt_error_set(
        err, PT_ERR_INVALID,
        "builtin:%s: no such built-in model (try builtin:autoencoder or builtin:classifier[:N])",
        name);
    goto out;
  }
  Onnx__ValueInfoProto *in_vi = b_value_info(b, "input", in_dims, 4);
  Onnx__ValueInfoProto *out_vi = b_value_info(b, "output", out_dims, out_ndim);
  Onnx__OperatorSetIdProto opset = ONNX__OPERATOR_SET_ID_PROTO__INIT;
  Onnx__OperatorSetIdProto *opsets[1] = {&opset};
  if (b->oom) {
    st = pt_error_set(err, PT_ERR_NOMEM, "builtin:%s: out of memory", name);
    goto out;
  }
  opset.domain = (char *)"";
  opset.has_version = 1;
  opset.version = 13;
  Onnx__GraphProto g = ONNX__GRAPH_PROTO__INIT;
  g.name = (char *)graph_name;
  g.node = b->nodes;
  g.n_node = b->n_nodes;
  g.initializer = b->inits;
  g.n_initializer = b->n_inits;
  g.input = &in_vi;
  g.n_input = 1;
  g.output = &out_vi;
  g.n_output = 1;
  Onnx__ModelProto mp = ONNX__MODEL_PROTO__INIT;
  mp.has_ir_version = 1;
  mp.ir_version = 7;
  mp.opset_import = opsets;
  mp.n_opset_import = 1;
  mp.producer_name = (char *)"partime";
  mp.graph = &g;
  size_t n = onnx__model_proto__get_packed_size(&mp);
  uint8_t *buf = malloc(n);
  if (!buf) {
    st = pt_error_set(err, PT_ERR_NOMEM, "builtin:%s: out of memory", name);
    goto out;
  }
  onnx__model_proto__pack(&mp, buf);
  *data = buf;
  *size = n;
out:
  for (int i = 0; i < b->n_allocs; i++) free(b->allocs[i]);
  free(b);
  return st;
}
