/*
 * The shop's order service: takes orders after asking catalog for names and prices and
 * inventory for stock (with a fallback: when inventory cannot answer, the order is pending),
 * and is the first and last step of the create-order saga (idempotent by Idempotency-Key).
 */
#include <trellis/app.h>
#include <trellis/projection.h>
#include <trellis/log.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "shop.h"

#define MAX_ITEMS       50
#define MAX_QUANTITY    100
#define DEFAULT_LIMIT   20
#define MAX_LIMIT       100
#define DEFAULT_OPEN_MS 2000
#define MAX_KEY         255
#define MAX_PAYMENT     128

static const char *const migrations[] = {
    "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL,"
    "  status TEXT NOT NULL CHECK (status IN ('created', 'pending', 'cancelled')),"
    "  stock_check TEXT NOT NULL CHECK (stock_check IN ('verified', 'deferred')),"
    "  items_json TEXT NOT NULL, total_cents INTEGER NOT NULL,"
    "  currency TEXT NOT NULL DEFAULT 'EUR',"
    "  created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),"
    "  correlation_id TEXT);"
    "CREATE INDEX orders_by_customer ON orders (customer_id, id);"
    "CREATE INDEX orders_by_status ON orders (status, id);",
    /* 2: the saga's states and keys. SQLite cannot change a CHECK in place: rebuild. The
     * payment column has no type so that a charge id keeps its JSON type. */
    "CREATE TABLE orders_v2 (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL,"
    "  status TEXT NOT NULL"
    "    CHECK (status IN ('created', 'pending', 'confirmed', 'cancelled')),"
    "  stock_check TEXT NOT NULL CHECK (stock_check IN ('verified', 'deferred')),"
    "  items_json TEXT NOT NULL, total_cents INTEGER NOT NULL,"
    "  currency TEXT NOT NULL DEFAULT 'EUR',"
    "  created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),"
    "  correlation_id TEXT, idempotency_key TEXT UNIQUE, cancel_key TEXT, payment);"
    "INSERT INTO orders_v2 (id, customer_id, status, stock_check, items_json, total_cents,"
    "  currency, created_at, correlation_id)"
    "  SELECT id, customer_id, status, stock_check, items_json, total_cents, currency,"
    "  created_at, correlation_id FROM orders;"
    "DROP TABLE orders;"
    "ALTER TABLE orders_v2 RENAME TO orders;"
    "CREATE INDEX orders_by_customer ON orders (customer_id, id);"
    "CREATE INDEX orders_by_status ON orders (status, id);",
    NULL};

#define ORDER_COLUMNS                                                                              \
    "id, customer_id, status, stock_check, items_json, total_cents, currency, created_at,"         \
    " correlation_id, payment"

struct order_req_s;

/* One item of an order being placed: what the client asked and what catalog said. */
typedef struct line_s {
    struct order_req_s *o;
    size_t index;
    int64_t product_id, quantity;
    const char *name; /* ctx memory */
    int64_t unit_price_cents;
} line_t;

/* POST /orders in flight: the answers of the calls it made so far (ctx memory). */
typedef struct order_req_s {
    tr_ctx_t *ctx;
    int64_t customer_id;
    const char *key; /* Idempotency-Key header, or NULL */
    bool saga;       /* "status":"pending": the saga reserves stock, no stock check here */
    line_t *lines;
    size_t n;
    size_t outstanding; /* calls of the current phase not answered yet */
    bool catalog_down;  /* a catalog call failed (no answer, 5xx, odd body) */
    bool deferred;      /* an inventory answer came from the fallback */
    ssize_t unknown_at; /* first item catalog does not know, or -1 */
    ssize_t short_at;   /* first item inventory has too little of, or -1 */
    int64_t short_available;
} order_req_t;

/* Publishes an event of order `id` to its stream order-<id> through the app's outbox (in the
 * caller's transaction). `data` is stolen. Returns 0 or an error. */
static int publish(tr_ctx_t *ctx, int64_t id, const char *type, json_t *data)
{
    char stream[48];
    snprintf(stream, sizeof(stream), "order-%lld", (long long)id);
    int rc = tr_app_publish(tr_ctx_app(ctx), tr_ctx_db(ctx), stream, type, data);
    json_decref(data);
    return rc;
}

static void internal_error(tr_ctx_t *ctx)
{
    tr_ctx_problem(ctx, 500, "internal", "Internal error",
                   "the order database failed; the service's log says why");
}

