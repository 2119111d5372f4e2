/* JSON request bodies: bounded collection, parsing, and the 400/413 answers. */
#include "trellis/http_json.h"

#include "core/buf.h"

#include <stdbool.h>

/* A body being collected; lives in the request's memory, `buf` on the heap. */
typedef struct json_body_s {
    size_t max;
    unsigned flags;
    tr_http_json_cb cb;
    void *data;
    bool done;
    tr_buf_t buf;
} json_body_t;

static void body_finish(json_body_t *b)
{
    b->done = true;
    tr_buf_free(&b->buf);
}

static void on_body(tr_http_req_t *req, const char *data, size_t len)
{
    json_body_t *b = req->data;
    if (b->done) return;
    if (b->buf.len + len > b->max) {
        tr_http_res_close(req);
        if (b->max % 1024 == 0)
            tr_http_res_problem(req, 413, "body-too-large", "Body too large",
                                "the request body may be at most %zu KiB", b->max / 1024);
        else
            tr_http_res_problem(req, 413, "body-too-large", "Body too large",
                                "the request body may be at most %zu bytes", b->max);
        body_finish(b);
        return;
    }
    tr_buf_append(&b->buf, data, len);
}

static void on_end(tr_http_req_t *req)
{
    json_body_t *b = req->data;
    if (b->done) return;
    bool empty_ok = b->flags & TR_HTTP_JSON_EMPTY_OK;
    json_error_t je;
    json_t *j = NULL;
    if (b->buf.len || !empty_ok) {
        j = json_loadb(b->buf.data ? b->buf.data : "", b->buf.len, JSON_DECODE_ANY, &je);
        if (!j) {
            tr_http_res_problem(req, 400, "bad-json", "Invalid JSON",
                                "the request body is not valid JSON: %s (line %d, column %d)",
                                je.text, je.line, je.column);
            body_finish(b);
            return;
        }
    }
    if (!j || (json_is_null(j) && empty_ok)) {
        json_decref(j);
        j = json_object();
    }
    if (!json_is_object(j))
        tr_http_res_problem(req, 400, "bad-request", "Invalid request",
                            "the request body must be a JSON object");
    else
        b->cb(req, j, b->data);
    json_decref(j);
    body_finish(b);
}

static void on_abort(tr_http_req_t *req)
{
    body_finish(req->data);
}

void tr_http_req_read_json(tr_http_req_t *req, size_t max_bytes, unsigned flags, tr_http_json_cb cb,
                           void *data)
{
    json_body_t *b = tr_http_req_alloc(req, sizeof(*b));
    *b =
        (json_body_t){.max = max_bytes, .flags = flags, .cb = cb, .data = data, .buf = TR_BUF_INIT};
    req->data = b;
    req->on_body = on_body;
    req->on_end = on_end;
    req->on_abort = on_abort;
}
