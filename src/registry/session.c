/* Consul's sessions: lifecycle, TTL expiry, persistence, and the /v1/session endpoints. */
#include "registry/session.h"

#include "core/buf.h"
#include "core/mem.h"
#include "registry/blocking.h"
#include "trellis/error.h"
#include "trellis/http_json.h"
#include "trellis/log.h"

#include <jansson.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BODY_BYTES (64 * 1024)
/* Consul's defaults and limits: lock-delay 15s, at most 60s; TTL timers run 2x the TTL. */
#define DEFAULT_LOCK_DELAY_NS (15ULL * 1000000000ULL)
#define MAX_LOCK_DELAY_NS     (60ULL * 1000000000ULL)
#define TTL_MULTIPLIER        2
/* A bare LockDelay number below this is seconds, not nanoseconds (Consul's rule). */
#define LOCK_DELAY_SECONDS_BELOW 1000

/* One session. Freed in its timer's close callback. */
typedef struct sess_s {
    uv_timer_t timer;
    tr_session_t *mod; /* NULL once closed */
    char id[37];
    char *name, *node, *ttl; /* ttl as the client wrote it, "" for none */
    json_t *checks;          /* array of check IDs */
    uint64_t lock_delay_ns, ttl_ms, create_index, modify_index;
    bool behavior_delete;
} sess_t;

struct tr_session_s {
    uv_loop_t *loop;
    tr_store_t *store;
    tr_kv_t *kv;
    char *node;
    sess_t **v;
    size_t n, cap;
    tr_session_check_fn check_status;
    void *check_data;
};

/* ---- the set */

static sess_t *find(const tr_session_t *m, const char *id)
{
    for (size_t i = 0; i < m->n; i++)
        if (!strcmp(m->v[i]->id, id)) return m->v[i];
    return NULL;
}

static void on_sess_closed(uv_handle_t *h)
{
    sess_t *s = h->data;
    free(s->name);
    free(s->node);
    free(s->ttl);
    json_decref(s->checks);
    free(s);
}

/* Takes s out of the set and closes its timer; the memory goes in the close callback. */
static void sess_drop(tr_session_t *m, sess_t *s)
{
    for (size_t i = 0; i < m->n; i++) {
        if (m->v[i] != s) continue;
        memmove(m->v + i, m->v + i + 1, (m->n - i - 1) * sizeof(*m->v));
        m->n--;
        break;
    }
    s->mod = NULL;
    uv_timer_stop(&s->timer);
    uv_close((uv_handle_t *)&s->timer, on_sess_closed);
}

static void sess_add(tr_session_t *m, sess_t *s)
{
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 16;
        m->v = tr_realloc(m->v, m->cap * sizeof(*m->v));
    }
    m->v[m->n++] = s;
}

static bool session_exists(void *data, const char *id)
{
    return find(data, id) != NULL;
}

/* ---- durations */

/* Parses a Go duration ("10s", "1m30s", "1.5h", "100ms", "0") into nanoseconds. */
static bool parse_duration(const char *s, uint64_t *ns)
{
    static const struct {
        const char *unit;
        double ns;
    } units[] = {{"ns", 1},  {"us", 1e3}, {"\xc2\xb5s", 1e3}, {"ms", 1e6},
                 {"s", 1e9}, {"m", 60e9}, {"h", 3600e9}};
    double total = 0;
    if (!strcmp(s, "0")) {
        *ns = 0;
        return true;
    }
    if (!*s) return false;
    while (*s) {
        char *end;
        if ((*s < '0' || *s > '9') && *s != '.') return false;
        double v = strtod(s, &end);
        if (end == s) return false;
        s = end;
        size_t best = 0, best_len = 0;
        for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
            size_t n = strlen(units[i].unit);
            if (!strncmp(s, units[i].unit, n) && n > best_len) best = i, best_len = n;
        }
        if (!best_len) return false;
        total += v * units[best].ns;
        s += best_len;
    }
    if (total > 9.2e18) return false;
    *ns = (uint64_t)total;
    return true;
}

/* ---- rendering and storage */