static bool int_in(const json_t *v, int64_t lo, int64_t hi)
{
    return json_is_integer(v) && json_integer_value(v) >= lo && json_integer_value(v) <= hi;
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
    tr_ctx_problem(ctx, 422, "invalid-order", "Invalid order", "%s", detail);
    return false;
}

/* An order as the API shows it: `payment` only once a confirm named one. */
static json_t *shown(json_t *order)
{
    if (order && json_is_null(json_object_get(order, "payment"))) json_object_del(order, "payment");
    return order;
}

static json_t *order_json(tr_db_t *db, int64_t id)
{
    return shown(tr_db_row(db, NULL, "SELECT " ORDER_COLUMNS " FROM orders WHERE id = ?", "i", id));
}

/* The order an earlier POST /orders with this Idempotency-Key made, or NULL. */
static json_t *order_by_key(tr_db_t *db, const char *key)
{
    return shown(tr_db_row(
        db, NULL, "SELECT " ORDER_COLUMNS " FROM orders WHERE idempotency_key = ?", "s", key));
}

/* The Idempotency-Key header (NULL when absent); false after answering 400 for a bad one. */
static bool idempotency_key(tr_ctx_t *ctx, const char **key)
{
    *key = tr_ctx_header(ctx, "idempotency-key");
    if (!*key || (**key && strlen(*key) <= MAX_KEY)) return true;
    tr_ctx_problem(ctx, 400, "bad-idempotency-key", "Bad Idempotency-Key",
                   "the Idempotency-Key header must be 1 to %d bytes", MAX_KEY);
    return false;
}

/* ---- POST /orders: validate, ask catalog, ask inventory, store ---- */

/* Reads one item of the body into l; false after answering 422. */
static bool parse_line(tr_ctx_t *ctx, const json_t *it, size_t i, line_t *lines)
{
    const json_t *pid = json_object_get(it, "product_id");
    const json_t *qty = json_object_get(it, "quantity");
    if (!int_in(pid, 1, INT64_MAX))
        return invalid(ctx, "\"items[%zu].product_id\" must be a positive integer", i);
    if (!int_in(qty, 1, MAX_QUANTITY))
        return invalid(ctx, "\"items[%zu].quantity\" must be an integer from 1 to %d", i,
                       MAX_QUANTITY);
    lines[i].index = i;
    lines[i].product_id = json_integer_value(pid);
    lines[i].quantity = json_integer_value(qty);
    for (size_t j = 0; j < i; j++)
        if (lines[j].product_id == lines[i].product_id)
            return invalid(ctx, "\"items[%zu].product_id\" repeats product %lld of items[%zu]", i,
                           (long long)lines[i].product_id, j);
    return true;
}

/* The validated request, or NULL after answering 422. */
static order_req_t *parse_order(tr_ctx_t *ctx)
{
    const json_t *body = tr_ctx_body(ctx);
    const json_t *customer = json_object_get(body, "customer_id");
    const json_t *items = json_object_get(body, "items");
    const char *status = json_string_value(json_object_get(body, "status"));
    if (!int_in(customer, 1, INT64_MAX)) {
        invalid(ctx, "\"customer_id\" must be a positive integer");
        return NULL;
    }
    if (json_object_get(body, "status") && (!status || strcmp(status, "pending"))) {
        invalid(ctx, "\"status\" must be \"pending\" (or absent)");
        return NULL;
    }
    size_t n = json_array_size(items);
    if (!json_is_array(items) || n < 1 || n > MAX_ITEMS) {
        invalid(ctx, "\"items\" must be an array of 1 to %d items", MAX_ITEMS);
        return NULL;
    }
    order_req_t *o = tr_ctx_alloc(ctx, sizeof(*o));
    *o = (order_req_t){.ctx = ctx,
                       .customer_id = json_integer_value(customer),
                       .saga = status != NULL,
                       .n = n,
                       .unknown_at = -1,
                       .short_at = -1};
    o->lines = tr_ctx_alloc(ctx, n * sizeof(*o->lines));
    for (size_t i = 0; i < n; i++) {
        o->lines[i] = (line_t){.o = o};
        if (!parse_line(ctx, json_array_get(items, i), i, o->lines)) return NULL;
    }
    return o;
}

