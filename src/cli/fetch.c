/* One blocking HTTP call for the CLI's client commands (trace, ps, restart, scale…). */
#include "cli/cli.h"

#include "trellis/error.h"
#include "trellis/http_client.h"

#include <stdlib.h>
#include <string.h>

static void on_fetched(tr_http_client_req_t *req, int err, const tr_http_client_response_t *res)
{
    tr_cli_fetch_t *f = tr_http_client_req_data(req);
    f->err = err;
    if (err) return;
    f->status = res->status;
    f->body = malloc(res->body_len + 1);
    if (!f->body) return;
    memcpy(f->body, res->body, res->body_len);
    f->body[res->body_len] = '\0';
    f->len = res->body_len;
}

int tr_cli_fetch(const char *hostport, const char *method, const char *target, const char *body,
                 tr_cli_fetch_t *f)
{
    memset(f, 0, sizeof(*f));
    tr_http_endpoint_t ep;
    if (tr_http_endpoint_parse(&ep, hostport)) return UV_EINVAL;
    uv_loop_t loop;
    uv_loop_init(&loop);
    tr_http_client_options_t o;
    tr_http_client_options_init(&o);
    o.max_body_bytes = 256u << 20;
    o.connect_timeout_ms = 3000;
    o.response_timeout_ms = 30000; /* every wait has a deadline */
    tr_http_client_t *client = tr_http_client_new(&loop, &o);
    tr_http_client_request_t r = {.method = method,
                                  .target = target,
                                  .body_mode =
                                      body ? TR_HTTP_CLIENT_BODY_BUFFER : TR_HTTP_CLIENT_BODY_NONE,
                                  .body = body,
                                  .body_len = body ? strlen(body) : 0,
                                  .data = f};
    int rc = tr_http_client_fetch(client, &ep, &r, on_fetched, NULL);
    if (rc == 0) uv_run(&loop, UV_RUN_DEFAULT);
    tr_http_client_close(client, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return rc ? rc : f->err;
}

bool tr_cli_hostport(const char *url, char *out, size_t len)
{
    if (!strncmp(url, "https://", 8)) return false;
    const char *p = strncmp(url, "http://", 7) ? url : url + 7;
    size_t n = strcspn(p, "/");
    if (n == 0 || n >= len) return false;
    memcpy(out, p, n);
    out[n] = '\0';
    tr_http_endpoint_t ep;
    return tr_http_endpoint_parse(&ep, out) == 0;
}
