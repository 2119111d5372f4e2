/* The gateway's config: compiles the YAML/JSON tree into an immutable snapshot. */
#include "gateway/gateway_int.h"

#include "core/mem.h"
#include "trellis/error.h"
#include "trellis/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DEFAULT_LISTEN       "127.0.0.1:8080"
#define DEFAULT_ADMIN        "127.0.0.1:9901"
#define DEFAULT_TIMEOUT_MS   15000 /* Envoy's route timeout */
#define DEFAULT_RETRY_BUFFER (64 * 1024)

/* ---- small helpers */

/* Adds `v` (stolen) under `k` of the effective config object `o`. */
static void eff(json_t *o, const char *k, json_t *v)
{
    json_object_set_new(o, k, v);
}

static json_t *dur_json(uint64_t ms)
{
    char buf[32];
    if (ms % 1000 == 0)
        snprintf(buf, sizeof(buf), "%llus", (unsigned long long)(ms / 1000));
    else
        snprintf(buf, sizeof(buf), "%llums", (unsigned long long)ms);
    return json_string(buf);
}

/* A list of strings (or one string) as a NULL-terminated array owned by `c`'s arrays. */
static int get_strings(tr_config_t *cfg, const json_t *obj, const char *key, const char ***out,
                       size_t *n)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    *n = 0;
    if (!v || json_is_null(v)) return 0;
    if (json_is_string(v)) {
        *out = tr_calloc(2, sizeof(char *));
        (*out)[0] = json_string_value(v);
        *n = 1;
        return 0;
    }
    if (!json_is_array(v)) return tr_config_fail(cfg, obj, key, "expected a string or a list");
    *out = tr_calloc(json_array_size(v) + 1, sizeof(char *));
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e)
    {
        if (!json_is_string(e)) return tr_config_fail(cfg, v, NULL, "expected a list of strings");
        (*out)[(*n)++] = json_string_value(e);
    }
    return 0;
}

static json_t *strings_json(const char *const *s, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(s[i]));
    return a;
}

/* ---- upstreams */

static const char *const lb_names[] = {"round_robin", "random", "least_request", "p2c", NULL};

static int parse_endpoints(tr_config_t *cfg, const json_t *list, gw_upstream_t *u)
{
    if (!json_is_array(list)) return tr_config_fail(cfg, list, NULL, "expected a list of ip:port");
    u->naddrs = json_array_size(list);
    u->addrs = tr_calloc(u->naddrs + 1, sizeof(char *));
    u->weights = tr_calloc(u->naddrs + 1, sizeof(uint32_t));
    size_t i;
    json_t *e;
    json_array_foreach(list, i, e)
    {
        const char *addr = json_string_value(e);
        int64_t w = 1;
        if (json_is_object(e)) {
            static const char *const keys[] = {"address", "weight", NULL};
            if (tr_config_check_keys(cfg, e, keys) ||
                tr_config_get_string(cfg, e, "address", NULL, &addr) ||
                tr_config_get_int(cfg, e, "weight", 1, 1, 1000000, &w))
                return TR_ECONFIG;
        }
        tr_http_endpoint_t ep;
        if (!addr || tr_http_endpoint_parse(&ep, addr) != 0)
            return tr_config_fail(cfg, e, NULL,
                                  "an endpoint is an IP address and port such as 127.0.0.1:9001 "
                                  "or [::1]:9001");
        u->addrs[i] = addr;
        u->weights[i] = (uint32_t)w;
    }
    if (u->naddrs == 0) return tr_config_fail(cfg, list, NULL, "the endpoint list is empty");
    return 0;
}