/* Answers a repeat of POST /orders with the order its Idempotency-Key made first. */
static void replay_order(tr_ctx_t *ctx, const char *key)
{
    json_t *order = order_by_key(tr_ctx_db(ctx), key);
    if (!order) {
        internal_error(ctx);
        return;
    }
    tr_ctx_set_header(ctx, "idempotent-replayed", "true");
    tr_ctx_reply_json(ctx, 200, order);
}

static void store_order(order_req_t *o)
{
    tr_ctx_t *ctx = o->ctx;
    tr_db_t *db = tr_ctx_db(ctx);
    json_t *items = json_array();
    int64_t total = 0;
    for (size_t i = 0; i < o->n; i++) {
        const line_t *l = &o->lines[i];
        json_array_append_new(items,
                              json_pack("{sI,ss,sI,sI}", "product_id", (json_int_t)l->product_id,
                                        "name", l->name, "quantity", (json_int_t)l->quantity,
                                        "unit_price_cents", (json_int_t)l->unit_price_cents));
        total += l->quantity * l->unit_price_cents;
    }
    bool pending = o->deferred || o->saga;
    const char *status = pending ? "pending" : "created";
    const char *check = pending ? "deferred" : "verified";
    /* The order and its OrderPlaced event in one transaction (the transactional outbox). */
    int rc = tr_db_begin(db);
    if (!rc)
        rc =
            tr_db_run(db,
                      "INSERT INTO orders (customer_id, status, stock_check, items_json,"
                      " total_cents, correlation_id, idempotency_key) VALUES (?, ?, ?, ?, ?, ?, ?)",
                      "issjiss", o->customer_id, status, check, items, total,
                      tr_ctx_correlation_id(ctx), o->key);
    int64_t id = rc < 0 ? 0 : tr_db_last_id(db);
    if (id && publish(ctx, id, "OrderPlaced",
                      json_pack("{sI,sI,sI,ss}", "order_id", (json_int_t)id, "customer_id",
                                (json_int_t)o->customer_id, "total_cents", (json_int_t)total,
                                "status", status)))
        rc = TR_EIO;
    json_decref(items);
    if (rc < 0 || tr_db_commit(db)) {
        tr_db_rollback(db);
        if (rc == TR_EEXISTS && o->key) { /* the same call, made at once by another replica */
            replay_order(ctx, o->key);
            return;
        }
        id = 0;
    }
    json_t *order = id ? order_json(db, id) : NULL;
    if (!order) {
        internal_error(ctx);
        return;
    }
    tr_log_info("order created", TR_LOG_INT("order_id", id),
                TR_LOG_INT("customer_id", o->customer_id), TR_LOG_STR("status", status),
                TR_LOG_STR("stock_check", check), TR_LOG_INT("total_cents", total));
    char location[64];
    snprintf(location, sizeof(location), "/orders/%lld", (long long)id);
    tr_ctx_set_header(ctx, "location", location);
    tr_ctx_reply_json(ctx, 201, order);
}

static void after_stock(order_req_t *o)
{
    if (o->short_at >= 0) {
        const line_t *l = &o->lines[o->short_at];
        tr_ctx_problem(o->ctx, 409, "out-of-stock", "Out of stock",
                       "product %lld: %lld available, %lld requested", (long long)l->product_id,
                       (long long)o->short_available, (long long)l->quantity);
        return;
    }
    store_order(o);
}

/* A real answer that shows too little stock wins over a deferred one: we know it is short. */
static void on_stock(tr_ctx_t *ctx, const tr_call_result_t *r, void *data)
{
    (void)ctx;
    line_t *l = data;
    order_req_t *o = l->o;
    const json_t *available = json_object_get(r->json, "available");
    int64_t have = -1;
    if (r->fallback)
        o->deferred = true;
    else if (r->status == 200 && json_is_integer(available))
        have = json_integer_value(available);
    else if (r->status == 404) /* inventory has no stock record for it */
        have = 0;
    else
        o->deferred = true; /* an answer we cannot use: check later */
    if (have >= 0 && have < l->quantity && (o->short_at < 0 || (size_t)o->short_at > l->index)) {
        o->short_at = (ssize_t)l->index;
        o->short_available = have;
    }
    if (--o->outstanding == 0) after_stock(o);
}

