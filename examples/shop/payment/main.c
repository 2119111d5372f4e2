/* The shop's payment service: card charges and refunds, idempotent by Idempotency-Key. */
#include <trellis/app.h>
#include <trellis/log.h>

#include <ctype.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "shop.h"

#define MAX_KEY          255
#define MAX_ORDER_ID     128
#define MAX_AMOUNT       10000000
#define HANG_MS          30000
#define HANG_POLL_MS     100
#define DECLINED_SUFFIX  "0002"
#define HANGS_SUFFIX     "0003"
#define DEFAULT_CURRENCY "EUR"

/*
 * A charge keeps the answer it was given (response_status, response_json) so that the
 * same Idempotency-Key gets the same answer again, and a SHA-256 of the request that made
 * it (request_hash) so that the key reused for another request is told apart. The card
 * number itself is not stored, only its last four digits. At most one captured charge
 * per order: a partial unique index says so.
 */
static const char *const migrations[] = {
    "CREATE TABLE charge (id INTEGER PRIMARY KEY,"
    "  idempotency_key TEXT NOT NULL UNIQUE, request_hash TEXT NOT NULL,"
    "  order_id NOT NULL, amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),"
    "  currency TEXT NOT NULL, card_last4 TEXT NOT NULL,"
    "  status TEXT NOT NULL CHECK (status IN ('captured', 'declined', 'refunded')),"
    "  created_at TEXT NOT NULL, refund_key TEXT UNIQUE, refunded_at TEXT,"
    "  response_status INTEGER NOT NULL DEFAULT 0, response_json TEXT);"
    "CREATE INDEX charge_by_order ON charge (order_id);"
    "CREATE UNIQUE INDEX charge_captured_per_order ON charge (order_id)"
    "  WHERE status = 'captured';",
    /* 2: a charge whose caller gave up before the card answered is recorded as abandoned,
     * so a retry with the same key learns for sure that nothing was charged. */
    "CREATE TABLE charge2 (id INTEGER PRIMARY KEY,"
    "  idempotency_key TEXT NOT NULL UNIQUE, request_hash TEXT NOT NULL,"
    "  order_id NOT NULL, amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),"
    "  currency TEXT NOT NULL, card_last4 TEXT NOT NULL,"
    "  status TEXT NOT NULL CHECK (status IN ('captured', 'declined', 'refunded', 'abandoned')),"
    "  created_at TEXT NOT NULL, refund_key TEXT UNIQUE, refunded_at TEXT,"
    "  response_status INTEGER NOT NULL DEFAULT 0, response_json TEXT);"
    "INSERT INTO charge2 SELECT * FROM charge;"
    "DROP TABLE charge;"
    "ALTER TABLE charge2 RENAME TO charge;"
    "CREATE INDEX charge_by_order ON charge (order_id);"
    "CREATE UNIQUE INDEX charge_captured_per_order ON charge (order_id)"
    "  WHERE status = 'captured';",
    NULL};

#define CHARGE_COLUMNS                                                                             \
    "SELECT id, order_id, amount_cents, currency, status, card_last4, idempotency_key,"            \
    " created_at FROM charge"

/* A validated POST /charges; strings are borrowed from the request body. */
typedef struct charge_req_s {
    const char *key;
    const json_t *order_id; /* a positive integer or a non-empty string, bound as it came */
    int64_t amount_cents;
    const char *card;
    char currency[4]; /* upper case */
    char hash[65];    /* SHA-256 of the canonical request, hex */
} charge_req_t;

/* A charge waiting out its demo hang; it lives until the timer handle is closed. */
typedef struct hang_s {
    uv_timer_t timer;
    tr_ctx_t *ctx;
    charge_req_t *req;
    uint64_t started_ms;
} hang_t;

static void internal_error(tr_ctx_t *ctx)
{
    tr_ctx_problem(ctx, 500, "internal", "Internal error",
                   "the payment database failed; the service's log says why");
}

