/* What the importer builds: node order, parameter marking, folded constants, generated names and
 * the shapes and parameter structs it resolves for each op (the numbers themselves are checked by
 * the conformance test). */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "graph.h"
#include "onnx_build.h"
#include "pt_test.h"

static pt_model *load_tb(tb *b, const char *name) {
  size_t n;
  void *data = tb_pack(b, &n);
  pt_model *m = NULL;
  pt_error err;
  pt_status st = pt_model_load_memory(data, n, name, &m, &err);
  CHECK(st == PT_OK, "%s: %s", name, err.msg);
  free(data);
  tb_free(b);
  return m;
}

static const pt_value *val(const pt_model *m, const char *name) {
  int v = pt_graph_find_value(m, name);
  return v >= 0 ? &m->vals[v] : NULL;
}

static bool shape_is(const pt_value *v, int ndim, const int64_t *d) {
  if (!v || v->shape.ndim != ndim) return false;
  for (int i = 0; i < ndim; i++)
    if (v->shape.d[i] != d[i]) return false;
  return v->numel == pt_shape_numel(&v->shape);
}

static void test_order_and_kinds(void) {
  /* nodes listed backwards; W and B are also listed as graph inputs (with initializers) */
  tb *b = tb_new(13);
  int64_t xd[] = {1, 2, 5, 5}, wd[] = {3, 2, 3, 3}, bd[] = {3}, md[] = {3}, sd[] = {2};
  tb_input(b, "W", TB_FLOAT, 4, wd, NULL);
  tb_input(b, "x", TB_FLOAT, 4, xd, NULL);
  tb_input(b, "B", TB_FLOAT, 1, bd, NULL);
  tb_init_f(b, "W", 4, wd, NULL);
  tb_init_f(b, "B", 1, bd, NULL);
  tb_init_f(b, "scale", 1, md, NULL);
  tb_init_f(b, "bias", 1, md, NULL);
  tb_init_f(b, "mean", 1, md, NULL);
  tb_init_f(b, "var", 1, md, NULL);
  int64_t shp[] = {1, -1};
  tb_init_i(b, "flat", 1, sd, shp);
  tb_node(b, "Reshape", "", "r,flat", "out");
  tb_node(b, "Relu", "", "bn", "r0");
  tb_node(b, "Identity", "", "r0", "r");
  tb_node(b, "BatchNormalization", "bn1", "c,scale,bias,mean,var", "bn");
  tb_node(b, "Conv", "conv1", "x,W,B", "c");
  tb_output(b, "out", -1, NULL);
  pt_model *m = load_tb(b, "order.onnx");
  if (!m) return;
  CHECK(m->n_nodes == 5, "5 nodes: %d", m->n_nodes);
  static const char *order[] = {"conv1", "bn1", "Relu_1", "Identity_2", "Reshape_0"};
  for (int i = 0; i < 5 && i < m->n_nodes; i++)
    CHECK(!strcmp(m->nodes[i].name, order[i]), "node %d is %s (want %s)", i, m->nodes[i].name,
          order[i]);
  /* every node reads only what came before it */
  for (int i = 0; i < m->n_nodes; i++)
    for (int k = 0; k < m->nodes[i].n_in; k++) {
      int v = m->nodes[i].in[k];
      if (v >= 0) CHECK(m->vals[v].producer < i, "node %d reads a later value", i);
    }
  CHECK(m->n_inputs == 1 && m->input == pt_graph_find_value(m, "x"),
        "only x is a run-time input (%d)", m->n_inputs);
  CHECK(m->n_outputs == 1 && m->output == pt_graph_find_value(m, "out"), "output");
  CHECK(val(m, "W")->kind == PT_VAL_PARAM && val(m, "B")->kind == PT_VAL_PARAM, "conv params");
  CHECK(val(m, "scale")->kind == PT_VAL_PARAM && val(m, "bias")->kind == PT_VAL_PARAM,
        "batch-norm scale and bias are params");
  CHECK(val(m, "mean")->kind == PT_VAL_CONST && val(m, "var")->kind == PT_VAL_CONST,
        "batch-norm statistics are constants");
  CHECK(val(m, "flat")->kind == PT_VAL_CONST && val(m, "flat")->is_int, "shape is an int const");
  CHECK(val(m, "x")->kind == PT_VAL_INPUT && val(m, "c")->kind == PT_VAL_ACT, "kinds");
  CHECK(val(m, "W")->init_index == 0 && val(m, "var")->init_index == 5, "init indices");
  int64_t od[] = {1, 27};
  CHECK(shape_is(val(m, "out"), 2, od), "reshape to 1x27");
  CHECK(m->nodes[4].op == PT_OP_COPY && m->nodes[4].n_in == 1 && m->nodes[4].p.copy.n == 27,
        "reshape keeps only its data input");
  CHECK(pt_model_n_params(m) == 3 * 2 * 9 + 3 + 3 + 3, "n_params %lld",
        (long long)pt_model_n_params(m));
  CHECK(m->nodes[1].op == PT_OP_BATCHNORM && m->nodes[1].p.bn.C == 3 && m->nodes[1].p.bn.HW == 9 &&
            fabsf(m->nodes[1].p.bn.eps - 1e-5f) < 1e-12f,
        "batch norm params");
  pt_model_free(m);
}

