/* Background JWKS fetcher: periodic and on-demand refresh, last good set kept on failure. */
#include "gateway/jwks.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#include "core/mem.h"
#include "trellis/error.h"
#include "trellis/http_client.h"
#include "trellis/log.h"

struct tr_jwks_s {
    uv_loop_t *loop;
    tr_jwks_options_t o;
    char *url;
    tr_http_url_t u;
    tr_http_client_t *client;
    tr_http_client_req_t *req;
    uv_getaddrinfo_t gai;
    uv_timer_t timer;    /* next scheduled fetch */
    uv_timer_t deadline; /* of the fetch in flight */
    uv_async_t async;    /* tr_jwks_refresh from other threads */
    atomic_bool want_refresh;
    bool in_flight, resolving, timed_out, failing, closing;
    uint64_t last_start_ms;      /* uv_now when the last fetch started */
    uint64_t startup_backoff_ms; /* retry delay while no key was ever loaded */
    unsigned char body_hash[32];
    tr_jwt_keyset_t *keys;
    uint64_t fetches, failures;
    int pending_closes;
    tr_jwks_close_cb close_cb;
};

static void fetch_start(tr_jwks_t *j);

void tr_jwks_options_init(tr_jwks_options_t *o)
{
    memset(o, 0, sizeof(*o));
    o->refresh_ms = 5 * 60 * 1000;
    o->retry_ms = 30 * 1000;
    o->min_interval_ms = 30 * 1000;
    o->timeout_ms = 10 * 1000;
    o->max_body_bytes = 1u << 20;
}

/* ---- URL */

/* ---- fetching */

static void on_timer(uv_timer_t *t)
{
    fetch_start(t->data);
}

static void schedule(tr_jwks_t *j, uint64_t ms)
{
    if (!j->closing) uv_timer_start(&j->timer, on_timer, ms, 0);
}

static void fetch_failed(tr_jwks_t *j, int err, int status, const char *detail)
{
    j->failures++;
    j->failing = true;
    tr_log_warn("jwks: fetch failed; keeping the last good keys", TR_LOG_STR("url", j->url),
                TR_LOG_ERR(err), TR_LOG_INT("status", status),
                TR_LOG_STR("detail", detail ? detail : ""),
                TR_LOG_UINT("keys", tr_jwt_keyset_count(j->keys)));
    uint64_t ms = j->o.retry_ms < j->o.refresh_ms ? j->o.retry_ms : j->o.refresh_ms;
    if (!j->keys) {
        /* No key yet: the issuer is likely starting alongside the gateway (`trellis up`), and
         * every token fails until a fetch works, so try again soon: 500 ms, doubling. */
        j->startup_backoff_ms = j->startup_backoff_ms ? j->startup_backoff_ms * 2 : 500;
        if (j->startup_backoff_ms < ms) ms = j->startup_backoff_ms;
    }
    schedule(j, ms);
}

/* Publishes the set of a good document unless it is byte-for-byte the last one. */
static void fetch_succeeded(tr_jwks_t *j, const char *body, size_t len)
{
    unsigned char hash[32];
    bool same = j->keys && EVP_Digest(body, len, hash, NULL, EVP_sha256(), NULL) &&
                memcmp(hash, j->body_hash, sizeof(hash)) == 0;
    char err[160] = "";
    tr_jwt_keyset_t *set = NULL;
    int rc = same ? 0 : tr_jwt_keyset_from_jwks(body, len, &set, err, sizeof(err));
    if (rc) {
        fetch_failed(j, rc, 200, err);
        return;
    }
    if (j->failing || set) {
        tr_log_info("jwks: keys loaded", TR_LOG_STR("url", j->url),
                    TR_LOG_UINT("keys", tr_jwt_keyset_count(set ? set : j->keys)),
                    TR_LOG_BOOL("changed", set != NULL));
    }
    if (set && err[0])
        tr_log_warn("jwks: key skipped", TR_LOG_STR("url", j->url), TR_LOG_STR("detail", err));
    j->failing = false;
    if (set) {
        EVP_Digest(body, len, j->body_hash, NULL, EVP_sha256(), NULL);
        tr_jwt_keyset_release(j->keys);
        j->keys = set;
        j->o.on_keys(set, j->o.data);
    }
    schedule(j, j->o.refresh_ms);
}

