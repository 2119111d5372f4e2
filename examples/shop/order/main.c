/*
 * The shop's order service: takes orders after asking catalog for names and prices and
 * inventory for stock (with a fallback: when inventory cannot answer, the order is pending),
 * and is the first and last step of the create-order saga (idempotent by Idempotency-Key).
 *
 * An order is an event-sourced aggregate: its state is the fold of its stream order-<id> in
 * the event store (OrderPlaced, OrderConfirmed, OrderPaymentRecorded, OrderCancelled), and
 * every change is an append with the stream's version as the expected version. The service's
 * own database holds only the ids it gave out (by Idempotency-Key) and the read model that
 * lists orders (order_view), kept by a projection of the order streams.
 */
#include <trellis/aggregate.h>
#include <trellis/app.h>
#include <trellis/projection.h>
#include <trellis/log.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

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
    /* 3: event sourcing. The state moves to the order streams; ids keep growing past the old
     * table's (AUTOINCREMENT remembers the largest id ever given). Orders stored by the table
     * before it are not carried over. */
    "CREATE TABLE order_ids (id INTEGER PRIMARY KEY AUTOINCREMENT, idempotency_key TEXT UNIQUE);"
    "INSERT INTO order_ids (id) SELECT MAX(id) FROM orders WHERE EXISTS (SELECT 1 FROM orders);"
    "DELETE FROM order_ids;"
    "DROP TABLE orders;"
    "CREATE TABLE order_view (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL,"
    "  status TEXT NOT NULL, version INTEGER NOT NULL, order_json TEXT NOT NULL);"
    "CREATE INDEX order_view_by_customer ON order_view (customer_id, id);"
    "CREATE INDEX order_view_by_status ON order_view (status, id);",
    NULL};

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
    int64_t id; /* the id its Idempotency-Key was given before, or 0 */
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

/* ---- the aggregate: an order's state is the fold of its stream ---- */

static void stream_of(char *out, size_t outlen, int64_t id)
{
    snprintf(out, outlen, "order-%lld", (long long)id);
}

/* One event folded into the state (NULL before OrderPlaced). Fields starting with '_' are the
 * aggregate's own and never shown. */
static json_t *fold(json_t *state, const json_t *event, void *data)
{
    (void)data;
    const char *type = json_string_value(json_object_get(event, "type"));
    const json_t *d = json_object_get(event, "data");
    const json_t *payment = json_object_get(d, "payment");
    bool has_payment = payment && !json_is_null(payment);
    if (!type || !json_is_object(d)) return state;
    if (!strcmp(type, "OrderPlaced")) {
        json_decref(state);
        state = json_deep_copy(d);
        json_object_set(state, "id", json_object_get(d, "order_id"));
        json_object_del(state, "order_id");
        return state;
    }
    if (!state) return NULL; /* an event before its OrderPlaced: nothing to change */
    if (!strcmp(type, "OrderConfirmed")) {
        json_object_set_new(state, "status", json_string("confirmed"));
        if (has_payment && !json_object_get(state, "payment"))
            json_object_set_new(state, "payment", json_deep_copy(payment));
    } else if (!strcmp(type, "OrderPaymentRecorded")) {
        if (has_payment && !json_object_get(state, "payment"))
            json_object_set_new(state, "payment", json_deep_copy(payment));
    } else if (!strcmp(type, "OrderCancelled")) {
        json_object_set_new(state, "status", json_string("cancelled"));
        json_object_set(state, "_cancel_key", json_object_get(d, "key"));
    }
    return state;
}

/* The order as the API shows it (a new reference): the state without its own fields. */
static json_t *shown(const json_t *state)
{
    json_t *o = json_object();
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)state, k, v) if (k[0] != '_') json_object_set(o, k, v);
    return o;
}

static json_t *event_of(const char *type, json_t *data)
{
    return json_pack("{ss,so}", "type", type, "data", data);
}

