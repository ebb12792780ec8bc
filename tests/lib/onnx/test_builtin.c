/* The built-in models and writing models back as ONNX: shapes, parameter counts, FLOPs,
 * deterministic PyTorch-style initialisation, serialize/load round trips, atomic saves (a failed
 * save, including a full disk, leaves the old file and no temporary), and copying weights. */
#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include "exec.h"
#include "graph.h"
#include "pt_test.h"

static char tmpdir[256];

static pt_model *load(const char *spec) {
  pt_model *m = NULL;
  pt_error err;
  pt_status st = pt_model_load(spec, &m, &err);
  CHECK(st == PT_OK, "load %s: %s", spec, err.msg);
  return st == PT_OK ? m : NULL;
}

static bool same_shape(pt_shape s, int ndim, const int64_t *d) {
  if (s.ndim != ndim) return false;
  for (int i = 0; i < ndim; i++)
    if (s.d[i] != d[i]) return false;
  return true;
}

/* Every parameter of a and b has the same name, shape and bytes. */
static bool same_weights(const pt_model *a, const pt_model *b) {
  int na = 0, nb = 0;
  for (int i = 0; i < b->n_vals; i++) nb += b->vals[i].kind == PT_VAL_PARAM;
  for (int i = 0; i < a->n_vals; i++) {
    const pt_value *v = &a->vals[i];
    if (v->kind != PT_VAL_PARAM) continue;
    na++;
    int j = pt_graph_find_value(b, v->name);
    if (j < 0 || b->vals[j].kind != PT_VAL_PARAM || b->vals[j].numel != v->numel ||
        memcmp(b->vals[j].data, v->data, sizeof(float) * (size_t)v->numel) != 0)
      return false;
  }
  return na == nb && na > 0;
}

static int count_dir_entries(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
  closedir(d);
  return n;
}

static const pt_value *param(const pt_model *m, const char *name) {
  int v = pt_graph_find_value(m, name);
  return v >= 0 && m->vals[v].kind == PT_VAL_PARAM ? &m->vals[v] : NULL;
}

