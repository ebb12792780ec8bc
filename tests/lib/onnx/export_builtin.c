/* Writes the built-in models as ONNX files for check_export.py, with what our executor computes
 * for a fixed input so the script can compare against PyTorch.
 *
 * Usage: export_builtin OUTDIR
 * Writes, for NAME in autoencoder, classifier:
 *   NAME.onnx                the model as loaded (pt_model_save)
 *   NAME.in.f32, NAME.out.f32  a deterministic input and our forward output (raw float32)
 * and classifier_trained.onnx: the classifier with every parameter p replaced by 0.5 * p + 0.25,
 * which must be what the file holds (checkpoints carry the current weights). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "exec.h"
#include "graph.h"

static int write_raw(const char *path, const float *v, int64_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  size_t k = fwrite(v, sizeof(float), (size_t)n, f);
  return fclose(f) == 0 && k == (size_t)n ? 0 : -1;
}

static int export_one(const char *dir, const char *name) {
  char spec[64], path[1024];
  pt_error err;
  pt_model *m = NULL;
  snprintf(spec, sizeof spec, "builtin:%s", name);
  if (pt_model_load(spec, &m, &err) != PT_OK) {
    fprintf(stderr, "%s\n", err.msg);
    return 1;
  }
  snprintf(path, sizeof path, "%s/%s.onnx", dir, name);
  if (pt_model_save(m, path, &err) != PT_OK) {
    fprintf(stderr, "%s\n", err.msg);
    pt_model_free(m);
    return 1;
  }
  pt_exec x;
  if (pt_exec_init(&x, m, 0, m->n_nodes, false, false, &err) != PT_OK) {
    fprintf(stderr, "%s\n", err.msg);
    pt_model_free(m);
    return 1;
  }
  int64_t n = m->vals[m->input].numel;
  float *in = malloc(sizeof(float) * (size_t)n);
  uint64_t s = 12345;
  for (int64_t i = 0; i < n; i++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    in[i] = (float)(s >> 40) / 16777216.0f;
  }
  pt_exec_bind(&x, m->input, in);
  pt_exec_forward(&x);
  int rc = 0;
  snprintf(path, sizeof path, "%s/%s.in.f32", dir, name);
  rc |= write_raw(path, in, n);
  snprintf(path, sizeof path, "%s/%s.out.f32", dir, name);
  rc |= write_raw(path, pt_exec_act(&x, m->output), m->vals[m->output].numel);
  pt_exec_free(&x);
  free(in);
  if (strcmp(name, "classifier") == 0) {
    for (int v = 0; v < m->n_vals; v++)
      if (m->vals[v].kind == PT_VAL_PARAM)
        for (int64_t k = 0; k < m->vals[v].numel; k++)
          m->vals[v].data[k] = 0.5f * m->vals[v].data[k] + 0.25f;
    snprintf(path, sizeof path, "%s/classifier_trained.onnx", dir);
    if (pt_model_save(m, path, &err) != PT_OK) {
      fprintf(stderr, "%s\n", err.msg);
      rc = 1;
    }
  }
  pt_model_free(m);
  return rc ? 1 : 0;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: export_builtin OUTDIR\n");
    return 2;
  }
  return export_one(argv[1], "autoencoder") | export_one(argv[1], "classifier");
}