static json_t *sess_json(const sess_t *s)
{
    return json_pack("{s:s, s:s, s:s, s:O, s:O, s:I, s:s, s:s, s:I, s:I}", "ID", s->id, "Name",
                     s->name, "Node", s->node, "Checks", s->checks, "NodeChecks", s->checks,
                     "LockDelay", (json_int_t)s->lock_delay_ns, "Behavior",
                     s->behavior_delete ? "delete" : "release", "TTL", s->ttl, "CreateIndex",
                     (json_int_t)s->create_index, "ModifyIndex", (json_int_t)s->modify_index);
}

static void send_json(tr_http_req_t *req, json_t *body)
{
    char *text = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
    json_decref(body);
    tr_http_res_send(req, 200, "application/json", text, strlen(text));
    free(text);
}

static int step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : TR_EIO;
    sqlite3_reset(st);
    return rc;
}

static int db_insert(tr_session_t *m, const sess_t *s)
{
    sqlite3_stmt *st = tr_store_stmt(m->store, "INSERT OR REPLACE INTO sessions (id, node, body,"
                                               " create_index, modify_index)"
                                               " VALUES (?1, ?2, ?3, ?4, ?5)");
    if (!st) return TR_EIO;
    json_t *j = sess_json(s);
    char *body = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    sqlite3_bind_text(st, 1, s->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, s->node, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, body, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)s->create_index);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)s->modify_index);
    int rc = step_done(st);
    free(body);
    return rc;
}

static int db_delete(tr_session_t *m, const char *id)
{
    sqlite3_stmt *st = tr_store_stmt(m->store, "DELETE FROM sessions WHERE id = ?1");
    if (!st) return TR_EIO;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    return step_done(st);
}

static void log_store_error(tr_session_t *m, const char *op)
{
    tr_log_error("registry session write failed", TR_LOG_STR("op", op),
                 TR_LOG_STR("reason", sqlite3_errmsg(tr_store_db(m->store))));
}

static void store_failed(tr_http_req_t *req)
{
    tr_http_res_problem(req, 500, "store-failed", "Storage failure",
                        "the registry could not write to its database; see the server log");
}

/* ---- invalidation and TTLs */

/*
 * Destroys s: deletes it and releases (or deletes) its keys in one transaction, then in
 * memory, applying its lock-delay to those keys. Returns 0 or TR_EIO (nothing changed).
 */
static int invalidate(tr_session_t *m, sess_t *s)
{
    uint64_t idx;
    if (tr_store_begin(m->store, &idx) < 0) goto fail;
    if (db_delete(m, s->id) < 0 ||
        tr_kv_release_session_write(m->kv, s->id, s->behavior_delete, idx) < 0 ||
        tr_store_commit(m->store) < 0) {
        tr_store_rollback(m->store);
        goto fail;
    }
    tr_kv_release_session_apply(m->kv, s->id, s->behavior_delete, idx, s->lock_delay_ns / 1000000);
    sess_drop(m, s);
    return 0;
fail:
    log_store_error(m, "destroy");
    return TR_EIO;
}

static void on_ttl_expired(uv_timer_t *t)
{
    sess_t *s = t->data;
    tr_session_t *m = s->mod;
    tr_log_info("registry session expired", TR_LOG_STR("session", s->id),
                TR_LOG_STR("ttl", s->ttl));
    /* On a storage failure the session stays and is retried after another TTL. */
    if (invalidate(m, s) < 0) uv_timer_start(&s->timer, on_ttl_expired, s->ttl_ms, 0);
}

static void arm_ttl(sess_t *s)
{
    if (s->ttl_ms) uv_timer_start(&s->timer, on_ttl_expired, s->ttl_ms * TTL_MULTIPLIER, 0);
}

static sess_t *sess_new(tr_session_t *m)
{
    sess_t *s = tr_calloc(1, sizeof(*s));
    s->mod = m;
    uv_timer_init(m->loop, &s->timer);
    s->timer.data = s;
    return s;
}

/* ---- create */

static void bad_request(tr_http_req_t *req, const char *detail)
{
    tr_http_res_problem(req, 400, "bad-session", "Invalid session request", "%s", detail);
}

static void new_id(char out[37])
{
    unsigned char b[16];
    if (RAND_bytes(b, sizeof(b)) != 1) abort(); /* no entropy: nothing safe to hand out */
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
}