static void test_constants(void) {
  /* Constant nodes fold: a float operand of Mul (not trained: it is not an initializer) and the
   * int64 axes of Unsqueeze */
  tb *b = tb_new(13);
  int64_t xd[] = {2, 3};
  tb_input(b, "x", TB_FLOAT, 2, xd, NULL);
  Onnx__NodeProto *c = tb_node(b, "Constant", "k", "", "two");
  tb_attr_f(b, c, "value_float", 2.0f);
  c = tb_node(b, "Constant", "ax", "", "axes");
  int64_t axes[] = {0, 3};
  Onnx__AttributeProto *a =
      tb_attr(b, c, "value_ints", ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS);
  a->ints = axes;
  a->n_ints = 2;
  tb_node(b, "Mul", "mul", "x,two", "y");
  tb_node(b, "Unsqueeze", "unsq", "y,axes", "z");
  tb_output(b, "z", -1, NULL);
  pt_model *m = load_tb(b, "const.onnx");
  /* a->ints points at the stack array: tb_free does not free it, and load_tb packed already */
  if (!m) return;
  CHECK(m->n_nodes == 2, "Constant nodes are folded: %d nodes", m->n_nodes);
  const pt_value *two = val(m, "two");
  CHECK(two && two->kind == PT_VAL_CONST && !two->is_int && two->numel == 1 &&
            two->data[0] == 2.0f && two->shape.ndim == 0,
        "value_float constant");
  const pt_value *ax = val(m, "axes");
  CHECK(ax && ax->is_int && ax->numel == 2 && ax->ival[1] == 3, "value_ints constant");
  int64_t zd[] = {1, 2, 3, 1};
  CHECK(shape_is(val(m, "z"), 4, zd), "unsqueeze to 1x2x3x1");
  const pt_binary_params *p = &m->nodes[0].p.binary;
  CHECK(m->nodes[0].op == PT_OP_BINARY && p->kind == PT_BIN_MUL && p->n == 6 && p->ndim == 2 &&
            p->sa[0] == 3 && p->sa[1] == 1 && p->sb[0] == 0 && p->sb[1] == 0,
        "scalar broadcast");
  pt_model_free(m);
}

/* One node on an input of shape xd, with attributes set by `attrs`; returns the model. */
typedef void (*attr_fn)(tb *b, Onnx__NodeProto *n);

static pt_model *one_node(int64_t opset, const char *op, int ndim, const int64_t *xd,
                          const char *extra_inputs, attr_fn attrs, tb **keep) {
  tb *b = tb_new(opset);
  tb_input(b, "x", TB_FLOAT, ndim, xd, NULL);
  char ins[128];
  snprintf(ins, sizeof ins, "x%s%s", extra_inputs[0] ? "," : "", extra_inputs);
  Onnx__NodeProto *n = tb_node(b, op, "n", ins, "y");
  if (attrs) attrs(b, n);
  tb_output(b, "y", -1, NULL);
  if (keep) {
    *keep = b;
    return NULL;
  }
  return load_tb(b, op);
}

