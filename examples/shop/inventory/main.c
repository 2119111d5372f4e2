/* The shop's inventory service: stock per product and reservations that hold it for an order. */
#include <trellis/app.h>
#include <trellis/log.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/types.h>

#include "shop.h"

#define DEFAULT_TTL_S 900
#define MAX_TTL_S     86400
#define MAX_ITEMS     100
#define MAX_QUANTITY  1000000
#define MAX_ON_HAND   1000000000
#define MAX_ORDER_ID  128

/*
 * Reservations keep expires_at as unix seconds (REAL, so a 1 s TTL is exact). The seed is a
 * migration so that two replicas starting on one database seed it once.
 */
static const char *const migrations[] = {
    "CREATE TABLE stock (product_id INTEGER PRIMARY KEY,"
    "  on_hand INTEGER NOT NULL CHECK (on_hand >= 0));"
    "CREATE TABLE reservation (id INTEGER PRIMARY KEY, order_id NOT NULL UNIQUE,"
    "  status TEXT NOT NULL CHECK (status IN ('held', 'confirmed', 'released', 'expired')),"
    "  expires_at REAL NOT NULL, created_at REAL NOT NULL);"
    "CREATE INDEX reservation_by_status ON reservation (status, expires_at);"
    "CREATE TABLE reservation_item ("
    "  reservation_id INTEGER NOT NULL REFERENCES reservation (id),"
    "  product_id INTEGER NOT NULL, quantity INTEGER NOT NULL CHECK (quantity > 0),"
    "  PRIMARY KEY (reservation_id, product_id));"
    "CREATE INDEX reservation_item_by_product ON reservation_item (product_id);",
    "WITH RECURSIVE n(id) AS (SELECT 1 UNION ALL SELECT id + 1 FROM n WHERE id < 12)"
    " INSERT INTO stock (product_id, on_hand)"
    " SELECT id, CASE id WHEN 11 THEN 3 WHEN 12 THEN 0 ELSE 100 END FROM n;",
    NULL};

/* Quantity of a product held by reservations that have not expired at `now`. */
#define RESERVED_SQL                                                                               \
    "SELECT COALESCE(SUM(i.quantity), 0) FROM reservation_item i"                                  \
    " JOIN reservation r ON r.id = i.reservation_id"                                               \
    " WHERE i.product_id = ? AND r.status = 'held' AND r.expires_at > ?"

typedef struct item_s {
    int64_t product_id;
    int64_t quantity;
} item_t;

