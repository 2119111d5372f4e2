/* The registry's HTTP front: routes /v1/ requests to KV, status and agent endpoints. */
#include "registry/registry.h"

#include "core/buf.h"
#include "core/fs.h"
#include "core/mem.h"
#include "registry/catalog.h"
#include "registry/event.h"
#include "registry/kv.h"
#include "registry/session.h"
#include "registry/store.h"
#include "trellis/error.h"
#include "trellis/log.h"
#include "trellis/metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* What /v1/agent/self reports as the Consul version: the API generation we follow. */
#define TR_CONSUL_COMPAT_VERSION "1.17.0"
#define SERVER_RPC_PORT          8300

struct tr_registry_s {
    tr_store_t *store;
    tr_kv_t *kv;
    tr_session_t *sessions;
    tr_catalog_t *cat;
    tr_event_t *events;
    char *node, *datacenter, *address;
    char node_id[37];
    bool closing;
};

/* ---- set-up */

static void format_uuid(const unsigned char b[16], char out[37])
{
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
}

/* The node ID is a random UUID made at first start and kept, as Consul keeps node-id. */
static int load_node_id(const char *dir, char out[37])
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/node-id", dir);
    FILE *f = fopen(path, "r");
    if (f) {
        bool ok = fscanf(f, "%36s", out) == 1 && strlen(out) == 36;
        fclose(f);
        if (ok) return 0;
    }
    unsigned char b[16];
    if (RAND_bytes(b, sizeof(b)) != 1) return TR_EIO;
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    format_uuid(b, out);
    f = fopen(path, "w");
    if (!f) return -errno;
    fprintf(f, "%s\n", out);
    return fclose(f) ? -errno : 0;
}

static int check_status(void *cat, const char *id)
{
    return tr_catalog_check_status(cat, id);
}

static void on_check_down(void *sessions, const char *id)
{
    tr_session_check_down(sessions, id);
}

int tr_registry_open(uv_loop_t *loop, const tr_registry_options_t *o, tr_registry_t **out,
                     char *err, size_t errlen)
{
    const char *dir = o->data_dir ? o->data_dir : ".trellis";
    int rc = tr_mkdirs(dir);
    if (rc) {
        snprintf(err, errlen, "%s: cannot create the data directory: %s", dir, tr_strerror(rc));
        return rc;
    }
    tr_registry_t *reg = tr_calloc(1, sizeof(*reg));
    if ((rc = load_node_id(dir, reg->node_id))) {
        snprintf(err, errlen, "%s/node-id: %s", dir, tr_strerror(rc));
        free(reg);
        return rc;
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/registry.db", dir);
    if ((rc = tr_store_open(path, &reg->store, err, errlen))) {
        free(reg);
        return rc;
    }
    if ((rc = tr_kv_open(loop, reg->store, &reg->kv, err, errlen))) {
        tr_store_close(reg->store);
        free(reg);
        return rc;
    }
    char host[256] = "trellis";
    gethostname(host, sizeof(host) - 1);
    reg->node = tr_strdup(o->node ? o->node : host);
    reg->datacenter = tr_strdup(o->datacenter ? o->datacenter : "dc1");
    reg->address = tr_strdup(o->address ? o->address : "127.0.0.1");
    if ((rc = tr_session_open(loop, reg->store, reg->kv, reg->node, &reg->sessions, err, errlen))) {
        tr_registry_close(reg);
        return rc;
    }
    tr_catalog_node_t node = {reg->node, reg->node_id, reg->address, reg->datacenter};
    if ((rc = tr_catalog_open(loop, reg->store, &node, &reg->cat, err, errlen))) {
        tr_registry_close(reg);
        return rc;
    }
    if (o->hub) tr_catalog_set_hub(reg->cat, o->hub);
    tr_session_set_check_lookup(reg->sessions, check_status, reg->cat);
    tr_catalog_on_check_down(reg->cat, on_check_down, reg->sessions);
    tr_event_open(loop, &reg->events);
    *out = reg;
    return 0;
}

void tr_registry_shutdown(tr_registry_t *reg)
{
    reg->closing = true;
    tr_session_close(reg->sessions); /* before the KV: it unhooks the session lookup */
    reg->sessions = NULL;
    if (reg->kv) tr_kv_close(reg->kv);
    reg->kv = NULL;
    if (reg->cat) tr_catalog_close(reg->cat);
    reg->cat = NULL;
    tr_event_close(reg->events);
    reg->events = NULL;
}

void tr_registry_close(tr_registry_t *reg)
{
    if (!reg) return;
    tr_registry_shutdown(reg);
    tr_store_close(reg->store);
    free(reg->node);
    free(reg->datacenter);
    free(reg->address);
    free(reg);
}

/* ---- small endpoints */

static void send_json(tr_http_req_t *req, int status, json_t *body)
{
    char *s = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
    json_decref(body);
    tr_http_res_send(req, status, "application/json", s, strlen(s));
    free(s);
}

static void leader_addr(const tr_registry_t *reg, char *buf, size_t len)
{
    snprintf(buf, len, "%s:%d", reg->address, SERVER_RPC_PORT);
}

static void do_status(tr_registry_t *reg, tr_http_req_t *req, bool peers)
{
    char addr[128];
    leader_addr(reg, addr, sizeof(addr));
    /* A single server is its own leader; its one peer is itself. */
    json_t *body = peers ? json_pack("[s]", addr) : json_string(addr);
    send_json(req, 200, body);
}

static void do_agent_self(tr_registry_t *reg, tr_http_req_t *req)
{
    json_t *config =
        json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:b, s:s, s:s}", "Datacenter", reg->datacenter,
                  "PrimaryDatacenter", reg->datacenter, "NodeName", reg->node, "NodeID",
                  reg->node_id, "AdvertiseAddr", reg->address, "Revision", "trellis", "Server", 1,
                  "Version", TR_CONSUL_COMPAT_VERSION, "TrellisVersion", TR_VERSION);
    json_t *member = json_pack("{s:s, s:s, s:i, s:{s:s, s:s, s:s}, s:i}", "Name", reg->node, "Addr",
                               reg->address, "Port", 8301, "Tags", "dc", reg->datacenter, "role",
                               "consul", "build", TR_CONSUL_COMPAT_VERSION, "Status", 1);
    json_t *body = json_pack("{s:o, s:o, s:{}}", "Config", config, "Member", member, "Meta");
    send_json(req, 200, body);
}

