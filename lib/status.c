/* Status names and the formatting of error messages. */
#include <stdio.h>
#include <string.h>
#include <partime/status.h>

const char *pt_status_name(pt_status s) {
  switch (s) {
  case PT_OK: return "ok";
  case PT_AGAIN: return "no result yet";
  case PT_ERR_IO: return "i/o error";
  case PT_ERR_PARSE: return "parse error";
  case PT_ERR_UNSUPPORTED: return "unsupported";
  case PT_ERR_SHAPE: return "shape mismatch";
  case PT_ERR_INVALID: return "invalid argument";
  case PT_ERR_NOMEM: return "out of memory";
  case PT_ERR_NONFINITE: return "non-finite value";
  case PT_ERR_DEVICE: return "device error";
  case PT_ERR_STATE: return "wrong state";
  }
  return "unknown status";
}

pt_status pt_error_setv(pt_error *err, pt_status code, const char *fmt, va_list ap) {
  if (err) {
    err->code = code;
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
  }
  return code;
}

pt_status pt_error_set(pt_error *err, pt_status code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  pt_error_setv(err, code, fmt, ap);
  va_end(ap);
  return code;
}

pt_status pt_error_prefix(pt_error *err, const char *fmt, ...) {
  if (!err) return PT_ERR_INVALID;
  char prefix[PT_ERROR_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  /* err->msg becomes "prefix: old", cut to fit */
  size_t np = strlen(prefix), no = strlen(err->msg), cap = sizeof err->msg - 1;
  if (np + 2 > cap) np = cap - 2;
  size_t keep = no < cap - np - 2 ? no : cap - np - 2;
  memmove(err->msg + np + 2, err->msg, keep);
  memcpy(err->msg, prefix, np);
  err->msg[np] = ':';
  err->msg[np + 1] = ' ';
  err->msg[np + 2 + keep] = '\0';
  return err->code;
}

void pt_error_clear(pt_error *err) {
  if (err) {
    err->code = PT_OK;
    err->msg[0] = '\0';
  }
}
