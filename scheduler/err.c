#include "calpost/err.h"

#include <errno.h>
#include <string.h>

const char *cp_strerror(int err) {
  switch (err) {
#define CP__ERR_MSG(name, msg)                                                                     \
  case CP_E##name:                                                                                 \
    return msg;
    CP_ERRNO_MAP(CP__ERR_MSG)
#undef CP__ERR_MSG
    default:
      break;
  }
  if (err < 0 && err > -CP__EBASE)
    return strerror(-err);
  return "unknown error";
}

const char *cp_err_name(int err) {
  switch (err) {
#define CP__ERR_NAME(name, msg)                                                                    \
  case CP_E##name:                                                                                 \
    return "CP_E" #name;
    CP_ERRNO_MAP(CP__ERR_NAME)
#undef CP__ERR_NAME
    default:
      break;
  }
  if (err < 0 && err > -CP__EBASE) {
    const char *n = strerrorname_np(-err);
    return n ? n : "EUNKNOWN";
  }
  return "EUNKNOWN";
}