/* LockDelay: a Go duration string, or a number (below 1000: seconds; else nanoseconds). */
static const char *parse_lock_delay(json_t *v, uint64_t *ns)
{
    *ns = DEFAULT_LOCK_DELAY_NS;
    if (!v || json_is_null(v)) return NULL;
    if (json_is_string(v)) {
        if (!parse_duration(json_string_value(v), ns))
            return "LockDelay must be a duration such as \"15s\" or \"500ms\"";
    } else if (json_is_integer(v) && json_integer_value(v) >= 0) {
        uint64_t n = (uint64_t)json_integer_value(v);
        *ns = n < LOCK_DELAY_SECONDS_BELOW ? n * 1000000000ULL : n;
    } else {
        return "LockDelay must be a duration string or a non-negative number";
    }
    return *ns > MAX_LOCK_DELAY_NS ? "LockDelay must be at most 60s" : NULL;
}

static const char *parse_ttl(json_t *v, sess_t *s)
{
    const char *t = v && json_is_string(v) ? json_string_value(v) : "";
    if (v && !json_is_null(v) && !json_is_string(v))
        return "TTL must be a duration string such as \"30s\"";
    s->ttl = tr_strdup(t);
    if (!t[0]) return NULL;
    uint64_t ns;
    if (!parse_duration(t, &ns)) return "TTL must be a duration string such as \"30s\"";
    s->ttl_ms = ns / 1000000;
    if (s->ttl_ms < TR_SESSION_TTL_MIN_MS || s->ttl_ms > TR_SESSION_TTL_MAX_MS)
        return "TTL must be between 10ms and 86400s (Consul itself requires at least 10s)";
    return NULL;
}

static const char *parse_checks(json_t *body, sess_t *s)
{
    json_t *c = json_object_get(body, "Checks");
    if (!c || json_is_null(c)) c = json_object_get(body, "NodeChecks");
    if (!c || json_is_null(c)) {
        s->checks = json_pack("[s]", "serfHealth");
        return NULL;
    }
    if (!json_is_array(c)) return "Checks must be an array of check IDs";
    size_t i;
    json_t *e;
    json_array_foreach(c, i, e) if (!json_is_string(e)) return "Checks must hold strings";
    s->checks = json_incref(c);
    return NULL;
}

static const char *get_string(json_t *body, const char *key, const char *dflt, char **out)
{
    json_t *v = json_object_get(body, key);
    if (v && !json_is_null(v) && !json_is_string(v)) return "Name, Node and Behavior are strings";
    *out = tr_strdup(v && json_is_string(v) ? json_string_value(v) : dflt);
    return NULL;
}

/* Fills s from a request body (or a stored row, which may name a node this agent had under
 * an earlier name); returns what is wrong, or NULL. */
static const char *parse_session(tr_session_t *m, json_t *body, sess_t *s, bool stored)
{
    char *behavior = NULL;
    const char *bad = get_string(body, "Name", "", &s->name);
    if (!bad) bad = get_string(body, "Node", m->node, &s->node);
    if (!bad) bad = get_string(body, "Behavior", "release", &behavior);
    if (!bad && strcmp(behavior, "release") != 0 && strcmp(behavior, "delete") != 0)
        bad = "Behavior must be \"release\" or \"delete\"";
    s->behavior_delete = behavior && !strcmp(behavior, "delete");
    free(behavior);
    if (!bad && !stored && strcmp(s->node, m->node) != 0)
        bad = "Node must be this agent's node (the only node trellis registers); omit it";
    if (!bad) bad = parse_lock_delay(json_object_get(body, "LockDelay"), &s->lock_delay_ns);
    if (!bad) bad = parse_ttl(json_object_get(body, "TTL"), s);
    if (!bad) bad = parse_checks(body, s);
    if (!s->ttl) s->ttl = tr_strdup("");
    if (!s->checks) s->checks = json_array();
    return bad;
}

/* Consul refuses a session whose checks are missing or critical (with a 500). */
static bool checks_usable(tr_session_t *m, tr_http_req_t *req, const sess_t *s)
{
    size_t i;
    json_t *e;
    if (!m->check_status) return true;
    json_array_foreach(s->checks, i, e)
    {
        int st = m->check_status(m->check_data, json_string_value(e));
        if (st < 0 || st == 2 /* critical */) {
            tr_http_res_problem(req, 500, "session-check", "Session check unusable",
                                st < 0 ? "Missing check '%s' registration"
                                       : "Check '%s' is in critical state",
                                json_string_value(e));
            return false;
        }
    }
    return true;
}

