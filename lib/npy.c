/* NumPy .npy files: a strict reader for format versions 1.0-3.0 and an atomic writer of 1.0.
 *
 * The reader takes its input from anywhere (a user's file, a fuzzer), so it trusts nothing: the
 * header dict is parsed by a small recursive-descent parser that accepts only the three keys numpy
 * writes, every integer and every product of dimensions is checked for overflow, and the data size
 * the header promises must equal what the file holds before anything is allocated. Accepted dtypes
 * are little-endian '<f4' and '<f8' (read as float32), '<i4' and '<i8' (read as int64), and '|u1'
 * (read as float32 with values 0..255, the pixels of a raw video frame). Elements are decoded byte
 * by byte, so neither the host's byte order nor the data's alignment matters.
 *
 * The writer always produces version 1.0 in C order with the header padded to 64 bytes, and writes
 * through a temporary file in the target's directory that is flushed, synced and renamed over the
 * target: a reader sees either the old file or the whole new one. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <partime/npy.h>

#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAGIC_LEN 6
#define NPY_MAX_DIMS 8

typedef enum npy_src_type { SRC_F4, SRC_F8, SRC_I4, SRC_I8, SRC_U1 } npy_src_type;

typedef struct npy_src_dtype {
  const char *descr;
  npy_src_type type;
  size_t itemsize;
  pt_npy_dtype dtype;
} npy_src_dtype;

static const npy_src_dtype npy_dtypes[] = {
    {"<f4", SRC_F4, 4, PT_NPY_F32}, {"<f8", SRC_F8, 8, PT_NPY_F32}, {"<i4", SRC_I4, 4, PT_NPY_I64},
    {"<i8", SRC_I8, 8, PT_NPY_I64}, {"|u1", SRC_U1, 1, PT_NPY_F32},
};

/* Parser state over the header text; `end` is one past its last byte. */
typedef struct npy_hdr {
  const char *p, *end;
  const char *name;
  pt_error *err;
} npy_hdr;

static pt_status hdr_fail(npy_hdr *h, const char *what) {
  return pt_error_set(h->err, PT_ERR_PARSE, "%s: bad .npy header: %s", h->name, what);
}

static void hdr_skip_ws(npy_hdr *h) {
  while (h->p < h->end && (*h->p == ' ' || *h->p == '\t' || *h->p == '\n' || *h->p == '\r')) h->p++;
}

static int hdr_accept(npy_hdr *h, char c) {
  hdr_skip_ws(h);
  if (h->p < h->end && *h->p == c) {
    h->p++;
    return 1;
  }
  return 0;
}

/* A Python string literal in single or double quotes without escapes (numpy never writes any);
 * copied into buf, which must hold it. */
static pt_status hdr_string(npy_hdr *h, char *buf, size_t n) {
  hdr_skip_ws(h);
  if (h->p >= h->end || (*h->p != '\'' && *h->p != '"')) return hdr_fail(h, "expected a string");
  char q = *h->p++;
  size_t len = 0;
  while (h->p < h->end && *h->p != q) {
    if (*h->p == '\\' || *h->p == '\n') return hdr_fail(h, "unsupported character in a string");
    if (len + 1 >= n) return hdr_fail(h, "string too long");
    buf[len++] = *h->p++;
  }
  if (h->p >= h->end) return hdr_fail(h, "unterminated string");
  h->p++;
  buf[len] = '\0';
  return PT_OK;
}

static pt_status hdr_bool(npy_hdr *h, int *out) {
  hdr_skip_ws(h);
  size_t left = (size_t)(h->end - h->p);
  if (left >= 4 && memcmp(h->p, "True", 4) == 0) {
    h->p += 4;
    *out = 1;
  } else if (left >= 5 && memcmp(h->p, "False", 5) == 0) {
    h->p += 5;
    *out = 0;
  } else {
    return hdr_fail(h, "fortran_order must be True or False");
  }
  return PT_OK;
}

