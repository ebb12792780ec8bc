/* Bad models: each must give the documented status and a message naming the file (and the node
 * and op where one is involved), without crashing or leaking (this suite also runs under ASan). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <partime/model.h>
#include "onnx_build.h"
#include "pt_test.h"

static char tmpdir[256];

static void write_file(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) return;
  fwrite(data, 1, n, f);
  fclose(f);
}

/* Loads from memory and frees everything; checks a failure hands out no model. */
static pt_status load_bytes(const void *data, size_t n, const char *name, pt_error *err) {
  pt_model *m = (pt_model *)&m; /* must be reset by the call */
  pt_error_clear(err);
  pt_status st = pt_model_load_memory(data, n, name, &m, err);
  if (st == PT_OK) {
    if (!m) st = PT_ERR_INVALID;
    pt_model_free(m);
  } else if (m != NULL) {
    fprintf(stderr, "a failed load returned a model\n");
    st = PT_ERR_STATE;
  } else if (err->code != st || !err->msg[0]) {
    fprintf(stderr, "the error was not filled in\n");
    st = PT_ERR_STATE;
  }
  return st;
}

static pt_status load_tb(tb *b, const char *name, pt_error *err) {
  size_t n;
  void *data = tb_pack(b, &n);
  pt_status st = load_bytes(data, n, name, err);
  free(data);
  tb_free(b);
  return st;
}

static bool has(const pt_error *e, const char *s) {
  return strstr(e->msg, s) != NULL;
}

/* x (1,3,8,8) -> Conv(W (4,3,3,3), B (4)) -> Relu -> y */
static tb *small_convnet(void) {
  tb *b = tb_new(13);
  int64_t xd[] = {1, 3, 8, 8}, wd[] = {4, 3, 3, 3}, bd[] = {4};
  tb_input(b, "x", TB_FLOAT, 4, xd, NULL);
  tb_init_f(b, "W", 4, wd, NULL);
  tb_init_f(b, "B", 1, bd, NULL);
  tb_node(b, "Conv", "conv", "x,W,B", "c");
  tb_node(b, "Relu", "relu", "c", "y");
  tb_output(b, "y", -1, NULL);
  return b;
}

