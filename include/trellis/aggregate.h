/*
 * Event-sourced aggregates for libtrellis apps: an aggregate's state is never stored, it is
 * the fold of the events in its stream in the event store (docs/eventstore.md). A command
 * loads the stream, folds it into the state, lets the app decide which events the command
 * makes from that state, and appends them with the stream's version as the expected
 * version. When another writer appended first (409), the stream is read again and the
 * command decided again, so two replicas can take commands for one aggregate without a
 * lock and without losing an update. docs/sdk.md has an example.
 */
#ifndef TRELLIS_AGGREGATE_H
#define TRELLIS_AGGREGATE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "trellis/app.h"

/* How many times a command is decided again after losing a race before it gives up. */
#define TR_AGGREGATE_MAX_CONFLICTS 5

/*
 * Folds one event into the state and returns the new state. `state` is NULL before the
 * stream's first event; the callback owns it (return it changed, or free it and return
 * another). `event` is the store's event object ({"type","data","version",…}), borrowed.
 * Unknown event types should leave the state as it is.
 */
typedef json_t *(*tr_aggregate_fold_cb)(json_t *state, const json_t *event, void *data);

/*
 * Decides what the command does to the current state (NULL: the stream has no events;
 * `version` is then -1). Returns a new reference to an array of events to append, each
 * {"type": "...", "data": ..., "metadata": {...}?, "id": "..."?}; an empty array when the
 * command changes nothing (a repeat, say); or NULL after answering the request itself (a
 * refusal such as 404 or 409: nothing is appended and `done` is not called). May be called
 * more than once for one command, after a conflict: it must not have side effects.
 */
typedef json_t *(*tr_aggregate_decide_cb)(tr_ctx_t *ctx, const json_t *state, int64_t version,
                                          void *data);

typedef struct tr_aggregate_result_s {
    int err;             /* 0; TR_ECONFLICT (lost the race TR_AGGREGATE_MAX_CONFLICTS times);
                            TR_EBAD_RESPONSE (the store answered `status`); or a call error */
    int status;          /* the store's HTTP status when err is TR_EBAD_RESPONSE */
    const json_t *state; /* the state after the command, borrowed (NULL: no events) */
    int64_t version;     /* the stream's last version after the command, -1 for none */
    bool appended;       /* this command appended events */
} tr_aggregate_result_t;

typedef void (*tr_aggregate_done_cb)(tr_ctx_t *ctx, const tr_aggregate_result_t *r, void *data);

typedef struct tr_aggregate_command_s {
    const char *stream; /* the aggregate's stream, "order-42" (copied) */
    tr_aggregate_fold_cb fold;
    tr_aggregate_decide_cb decide; /* NULL: only load the state */
    tr_aggregate_done_cb done;     /* fires once, unless decide answered the request */
    void *data;
} tr_aggregate_command_t;

/*
 * Runs a command on an aggregate for the request `ctx` (see the top of this file). The store
 * is $TRELLIS_EVENTSTORE, else the registry's address (trellis up serves both on :8500); its
 * calls carry the request's x-correlation-id and traceparent and have the policy of the
 * service "eventstore" (tr_app_service; default: 2 s per attempt, connect failures retried).
 * `done` fires on the app's loop, also when the store cannot be reached (err set: answer
 * 503). `c` is copied.
 */
void tr_ctx_aggregate(tr_ctx_t *ctx, const tr_aggregate_command_t *c);

#endif
