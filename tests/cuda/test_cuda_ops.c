/* Every op on the CUDA executor against the CPU executor: forward output, and after one backward
 * pass from the same random output gradient, the gradient of the input and of every parameter.
 * Compared by normalised error max|gpu - cpu| / max(1, max|cpu|).
 *
 * Usage: test_cuda_ops MODEL_DIR (with ops.txt from make_models.py). Without a usable GPU on the
 * real runtime the test checks that the error names the device and the cause, and exits 77. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cuda_runtime.h>
#include <partime/model.h>
#include "cuda/exec.h"
#include "exec.h"
#include "pt_test.h"
#include "cuda_test.h"

#define TOL 2e-5

static double norm_err(const float *got, const float *want, int64_t n) {
  double diff = 0, scale = 1;
  for (int64_t i = 0; i < n; i++) {
    double d = fabs((double)got[i] - want[i]);
    if (!(d <= diff)) diff = d; /* NaN counts as the largest error */
    if (fabs(want[i]) > scale) scale = fabs(want[i]);
  }
  return diff / scale;
}

static float *download(const float *dev, int64_t n) {
  float *h = malloc(n * sizeof *h);
  cudaMemcpy(h, dev, n * sizeof *h, cudaMemcpyDeviceToHost);
  return h;
}

static void run_case(const char *dir, const char *name, cudaStream_t stream) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s.onnx", dir, name);
  pt_model *m = NULL;
  pt_error err;
  pt_error_clear(&err);
  if (pt_model_load(path, &m, &err)) {
    CHECK(0, "%s: %s", name, err.msg);
    return;
  }
  int n = m->n_nodes, xin = m->input, yout = m->output;
  int64_t nx = m->vals[xin].numel, ny = m->vals[yout].numel;
  unsigned long long seed = 0x9e3779b97f4a7c15ULL ^ (unsigned long long)strlen(name);
  float *x = malloc(nx * sizeof *x), *dy = malloc(ny * sizeof *dy);
  for (int64_t i = 0; i < nx; i++) x[i] = pt_test_uniform(&seed, -1.5f, 1.5f);
  for (int64_t i = 0; i < ny; i++) dy[i] = pt_test_uniform(&seed, -1.0f, 1.0f);

  pt_exec cpu;
  pt_status st = pt_exec_init(&cpu, m, 0, n, true, true, &err);
  CHECK(st == PT_OK, "%s: CPU executor: %s", name, err.msg);
  pt_cuda_exec *gpu = NULL;
  st = pt_cuda_exec_new(m, 0, n, true, true, 0, stream, &gpu, &err);
  CHECK(st == PT_OK, "%s: CUDA executor: %s", name, err.msg);
  if (!gpu) {
    pt_exec_free(&cpu);
    pt_model_free(m);
    free(x);
    free(dy);
    return;
  }

  /* Every gradient buffer starts from the same nonzero values on both sides, so a backward that
   * overwrites instead of adding (the accumulate rule) shows. */
  float *prefill = NULL;
  int64_t most = 0;
  for (int v = 0; v < m->n_vals; v++)
    if (pt_exec_grad(&cpu, v) && m->vals[v].numel > most) most = m->vals[v].numel;
  prefill = malloc((most ? most : 1) * sizeof *prefill);
  for (int64_t i = 0; i < most; i++) prefill[i] = pt_test_uniform(&seed, -0.5f, 0.5f);

  /* CPU */
  pt_exec_bind(&cpu, xin, x);
  pt_exec_forward(&cpu);
  for (int v = 0; v < m->n_vals; v++)
    if (pt_exec_grad(&cpu, v))
      memcpy(pt_exec_grad(&cpu, v), prefill, m->vals[v].numel * sizeof(float));
  memcpy(pt_exec_grad(&cpu, yout), dy, ny * sizeof *dy);
  pt_exec_backward(&cpu);

  /* GPU: the output gradient is uploaded like the engine's delta */
  float *dx_dev = NULL;
  cudaMalloc((void **)&dx_dev, nx * sizeof(float));
  cudaMemcpy(dx_dev, x, nx * sizeof(float), cudaMemcpyHostToDevice);
  pt_cuda_exec_bind(gpu, xin, dx_dev);
  pt_cuda_exec_forward(gpu);
  pt_cuda_exec_zero_grad(gpu);
  for (int v = 0; v < m->n_vals; v++) {
    float *g = pt_cuda_exec_grad(gpu, v);
    CHECK(!g == !pt_exec_grad(&cpu, v), "%s: value %s has a gradient on one side only", name,
          m->vals[v].name);
    if (g)
      cudaMemcpyAsync(g, prefill, m->vals[v].numel * sizeof(float), cudaMemcpyHostToDevice, stream);
  }
  cudaMemcpyAsync(pt_cuda_exec_grad(gpu, yout), dy, ny * sizeof(float), cudaMemcpyHostToDevice,
                  stream);
  pt_cuda_exec_backward(gpu);
  cudaStreamSynchronize(stream);
  CHECK(!pt_cuda_exec_error(gpu), "%s: %s", name, pt_cuda_exec_error(gpu));

  float *y = download(pt_cuda_exec_act(gpu, yout), ny);
  double e = norm_err(y, pt_exec_act(&cpu, yout), ny);
  CHECK(e < TOL, "%s: forward differs from the CPU by %.3g", name, e);
  free(y);
  float *gx = download(pt_cuda_exec_grad(gpu, xin), nx);
  e = norm_err(gx, pt_exec_grad(&cpu, xin), nx);
  CHECK(e < TOL, "%s: input gradient differs from the CPU by %.3g", name, e);
  free(gx);
  CHECK(pt_cuda_exec_n_params(gpu) == cpu.n_params, "%s: %d parameters on the GPU, %d on the CPU",
        name, pt_cuda_exec_n_params(gpu), cpu.n_params);
  for (int i = 0; i < pt_cuda_exec_n_params(gpu) && i < cpu.n_params; i++) {
    int v = pt_cuda_exec_param(gpu, i);
    int64_t nv = m->vals[v].numel;
    float *gw = download(pt_cuda_exec_grad(gpu, v), nv);
    e = norm_err(gw, pt_exec_grad(&cpu, v), nv);
    CHECK(e < TOL, "%s: gradient of %s differs from the CPU by %.3g", name, m->vals[v].name, e);
    free(gw);
  }
  free(prefill);
  cudaFree(dx_dev);
  pt_cuda_exec_free(gpu);
  pt_exec_free(&cpu);
  pt_model_free(m);
  free(x);
  free(dy);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s MODEL_DIR\n", argv[0]);
    return 2;
  }
  int gate = pt_cuda_test_gate();
  if (gate >= 0) return gate;
  char list[1024];
  snprintf(list, sizeof list, "%s/ops.txt", argv[1]);
  FILE *f = fopen(list, "r");
  REQUIRE(f != NULL, "cannot open %s", list);
  cudaSetDevice(0);
  cudaStream_t stream;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess, "stream");
  char name[256];
  int cases = 0;
  while (fscanf(f, "%255s", name) == 1) {
    run_case(argv[1], name, stream);
    cases++;
  }
  fclose(f);
  CHECK(cases >= 40, "only %d op cases listed", cases);
  cudaStreamDestroy(stream);
  PT_TEST_END();
}
