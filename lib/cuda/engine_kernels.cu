/* nvcc compiles the engine kernels from the same C source the simulated build uses. */
#include "engine_kernels.c"
