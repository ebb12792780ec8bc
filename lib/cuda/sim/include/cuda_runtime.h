/* CUDA runtime API, the subset libpartime's CUDA backend calls, simulated on the CPU (cuda/sim).
 *
 * Names, signatures and enum values match the real <cuda_runtime.h> so the same host code builds
 * against either. Device memory is host memory; each stream is a worker thread that runs its
 * queue in FIFO order. The NULL (legacy default) stream is synchronous here: work on it first
 * waits for everything already queued on the blocking (not cudaStreamNonBlocking) streams of its
 * device, then runs in the calling thread. cudaMemcpy and cudaMemset are NULL-stream work.
 * cudaFree (cudaFreeHost) first waits for all work queued on the device (on every device), as the
 * real calls synchronize. cudaStreamDestroy waits for the stream's queue to drain.
 *
 * Stream capture. Between cudaStreamBeginCapture and cudaStreamEndCapture, work enqueued on the
 * stream (copies, memsets, kernels, cuBLAS and cuDNN calls bound to it, host functions) is kept in
 * the graph instead of running, with its arguments as they were at the call; each
 * cudaGraphLaunch of an instantiated graph enqueues all of it as one piece of work, ordered behind
 * the previous launch of the same graph. Only single-stream captures are simulated: an event
 * recorded in a capture may be waited on by the capturing stream itself, while a wait by another
 * stream (which would fork that stream into the capture) returns cudaErrorNotSupported. NCCL calls
 * cannot be captured here. What the real runtime refuses during capture is refused alike, and
 * invalidates the capture (cudaStreamEndCapture then returns cudaErrorStreamCaptureInvalidated
 * and no graph):
 *   - synchronizing or querying the capturing stream, or an event recorded in a capture
 *     (cudaErrorStreamCaptureUnsupported, cudaErrorCapturedEvent);
 *   - waiting on an event recorded outside the capture (cudaErrorStreamCaptureIsolation) or in
 *     another one (cudaErrorStreamCaptureMerge);
 *   - NULL-stream work on a device with a capturing blocking stream
 *     (cudaErrorStreamCaptureImplicit);
 *   - the potentially unsafe calls cudaMalloc, cudaMallocHost, cudaFree, cudaFreeHost, cudaMemcpy,
 *     cudaMemset and cudaDeviceSynchronize, from a thread that the capture modes prohibit from
 *     them (cudaErrorStreamCaptureUnsupported): the thread that began a capture not in
 *     cudaStreamCaptureModeRelaxed, and, while its own mode (cudaThreadExchangeStreamCaptureMode)
 *     is Global, any thread during a Global capture. cudaDeviceSynchronize is refused during any
 *     capture on the device. */
#ifndef PT_SIM_CUDA_RUNTIME_H
#define PT_SIM_CUDA_RUNTIME_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CUDART_VERSION 12000

/* Values as in the real driver_types.h, so printed codes mean the same thing. */
typedef enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorInvalidMemcpyDirection = 21,
  cudaErrorInsufficientDriver = 35,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorIllegalState = 401,
  cudaErrorNotReady = 600,
  cudaErrorIllegalAddress = 700,
  cudaErrorPeerAccessAlreadyEnabled = 704,
  cudaErrorPeerAccessNotEnabled = 705,
  cudaErrorLaunchFailure = 719,
  cudaErrorNotSupported = 801,
  cudaErrorStreamCaptureUnsupported = 900,
  cudaErrorStreamCaptureInvalidated = 901,
  cudaErrorStreamCaptureMerge = 902,
  cudaErrorStreamCaptureIsolation = 905,
  cudaErrorStreamCaptureImplicit = 906,
  cudaErrorCapturedEvent = 907,
  cudaErrorStreamCaptureWrongThread = 908,
  cudaErrorUnknown = 999
} cudaError_t;

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};

enum cudaStreamCaptureStatus {
  cudaStreamCaptureStatusNone = 0,
  cudaStreamCaptureStatusActive = 1,
  cudaStreamCaptureStatusInvalidated = 2
};

enum cudaStreamCaptureMode {
  cudaStreamCaptureModeGlobal = 0,
  cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2
};

/* Accepted by cudaGraphInstantiate; none changes anything here. */
enum cudaGraphInstantiateFlags {
  cudaGraphInstantiateFlagAutoFreeOnLaunch = 1,
  cudaGraphInstantiateFlagUpload = 2,
  cudaGraphInstantiateFlagDeviceLaunch = 4,
  cudaGraphInstantiateFlagUseNodePriority = 8
};

typedef struct CUstream_st *cudaStream_t;
typedef struct CUevent_st *cudaEvent_t;
typedef struct CUgraph_st *cudaGraph_t;
typedef struct CUgraphExec_st *cudaGraphExec_t;
typedef void (*cudaHostFn_t)(void *userData);

#define cudaHostAllocDefault 0x00
#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01
#define cudaEventDefault 0x00
#define cudaEventDisableTiming 0x02

const char *cudaGetErrorString(cudaError_t error);
const char *cudaGetErrorName(cudaError_t error);
cudaError_t cudaGetLastError(void);
cudaError_t cudaDriverGetVersion(int *driverVersion);
cudaError_t cudaRuntimeGetVersion(int *runtimeVersion);

/* Device count: env PARTIME_SIM_DEVICES (default 2), read once. The current device is per host
 * thread. */
cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaDeviceCanAccessPeer(int *canAccessPeer, int device, int peerDevice);
cudaError_t cudaDeviceEnablePeerAccess(int peerDevice, unsigned int flags);

/* Fresh device memory is filled with 0xff bytes (NaN as float): reading what nobody wrote shows. */
cudaError_t cudaMalloc(void **devPtr, size_t size);
cudaError_t cudaFree(void *devPtr);
cudaError_t cudaMallocHost(void **ptr, size_t size);
cudaError_t cudaFreeHost(void *ptr);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind,
                            cudaStream_t stream);
cudaError_t cudaMemcpyPeerAsync(void *dst, int dstDevice, const void *src, int srcDevice,
                                size_t count, cudaStream_t stream);
cudaError_t cudaMemset(void *devPtr, int value, size_t count);
cudaError_t cudaMemsetAsync(void *devPtr, int value, size_t count, cudaStream_t stream);

cudaError_t cudaStreamCreate(cudaStream_t *pStream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *pStream, unsigned int flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags);
cudaError_t cudaStreamQuery(cudaStream_t stream);
cudaError_t cudaLaunchHostFunc(cudaStream_t stream, cudaHostFn_t fn, void *userData);

cudaError_t cudaEventCreate(cudaEvent_t *event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream);
cudaError_t cudaEventQuery(cudaEvent_t event);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventDestroy(cudaEvent_t event);

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, enum cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *pGraph);
cudaError_t cudaStreamIsCapturing(cudaStream_t stream,
                                  enum cudaStreamCaptureStatus *pCaptureStatus);
cudaError_t cudaThreadExchangeStreamCaptureMode(enum cudaStreamCaptureMode *mode);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *pGraphExec, cudaGraph_t graph,
                                 unsigned long long flags);
cudaError_t cudaGraphLaunch(cudaGraphExec_t graphExec, cudaStream_t stream);
/* An executable graph destroyed while launches of it are queued is freed once they have run. */
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t graphExec);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);

#ifdef __cplusplus
}
#endif

#endif