static void test_file_errors(void) {
  pt_error err;
  pt_model *m = NULL;
  char path[512];

  snprintf(path, sizeof path, "%s/missing.onnx", tmpdir);
  pt_status st = pt_model_load(path, &m, &err);
  CHECK(st == PT_ERR_IO, "missing file: %s", pt_status_name(st));
  CHECK(m == NULL, "no model on failure");
  CHECK(has(&err, path), "message names the file: %s", err.msg);

  st = pt_model_load(tmpdir, &m, &err);
  CHECK(st == PT_ERR_IO || st == PT_ERR_PARSE, "a directory: %s", pt_status_name(st));
  CHECK(has(&err, tmpdir), "message names the path: %s", err.msg);

  snprintf(path, sizeof path, "%s/empty.onnx", tmpdir);
  write_file(path, "", 0);
  st = pt_model_load(path, &m, &err);
  CHECK(st == PT_ERR_PARSE, "empty file: %s", pt_status_name(st));
  CHECK(has(&err, path), "message names the file: %s", err.msg);

  /* a PNG renamed to .onnx */
  static const unsigned char png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0,    0,   0,
                                      13,   'I', 'H', 'D', 'R',  0,    0,    0,    16,   0,   0,
                                      0,    16,  8,   2,   0,    0,    0,    0x90, 0x91, 0x68};
  snprintf(path, sizeof path, "%s/picture.onnx", tmpdir);
  write_file(path, png, sizeof png);
  st = pt_model_load(path, &m, &err);
  CHECK(st == PT_ERR_PARSE, "PNG header: %s (%s)", pt_status_name(st), err.msg);
  CHECK(has(&err, path), "message names the file: %s", err.msg);

  /* a real model file truncated to half its size */
  tb *b = small_convnet();
  size_t n;
  void *data = tb_pack(b, &n);
  tb_free(b);
  snprintf(path, sizeof path, "%s/truncated.onnx", tmpdir);
  write_file(path, data, n / 2);
  st = pt_model_load(path, &m, &err);
  CHECK(st == PT_ERR_PARSE, "truncated file: %s (%s)", pt_status_name(st), err.msg);
  CHECK(has(&err, path), "message names the file: %s", err.msg);
  CHECK(m == NULL, "no model on failure");

  /* and cut at every length: never a crash, never a model (the opset comes last in the file) */
  int bad = 0;
  for (size_t k = 0; k < n; k++) {
    st = load_bytes(data, k, "cut.onnx", &err);
    if (st == PT_OK || st == PT_ERR_STATE || !has(&err, "cut.onnx")) {
      if (!bad) fprintf(stderr, "cut at %zu: %s: %s\n", k, pt_status_name(st), err.msg);
      bad++;
    }
  }
  CHECK(bad == 0, "%d prefixes of the model loaded or reported badly", bad);
  st = load_bytes(data, n, "whole.onnx", &err);
  CHECK(st == PT_OK, "the whole model loads: %s", err.msg);
  free(data);

  /* random bytes, of many lengths and seeds */
  unsigned long long seed = 0x1234567ull;
  int accepted = 0;
  for (int t = 0; t < 300; t++) {
    size_t len = 1 + (size_t)(pt_test_rand_u64(&seed) % 4096);
    unsigned char *r = malloc(len);
    for (size_t i = 0; i < len; i++) r[i] = (unsigned char)pt_test_rand_u64(&seed);
    st = load_bytes(r, len, "random.onnx", &err);
    if (st == PT_OK || st == PT_ERR_STATE || !has(&err, "random.onnx")) accepted++;
    free(r);
  }
  CHECK(accepted == 0, "%d random buffers loaded or reported badly", accepted);
  snprintf(path, sizeof path, "%s/random.onnx", tmpdir);
  unsigned char junk[1000];
  for (size_t i = 0; i < sizeof junk; i++) junk[i] = (unsigned char)pt_test_rand_u64(&seed);
  write_file(path, junk, sizeof junk);
  st = pt_model_load(path, &m, &err);
  CHECK(st == PT_ERR_PARSE, "random file: %s (%s)", pt_status_name(st), err.msg);
  CHECK(has(&err, path), "message names the file: %s", err.msg);

  st = pt_model_load("builtin:nosuchmodel", &m, &err);
  CHECK(st == PT_ERR_INVALID, "unknown builtin: %s", pt_status_name(st));
  CHECK(has(&err, "nosuchmodel"), "message names it: %s", err.msg);
  st = pt_model_load("builtin:classifier:0", &m, &err);
  CHECK(st == PT_ERR_INVALID, "zero classes: %s", pt_status_name(st));
  st = pt_model_load("builtin:classifier:x", &m, &err);
  CHECK(st == PT_ERR_INVALID, "bad class count: %s", pt_status_name(st));
  st = pt_model_load(NULL, &m, &err);
  CHECK(st == PT_ERR_INVALID, "NULL spec: %s", pt_status_name(st));
}