static int compile_upstream(tr_config_t *cfg, const char *name, const json_t *o, gw_upstream_t *u,
                            json_t *out)
{
    static const char *const keys[] = {
        "service",  "endpoints",       "load_balancer",     "connect_timeout", "max_idle",
        "bulkhead", "circuit_breaker", "outlier_detection", "retry_budget",    NULL};
    if (!json_is_object(o)) return tr_config_fail(cfg, o, NULL, "an upstream is a mapping");
    if (tr_config_check_keys(cfg, o, keys)) return TR_ECONFIG;
    u->name = name;
    int lb = 0;
    int64_t idle;
    json_t *eps = json_object_get(o, "endpoints"), *sub;
    if (tr_config_get_string(cfg, o, "service", NULL, &u->service) ||
        tr_config_get_enum(cfg, o, "load_balancer", lb_names, 0, &lb) ||
        tr_config_get_duration(cfg, o, "connect_timeout", 1000, &u->connect_timeout_ms) ||
        tr_config_get_int(cfg, o, "max_idle", 64, 0, 100000, &idle))
        return TR_ECONFIG;
    if (eps && u->service)
        return tr_config_fail(
            cfg, o, "endpoints",
            "give either `service` (discovery) or `endpoints` (static), not both");
    if (eps && parse_endpoints(cfg, eps, u)) return TR_ECONFIG;
    if (!eps && !u->service) u->service = name; /* discovery by the upstream's own name */
    u->lb = (tr_lb_policy_t)lb;
    u->max_idle = (uint32_t)idle;
    tr_config_get_object(cfg, o, "bulkhead", &sub);
    if (tr_bulkhead_config_from_json(cfg, sub, &u->bulkhead)) return TR_ECONFIG;
    tr_config_get_object(cfg, o, "circuit_breaker", &sub);
    u->has_breaker = sub != NULL;
    if (tr_breaker_config_from_json(cfg, sub, &u->breaker)) return TR_ECONFIG;
    tr_config_get_object(cfg, o, "outlier_detection", &sub);
    u->has_outlier = sub != NULL;
    if (tr_outlier_config_from_json(cfg, sub, &u->outlier)) return TR_ECONFIG;
    tr_config_get_object(cfg, o, "retry_budget", &sub);
    if (tr_retry_budget_config_from_json(cfg, sub, &u->budget_percent, &u->budget_min))
        return TR_ECONFIG;

    eff(out, "service", u->service ? json_string(u->service) : json_null());
    json_t *ej = json_array();
    for (size_t i = 0; i < u->naddrs; i++)
        json_array_append_new(
            ej, json_pack("{s:s, s:i}", "address", u->addrs[i], "weight", (int)u->weights[i]));
    eff(out, "endpoints", ej);
    eff(out, "load_balancer", json_string(lb_names[lb]));
    eff(out, "connect_timeout", dur_json(u->connect_timeout_ms));
    eff(out, "max_idle", json_integer(u->max_idle));
    eff(out, "bulkhead",
        json_pack("{s:i, s:i, s:i}", "max_connections",
                  (int)u->bulkhead.max[TR_BULKHEAD_CONNECTIONS], "max_pending_requests",
                  (int)u->bulkhead.max[TR_BULKHEAD_PENDING], "max_requests",
                  (int)u->bulkhead.max[TR_BULKHEAD_REQUESTS]));
    const tr_breaker_config_t *b = &u->breaker;
    eff(out, "circuit_breaker",
        !u->has_breaker
            ? json_null()
            : json_pack("{s:i, s:f, s:i, s:i, s:o, s:f, s:o, s:i, s:o}", "consecutive_failures",
                        (int)b->consecutive_failures, "failure_rate", b->failure_rate, "window",
                        (int)b->window_size, "minimum_calls", (int)b->minimum_calls, "slow_call",
                        dur_json(b->slow_call_ms), "slow_call_rate", b->slow_call_rate, "open",
                        dur_json(b->open_ms), "half_open_calls", (int)b->half_open_calls,
                        "half_open_timeout", dur_json(b->half_open_timeout_ms)));
    const tr_outlier_config_t *oc = &u->outlier;
    eff(out, "outlier_detection",
        !u->has_outlier
            ? json_null()
            : json_pack("{s:i, s:i, s:o, s:o, s:f, s:o}", "consecutive_5xx",
                        (int)oc->consecutive_5xx, "consecutive_gateway_failure",
                        (int)oc->consecutive_gateway_failure, "base_ejection_time",
                        dur_json(oc->base_ejection_ms), "max_ejection_time",
                        dur_json(oc->max_ejection_ms), "max_ejection_percent",
                        oc->max_ejection_percent, "interval", dur_json(oc->interval_ms)));
    eff(out, "retry_budget",
        json_pack("{s:f, s:i}", "percent", u->budget_percent, "min_concurrency",
                  (int)u->budget_min));
    return 0;
}

static int compile_upstreams(tr_config_t *cfg, gw_config_t *c, json_t *out)
{
    json_t *ups;
    if (tr_config_get_object(cfg, c->root, "upstreams", &ups)) return TR_ECONFIG;
    if (ups && !json_is_object(ups))
        return tr_config_fail(cfg, c->root, "upstreams",
                              "expected a mapping of upstream name to its settings");
    c->nupstreams = ups ? json_object_size(ups) : 0;
    c->upstreams = tr_calloc(c->nupstreams + 1, sizeof(*c->upstreams));
    const char *name;
    json_t *o;
    size_t i = 0;
    json_object_foreach(ups, name, o)
    {
        json_t *e = json_object();
        eff(out, name, e);
        c->upstreams[i].index = i;
        if (compile_upstream(cfg, name, o, &c->upstreams[i], e)) return TR_ECONFIG;
        i++;
    }
    return 0;
}

static gw_upstream_t *find_upstream(gw_config_t *c, const char *name)
{
    for (size_t i = 0; i < c->nupstreams; i++)
        if (!strcmp(c->upstreams[i].name, name)) return &c->upstreams[i];
    return NULL;
}

/* ---- route policies */

static int compile_header_ops(tr_config_t *cfg, const json_t *o, gw_headers_t *h, json_t *out)
{
    static const char *const keys[] = {"add", "remove", NULL};
    if (!o) return 0;
    if (!json_is_object(o) || tr_config_check_keys(cfg, o, keys)) {
        return json_is_object(o)
                   ? TR_ECONFIG
                   : tr_config_fail(cfg, o, NULL, "expected {add: {...}, remove: [...]}");
    }
    json_t *add = json_object_get(o, "add"), *rm = json_object_get(o, "remove");
    if (add && !json_is_object(add)) return tr_config_fail(cfg, o, "add", "expected a mapping");
    if (rm && !json_is_array(rm)) return tr_config_fail(cfg, o, "remove", "expected a list");
    h->ops = tr_calloc(json_object_size(add) + json_array_size(rm) + 1, sizeof(*h->ops));
    size_t i;
    json_t *v;
    json_array_foreach(rm, i, v)
    {
        if (!json_is_string(v)) return tr_config_fail(cfg, rm, NULL, "expected header names");
        h->ops[h->n++] = (gw_header_op_t){json_string_value(v), NULL, json_string_length(v), 0};
    }
    const char *k;
    json_object_foreach(add, k, v)
    {
        if (!json_is_string(v)) return tr_config_fail(cfg, add, k, "expected a string value");
        h->ops[h->n++] =
            (gw_header_op_t){k, json_string_value(v), strlen(k), json_string_length(v)};
    }
    json_object_set_new(out, "add", add ? json_incref(add) : json_object());
    json_object_set_new(out, "remove", rm ? json_incref(rm) : json_array());
    return 0;
}