static void close_step(tr_jwks_t *j);

static void on_fetched(tr_http_client_req_t *req, int err, const tr_http_client_response_t *res)
{
    tr_jwks_t *j = tr_http_client_req_data(req);
    j->req = NULL;
    j->in_flight = false;
    uv_timer_stop(&j->deadline);
    if (j->closing) {
        close_step(j);
        return;
    }
    if (j->timed_out) err = TR_ERESPONSE_TIMEOUT;
    if (err == 0 && res->status != 200) err = TR_EBAD_RESPONSE;
    if (err)
        fetch_failed(j, err, res ? res->status : 0, NULL);
    else
        fetch_succeeded(j, res->body, res->body_len);
}

static void send_request(tr_jwks_t *j)
{
    static const tr_http_client_header_t accept = {
        "Accept", 6, "application/jwk-set+json, application/json", 42};
    tr_http_client_request_t r = {.method = "GET",
                                  .target = j->u.target,
                                  .headers = &accept,
                                  .nheaders = 1,
                                  .flags = TR_HTTP_CLIENT_IDEMPOTENT,
                                  .data = j};
    int err = tr_http_client_fetch(j->client, &j->u.ep, &r, on_fetched, &j->req);
    if (err) {
        j->in_flight = false;
        uv_timer_stop(&j->deadline);
        fetch_failed(j, err, 0, NULL);
    }
}

static void on_resolved(uv_getaddrinfo_t *gai, int status, struct addrinfo *res)
{
    tr_jwks_t *j = gai->data;
    j->resolving = false;
    if (j->closing) {
        uv_freeaddrinfo(res);
        close_step(j);
        return;
    }
    char host[sizeof(j->u.ep.host)];
    memcpy(host, j->u.ep.host, sizeof(host));
    int err = status ? status
              : res  ? tr_http_endpoint_from_addr(&j->u.ep, res->ai_addr)
                     : UV_EAI_NONAME;
    uv_freeaddrinfo(res);
    memcpy(j->u.ep.host, host,
           sizeof(host)); /* the Host header names the server, not its address */
    if (j->timed_out) err = TR_ECONNECT_TIMEOUT;
    if (err) {
        j->in_flight = false;
        uv_timer_stop(&j->deadline);
        fetch_failed(j, err, 0, "resolving the host failed");
        return;
    }
    send_request(j);
}

static void on_deadline(uv_timer_t *t)
{
    tr_jwks_t *j = t->data;
    j->timed_out = true;
    if (j->req) tr_http_client_cancel(j->req);
    if (j->resolving) uv_cancel((uv_req_t *)&j->gai);
}

