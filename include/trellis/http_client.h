/* HTTP/1.1 client with per-loop keep-alive pools, deadlines and streaming bodies. */
#ifndef TRELLIS_HTTP_CLIENT_H
#define TRELLIS_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <uv.h>

#include "trellis/error.h"

typedef struct tr_http_client_s tr_http_client_t;
typedef struct tr_http_client_req_s tr_http_client_req_t;

typedef struct tr_http_client_options_s {
    unsigned max_idle_per_endpoint; /* idle keep-alive connections kept per endpoint (64) */
    uint64_t idle_timeout_ms;       /* an idle pooled connection is closed after this (60 s) */
    uint64_t connect_timeout_ms;    /* TCP connect deadline (5 s) */
    uint64_t response_timeout_ms;   /* request sent to response headers; 0 = none (30 s) */
    size_t max_header_bytes;        /* status line + headers of one response (16 KiB) */
    size_t max_body_bytes;          /* body limit of tr_http_client_fetch (1 MiB) */
} tr_http_client_options_t;

/* A server address: an IPv4/IPv6 literal and port, plus the Host header value for it. */
typedef struct tr_http_endpoint_s {
    struct sockaddr_storage addr;
    char host[64]; /* "127.0.0.1:8080" or "[::1]:8080"; NUL-terminated */
} tr_http_endpoint_t;

typedef struct tr_http_client_header_s {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} tr_http_client_header_t;

enum tr_http_client_body {
    TR_HTTP_CLIENT_BODY_NONE = 0, /* no body; no Content-Length unless the method needs one */
    TR_HTTP_CLIENT_BODY_BUFFER,   /* body/body_len sent with the head, Content-Length added */
    TR_HTTP_CLIENT_BODY_STREAM    /* written later with tr_http_client_write/_end */
};

/* Request flags. */
#define TR_HTTP_CLIENT_IDEMPOTENT 0x1 /* safe to resend even if the server may have seen it */
#define TR_HTTP_CLIENT_NO_RETRY   0x2 /* never resend transparently on a fresh connection */

typedef void (*tr_http_client_headers_cb)(tr_http_client_req_t *req, int status,
                                          const tr_http_client_header_t *headers, size_t nheaders);
/* `data` points into the read buffer and is valid only during the call. */
typedef void (*tr_http_client_body_cb)(tr_http_client_req_t *req, const char *data, size_t len);
/* Fires exactly once per accepted request: 0 when the whole response arrived, else an error. */
typedef void (*tr_http_client_complete_cb)(tr_http_client_req_t *req, int err);
/* The streamed request body fell below the high-water mark: more may be written. */
typedef void (*tr_http_client_drain_cb)(tr_http_client_req_t *req);
typedef void (*tr_http_client_close_cb)(tr_http_client_t *client);

/*
 * What to send. Everything here is copied at submit time except a buffered body larger
 * than 64 KiB, which is referenced and must stay valid until on_complete.
 */
typedef struct tr_http_client_request_s {
    const char *method; /* "GET"; NUL-terminated */
    const char *target; /* path and query, "/v1/items?x=1"; NUL-terminated */
    const tr_http_client_header_t *headers;
    size_t nheaders;
    enum tr_http_client_body body_mode;
    const void *body; /* TR_HTTP_CLIENT_BODY_BUFFER */
    size_t body_len;
    /* TR_HTTP_CLIENT_BODY_STREAM: total length if known, else -1 for chunked encoding. */
    int64_t content_length;
    unsigned flags;                         /* TR_HTTP_CLIENT_IDEMPOTENT, TR_HTTP_CLIENT_NO_RETRY */
    tr_http_client_headers_cb on_headers;   /* optional */
    tr_http_client_body_cb on_body;         /* optional */
    tr_http_client_complete_cb on_complete; /* required */
    tr_http_client_drain_cb on_drain;       /* optional; streamed bodies */
    void *data;                             /* returned by tr_http_client_req_data */
} tr_http_client_request_t;

/* The result of a buffered fetch; valid only during the callback. */
typedef struct tr_http_client_response_s {
    int status; /* HTTP status code, 0 if none arrived */
    const tr_http_client_header_t *headers;
    size_t nheaders;
    const char *body;
    size_t body_len;
} tr_http_client_response_t;

