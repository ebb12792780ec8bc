/* The .npy reader and writer: round trips, the dtypes and format versions numpy writes, and every
 * way a file can be broken (each must give PT_ERR_PARSE naming the file, never a crash). */
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <partime/npy.h>
#include "pt_test.h"

/* Builds an .npy image with the given version and header text (padded to 16 bytes with spaces
 * and a newline unless `raw`) followed by `data`. Returns its size; the image is malloc'ed. */
static size_t make_npy(unsigned char **out, int major, const char *dict, int raw, const void *data,
                       size_t data_len) {
  size_t prefix = major == 1 ? 10 : 12;
  size_t dlen = strlen(dict);
  size_t hlen = raw ? dlen : (prefix + dlen + 1 + 15) / 16 * 16 - prefix;
  unsigned char *b = malloc(prefix + hlen + data_len + 1);
  memcpy(b, "\x93NUMPY", 6);
  b[6] = (unsigned char)major;
  b[7] = 0;
  for (size_t i = 8; i < prefix; i++) b[i] = (unsigned char)(hlen >> (8 * (i - 8)));
  memcpy(b + prefix, dict, dlen);
  if (!raw) {
    memset(b + prefix + dlen, ' ', hlen - dlen);
    b[prefix + hlen - 1] = '\n';
  }
  if (data_len) memcpy(b + prefix + hlen, data, data_len);
  *out = b;
  return prefix + hlen + data_len;
}

/* Parses a v1.0 image with header `dict` and `data_len` zero bytes; returns the status. */
static pt_status parse_dict(const char *dict, size_t data_len, pt_error *err) {
  unsigned char *zeros = calloc(1, data_len + 1);
  unsigned char *b;
  size_t n = make_npy(&b, 1, dict, 0, zeros, data_len);
  pt_npy a;
  pt_status st = pt_npy_parse(b, n, "case.npy", &a, err);
  if (st == PT_OK) pt_npy_free(&a);
  free(b);
  free(zeros);
  return st;
}

static int count_temp_files(const char *dir) {
  DIR *d = opendir(dir);
  int n = 0;
  struct dirent *e;
  while (d && (e = readdir(d)))
    if (strstr(e->d_name, ".tmp-")) n++;
  if (d) closedir(d);
  return n;
}

static void test_round_trips(const char *dir) {
  char path[1024];
  snprintf(path, sizeof path, "%s/rt.npy", dir);
  pt_error err;
  unsigned long long seed = 42;

  static const int64_t shapes[][8] = {
      {0}, {0}, {5}, {2, 3}, {1, 3, 4, 5}, {2, 1, 2, 1, 2, 1, 2, 3}, {3, 0, 2}};
  static const int ndims[] = {0, 1, 1, 2, 4, 8, 3};
  for (size_t c = 0; c < sizeof ndims / sizeof ndims[0]; c++) {
    int64_t numel = 1;
    for (int i = 0; i < ndims[c]; i++) numel *= shapes[c][i];
    float *f = malloc(sizeof(float) * (size_t)(numel + 1));
    int64_t *q = malloc(sizeof(int64_t) * (size_t)(numel + 1));
    for (int64_t i = 0; i < numel; i++) {
      f[i] = pt_test_uniform(&seed, -1e6f, 1e6f);
      q[i] = (int64_t)pt_test_rand_u64(&seed);
    }
    if (numel > 1) {
      f[0] = -0.0f;
      f[1] = INFINITY;
      q[0] = INT64_MIN;
      q[1] = -1;
    }
    for (int dt = 0; dt < 2; dt++) {
      pt_npy_dtype dtype = dt ? PT_NPY_I64 : PT_NPY_F32;
      const void *src = dt ? (const void *)q : (const void *)f;
      CHECK(pt_npy_save(path, dtype, ndims[c], shapes[c], src, &err) == PT_OK, "case %zu: %s", c,
            err.msg);
      pt_npy a;
      pt_status st = pt_npy_load(path, &a, &err);
      CHECK(st == PT_OK, "case %zu dtype %d: %s", c, dt, err.msg);
      if (st != PT_OK) continue;
      CHECK(a.dtype == dtype && a.ndim == ndims[c] && a.numel == numel, "case %zu: got ndim %d", c,
            a.ndim);
      int same_shape = a.ndim == ndims[c];
      for (int i = 0; same_shape && i < a.ndim; i++) same_shape = a.shape[i] == shapes[c][i];
      CHECK(same_shape, "case %zu: shape differs", c);
      CHECK(a.data != NULL, "case %zu: data is NULL", c);
      CHECK(memcmp(a.data, src, (size_t)numel * (dt ? 8 : 4)) == 0, "case %zu: data differs", c);
      pt_npy_free(&a);
      CHECK(a.data == NULL, "free clears the struct");
    }
    free(f);
    free(q);
  }

  /* The data starts on a 64-byte boundary, as numpy writes it. */
  int64_t shp[2] = {7, 11};
  float z[77] = {0};
  CHECK(pt_npy_save(path, PT_NPY_F32, 2, shp, z, &err) == PT_OK, "%s", err.msg);
  struct stat sb;
  CHECK(stat(path, &sb) == 0 && (sb.st_size - 77 * 4) % 64 == 0, "header padded to 64, size %lld",
        (long long)sb.st_size);
  FILE *fp = fopen(path, "rb");
  unsigned char head[128];
  size_t got = fp ? fread(head, 1, sizeof head, fp) : 0;
  if (fp) fclose(fp);
  CHECK(got >= 64 && memcmp(head, "\x93NUMPY\x01\x00", 8) == 0, "v1.0 magic");
  CHECK(got >= 64 &&
            memcmp(head + 10, "{'descr': '<f4', 'fortran_order': False, 'shape': (7, 11), }", 60) ==
                0,
        "numpy's own header text");
  CHECK(count_temp_files(dir) == 0, "no temporary file left behind");
}

