/*
 * Events for libtrellis apps: publishing through a transactional outbox, and CQRS read
 * models. Read models: a projection follows the event store (docs/
 * eventstore.md) and hands each committed event, in order, to the app's `apply` inside a
 * transaction of the app's own database that also moves the projection's checkpoint. So
 * the read model and the checkpoint change together: after a crash the projection resumes
 * at the first event not yet applied — no gap, no event applied twice.
 */
#ifndef TRELLIS_PROJECTION_H
#define TRELLIS_PROJECTION_H

#include <jansson.h>

#include "trellis/app.h"
#include "trellis/db.h"

/*
 * Applies one event (the store's JSON: stream, version, position, id, type, data,
 * metadata, time) to the read model with `db`, inside the projection's transaction. Return
 * 0; anything else rolls the transaction back and the event is tried again later (after a
 * backoff), so a bug or a full disk never skips an event.
 */
typedef int (*tr_projection_apply_cb)(tr_db_t *db, const json_t *event, void *data);

typedef struct tr_projection_options_s {
    const char *name;          /* the checkpoint's name in the app's database (required) */
    const char *stream_prefix; /* only streams starting with this ("order-"); NULL: all */
    const char *types;         /* only these event types, comma-separated; NULL: all */
    /* The event store, "ip:port". Default: $TRELLIS_EVENTSTORE, else the registry address
     * (trellis up serves both on the control plane). */
    const char *store;
    tr_projection_apply_cb apply;
    void *data;
} tr_projection_options_t;

/*
 * Adds a projection to an app with a database (call before tr_app_run; it runs while the
 * app runs, from its loop, by long-polling the store's $all). Returns 0, UV_EINVAL for a
 * missing name/apply or an app without a database.
 */
int tr_app_projection(tr_app_t *app, const tr_projection_options_t *o);

/* The position of the last event the projection applied (-1 before the first). */
int64_t tr_projection_checkpoint(tr_app_t *app, const char *name);

/*
 * Publishes an event through the app's transactional outbox: the event is written to the
 * app's own database (table tr_outbox) with `db` — call it inside the transaction that
 * makes the state change it describes (tr_db_begin … tr_db_commit), so the event exists if
 * and only if the change does. The app's relay then appends it to the event store's
 * `stream` (at least once; the event id "<app>-outbox-<n>" makes a repeat a no-op) and
 * removes it, in order, retrying with backoff while the store is down. `data` is borrowed.
 * Returns 0, or an error (logged) from the database.
 */
int tr_app_publish(tr_app_t *app, tr_db_t *db, const char *stream, const char *type,
                   const json_t *data);

#endif
