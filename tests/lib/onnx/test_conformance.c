/* The ONNX conformance cases (Debian's libonnx-testdata) through the importer and the executor.
 *
 * Usage: test_conformance [--min-pass N] [-v] DIR...   (DIR: .../data/node,
 * .../data/pytorch-converted)
 *
 * Every case directory holds model.onnx and test_data_set_N directories with input_K.pb and
 * output_K.pb (serialized TensorProtos). A model the importer refuses with PT_ERR_UNSUPPORTED is
 * counted as refused; any other load failure, or a loaded model whose outputs differ from the
 * reference by more than ONNX's own backend-test tolerance (|a - b| <= atol + rtol * |b|, rtol
 * 1e-3, atol 1e-7), is a failure.
 *
 * ONNX's node tests feed shape-like operands (Reshape's shape, Squeeze/Unsqueeze axes, Resize
 * scales and sizes, Dropout's ratio) as graph inputs, while our importer, which fixes every shape
 * at load time, wants them constant. For a graph input used only in such operand slots, the test
 * turns it into an initializer holding that data set's value and loads the model once per data
 * set. Everything else is fed at run time, bound by graph input order. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "exec.h"
#include "onnx.pb-c.h"
#include "pt_test.h"

#define RTOL 1e-3
#define ATOL 1e-7

typedef struct counts {
  int cases, ran, passed, refused, failed;
} counts;

static bool verbose;

static void *read_all(const char *path, size_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  void *buf = malloc(n > 0 ? (size_t)n : 1);
  if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  *size = (size_t)n;
  return buf;
}

static Onnx__TensorProto *read_tensor(const char *path) {
  size_t n;
  void *buf = read_all(path, &n);
  if (!buf) return NULL;
  Onnx__TensorProto *t = onnx__tensor_proto__unpack(NULL, n, buf);
  free(buf);
  return t;
}

static int64_t tensor_numel(const Onnx__TensorProto *t) {
  int64_t n = 1;
  for (size_t i = 0; i < t->n_dims; i++) n *= t->dims[i];
  return n;
}

/* The float contents of a FLOAT tensor (malloc'ed), or NULL. */
static float *tensor_floats(const Onnx__TensorProto *t) {
  if (t->data_type != ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT) return NULL;
  int64_t n = tensor_numel(t);
  float *f = calloc((size_t)(n > 0 ? n : 1), sizeof(float));
  if (!f) return NULL;
  if (t->has_raw_data && t->raw_data.len == (size_t)n * 4) {
    for (int64_t i = 0; i < n; i++) {
      const uint8_t *b = t->raw_data.data + 4 * i;
      uint32_t u =
          (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
      memcpy(&f[i], &u, 4);
    }
  } else if (t->n_float_data == (size_t)n) {
    memcpy(f, t->float_data, sizeof(float) * (size_t)n);
  } else {
    free(f);
    return NULL;
  }
  return f;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted subdirectory names of `dir` starting with `prefix`; returns the count. */
static int list_dirs(const char *dir, const char *prefix, char ***out) {
  DIR *d = opendir(dir);
  *out = NULL;
  if (!d) return -1;
  int n = 0, cap = 0;
  char **names = NULL;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.' || strncmp(e->d_name, prefix, strlen(prefix)) != 0) continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 64;
      names = realloc(names, sizeof *names * (size_t)cap);
    }
    names[n++] = strdup(e->d_name);
  }
  closedir(d);
  qsort(names, (size_t)n, sizeof *names, cmp_str);
  *out = names;
  return n;
}

static void free_list(char **names, int n) {
  for (int i = 0; i < n; i++) free(names[i]);
  free(names);
}

