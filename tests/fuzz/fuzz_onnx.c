/* libFuzzer target for the ONNX loader: any byte string must load or be refused with an error,
 * never crash. A model that loads is also queried, serialized and loaded back, and, when it is
 * small, streamed for a few frames so the executor meets the odd graphs too. */
#include <stdlib.h>
#include <string.h>
#include <partime/partime.h>
#include "fuzz.h"

/* Bounds that keep one input well under a second and a few MB. */
#define FUZZ_MAX_ELEMS 200000
#define FUZZ_MAX_FLOPS 2e7

static void stream_a_little(pt_model *m, int train) {
  pt_shape in = pt_model_input_shape(m), out = pt_model_output_shape(m);
  int64_t in_len = pt_shape_numel(&in), out_len = pt_shape_numel(&out);
  if (in_len <= 0 || in_len > FUZZ_MAX_ELEMS || out_len <= 0 || out_len > FUZZ_MAX_ELEMS) return;
  pt_stream_opts o;
  pt_stream_opts_init(&o);
  o.threaded = false;
  o.stages = pt_model_n_nodes(m) >= 2 ? 2 : 1;
  o.devices = "cpu";
  o.train.enabled = train;
  o.train.loss = PT_LOSS_MSE;
  pt_stream *s;
  pt_error err;
  if (pt_stream_new(m, &o, &s, &err) != PT_OK) return;
  float *frame = calloc((size_t)in_len, sizeof(float));
  float *target = calloc((size_t)out_len, sizeof(float));
  if (frame && target) {
    for (int64_t i = 0; i < in_len; i++) frame[i] = (float)((i * 37) % 11) / 11.0f - 0.5f;
    pt_target t = {.tensor = target};
    pt_result r;
    for (int k = 0; k < 3; k++) {
      if (pt_stream_push(s, frame, train ? &t : NULL, NULL) > PT_AGAIN) break;
      while (pt_stream_pop(s, &r) == PT_OK) {
      }
    }
    if (pt_stream_drain(s) == PT_OK)
      while (pt_stream_pop(s, &r) == PT_OK) {
      }
  }
  free(frame);
  free(target);
  pt_stream_free(s);
}

void pt_fuzz_onnx(const uint8_t *data, size_t size) {
  pt_model *m;
  pt_error err;
  if (pt_model_load_memory(data, size, "fuzz.onnx", &m, &err) != PT_OK) {
    if (err.code == PT_OK || err.msg[0] == '\0') abort(); /* a refusal must say why */
    return;
  }
  pt_shape in = pt_model_input_shape(m), out = pt_model_output_shape(m);
  char buf[128];
  pt_shape_str(&in, buf, sizeof buf);
  pt_shape_str(&out, buf, sizeof buf);
  int n = pt_model_n_nodes(m);
  double flops = 0, elems = 0;
  for (int i = 0; i < n; i++) {
    pt_node_info ni;
    if (pt_model_node_info(m, i, &ni) != PT_OK) abort(); /* every index below n exists */
    if (ni.name) (void)strlen(ni.name);
    if (ni.op_type) (void)strlen(ni.op_type);
    flops += ni.flops;
    elems += (double)pt_shape_numel(&ni.out_shape);
  }
  (void)pt_model_n_params(m);

  /* What we write must load again. */
  void *ser;
  size_t ser_size;
  if (pt_model_serialize(m, &ser, &ser_size, &err) == PT_OK) {
    pt_model *m2;
    if (pt_model_load_memory(ser, ser_size, "reserialized.onnx", &m2, &err) != PT_OK) abort();
    if (pt_model_n_nodes(m2) != n) abort();
    pt_model_free(m2);
    free(ser);
  }
  if (n > 0 && n <= 64 && elems <= FUZZ_MAX_ELEMS && flops <= FUZZ_MAX_FLOPS) {
    stream_a_little(m, 0);
    stream_a_little(m, 1);
  }
  pt_model_free(m);
}

#ifndef PT_FUZZ_REPLAY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  pt_fuzz_onnx(data, size);
  return 0;
}
#endif