static void test_unsupported(void) {
  pt_error err;

  /* an LSTM in the middle of an otherwise fine graph */
  tb *b = small_convnet();
  tb_node(b, "LSTM", "n3", "y", "z");
  b->outputs[0]->name = tb_str(b, "z");
  pt_status st = load_tb(b, "model.onnx", &err);
  CHECK(st == PT_ERR_UNSUPPORTED, "LSTM: %s", pt_status_name(st));
  CHECK(has(&err, "model.onnx: node 'n3' (LSTM): unsupported op"), "message: %s", err.msg);

  /* an op from another domain */
  b = small_convnet();
  Onnx__NodeProto *nd = tb_node(b, "Relu", "custom", "y", "z");
  nd->domain = tb_str(b, "com.example");
  b->outputs[0]->name = tb_str(b, "z");
  st = load_tb(b, "domain.onnx", &err);
  CHECK(st == PT_ERR_UNSUPPORTED, "foreign domain: %s", pt_status_name(st));
  CHECK(has(&err, "domain.onnx") && has(&err, "custom") && has(&err, "com.example"), "message: %s",
        err.msg);

  /* 3-D convolution */
  b = tb_new(13);
  int64_t x5[] = {1, 2, 4, 4, 4}, w5[] = {2, 2, 3, 3, 3};
  tb_input(b, "x", TB_FLOAT, 5, x5, NULL);
  tb_init_f(b, "W", 5, w5, NULL);
  tb_node(b, "Conv", "conv3d", "x,W", "y");
  tb_output(b, "y", -1, NULL);
  st = load_tb(b, "c3.onnx", &err);
  CHECK(st == PT_ERR_UNSUPPORTED, "3-D conv: %s", pt_status_name(st));
  CHECK(has(&err, "c3.onnx: node 'conv3d' (Conv)"), "message: %s", err.msg);

  /* a DOUBLE initializer */
  b = small_convnet();
  int64_t sd[] = {4};
  tb_init_d(b, "scale64", 1, sd);
  st = load_tb(b, "dbl.onnx", &err);
  CHECK(st == PT_ERR_UNSUPPORTED, "double initializer: %s", pt_status_name(st));
  CHECK(has(&err, "dbl.onnx") && has(&err, "scale64") && has(&err, "DOUBLE"), "message: %s",
        err.msg);

  /* an int64 run-time input */
  b = tb_new(13);
  int64_t xd[] = {2, 3};
  tb_input(b, "ids", TB_INT64, 2, xd, NULL);
  tb_node(b, "Identity", "id", "ids", "y");
  tb_output(b, "y", -1, NULL);
  st = load_tb(b, "int.onnx", &err);
  CHECK(st == PT_ERR_UNSUPPORTED, "int64 input: %s", pt_status_name(st));
  CHECK(has(&err, "int.onnx") && has(&err, "ids") && has(&err, "INT64"), "message: %s", err.msg);

  /* symbolic dims: H is refused, a symbolic batch is not */
  b = tb_new(13);
  int64_t sym[] = {1, 3, -1, 8};
  const char *names[] = {NULL, NULL, "H", NULL};
  tb_input(b, "x", TB_FLOAT, 4, sym, names);
  tb_node(b, "Relu", "relu", "x", "y");
  tb_output(b, "y", -1, NULL);
  st = load_tb(b, "sym.onnx", &err);
  CHECK(st == PT_ERR_UNSUPPORTED, "symbolic H: %s", pt_status_name(st));
  CHECK(has(&err, "sym.onnx") && has(&err, "'x'") && has(&err, "'H'"), "message: %s", err.msg);

  b = tb_new(13);
  const char *batch[] = {"N", NULL, NULL, NULL};
  int64_t bd[] = {-1, 3, 8, 8};
  tb_input(b, "x", TB_FLOAT, 4, bd, batch);
  tb_node(b, "Relu", "relu", "x", "y");
  tb_output(b, "y", -1, NULL);
  size_t n;
  void *data = tb_pack(b, &n);
  tb_free(b);
  pt_model *m = NULL;
  st = pt_model_load_memory(data, n, "batch.onnx", &m, &err);
  free(data);
  CHECK(st == PT_OK, "a symbolic batch loads: %s", err.msg);
  if (m) {
    pt_shape s = pt_model_input_shape(m);
    CHECK(s.ndim == 4 && s.d[0] == 1 && s.d[1] == 3, "the batch dim becomes 1");
    pt_model_free(m);
  }

  /* an input with no shape at all */
  b = tb_new(13);
  tb_input(b, "x", TB_FLOAT, -1, NULL, NULL);
  tb_node(b, "Relu", "relu", "x", "y");
  tb_output(b, "y", -1, NULL);
  st = load_tb(b, "noshape.onnx", &err);
  CHECK(st == PT_ERR_UNSUPPORTED, "no input shape: %s", pt_status_name(st));
  CHECK(has(&err, "noshape.onnx") && has(&err, "'x'"), "message: %s", err.msg);

  /* a second output we cannot compute (MaxPool indices) */
  b = tb_new(13);
  int64_t pd[] = {1, 1, 4, 4}, k2[] = {2, 2};
  tb_input(b, "x", TB_FLOAT, 4, pd, NULL);
  nd = tb_node(b, "MaxPool", "pool", "x", "y,idx");
  tb_attr_ints(b, nd, "kernel_shape", 2, k2);
  tb_output(b, "y", -1, NULL);
  st = load_tb(b, "idx.onnx", &err);
  CHECK(st == PT_ERR_UNSUPPORTED, "MaxPool indices: %s", pt_status_name(st));
  CHECK(has(&err, "idx.onnx: node 'pool' (MaxPool)") && has(&err, "idx"), "message: %s", err.msg);

  /* Resize whose scales come at run time */
  b = tb_new(13);
  int64_t sc[] = {4};
  tb_input(b, "x", TB_FLOAT, 4, pd, NULL);
  tb_input(b, "scales", TB_FLOAT, 1, sc, NULL);
  tb_node(b, "Resize", "up", "x,,scales", "y");
  tb_output(b, "y", -1, NULL);
  st = load_tb(b, "rs.onnx", &err);
  CHECK(st == PT_ERR_UNSUPPORTED, "run-time scales: %s", pt_status_name(st));
  CHECK(has(&err, "rs.onnx: node 'up' (Resize)") && has(&err, "scales"), "message: %s", err.msg);

  /* bilinear Resize */
  b = tb_new(13);
  float sv[] = {1, 1, 2, 2};
  tb_input(b, "x", TB_FLOAT, 4, pd, NULL);
  tb_init_f(b, "scales", 1, sc, sv);
  nd = tb_node(b, "Resize", "up", "x,,scales", "y");
  tb_attr_s(b, nd, "mode", "linear");
  tb_output(b, "y", -1, NULL);
  st = load_tb(b, "lin.onnx", &err);
  CHECK(st == PT_ERR_UNSUPPORTED, "linear resize: %s", pt_status_name(st));
  CHECK(has(&err, "lin.onnx: node 'up' (Resize)") && has(&err, "linear"), "message: %s", err.msg);

  /* batch norm in training mode */
  b = tb_new(15);
  int64_t cd[] = {1};
  tb_input(b, "x", TB_FLOAT, 4, pd, NULL);
  tb_init_f(b, "s", 1, cd, NULL);
  tb_init_f(b, "bb", 1, cd, NULL);
  tb_init_f(b, "mean", 1, cd, NULL);
  tb_init_f(b, "var", 1, cd, NULL);
  nd = tb_node(b, "BatchNormalization", "bn", "x,s,bb,mean,var", "y");
  tb_attr_i(b, nd, "training_mode", 1);
  tb_output(b, "y", -1, NULL);
  st = load_tb(b, "bn.onnx", &err);
  CHECK(st == PT_ERR_UNSUPPORTED, "training batch norm: %s", pt_status_name(st));
  CHECK(has(&err, "bn.onnx: node 'bn' (BatchNormalization)") && has(&err, "training_mode"),
        "message: %s", err.msg);

  /* an unknown attribute is ignored */
  b = small_convnet();
  tb_attr_s(b, b->nodes[0], "frobnicate", "yes");
  tb_attr_i(b, b->nodes[1], "some_future_flag", 3);
  st = load_tb(b, "attr.onnx", &err);
  CHECK(st == PT_OK, "unknown attributes are ignored: %s", err.msg);

  /* a known attribute of the wrong type */
  b = small_convnet();
  tb_attr_s(b, b->nodes[0], "group", "one");
  st = load_tb(b, "attrtype.onnx", &err);
  CHECK(st == PT_ERR_PARSE, "string group: %s", pt_status_name(st));
  CHECK(has(&err, "attrtype.onnx: node 'conv' (Conv)") && has(&err, "group"), "message: %s",
        err.msg);
}