typedef void (*tr_http_client_fetch_cb)(tr_http_client_req_t *req, int err,
                                        const tr_http_client_response_t *res);

/* Fills `opts` with the defaults shown in tr_http_client_options_t. */
void tr_http_client_options_init(tr_http_client_options_t *opts);

/*
 * Creates a client for `loop` (NULL opts = defaults). One per loop: it takes no locks
 * and must only be used from the loop's thread. Aborts on out-of-memory.
 */
tr_http_client_t *tr_http_client_new(uv_loop_t *loop, const tr_http_client_options_t *opts);

/*
 * Closes every pooled connection and fails in-flight requests with TR_ECANCELED
 * (their on_complete fires). `cb` (may be NULL) runs once everything is closed; the
 * client's memory is freed right after it returns. Closing twice is safe.
 */
void tr_http_client_close(tr_http_client_t *client, tr_http_client_close_cb cb);

/* Parses "127.0.0.1:8080" or "[::1]:8080". Returns 0 or UV_EINVAL. */
int tr_http_endpoint_parse(tr_http_endpoint_t *ep, const char *hostport);

/* A parsed "http://host[:port][/path]" URL (background fetchers: JWKS, span export). */
typedef struct tr_http_url_s {
    char host[256];        /* name or IP literal, without brackets */
    char port[8];          /* decimal, "80" by default */
    bool literal;          /* host is an IP literal: `ep` is ready, no resolving */
    tr_http_endpoint_t ep; /* literal: the address; otherwise ep.host is "host:port" */
    char *target;          /* path and query ("/" when empty); malloc'd */
} tr_http_url_t;

/*
 * Parses an http:// URL into *u. Returns 0; TR_EUNSUPPORTED for https:// or another
 * scheme; UV_EINVAL for anything malformed (bad host characters, port outside 1..65535,
 * an IPv6 host that is not a literal). Free u->target with tr_http_url_free.
 */
int tr_http_url_parse(const char *url, tr_http_url_t *u);
void tr_http_url_free(tr_http_url_t *u);

/* Builds an endpoint from an address (IPv4 or IPv6). Returns 0 or UV_EINVAL. */
int tr_http_endpoint_from_addr(tr_http_endpoint_t *ep, const struct sockaddr *addr);

/*
 * Sends `r` to `ep`, reusing an idle pooled connection when there is one. Returns 0 and
 * stores the request handle in *out (may be NULL); then on_complete fires exactly once
 * and the handle is invalid after it returns. On error (UV_EINVAL, TR_ECANCELED after
 * close) no callback fires. `ep` and `r` are copied.
 */
int tr_http_client_request(tr_http_client_t *client, const tr_http_endpoint_t *ep,
                           const tr_http_client_request_t *r, tr_http_client_req_t **out);

/*
 * Like tr_http_client_request but collects the body (up to max_body_bytes, else
 * TR_ETOOLARGE) and calls `cb` once. r->on_headers/on_body/on_complete are ignored.
 */
int tr_http_client_fetch(tr_http_client_t *client, const tr_http_endpoint_t *ep,
                         const tr_http_client_request_t *r, tr_http_client_fetch_cb cb,
                         tr_http_client_req_t **out);

/*
 * Streams a chunk of the request body (copied). Returns 1 when more may be written now,
 * 0 when the caller should wait for on_drain, TR_ESTATE after tr_http_client_end.
 */
int tr_http_client_write(tr_http_client_req_t *req, const void *data, size_t len);

/* Ends a streamed body (writes the last chunk). Returns 0 or TR_ESTATE if already ended. */
int tr_http_client_end(tr_http_client_req_t *req);

/* Stops reading the response (backpressure); on_body will not fire until resumed. */
void tr_http_client_pause(tr_http_client_req_t *req);
void tr_http_client_resume(tr_http_client_req_t *req);

/* Aborts the request: its connection is closed and on_complete fires with TR_ECANCELED. */
void tr_http_client_cancel(tr_http_client_req_t *req);

/*
 * True when some byte of the request may have reached the server, so resending a
 * non-idempotent request is unsafe. Meaningful inside on_complete / the fetch callback.
 */
bool tr_http_client_request_sent(const tr_http_client_req_t *req);

void *tr_http_client_req_data(const tr_http_client_req_t *req);

#endif