static double now_s(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static void internal_error(tr_ctx_t *ctx)
{
    tr_ctx_problem(ctx, 500, "internal", "Internal error",
                   "the inventory database failed; the service's log says why");
}

static bool int_in(const json_t *v, int64_t lo, int64_t hi)
{
    return json_is_integer(v) && json_integer_value(v) >= lo && json_integer_value(v) <= hi;
}

/* ---- stock ---- */

/* The stock of a product as served (new reference), or NULL when it has no stock row. */
static json_t *stock_json(tr_db_t *db, int64_t product_id, int *err)
{
    json_t *s = tr_db_row(db, err, "SELECT product_id, on_hand FROM stock WHERE product_id = ?",
                          "i", product_id);
    if (!s) return NULL;
    int64_t reserved = tr_db_int(db, 0, RESERVED_SQL, "id", product_id, now_s());
    int64_t available = json_integer_value(json_object_get(s, "on_hand")) - reserved;
    json_object_set_new(s, "reserved", json_integer(reserved));
    json_object_set_new(s, "available", json_integer(available > 0 ? available : 0));
    return s;
}

static void reply_stock(tr_ctx_t *ctx, int64_t product_id)
{
    int err = 0;
    json_t *s = stock_json(tr_ctx_db(ctx), product_id, &err);
    if (err)
        internal_error(ctx);
    else if (!s)
        tr_ctx_problem(ctx, 404, "not-found", "Unknown product", "product %lld has no stock record",
                       (long long)product_id);
    else
        tr_ctx_reply_json(ctx, 200, s);
}

static bool product_param(tr_ctx_t *ctx, int64_t *id)
{
    if (tr_ctx_param_id(ctx, "product_id", id)) return true;
    tr_ctx_problem(ctx, 400, "bad-id", "Bad product id",
                   "the product id must be a positive integer");
    return false;
}

static void get_stock(tr_ctx_t *ctx, void *data)
{
    (void)data;
    int64_t id;
    if (product_param(ctx, &id)) reply_stock(ctx, id);
}

static void put_stock(tr_ctx_t *ctx, void *data)
{
    (void)data;
    int64_t id;
    if (!product_param(ctx, &id)) return;
    json_t *on_hand = json_object_get(tr_ctx_body(ctx), "on_hand");
    if (!int_in(on_hand, 0, MAX_ON_HAND)) {
        tr_ctx_problem(ctx, 422, "invalid-stock", "Invalid stock",
                       "\"on_hand\" must be an integer from 0 to %d", MAX_ON_HAND);
        return;
    }
    int rc = tr_db_run(tr_ctx_db(ctx),
                       "INSERT INTO stock (product_id, on_hand) VALUES (?, ?)"
                       " ON CONFLICT (product_id) DO UPDATE SET on_hand = excluded.on_hand",
                       "ii", id, (int64_t)json_integer_value(on_hand));
    if (rc < 0)
        internal_error(ctx);
    else
        reply_stock(ctx, id);
}

/* ---- reservations ---- */

static json_t *reservation_json(tr_db_t *db, int64_t id)
{
    json_t *r = tr_db_row(db, NULL,
                          "SELECT id, order_id, status,"
                          " strftime('%Y-%m-%dT%H:%M:%fZ', expires_at, 'unixepoch') AS expires_at"
                          " FROM reservation WHERE id = ?",
                          "i", id);
    if (!r) return NULL;
    json_t *items = tr_db_rows(db, NULL,
                               "SELECT product_id, quantity FROM reservation_item"
                               " WHERE reservation_id = ? ORDER BY product_id",
                               "i", id);
    json_object_set_new(r, "items", items ? items : json_array());
    return r;
}

static void reply_reservation(tr_ctx_t *ctx, int status, int64_t id)
{
    json_t *r = reservation_json(tr_ctx_db(ctx), id);
    if (r)
        tr_ctx_reply_json(ctx, status, r);
    else
        internal_error(ctx);
}

/* A held reservation past its expiry is expired: say so in the database when touching it. */
static void expire_if_due(tr_db_t *db, int64_t id)
{
    tr_db_run(db,
              "UPDATE reservation SET status = 'expired'"
              " WHERE id = ? AND status = 'held' AND expires_at <= ?",
              "id", id, now_s());
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
    tr_ctx_problem(ctx, 422, "invalid-reservation", "Invalid reservation", "%s", detail);
    return false;
}

/* Reads "items" into out[*n]; false after answering 422 naming the field. */
static bool parse_items(tr_ctx_t *ctx, const json_t *body, item_t *out, size_t *n)
{
    const json_t *items = json_object_get(body, "items");
    size_t count = json_array_size(items);
    if (!json_is_array(items) || count < 1 || count > MAX_ITEMS)
        return invalid(ctx, "\"items\" must be an array of 1 to %d items", MAX_ITEMS);
    for (size_t i = 0; i < count; i++) {
        const json_t *it = json_array_get(items, i);
        const json_t *pid = json_object_get(it, "product_id");
        const json_t *qty = json_object_get(it, "quantity");
        char field[48];
        snprintf(field, sizeof(field), "items[%zu].product_id", i);
        if (!int_in(pid, 1, INT64_MAX))
            return invalid(ctx, "\"%s\" must be a positive integer", field);
        snprintf(field, sizeof(field), "items[%zu].quantity", i);
        if (!int_in(qty, 1, MAX_QUANTITY))
            return invalid(ctx, "\"%s\" must be an integer from 1 to %d", field, MAX_QUANTITY);
        out[i] = (item_t){json_integer_value(pid), json_integer_value(qty)};
        for (size_t j = 0; j < i; j++)
            if (out[j].product_id == out[i].product_id)
                return invalid(ctx, "\"items[%zu].product_id\" repeats product %lld of items[%zu]",
                               i, (long long)out[i].product_id, j);
    }
    *n = count;
    return true;
}

/* Validates the body of POST /reservations; false after answering 422. */
static bool parse_reservation(tr_ctx_t *ctx, item_t *items, size_t *n, int64_t *ttl)
{
    const json_t *body = tr_ctx_body(ctx);
    const json_t *order = json_object_get(body, "order_id");
    bool text = json_is_string(order) && json_string_length(order) > 0 &&
                json_string_length(order) <= MAX_ORDER_ID;
    if (!text && !int_in(order, 1, INT64_MAX))
        return invalid(ctx, "\"order_id\" must be a positive integer or a string of 1 to %d bytes",
                       MAX_ORDER_ID);
    if (!parse_items(ctx, body, items, n)) return false;
    const json_t *t = json_object_get(body, "ttl_seconds");
    if (t && !int_in(t, 1, MAX_TTL_S))
        return invalid(ctx, "\"ttl_seconds\" must be an integer from 1 to %d", MAX_TTL_S);
    *ttl = t ? json_integer_value(t) : DEFAULT_TTL_S;
    return true;
}

/* The id of the reservation for this order, 0 when none. The order id binds as it came. */
static int64_t reservation_of_order(tr_db_t *db, const json_t *order)
{
    const char *sql = "SELECT id FROM reservation WHERE order_id = ?";
    if (json_is_string(order)) return tr_db_int(db, 0, sql, "s", json_string_value(order));
    return tr_db_int(db, 0, sql, "i", (int64_t)json_integer_value(order));
}

/* Inserts the reservation and its items; its id, or a negative error. */
static int64_t insert_reservation(tr_db_t *db, const json_t *order, const item_t *items, size_t n,
                                  int64_t ttl)
{
    const char *sql = "INSERT INTO reservation (order_id, status, expires_at, created_at)"
                      " VALUES (?, 'held', ?, ?)";
    double now = now_s();
    int rc =
        json_is_string(order)
            ? tr_db_run(db, sql, "sdd", json_string_value(order), now + (double)ttl, now)
            : tr_db_run(db, sql, "idd", (int64_t)json_integer_value(order), now + (double)ttl, now);
    if (rc < 0) return rc;
    int64_t id = tr_db_last_id(db);
    for (size_t i = 0; i < n && rc >= 0; i++)
        rc = tr_db_run(db,
                       "INSERT INTO reservation_item (reservation_id, product_id, quantity)"
                       " VALUES (?, ?, ?)",
                       "iii", id, items[i].product_id, items[i].quantity);
    return rc < 0 ? rc : id;
}

/* The first item there is not enough of (its index), or -1; *available is what there is. */
static ssize_t find_shortage(tr_db_t *db, const item_t *items, size_t n, int64_t *available)
{
    double now = now_s();
    for (size_t i = 0; i < n; i++) {
        int64_t on_hand = tr_db_int(db, 0, "SELECT on_hand FROM stock WHERE product_id = ?", "i",
                                    items[i].product_id);
        int64_t reserved = tr_db_int(db, 0, RESERVED_SQL, "id", items[i].product_id, now);
        *available = on_hand > reserved ? on_hand - reserved : 0;
        if (*available < items[i].quantity) return (ssize_t)i;
    }
    return -1;
}

/* Inside the transaction: answers for an existing reservation, or checks and reserves. */
static void reserve_locked(tr_ctx_t *ctx, const item_t *items, size_t n, int64_t ttl)
{
    tr_db_t *db = tr_ctx_db(ctx);
    const json_t *order = json_object_get(tr_ctx_body(ctx), "order_id");
    int64_t id = reservation_of_order(db, order);
    if (id > 0) { /* idempotent: the same order gets its reservation back */
        expire_if_due(db, id);
        tr_db_commit(db);
        reply_reservation(ctx, 200, id);
        return;
    }
    int64_t available = 0;
    ssize_t short_at = find_shortage(db, items, n, &available);
    if (short_at >= 0) {
        tr_db_rollback(db);
        tr_ctx_problem(ctx, 409, "insufficient-stock", "Insufficient stock",
                       "product %lld: %lld available, %lld requested",
                       (long long)items[short_at].product_id, (long long)available,
                       (long long)items[short_at].quantity);
        return;
    }
    id = insert_reservation(db, order, items, n, ttl);
    if (id < 0 || tr_db_commit(db)) {
        tr_db_rollback(db);
        internal_error(ctx);
        return;
    }
    char location[64];
    snprintf(location, sizeof(location), "/reservations/%lld", (long long)id);
    tr_ctx_set_header(ctx, "location", location);
    reply_reservation(ctx, 201, id);
}

/* Atomic: BEGIN IMMEDIATE takes the write lock, so no other replica reserves in between. */
static void post_reservation(tr_ctx_t *ctx, void *data)
{
    (void)data;
    item_t items[MAX_ITEMS];
    size_t n = 0;
    int64_t ttl = 0;
    if (!parse_reservation(ctx, items, &n, &ttl)) return;
    if (tr_db_begin(tr_ctx_db(ctx))) {
        internal_error(ctx);
        return;
    }
    reserve_locked(ctx, items, n, ttl);
}

static bool reservation_param(tr_ctx_t *ctx, int64_t *id)
{
    if (tr_ctx_param_id(ctx, "id", id)) return true;
    tr_ctx_problem(ctx, 400, "bad-id", "Bad reservation id",
                   "the reservation id must be a positive integer");
    return false;
}

static void get_reservation(tr_ctx_t *ctx, void *data)
{
    (void)data;
    int64_t id;
    if (!reservation_param(ctx, &id)) return;
    expire_if_due(tr_ctx_db(ctx), id);
    json_t *r = reservation_json(tr_ctx_db(ctx), id);
    if (r)
        tr_ctx_reply_json(ctx, 200, r);
    else
        tr_ctx_problem(ctx, 404, "not-found", "Unknown reservation",
                       "reservation %lld does not exist", (long long)id);
}

/*
 * Starts a state change of reservation `id`: begins a transaction, expires it when due and
 * copies its status into status[len]. False after answering (and rolling back) when there
 * is no such reservation or the database failed.
 */
static bool begin_change(tr_ctx_t *ctx, int64_t id, char *status, size_t len)
{
    tr_db_t *db = tr_ctx_db(ctx);
    if (tr_db_begin(db)) {
        internal_error(ctx);
        return false;
    }
    expire_if_due(db, id);
    json_t *row = tr_db_row(db, NULL, "SELECT status FROM reservation WHERE id = ?", "i", id);
    if (!row) {
        tr_db_rollback(db);
        tr_ctx_problem(ctx, 404, "not-found", "Unknown reservation",
                       "reservation %lld does not exist", (long long)id);
        return false;
    }
    snprintf(status, len, "%s", json_string_value(json_object_get(row, "status")));
    json_decref(row);
    return true;
}

static void commit_and_reply(tr_ctx_t *ctx, int64_t id)
{
    if (tr_db_commit(tr_ctx_db(ctx))) {
        tr_db_rollback(tr_ctx_db(ctx));
        internal_error(ctx);
        return;
    }
    reply_reservation(ctx, 200, id);
}

/* Confirming takes the reserved quantities off on_hand; confirming twice is harmless. */
static void confirm_reservation(tr_ctx_t *ctx, void *data)
{
    (void)data;
    int64_t id;
    char status[16];
    if (!reservation_param(ctx, &id) || !begin_change(ctx, id, status, sizeof(status))) return;
    tr_db_t *db = tr_ctx_db(ctx);
    if (!strcmp(status, "released") || !strcmp(status, "expired")) {
        tr_db_rollback(db);
        tr_ctx_problem(ctx, 409, "reservation-not-held", "Reservation not held",
                       "reservation %lld is %s and cannot be confirmed", (long long)id, status);
        return;
    }
    if (!strcmp(status, "held")) {
        int rc = tr_db_run(db,
                           "UPDATE stock SET on_hand = on_hand - (SELECT quantity"
                           " FROM reservation_item WHERE reservation_id = ?1"
                           " AND product_id = stock.product_id) WHERE product_id IN"
                           " (SELECT product_id FROM reservation_item WHERE reservation_id = ?1)",
                           "i", id);
        if (rc == TR_ESTATE) { /* on_hand was lowered below the reservation since */
            tr_db_rollback(db);
            tr_ctx_problem(ctx, 409, "insufficient-stock", "Insufficient stock",
                           "on_hand fell below what reservation %lld holds", (long long)id);
            return;
        }
        if (rc >= 0)
            rc = tr_db_run(db, "UPDATE reservation SET status = 'confirmed' WHERE id = ?", "i", id);
        if (rc < 0) {
            tr_db_rollback(db);
            internal_error(ctx);
            return;
        }
    }
    commit_and_reply(ctx, id);
}

/* Releasing frees what the reservation held; releasing twice is harmless. */
static void release_reservation(tr_ctx_t *ctx, void *data)
{
    (void)data;
    int64_t id;
    char status[16];
    if (!reservation_param(ctx, &id) || !begin_change(ctx, id, status, sizeof(status))) return;
    tr_db_t *db = tr_ctx_db(ctx);
    if (!strcmp(status, "confirmed")) {
        tr_db_rollback(db);
        tr_ctx_problem(ctx, 409, "reservation-confirmed", "Reservation confirmed",
                       "reservation %lld is confirmed and cannot be released", (long long)id);
        return;
    }
    if (tr_db_run(db, "UPDATE reservation SET status = 'released' WHERE id = ?", "i", id) < 0) {
        tr_db_rollback(db);
        internal_error(ctx);
        return;
    }
    commit_and_reply(ctx, id);
}

/* ---- the program ---- */

static int setup(tr_app_t *app, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    tr_app_route(app, "GET", "/stock/{product_id}", get_stock, NULL);
    tr_app_route(app, "PUT", "/stock/{product_id}", put_stock, NULL);
    tr_app_route(app, "POST", "/reservations", post_reservation, NULL);
    tr_app_route(app, "GET", "/reservations/{id}", get_reservation, NULL);
    tr_app_route(app, "POST", "/reservations/{id}/confirm", confirm_reservation, NULL);
    tr_app_route(app, "DELETE", "/reservations/{id}", release_reservation, NULL);
    return 0;
}

int main(int argc, char **argv)
{
    static const shop_service_t service = {
        .name = "inventory",
        .about = "The shop's inventory service: stock and reservations with expiry\n"
                 "(examples/shop/API.md), stored in SQLite and seeded with stock.\n",
        .migrations = migrations,
        .setup = setup,
    };
    return shop_main(&service, argc, argv);
}
