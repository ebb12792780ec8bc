/* Status codes and error messages of libpartime.
 *
 * Every fallible call returns a pt_status and, when given a pt_error, fills it with a message that
 * names the file, node and op involved. The library never exits or aborts on anything a caller can
 * cause. There is no global "last error": each call reports into the pt_error it was handed, and
 * each stream keeps the message of its own last error. */
#ifndef PARTIME_STATUS_H
#define PARTIME_STATUS_H

#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum pt_status {
  PT_OK = 0,
  PT_AGAIN,           /* not an error: no result ready yet (pipeline filling), try again later */
  PT_ERR_IO,          /* a file could not be opened, read or written */
  PT_ERR_PARSE,       /* a file is not what it claims to be (corrupt, truncated, wrong magic) */
  PT_ERR_UNSUPPORTED, /* a valid model uses an op, attribute or data type we do not implement */
  PT_ERR_SHAPE,       /* shapes do not agree */
  PT_ERR_INVALID,     /* an argument or option is wrong */
  PT_ERR_NOMEM,       /* an allocation failed */
  PT_ERR_NONFINITE,   /* NaN or Inf in a loss or gradient */
  PT_ERR_DEVICE,      /* a device is unknown, missing or failed */
  PT_ERR_STATE,       /* the call is not allowed in the object's current state */
} pt_status;

#define PT_ERROR_MAX 512

typedef struct pt_error {
  pt_status code;
  char msg[PT_ERROR_MAX];
} pt_error;

/* A short lowercase name for a status ("ok", "io error", ...). */
const char *pt_status_name(pt_status s);

/* Records `code` and a printf-style message in `err` (which may be NULL) and returns `code`. */
pt_status pt_error_set(pt_error *err, pt_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
pt_status pt_error_setv(pt_error *err, pt_status code, const char *fmt, va_list ap);

/* Prepends "prefix: " to the message already in `err`, keeping its code; returns the code. */
pt_status pt_error_prefix(pt_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Resets `err` to PT_OK with an empty message. */
void pt_error_clear(pt_error *err);

/* Log levels passed to a pt_log_fn. */
typedef enum pt_log_level { PT_LOG_ERROR, PT_LOG_WARNING, PT_LOG_INFO, PT_LOG_DEBUG } pt_log_level;

/* Logging goes through a callback the caller installs (the plugin routes it to GST_DEBUG). */
typedef void (*pt_log_fn)(void *user, pt_log_level level, const char *msg);

#ifdef __cplusplus
}
#endif
#endif