/* A non-negative decimal integer that fits in int64 (Python 2's trailing 'L' is accepted). */
static pt_status hdr_dim(npy_hdr *h, int64_t *out) {
  hdr_skip_ws(h);
  if (h->p >= h->end || *h->p < '0' || *h->p > '9') return hdr_fail(h, "expected a dimension");
  int64_t v = 0;
  while (h->p < h->end && *h->p >= '0' && *h->p <= '9') {
    int digit = *h->p - '0';
    if (v > (INT64_MAX - digit) / 10) return hdr_fail(h, "dimension too large");
    v = v * 10 + digit;
    h->p++;
  }
  if (h->p < h->end && *h->p == 'L') h->p++;
  *out = v;
  return PT_OK;
}

/* "()", "(n,)", "(n, m)", "(n, m,)". */
static pt_status hdr_shape(npy_hdr *h, int *ndim, int64_t *shape) {
  if (!hdr_accept(h, '(')) return hdr_fail(h, "shape must be a tuple");
  *ndim = 0;
  if (hdr_accept(h, ')')) return PT_OK;
  for (;;) {
    if (*ndim >= NPY_MAX_DIMS) return hdr_fail(h, "too many dimensions (at most 8)");
    pt_status st = hdr_dim(h, &shape[*ndim]);
    if (st != PT_OK) return st;
    (*ndim)++;
    if (hdr_accept(h, ')')) {
      /* "(n)" is an integer in parentheses, not a tuple: numpy never writes it. */
      if (*ndim == 1) return hdr_fail(h, "a one-element shape needs a trailing comma");
      return PT_OK;
    }
    if (!hdr_accept(h, ',')) return hdr_fail(h, "expected ',' or ')' in shape");
    if (hdr_accept(h, ')')) return PT_OK;
  }
}

static pt_status hdr_parse(npy_hdr *h, const npy_src_dtype **dtype, int *ndim, int64_t *shape) {
  enum { HAVE_DESCR = 1, HAVE_ORDER = 2, HAVE_SHAPE = 4 };
  unsigned have = 0;
  char key[32], descr[16];
  int fortran = 0;
  pt_status st;

  if (!hdr_accept(h, '{')) return hdr_fail(h, "expected a dict");
  while (!hdr_accept(h, '}')) {
    if ((st = hdr_string(h, key, sizeof key)) != PT_OK) return st;
    if (!hdr_accept(h, ':')) return hdr_fail(h, "expected ':' after a key");
    unsigned bit;
    if (strcmp(key, "descr") == 0) {
      bit = HAVE_DESCR;
      st = hdr_string(h, descr, sizeof descr);
    } else if (strcmp(key, "fortran_order") == 0) {
      bit = HAVE_ORDER;
      st = hdr_bool(h, &fortran);
    } else if (strcmp(key, "shape") == 0) {
      bit = HAVE_SHAPE;
      st = hdr_shape(h, ndim, shape);
    } else {
      return hdr_fail(h, "unknown key");
    }
    if (st != PT_OK) return st;
    if (have & bit) return hdr_fail(h, "duplicate key");
    have |= bit;
    /* Items are separated by commas; a trailing comma before '}' is allowed. */
    if (!hdr_accept(h, ',')) {
      if (!hdr_accept(h, '}')) return hdr_fail(h, "expected ',' or '}'");
      break;
    }
  }
  hdr_skip_ws(h);
  if (h->p != h->end) return hdr_fail(h, "trailing bytes after the dict");
  if (have != (HAVE_DESCR | HAVE_ORDER | HAVE_SHAPE))
    return hdr_fail(h, "missing 'descr', 'fortran_order' or 'shape'");
  if (fortran)
    return pt_error_set(h->err, PT_ERR_PARSE,
                        "%s: Fortran-order arrays are not supported (save in C order)", h->name);
  *dtype = NULL;
  for (size_t i = 0; i < sizeof npy_dtypes / sizeof npy_dtypes[0]; i++)
    if (strcmp(descr, npy_dtypes[i].descr) == 0) *dtype = &npy_dtypes[i];
  if (!*dtype)
    return pt_error_set(h->err, PT_ERR_PARSE,
                        "%s: unsupported dtype '%s' (expected <f4, <f8, <i4, <i8 or |u1)", h->name,
                        descr);
  return PT_OK;
}

