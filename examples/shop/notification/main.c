/*
 * The shop's notification service: follows the order streams in the event store and records
 * the message it would send for each order event (a real one would email the customer).
 * The messages are a read model kept by a libtrellis projection: each event is applied
 * with the projection's checkpoint in one transaction, so a restart neither skips nor
 * repeats a message.
 */
#include <trellis/app.h>
#include <trellis/log.h>
#include <trellis/projection.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shop.h"

static const char *const migrations[] = {
    "CREATE TABLE message ("
    " id INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, position INTEGER NOT NULL,"
    " order_id TEXT NOT NULL, customer_id TEXT, kind TEXT NOT NULL, text TEXT NOT NULL,"
    " created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ','now')));"
    "CREATE INDEX message_order ON message (order_id);",
    NULL};

/* The text of a value that may be a number or a string ("" when absent). */
static void text_of(const json_t *v, char *out, size_t len)
{
    if (json_is_integer(v))
        snprintf(out, len, "%lld", (long long)json_integer_value(v));
    else
        snprintf(out, len, "%s", json_is_string(v) ? json_string_value(v) : "");
}

/* One order event → one message (events of other types are read past). */
static int apply(tr_db_t *db, const json_t *ev, void *data)
{
    (void)data;
    const char *type = json_string_value(json_object_get(ev, "type"));
    const json_t *d = json_object_get(ev, "data");
    char order[64], customer[64], msg[512];
    text_of(json_object_get(d, "order_id"), order, sizeof(order));
    text_of(json_object_get(d, "customer_id"), customer, sizeof(customer));
    if (!*customer) { /* later events name only the order: its customer is known already */
        json_t *row = tr_db_row(db, NULL,
                                "SELECT customer_id FROM message WHERE order_id = ? AND"
                                " customer_id IS NOT NULL LIMIT 1",
                                "s", order);
        text_of(json_object_get(row, "customer_id"), customer, sizeof(customer));
        json_decref(row);
    }
    const char *kind;
    if (!strcmp(type, "OrderPlaced")) {
        kind = "order-placed";
        snprintf(msg, sizeof(msg),
                 "Thank you for your order %s (%.2f EUR). We will let you know "
                 "when it is confirmed.",
                 order, (double)json_integer_value(json_object_get(d, "total_cents")) / 100.0);
    } else if (!strcmp(type, "OrderConfirmed")) {
        kind = "order-confirmed";
        snprintf(msg, sizeof(msg), "Your order %s is confirmed and paid.", order);
    } else if (!strcmp(type, "OrderCancelled")) {
        kind = "order-cancelled";
        const char *why = json_string_value(json_object_get(d, "reason"));
        snprintf(msg, sizeof(msg), "Your order %s was cancelled%s%s.", order, why ? ": " : "",
                 why ? why : "");
    } else {
        return 0;
    }
    int rc = tr_db_run(db,
                       "INSERT INTO message (event_id, position, order_id, customer_id, kind, text)"
                       " VALUES (?, ?, ?, ?, ?, ?)",
                       "sissss", json_string_value(json_object_get(ev, "id")),
                       (int64_t)json_integer_value(json_object_get(ev, "position")), order,
                       *customer ? customer : NULL, kind, msg);
    if (rc == TR_EEXISTS) return 0; /* the same event again: the message is there already */
    if (rc < 0) return rc;
    tr_log_info("notification recorded", TR_LOG_STR("order_id", order), TR_LOG_STR("kind", kind));
    return 0;
}

static void list_messages(tr_ctx_t *ctx, void *data)
{
    (void)data;
    const char *order = tr_ctx_query(ctx, "order_id");
    const char *customer = tr_ctx_query(ctx, "customer_id");
    int err;
    json_t *rows =
        tr_db_rows(tr_ctx_db(ctx), &err,
                   "SELECT id, order_id, customer_id, kind, text, position, created_at"
                   " FROM message WHERE (?1 IS NULL OR order_id = ?1)"
                   " AND (?2 IS NULL OR customer_id = ?2) ORDER BY position LIMIT 500",
                   "ss", order && *order ? order : NULL, customer && *customer ? customer : NULL);
    if (!rows) {
        tr_ctx_problem(ctx, 500, "storage-failed", "Cannot read messages", "see the log");
        return;
    }
    tr_app_t *app = tr_ctx_app(ctx);
    tr_ctx_reply_json(ctx, 200,
                      json_pack("{so,sI}", "items", rows, "checkpoint",
                                (json_int_t)tr_projection_checkpoint(app, "order-notifications")));
}

static int setup(tr_app_t *app, char *err, size_t errlen)
{
    tr_projection_options_t po = {.name = "order-notifications",
                                  .stream_prefix = "order-",
                                  .types = "OrderPlaced,OrderConfirmed,OrderCancelled",
                                  .apply = apply};
    if (tr_app_projection(app, &po)) {
        snprintf(err, errlen, "the event store address is not ip:port (TRELLIS_EVENTSTORE)");
        return -1;
    }
    tr_app_route(app, "GET", "/notifications", list_messages, NULL);
    return 0;
}

int main(int argc, char **argv)
{
    static const shop_service_t service = {
        .name = "notification",
        .about = "The shop's notification service: follows the order streams (order-*) of the\n"
                 "event store and records the message it would send for each OrderPlaced,\n"
                 "OrderConfirmed and OrderCancelled event; GET /notifications?order_id= lists\n"
                 "them. TRELLIS_EVENTSTORE (ip:port) names the store; by default the registry's\n"
                 "address, where trellis up serves both.\n",
        .migrations = migrations,
        .setup = setup,
    };
    return shop_main(&service, argc, argv);
}