static void test_shapes_and_counts(void) {
  const char *const *names = pt_builtin_names();
  int n_names = 0;
  while (names[n_names]) n_names++;
  CHECK(n_names == 2 && !strcmp(names[0], "autoencoder") && !strcmp(names[1], "classifier"),
        "builtin names");

  pt_model *ae = load("builtin:autoencoder");
  if (ae) {
    int64_t io[] = {1, 3, 64, 64};
    CHECK(same_shape(pt_model_input_shape(ae), 4, io), "autoencoder input 1x3x64x64");
    CHECK(same_shape(pt_model_output_shape(ae), 4, io), "autoencoder output 1x3x64x64");
    CHECK(!strcmp(pt_model_name(ae), "builtin:autoencoder"), "name %s", pt_model_name(ae));
    CHECK(pt_model_n_nodes(ae) == 8, "autoencoder nodes: %d", pt_model_n_nodes(ae));
    /* conv 3->16, conv 16->32, deconv 32->16 (k4), deconv 16->3 (k4), with biases */
    int64_t expect =
        (16 * 3 * 9 + 16) + (32 * 16 * 9 + 32) + (32 * 16 * 16 + 16) + (16 * 3 * 16 + 3);
    CHECK(pt_model_n_params(ae) == expect, "autoencoder params %lld, expected %lld",
          (long long)pt_model_n_params(ae), (long long)expect);
    static const char *ops[] = {"Conv",          "Relu", "Conv",          "Relu",
                                "ConvTranspose", "Relu", "ConvTranspose", "Sigmoid"};
    static const int64_t oh[] = {32, 32, 16, 16, 32, 32, 64, 64};
    int64_t sum = 0;
    for (int i = 0; i < pt_model_n_nodes(ae) && i < 8; i++) {
      pt_node_info info;
      CHECK(pt_model_node_info(ae, i, &info) == PT_OK, "node_info %d", i);
      CHECK(!strcmp(info.op_type, ops[i]), "node %d is %s", i, info.op_type);
      CHECK(info.out_shape.ndim == 4 && info.out_shape.d[2] == oh[i], "node %d height %lld", i,
            (long long)info.out_shape.d[2]);
      sum += info.n_params;
    }
    CHECK(sum == pt_model_n_params(ae), "per-node parameters add up: %lld", (long long)sum);
    pt_node_info info;
    pt_model_node_info(ae, 4, &info);
    CHECK(!strcmp(info.name, "deconv1"), "readable node names: %s", info.name);
    /* ConvTranspose: 2 * C*H*W * OC/G * KH*KW, plus the bias once per output element */
    double f = 2.0 * 32 * 16 * 16 * 16 * 4 * 4 + 16.0 * 32 * 32;
    CHECK(fabs(info.flops - f) < 0.5, "deconv1 flops %.0f, expected %.0f", info.flops, f);
    CHECK(pt_model_node_info(ae, 8, &info) == PT_ERR_INVALID, "node_info out of range");
    CHECK(pt_model_node_info(ae, -1, &info) == PT_ERR_INVALID, "node_info negative");
    pt_model_free(ae);
  }

  pt_model *cl = load("builtin:classifier");
  if (cl) {
    int64_t in[] = {1, 3, 32, 32}, out[] = {1, 10};
    CHECK(same_shape(pt_model_input_shape(cl), 4, in), "classifier input 1x3x32x32");
    CHECK(same_shape(pt_model_output_shape(cl), 2, out), "classifier output 1x10");
    CHECK(pt_model_n_nodes(cl) == 10, "classifier nodes: %d", pt_model_n_nodes(cl));
    int64_t expect = (16 * 3 * 9 + 16) + (32 * 16 * 9 + 32) + (2048 * 64 + 64) + (64 * 10 + 10);
    CHECK(pt_model_n_params(cl) == expect, "classifier params %lld, expected %lld",
          (long long)pt_model_n_params(cl), (long long)expect);
    static const char *names2[] = {"conv1", "relu1",   "pool1", "conv2", "relu2",
                                   "pool2", "flatten", "fc1",   "relu3", "fc2"};
    for (int i = 0; i < 10; i++) {
      pt_node_info info;
      pt_model_node_info(cl, i, &info);
      CHECK(!strcmp(info.name, names2[i]), "node %d named %s", i, info.name);
    }
    pt_node_info info;
    pt_model_node_info(cl, 0, &info);
    /* Conv: 2 * OC*OH*OW * C/G*KH*KW, plus the bias */
    double f = 2.0 * 16 * 32 * 32 * 3 * 3 * 3 + 16.0 * 32 * 32;
    CHECK(fabs(info.flops - f) < 0.5, "conv1 flops %.0f, expected %.0f", info.flops, f);
    CHECK(info.n_params == 16 * 27 + 16, "conv1 params %lld", (long long)info.n_params);
    pt_model_node_info(cl, 6, &info);
    CHECK(info.out_shape.ndim == 2 && info.out_shape.d[1] == 2048, "flatten gives 1x2048");
    pt_model_node_info(cl, 9, &info);
    CHECK(fabs(info.flops - (2.0 * 10 * 64 + 10)) < 0.5, "fc2 flops %.0f", info.flops);
    /* Gemm as PyTorch exports Linear: weight (out, in), transB */
    const pt_value *w = param(cl, "fc2.weight");
    CHECK(w && w->shape.ndim == 2 && w->shape.d[0] == 10 && w->shape.d[1] == 64,
          "fc2.weight is 10x64");
    CHECK(cl->nodes[9].p.gemm.trans_b, "fc2 uses transB");
    pt_model_free(cl);
  }

  pt_model *c5 = load("builtin:classifier:5");
  if (c5) {
    int64_t out[] = {1, 5};
    CHECK(same_shape(pt_model_output_shape(c5), 2, out), "classifier:5 output 1x5");
    CHECK(!strcmp(pt_model_name(c5), "builtin:classifier:5"), "name %s", pt_model_name(c5));
    pt_model_free(c5);
  }
}