static void do_metrics(tr_http_req_t *req)
{
    tr_buf_t out = TR_BUF_INIT;
    tr_metrics_render(tr_metrics_default(), &out);
    tr_http_res_send(req, 200, "text/plain; version=0.0.4; charset=utf-8", out.data, out.len);
    tr_buf_free(&out);
}

/* ---- routing */

static bool path_is(const tr_http_req_t *req, const char *p)
{
    return req->path_len == strlen(p) && !memcmp(req->path, p, req->path_len);
}

static bool path_starts(const tr_http_req_t *req, const char *p)
{
    size_t n = strlen(p);
    return req->path_len >= n && !memcmp(req->path, p, n);
}

static bool only_get(tr_http_req_t *req)
{
    if (!strcmp(req->method, "GET") || !strcmp(req->method, "HEAD")) return true;
    tr_http_res_header(req, "Allow", "GET, HEAD");
    tr_http_res_problem(req, 405, "method-not-allowed", "Method Not Allowed",
                        "%s does not take %s; use GET", req->path, req->method);
    return false;
}

static void route_kv(tr_registry_t *reg, tr_http_req_t *req)
{
    const char *raw = req->path_len > 7 ? req->path + 7 : ""; /* after "/v1/kv/" */
    size_t len = req->path_len > 7 ? req->path_len - 7 : 0;
    char *key = tr_http_req_alloc(req, len + 1);
    if (tr_http_percent_decode(key, raw, len) < 0) {
        tr_http_res_problem(req, 400, "bad-key", "Bad Request",
                            "the key in the path has a malformed percent-escape");
        return;
    }
    tr_kv_handle(reg->kv, req, key);
}

void tr_registry_handle(tr_http_req_t *req, void *data)
{
    tr_registry_t *reg = data;
    if (path_is(req, "/health/live") || path_is(req, "/health/ready")) {
        static const char pass[] = "{\"status\":\"pass\"}\n";
        tr_http_res_send(req, reg->closing ? 503 : 200, "application/health+json", pass,
                         sizeof(pass) - 1);
        return;
    }
    if (reg->closing) {
        tr_http_res_close(req);
        tr_http_res_problem(req, 503, "shutting-down", "Service Unavailable",
                            "the registry is shutting down; retry against another agent");
        return;
    }
    if (path_is(req, "/metrics")) return do_metrics(req);
    if (path_starts(req, "/v1/kv/") || path_is(req, "/v1/kv")) return route_kv(reg, req);
    if (path_starts(req, "/v1/session/")) return tr_session_handle(reg->sessions, req);
    if (path_is(req, "/v1/status/leader") && only_get(req)) return do_status(reg, req, false);
    if (path_is(req, "/v1/status/peers") && only_get(req)) return do_status(reg, req, true);
    if (path_is(req, "/v1/agent/self") && only_get(req)) return do_agent_self(reg, req);
    if (!tr_http_res_started(req) && tr_catalog_handle(reg->cat, req)) return;
    if (!tr_http_res_started(req) && tr_event_handle(reg->events, req)) return;
    if (tr_http_res_started(req)) return;
    tr_http_res_problem(req, 404, "not-found", "Not Found",
                        "trellis registry has no endpoint %.200s; see docs/registry.md for the "
                        "endpoints it serves",
                        req->path);
}
