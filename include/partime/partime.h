/* libpartime: neural networks run one stage per device as a pipeline over time, learning on every
 * frame. The umbrella header. */
#ifndef PARTIME_H
#define PARTIME_H

#include <partime/status.h>
#include <partime/model.h>
#include <partime/stream.h>
#include <partime/npy.h>

#define PARTIME_VERSION "0.1.0"

#endif