static uint64_t load_le(const unsigned char *p, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
  return v;
}

static void store_le(unsigned char *p, uint64_t v, size_t n) {
  for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void decode(const npy_src_dtype *dt, const unsigned char *src, int64_t n, void *dst) {
  float *f = dst;
  int64_t *q = dst;
  for (int64_t i = 0; i < n; i++, src += dt->itemsize) {
    switch (dt->type) {
    case SRC_F4: {
      uint32_t u = (uint32_t)load_le(src, 4);
      memcpy(&f[i], &u, 4);
      break;
    }
    case SRC_F8: {
      uint64_t u = load_le(src, 8);
      double d;
      memcpy(&d, &u, 8);
      f[i] = (float)d;
      break;
    }
    case SRC_I4:
      q[i] = (int32_t)(uint32_t)load_le(src, 4);
      break;
    case SRC_I8:
      q[i] = (int64_t)load_le(src, 8);
      break;
    case SRC_U1:
      f[i] = (float)src[0];
      break;
    }
  }
}

/* numel of a shape, or -1 when it or numel * itemsize overflows. */
static int64_t checked_numel(int ndim, const int64_t *shape, size_t itemsize) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) return -1;
    if (shape[i] != 0 && n > INT64_MAX / shape[i]) return -1;
    n *= shape[i];
  }
  if (n > 0 && (uint64_t)n > SIZE_MAX / itemsize) return -1;
  return n;
}

pt_status pt_npy_parse(const void *buf, size_t size, const char *name, pt_npy *out, pt_error *err) {
  const unsigned char *b = buf;
  if (!name) name = "<memory>";
  if (!out || (!buf && size)) return pt_error_set(err, PT_ERR_INVALID, "%s: no buffer", name);
  memset(out, 0, sizeof *out);

  if (size < NPY_MAGIC_LEN + 2 || memcmp(b, NPY_MAGIC, NPY_MAGIC_LEN) != 0)
    return pt_error_set(err, PT_ERR_PARSE, "%s: not an .npy file (bad magic)", name);
  int major = b[6];
  size_t prefix, hlen;
  if (major == 1) {
    prefix = 10;
  } else if (major == 2 || major == 3) {
    prefix = 12;
  } else {
    return pt_error_set(err, PT_ERR_PARSE, "%s: unsupported .npy format version %d.%d", name, major,
                        b[7]);
  }
  if (size < prefix) return pt_error_set(err, PT_ERR_PARSE, "%s: truncated .npy header", name);
  hlen = (size_t)load_le(b + 8, prefix - 8);
  if (hlen > size - prefix)
    return pt_error_set(err, PT_ERR_PARSE, "%s: truncated .npy header (%zu bytes promised)", name,
                        hlen);

  npy_hdr h = {(const char *)b + prefix, (const char *)b + prefix + hlen, name, err};
  const npy_src_dtype *dt;
  int ndim = 0;
  int64_t shape[NPY_MAX_DIMS] = {0};
  pt_status st = hdr_parse(&h, &dt, &ndim, shape);
  if (st != PT_OK) return st;

  int64_t numel = checked_numel(ndim, shape, dt->itemsize);
  if (numel < 0)
    return pt_error_set(err, PT_ERR_PARSE, "%s: .npy shape is too large (overflow)", name);
  size_t data_off = prefix + hlen;
  size_t want = (size_t)numel * dt->itemsize;
  if (size - data_off != want)
    return pt_error_set(err, PT_ERR_PARSE,
                        "%s: .npy data size mismatch: header promises %zu bytes, file holds %zu%s",
                        name, want, size - data_off, size - data_off < want ? " (truncated)" : "");

  size_t out_item = dt->dtype == PT_NPY_F32 ? sizeof(float) : sizeof(int64_t);
  if (numel > 0 && (uint64_t)numel > SIZE_MAX / out_item)
    return pt_error_set(err, PT_ERR_NOMEM, "%s: array too large", name);
  void *data = malloc(numel > 0 ? (size_t)numel * out_item : 1);
  if (!data)
    return pt_error_set(err, PT_ERR_NOMEM, "%s: cannot allocate %lld elements", name,
                        (long long)numel);
  decode(dt, b + data_off, numel, data);

  out->dtype = dt->dtype;
  out->ndim = ndim;
  for (int i = 0; i < ndim; i++) out->shape[i] = shape[i];
  out->numel = numel;
  out->data = data;
  return PT_OK;
}