/* PyTorch's default: uniform in +-1/sqrt(fan_in) for weights and biases, fixed seed. */
static void test_init(void) {
  pt_model *a = load("builtin:classifier"), *b = load("builtin:classifier");
  if (!a || !b) goto out;
  CHECK(same_weights(a, b), "two loads give the same weights");
  static const struct {
    const char *name;
    double fan_in;
  } ps[] = {{"conv1.weight", 27}, {"conv1.bias", 27}, {"conv2.weight", 144}, {"conv2.bias", 144},
            {"fc1.weight", 2048}, {"fc1.bias", 2048}, {"fc2.weight", 64},    {"fc2.bias", 64}};
  for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++) {
    const pt_value *v = param(a, ps[k].name);
    CHECK(v != NULL, "parameter %s", ps[k].name);
    if (!v) continue;
    double bound = 1.0 / sqrt(ps[k].fan_in), mx = 0, sum = 0, sq = 0;
    for (int64_t i = 0; i < v->numel; i++) {
      double x = v->data[i];
      mx = fmax(mx, fabs(x));
      sum += x;
      sq += x * x;
    }
    CHECK(mx <= bound * (1 + 1e-6), "%s within +-%g (max %g)", ps[k].name, bound, mx);
    if (v->numel >= 400) {
      double mean = sum / (double)v->numel, sd = sqrt(sq / (double)v->numel - mean * mean);
      CHECK(fabs(mean) < 0.1 * bound, "%s mean %g", ps[k].name, mean);
      CHECK(fabs(sd - bound / sqrt(3.0)) < 0.1 * bound, "%s std %g, uniform wants %g", ps[k].name,
            sd, bound / sqrt(3.0));
      CHECK(mx > 0.95 * bound, "%s fills its range (max %g of %g)", ps[k].name, mx, bound);
    }
  }
  /* ConvTranspose weights are (C_in, C_out/G, KH, KW): PyTorch's fan_in is C_out/G * KH*KW */
  pt_model *ae = load("builtin:autoencoder");
  if (ae) {
    const pt_value *w = param(ae, "deconv2.weight");
    CHECK(w && w->shape.d[0] == 16 && w->shape.d[1] == 3, "deconv2.weight is 16x3x4x4");
    double mx = 0;
    for (int64_t i = 0; w && i < w->numel; i++) mx = fmax(mx, fabs(w->data[i]));
    CHECK(mx <= 1.0 / sqrt(48.0) && mx > 0.9 / sqrt(48.0), "deconv2 bound 1/sqrt(48): %g", mx);
    CHECK(ae->vals[pt_graph_find_value(ae, "input")].kind == PT_VAL_INPUT, "input is an input");
    pt_model_free(ae);
  }
out:
  pt_model_free(a);
  pt_model_free(b);
}

static void perturb(pt_model *m, float scale, float shift) {
  for (int i = 0; i < m->n_vals; i++)
    if (m->vals[i].kind == PT_VAL_PARAM)
      for (int64_t k = 0; k < m->vals[i].numel; k++)
        m->vals[i].data[k] = m->vals[i].data[k] * scale + shift * (float)(k % 7);
}