static int compile_cors(tr_config_t *cfg, const json_t *o, gw_cors_t *c, json_t *out)
{
    static const char *const keys[] = {"allow_origins",
                                       "allow_methods",
                                       "allow_headers",
                                       "expose_headers",
                                       "max_age",
                                       "allow_credentials",
                                       NULL};
    if (!o) return 0;
    if (!json_is_object(o)) return tr_config_fail(cfg, o, NULL, "expected a mapping");
    if (tr_config_check_keys(cfg, o, keys)) return TR_ECONFIG;
    uint64_t max_age;
    c->on = true;
    if (get_strings(cfg, o, "allow_origins", &c->origins, &c->norigins) ||
        tr_config_get_string(cfg, o, "allow_methods", "GET, POST, PUT, PATCH, DELETE, OPTIONS",
                             &c->methods) ||
        tr_config_get_string(cfg, o, "allow_headers",
                             "authorization, content-type, x-correlation-id", &c->headers) ||
        tr_config_get_string(cfg, o, "expose_headers", "x-correlation-id, x-request-id",
                             &c->expose) ||
        tr_config_get_duration(cfg, o, "max_age", 600000, &max_age) ||
        tr_config_get_bool(cfg, o, "allow_credentials", false, &c->credentials))
        return TR_ECONFIG;
    c->max_age_s = max_age / 1000;
    eff(out, "allow_origins", strings_json(c->origins, c->norigins));
    eff(out, "allow_methods", json_string(c->methods));
    eff(out, "allow_headers", json_string(c->headers));
    eff(out, "expose_headers", json_string(c->expose));
    eff(out, "max_age", dur_json(max_age));
    eff(out, "allow_credentials", json_boolean(c->credentials));
    return 0;
}

static int compile_fallback(tr_config_t *cfg, gw_config_t *c, const json_t *o, gw_fallback_t *f,
                            json_t *out)
{
    static const char *const keys[] = {"status", "body", "content_type", "upstream", NULL};
    if (!o) return 0;
    if (!json_is_object(o)) return tr_config_fail(cfg, o, NULL, "expected a mapping");
    if (tr_config_check_keys(cfg, o, keys)) return TR_ECONFIG;
    int64_t status;
    const char *up;
    json_t *body = json_object_get(o, "body");
    f->on = true;
    if (tr_config_get_int(cfg, o, "status", 200, 100, 599, &status) ||
        tr_config_get_string(cfg, o, "upstream", NULL, &up))
        return TR_ECONFIG;
    f->status = (int)status;
    if (body && (json_is_object(body) || json_is_array(body))) {
        /* A structured body is served as JSON; keep its text with the config. */
        char *text = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_object_set_new(out, "body", json_string(text));
        f->body = json_string_value(json_object_get(out, "body"));
        free(text);
        if (tr_config_get_string(cfg, o, "content_type", "application/json", &f->content_type))
            return TR_ECONFIG;
    } else {
        if (tr_config_get_string(cfg, o, "body", "", &f->body) ||
            tr_config_get_string(cfg, o, "content_type", "text/plain; charset=utf-8",
                                 &f->content_type))
            return TR_ECONFIG;
        eff(out, "body", json_string(f->body));
    }
    f->body_len = strlen(f->body);
    if (up && !(f->upstream = find_upstream(c, up)))
        return tr_config_fail(cfg, o, "upstream", "no upstream named \"%s\" in `upstreams`", up);
    eff(out, "status", json_integer(f->status));
    eff(out, "content_type", json_string(f->content_type));
    eff(out, "upstream", up ? json_string(up) : json_null());
    return 0;
}

static int compile_rate_limit(tr_config_t *cfg, const json_t *o, gw_route_t *r, json_t *out)
{
    if (!o) return 0;
    if (!json_is_object(o)) return tr_config_fail(cfg, o, NULL, "expected a mapping");
    gw_ratelimit_t *rl = tr_calloc(1, sizeof(*rl));
    r->rate_limit = rl;
    if (tr_ratelimit_config_from_json(cfg, o, &rl->cfg)) return TR_ECONFIG;
    const char *key = rl->cfg.key && *rl->cfg.key ? rl->cfg.key : "route";
    if (!strncmp(key, "header:", 7) && key[7]) {
        rl->key = GW_RL_KEY_HEADER;
        rl->header = key + 7;
    } else if (!strcmp(key, "route")) {
        rl->key = GW_RL_KEY_ROUTE;
    } else if (!strcmp(key, "subject")) {
        rl->key = GW_RL_KEY_SUBJECT;
    } else if (!strcmp(key, "client_ip")) {
        rl->key = GW_RL_KEY_IP;
    } else {
        return tr_config_fail(
            cfg, o, "key", "expected route, subject, client_ip or header:<name>, got \"%s\"", key);
    }
    if (tr_ratelimit_init(&rl->bucket, &rl->cfg))
        return tr_config_fail(cfg, o, "rate", "the rate must allow at least one request");
    if (rl->key != GW_RL_KEY_ROUTE &&
        !(rl->table = tr_ratelimit_table_new(&rl->cfg, rl->cfg.max_keys, NULL)))
        return tr_config_fail(cfg, o, NULL, "cannot build a rate-limit table from these values");
    char rate[64];
    snprintf(rate, sizeof(rate), "%g/%llums", rl->cfg.count, (unsigned long long)rl->cfg.period_ms);
    eff(out, "rate", json_string(rate));
    eff(out, "burst", json_integer(rl->bucket.burst));
    eff(out, "key", json_string(key));
    eff(out, "max_keys", json_integer(rl->cfg.max_keys));
    return 0;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    tr_buf_t b = TR_BUF_INIT;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0 && b.len < (1u << 20))
        tr_buf_append(&b, chunk, n);
    fclose(f);
    tr_buf_append(&b, "", 1);
    *len = b.len - 1;
    return b.data;
}