static void create(tr_session_t *m, tr_http_req_t *req, json_t *body)
{
    sess_t *s = sess_new(m);
    const char *bad = parse_session(m, body, s, false);
    if (bad) {
        bad_request(req, bad);
        sess_drop(m, s);
        return;
    }
    if (!checks_usable(m, req, s)) {
        sess_drop(m, s);
        return;
    }
    new_id(s->id);
    uint64_t idx;
    if (tr_store_begin(m->store, &idx) < 0) goto fail;
    s->create_index = s->modify_index = idx;
    if (db_insert(m, s) < 0 || tr_store_commit(m->store) < 0) {
        tr_store_rollback(m->store);
        goto fail;
    }
    sess_add(m, s);
    arm_ttl(s);
    send_json(req, json_pack("{s:s}", "ID", s->id));
    return;
fail:
    log_store_error(m, "create");
    store_failed(req);
    sess_drop(m, s);
}

static void on_create_json(tr_http_req_t *req, json_t *body, void *data)
{
    create(data, req, body);
}

static void read_create(tr_session_t *m, tr_http_req_t *req)
{
    tr_http_req_read_json(req, MAX_BODY_BYTES, TR_HTTP_JSON_EMPTY_OK, on_create_json, m);
}

void tr_session_set_check_lookup(tr_session_t *m, tr_session_check_fn fn, void *data)
{
    m->check_status = fn;
    m->check_data = data;
}

void tr_session_check_down(tr_session_t *m, const char *check_id)
{
    for (size_t i = 0; i < m->n;) {
        sess_t *s = m->v[i];
        bool uses = false;
        size_t k;
        json_t *e;
        json_array_foreach(s->checks, k, e) uses |= !strcmp(json_string_value(e), check_id);
        if (!uses) {
            i++;
            continue;
        }
        tr_log_info("session invalidated: its check is down", TR_LOG_STR("session", s->id),
                    TR_LOG_STR("check", check_id));
        if (invalidate(m, s) < 0) i++; /* kept on a store failure; logged there */
    }
}

/* ---- the other endpoints */

static void destroy(tr_session_t *m, tr_http_req_t *req, const char *id)
{
    sess_t *s = find(m, id);
    /* Like Consul, destroying a session that does not exist succeeds. */
    if (s && invalidate(m, s) < 0) {
        store_failed(req);
        return;
    }
    tr_http_res_send(req, 200, "application/json", "true", 4);
}

static void renew(tr_session_t *m, tr_http_req_t *req, const char *id)
{
    sess_t *s = find(m, id);
    if (!s) {
        tr_http_res_problem(req, 404, "session-not-found", "Session not found",
                            "session \"%.64s\" does not exist (destroyed or expired); create a "
                            "new one",
                            id);
        return;
    }
    arm_ttl(s);
    tr_blocking_headers(req, tr_store_index(m->store));
    send_json(req, json_pack("[o]", sess_json(s)));
}

/* Answers the sessions matching id or node (NULL: all) as a JSON array, [] when none. */
static void list(tr_session_t *m, tr_http_req_t *req, const char *id, const char *node)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < m->n; i++) {
        const sess_t *s = m->v[i];
        if ((id && strcmp(s->id, id) != 0) || (node && strcmp(s->node, node) != 0)) continue;
        json_array_append_new(arr, sess_json(s));
    }
    tr_blocking_headers(req, tr_store_index(m->store));
    send_json(req, arr);
}

static bool method_ok(tr_http_req_t *req, const char *want)
{
    if (!strcmp(req->method, want) || (!strcmp(want, "GET") && !strcmp(req->method, "HEAD")))
        return true;
    tr_http_res_header(req, "Allow", want);
    tr_http_res_problem(req, 405, "method-not-allowed", "Method not allowed",
                        "%s is not supported here; use %s", req->method, want);
    return false;
}