/* Asks inventory about every item at once; the last answer goes on. */
static void check_stock(order_req_t *o)
{
    o->outstanding = o->n;
    for (size_t i = 0; i < o->n; i++) {
        char target[64];
        snprintf(target, sizeof(target), "/stock/%lld", (long long)o->lines[i].product_id);
        tr_ctx_call(o->ctx, "inventory", "GET", target, NULL, on_stock, &o->lines[i]);
    }
}

static void after_catalog(order_req_t *o)
{
    if (o->catalog_down) {
        tr_ctx_problem(o->ctx, 503, "catalog-unavailable", "Catalog unavailable",
                       "the catalog service did not answer; try again shortly");
    } else if (o->unknown_at >= 0) {
        invalid(o->ctx, "\"items[%zd].product_id\": unknown product %lld", o->unknown_at,
                (long long)o->lines[o->unknown_at].product_id);
    } else if (o->saga) {
        store_order(o); /* the saga's next step reserves the stock */
    } else {
        check_stock(o);
    }
}

static void on_product(tr_ctx_t *ctx, const tr_call_result_t *r, void *data)
{
    line_t *l = data;
    order_req_t *o = l->o;
    const char *name = json_string_value(json_object_get(r->json, "name"));
    const json_t *price = json_object_get(r->json, "price_cents");
    if (r->status == 200 && name && int_in(price, 0, INT32_MAX)) {
        size_t len = strlen(name) + 1;
        l->name = memcpy(tr_ctx_alloc(ctx, len), name, len);
        l->unit_price_cents = json_integer_value(price);
    } else if (r->status == 404) {
        if (o->unknown_at < 0 || (size_t)o->unknown_at > l->index)
            o->unknown_at = (ssize_t)l->index;
    } else {
        o->catalog_down = true;
    }
    if (--o->outstanding == 0) after_catalog(o);
}

static void post_order(tr_ctx_t *ctx, void *data)
{
    (void)data;
    const char *key;
    if (!idempotency_key(ctx, &key)) return;
    json_t *prior = key ? order_by_key(tr_ctx_db(ctx), key) : NULL;
    if (prior) {
        json_decref(prior);
        replay_order(ctx, key);
        return;
    }
    order_req_t *o = parse_order(ctx);
    if (!o) return;
    o->key = key;
    /* Count every call first: a call's callback may run before tr_ctx_call returns. */
    o->outstanding = o->n;
    for (size_t i = 0; i < o->n; i++) {
        char target[64];
        snprintf(target, sizeof(target), "/products/%lld", (long long)o->lines[i].product_id);
        tr_ctx_call(ctx, "catalog", "GET", target, NULL, on_product, &o->lines[i]);
    }
}

/* ---- reading and cancelling ---- */

static bool order_param(tr_ctx_t *ctx, int64_t *id)
{
    if (tr_ctx_param_id(ctx, "id", id)) return true;
    tr_ctx_problem(ctx, 400, "bad-id", "Bad order id", "the order id must be a positive integer");
    return false;
}

static void not_found(tr_ctx_t *ctx, int64_t id)
{
    tr_ctx_problem(ctx, 404, "not-found", "Unknown order", "order %lld does not exist",
                   (long long)id);
}

static void get_order(tr_ctx_t *ctx, void *data)
{
    (void)data;
    int64_t id;
    if (!order_param(ctx, &id)) return;
    json_t *order = order_json(tr_ctx_db(ctx), id);
    if (order)
        tr_ctx_reply_json(ctx, 200, order);
    else
        not_found(ctx, id);
}

/* A query value as an integer from lo to hi; `def` when absent; false when malformed. */
static bool query_int(tr_ctx_t *ctx, const char *name, int64_t lo, int64_t hi, int64_t def,
                      int64_t *out)
{
    const char *s = tr_ctx_query(ctx, name);
    *out = def;
    if (!s) return true;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || v < lo || v > hi) {
        tr_ctx_problem(ctx, 400, "bad-query", "Bad query parameter",
                       "\"%s\" must be an integer from %lld to %lld", name, (long long)lo,
                       (long long)hi);
        return false;
    }
    *out = v;
    return true;
}

