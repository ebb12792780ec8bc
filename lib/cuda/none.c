/* The CUDA stage backend of a build without CUDA: every "cuda:N" is refused with the reason, so
 * nothing else here is ever reached. */
#include <stdlib.h>
#include "../stream_internal.h"

pt_status pt_cuda_parse_device(const char *name, int *index, pt_error *err) {
  *index = -1;
  return pt_error_set(err, PT_ERR_DEVICE,
                      "device '%s': this build of libpartime has no CUDA backend (configure with "
                      "-Dcuda=enabled on a machine with the CUDA toolkit, cuDNN and cuBLAS)",
                      name);
}

pt_status pt_cuda_stream_init(pt_stream *s, pt_error *err) {
  (void)s;
  return pt_error_set(err, PT_ERR_DEVICE, "this build of libpartime has no CUDA backend");
}

void pt_cuda_stream_free(pt_stream *s) {
  (void)s;
}

void pt_cuda_run_tick(stage *g, int64_t k, const tick_desc *td) {
  (void)g, (void)k, (void)td;
}

pt_status pt_cuda_stream_sync(pt_stream *s, bool weights, pt_error *err) {
  (void)s, (void)weights, (void)err;
  return PT_OK;
}

void pt_cuda_stream_reset(pt_stream *s) {
  (void)s;
}

void *pt_cuda_host_alloc(int device, size_t bytes) {
  (void)device;
  return calloc(1, bytes);
}

void pt_cuda_host_free(void *p) {
  free(p);
}

pt_status pt_cuda_stage_device_frame(pt_stream *s, int si, const pt_device_frame *f) {
  (void)s, (void)si, (void)f;
  return PT_ERR_STATE;
}

pt_status pt_cuda_primary_context(int device, void **context, int *cu_device, pt_error *err) {
  (void)context, (void)cu_device;
  return pt_error_set(err, PT_ERR_UNSUPPORTED,
                      "cuda:%d: this build of libpartime has no CUDA backend", device);
}