/* Is graph input `name` read only where a load-time constant is expected? */
static bool shape_operand_only(const Onnx__GraphProto *g, const char *name) {
  static const struct {
    const char *op;
    unsigned slots;
  } ops[] = {{"Reshape", 0x2}, {"Squeeze", 0x2},  {"Unsqueeze", 0x2},
             {"Resize", 0xe},  {"Upsample", 0x2}, {"Dropout", 0x6}};
  bool used = false;
  for (size_t i = 0; i < g->n_output; i++)
    if (strcmp(g->output[i]->name, name) == 0) return false;
  for (size_t i = 0; i < g->n_node; i++) {
    const Onnx__NodeProto *np = g->node[i];
    for (size_t k = 0; k < np->n_input; k++) {
      if (strcmp(np->input[k], name) != 0) continue;
      bool ok = false;
      for (size_t j = 0; j < sizeof ops / sizeof ops[0]; j++)
        if (strcmp(np->op_type, ops[j].op) == 0 && k < 32 && ((ops[j].slots >> k) & 1u)) ok = true;
      if (!ok) return false;
      used = true;
    }
  }
  return used;
}

typedef struct ccase {
  const char *name; /* "node/test_relu" */
  char dir[1024];
  Onnx__ModelProto *mp;
  int n_rt;              /* run-time graph inputs (not initializers) */
  const char **rt_names; /* their names, in graph order */
  bool *fold;            /* turned into initializers from the data set */
  int n_fold;
} ccase;

/* Loads the case's model, with the folded inputs of data set `ds` as initializers. */
static pt_status load_case(ccase *c, const char *ds, pt_model **m, pt_error *err) {
  char path[1200];
  snprintf(path, sizeof path, "%s/model.onnx", c->dir);
  if (c->n_fold == 0) return pt_model_load(path, m, err);
  Onnx__GraphProto g2 = *c->mp->graph;
  Onnx__ModelProto mp2 = *c->mp;
  mp2.graph = &g2;
  size_t n_init = g2.n_initializer + (size_t)c->n_fold;
  Onnx__TensorProto **inits = calloc(n_init, sizeof *inits);
  Onnx__TensorProto **mine = calloc((size_t)c->n_fold, sizeof *mine);
  char **own_names = calloc((size_t)c->n_fold, sizeof *own_names);
  if (g2.n_initializer) memcpy(inits, g2.initializer, sizeof *inits * g2.n_initializer);
  int k = 0;
  pt_status st = PT_OK;
  for (int i = 0; i < c->n_rt; i++) {
    if (!c->fold[i]) continue;
    char ip[1400];
    snprintf(ip, sizeof ip, "%s/%s/input_%d.pb", c->dir, ds, i);
    mine[k] = read_tensor(ip);
    if (!mine[k]) {
      st = pt_error_set(err, PT_ERR_IO, "%s: cannot read", ip);
      break;
    }
    own_names[k] = mine[k]->name; /* the graph input's name, restored before freeing */
    mine[k]->name = (char *)c->rt_names[i];
    inits[g2.n_initializer + (size_t)k] = mine[k];
    k++;
  }
  if (st == PT_OK) {
    g2.initializer = inits;
    g2.n_initializer = n_init;
    size_t n = onnx__model_proto__get_packed_size(&mp2);
    uint8_t *buf = malloc(n);
    onnx__model_proto__pack(&mp2, buf);
    st = pt_model_load_memory(buf, n, path, m, err);
    free(buf);
  }
  for (int i = 0; i < k; i++) {
    mine[i]->name = own_names[i];
    onnx__tensor_proto__free_unpacked(mine[i], NULL);
  }
  free(own_names);
  free(mine);
  free(inits);
  return st;
}

