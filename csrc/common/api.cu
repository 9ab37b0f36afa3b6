// Status strings, the thread-local last error, build information.
#include <stdarg.h>
#include <stdio.h>

#include "launch.cuh"

namespace {
thread_local char g_last_error[512] = "";
}

namespace fk {
fk_status fail(fk_status status, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_last_error, sizeof(g_last_error), fmt, ap);
  va_end(ap);
  return status;
}
}  // namespace fk

extern "C" {

const char* fk_status_string(fk_status status) {
  switch (status) {
    case FK_SUCCESS: return "success";
    case FK_ERROR_INVALID_VALUE: return "invalid value";
    case FK_ERROR_UNSUPPORTED: return "unsupported by the kernels";
    case FK_ERROR_CUDA: return "CUDA runtime error";
    case FK_ERROR_WORKSPACE: return "workspace missing or too small";
  }
  return "unknown status";
}

const char* fk_last_error(void) { return g_last_error; }

const char* fk_build_info(void) {
#ifdef FK_BUILD_ARCHS
  return "factorkern CUDA kernels, targets: " FK_BUILD_ARCHS;
#else
  return "factorkern CUDA kernels";
#endif
}

}  // extern "C"