/* A relative key file is relative to the config file's directory. */
static void resolve_path(const char *cfg_path, const char *file, char *out, size_t n)
{
    const char *slash = cfg_path ? strrchr(cfg_path, '/') : NULL;
    if (file[0] == '/' || !slash)
        snprintf(out, n, "%s", file);
    else
        snprintf(out, n, "%.*s/%s", (int)(slash - cfg_path), cfg_path, file);
}

static int add_jwt_key(tr_config_t *cfg, const char *cfg_path, const json_t *k,
                       tr_jwt_keyset_t *set, json_t *out)
{
    static const char *const keys[] = {"file", "pem", "secret", "secret_base64url",
                                       "alg",  "kid", NULL};
    if (!json_is_object(k) || tr_config_check_keys(cfg, k, keys))
        return json_is_object(k) ? TR_ECONFIG : tr_config_fail(cfg, k, NULL, "expected a mapping");
    const char *file, *pem, *secret, *secret64, *alg_name, *kid;
    if (tr_config_get_string(cfg, k, "secret_base64url", NULL, &secret64) ||
        tr_config_get_string(cfg, k, "file", NULL, &file) ||
        tr_config_get_string(cfg, k, "pem", NULL, &pem) ||
        tr_config_get_string(cfg, k, "secret", NULL, &secret) ||
        tr_config_get_string(cfg, k, "alg", NULL, &alg_name) ||
        tr_config_get_string(cfg, k, "kid", NULL, &kid))
        return TR_ECONFIG;
    int alg = alg_name ? tr_jwt_alg_parse(alg_name) : -1;
    if (alg < 0)
        return tr_config_fail(cfg, k, "alg",
                              "every key pins one algorithm: HS256, HS384, HS512, RS256, RS384, "
                              "RS512, PS256, ES256 or ES384");
    int rc;
    unsigned char raw[512];
    size_t secret_len = secret ? strlen(secret) : 0;
    if (secret64) {
        int n = tr_jwt_base64url_decode(secret64, strlen(secret64), raw, sizeof(raw));
        if (n < 0) return tr_config_fail(cfg, k, "secret_base64url", "not valid base64url");
        secret = (const char *)raw;
        secret_len = (size_t)n;
    }
    if (secret) {
        rc = tr_jwt_keyset_add_hmac(set, kid, (tr_jwt_alg_t)alg, secret, secret_len);
        if (rc)
            return tr_config_fail(cfg, k, secret64 ? "secret_base64url" : "secret",
                                  "an %s secret must be at least %d bytes long", alg_name,
                                  alg == TR_JWT_HS256   ? 32
                                  : alg == TR_JWT_HS384 ? 48
                                                        : 64);
    } else if (file || pem) {
        size_t len = pem ? strlen(pem) : 0;
        char path[4096], *text = NULL;
        if (file) {
            resolve_path(cfg_path, file, path, sizeof(path));
            if (!(text = read_file(path, &len)))
                return tr_config_fail(cfg, k, "file", "cannot read %s", path);
        }
        rc = tr_jwt_keyset_add_pem(set, kid, (tr_jwt_alg_t)alg, text ? text : pem, len);
        free(text);
        if (rc)
            return tr_config_fail(cfg, k, file ? "file" : "pem",
                                  "not a public key usable with %s (%s)", alg_name,
                                  tr_strerror(rc));
    } else {
        return tr_config_fail(cfg, k, NULL, "a key needs `file`, `pem` or `secret`");
    }
    json_array_append_new(out, json_pack("{s:s, s:s?, s:s}", "alg", alg_name, "kid", kid, "source",
                                         secret ? "secret"
                                         : file ? file
                                                : "pem"));
    return 0;
}

