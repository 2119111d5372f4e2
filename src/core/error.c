/* The error table's messages and names, and libuv pass-through. */
#include "trellis/error.h"

#include <uv.h>

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
        return uv_strerror(err);
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
        return uv_err_name(err);
    }
}