static void a_conv_same(tb *b, Onnx__NodeProto *n) {
  int64_t s[] = {2, 2};
  tb_attr_s(b, n, "auto_pad", "SAME_UPPER");
  tb_attr_ints(b, n, "strides", 2, s);
}

static void a_convt(tb *b, Onnx__NodeProto *n) {
  int64_t s[] = {3, 2}, op[] = {1, 1}, p[] = {1, 2, 1, 2};
  tb_attr_ints(b, n, "strides", 2, s);
  tb_attr_ints(b, n, "output_padding", 2, op);
  tb_attr_ints(b, n, "pads", 4, p);
}

static void a_pool_ceil(tb *b, Onnx__NodeProto *n) {
  int64_t k[] = {3, 3}, s[] = {2, 2};
  tb_attr_ints(b, n, "kernel_shape", 2, k);
  tb_attr_ints(b, n, "strides", 2, s);
  tb_attr_i(b, n, "ceil_mode", 1);
}

static void a_pool_1d(tb *b, Onnx__NodeProto *n) {
  int64_t k[] = {3}, p[] = {1, 1};
  tb_attr_ints(b, n, "kernel_shape", 1, k);
  tb_attr_ints(b, n, "pads", 2, p);
  tb_attr_i(b, n, "count_include_pad", 1);
}

static void a_axis0(tb *b, Onnx__NodeProto *n) {
  tb_attr_i(b, n, "axis", 0);
}
static void a_axis1(tb *b, Onnx__NodeProto *n) {
  tb_attr_i(b, n, "axis", 1);
}

static void a_resize(tb *b, Onnx__NodeProto *n) {
  tb_attr_s(b, n, "coordinate_transformation_mode", "asymmetric");
  tb_attr_s(b, n, "nearest_mode", "floor");
}