static int compile_jwt(tr_config_t *cfg, const char *cfg_path, const json_t *o, gw_route_t *r,
                       json_t *out)
{
    static const char *const keys[] = {"issuers",        "audiences", "keys",
                                       "jwks",           "leeway",    "required_claims",
                                       "forward_claims", "optional",  NULL};
    if (!json_is_object(o)) return tr_config_fail(cfg, o, NULL, "expected a mapping");
    if (tr_config_check_keys(cfg, o, keys)) return TR_ECONFIG;
    gw_jwt_t *j = tr_calloc(1, sizeof(*j));
    r->jwt = j;
    tr_jwt_verifier_t *v = &j->verifier;
    const char **iss, **aud, **req;
    uint64_t leeway;
    json_t *jwks, *klist, *fwd;
    if (get_strings(cfg, o, "issuers", &iss, &v->nissuers) ||
        get_strings(cfg, o, "audiences", &aud, &v->naudiences) ||
        get_strings(cfg, o, "required_claims", &req, &v->nrequired) ||
        tr_config_get_duration(cfg, o, "leeway", 30000, &leeway) ||
        tr_config_get_bool(cfg, o, "optional", false, &j->optional) ||
        tr_config_get_object(cfg, o, "jwks", &jwks) ||
        tr_config_get_array(cfg, o, "keys", &klist) ||
        tr_config_get_object(cfg, o, "forward_claims", &fwd))
        return TR_ECONFIG;
    v->issuers = iss;
    v->audiences = aud;
    v->required = req;
    v->leeway_s = leeway / 1000;
    tr_jwt_keyset_t *set = tr_jwt_keyset_new();
    json_t *ekeys = json_array();
    eff(out, "keys", ekeys);
    size_t i;
    json_t *k;
    json_array_foreach(klist, i, k)
    {
        if (add_jwt_key(cfg, cfg_path, k, set, ekeys)) {
            tr_jwt_keyset_release(set);
            return TR_ECONFIG;
        }
    }
    atomic_store(&j->keys, set);
    if (jwks) {
        static const char *const jk[] = {"url", "refresh", "min_refresh_interval", "timeout", NULL};
        if (tr_config_check_keys(cfg, jwks, jk) ||
            tr_config_get_string(cfg, jwks, "url", NULL, &j->jwks_url) ||
            tr_config_get_duration(cfg, jwks, "refresh", 300000, &j->jwks_refresh_ms) ||
            tr_config_get_duration(cfg, jwks, "min_refresh_interval", 30000,
                                   &j->jwks_min_interval_ms) ||
            tr_config_get_duration(cfg, jwks, "timeout", 10000, &j->jwks_timeout_ms))
            return TR_ECONFIG;
        if (!j->jwks_url || strncmp(j->jwks_url, "http://", 7))
            return tr_config_fail(cfg, jwks, "url", "expected an http:// URL of a JWKS document");
        eff(out, "jwks",
            json_pack("{s:s, s:o}", "url", j->jwks_url, "refresh", dur_json(j->jwks_refresh_ms)));
    } else {
        eff(out, "jwks", json_null());
    }
    if (!klist && !jwks)
        return tr_config_fail(cfg, o, NULL, "give the verification keys: `keys` and/or `jwks`");
    j->claims = tr_calloc(json_object_size(fwd) + 1, sizeof(*j->claims));
    const char *claim;
    json_t *hv;
    json_object_foreach(fwd, claim, hv)
    {
        if (!json_is_string(hv))
            return tr_config_fail(cfg, fwd, claim, "expected the header name to forward it in");
        j->claims[j->nclaims++] = (gw_claim_header_t){claim, json_string_value(hv)};
    }
    eff(out, "issuers", strings_json(iss, v->nissuers));
    eff(out, "audiences", strings_json(aud, v->naudiences));
    eff(out, "required_claims", strings_json(req, v->nrequired));
    eff(out, "leeway", dur_json(leeway));
    eff(out, "optional", json_boolean(j->optional));
    eff(out, "forward_claims", fwd ? json_incref(fwd) : json_object());
    return 0;
}

static int compile_auth(tr_config_t *cfg, const char *cfg_path, const json_t *o, gw_route_t *r,
                        json_t *out)
{
    static const char *const keys[] = {"jwt", NULL};
    if (!o) return 0;
    if (!json_is_object(o) || tr_config_check_keys(cfg, o, keys))
        return json_is_object(o) ? TR_ECONFIG : tr_config_fail(cfg, o, NULL, "expected {jwt: ...}");
    json_t *jwt = json_object_get(o, "jwt");
    if (!jwt) return 0;
    json_t *e = json_object();
    eff(out, "jwt", e);
    return compile_jwt(cfg, cfg_path, jwt, r, e);
}

static int compile_aggregate(tr_config_t *cfg, gw_config_t *c, const json_t *o, gw_route_t *r,
                             json_t *out)
{
    static const char *const keys[] = {"parts", NULL};
    static const char *const pkeys[] = {"name", "upstream", "path", "timeout", NULL};
    if (!o) return 0;
    json_t *parts;
    if (!json_is_object(o) || tr_config_check_keys(cfg, o, keys))
        return json_is_object(o) ? TR_ECONFIG
                                 : tr_config_fail(cfg, o, NULL, "expected {parts: [...]}");
    if (tr_config_get_array(cfg, o, "parts", &parts)) return TR_ECONFIG;
    if (!parts || !json_array_size(parts))
        return tr_config_fail(cfg, o, "parts", "an aggregate route needs at least one part");
    r->parts = tr_calloc(json_array_size(parts), sizeof(*r->parts));
    json_t *ep = json_array();
    eff(out, "parts", ep);
    size_t i;
    json_t *p;
    json_array_foreach(parts, i, p)
    {
        gw_part_t *pt = &r->parts[r->nparts++];
        const char *up;
        if (!json_is_object(p)) return tr_config_fail(cfg, parts, NULL, "a part is a mapping");
        if (tr_config_check_keys(cfg, p, pkeys) ||
            tr_config_get_string(cfg, p, "name", NULL, &pt->name) ||
            tr_config_get_string(cfg, p, "upstream", NULL, &up) ||
            tr_config_get_string(cfg, p, "path", "/", &pt->path) ||
            tr_config_get_duration(cfg, p, "timeout", r->timeout_ms, &pt->timeout_ms))
            return TR_ECONFIG;
        if (!pt->name)
            return tr_config_fail(cfg, p, "name", "each part needs a name (its key in the result)");
        if (!up || !(pt->upstream = find_upstream(c, up)))
            return tr_config_fail(cfg, p, "upstream", "no upstream named \"%s\" in `upstreams`",
                                  up ? up : "");
        json_array_append_new(ep,
                              json_pack("{s:s, s:s, s:s, s:o}", "name", pt->name, "upstream", up,
                                        "path", pt->path, "timeout", dur_json(pt->timeout_ms)));
    }
    return 0;
}

