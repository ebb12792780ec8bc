/* nvcc compiles .cu files as CUDA C++; kernels.c is written to be both C (the simulated device,
 * built by gcc) and CUDA C++, so the GPU build takes the very same source through this file. */
#include "kernels.c"