static void test_save_errors(const char *dir) {
  pt_error err;
  char path[1024];
  float v = 1;
  snprintf(path, sizeof path, "%s/no/such/dir/x.npy", dir);
  CHECK(pt_npy_save(path, PT_NPY_F32, 0, NULL, &v, &err) == PT_ERR_IO, "missing dir");
  CHECK(strstr(err.msg, path) != NULL, "message names the file: %s", err.msg);

  /* A failed save leaves the old file whole. */
  snprintf(path, sizeof path, "%s/keep.npy", dir);
  int64_t shp[1] = {1};
  CHECK(pt_npy_save(path, PT_NPY_F32, 1, shp, &v, &err) == PT_OK, "%s", err.msg);
  int64_t bad[1] = {-3};
  CHECK(pt_npy_save(path, PT_NPY_F32, 1, bad, &v, &err) == PT_ERR_INVALID, "negative dim");
  int64_t huge[3] = {INT64_MAX / 2, 4, 4};
  CHECK(pt_npy_save(path, PT_NPY_F32, 3, huge, &v, &err) == PT_ERR_INVALID, "overflowing shape");
  CHECK(pt_npy_save(path, PT_NPY_F32, 9, shp, &v, &err) == PT_ERR_INVALID, "9 dims");
  CHECK(pt_npy_save(path, PT_NPY_F32, 1, shp, NULL, &err) == PT_ERR_INVALID, "no data");
  pt_npy a;
  CHECK(pt_npy_load(path, &a, &err) == PT_OK && a.numel == 1 && ((float *)a.data)[0] == 1.0f,
        "old file intact");
  pt_npy_free(&a);
  CHECK(count_temp_files(dir) == 0, "no temporary file left behind");

  snprintf(path, sizeof path, "%s/missing.npy", dir);
  CHECK(pt_npy_load(path, &a, &err) == PT_ERR_IO, "missing file");
  CHECK(strstr(err.msg, "missing.npy") != NULL, "message names the file: %s", err.msg);
  CHECK(pt_npy_load(dir, &a, &err) == PT_ERR_IO, "a directory is not an .npy file");
}