static int compile_retry(tr_config_t *cfg, const json_t *route, gw_route_t *r, json_t *out)
{
    json_t *o;
    uint64_t buffer;
    if (tr_config_get_object(cfg, route, "retry", &o) ||
        tr_retry_config_from_json(cfg, o, &r->retry) ||
        tr_config_get_size(cfg, route, "retry_buffer", DEFAULT_RETRY_BUFFER, &buffer))
        return TR_ECONFIG;
    r->retry_buffer = (size_t)buffer;
    json_t *codes = json_array();
    for (uint32_t i = 0; i < r->retry.n_status_codes; i++)
        json_array_append_new(codes, json_integer(r->retry.status_codes[i]));
    json_t *on = json_array();
#define GW_RETRY_WORD(name, bit, word)                                                             \
    if (r->retry.retry_on & (bit)) json_array_append_new(on, json_string(word));
    TR_RETRY_ON_MAP(GW_RETRY_WORD)
#undef GW_RETRY_WORD
    eff(out, "retry",
        json_pack("{s:i, s:o, s:o, s:b, s:o, s:o, s:o}", "attempts", (int)r->retry.attempts,
                  "retry_on", on, "retriable_status_codes", codes, "allow_non_idempotent",
                  r->retry.allow_non_idempotent, "backoff_base", dur_json(r->retry.backoff_base_ms),
                  "backoff_max", dur_json(r->retry.backoff_max_ms), "retry_after_max",
                  dur_json(r->retry.retry_after_max_ms)));
    eff(out, "retry_buffer", json_integer((json_int_t)buffer));
    return 0;
}

static const char *const policy_keys[] = {"timeout", "per_try_timeout", "retry",     "retry_buffer",
                                          "auth",    "rate_limit",      "fallback",  "headers",
                                          "cors",    "circuit_breaker", "aggregate", NULL};

/* Accepts the router's keys and the policy keys at a route's top level, nothing else. */
static int check_route_keys(tr_config_t *cfg, const json_t *def)
{
    size_t nr = 0, np = 0;
    while (tr_router_route_keys[nr])
        nr++;
    while (policy_keys[np])
        np++;
    const char *all[64];
    if (nr + np + 1 > sizeof(all) / sizeof(all[0])) abort();
    memcpy(all, tr_router_route_keys, nr * sizeof(char *));
    memcpy(all + nr, policy_keys, (np + 1) * sizeof(char *));
    return tr_config_check_keys(cfg, def, all);
}

