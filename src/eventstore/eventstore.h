/* The event store: streams of events in SQLite, appended by a group-committing writer. */
#ifndef TR_EVENTSTORE_EVENTSTORE_H
#define TR_EVENTSTORE_EVENTSTORE_H

#include "trellis/http.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct tr_eventstore_s tr_eventstore_t;

#define TR_ES_MAX_EVENTS     1000 /* per append request */
#define TR_ES_MAX_STREAM     200  /* bytes of a stream name */
#define TR_ES_MAX_ID         200  /* bytes of an event id */
#define TR_ES_MAX_BODY       (8u << 20)
#define TR_ES_MAX_READ_LIMIT 10000

typedef struct tr_eventstore_options_s {
    /*
     * The loop that answers HTTP requests and receives append results; NULL for a store
     * used only through tr_eventstore_append_wait (tests, tools).
     */
    uv_loop_t *loop;
    bool sync_full; /* synchronous=FULL: fsync every commit (default NORMAL) */
    /* Where push URLs naming a service ("service:NAME/PATH") find its instances: a registry
     * in this process (trellis up), else a Consul-compatible one at "ip:port"; neither:
     * such URLs are refused. */
    struct tr_discovery_hub_s *hub;
    const char *registry;
} tr_eventstore_options_t;

/*
 * Opens (creating) the store at `path`: a directory (then `path`/events.db is used) or a
 * database file. Starts the writer thread. On failure returns an error and says why in
 * err. `opts` may be NULL; it is copied.
 */
int tr_eventstore_open(const char *path, const tr_eventstore_options_t *opts, tr_eventstore_t **out,
                       char *err, size_t errlen);

/*
 * Commits what is queued, answers every waiting subscriber, stops the writer and closes
 * the database. With a loop, call it on the loop's thread; the memory is freed once the
 * loop has closed the store's handles. NULL is ignored.
 */
void tr_eventstore_close(tr_eventstore_t *s);

/*
 * Serves `req` when its path is under /api/streams or /api/subscriptions (then it answers or takes
 * the request over, and returns true); returns false for any other path, leaving req untouched.
 * Call it on the store's loop.
 */
bool tr_eventstore_handle(tr_eventstore_t *s, tr_http_req_t *req);

/*
 * True for an append (POST /api/streams/{stream}): the store applies appends in the order
 * they reach it, through one writer's queue, so a server may hand pipelined appends to
 * tr_eventstore_handle before the earlier ones are answered (tr_http_server_options_t's
 * `ordered`). Clients that pipeline single-event appends then share group commits.
 */
bool tr_eventstore_ordered(const tr_http_req_t *req);

/* ---- the store's API (used by the HTTP layer and by tests) ------------------------------ */

/* Expected versions other than a version N >= 0. */
enum { TR_ES_EXPECT_NO_STREAM = -1, TR_ES_EXPECT_ANY = -2, TR_ES_EXPECT_EXISTS = -3 };

/*
 * Writes. The TR_ES_OP_SUB_* ops keep push subscriptions (outbox.c) in the same database:
 * `stream` then names the subscription.
 */
enum {
    TR_ES_OP_APPEND,
    TR_ES_OP_DELETE,
    TR_ES_OP_METADATA,
    TR_ES_OP_SUB_PUT,        /* text: definition; at: 0 from the start, -1 from the end */
    TR_ES_OP_SUB_DELETE,     /* the subscription and its dead letters */
    TR_ES_OP_SUB_CHECKPOINT, /* at: handled position; dead_letter_done: at was a dead letter */
    TR_ES_OP_SUB_DEAD,       /* at: position dead-lettered after `attempts`; text: last error */
    TR_ES_OP_SUB_RETRY,      /* at: the dead letter to send again (404 when there is none) */
    TR_ES_OP_SCAVENGE,       /* removes what metadata excludes; position: events removed */
};

typedef struct tr_es_write_s tr_es_write_t;
typedef void (*tr_es_write_cb)(tr_es_write_t *w);

/*
 * One write for the writer thread: an append, a soft delete or a metadata change. The
 * caller owns it and everything it points to until the callback fires.
 */
struct tr_es_write_s {
    int op;
    const char *stream;
    int64_t expected;              /* append: TR_ES_EXPECT_* or a version */
    json_t *events;                /* append: an array checked by tr_eventstore_check_events */
    int64_t max_age_ms, max_count; /* metadata: 0 for none */
    const char *text;              /* TR_ES_OP_SUB_*: see the ops */
    int64_t at, attempts;
    bool dead_letter_done;
    bool ids_made; /* append: the store made every id (no idempotency lookup needed) */
    tr_es_write_cb cb;
    void *data;
    /* Results. status: 201 appended, 200 idempotent repeat or done, 409 wrong expected
     * version or id used elsewhere, 410 deleted, 404 no such stream, 503 storage failed.
     * TR_ES_OP_SUB_PUT: position is the subscription's first checkpoint. */
    int status;
    int64_t first_version, last_version, position, current_version;
    char detail[256];
    /* The store's. */
    tr_es_write_t *next;
    void *waiter;
};