static void test_round_trip(const char *spec) {
  pt_error err;
  pt_model *m = load(spec);
  if (!m) return;
  perturb(m, 0.5f, 0.001f); /* trained weights must be written, not the file's originals */
  void *data = NULL;
  size_t size = 0;
  pt_status st = pt_model_serialize(m, &data, &size, &err);
  CHECK(st == PT_OK && data && size > 0, "serialize %s: %s", spec, err.msg);
  pt_model *r = NULL;
  st = pt_model_load_memory(data, size, "roundtrip.onnx", &r, &err);
  CHECK(st == PT_OK, "reload %s: %s", spec, err.msg);
  if (r) {
    CHECK(same_weights(m, r), "%s: serialize -> load gives identical weights", spec);
    CHECK(r->n_nodes == m->n_nodes && pt_model_n_params(r) == pt_model_n_params(m),
          "%s: same graph", spec);
    /* serializing the reloaded model gives the same bytes */
    void *data2 = NULL;
    size_t size2 = 0;
    pt_model_serialize(r, &data2, &size2, &err);
    CHECK(size2 == size && data2 && memcmp(data, data2, size) == 0,
          "%s: a second serialization is byte-identical", spec);
    free(data2);
    pt_model_free(r);
  }
  /* the model itself still serializes the same after all that (the kept proto is untouched) */
  void *data3 = NULL;
  size_t size3 = 0;
  pt_model_serialize(m, &data3, &size3, &err);
  CHECK(size3 == size && data3 && memcmp(data, data3, size) == 0, "%s: serialize is repeatable",
        spec);
  free(data3);
  free(data);

  char path[512];
  snprintf(path, sizeof path, "%s/saved.onnx", tmpdir);
  st = pt_model_save(m, path, &err);
  CHECK(st == PT_OK, "save %s: %s", path, err.msg);
  pt_model *s = load(path);
  if (s) {
    CHECK(same_weights(m, s), "%s: save -> load gives identical weights", spec);
    pt_model_free(s);
  }
  struct stat sb;
  CHECK(stat(path, &sb) == 0 && (sb.st_mode & 0777) == 0644, "saved file mode %o",
        (unsigned)(sb.st_mode & 0777));
  /* saving over an existing file replaces it */
  perturb(m, 2.0f, 0.0f);
  st = pt_model_save(m, path, &err);
  CHECK(st == PT_OK, "save again: %s", err.msg);
  s = load(path);
  if (s) {
    CHECK(same_weights(m, s), "%s: the second save replaced the first", spec);
    pt_model_free(s);
  }
  CHECK(count_dir_entries(tmpdir) == 1, "only the saved file is left in the directory");
  unlink(path);
  pt_model_free(m);
}

static void test_save_failures(void) {
  pt_error err;
  pt_model *m = load("builtin:classifier");
  if (!m) return;
  char path[512];
  snprintf(path, sizeof path, "%s/no/such/dir/model.onnx", tmpdir);
  pt_status st = pt_model_save(m, path, &err);
  CHECK(st == PT_ERR_IO, "save into a missing directory: %s", pt_status_name(st));
  CHECK(strstr(err.msg, path) != NULL, "the message names the path: %s", err.msg);
  CHECK(count_dir_entries(tmpdir) == 0, "nothing left behind");

  if (geteuid() != 0) { /* root writes anywhere */
    char ro[400];
    snprintf(ro, sizeof ro, "%s/ro", tmpdir);
    mkdir(ro, 0500);
    snprintf(path, sizeof path, "%s/model.onnx", ro);
    st = pt_model_save(m, path, &err);
    CHECK(st == PT_ERR_IO, "save into a read-only directory: %s", pt_status_name(st));
    CHECK(strstr(err.msg, path) != NULL, "the message names the path: %s", err.msg);
    CHECK(count_dir_entries(ro) == 0, "no temporary file in the read-only directory");
    rmdir(ro);
  }

  /* A full disk: a file size limit makes write() fail part-way through. The old file must
   * survive intact and no temporary may be left. */
  snprintf(path, sizeof path, "%s/keep.onnx", tmpdir);
  static const char old[] = "previous checkpoint";
  FILE *f = fopen(path, "wb");
  if (f) {
    fwrite(old, 1, sizeof old, f);
    fclose(f);
  }
  struct rlimit saved, small;
  getrlimit(RLIMIT_FSIZE, &saved);
  small = saved;
  small.rlim_cur = 4096;
  void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
  bool limited = setrlimit(RLIMIT_FSIZE, &small) == 0;
  st = pt_model_save(m, path, &err);
  if (limited) setrlimit(RLIMIT_FSIZE, &saved);
  signal(SIGXFSZ, prev);
  CHECK(limited, "could not set a file size limit");
  CHECK(st == PT_ERR_IO, "save onto a full disk: %s", pt_status_name(st));
  CHECK(strstr(err.msg, path) != NULL, "the message names the path: %s", err.msg);
  char back[64] = "";
  f = fopen(path, "rb");
  size_t got = f ? fread(back, 1, sizeof back, f) : 0;
  if (f) fclose(f);
  CHECK(got == sizeof old && memcmp(back, old, sizeof old) == 0, "the old file is intact");
  CHECK(count_dir_entries(tmpdir) == 1, "no temporary file left (%d entries)",
        count_dir_entries(tmpdir));
  unlink(path);
  pt_model_free(m);
}

