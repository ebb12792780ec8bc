/* What every test of the cuda suite does first (include after pt_test.h). */
#ifndef PT_CUDA_TEST_H
#define PT_CUDA_TEST_H

#include <stdio.h>
#include <string.h>
#include "cuda/exec.h"

/* -1 when cuda:0 can run the test. Otherwise the exit status: on the real runtime 77 (skipped) once
 * the error names the device and the cause, else 1; on the simulated devices, which must be there,
 * always 1 (a failed check). */
static inline int pt_cuda_test_gate(void) {
  pt_error err;
  pt_error_clear(&err);
  if (!pt_cuda_check_device(0, &err)) return -1;
#ifdef PT_CUDA_SIM
  CHECK(0, "the simulated devices are missing: %s", err.msg);
  printf("%d passed, %d failed\n", pt_test_passed, pt_test_failed);
  return 1;
#else
  printf("skipped: %s\n", err.msg);
  return strstr(err.msg, "cuda:0") && (strstr(err.msg, "no CUDA GPU") || strstr(err.msg, "driver"))
             ? 77
             : 1;
#endif
}

#endif