pt_status pt_npy_load(const char *path, pt_npy *out, pt_error *err) {
  if (!path || !out) return pt_error_set(err, PT_ERR_INVALID, "pt_npy_load: no path");
  memset(out, 0, sizeof *out);
  FILE *f = fopen(path, "rb");
  if (!f) return pt_error_set(err, PT_ERR_IO, "cannot open %s: %s", path, strerror(errno));
  struct stat sb;
  if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
    fclose(f);
    return pt_error_set(err, PT_ERR_IO, "%s: not a regular file", path);
  }
  if ((uintmax_t)sb.st_size > SIZE_MAX) {
    fclose(f);
    return pt_error_set(err, PT_ERR_NOMEM, "%s: file too large", path);
  }
  size_t size = (size_t)sb.st_size;
  unsigned char *buf = malloc(size ? size : 1);
  if (!buf) {
    fclose(f);
    return pt_error_set(err, PT_ERR_NOMEM, "%s: cannot allocate %zu bytes", path, size);
  }
  size_t got = fread(buf, 1, size, f);
  int rerr = ferror(f);
  fclose(f);
  if (rerr || got != size) {
    free(buf);
    return pt_error_set(err, PT_ERR_IO, "cannot read %s", path);
  }
  pt_status st = pt_npy_parse(buf, size, path, out, err);
  free(buf);
  return st;
}

static pt_status write_all(int fd, const void *p, size_t n) {
  const unsigned char *c = p;
  while (n) {
    ssize_t w = write(fd, c, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return PT_ERR_IO;
    }
    c += w;
    n -= (size_t)w;
  }
  return PT_OK;
}

/* Opens a fresh file beside `path`; the name mixes the pid, the clock and a stack address so
 * concurrent writers (threads or processes) do not collide, and O_EXCL makes sure of it. */
static int open_temp(const char *path, char *tmp, size_t n) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  uint64_t seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ (uint64_t)(uintptr_t)&ts;
  for (int attempt = 0; attempt < 100; attempt++) {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    int len = snprintf(tmp, n, "%s.tmp-%ld-%08llx", path, (long)getpid(),
                       (unsigned long long)(seed >> 32));
    if (len < 0 || (size_t)len >= n) {
      errno = ENAMETOOLONG;
      return -1;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0 || errno != EEXIST) return fd;
  }
  return -1;
}

/* Makes the rename itself durable; failure here is not worth failing the save for. */
static void sync_parent_dir(const char *path) {
  char dir[PATH_MAX];
  const char *slash = strrchr(path, '/');
  if (!slash) {
    strcpy(dir, ".");
  } else if (slash == path) {
    strcpy(dir, "/");
  } else {
    size_t len = (size_t)(slash - path);
    if (len >= sizeof dir) return;
    memcpy(dir, path, len);
    dir[len] = '\0';
  }
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    fsync(fd);
    close(fd);
  }
}

