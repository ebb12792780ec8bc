/* Test hooks into a stream (internal). */
#ifndef PT_STREAM_INTERNAL_H
#define PT_STREAM_INTERNAL_H

#include <partime/stream.h>

/* The gradient buffer of parameter value `value` in the stage that owns it (NULL if none). Its
 * contents are those of the last tick at which that stage trained. */
const float *pt_stream_param_grad(const pt_stream *s, int value);

#endif