static void test_shape_errors(void) {
  pt_error err;

  /* Conv weight channels disagreeing with the input */
  tb *b = tb_new(13);
  int64_t xd[] = {1, 3, 8, 8}, wd[] = {4, 2, 3, 3};
  tb_input(b, "x", TB_FLOAT, 4, xd, NULL);
  tb_init_f(b, "W", 4, wd, NULL);
  tb_node(b, "Conv", "conv1", "x,W", "y");
  tb_output(b, "y", -1, NULL);
  pt_status st = load_tb(b, "shape.onnx", &err);
  CHECK(st == PT_ERR_SHAPE, "conv channels: %s", pt_status_name(st));
  CHECK(has(&err, "shape.onnx: node 'conv1' (Conv)") && has(&err, "3 channels"), "message: %s",
        err.msg);

  /* Conv bias of the wrong length */
  b = small_convnet();
  b->inits[1]->dims[0] = 5;
  b->inits[1]->n_float_data = 5;
  b->inits[1]->float_data = tb_alloc(b, 5 * sizeof(float));
  st = load_tb(b, "bias.onnx", &err);
  CHECK(st == PT_ERR_SHAPE, "conv bias: %s", pt_status_name(st));
  CHECK(has(&err, "bias.onnx: node 'conv' (Conv)") && has(&err, "bias"), "message: %s", err.msg);

  /* Gemm inner dims */
  b = tb_new(13);
  int64_t ad[] = {2, 5}, bd2[] = {4, 3};
  tb_input(b, "a", TB_FLOAT, 2, ad, NULL);
  tb_init_f(b, "B", 2, bd2, NULL);
  tb_node(b, "Gemm", "fc", "a,B", "y");
  tb_output(b, "y", -1, NULL);
  st = load_tb(b, "gemm.onnx", &err);
  CHECK(st == PT_ERR_SHAPE, "gemm K: %s", pt_status_name(st));
  CHECK(has(&err, "gemm.onnx: node 'fc' (Gemm)"), "message: %s", err.msg);

  /* Add that does not broadcast */
  b = tb_new(13);
  int64_t a1[] = {2, 3}, a2[] = {4};
  tb_input(b, "a", TB_FLOAT, 2, a1, NULL);
  tb_input(b, "b", TB_FLOAT, 1, a2, NULL);
  tb_node(b, "Add", "add", "a,b", "y");
  tb_output(b, "y", -1, NULL);
  st = load_tb(b, "add.onnx", &err);
  CHECK(st == PT_ERR_SHAPE, "broadcast: %s", pt_status_name(st));
  CHECK(has(&err, "add.onnx: node 'add' (Add)"), "message: %s", err.msg);

  /* Reshape to a different element count */
  b = tb_new(13);
  int64_t sd[] = {2}, sv[] = {5, 5};
  tb_input(b, "x", TB_FLOAT, 2, a1, NULL);
  tb_init_i(b, "shape", 1, sd, sv);
  tb_node(b, "Reshape", "rs", "x,shape", "y");
  tb_output(b, "y", -1, NULL);
  st = load_tb(b, "reshape.onnx", &err);
  CHECK(st == PT_ERR_SHAPE, "reshape count: %s", pt_status_name(st));
  CHECK(has(&err, "reshape.onnx: node 'rs' (Reshape)"), "message: %s", err.msg);

  /* a pool window larger than the input */
  b = tb_new(13);
  int64_t pd[] = {1, 1, 2, 2}, k[] = {3, 3};
  tb_input(b, "x", TB_FLOAT, 4, pd, NULL);
  Onnx__NodeProto *nd = tb_node(b, "MaxPool", "pool", "x", "y");
  tb_attr_ints(b, nd, "kernel_shape", 2, k);
  tb_output(b, "y", -1, NULL);
  st = load_tb(b, "pool.onnx", &err);
  CHECK(st == PT_ERR_SHAPE, "pool window: %s", pt_status_name(st));
  CHECK(has(&err, "pool.onnx: node 'pool' (MaxPool)"), "message: %s", err.msg);

  /* a declared output shape that disagrees with what the graph computes */
  b = small_convnet();
  int64_t od[] = {1, 4, 8, 8}; /* no padding: really 1x4x6x6 */
  b->outputs[0] = tb_value_info(b, "y", TB_FLOAT, 4, od, NULL);
  st = load_tb(b, "declared.onnx", &err);
  CHECK(st == PT_ERR_SHAPE, "declared output: %s", pt_status_name(st));
  CHECK(has(&err, "declared.onnx") && has(&err, "1x4x6x6"), "message: %s", err.msg);
}