/* Runs one data set; returns true when every output matches. `why` explains a mismatch. */
static bool run_data_set(ccase *c, pt_model *m, const char *ds, char *why, size_t nwhy) {
  pt_exec x;
  pt_error err;
  float **bufs = calloc((size_t)c->n_rt + 1, sizeof *bufs);
  bool ok = true;
  snprintf(why, nwhy, "ok");
  if (pt_exec_init(&x, m, 0, m->n_nodes, false, false, &err) != PT_OK) {
    snprintf(why, nwhy, "exec init: %s", err.msg);
    free(bufs);
    return false;
  }
  int j = 0; /* index into m->inputs (folded inputs are not there) */
  for (int i = 0; i < c->n_rt && ok; i++) {
    if (c->fold[i]) continue;
    char ip[1400];
    snprintf(ip, sizeof ip, "%s/%s/input_%d.pb", c->dir, ds, i);
    Onnx__TensorProto *t = read_tensor(ip);
    if (!t) {
      snprintf(why, nwhy, "cannot read %s", ip);
      ok = false;
      break;
    }
    int v = j < m->n_inputs ? m->inputs[j] : -1;
    j++;
    if (v < 0 || strcmp(m->vals[v].name, c->rt_names[i]) != 0) {
      snprintf(why, nwhy, "input %d ('%s') not found in the model", i, c->rt_names[i]);
      ok = false;
    } else if (tensor_numel(t) != m->vals[v].numel || (int)t->n_dims != m->vals[v].shape.ndim) {
      snprintf(why, nwhy, "input '%s': data has %lld elements, model %lld", c->rt_names[i],
               (long long)tensor_numel(t), (long long)m->vals[v].numel);
      ok = false;
    } else if (!(bufs[i] = tensor_floats(t))) {
      snprintf(why, nwhy, "input '%s' is not float data", c->rt_names[i]);
      ok = false;
    } else if (pt_exec_is_external(&x, v)) {
      pt_exec_bind(&x, v, bufs[i]);
    }
    onnx__tensor_proto__free_unpacked(t, NULL);
  }
  if (ok) pt_exec_forward(&x);
  for (int k = 0; k < m->n_outputs && ok; k++) {
    char op[1400];
    snprintf(op, sizeof op, "%s/%s/output_%d.pb", c->dir, ds, k);
    Onnx__TensorProto *t = read_tensor(op);
    if (!t) {
      snprintf(why, nwhy, "cannot read %s", op);
      ok = false;
      break;
    }
    const pt_value *v = &m->vals[m->outputs[k]];
    bool same_shape = (int)t->n_dims == v->shape.ndim;
    for (int d = 0; same_shape && d < v->shape.ndim; d++)
      if (t->dims[d] != v->shape.d[d]) same_shape = false;
    float *ref = tensor_floats(t);
    const float *got = pt_exec_act(&x, m->outputs[k]);
    if (!same_shape) {
      char b[96];
      snprintf(why, nwhy, "output '%s' has shape %s, the reference %zu dims", v->name,
               pt_shape_str(&v->shape, b, sizeof b), t->n_dims);
      ok = false;
    } else if (!ref || !got) {
      snprintf(why, nwhy, "output '%s': no data to compare", v->name);
      ok = false;
    } else {
      double worst = 0.0;
      int64_t at = -1, bad = 0;
      for (int64_t e = 0; e < v->numel; e++) {
        double a = got[e], b = ref[e];
        if (isnan(a) && isnan(b)) continue;
        double d = fabs(a - b);
        if (!(d <= ATOL + RTOL * fabs(b))) {
          bad++;
          if (!(d <= worst)) {
            worst = d;
            at = e;
          }
        }
      }
      if (bad) {
        snprintf(why, nwhy, "output '%s': %lld of %lld values off, worst at %lld: %g vs %g",
                 v->name, (long long)bad, (long long)v->numel, (long long)at, got[at], ref[at]);
        ok = false;
      }
    }
    free(ref);
    onnx__tensor_proto__free_unpacked(t, NULL);
  }
  pt_exec_free(&x);
  for (int i = 0; i < c->n_rt; i++) free(bufs[i]);
  free(bufs);
  return ok;
}

