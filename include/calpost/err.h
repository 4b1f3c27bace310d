/* calpost error codes: 0 is success, negative values are failures.
 * System errors are passed on as -errno; calpost's own codes start at CP__EBASE. */
#ifndef CALPOST_ERR_H
#define CALPOST_ERR_H

#define CP__EBASE 10000

/* X(name, message) */
#define CP_ERRNO_MAP(X)                                                                            \
  X(INVAL, "invalid argument")                                                                     \
  X(NOMEM, "out of memory")                                                                        \
  X(PARSE, "cannot parse input")                                                                   \
  X(TOOBIG, "input too large")                                                                     \
  X(UTF8, "invalid UTF-8")                                                                         \
  X(TZ, "unknown time zone")                                                                       \
  X(CONFIG, "invalid configuration")                                                               \
  X(NOTFOUND, "not found")                                                                         \
  X(EXISTS, "already exists")                                                                      \
  X(LIMIT, "limit exceeded")                                                                       \
  X(PLAN, "plan has errors")                                                                       \
  X(DB, "state database error")                                                                    \
  X(ABI, "connector ABI mismatch")                                                                 \
  X(BUSY, "resource busy")

enum cp_errno {
  CP__EFIRST = -CP__EBASE,
#define CP__ERR_ENUM(name, msg) CP_E##name,
  CP_ERRNO_MAP(CP__ERR_ENUM)
#undef CP__ERR_ENUM
      CP__ELAST
};

/* Human-readable message for err (a CP_E* code or -errno). Never NULL; static storage. */
const char *cp_strerror(int err);
/* Symbolic name such as "CP_EPARSE" or "ENOENT". Never NULL; static storage. */
const char *cp_err_name(int err);

#endif