static void test_dtypes_and_versions(void) {
  pt_error err;
  pt_npy a;
  unsigned char *b;
  size_t n;

  double d[3] = {1.5, -2.25, 1e300};
  n = make_npy(&b, 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", 0, d, sizeof d);
  CHECK(pt_npy_parse(b, n, "f8.npy", &a, &err) == PT_OK, "%s", err.msg);
  CHECK(a.dtype == PT_NPY_F32 && a.numel == 3 && ((float *)a.data)[0] == 1.5f &&
            ((float *)a.data)[1] == -2.25f && isinf(((float *)a.data)[2]),
        "float64 converted to float32");
  pt_npy_free(&a);
  free(b);

  int32_t i4[4] = {7, -1, INT32_MIN, INT32_MAX};
  n = make_npy(&b, 2, "{\"shape\": (2, 2), \"fortran_order\": False, \"descr\": \"<i4\"}", 0, i4,
               sizeof i4);
  CHECK(pt_npy_parse(b, n, "i4.npy", &a, &err) == PT_OK, "v2.0, double quotes, any key order: %s",
        err.msg);
  CHECK(a.dtype == PT_NPY_I64 && a.ndim == 2 && ((int64_t *)a.data)[1] == -1 &&
            ((int64_t *)a.data)[2] == INT32_MIN && ((int64_t *)a.data)[3] == INT32_MAX,
        "int32 sign-extended to int64");
  pt_npy_free(&a);
  free(b);

  unsigned char u1[3] = {0, 128, 255};
  n = make_npy(&b, 3, "{'descr':'|u1','fortran_order':False,'shape':(1,3)}", 1, u1, sizeof u1);
  CHECK(pt_npy_parse(b, n, "u1.npy", &a, &err) == PT_OK, "v3.0, unpadded header: %s", err.msg);
  CHECK(a.dtype == PT_NPY_F32 && ((float *)a.data)[1] == 128.0f && ((float *)a.data)[2] == 255.0f,
        "uint8 read as float32");
  pt_npy_free(&a);
  free(b);

  /* Unaligned data (an odd header length) still decodes. */
  int64_t i8[2] = {123456789012345LL, -5};
  n = make_npy(&b, 1, "{'descr': '<i8', 'fortran_order': False, 'shape': (2,)} ", 1, i8, sizeof i8);
  CHECK(pt_npy_parse(b, n, "i8.npy", &a, &err) == PT_OK, "%s", err.msg);
  CHECK(a.numel == 2 && ((int64_t *)a.data)[0] == 123456789012345LL && ((int64_t *)a.data)[1] == -5,
        "unaligned int64");
  pt_npy_free(&a);
  free(b);

  CHECK(parse_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", 4, &err) == PT_OK,
        "0-d array: %s", err.msg);
  CHECK(parse_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 5), }", 0, &err) == PT_OK,
        "empty array: %s", err.msg);
  CHECK(parse_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 3L), }", 24, &err) ==
            PT_OK,
        "python 2 longs: %s", err.msg);
}