/* A problem+json answer like tr_ctx_problem's, rendered here so it can be stored. */
static json_t *problem_json(int status, const char *slug, const char *title, const char *detail)
{
    return json_pack("{s:s+,s:s,s:i,s:s}", "type", "https://trellis.dev/problems/", slug, "title",
                     title, "status", status, "detail", detail);
}

static void reply_problem_json(tr_ctx_t *ctx, int status, json_t *problem)
{
    char *text = json_dumps(problem, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(problem);
    if (!text) {
        internal_error(ctx);
        return;
    }
    tr_ctx_reply(ctx, status, "application/problem+json", text, strlen(text));
    free(text);
}

/* ---- reading the request ---- */

/* The Idempotency-Key header, or NULL after answering 400. */
static const char *idempotency_key(tr_ctx_t *ctx)
{
    const char *key = tr_ctx_header(ctx, "idempotency-key");
    if (!key || !*key) {
        tr_ctx_problem(ctx, 400, "idempotency-key-required", "Idempotency-Key required",
                       "send an Idempotency-Key header (1 to %d bytes) that is the same for "
                       "every retry of this request",
                       MAX_KEY);
        return NULL;
    }
    if (strlen(key) > MAX_KEY) {
        tr_ctx_problem(ctx, 400, "idempotency-key-required", "Idempotency-Key too long",
                       "the Idempotency-Key header must be 1 to %d bytes", MAX_KEY);
        return NULL;
    }
    /* A copy in the ctx: the request's own memory is gone if its client leaves. */
    char *copy = tr_ctx_alloc(ctx, strlen(key) + 1);
    memcpy(copy, key, strlen(key) + 1);
    return copy;
}

/* Answers 422 with a detail that names the field; returns false for the caller to return. */
static bool invalid(tr_ctx_t *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool invalid(tr_ctx_t *ctx, const char *fmt, ...)
{
    char detail[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    tr_ctx_problem(ctx, 422, "invalid-charge", "Invalid charge", "%s", detail);
    return false;
}

static bool is_card(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n < 12 || n > 19) return false;
    for (size_t i = 0; i < n; i++)
        if (!isdigit((unsigned char)s[i])) return false;
    return true;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

/* Reads "currency" (default EUR) into r->currency; false when not three letters. */
static bool parse_currency(const json_t *v, charge_req_t *r)
{
    const char *c = v ? json_string_value(v) : DEFAULT_CURRENCY;
    if (!c || strlen(c) != 3) return false;
    for (int i = 0; i < 3; i++) {
        if (!isalpha((unsigned char)c[i])) return false;
        r->currency[i] = (char)toupper((unsigned char)c[i]);
    }
    r->currency[3] = '\0';
    return true;
}

/* The request's fingerprint: SHA-256 of its fields as canonical JSON (defaults applied). */
static bool hash_request(charge_req_t *r)
{
    json_t *canon =
        json_pack("{s:O,s:I,s:s,s:s}", "order_id", r->order_id, "amount_cents",
                  (json_int_t)r->amount_cents, "card", r->card, "currency", r->currency);
    char *text = canon ? json_dumps(canon, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(canon);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    bool ok = text && EVP_Digest(text, strlen(text), md, &len, EVP_sha256(), NULL);
    free(text);
    for (unsigned int i = 0; ok && i < len && i < 32; i++)
        snprintf(r->hash + 2 * i, 3, "%02x", md[i]);
    return ok;
}

/* Validates the body of POST /charges into r; false after answering 422. */
static bool parse_charge(tr_ctx_t *ctx, charge_req_t *r)
{
    const json_t *body = tr_ctx_body(ctx);
    const json_t *order = json_object_get(body, "order_id");
    bool text = json_is_string(order) && json_string_length(order) > 0 &&
                json_string_length(order) <= MAX_ORDER_ID;
    bool number = json_is_integer(order) && json_integer_value(order) > 0;
    if (!text && !number)
        return invalid(ctx, "\"order_id\" must be a positive integer or a string of 1 to %d bytes",
                       MAX_ORDER_ID);
    const json_t *amount = json_object_get(body, "amount_cents");
    if (!json_is_integer(amount) || json_integer_value(amount) < 1 ||
        json_integer_value(amount) > MAX_AMOUNT)
        return invalid(ctx, "\"amount_cents\" must be an integer from 1 to %d", MAX_AMOUNT);
    const char *card = json_string_value(json_object_get(body, "card"));
    if (!is_card(card)) return invalid(ctx, "\"card\" must be a string of 12 to 19 digits");
    if (!parse_currency(json_object_get(body, "currency"), r))
        return invalid(ctx, "\"currency\" must be three letters (ISO 4217, e.g. \"EUR\")");
    r->order_id = order;
    r->amount_cents = json_integer_value(amount);
    r->card = card;
    if (hash_request(r)) return true;
    internal_error(ctx);
    return false;
}

/* ---- charging ---- */

static json_t *charge_json(tr_db_t *db, int64_t id)
{
    return tr_db_row(db, NULL, CHARGE_COLUMNS " WHERE id = ?", "i", id);
}

/* The captured charge of the order (its id), 0 when none. The order id binds as it came. */
static int64_t captured_charge_of(tr_db_t *db, const json_t *order)
{
    const char *sql = "SELECT id FROM charge WHERE order_id = ? AND status = 'captured'";
    if (json_is_string(order)) return tr_db_int(db, 0, sql, "s", json_string_value(order));
    return tr_db_int(db, 0, sql, "i", (int64_t)json_integer_value(order));
}

/* Answers with the stored result of an earlier request under the same key. */
static void replay(tr_ctx_t *ctx, const json_t *prior)
{
    int status = (int)json_integer_value(json_object_get(prior, "response_status"));
    json_t *body = json_object_get(prior, "response"); /* response_json, parsed */
    tr_ctx_set_header(ctx, "idempotent-replayed", "true");
    if (status == 201) {
        tr_ctx_reply_json(ctx, status, json_incref(body));
        return;
    }
    reply_problem_json(ctx, status, json_incref(body));
}

/* Inserts the charge with its status; its id, or a negative error. */
static int64_t insert_charge(tr_db_t *db, const charge_req_t *r, const char *status)
{
    const char *sql = "INSERT INTO charge (idempotency_key, request_hash, order_id, amount_cents,"
                      " currency, card_last4, status, created_at)"
                      " VALUES (?, ?, ?, ?, ?, ?, ?, strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))";
    const char *last4 = r->card + strlen(r->card) - 4;
    int rc = json_is_string(r->order_id)
                 ? tr_db_run(db, sql, "sssisss", r->key, r->hash, json_string_value(r->order_id),
                             r->amount_cents, r->currency, last4, status)
                 : tr_db_run(db, sql, "ssiisss", r->key, r->hash,
                             (int64_t)json_integer_value(r->order_id), r->amount_cents, r->currency,
                             last4, status);
    return rc < 0 ? rc : tr_db_last_id(db);
}

/* The answer a new charge with `outcome` gets (new reference) and its status code. */
static json_t *charge_answer(tr_db_t *db, int64_t id, const char *outcome, const char *last4,
                             int *status)
{
    if (!strcmp(outcome, "captured")) {
        *status = 201;
        return charge_json(db, id);
    }
    char detail[192];
    bool abandoned = !strcmp(outcome, "abandoned");
    if (abandoned)
        snprintf(detail, sizeof(detail),
                 "an earlier attempt with this Idempotency-Key gave up before the card ending in "
                 "%s answered; nothing was charged (charge %lld)",
                 last4, (long long)id);
    else
        snprintf(detail, sizeof(detail), "the card ending in %s was declined (charge %lld)", last4,
                 (long long)id);
    *status = 402;
    json_t *p = abandoned ? problem_json(402, "charge-abandoned", "Charge abandoned", detail)
                          : problem_json(402, "card-declined", "Card declined", detail);
    json_object_set_new(p, "charge_id", json_integer(id));
    return p;
}

/* Inside the transaction: records a new charge (captured, declined or abandoned) and its
 * answer, commits and replies. */
static void record_charge(tr_ctx_t *ctx, const charge_req_t *r, const char *outcome)
{
    tr_db_t *db = tr_ctx_db(ctx);
    int64_t id = insert_charge(db, r, outcome);
    int status = 0;
    json_t *answer =
        id > 0 ? charge_answer(db, id, outcome, r->card + strlen(r->card) - 4, &status) : NULL;
    int rc = answer ? tr_db_run(db,
                                "UPDATE charge SET response_status = ?, response_json = ?"
                                " WHERE id = ?",
                                "iji", (int64_t)status, answer, id)
                    : TR_EIO;
    if (rc < 0 || tr_db_commit(db)) {
        json_decref(answer);
        tr_db_rollback(db);
        internal_error(ctx);
        return;
    }
    if (status == 402) {
        reply_problem_json(ctx, status, answer);
        return;
    }
    char location[64];
    snprintf(location, sizeof(location), "/charges/%lld", (long long)id);
    tr_ctx_set_header(ctx, "location", location);
    tr_ctx_reply_json(ctx, status, answer);
}

static void start_hang(tr_ctx_t *ctx, charge_req_t *r);

/*
 * Charges once per key. Check and insert run in one BEGIN IMMEDIATE transaction, which
 * takes the write lock, so no other replica records the same key or order in between;
 * the UNIQUE constraints stand behind it. `may_hang`: a 0003 card not yet recorded hangs
 * first (and comes back here without it).
 */
static void charge(tr_ctx_t *ctx, charge_req_t *r, bool may_hang, bool abandon)
{
    tr_db_t *db = tr_ctx_db(ctx);
    if (tr_db_begin(db)) {
        internal_error(ctx);
        return;
    }
    json_t *prior = tr_db_row(db, NULL,
                              "SELECT request_hash, response_status, response_json FROM charge"
                              " WHERE idempotency_key = ?",
                              "s", r->key);
    if (prior) {
        tr_db_rollback(db);
        if (!strcmp(json_string_value(json_object_get(prior, "request_hash")), r->hash))
            replay(ctx, prior);
        else
            tr_ctx_problem(ctx, 409, "idempotency-key-reused", "Idempotency-Key reused",
                           "the Idempotency-Key \"%s\" was used for a different charge request;"
                           " send a new key for a new request",
                           r->key);
        json_decref(prior);
        return;
    }
    if (abandon) { /* the caller gave up: record that nothing was charged */
        record_charge(ctx, r, "abandoned");
        return;
    }
    if (may_hang && ends_with(r->card, HANGS_SUFFIX)) {
        tr_db_rollback(db);
        start_hang(ctx, r);
        return;
    }
    int64_t existing = captured_charge_of(db, r->order_id);
    if (existing > 0) {
        tr_db_rollback(db);
        char detail[128];
        snprintf(detail, sizeof(detail), "the order already has captured charge %lld",
                 (long long)existing);
        json_t *p = problem_json(409, "already-charged", "Order already charged", detail);
        json_object_set_new(p, "charge_id", json_integer(existing));
        reply_problem_json(ctx, 409, p);
        return;
    }
    record_charge(ctx, r, ends_with(r->card, DECLINED_SUFFIX) ? "declined" : "captured");
}

static void post_charge(tr_ctx_t *ctx, void *data)
{
    (void)data;
    charge_req_t *r = tr_ctx_alloc(ctx, sizeof(*r));
    memset(r, 0, sizeof(*r));
    r->key = idempotency_key(ctx);
    if (r->key && parse_charge(ctx, r)) charge(ctx, r, true, false);
}

/* ---- the demo hang (cards ending in 0003) ---- */

static uv_loop_t *hang_loop(tr_ctx_t *ctx)
{
    return tr_app_loop(tr_ctx_app(ctx));
}

static bool app_stopping(tr_ctx_t *ctx)
{
    return tr_app_stopping(tr_ctx_app(ctx));
}

static void on_hang_closed(uv_handle_t *h)
{
    free(h->data);
}

/*
 * Polls rather than waiting 30 s in one go, so that a stop does not wait for the hang:
 * the request then gets 503 (nothing recorded; a retry with the same key charges). A caller
 * that gave up (its timeout closed the connection) is never charged: like a payment
 * provider's authorisation that expires, the charge is abandoned, so a saga that timed out
 * and compensated leaves no money taken.
 */
static void on_hang_tick(uv_timer_t *t)
{
    hang_t *h = t->data;
    bool stopping = app_stopping(h->ctx), gone = tr_ctx_client_gone(h->ctx);
    if (!stopping && !gone && uv_now(t->loop) - h->started_ms < HANG_MS) return;
    uv_timer_stop(t);
    uv_close((uv_handle_t *)t, on_hang_closed);
    if (gone) { /* recorded, so that a retry with the key learns that nothing was charged */
        tr_log_warn("payment: the caller gave up on a slow charge; it is not made",
                    TR_LOG_STR("idempotency_key", h->req->key));
        charge(h->ctx, h->req, false, true);
    } else if (stopping)
        tr_ctx_problem(h->ctx, 503, "stopping", "Service stopping",
                       "the payment service stopped before the charge was made; retry with the "
                       "same Idempotency-Key");
    else
        charge(h->ctx, h->req, false, false);
}

/* The ctx (and r, allocated from it) stay valid until the reply, so the timer may hold them. */
static void start_hang(tr_ctx_t *ctx, charge_req_t *r)
{
    hang_t *h = calloc(1, sizeof(*h));
    if (!h) {
        internal_error(ctx);
        return;
    }
    uv_loop_t *loop = hang_loop(ctx);
    uv_timer_init(loop, &h->timer);
    h->timer.data = h;
    h->ctx = ctx;
    h->req = r;
    h->started_ms = uv_now(loop);
    uv_timer_start(&h->timer, on_hang_tick, HANG_POLL_MS, HANG_POLL_MS);
    tr_log_info("payment: card ending in 0003, answering in 30 s (demo)",
                TR_LOG_STR("idempotency_key", r->key));
}

/* ---- reading and refunding ---- */

static bool charge_param(tr_ctx_t *ctx, int64_t *id)
{
    if (tr_ctx_param_id(ctx, "id", id)) return true;
    tr_ctx_problem(ctx, 400, "bad-id", "Bad charge id", "the charge id must be a positive integer");
    return false;
}

static void not_found(tr_ctx_t *ctx, int64_t id)
{
    tr_ctx_problem(ctx, 404, "not-found", "Unknown charge", "charge %lld does not exist",
                   (long long)id);
}

static void get_charge(tr_ctx_t *ctx, void *data)
{
    (void)data;
    int64_t id;
    if (!charge_param(ctx, &id)) return;
    int err = 0;
    json_t *c = tr_db_row(tr_ctx_db(ctx), &err, CHARGE_COLUMNS " WHERE id = ?", "i", id);
    if (c)
        tr_ctx_reply_json(ctx, 200, c);
    else if (err)
        internal_error(ctx);
    else
        not_found(ctx, id);
}

/* All charges of an order (?order_id=, matching 42 and "42" alike), else the latest 100. */
static void list_charges(tr_ctx_t *ctx, void *data)
{
    (void)data;
    const char *order = tr_ctx_query(ctx, "order_id");
    tr_db_t *db = tr_ctx_db(ctx);
    json_t *rows;
    if (!order) {
        rows = tr_db_rows(db, NULL, CHARGE_COLUMNS " ORDER BY id DESC LIMIT 100", "");
    } else {
        char *end = NULL;
        long long n = strtoll(order, &end, 10);
        bool number = *order && isdigit((unsigned char)*order) && !*end && n > 0;
        rows = tr_db_rows(db, NULL, CHARGE_COLUMNS " WHERE order_id IN (?, ?) ORDER BY id", "si",
                          order, (int64_t)(number ? n : 0));
    }
    if (rows)
        tr_ctx_reply_json(ctx, 200, json_pack("{s:o}", "items", rows));
    else
        internal_error(ctx);
}

/* Inside the transaction: what a refund of the charge (status) under `key` answers. */
static void refund_locked(tr_ctx_t *ctx, int64_t id, const char *status, const char *key)
{
    tr_db_t *db = tr_ctx_db(ctx);
    int64_t other =
        tr_db_int(db, 0, "SELECT id FROM charge WHERE refund_key = ? AND id != ?", "si", key, id);
    int rc = 0;
    if (other > 0) {
        tr_db_rollback(db);
        tr_ctx_problem(ctx, 409, "idempotency-key-reused", "Idempotency-Key reused",
                       "the Idempotency-Key \"%s\" refunded charge %lld; send a new key", key,
                       (long long)other);
        return;
    }
    if (!strcmp(status, "declined") || !strcmp(status, "abandoned")) {
        tr_db_rollback(db);
        tr_ctx_problem(ctx, 409, "charge-declined", "Charge declined",
                       "charge %lld was declined: there is nothing to refund", (long long)id);
        return;
    }
    if (!strcmp(status, "captured"))
        rc = tr_db_run(db,
                       "UPDATE charge SET status = 'refunded', refund_key = ?,"
                       " refunded_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now') WHERE id = ?",
                       "si", key, id);
    json_t *c = rc >= 0 ? charge_json(db, id) : NULL;
    if (!c || tr_db_commit(db)) {
        json_decref(c);
        tr_db_rollback(db);
        internal_error(ctx);
        return;
    }
    tr_ctx_reply_json(ctx, 200, c);
}

/* Refunding a refunded charge answers the same again: the saga may send it more than once. */
static void refund_charge(tr_ctx_t *ctx, void *data)
{
    (void)data;
    int64_t id;
    const char *key = idempotency_key(ctx);
    if (!key || !charge_param(ctx, &id)) return;
    tr_db_t *db = tr_ctx_db(ctx);
    if (tr_db_begin(db)) {
        internal_error(ctx);
        return;
    }
    json_t *row = tr_db_row(db, NULL, "SELECT status FROM charge WHERE id = ?", "i", id);
    if (!row) {
        tr_db_rollback(db);
        not_found(ctx, id);
        return;
    }
    char status[16];
    snprintf(status, sizeof(status), "%s", json_string_value(json_object_get(row, "status")));
    json_decref(row);
    refund_locked(ctx, id, status, key);
}

/* ---- the program ---- */

static int setup(tr_app_t *app, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    tr_app_route(app, "POST", "/charges", post_charge, NULL);
    tr_app_route(app, "GET", "/charges", list_charges, NULL);
    tr_app_route(app, "GET", "/charges/{id}", get_charge, NULL);
    tr_app_route(app, "POST", "/charges/{id}/refund", refund_charge, NULL);
    return 0;
}

int main(int argc, char **argv)
{
    static const shop_service_t service = {
        .name = "payment",
        .about = "The shop's payment service: card charges and refunds, idempotent by the\n"
                 "Idempotency-Key header (examples/shop/API.md), stored in SQLite. Demo cards:\n"
                 "ending in 0002 declined, ending in 0003 answers after 30 s.\n",
        .migrations = migrations,
        .setup = setup,
    };
    return shop_main(&service, argc, argv);
}