static void run_case(const char *root, const char *group, const char *name, counts *n) {
  ccase c = {0};
  char label[512];
  snprintf(label, sizeof label, "%s/%s", group, name);
  c.name = label;
  snprintf(c.dir, sizeof c.dir, "%s/%s", root, name);
  char path[1200];
  snprintf(path, sizeof path, "%s/model.onnx", c.dir);
  size_t size;
  void *buf = read_all(path, &size);
  if (!buf) return;
  n->cases++;
  c.mp = onnx__model_proto__unpack(NULL, size, buf);
  free(buf);
  if (!c.mp || !c.mp->graph) {
    printf("FAIL %s: the test cannot parse model.onnx\n", label);
    n->failed++;
    if (c.mp) onnx__model_proto__free_unpacked(c.mp, NULL);
    return;
  }
  const Onnx__GraphProto *g = c.mp->graph;
  c.rt_names = calloc(g->n_input + 1, sizeof *c.rt_names);
  c.fold = calloc(g->n_input + 1, sizeof *c.fold);
  for (size_t i = 0; i < g->n_input; i++) {
    bool is_init = false;
    for (size_t k = 0; k < g->n_initializer; k++)
      if (strcmp(g->initializer[k]->name, g->input[i]->name) == 0) is_init = true;
    if (is_init) continue;
    c.rt_names[c.n_rt] = g->input[i]->name;
    c.fold[c.n_rt] = shape_operand_only(g, g->input[i]->name);
    c.n_fold += c.fold[c.n_rt];
    c.n_rt++;
  }
  char **sets;
  int n_sets = list_dirs(c.dir, "test_data_set_", &sets);
  pt_model *m = NULL;
  pt_error err = {0};
  bool refused = false, failed = false;
  char why[2048] = "";
  for (int s = 0; s < n_sets && !refused && !failed; s++) {
    if (!m || c.n_fold) {
      pt_model_free(m);
      m = NULL;
      pt_status st = load_case(&c, sets[s], &m, &err);
      if (st == PT_ERR_UNSUPPORTED) {
        refused = true;
        snprintf(why, sizeof why, "%s", err.msg);
        break;
      }
      if (st != PT_OK) {
        failed = true;
        snprintf(why, sizeof why, "load failed (%s): %s", pt_status_name(st), err.msg);
        break;
      }
    }
    if (!run_data_set(&c, m, sets[s], why, sizeof why)) failed = true;
  }
  if (refused) {
    n->refused++;
    if (verbose) printf("refused %s: %s\n", label, why);
  } else {
    n->ran++;
    if (failed) {
      n->failed++;
      printf("FAIL %s: %s\n", label, why);
    } else {
      n->passed++;
      if (verbose) printf("pass %s%s\n", label, c.n_fold ? " (shape inputs as constants)" : "");
    }
  }
  pt_model_free(m);
  free_list(sets, n_sets > 0 ? n_sets : 0);
  free(c.rt_names);
  free(c.fold);
  onnx__model_proto__free_unpacked(c.mp, NULL);
}

int main(int argc, char **argv) {
  int min_pass = 0;
  counts n = {0};
  int n_roots = 0;
  for (int a = 1; a < argc; a++) {
    if (strcmp(argv[a], "-v") == 0) {
      verbose = true;
      continue;
    }
    if (strcmp(argv[a], "--min-pass") == 0 && a + 1 < argc) {
      min_pass = atoi(argv[++a]);
      continue;
    }
    const char *root = argv[a];
    const char *group = strrchr(root, '/') ? strrchr(root, '/') + 1 : root;
    char **names;
    int k = list_dirs(root, "test_", &names);
    CHECK(k > 0, "no cases under %s", root);
    counts g = {0};
    for (int i = 0; i < k; i++) run_case(root, group, names[i], &g);
    free_list(names, k > 0 ? k : 0);
    printf("%s: %d cases, %d ran, %d passed, %d refused\n", group, g.cases, g.ran, g.passed,
           g.refused);
    n.cases += g.cases;
    n.ran += g.ran;
    n.passed += g.passed;
    n.refused += g.refused;
    n.failed += g.failed;
    n_roots++;
  }
  REQUIRE(n_roots > 0, "usage: test_conformance [--min-pass N] [-v] DIR...");
  printf("conformance: %d cases, %d ran, %d passed, %d refused\n", n.cases, n.ran, n.passed,
         n.refused);
  CHECK(n.failed == 0, "%d cases gave a wrong answer or failed to load", n.failed);
  CHECK(n.passed >= min_pass, "only %d cases passed, expected at least %d", n.passed, min_pass);
  PT_TEST_END();
}