/* The decoded path segment after `prefix`, or NULL (answered) when it is missing or bad. */
static const char *arg_after(tr_http_req_t *req, size_t plen)
{
    size_t n = req->path_len - plen;
    char *arg = tr_http_req_alloc(req, n + 1);
    if (!n || tr_http_percent_decode(arg, req->path + plen, n) < 0 || !arg[0]) {
        bad_request(req, "the path needs a session ID or node name after the endpoint, such as "
                         "/v1/session/info/<id>");
        return NULL;
    }
    return arg;
}

void tr_session_handle(tr_session_t *m, tr_http_req_t *req)
{
    static const struct {
        const char *prefix, *method;
        int op;
    } routes[] = {{"/v1/session/destroy/", "PUT", 1},
                  {"/v1/session/renew/", "PUT", 2},
                  {"/v1/session/info/", "GET", 3},
                  {"/v1/session/node/", "GET", 4}};
    const char *p = req->path;
    size_t len = req->path_len;
    if (len == 18 && !memcmp(p, "/v1/session/create", 18)) {
        if (method_ok(req, "PUT")) read_create(m, req);
        return;
    }
    if (len == 16 && !memcmp(p, "/v1/session/list", 16)) {
        if (method_ok(req, "GET")) list(m, req, NULL, NULL);
        return;
    }
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        size_t plen = strlen(routes[i].prefix);
        if (len < plen || memcmp(p, routes[i].prefix, plen) != 0) continue;
        if (!method_ok(req, routes[i].method)) return;
        const char *arg = arg_after(req, plen);
        if (!arg) return;
        if (routes[i].op == 1) destroy(m, req, arg);
        if (routes[i].op == 2) renew(m, req, arg);
        if (routes[i].op == 3) list(m, req, arg, NULL);
        if (routes[i].op == 4) list(m, req, NULL, arg);
        return;
    }
    tr_http_res_problem(req, 404, "not-found", "Not Found",
                        "no session endpoint %.200s; use create, destroy/<id>, renew/<id>, "
                        "info/<id>, node/<node> or list",
                        req->path);
}

/* ---- open and close */

static sess_t *load_one(tr_session_t *m, sqlite3_stmt *st)
{
    json_error_t je;
    json_t *j = json_loads((const char *)sqlite3_column_text(st, 0), 0, &je);
    sess_t *s = sess_new(m);
    const char *id = json_string_value(json_object_get(j, "ID"));
    const char *beh = json_string_value(json_object_get(j, "Behavior"));
    if (!j || !id || strlen(id) != 36 || parse_session(m, j, s, true)) {
        tr_log_warn("registry session skipped: unreadable row",
                    TR_LOG_STR("session", id ? id : "?"));
        json_decref(j);
        sess_drop(m, s);
        return NULL;
    }
    memcpy(s->id, id, 37);
    s->behavior_delete = beh && !strcmp(beh, "delete");
    s->create_index = (uint64_t)sqlite3_column_int64(st, 1);
    s->modify_index = (uint64_t)sqlite3_column_int64(st, 2);
    json_decref(j);
    return s;
}

static int load(tr_session_t *m)
{
    sqlite3_stmt *st = tr_store_stmt(m->store, "SELECT body, create_index, modify_index"
                                               " FROM sessions ORDER BY create_index");
    if (!st) return TR_EIO;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        sess_t *s = load_one(m, st);
        if (!s) continue;
        sess_add(m, s);
        arm_ttl(s);
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : TR_EIO;
}

int tr_session_open(uv_loop_t *loop, tr_store_t *store, tr_kv_t *kv, const char *node,
                    tr_session_t **out, char *err, size_t errlen)
{
    *out = NULL;
    tr_session_t *m = tr_calloc(1, sizeof(*m));
    m->loop = loop;
    m->store = store;
    m->kv = kv;
    m->node = tr_strdup(node);
    if (load(m) < 0) {
        snprintf(err, errlen, "cannot load sessions: %s", sqlite3_errmsg(tr_store_db(store)));
        tr_session_close(m);
        return TR_EIO;
    }
    tr_kv_set_session_check(kv, session_exists, m);
    *out = m;
    return 0;
}

void tr_session_close(tr_session_t *m)
{
    if (!m) return;
    if (m->kv) tr_kv_set_session_check(m->kv, NULL, NULL);
    while (m->n)
        sess_drop(m, m->v[m->n - 1]);
    free(m->v);
    free(m->node);
    free(m);
}