static const char *status_of(const json_t *state)
{
    const char *s = json_string_value(json_object_get(state, "status"));
    return s ? s : "";
}

/* The read model: the order at `version`, unless the row is as new already (the command
 * that made the version and the projection both write it; the newer version wins). */
static int view_put(tr_db_t *db, const json_t *state, int64_t version)
{
    json_t *o = shown(state);
    int rc = tr_db_run(db,
                       "INSERT INTO order_view (id, customer_id, status, version, order_json)"
                       " VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                       " customer_id = excluded.customer_id, status = excluded.status,"
                       " version = excluded.version, order_json = excluded.order_json"
                       " WHERE excluded.version > order_view.version",
                       "iisij", (int64_t)json_integer_value(json_object_get(o, "id")),
                       (int64_t)json_integer_value(json_object_get(o, "customer_id")), status_of(o),
                       version, o);
    json_decref(o);
    return rc < 0 ? rc : 0;
}

/* The projection: every event of an order stream, in order, moves the read model on. */
static int project(tr_db_t *db, const json_t *event, void *data)
{
    const char *stream = json_string_value(json_object_get(event, "stream"));
    int64_t version = json_integer_value(json_object_get(event, "version"));
    long long id = 0;
    char tail;
    if (!stream || sscanf(stream, "order-%lld%c", &id, &tail) != 1 || id <= 0) return 0;
    json_t *row = tr_db_row(db, NULL, "SELECT version, order_json FROM order_view WHERE id = ?",
                            "i", (int64_t)id);
    if (row && json_integer_value(json_object_get(row, "version")) >= version) {
        json_decref(row); /* the command that appended it wrote it already */
        return 0;
    }
    json_t *state = row ? json_incref(json_object_get(row, "order")) : NULL;
    json_decref(row);
    state = fold(state, event, data);
    int rc = state ? view_put(db, state, version) : 0;
    json_decref(state);
    return rc;
}

/* After a command: the read model catches up at once (read your writes on this service);
 * when that write fails, the projection brings it there. */
static void view_after(tr_ctx_t *ctx, const tr_aggregate_result_t *r)
{
    if (r->appended && r->state && view_put(tr_ctx_db(ctx), r->state, r->version))
        tr_log_warn("order view not updated; the projection will",
                    TR_LOG_INT("version", r->version));
}

static void store_failed(tr_ctx_t *ctx, const tr_aggregate_result_t *r)
{
    if (r->err == TR_ECONFLICT)
        tr_ctx_problem(ctx, 503, "busy", "Order busy",
                       "the order changed %d times while this request tried; try again",
                       TR_AGGREGATE_MAX_CONFLICTS);
    else
        tr_ctx_problem(ctx, 503, "store-unavailable", "Event store unavailable",
                       "the order's events could not be read or written (%s); try again",
                       r->err == TR_EBAD_RESPONSE ? "the event store refused"
                                                  : tr_strerror(r->err));
}

static void not_found(tr_ctx_t *ctx, int64_t id)
{
    tr_ctx_problem(ctx, 404, "not-found", "Unknown order", "order %lld does not exist",
                   (long long)id);
}

/* A command in flight (ctx memory). */
typedef struct command_s {
    int64_t id;
    const char *key;
    const json_t *payment;
    order_req_t *o; /* POST /orders */
    json_t *placed; /* the OrderPlaced event's data, for POST /orders */
    bool replay;    /* decide found the command done already */
} command_t;

static void run(tr_ctx_t *ctx, command_t *c, tr_aggregate_decide_cb decide,
                tr_aggregate_done_cb done)
{
    char stream[48];
    stream_of(stream, sizeof(stream), c->id);
    tr_aggregate_command_t cmd = {
        .stream = stream, .fold = fold, .decide = decide, .done = done, .data = c};
    tr_ctx_aggregate(ctx, &cmd);
}