static int compile_route(tr_config_t *cfg, gw_config_t *c, tr_route_t *route, gw_route_t *r,
                         json_t *out)
{
    const json_t *def = tr_route_def(route);
    json_t *o;
    r->route = route;
    r->name = tr_route_name(route);
    r->index = tr_route_index(route);
    tr_route_set_data(route, r);
    if (check_route_keys(cfg, def)) return TR_ECONFIG;
    if (tr_config_get_duration(cfg, def, "timeout", DEFAULT_TIMEOUT_MS, &r->timeout_ms) ||
        tr_config_get_duration(cfg, def, "per_try_timeout", 0, &r->per_try_timeout_ms))
        return TR_ECONFIG;
    eff(out, "name", json_string(r->name));
    eff(out, "match", json_incref(json_object_get(def, "match")) ?: json_object());
    json_t *v;
    eff(out, "strip_prefix", json_boolean(json_is_true(json_object_get(def, "strip_prefix"))));
    eff(out, "rewrite", (v = json_object_get(def, "rewrite")) ? json_incref(v) : json_null());
    eff(out, "subsets", (v = json_object_get(def, "subsets")) ? json_incref(v) : json_array());
    eff(out, "timeout", dur_json(r->timeout_ms));
    eff(out, "per_try_timeout", dur_json(r->per_try_timeout_ms));
    if (compile_retry(cfg, def, r, out)) return TR_ECONFIG;

    tr_route_destination_t *d;
    size_t nd = tr_route_destinations(route, &d);
    json_t *dests = json_array();
    eff(out, "destinations", dests);
    for (size_t i = 0; i < nd; i++) {
        gw_upstream_t *u = find_upstream(c, d[i].upstream);
        if (!u)
            return tr_config_fail(cfg, def, NULL,
                                  "route %s sends to upstream \"%s\", which is not in `upstreams`",
                                  r->name, d[i].upstream);
        d[i].target = u;
        json_array_append_new(
            dests, json_pack("{s:s, s:i}", "upstream", d[i].upstream, "weight", (int)d[i].weight));
    }
    json_t *e;
    tr_config_get_object(cfg, def, "headers", &o);
    if (o) {
        static const char *const hk[] = {"request", "response", NULL};
        if (!json_is_object(o) || tr_config_check_keys(cfg, o, hk))
            return json_is_object(o) ? TR_ECONFIG
                                     : tr_config_fail(cfg, def, "headers", "expected a mapping");
        json_t *rq = json_object(), *rs = json_object();
        eff(out, "headers", json_pack("{s:o, s:o}", "request", rq, "response", rs));
        json_object_set_new(rq, "add", json_object());
        json_object_set_new(rq, "remove", json_array());
        json_object_set_new(rs, "add", json_object());
        json_object_set_new(rs, "remove", json_array());
        if (compile_header_ops(cfg, json_object_get(o, "request"), &r->req_headers, rq) ||
            compile_header_ops(cfg, json_object_get(o, "response"), &r->res_headers, rs))
            return TR_ECONFIG;
    }
    if (!o)
        eff(out, "headers",
            json_pack("{s:{s:{}, s:[]}, s:{s:{}, s:[]}}", "request", "add", "remove", "response",
                      "add", "remove"));
    eff(out, "cors", e = json_object());
    if (compile_cors(cfg, json_object_get(def, "cors"), &r->cors, e)) return TR_ECONFIG;
    if (!r->cors.on) eff(out, "cors", json_null());
    eff(out, "fallback", e = json_object());
    if (compile_fallback(cfg, c, json_object_get(def, "fallback"), &r->fallback, e))
        return TR_ECONFIG;
    if (!r->fallback.on) eff(out, "fallback", json_null());
    eff(out, "rate_limit", e = json_object());
    if (compile_rate_limit(cfg, json_object_get(def, "rate_limit"), r, e)) return TR_ECONFIG;
    if (!r->rate_limit) eff(out, "rate_limit", json_null());
    eff(out, "auth", e = json_object());
    if (compile_auth(cfg, c->path, json_object_get(def, "auth"), r, e)) return TR_ECONFIG;
    tr_config_get_object(cfg, def, "circuit_breaker", &o);
    r->has_breaker = o != NULL;
    if (tr_breaker_config_from_json(cfg, o, &r->breaker)) return TR_ECONFIG;
    eff(out, "circuit_breaker", o ? json_incref(o) : json_null());
    eff(out, "aggregate", e = json_object());
    if (compile_aggregate(cfg, c, json_object_get(def, "aggregate"), r, e)) return TR_ECONFIG;
    if (!r->nparts) eff(out, "aggregate", json_null());
    if (!nd && !r->nparts && !r->fallback.on)
        return tr_config_fail(cfg, def, NULL,
                              "route %s has nowhere to send requests: give `upstream`, "
                              "`destinations`, `aggregate` or `fallback`",
                              r->name);
    return 0;
}

static int compile_routes(tr_config_t *cfg, gw_config_t *c, json_t *out)
{
    json_t *routes;
    if (tr_config_get_array(cfg, c->root, "routes", &routes)) return TR_ECONFIG;
    if (tr_router_compile(cfg, routes, &c->router)) return TR_ECONFIG;
    c->nroutes = tr_router_count(c->router);
    c->routes = tr_calloc(c->nroutes + 1, sizeof(*c->routes));
    for (size_t i = 0; i < c->nroutes; i++) {
        json_t *e = json_object();
        json_array_append_new(out, e);
        if (compile_route(cfg, c, tr_router_route(c->router, i), &c->routes[i], e))
            return TR_ECONFIG;
    }
    return 0;
}

/* ---- top level */

