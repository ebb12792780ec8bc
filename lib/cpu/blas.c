/* BLAS set-up for the CPU backend.
 *
 * Parallelism in libpartime comes from pipeline stages, one worker per core; a BLAS that spawns
 * its own threads inside every stage would oversubscribe the cores and make stage timings depend on
 * each other. So the library runs OpenBLAS single-threaded. The setting is process-wide and belongs
 * to OpenBLAS (not to this library), and setting it again is harmless.
 *
 * OpenBLAS picks its kernels by CPU model when it loads. A model newer than its release (Debian
 * 12's OpenBLAS 0.3.21 on Intel's Emerald Rapids, for one) gets its generic kernels, which use no
 * AVX and run several times slower; OPENBLAS_CORETYPE in the environment overrides the choice.
 * Only OpenBLAS can change it, and only as it loads, so the library reports it. */
#include <cblas.h>
#include <stddef.h>
#include <string.h>
#include "ops.h"

void pt_blas_init(void) {
  openblas_set_num_threads(1);
}

/* OpenBLAS's kernels that use no AVX: what it falls back to on a CPU model it does not know. The
 * names are those of a DYNAMIC_ARCH build (Debian's), the only kind that OPENBLAS_CORETYPE can
 * change; a build for one CPU reports its target in capitals and is left alone. */
static const char *const generic_cores[] = {"Prescott",  "Core2", "Penryn", "Dunnington",
                                            "Nehalem",   "Atom",  "Katmai", "Coppermine",
                                            "Northwood", "Banias"};

const char *pt_blas_fitting_core(void) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  /* OpenBLAS's SkylakeX kernels use AVX-512 F, VL and BW (not there on Knights Landing) */
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2")) return "Haswell";
#endif
  return NULL;
}

const char *pt_blas_slow_kernels(const char **better) {
  const char *fit = pt_blas_fitting_core();
  if (!fit) return NULL;
  const char *core = openblas_get_corename();
  if (!core) return NULL;
  for (size_t i = 0; i < sizeof generic_cores / sizeof generic_cores[0]; i++)
    if (strcmp(core, generic_cores[i]) == 0) {
      if (better) *better = fit;
      return core;
    }
  return NULL;
}