static void test_copy_weights(void) {
  pt_error err;
  pt_model *a = load("builtin:classifier"), *b = load("builtin:classifier");
  pt_model *c5 = load("builtin:classifier:5"), *ae = load("builtin:autoencoder");
  if (!a || !b || !c5 || !ae) goto out;
  perturb(a, -1.0f, 0.01f);
  CHECK(!same_weights(a, b), "perturbed weights differ");
  CHECK(pt_model_copy_weights(b, a, &err) == PT_OK, "copy: %s", err.msg);
  CHECK(same_weights(a, b), "copied weights are equal");
  CHECK(param(a, "fc1.weight")->data != param(b, "fc1.weight")->data, "copies, not aliases");

  pt_model *ref = load("builtin:classifier");
  pt_status st = pt_model_copy_weights(b, c5, &err);
  CHECK(st == PT_ERR_SHAPE, "copy from a 5-class model: %s", pt_status_name(st));
  CHECK(strstr(err.msg, "fc2") != NULL, "names the parameter: %s", err.msg);
  CHECK(same_weights(a, b), "a failed copy changes nothing");
  st = pt_model_copy_weights(b, ae, &err);
  CHECK(st == PT_ERR_INVALID, "copy from another graph: %s", pt_status_name(st));
  CHECK(same_weights(a, b), "a failed copy changes nothing");
  pt_model_free(ref);
out:
  pt_model_free(a);
  pt_model_free(b);
  pt_model_free(c5);
  pt_model_free(ae);
}

/* The built-ins run: finite outputs of the documented shapes; sigmoid output in (0, 1). */
static void test_forward(void) {
  const char *specs[] = {"builtin:autoencoder", "builtin:classifier"};
  for (int k = 0; k < 2; k++) {
    pt_model *m = load(specs[k]);
    if (!m) continue;
    pt_exec x;
    pt_error err;
    pt_status st = pt_exec_init(&x, m, 0, m->n_nodes, false, false, &err);
    CHECK(st == PT_OK, "exec init %s: %s", specs[k], err.msg);
    if (st == PT_OK) {
      int64_t n = m->vals[m->input].numel;
      float *in = malloc(sizeof(float) * (size_t)n);
      unsigned long long seed = 7;
      for (int64_t i = 0; i < n; i++) in[i] = pt_test_uniform(&seed, 0.0f, 1.0f);
      pt_exec_bind(&x, m->input, in);
      pt_exec_forward(&x);
      const float *out = pt_exec_act(&x, m->output);
      int64_t no = m->vals[m->output].numel;
      int bad = 0;
      for (int64_t i = 0; i < no; i++) {
        if (!isfinite(out[i])) bad++;
        if (k == 0 && !(out[i] > 0.0f && out[i] < 1.0f)) bad++;
      }
      CHECK(bad == 0, "%s: %d bad outputs", specs[k], bad);
      pt_exec_free(&x);
      free(in);
    }
    pt_model_free(m);
  }
}

int main(void) {
  const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  snprintf(tmpdir, sizeof tmpdir, "%s/pt-builtin-XXXXXX", base);
  bool made = mkdtemp(tmpdir) != NULL; /* REQUIRE evaluates its condition twice */
  REQUIRE(made, "mkdtemp in %s", base);
  test_shapes_and_counts();
  test_init();
  test_round_trip("builtin:autoencoder");
  test_round_trip("builtin:classifier");
  test_save_failures();
  test_copy_weights();
  test_forward();
  CHECK(rmdir(tmpdir) == 0, "the temporary directory is empty at the end");
  PT_TEST_END();
}