static void test_graph_errors(void) {
  pt_error err;

  /* an input nobody defines */
  tb *b = small_convnet();
  tb_node(b, "Add", "add", "y,ghost", "z");
  b->outputs[0]->name = tb_str(b, "z");
  pt_status st = load_tb(b, "undef.onnx", &err);
  CHECK(st == PT_ERR_PARSE, "undefined input: %s", pt_status_name(st));
  CHECK(has(&err, "undef.onnx: node 'add' (Add)") && has(&err, "ghost"), "message: %s", err.msg);

  /* a cycle */
  b = tb_new(13);
  int64_t xd[] = {1, 4};
  tb_input(b, "x", TB_FLOAT, 2, xd, NULL);
  tb_node(b, "Add", "a", "x,q", "p");
  tb_node(b, "Relu", "r", "p", "q");
  tb_output(b, "q", -1, NULL);
  st = load_tb(b, "cycle.onnx", &err);
  CHECK(st == PT_ERR_PARSE, "cycle: %s", pt_status_name(st));
  CHECK(has(&err, "cycle.onnx") && has(&err, "cycle"), "message: %s", err.msg);

  /* two nodes writing the same name */
  b = small_convnet();
  tb_node(b, "Relu", "again", "c", "y");
  st = load_tb(b, "dup.onnx", &err);
  CHECK(st == PT_ERR_PARSE, "duplicate output: %s", pt_status_name(st));
  CHECK(has(&err, "dup.onnx") && has(&err, "'y'"), "message: %s", err.msg);

  /* a graph output nobody computes */
  b = small_convnet();
  b->outputs[0]->name = tb_str(b, "nothing");
  st = load_tb(b, "out.onnx", &err);
  CHECK(st == PT_ERR_PARSE, "missing output: %s", pt_status_name(st));
  CHECK(has(&err, "out.onnx") && has(&err, "nothing"), "message: %s", err.msg);

  /* no graph, no opset */
  b = small_convnet();
  b->mp.graph = NULL;
  st = load_tb(b, "nograph.onnx", &err);
  CHECK(st == PT_ERR_PARSE, "no graph: %s", pt_status_name(st));
  CHECK(has(&err, "nograph.onnx"), "message: %s", err.msg);
  b = small_convnet();
  b->mp.n_opset_import = 0;
  st = load_tb(b, "noopset.onnx", &err);
  CHECK(st == PT_ERR_PARSE, "no opset: %s", pt_status_name(st));
  b = small_convnet();
  b->mp.has_ir_version = 0;
  st = load_tb(b, "noir.onnx", &err);
  CHECK(st == PT_ERR_PARSE, "no ir_version: %s", pt_status_name(st));

  /* float initializer data that does not match its dims */
  b = small_convnet();
  b->inits[0]->n_float_data = 7;
  st = load_tb(b, "data.onnx", &err);
  CHECK(st == PT_ERR_PARSE, "short initializer: %s", pt_status_name(st));
  CHECK(has(&err, "data.onnx") && has(&err, "'W'"), "message: %s", err.msg);
}

int main(void) {
  const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  snprintf(tmpdir, sizeof tmpdir, "%s/pt-model-errors-XXXXXX", base);
  bool made = mkdtemp(tmpdir) != NULL; /* REQUIRE evaluates its condition twice */
  REQUIRE(made, "mkdtemp in %s", base);
  test_file_errors();
  test_unsupported();
  test_shape_errors();
  test_graph_errors();
  const char *files[] = {"empty.onnx", "picture.onnx", "truncated.onnx", "random.onnx"};
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", tmpdir, files[i]);
    unlink(p);
  }
  CHECK(rmdir(tmpdir) == 0, "the temporary directory holds nothing else");
  PT_TEST_END();
}
