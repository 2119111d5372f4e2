/* JSON request bodies: collects a bounded body, parses it and answers the errors. */
#ifndef TRELLIS_HTTP_JSON_H
#define TRELLIS_HTTP_JSON_H

#include <jansson.h>
#include <stddef.h>

#include "trellis/http.h"

/* An empty body (or a JSON null) reads as {} instead of an error. */
#define TR_HTTP_JSON_EMPTY_OK 0x1u

/* A valid JSON object arrived; `body` is borrowed (freed after this returns). */
typedef void (*tr_http_json_cb)(tr_http_req_t *req, json_t *body, void *data);

/*
 * Collects the body of `req` (at most max_bytes; more answers 413 and closes the
 * connection), parses it and calls `cb` with the object. Anything but a JSON object
 * answers 400 problem+json saying what is wrong and where, and `cb` never fires; a client
 * that goes away fires nothing. Takes over req->data, on_body, on_end and on_abort.
 */
void tr_http_req_read_json(tr_http_req_t *req, size_t max_bytes, unsigned flags, tr_http_json_cb cb,
                           void *data);

#endif