/*
 * Queues `w` for the writer. With a loop, call it on the loop's thread: w->cb fires there
 * once the transaction holding it committed (or failed); without a loop it fires on the
 * writer thread.
 */
void tr_eventstore_write(tr_eventstore_t *s, tr_es_write_t *w);

/* Queues `w` and blocks until it is done (w->cb is ignored). Never call it on the loop. */
void tr_eventstore_write_wait(tr_eventstore_t *s, tr_es_write_t *w);

/*
 * Checks an append body: one event object or an array of 1..TR_ES_MAX_EVENTS. Returns 0
 * and *events (a new reference to an array; events without an id get a UUID) or the HTTP
 * status (400 wrong shape, 422 bad event) with the reason in detail. The ids are added to
 * the body's event objects in place. With `ids_made`, says whether the store made every id
 * (no event named one: then none can repeat an earlier event).
 */
int tr_eventstore_check_events(json_t *body, json_t **events, char *detail, size_t len);
int tr_eventstore_check_append(json_t *body, json_t **events, bool *ids_made, char *detail,
                               size_t len);

/* A stream name is 1..200 bytes, no control characters, not starting with '$'. */
bool tr_eventstore_valid_stream(const char *name, size_t len);

/* An event as read; strings live only during the callback. metadata may be NULL. */
typedef struct tr_es_event_s {
    const char *stream, *id, *type, *data, *metadata;
    int64_t version, position, time_ms;
} tr_es_event_t;

typedef void (*tr_es_event_cb)(const tr_es_event_t *e, void *data);

typedef struct tr_es_query_s {
    const char *stream; /* NULL reads $all by position */
    int64_t from;       /* version (stream) or position ($all); -1: the start (backward: end) */
    bool backward;      /* streams only */
    size_t limit;       /* 0 → 100 */
} tr_es_query_t;

typedef struct tr_es_page_s {
    bool found;           /* the stream has events and is not deleted ($all: always) */
    int64_t last_version; /* the stream's last version (-1 none) */
    int64_t next;         /* where the next page starts, -1 when none is there yet */
    int64_t last_read;    /* version or position of the last event given, -1 none */
    size_t count;
} tr_es_page_t;

/*
 * Reads a page through the read-only connection, calling cb for each event. Safe from
 * any thread. Returns 0, or TR_EIO when SQLite failed.
 */
int tr_eventstore_read(tr_eventstore_t *s, const tr_es_query_t *q, tr_es_event_cb cb, void *data,
                       tr_es_page_t *page);

/* The stream's metadata: found false for an unknown stream. */
typedef struct tr_es_meta_s {
    bool found;
    int64_t max_age_ms, max_count;
} tr_es_meta_t;
int tr_eventstore_metadata(tr_eventstore_t *s, const char *stream, tr_es_meta_t *out);

/* The position of the last committed event (0 when none). */
int64_t tr_eventstore_head(tr_eventstore_t *s);

/* Appends the event as a JSON object (RFC 3339 ms time) to buf (a tr_buf_t). */
struct tr_buf_s;
void tr_eventstore_event_json(struct tr_buf_s *buf, const tr_es_event_t *e);

/* A stored push subscription and a dead letter, as loaded; strings live during the call. */
typedef void (*tr_es_subscription_cb)(const char *name, const char *definition, int64_t checkpoint,
                                      void *data);
typedef struct tr_es_dead_letter_s {
    const char *subscription, *error;
    int64_t position, attempts, time_ms;
    bool retry; /* asked to be sent again */
} tr_es_dead_letter_t;
typedef void (*tr_es_dead_letter_cb)(const tr_es_dead_letter_t *d, void *data);

/*
 * Reads every stored subscription (by name), then every dead letter (by subscription and
 * position), through the read-only connection. Returns 0 or TR_EIO.
 */
int tr_eventstore_load_subscriptions(tr_eventstore_t *s, tr_es_subscription_cb sub_cb,
                                     tr_es_dead_letter_cb dead_cb, void *data);

/* Counters for tests and benchmarks: commits (transactions) and events written. */
void tr_eventstore_stats(tr_eventstore_t *s, uint64_t *commits, uint64_t *events);

#endif