static int compile_top(tr_config_t *cfg, gw_config_t *c, json_t *out)
{
    static const char *const keys[] = {"listen", "workers",   "admin",  "discovery", "access_log",
                                       "limits", "upstreams", "routes", "tracing",   NULL};
    static const char *const tracing_keys[] = {TR_TRACING_CONFIG_KEYS, NULL};
    static const char *const admin_keys[] = {"listen", NULL};
    static const char *const disc_keys[] = {"registry", "datacenter", NULL};
    static const char *const limit_keys[] = {"max_body", "header_timeout", "idle_timeout", NULL};
    json_t *root = c->root, *admin, *disc, *limits, *tracing;
    int64_t workers;
    if (tr_config_check_keys(cfg, root, keys) ||
        tr_config_get_string(cfg, root, "listen", DEFAULT_LISTEN, &c->listen) ||
        tr_config_get_int(cfg, root, "workers", 0, 0, 256, &workers) ||
        tr_config_get_string(cfg, root, "access_log", "stdout", &c->access_log) ||
        tr_config_get_object(cfg, root, "admin", &admin) ||
        tr_config_get_object(cfg, root, "discovery", &disc) ||
        tr_config_get_object(cfg, root, "limits", &limits) ||
        tr_config_check_keys(cfg, admin, admin_keys) ||
        tr_config_get_string(cfg, admin, "listen", DEFAULT_ADMIN, &c->admin_listen) ||
        tr_config_check_keys(cfg, disc, disc_keys) ||
        tr_config_get_string(cfg, disc, "registry", "127.0.0.1:8500", &c->registry) ||
        tr_config_get_string(cfg, disc, "datacenter", NULL, &c->datacenter) ||
        tr_config_check_keys(cfg, limits, limit_keys) ||
        tr_config_get_size(cfg, limits, "max_body", 64u << 20, &c->max_body_bytes) ||
        tr_config_get_duration(cfg, limits, "header_timeout", 10000, &c->header_timeout_ms) ||
        tr_config_get_duration(cfg, limits, "idle_timeout", 60000, &c->idle_timeout_ms) ||
        tr_config_get_object(cfg, root, "tracing", &tracing) ||
        tr_config_check_keys(cfg, tracing, tracing_keys) ||
        tr_sampler_config(cfg, tracing, &c->sampler))
        return TR_ECONFIG;
    tr_exporter_options_init(&c->exporter);
    c->exporter.service = "gateway";
    if (tracing && tr_exporter_config(cfg, tracing, &c->exporter)) return TR_ECONFIG;
    c->tracing = tracing && json_object_get(tracing, "endpoint");
    tr_http_endpoint_t ep;
    if (tr_http_endpoint_parse(&ep, c->registry))
        return tr_config_fail(cfg, disc, "registry",
                              "expected ip:port of a Consul-compatible registry");
    c->workers = (int)workers;
    eff(out, "listen", json_string(c->listen));
    eff(out, "workers", json_integer(workers));
    eff(out, "admin", json_pack("{s:s}", "listen", c->admin_listen));
    eff(out, "discovery",
        json_pack("{s:s, s:s?}", "registry", c->registry, "datacenter", c->datacenter));
    eff(out, "access_log", json_string(c->access_log));
    eff(out, "tracing",
        json_pack("{s:s, s:f, s:s?, s:s, s:I, s:I, s:o, s:o, s:i}", "sampler",
                  tr_sampler_kind_name(c->sampler.kind), "ratio", c->sampler.ratio, "endpoint",
                  c->tracing ? c->exporter.endpoint : NULL, "service", c->exporter.service,
                  "queue_size", (json_int_t)c->exporter.queue_capacity, "batch_size",
                  (json_int_t)c->exporter.batch_size, "flush_interval",
                  dur_json(c->exporter.flush_interval_ms), "export_timeout",
                  dur_json(c->exporter.export_timeout_ms), "max_retries",
                  (int)c->exporter.max_retries));
    eff(out, "limits",
        json_pack("{s:I, s:o, s:o}", "max_body", (json_int_t)c->max_body_bytes, "header_timeout",
                  dur_json(c->header_timeout_ms), "idle_timeout", dur_json(c->idle_timeout_ms)));
    return 0;
}

static void config_free(gw_config_t *c)
{
    for (size_t i = 0; i < c->nupstreams; i++) {
        free(c->upstreams[i].addrs);
        free(c->upstreams[i].weights);
    }
    free(c->upstreams);
    for (size_t i = 0; i < c->nroutes; i++) {
        gw_route_t *r = &c->routes[i];
        free(r->req_headers.ops);
        free(r->res_headers.ops);
        free(r->cors.origins);
        free(r->parts);
        if (r->rate_limit) {
            tr_ratelimit_table_free(&r->rate_limit->table);
            free(r->rate_limit);
        }
        if (r->jwt) {
            tr_jwt_keyset_release(atomic_load(&r->jwt->keys));
            tr_jwt_keyset_release(r->jwt->retired);
            free((void *)r->jwt->verifier.issuers);
            free((void *)r->jwt->verifier.audiences);
            free((void *)r->jwt->verifier.required);
            free(r->jwt->claims);
            free(r->jwt);
        }
    }
    free(c->routes);
    tr_router_free(c->router);
    json_decref(c->effective);
    if (c->owns_src) tr_config_free(c->src);
    free((void *)c->path);
    free(c);
}

static int compile(const char *path, tr_config_t *cfg, json_t *root, bool owns, gw_config_t **out,
                   char *err, size_t errlen)
{
    gw_config_t *c = tr_calloc(1, sizeof(*c));
    c->refs = 1;
    c->src = cfg;
    c->owns_src = owns;
    c->root = root;
    c->path = tr_strdup(path ? path : "");
    c->effective = json_object();
    json_t *ups = json_object(), *routes = json_array();
    if (compile_top(cfg, c, c->effective) || compile_upstreams(cfg, c, ups) ||
        compile_routes(cfg, c, routes)) {
        snprintf(err, errlen, "%s", tr_config_error(cfg));
        json_decref(ups);
        json_decref(routes);
        config_free(c);
        return TR_ECONFIG;
    }
    eff(c->effective, "upstreams", ups);
    eff(c->effective, "routes", routes);
    *out = c;
    return 0;
}

int gw_config_load(const char *path, const char *text, gw_config_t **out, char *err, size_t errlen)
{
    tr_config_t *cfg;
    *out = NULL;
    int rc = text ? tr_config_load_string(path, text, strlen(text), &cfg, err, errlen)
                  : tr_config_load_file(path, &cfg, err, errlen);
    if (rc) return rc;
    return compile(path, cfg, tr_config_root(cfg), true, out, err, errlen);
}

int gw_config_load_tree(tr_config_t *cfg, json_t *root, gw_config_t **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!json_is_object(root)) {
        snprintf(err, errlen, "%s", "the gateway section must be a mapping");
        return TR_ECONFIG;
    }
    return compile(tr_config_name(cfg), cfg, root, false, out, err, errlen);
}

void gw_config_retain(gw_config_t *c)
{
    atomic_fetch_add(&c->refs, 1);
}

void gw_config_release(gw_config_t *c)
{
    if (c && atomic_fetch_sub(&c->refs, 1) == 1) config_free(c);
}