static void test_op_shapes(void) {
  /* Conv, SAME_UPPER, stride 2, 7x7 -> 4x4; pads total 2 split 1/1 */
  tb *b;
  int64_t x7[] = {1, 2, 7, 7}, w[] = {4, 2, 3, 3};
  one_node(13, "Conv", 4, x7, "W", a_conv_same, &b);
  tb_init_f(b, "W", 4, w, NULL);
  pt_model *m = load_tb(b, "conv_same");
  if (m) {
    const pt_conv_params *p = &m->nodes[0].p.conv;
    CHECK(p->OH == 4 && p->OW == 4 && p->PT == 1 && p->PB == 1 && p->SH == 2 && p->KH == 3 &&
              p->C == 2 && p->OC == 4 && p->G == 1 && !p->has_bias,
          "conv SAME_UPPER params");
    CHECK(m->nodes[0].scratch_floats == pt_conv2d_scratch(p), "conv scratch from conv.c");
    CHECK(fabs(m->nodes[0].flops - 2.0 * 4 * 16 * 2 * 9) < 0.5, "conv flops %.0f",
          m->nodes[0].flops);
    pt_model_free(m);
  }
  /* ConvTranspose with output_padding and pads (ONNX's test_convtranspose_pads shapes) */
  int64_t x3[] = {1, 1, 3, 3}, wt[] = {1, 2, 3, 3};
  one_node(13, "ConvTranspose", 4, x3, "W", a_convt, &b);
  tb_init_f(b, "W", 4, wt, NULL);
  m = load_tb(b, "convt");
  if (m) {
    const pt_conv_params *p = &m->nodes[0].p.conv;
    /* H: 3*(3-1)+1+3-1-1 = 8; W: 2*(3-1)+1+3-2-2 = 4 */
    CHECK(p->OH == 8 && p->OW == 4 && p->OC == 2 && p->PT == 1 && p->PL == 2, "convT %dx%d", p->OH,
          p->OW);
    CHECK(m->nodes[0].op == PT_OP_CONV_TRANSPOSE, "op");
    pt_model_free(m);
  }
  /* MaxPool ceil_mode: 4x4, k3 s2 -> 2x2 */
  int64_t x4[] = {1, 1, 4, 4};
  m = one_node(13, "MaxPool", 4, x4, "", a_pool_ceil, NULL);
  if (m) {
    const pt_pool_params *p = &m->nodes[0].p.pool;
    CHECK(p->OH == 2 && p->OW == 2 && p->KH == 3 && p->SH == 2, "ceil pool %dx%d", p->OH, p->OW);
    CHECK(m->nodes[0].aux_bytes == 4 * 4, "argmax: int32 per output: %lld",
          (long long)m->nodes[0].aux_bytes);
    pt_model_free(m);
  }
  /* 1-D AveragePool maps to H = 1 */
  int64_t x1[] = {2, 3, 10};
  m = one_node(13, "AveragePool", 3, x1, "", a_pool_1d, NULL);
  if (m) {
    const pt_pool_params *p = &m->nodes[0].p.pool;
    int64_t yd[] = {2, 3, 10};
    CHECK(p->H == 1 && p->KH == 1 && p->W == 10 && p->KW == 3 && p->PL == 1 && p->PR == 1 &&
              p->OW == 10 && p->count_include_pad && shape_is(val(m, "y"), 3, yd),
          "1-D pool");
    pt_model_free(m);
  }
  /* GlobalAveragePool */
  int64_t x5[] = {1, 8, 5, 6};
  m = one_node(13, "GlobalAveragePool", 4, x5, "", NULL, NULL);
  if (m) {
    int64_t yd[] = {1, 8, 1, 1};
    CHECK(shape_is(val(m, "y"), 4, yd) && m->nodes[0].op == PT_OP_AVGPOOL &&
              m->nodes[0].p.pool.KH * m->nodes[0].p.pool.KW == 30,
          "global average pool");
    pt_model_free(m);
  }
  /* Softmax: opset 11 flattens from the axis, opset 13 takes one axis (default -1) */
  int64_t xs[] = {2, 3, 4};
  m = one_node(11, "Softmax", 3, xs, "", a_axis1, NULL);
  if (m) {
    const pt_softmax_params *p = &m->nodes[0].p.softmax;
    CHECK(p->outer == 2 && p->dim == 12 && p->inner == 1 && !p->log, "opset 11 softmax");
    pt_model_free(m);
  }
  m = one_node(13, "LogSoftmax", 3, xs, "", a_axis0, NULL);
  if (m) {
    const pt_softmax_params *p = &m->nodes[0].p.softmax;
    CHECK(p->outer == 1 && p->dim == 2 && p->inner == 12 && p->log, "opset 13 log-softmax");
    pt_model_free(m);
  }
  m = one_node(13, "Softmax", 3, xs, "", NULL, NULL);
  if (m) {
    const pt_softmax_params *p = &m->nodes[0].p.softmax;
    CHECK(p->outer == 6 && p->dim == 4 && p->inner == 1, "opset 13 default axis -1");
    pt_model_free(m);
  }
  /* Flatten axis 0 */
  m = one_node(13, "Flatten", 3, xs, "", a_axis0, NULL);
  if (m) {
    int64_t yd[] = {1, 24};
    CHECK(shape_is(val(m, "y"), 2, yd), "flatten axis 0");
    pt_model_free(m);
  }
  /* MatMul: a batch against one matrix */
  int64_t xa[] = {2, 3, 4}, wb[] = {4, 5};
  one_node(13, "MatMul", 3, xa, "B", NULL, &b);
  tb_init_f(b, "B", 2, wb, NULL);
  m = load_tb(b, "matmul");
  if (m) {
    const pt_matmul_params *p = &m->nodes[0].p.matmul;
    int64_t yd[] = {2, 3, 5};
    CHECK(p->batch == 2 && p->M == 3 && p->K == 4 && p->N == 5 && p->a_stride == 12 &&
              p->b_stride == 0 && shape_is(val(m, "y"), 3, yd),
          "batched matmul, shared B");
    CHECK(val(m, "B")->kind == PT_VAL_PARAM, "MatMul initializer is a parameter");
    pt_model_free(m);
  }
  /* Gemm bias modes */
  int64_t ga[] = {3, 4}, gb[] = {4, 5}, gc_row[] = {5}, gc_col[] = {3, 1};
  one_node(13, "Gemm", 2, ga, "B,C", NULL, &b);
  tb_init_f(b, "B", 2, gb, NULL);
  tb_init_f(b, "C", 1, gc_row, NULL);
  m = load_tb(b, "gemm_row");
  if (m) {
    CHECK(m->nodes[0].p.gemm.c_mode == PT_GEMM_C_ROW && m->nodes[0].p.gemm.M == 3 &&
              m->nodes[0].p.gemm.N == 5 && m->nodes[0].p.gemm.K == 4,
          "gemm row bias");
    pt_model_free(m);
  }
  one_node(13, "Gemm", 2, ga, "B,C", NULL, &b);
  tb_init_f(b, "B", 2, gb, NULL);
  tb_init_f(b, "C", 2, gc_col, NULL);
  m = load_tb(b, "gemm_col");
  if (m) {
    CHECK(m->nodes[0].p.gemm.c_mode == PT_GEMM_C_COL, "gemm column bias");
    pt_model_free(m);
  }
  /* Resize by sizes, with the coordinate and rounding modes mapped */
  int64_t xr[] = {1, 2, 3, 4}, nd4[] = {4}, sz[] = {1, 2, 6, 6};
  one_node(13, "Resize", 4, xr, ",,sizes", a_resize, &b);
  tb_init_i(b, "sizes", 1, nd4, sz);
  m = load_tb(b, "resize");
  if (m) {
    const pt_resize_params *p = &m->nodes[0].p.resize;
    CHECK(p->OH == 6 && p->OW == 6 && fabsf(p->scale_h - 2.0f) < 1e-6f &&
              fabsf(p->scale_w - 1.5f) < 1e-6f && p->coord == PT_COORD_ASYMMETRIC &&
              p->nearest == PT_NEAREST_FLOOR && m->nodes[0].n_in == 1,
          "resize by sizes");
    pt_model_free(m);
  }
  /* Squeeze with no axes drops every 1 */
  int64_t xq[] = {1, 3, 1, 2};
  m = one_node(13, "Squeeze", 4, xq, "", NULL, NULL);
  if (m) {
    int64_t yd[] = {3, 2};
    CHECK(shape_is(val(m, "y"), 2, yd), "squeeze all");
    pt_model_free(m);
  }
  /* Concat along axis 1 */
  tb *c = tb_new(13);
  int64_t c1[] = {1, 2, 4}, c2[] = {1, 3, 4};
  tb_input(c, "a", TB_FLOAT, 3, c1, NULL);
  tb_input(c, "b", TB_FLOAT, 3, c2, NULL);
  Onnx__NodeProto *n = tb_node(c, "Concat", "cat", "a,b", "y");
  tb_attr_i(c, n, "axis", 1);
  tb_output(c, "y", -1, NULL);
  m = load_tb(c, "concat");
  if (m) {
    const pt_concat_params *p = &m->nodes[0].p.concat;
    int64_t yd[] = {1, 5, 4};
    CHECK(p->n == 2 && p->outer == 1 && p->inner == 4 && p->dims[0] == 2 && p->dims[1] == 3 &&
              shape_is(val(m, "y"), 3, yd),
          "concat");
    CHECK(m->n_inputs == 2 && m->inputs[1] == pt_graph_find_value(m, "b"), "two inputs");
    pt_model_free(m);
  }
}

int main(void) {
  test_order_and_kinds();
  test_constants();
  test_op_shapes();
  char buf[64];
  pt_shape s = {.ndim = 4, .d = {1, 3, 32, 32}}, z = {.ndim = 0};
  CHECK(!strcmp(pt_shape_str(&s, buf, sizeof buf), "1x3x32x32"), "shape str %s", buf);
  CHECK(pt_shape_numel(&s) == 3072 && pt_shape_numel(&z) == 1, "numel");
  CHECK(!strcmp(pt_shape_str(&z, buf, sizeof buf), "scalar"), "scalar str %s", buf);
  PT_TEST_END();
}