static command_t *command(tr_ctx_t *ctx, int64_t id)
{
    command_t *c = tr_ctx_alloc(ctx, sizeof(*c));
    *c = (command_t){.id = id};
    return c;
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

static json_t *decide_place(tr_ctx_t *ctx, const json_t *state, int64_t version, void *data)
{
    (void)ctx, (void)version;
    command_t *c = data;
    c->replay = state != NULL; /* placed already: the same call again */
    return c->replay ? json_array()
                     : json_pack("[o]", event_of("OrderPlaced", json_incref(c->placed)));
}

static void placed(tr_ctx_t *ctx, const tr_aggregate_result_t *r, void *data)
{
    command_t *c = data;
    json_decref(c->placed);
    c->placed = NULL;
    if (r->err) {
        store_failed(ctx, r);
        return;
    }
    if (c->replay || !r->appended) {
        tr_ctx_set_header(ctx, "idempotent-replayed", "true");
        tr_ctx_reply_json(ctx, 200, shown(r->state));
        return;
    }
    view_after(ctx, r);
    tr_log_info(
        "order created", TR_LOG_INT("order_id", c->id),
        TR_LOG_INT("customer_id", c->o->customer_id), TR_LOG_STR("status", status_of(r->state)),
        TR_LOG_STR("stock_check", json_string_value(json_object_get(r->state, "stock_check"))),
        TR_LOG_INT("total_cents", json_integer_value(json_object_get(r->state, "total_cents"))));
    char location[64];
    snprintf(location, sizeof(location), "/orders/%lld", (long long)c->id);
    tr_ctx_set_header(ctx, "location", location);
    tr_ctx_reply_json(ctx, 201, shown(r->state));
}

/* The order's id: the one its Idempotency-Key was given (also by another replica at the same
 * moment), else a new one. 0 when the database fails. */
static int64_t order_id(tr_db_t *db, const char *key)
{
    if (!key)
        return tr_db_run(db, "INSERT INTO order_ids (idempotency_key) VALUES (NULL)", "") < 0
                   ? 0
                   : tr_db_last_id(db);
    if (tr_db_run(db,
                  "INSERT INTO order_ids (idempotency_key) VALUES (?)"
                  " ON CONFLICT (idempotency_key) DO NOTHING",
                  "s", key) < 0)
        return 0;
    return tr_db_int(db, 0, "SELECT id FROM order_ids WHERE idempotency_key = ?", "s", key);
}

static void store_order(order_req_t *o)
{
    tr_ctx_t *ctx = o->ctx;
    int64_t id = o->id ? o->id : order_id(tr_ctx_db(ctx), o->key);
    if (!id) {
        internal_error(ctx);
        return;
    }
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
    char now[32];
    time_t t = time(NULL);
    struct tm tm;
    strftime(now, sizeof(now), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
    command_t *c = command(ctx, id);
    c->o = o;
    c->key = o->key;
    c->placed = json_pack("{sI,sI,ss,ss,so,sI,ss,ss,ss}", "order_id", (json_int_t)id, "customer_id",
                          (json_int_t)o->customer_id, "status", pending ? "pending" : "created",
                          "stock_check", pending ? "deferred" : "verified", "items", items,
                          "total_cents", (json_int_t)total, "currency", "EUR", "created_at", now,
                          "correlation_id", tr_ctx_correlation_id(ctx));
    run(ctx, c, decide_place, placed);
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

/* Asks catalog about every item at once; the last answer goes on. */
static void price_order(order_req_t *o)
{
    /* Count every call first: a call's callback may run before tr_ctx_call returns. */
    o->outstanding = o->n;
    for (size_t i = 0; i < o->n; i++) {
        char target[64];
        snprintf(target, sizeof(target), "/products/%lld", (long long)o->lines[i].product_id);
        tr_ctx_call(o->ctx, "catalog", "GET", target, NULL, on_product, &o->lines[i]);
    }
}

/* A repeat of a keyed POST /orders: answered from the order its key made, or, when that
 * order never reached its stream (a crash between the two), placed now under the same id. */
static void prior_loaded(tr_ctx_t *ctx, const tr_aggregate_result_t *r, void *data)
{
    command_t *c = data;
    if (r->err) {
        store_failed(ctx, r);
    } else if (r->state) {
        tr_ctx_set_header(ctx, "idempotent-replayed", "true");
        tr_ctx_reply_json(ctx, 200, shown(r->state));
    } else {
        order_req_t *o = parse_order(ctx);
        if (!o) return;
        o->key = c->key;
        o->id = c->id;
        price_order(o);
    }
}

static void post_order(tr_ctx_t *ctx, void *data)
{
    (void)data;
    const char *key;
    if (!idempotency_key(ctx, &key)) return;
    int64_t prior = key ? tr_db_int(tr_ctx_db(ctx), 0,
                                    "SELECT id FROM order_ids WHERE idempotency_key = ?", "s", key)
                        : 0;
    if (prior) {
        command_t *c = command(ctx, prior);
        c->key = key;
        run(ctx, c, NULL, prior_loaded);
        return;
    }
    order_req_t *o = parse_order(ctx);
    if (!o) return;
    o->key = key;
    price_order(o);
}

/* ---- reading and cancelling ---- */

static bool order_param(tr_ctx_t *ctx, int64_t *id)
{
    if (tr_ctx_param_id(ctx, "id", id)) return true;
    tr_ctx_problem(ctx, 400, "bad-id", "Bad order id", "the order id must be a positive integer");
    return false;
}

static void got_order(tr_ctx_t *ctx, const tr_aggregate_result_t *r, void *data)
{
    command_t *c = data;
    if (r->err)
        store_failed(ctx, r);
    else if (r->state)
        tr_ctx_reply_json(ctx, 200, shown(r->state));
    else
        not_found(ctx, c->id);
}

/* An order by id is read from its stream: always its latest state. */
static void get_order(tr_ctx_t *ctx, void *data)
{
    (void)data;
    int64_t id;
    if (!order_param(ctx, &id)) return;
    run(ctx, command(ctx, id), NULL, got_order);
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
                              "SELECT order_json FROM order_view"
                              " WHERE (?1 = 0 OR customer_id = ?1) AND (?2 IS NULL OR status = ?2)"
                              " ORDER BY id DESC LIMIT ?3",
                              "isi", customer, status, limit);
    if (!rows) {
        internal_error(ctx);
        return;
    }
    json_t *items = json_array();
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row) json_array_append(items, json_object_get(row, "order"));
    json_decref(rows);
    tr_ctx_reply_json(ctx, 200, json_pack("{so}", "items", items));
}

static json_t *decide_cancel(tr_ctx_t *ctx, const json_t *state, int64_t version, void *data)
{
    (void)version;
    command_t *c = data;
    const char *status = status_of(state);
    const char *by = json_string_value(json_object_get(state, "_cancel_key"));
    if (!state) {
        not_found(ctx, c->id);
        return NULL;
    }
    if (!strcmp(status, "cancelled") && c->key && by && !strcmp(by, c->key)) {
        c->replay = true; /* the same cancel again: a saga's compensation sent twice */
        return json_array();
    }
    if (!strcmp(status, "cancelled")) {
        tr_ctx_problem(ctx, 409, "already-cancelled", "Order already cancelled",
                       "order %lld is cancelled already", (long long)c->id);
        return NULL;
    }
    if (!strcmp(status, "confirmed")) {
        tr_ctx_problem(ctx, 409, "order-confirmed", "Order confirmed",
                       "order %lld is confirmed (paid) and can no longer be cancelled",
                       (long long)c->id);
        return NULL;
    }
    /* A saga's compensation names its step in the key (<saga>:<step>:compensation). */
    bool by_saga = c->key && strstr(c->key, ":compensation");
    return json_pack(
        "[o]",
        event_of("OrderCancelled", json_pack("{sI,ss,ss*}", "order_id", (json_int_t)c->id, "reason",
                                             by_saga ? "the checkout could not be completed"
                                                     : "cancelled at the customer's request",
                                             "key", c->key)));
}

static void cancelled(tr_ctx_t *ctx, const tr_aggregate_result_t *r, void *data)
{
    command_t *c = data;
    if (r->err) {
        store_failed(ctx, r);
        return;
    }
    if (c->replay) tr_ctx_set_header(ctx, "idempotent-replayed", "true");
    view_after(ctx, r);
    if (r->appended) tr_log_info("order cancelled", TR_LOG_INT("order_id", c->id));
    tr_ctx_reply_json(ctx, 200, shown(r->state));
}

static void cancel_order(tr_ctx_t *ctx, void *data)
{
    (void)data;
    int64_t id;
    const char *key;
    if (!order_param(ctx, &id) || !idempotency_key(ctx, &key)) return;
    command_t *c = command(ctx, id);
    c->key = key;
    run(ctx, c, decide_cancel, cancelled);
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

/* Only the first confirm changes the order (OrderConfirmed); a repeat answers the same, and a
 * payment named after a confirm that named none is recorded (OrderPaymentRecorded). */
static json_t *decide_confirm(tr_ctx_t *ctx, const json_t *state, int64_t version, void *data)
{
    (void)version;
    command_t *c = data;
    const char *status = status_of(state);
    bool named = c->payment && !json_is_null(c->payment);
    if (!state) {
        not_found(ctx, c->id);
        return NULL;
    }
    if (!strcmp(status, "cancelled")) {
        tr_ctx_problem(ctx, 409, "order-cancelled", "Order cancelled",
                       "order %lld is cancelled and cannot be confirmed", (long long)c->id);
        return NULL;
    }
    if (!strcmp(status, "confirmed"))
        return named && !json_object_get(state, "payment")
                   ? json_pack("[o]", event_of("OrderPaymentRecorded",
                                               json_pack("{sI,sO}", "order_id", (json_int_t)c->id,
                                                         "payment", c->payment)))
                   : json_array();
    return json_pack("[o]",
                     event_of("OrderConfirmed", json_pack("{sI,sO?}", "order_id", (json_int_t)c->id,
                                                          "payment", named ? c->payment : NULL)));
}

static void confirmed(tr_ctx_t *ctx, const tr_aggregate_result_t *r, void *data)
{
    command_t *c = data;
    if (r->err) {
        store_failed(ctx, r);
        return;
    }
    view_after(ctx, r);
    if (r->appended) tr_log_info("order confirmed", TR_LOG_INT("order_id", c->id));
    tr_ctx_reply_json(ctx, 200, shown(r->state));
}

static void confirm_order(tr_ctx_t *ctx, void *data)
{
    (void)data;
    int64_t id;
    const json_t *payment;
    if (!order_param(ctx, &id) || !parse_payment(ctx, &payment)) return;
    command_t *c = command(ctx, id);
    c->payment = payment;
    run(ctx, c, decide_confirm, confirmed);
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
    declare_services(app);
    tr_projection_options_t po = {
        .name = "order-view", .stream_prefix = "order-", .apply = project};
    if (tr_app_projection(app, &po)) {
        snprintf(err, errlen, "cannot follow the event store (TRELLIS_EVENTSTORE)");
        return -1;
    }
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
            "of the create-order saga, idempotent by Idempotency-Key. Each order is an\n"
            "event-sourced aggregate: its stream order-<id> in the event store\n"
            "(TRELLIS_EVENTSTORE, else the registry's address) is its state; the database\n"
            "keeps ids and the read model that lists orders.\n"
            "SHOP_BREAKER_OPEN_MS sets how long a tripped breaker stays open (2000).\n",
        .migrations = migrations,
        .setup = setup,
    };
    return shop_main(&service, argc, argv);
}