static void fetch_start(tr_jwks_t *j)
{
    if (j->in_flight || j->closing) return;
    uv_timer_stop(&j->timer);
    j->in_flight = true;
    j->timed_out = false;
    j->fetches++;
    j->last_start_ms = uv_now(j->loop);
    uv_timer_start(&j->deadline, on_deadline, j->o.timeout_ms, 0);
    if (j->u.literal) {
        send_request(j);
        return;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    j->resolving = true;
    int err = uv_getaddrinfo(j->loop, &j->gai, on_resolved, j->u.host, j->u.port, &hints);
    if (err) {
        j->resolving = j->in_flight = false;
        uv_timer_stop(&j->deadline);
        fetch_failed(j, err, 0, "resolving the host failed");
    }
}

/* Runs on the loop for tr_jwks_refresh: now, or when the rate limit allows. */
static void on_refresh(uv_async_t *a)
{
    tr_jwks_t *j = a->data;
    if (!atomic_exchange(&j->want_refresh, false) || j->closing || j->in_flight) return;
    uint64_t now = uv_now(j->loop), next = j->last_start_ms + j->o.min_interval_ms;
    uint64_t wait = next > now ? next - now : 0;
    if (!uv_is_active((uv_handle_t *)&j->timer) || uv_timer_get_due_in(&j->timer) > wait)
        schedule(j, wait);
}

void tr_jwks_refresh(tr_jwks_t *jwks)
{
    if (!atomic_exchange(&jwks->want_refresh, true)) uv_async_send(&jwks->async);
}

/* ---- lifecycle */

int tr_jwks_start(uv_loop_t *loop, const tr_jwks_options_t *o, tr_jwks_t **out)
{
    *out = NULL;
    if (o == NULL || o->url == NULL || o->on_keys == NULL) return UV_EINVAL;
    tr_jwks_options_t d;
    tr_jwks_options_init(&d);
    tr_jwks_t *j = tr_calloc(1, sizeof(*j));
    int err = tr_http_url_parse(o->url, &j->u);
    if (err) {
        tr_http_url_free(&j->u);
        free(j);
        return err;
    }
    j->loop = loop;
    j->o = *o;
    if (j->o.refresh_ms == 0) j->o.refresh_ms = d.refresh_ms;
    if (j->o.retry_ms == 0) j->o.retry_ms = d.retry_ms;
    if (j->o.min_interval_ms == 0) j->o.min_interval_ms = d.min_interval_ms;
    if (j->o.timeout_ms == 0) j->o.timeout_ms = d.timeout_ms;
    if (j->o.max_body_bytes == 0) j->o.max_body_bytes = d.max_body_bytes;
    j->url = tr_strdup(o->url);
    j->o.url = j->url;
    tr_http_client_options_t co;
    tr_http_client_options_init(&co);
    co.connect_timeout_ms = co.response_timeout_ms = j->o.timeout_ms;
    co.max_body_bytes = j->o.max_body_bytes;
    co.max_idle_per_endpoint = 1;
    j->client = tr_http_client_new(loop, &co);
    uv_timer_init(loop, &j->timer);
    uv_timer_init(loop, &j->deadline);
    uv_async_init(loop, &j->async, on_refresh);
    j->timer.data = j->deadline.data = j->async.data = j->gai.data = j;
    atomic_init(&j->want_refresh, false);
    fetch_start(j);
    *out = j;
    return 0;
}

tr_jwt_keyset_t *tr_jwks_keys(tr_jwks_t *jwks)
{
    return jwks->keys ? tr_jwt_keyset_retain(jwks->keys) : NULL;
}

void tr_jwks_stats(const tr_jwks_t *jwks, uint64_t *fetches, uint64_t *failures)
{
    *fetches = jwks->fetches;
    *failures = jwks->failures;
}

static void close_step(tr_jwks_t *j)
{
    if (--j->pending_closes > 0) return;
    tr_jwt_keyset_release(j->keys);
    if (j->close_cb) j->close_cb(j);
    free(j->url);
    tr_http_url_free(&j->u);
    free(j);
}

static void on_handle_closed(uv_handle_t *h)
{
    close_step(h->data);
}

void tr_jwks_close(tr_jwks_t *jwks, tr_jwks_close_cb cb)
{
    if (jwks == NULL || jwks->closing) return;
    jwks->closing = true;
    jwks->close_cb = cb;
    jwks->pending_closes = 4; /* three handles and this call */
    uv_close((uv_handle_t *)&jwks->timer, on_handle_closed);
    uv_close((uv_handle_t *)&jwks->deadline, on_handle_closed);
    uv_close((uv_handle_t *)&jwks->async, on_handle_closed);
    /* A resolve or a request in flight still calls back once (canceled); count it. */
    if (jwks->resolving) {
        jwks->pending_closes++;
        uv_cancel((uv_req_t *)&jwks->gai);
    } else if (jwks->in_flight) {
        jwks->pending_closes++;
    }
    tr_http_client_close(jwks->client, NULL);
    jwks->client = NULL;
    close_step(jwks);
}