static void list_orders(tr_ctx_t *ctx, void *data)
{
    (void)data;
    int64_t customer, limit;
    if (!query_int(ctx, "customer_id", 1, INT64_MAX, 0, &customer) ||
        !query_int(ctx, "limit", 1, MAX_LIMIT, DEFAULT_LIMIT, &limit))
        return;
    const char *status = tr_ctx_query(ctx, "status");
    if (status && strcmp(status, "created") && strcmp(status, "pending") &&
        strcmp(status, "confirmed") && strcmp(status, "cancelled")) {
        tr_ctx_problem(ctx, 400, "bad-query", "Bad query parameter",
                       "\"status\" must be created, pending, confirmed or cancelled");
        return;
    }
    json_t *rows = tr_db_rows(tr_ctx_db(ctx), NULL,
                              "SELECT " ORDER_COLUMNS " FROM orders"
                              " WHERE (?1 = 0 OR customer_id = ?1) AND (?2 IS NULL OR status = ?2)"
                              " ORDER BY id DESC LIMIT ?3",
                              "isi", customer, status, limit);
    if (!rows) {
        internal_error(ctx);
        return;
    }
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row) shown(row);
    tr_ctx_reply_json(ctx, 200, json_pack("{so}", "items", rows));
}

/*
 * Why a cancel changed nothing: 200 when the same Idempotency-Key cancelled it already (a
 * saga's compensation sent again), else 409. Takes the order.
 */
static void cancel_refused(tr_ctx_t *ctx, int64_t id, json_t *order, const char *key)
{
    const char *status = json_string_value(json_object_get(order, "status"));
    int64_t same = key ? tr_db_int(tr_ctx_db(ctx), 0,
                                   "SELECT COUNT(*) FROM orders WHERE id = ? AND cancel_key = ?",
                                   "is", id, key)
                       : 0;
    if (same) {
        tr_ctx_set_header(ctx, "idempotent-replayed", "true");
        tr_ctx_reply_json(ctx, 200, order);
        return;
    }
    bool confirmed = status && !strcmp(status, "confirmed");
    json_decref(order);
    if (confirmed)
        tr_ctx_problem(ctx, 409, "order-confirmed", "Order confirmed",
                       "order %lld is confirmed (paid) and can no longer be cancelled",
                       (long long)id);
    else
        tr_ctx_problem(ctx, 409, "already-cancelled", "Order already cancelled",
                       "order %lld is cancelled already", (long long)id);
}

static void cancel_order(tr_ctx_t *ctx, void *data)
{
    (void)data;
    int64_t id;
    const char *key;
    if (!order_param(ctx, &id) || !idempotency_key(ctx, &key)) return;
    tr_db_t *db = tr_ctx_db(ctx);
    int rc = tr_db_begin(db);
    if (!rc)
        rc = tr_db_run(db,
                       "UPDATE orders SET status = 'cancelled', cancel_key = ?"
                       " WHERE id = ? AND status NOT IN ('cancelled', 'confirmed')",
                       "si", key, id);
    /* A saga's compensation names its step in the key (<saga>:<step>:compensation). */
    bool by_saga = key && strstr(key, ":compensation");
    if (rc == 1 && publish(ctx, id, "OrderCancelled",
                           json_pack("{sI,ss}", "order_id", (json_int_t)id, "reason",
                                     by_saga ? "the checkout could not be completed"
                                             : "cancelled at the customer's request")))
        rc = TR_EIO;
    if (rc < 0 || tr_db_commit(db)) {
        tr_db_rollback(db);
        rc = rc < 0 ? rc : TR_EIO;
    }
    json_t *order = rc < 0 ? NULL : order_json(db, id);
    if (rc < 0)
        internal_error(ctx);
    else if (!order)
        not_found(ctx, id);
    else if (rc == 0)
        cancel_refused(ctx, id, order, key);
    else {
        tr_log_info("order cancelled", TR_LOG_INT("order_id", id));
        tr_ctx_reply_json(ctx, 200, order);
    }
}

/* The optional "payment" of a confirm's body (a charge id); false after answering 422. */
static bool parse_payment(tr_ctx_t *ctx, const json_t **payment)
{
    *payment = json_object_get(tr_ctx_body(ctx), "payment");
    if (!*payment || json_is_null(*payment) || int_in(*payment, 1, INT64_MAX)) return true;
    size_t len = json_string_length(*payment);
    if (json_is_string(*payment) && len >= 1 && len <= MAX_PAYMENT) return true;
    return invalid(ctx, "\"payment\" must be a charge id: a positive integer or 1 to %d bytes",
                   MAX_PAYMENT);
}

