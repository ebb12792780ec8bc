/* Entry points shared by the libFuzzer targets and the replay test: each takes one input and
 * feeds it to a parser; returning means the input was handled (accepted or refused cleanly). */
#ifndef PT_FUZZ_H
#define PT_FUZZ_H

#include <stddef.h>
#include <stdint.h>

void pt_fuzz_onnx(const uint8_t *data, size_t size);
void pt_fuzz_npy(const uint8_t *data, size_t size);

#endif