pt_status pt_npy_save(const char *path, pt_npy_dtype dtype, int ndim, const int64_t *shape,
                      const void *data, pt_error *err) {
  if (!path) return pt_error_set(err, PT_ERR_INVALID, "pt_npy_save: no path");
  if (dtype != PT_NPY_F32 && dtype != PT_NPY_I64)
    return pt_error_set(err, PT_ERR_INVALID, "%s: unknown dtype %d", path, (int)dtype);
  if (ndim < 0 || ndim > NPY_MAX_DIMS || (ndim > 0 && !shape))
    return pt_error_set(err, PT_ERR_INVALID, "%s: bad number of dimensions %d", path, ndim);
  size_t item = dtype == PT_NPY_F32 ? 4 : 8;
  int64_t numel = checked_numel(ndim, shape, item);
  if (numel < 0) return pt_error_set(err, PT_ERR_INVALID, "%s: bad or too large shape", path);
  if (numel > 0 && !data) return pt_error_set(err, PT_ERR_INVALID, "%s: no data", path);

  /* Header: magic, version 1.0, u16 length, dict padded with spaces and a final newline so the
   * data starts on a 64-byte boundary (what numpy writes, and what memory-mapping readers like). */
  char hdr[512];
  int len =
      snprintf(hdr + 10, sizeof hdr - 10, "{'descr': '%s', 'fortran_order': False, 'shape': (",
               dtype == PT_NPY_F32 ? "<f4" : "<i8");
  for (int i = 0; i < ndim; i++)
    len += snprintf(hdr + 10 + len, sizeof hdr - 10 - (size_t)len, "%lld,%s", (long long)shape[i],
                    i + 1 < ndim ? " " : "");
  if (ndim > 1) len--; /* numpy writes "(2, 3)" but "(2,)" */
  len += snprintf(hdr + 10 + len, sizeof hdr - 10 - (size_t)len, "), }");
  size_t total = 10 + (size_t)len + 1;
  size_t padded = (total + 63) / 64 * 64;
  memset(hdr + 10 + len, ' ', padded - total);
  hdr[padded - 1] = '\n';
  memcpy(hdr, NPY_MAGIC, NPY_MAGIC_LEN);
  hdr[6] = 1;
  hdr[7] = 0;
  store_le((unsigned char *)hdr + 8, padded - 10, 2);

  char tmp[PATH_MAX + 64];
  int fd = open_temp(path, tmp, sizeof tmp);
  if (fd < 0)
    return pt_error_set(err, PT_ERR_IO, "cannot create a temporary file for %s: %s", path,
                        strerror(errno));

  pt_status st = write_all(fd, hdr, padded);
  /* Encode in chunks so the writer is independent of the host's byte order. */
  unsigned char chunk[8192];
  const unsigned char *src = data;
  size_t per = sizeof chunk / item;
  for (int64_t done = 0; st == PT_OK && done < numel;) {
    size_t n = (size_t)(numel - done) < per ? (size_t)(numel - done) : per;
    for (size_t i = 0; i < n; i++) {
      uint64_t v;
      if (item == 4) {
        uint32_t u;
        memcpy(&u, src + (done + (int64_t)i) * 4, 4);
        v = u;
      } else {
        memcpy(&v, src + (done + (int64_t)i) * 8, 8);
      }
      store_le(chunk + i * item, v, item);
    }
    st = write_all(fd, chunk, n * item);
    done += (int64_t)n;
  }
  int saved_errno = errno;
  if (st == PT_OK && fsync(fd) != 0) {
    st = PT_ERR_IO;
    saved_errno = errno;
  }
  if (close(fd) != 0 && st == PT_OK) {
    st = PT_ERR_IO;
    saved_errno = errno;
  }
  if (st == PT_OK && rename(tmp, path) != 0) {
    st = PT_ERR_IO;
    saved_errno = errno;
  }
  if (st != PT_OK) {
    unlink(tmp);
    return pt_error_set(err, PT_ERR_IO, "cannot write %s: %s", path, strerror(saved_errno));
  }
  sync_parent_dir(path);
  return PT_OK;
}

void pt_npy_free(pt_npy *a) {
  if (!a) return;
  free(a->data);
  memset(a, 0, sizeof *a);
}
