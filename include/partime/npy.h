/* Reading and writing NumPy .npy files (format versions 1.0-3.0, little-endian, C order).
 *
 * The tool streams frames from .npy files and writes outputs to them. Arrays are float32 or
 * int64; a reader given an unexpected dtype, Fortran order, a header that lies about the data
 * size, or a truncated file returns PT_ERR_PARSE with a message naming the file. */
#ifndef PARTIME_NPY_H
#define PARTIME_NPY_H

#include <stddef.h>
#include <stdint.h>
#include <partime/status.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum pt_npy_dtype { PT_NPY_F32, PT_NPY_I64 } pt_npy_dtype;

typedef struct pt_npy {
  pt_npy_dtype dtype;
  int ndim;
  int64_t shape[8];
  int64_t numel;
  void *data; /* numel elements of dtype; malloc'ed */
} pt_npy;

/* Parses an .npy image in memory (`name` is used in messages). int32 and float64 arrays are
 * converted to int64 and float32. */
pt_status pt_npy_parse(const void *buf, size_t size, const char *name, pt_npy *out, pt_error *err);
pt_status pt_npy_load(const char *path, pt_npy *out, pt_error *err);
/* Writes atomically (temporary file + rename). */
pt_status pt_npy_save(const char *path, pt_npy_dtype dtype, int ndim, const int64_t *shape,
                      const void *data, pt_error *err);
void pt_npy_free(pt_npy *a);

#ifdef __cplusplus
}
#endif
#endif
