/* HTTP/1.1 server: requests, responses and the listener a worker loop serves them on. */
#ifndef TRELLIS_HTTP_H
#define TRELLIS_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct tr_http_server_s tr_http_server_t;
typedef struct tr_http_req_s tr_http_req_t;

/* A header as received or to send; strings are NUL-terminated as well as counted. */
typedef struct tr_http_header_s {
    const char *name;
    const char *value;
    uint32_t name_len;
    uint32_t value_len;
} tr_http_header_t;

/* Called once per request when its headers are complete. Answer now or later. */
typedef void (*tr_http_handler_cb)(tr_http_req_t *req, void *data);
/* A piece of the request body; `data` is valid only during the call. */
typedef void (*tr_http_body_cb)(tr_http_req_t *req, const char *data, size_t len);
/* The request body is complete (called even when there was no body). */
typedef void (*tr_http_end_cb)(tr_http_req_t *req);
/*
 * The connection failed or was closed before the response finished. After this
 * returns the request is gone: stop timers and never touch `req` again.
 */
typedef void (*tr_http_abort_cb)(tr_http_req_t *req);
/* Output written with tr_http_res_write() has drained; the handler may write again. */
typedef void (*tr_http_drain_cb)(tr_http_req_t *req);

/*
 * A request. Fields are read-only for handlers except `data` and the callbacks,
 * which the handler sets to receive the body and lifecycle events. Every string
 * lives until the request ends (the response is finished, or abort).
 */
struct tr_http_req_s {
    const char *method; /* "GET" */
    const char *url;    /* raw request target, e.g. "/a/b?x=1" */
    const char *path;   /* the target before '?', not decoded */
    const char *query;  /* after '?', "" when none */
    tr_http_header_t *headers;
    size_t nheaders;
    int64_t content_length; /* -1 when the request has no Content-Length */
    uint32_t url_len;
    uint32_t path_len;
    uint32_t query_len;
    unsigned char method_id; /* enum http_method */
    unsigned char http_major;
    unsigned char http_minor;
    bool chunked;
    bool expect_continue;
    bool head; /* method is HEAD: responses carry no body */
    uv_loop_t *loop;
    void *data; /* the handler's */
    tr_http_body_cb on_body;
    tr_http_end_cb on_end;
    tr_http_abort_cb on_abort;
    tr_http_drain_cb on_drain;
};

typedef struct tr_http_server_options_s {
    tr_http_handler_cb handler;
    void *handler_data;
    size_t max_header_bytes;    /* request line + headers; default 16 KiB → 431 */
    size_t max_headers;         /* default 100 → 431 */
    size_t max_uri_bytes;       /* default 8 KiB → 414 */
    uint64_t max_body_bytes;    /* default 1 MiB → 413; UINT64_MAX for no limit */
    uint64_t header_timeout_ms; /* default 10 s → 408 and close */
    uint64_t idle_timeout_ms;   /* keep-alive idle; default 60 s */
    uint64_t body_timeout_ms;   /* between body reads; default 60 s → 408 */
    uint64_t send_timeout_ms;   /* peer not reading our output; default 60 s */
    size_t read_buffer_bytes;   /* per active connection; default 16 KiB */
    /*
     * Optional. True when the handler orders `req`'s effects after those of every request
     * before it on the connection by itself (they all go through one FIFO queue, say, as
     * event store appends do). Such a request, once its body is in and while its handler
     * has not answered yet, no longer holds up the pipelined requests after it: the server
     * parses the next ones and hands those that pass this test to the handler too (up to
     * 64 per connection). Any other request waits, unseen by the handler, until every
     * answer before it is complete, so a read pipelined after writes still sees them.
     * Responses always leave in request order. NULL: one request at a time (RFC 9112
     * §9.3.2 lets a server process pipelined requests in parallel only when that order
     * cannot be observed).
     */
    bool (*ordered)(const tr_http_req_t *req, void *data);
} tr_http_server_options_t;

/*
 * Starts serving HTTP on `loop` from an already bound, listening socket `fd`
 * (see tr_net_listen). Options are copied; zero fields take their defaults.
 * On success *out owns the server until tr_http_server_close().
 */
int tr_http_server_start(uv_loop_t *loop, int fd, const tr_http_server_options_t *opts,
                         tr_http_server_t **out);

/*
 * Stops accepting and closes idle connections; requests in flight finish and their
 * connections close after the response. With `force`, every connection closes now
 * (handlers get on_abort). `done` (may be NULL) fires once when all handles are
 * closed; then the server's memory is freed. Calling it again only escalates force.
 */
void tr_http_server_close(tr_http_server_t *srv, bool force, void (*done)(void *data), void *data);

/* Connections currently open on this server (this loop only). */
size_t tr_http_server_connections(const tr_http_server_t *srv);

/* Case-insensitive header lookup; returns the first value or NULL. */
const char *tr_http_req_header(const tr_http_req_t *req, const char *name);
/*
 * Looks up query parameter `name` (exact, case-sensitive). Returns true when present; then
 * *value is its form-decoded value ('+' is a space, then %XX escapes; "" for a bare `?name`
 * or `name=`; a malformed escape is kept as sent), NUL-terminated
 * and living as long as the request. `value` may be NULL to test presence only.
 */
bool tr_http_query_param(tr_http_req_t *req, const char *name, const char **value);
/* Percent-decodes src[0..len) into dst (at least len+1 bytes); '+' stays '+'. Returns the
 * decoded length, or -1 for a malformed escape. */
long tr_http_percent_decode(char *dst, const char *src, size_t len);
/* Memory that lives as long as the request; aborts on out-of-memory. */
void *tr_http_req_alloc(tr_http_req_t *req, size_t n);
/* Stop / start receiving the request body (backpressure towards the client). */
void tr_http_req_pause(tr_http_req_t *req);
void tr_http_req_resume(tr_http_req_t *req);
/* Peer address as "ip:port" in `buf`. */
void tr_http_req_peer(const tr_http_req_t *req, char *buf, size_t len);

/* Adds a response header (copied). Content-Length set here fixes the body length. */
void tr_http_res_header(tr_http_req_t *req, const char *name, const char *value);
void tr_http_res_headern(tr_http_req_t *req, const char *name, size_t name_len, const char *value,
                         size_t value_len);
/* Closes the connection after this response. */
void tr_http_res_close(tr_http_req_t *req);
/* Sends a whole response. `content_type` may be NULL. The body is copied. */
void tr_http_res_send(tr_http_req_t *req, int status, const char *content_type, const void *body,
                      size_t len);
/* Starts a streamed response: chunked unless a Content-Length header was set. */
void tr_http_res_start(tr_http_req_t *req, int status);
/*
 * Appends body bytes (copied). Returns false when the caller should wait for
 * on_drain before writing more (the bytes were still accepted).
 */
bool tr_http_res_write(tr_http_req_t *req, const void *data, size_t len);
/* Finishes a streamed response. */
void tr_http_res_end(tr_http_req_t *req);
/*
 * Sends an RFC 9457 problem+json response with type
 * "https://trellis.dev/problems/<slug>", `title`, `status` and a printf-style `detail`.
 */
void tr_http_res_problem(tr_http_req_t *req, int status, const char *slug, const char *title,
                         const char *detail_fmt, ...) __attribute__((format(printf, 5, 6)));
/* Closes the connection at once without (finishing) a response; the request ends. */
void tr_http_res_abort(tr_http_req_t *req);
/* True once a response has started (status line queued). */
bool tr_http_res_started(const tr_http_req_t *req);

#endif
