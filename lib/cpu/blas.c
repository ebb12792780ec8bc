/* BLAS set-up for the CPU backend.
 *
 * Parallelism in libpartime comes from pipeline stages, one worker per core; a BLAS that spawns
 * its own threads inside every stage would oversubscribe the cores and make stage timings depend on
 * each other. So the library runs OpenBLAS single-threaded. The setting is process-wide and belongs
 * to OpenBLAS (not to this library), and setting it again is harmless. */
#include <cblas.h>
#include "ops.h"

void pt_blas_init(void) {
  openblas_set_num_threads(1);
}