/* Confirms the order (again: the same answer); a payment named first is kept. */
static void confirm_order(tr_ctx_t *ctx, void *data)
{
    (void)data;
    int64_t id;
    const json_t *payment;
    if (!order_param(ctx, &id) || !parse_payment(ctx, &payment)) return;
    tr_db_t *db = tr_ctx_db(ctx);
    /* Only the first confirm changes the order and publishes OrderConfirmed; a repeat answers
     * the same. */
    const char *sql = "UPDATE orders SET status = 'confirmed', payment = COALESCE(payment, ?)"
                      " WHERE id = ? AND status NOT IN ('cancelled', 'confirmed')";
    int rc = tr_db_begin(db);
    if (!rc)
        rc = json_is_integer(payment)
                 ? tr_db_run(db, sql, "ii", (int64_t)json_integer_value(payment), id)
                 : tr_db_run(db, sql, "si", json_string_value(payment), id);
    if (rc == 1 && publish(ctx, id, "OrderConfirmed",
                           json_pack("{sI,sO?}", "order_id", (json_int_t)id, "payment", payment)))
        rc = TR_EIO;
    static const char later[] = "UPDATE orders SET payment = COALESCE(payment, ?)"
                                " WHERE id = ? AND status = 'confirmed'";
    if (rc == 0 && payment && !json_is_null(payment)) { /* confirmed already: a late payment */
        int r2 = json_is_integer(payment)
                     ? tr_db_run(db, later, "ii", (int64_t)json_integer_value(payment), id)
                     : tr_db_run(db, later, "si", json_string_value(payment), id);
        if (r2 < 0) rc = r2;
    }
    if (rc < 0 || tr_db_commit(db)) {
        tr_db_rollback(db);
        rc = rc < 0 ? rc : TR_EIO;
    }
    json_t *order = rc < 0 ? NULL : order_json(db, id);
    const char *now = json_string_value(json_object_get(order, "status"));
    if (rc < 0)
        internal_error(ctx);
    else if (!order)
        not_found(ctx, id);
    else if (rc == 0 && (!now || strcmp(now, "confirmed"))) {
        json_decref(order);
        tr_ctx_problem(ctx, 409, "order-cancelled", "Order cancelled",
                       "order %lld is cancelled and cannot be confirmed", (long long)id);
    } else {
        tr_log_info("order confirmed", TR_LOG_INT("order_id", id));
        tr_ctx_reply_json(ctx, 200, order);
    }
}

/* ---- the program ---- */

/* Inventory cannot tell: the order is taken as pending and its stock checked later. */
static json_t *stock_unknown(tr_ctx_t *ctx, const char *service, int err, int *status, void *data)
{
    (void)ctx, (void)service, (void)err, (void)data;
    *status = 200;
    return json_pack("{sn,ss}", "available", "source", "fallback");
}

static void declare_services(tr_app_t *app)
{
    const char *env = getenv("SHOP_BREAKER_OPEN_MS");
    long long open_ms = env && *env ? atoll(env) : DEFAULT_OPEN_MS;
    tr_call_policy_t p;
    tr_call_policy_init(&p);
    p.timeout_ms = 1000;
    p.breaker.open_ms = open_ms > 0 ? (uint64_t)open_ms : DEFAULT_OPEN_MS;
    tr_app_service(app, "catalog", &p); /* no fallback: no prices, no order */
    p.retries = 1;
    p.breaker.consecutive_failures = 3;
    p.fallback = stock_unknown;
    tr_app_service(app, "inventory", &p);
}

static int setup(tr_app_t *app, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    declare_services(app);
    tr_app_route(app, "POST", "/orders", post_order, NULL);
    tr_app_route(app, "GET", "/orders", list_orders, NULL);
    tr_app_route(app, "GET", "/orders/{id}", get_order, NULL);
    tr_app_route(app, "POST", "/orders/{id}/cancel", cancel_order, NULL);
    tr_app_route(app, "POST", "/orders/{id}/confirm", confirm_order, NULL);
    return 0;
}

int main(int argc, char **argv)
{
    static const shop_service_t service = {
        .name = "order",
        .about =
            "The shop's order service (examples/shop/API.md): calls catalog for names and prices\n"
            "and inventory for stock (with a fallback when inventory cannot answer); steps\n"
            "of the create-order saga, idempotent by Idempotency-Key.\n"
            "SHOP_BREAKER_OPEN_MS sets how long a tripped breaker stays open (2000).\n",
        .migrations = migrations,
        .setup = setup,
    };
    return shop_main(&service, argc, argv);
}
