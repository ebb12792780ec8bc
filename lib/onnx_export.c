/* Writing a model back as ONNX: the kept ModelProto with every parameter's current values.
 *
 * The kept proto is never modified (saving may run while another thread reads the model): packing
 * goes through shallow copies of the ModelProto and GraphProto whose initializer list points at
 * patched copies of the parameter TensorProtos (raw little-endian floats, data type FLOAT) and at
 * the original ones for everything else.
 *
 * Saving is atomic: the bytes go to "PATH.tmp-XXXXXX" in the same directory, are flushed and
 * fsync'ed, then renamed over PATH; on any failure the temporary file is removed and PATH is left
 * as it was. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "onnx_internal.h"

static bool host_is_le(void) {
  const uint16_t one = 1;
  unsigned char b;
  memcpy(&b, &one, 1);
  return b == 1;
}

pt_status pt_model_serialize(const pt_model *m, void **data, size_t *size, pt_error *err) {
  if (!m || !data || !size) return pt_error_set(err, PT_ERR_INVALID, "serialize: no model");
  *data = NULL;
  *size = 0;
  const Onnx__ModelProto *mp = m->proto;
  if (!mp || !mp->graph)
    return pt_error_set(err, PT_ERR_STATE, "%s: the model has no ONNX graph to save", m->name);
  const Onnx__GraphProto *g = mp->graph;
  size_t n_init = g->n_initializer;
  pt_status st = PT_OK;
  Onnx__TensorProto **inits = calloc(n_init ? n_init : 1, sizeof *inits);
  Onnx__TensorProto *patched = calloc(n_init ? n_init : 1, sizeof *patched);
  float **swapped = calloc(n_init ? n_init : 1, sizeof *swapped);
  uint8_t *buf = NULL;
  if (!inits || !patched || !swapped) {
    st = pt_error_set(err, PT_ERR_NOMEM, "%s: out of memory", m->name);
    goto out;
  }
  for (size_t i = 0; i < n_init; i++) inits[i] = g->initializer[i];
  bool le = host_is_le();
  for (int v = 0; v < m->n_vals; v++) {
    const pt_value *val = &m->vals[v];
    if (val->kind != PT_VAL_PARAM || val->init_index < 0 || (size_t)val->init_index >= n_init)
      continue;
    size_t i = (size_t)val->init_index;
    Onnx__TensorProto *t = &patched[i];
    *t = *g->initializer[i];
    const float *src = val->data;
    if (!le) {
      swapped[i] = malloc(sizeof(float) * (size_t)(val->numel ? val->numel : 1));
      if (!swapped[i]) {
        st = pt_error_set(err, PT_ERR_NOMEM, "%s: out of memory", m->name);
        goto out;
      }
      for (int64_t k = 0; k < val->numel; k++) {
        uint8_t b[4], r[4];
        memcpy(b, &val->data[k], 4);
        r[0] = b[3], r[1] = b[2], r[2] = b[1], r[3] = b[0];
        memcpy(&swapped[i][k], r, 4);
      }
      src = swapped[i];
    }
    t->has_data_type = 1;
    t->data_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
    t->n_float_data = 0;
    t->float_data = NULL;
    t->has_raw_data = 1;
    t->raw_data.len = sizeof(float) * (size_t)val->numel;
    t->raw_data.data = (uint8_t *)src;
    inits[i] = t;
  }
  Onnx__GraphProto g2 = *g;
  g2.initializer = inits;
  Onnx__ModelProto mp2 = *mp;
  mp2.graph = &g2;
  size_t n = onnx__model_proto__get_packed_size(&mp2);
  buf = malloc(n ? n : 1);
  if (!buf) {
    st = pt_error_set(err, PT_ERR_NOMEM, "%s: out of memory (%zu bytes)", m->name, n);
    goto out;
  }
  size_t packed = onnx__model_proto__pack(&mp2, buf);
  if (packed != n) {
    st = pt_error_set(err, PT_ERR_INVALID, "%s: serialization produced %zu of %zu bytes", m->name,
                      packed, n);
    goto out;
  }
  *data = buf;
  *size = n;
  buf = NULL;
out:
  if (swapped)
    for (size_t i = 0; i < n_init; i++) free(swapped[i]);
  free(swapped);
  free(patched);
  free(inits);
  free(buf);
  return st;
}

static int write_all(int fd, const uint8_t *p, size_t n) {
  while (n > 0) {
    ssize_t k = write(fd, p, n);
    if (k < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += k;
    n -= (size_t)k;
  }
  return 0;
}

pt_status pt_model_save(const pt_model *m, const char *path, pt_error *err) {
  if (!m || !path || !path[0]) return pt_error_set(err, PT_ERR_INVALID, "save: no model or path");
  void *data;
  size_t size;
  pt_status st = pt_model_serialize(m, &data, &size, err);
  if (st != PT_OK) return st;
  size_t plen = strlen(path);
  char *tmp = malloc(plen + sizeof ".tmp-XXXXXX");
  if (!tmp) {
    free(data);
    return pt_error_set(err, PT_ERR_NOMEM, "%s: out of memory", path);
  }
  memcpy(tmp, path, plen);
  memcpy(tmp + plen, ".tmp-XXXXXX", sizeof ".tmp-XXXXXX");
  int fd = mkstemp(tmp);
  if (fd < 0) {
    st = pt_error_set(err, PT_ERR_IO, "%s: cannot create a temporary file: %s", path,
                      strerror(errno));
    free(tmp);
    free(data);
    return st;
  }
  /* mkstemp makes the file private; keep the mode of the file we replace, else rw-r--r-- */
  struct stat sb;
  fchmod(fd, stat(path, &sb) == 0 ? (sb.st_mode & 07777) : 0644);
  const char *what = NULL;
  int e = 0;
  if (write_all(fd, data, size) != 0)
    what = "write failed";
  else if (fsync(fd) != 0)
    what = "fsync failed";
  if (what) e = errno;
  if (close(fd) != 0 && !what) {
    what = "close failed";
    e = errno;
  }
  if (!what && rename(tmp, path) != 0) {
    what = "rename failed";
    e = errno;
  }
  if (what) {
    unlink(tmp);
    st = pt_error_set(err, PT_ERR_IO, "%s: %s: %s", path, what, strerror(e));
  } else {
    /* make the rename itself durable */
    char *dir = strdup(path);
    if (dir) {
      char *slash = strrchr(dir, '/');
      const char *d = slash ? (slash == dir ? "/" : (*slash = '\0', dir)) : ".";
      int dfd = open(d, O_RDONLY | O_DIRECTORY);
      if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
      }
      free(dir);
    }
  }
  free(tmp);
  free(data);
  return st;
}
