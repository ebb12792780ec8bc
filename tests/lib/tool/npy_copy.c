/* Reads an .npy file with pt_npy_load and writes it back with pt_npy_save: the C half of the
 * numpy interoperability test (npy_interop.py checks both files with numpy). */
#include <stdio.h>
#include <partime/npy.h>

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: npy_copy IN.npy OUT.npy\n");
    return 2;
  }
  pt_npy a;
  pt_error err;
  if (pt_npy_load(argv[1], &a, &err) != PT_OK ||
      pt_npy_save(argv[2], a.dtype, a.ndim, a.shape, a.data, &err) != PT_OK) {
    fprintf(stderr, "npy_copy: %s\n", err.msg);
    return 1;
  }
  pt_npy_free(&a);
  return 0;
}
