/* libFuzzer target for the .npy reader: any byte string must parse or be refused with
 * PT_ERR_PARSE, and an accepted array must be self-consistent. */
#include <stdlib.h>
#include <partime/npy.h>
#include "fuzz.h"

void pt_fuzz_npy(const uint8_t *data, size_t size) {
  pt_npy a;
  pt_error err;
  pt_status st = pt_npy_parse(data, size, "fuzz.npy", &a, &err);
  if (st != PT_OK) {
    if (st != PT_ERR_PARSE && st != PT_ERR_NOMEM) abort();
    return;
  }
  int64_t numel = 1;
  for (int i = 0; i < a.ndim; i++) numel *= a.shape[i];
  /* Every element came from the input, so there cannot be more of them than bytes. */
  if (a.ndim < 0 || a.ndim > 8 || numel != a.numel || (size_t)a.numel > size || !a.data) abort();
  /* Touch every element so ASan sees any short allocation. */
  volatile unsigned char sink = 0;
  const unsigned char *p = a.data;
  size_t bytes = (size_t)a.numel * (a.dtype == PT_NPY_F32 ? 4 : 8);
  for (size_t i = 0; i < bytes; i++) sink ^= p[i];
  (void)sink;
  pt_npy_free(&a);
}

#ifndef PT_FUZZ_REPLAY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  pt_fuzz_npy(data, size);
  return 0;
}
#endif
