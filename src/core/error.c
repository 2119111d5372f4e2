/* The error table's messages and names, and libuv pass-through. */
#include "trellis/error.h"

#include <uv.h>

/*
 * uv_strerror/uv_err_name allocate a fresh string for codes libuv does not know, which
 * would leak on every call; the _r forms write into a per-thread buffer instead.
 */
static __thread char unknown_msg[64];
static __thread char unknown_name[32];

const char *tr_strerror(int err)
{
    switch (err) {
    case 0:
        return "success";
#define TR_ERR_MSG(name, code, msg)                                                                \
    case code:                                                                                     \
        return msg;
        TR_ERRNO_MAP(TR_ERR_MSG)
#undef TR_ERR_MSG
    default:
        return uv_strerror_r(err, unknown_msg, sizeof(unknown_msg));
    }
}

const char *tr_err_name(int err)
{
    switch (err) {
    case 0:
        return "OK";
#define TR_ERR_NAME(name, code, msg)                                                               \
    case code:                                                                                     \
        return "TR_E" #name;
        TR_ERRNO_MAP(TR_ERR_NAME)
#undef TR_ERR_NAME
    default:
        return uv_err_name_r(err, unknown_name, sizeof(unknown_name));
    }
}
