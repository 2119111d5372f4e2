/* One error space for trellis: 0 is success, negative values are errors. */
#ifndef TRELLIS_ERROR_H
#define TRELLIS_ERROR_H

/*
 * trellis's own error codes live below -30000 so they never collide with libuv's
 * UV_E* codes (negated errno values), which pass through unchanged.
 */
#define TR_ERRNO_MAP(X)                                                                            \
    X(CONFIG, -30001, "invalid configuration")                                                     \
    X(PARSE, -30002, "malformed input")                                                            \
    X(TOOLARGE, -30003, "input exceeds a limit")                                                   \
    X(CONNECT_TIMEOUT, -30004, "connect timed out")                                                \
    X(RESPONSE_TIMEOUT, -30005, "response timed out")                                              \
    X(BAD_RESPONSE, -30006, "malformed response from peer")                                        \
    X(CLOSED, -30007, "connection closed by peer before the response completed")                   \
    X(NOTFOUND, -30008, "not found")                                                               \
    X(EXISTS, -30009, "already exists")                                                            \
    X(BUSY, -30010, "resource busy or limit reached")                                              \
    X(CANCELED, -30011, "operation canceled")                                                      \
    X(UNSUPPORTED, -30012, "not supported")                                                        \
    X(STATE, -30013, "operation not valid in the current state")                                   \
    X(IO, -30014, "input/output error")                                                            \
    X(CIRCUIT_OPEN, -30015, "circuit breaker open")                                                \
    X(CONFLICT, -30016, "a concurrent change came first")

enum tr_errno {
#define TR_ERR_ENUM(name, code, msg) TR_E##name = (code),
    TR_ERRNO_MAP(TR_ERR_ENUM)
#undef TR_ERR_ENUM
};

/*
 * Human-readable message for any trellis or libuv error code (never NULL). For a code
 * neither knows, the text lives in a per-thread buffer until the thread's next call.
 */
const char *tr_strerror(int err);

/* Symbolic name ("TR_ECONFIG", "ECONNREFUSED") for any code; same lifetime rule. */
const char *tr_err_name(int err);

#endif