static void test_bad_files(void) {
  pt_error err;
  pt_npy a;
  unsigned char *b;
  float data[6] = {1, 2, 3, 4, 5, 6};
  size_t n = make_npy(&b, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 0, data,
                      sizeof data);

  /* Every truncation of a valid file fails cleanly. */
  int all_parse = 1;
  for (size_t len = 0; len < n; len++) {
    pt_status st = pt_npy_parse(b, len, "cut.npy", &a, &err);
    if (st != PT_ERR_PARSE || !strstr(err.msg, "cut.npy")) {
      all_parse = 0;
      fprintf(stderr, "truncated at %zu: status %d, %s\n", len, st, err.msg);
    }
    if (st == PT_OK) pt_npy_free(&a);
  }
  CHECK(all_parse, "every truncation gives PT_ERR_PARSE naming the file");
  CHECK(pt_npy_parse(b, n, "ok.npy", &a, &err) == PT_OK, "the untruncated file parses");
  pt_npy_free(&a);

  unsigned char *c = malloc(n + 4);
  memcpy(c, b, n);
  c[0] = 'X';
  CHECK(pt_npy_parse(c, n, "magic.npy", &a, &err) == PT_ERR_PARSE && strstr(err.msg, "magic"),
        "bad magic: %s", err.msg);
  memcpy(c, b, n);
  c[6] = 4;
  CHECK(pt_npy_parse(c, n, "ver.npy", &a, &err) == PT_ERR_PARSE && strstr(err.msg, "version"),
        "version 4: %s", err.msg);
  memcpy(c, b, n);
  c[8] = 0xff;
  c[9] = 0xff;
  CHECK(pt_npy_parse(c, n, "hlen.npy", &a, &err) == PT_ERR_PARSE, "header longer than the file");
  memcpy(c, b, n);
  memset(c + n, 0, 4);
  CHECK(pt_npy_parse(c, n + 4, "long.npy", &a, &err) == PT_ERR_PARSE && strstr(err.msg, "size"),
        "trailing data: %s", err.msg);
  free(c);
  free(b);

  CHECK(pt_npy_parse(NULL, 0, "empty.npy", &a, &err) == PT_ERR_PARSE, "empty buffer");

  static const struct {
    const char *dict;
    size_t data_len;
    const char *msg;
  } bad[] = {
      {"{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", 8, "Fortran"},
      {"{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", 8, "dtype '>f4'"},
      {"{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }", 4, "dtype"},
      {"{'descr': '<U4', 'fortran_order': False, 'shape': (2,), }", 32, "dtype"},
      {"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", 8, "string"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", 8, "size"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", 8, "size"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (0,), }", 4, "size"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4), }", 0,
       "overflow"},
      {"{'descr': '<i8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", 0,
       "overflow"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", 0,
       "too large"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", 0, "dimension"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1), }", 4, "dimensions"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2), }", 8, "comma"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': [2], }", 8, "tuple"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,,), }", 8, "dimension"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2 3), }", 8, "shape"},
      {"{'descr': '<f4', 'fortran_order': False, }", 0, "missing"},
      {"{'descr': '<f4', 'shape': (2,), }", 8, "missing"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", 8, "unknown key"},
      {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", 8, "duplicate"},
      {"{'descr': '<f4', 'fortran_order': 0, 'shape': (2,), }", 8, "True or False"},
      {"{'descr': '<f4' 'fortran_order': False, 'shape': (2,), }", 8, "expected"},
      {"{'descr' '<f4', 'fortran_order': False, 'shape': (2,), }", 8, "':'"},
      {"{'descr': '<f4, 'fortran_order': False, 'shape': (2,), }", 8, "header"},
      {"{'descr': '<f\\x34', 'fortran_order': False, 'shape': (2,), }", 8, "character"},
      {"{'descr': 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 'fortran_order': False}", 0, "long"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), } x", 8, "trailing"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), ", 8, "header"},
      {"'descr': '<f4', 'fortran_order': False, 'shape': (2,)", 8, "dict"},
      {"", 8, "dict"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    pt_status st = parse_dict(bad[i].dict, bad[i].data_len, &err);
    CHECK(st == PT_ERR_PARSE && strstr(err.msg, bad[i].msg) && strstr(err.msg, "case.npy"),
          "bad case %zu (%s): status %d, message '%s'", i, bad[i].dict, st, err.msg);
  }
}

/* Random corruption of a valid image: whatever happens, no crash and either OK or a parse error. */
static void test_random_corruption(void) {
  unsigned char *b;
  float data[12] = {0};
  size_t n = make_npy(&b, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }", 0, data,
                      sizeof data);
  unsigned char *c = malloc(n);
  unsigned long long seed = 7;
  int ok = 1;
  for (int iter = 0; iter < 20000; iter++) {
    memcpy(c, b, n);
    int flips = 1 + (int)(pt_test_rand_u64(&seed) % 4);
    for (int f = 0; f < flips; f++) {
      size_t pos = (size_t)(pt_test_rand_u64(&seed) % 80);
      c[pos] = (unsigned char)pt_test_rand_u64(&seed);
    }
    pt_npy a;
    pt_error err;
    pt_status st = pt_npy_parse(c, n, "fuzz.npy", &a, &err);
    if (st == PT_OK) {
      if (a.numel > (int64_t)n) ok = 0;
      pt_npy_free(&a);
    } else if (st != PT_ERR_PARSE) {
      ok = 0;
    }
  }
  CHECK(ok, "random corruption gives OK or PT_ERR_PARSE");
  free(c);
  free(b);
}

int main(int argc, char **argv) {
  char dir[] = "/tmp/pt-npy-XXXXXX";
  int have_dir = mkdtemp(dir) != NULL;
  REQUIRE(have_dir, "cannot create a temporary directory");
  (void)argc;
  (void)argv;
  test_round_trips(dir);
  test_save_errors(dir);
  test_dtypes_and_versions();
  test_bad_files();
  test_random_corruption();
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  PT_TEST_END();
}
