/* Push subscriptions (the outbox): definitions, filters and the delivery loop's hooks. */
#ifndef TR_EVENTSTORE_OUTBOX_H
#define TR_EVENTSTORE_OUTBOX_H

#include "eventstore/eventstore.h"
#include "trellis/discovery.h"
#include "trellis/http_client.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TR_OUTBOX_MAX_NAME     200
#define TR_OUTBOX_MAX_TYPES    100
#define TR_OUTBOX_MAX_ATTEMPTS 1000
#define TR_OUTBOX_DEF_ATTEMPTS 10

/* A subscription's definition, as POSTed: what it follows and where it sends. */
typedef struct tr_outbox_def_s {
    char *stream; /* exact stream name, a prefix (prefix true, without the '*'), NULL: $all */
    bool prefix;
    char **types; /* NULL: every type */
    size_t ntypes;
    char *url;
    tr_http_endpoint_t ep; /* for http://IP:PORT/PATH */
    char *service;         /* for service:NAME/PATH: found through discovery per send */
    char *target;          /* path and query sent to */
    bool from_start;
    int64_t max_attempts;
    char *text; /* the canonical JSON of the definition: stored, and compared on a repeat */
} tr_outbox_def_t;

/*
 * Checks a POST body and fills *def (and *name, malloc'd). Returns 0, or 422 with the
 * reason in detail. On success free def with tr__outbox_def_free.
 */
int tr__outbox_def_parse(json_t *body, char **name, tr_outbox_def_t *def, char *detail, size_t len);
/* Parses a stored canonical definition (from tr__outbox_def_parse's def->text). */
int tr__outbox_def_load(const char *text, tr_outbox_def_t *def);
void tr__outbox_def_free(tr_outbox_def_t *def);

/* True when an event of `stream` with `type` is for this subscription. */
bool tr__outbox_matches(const tr_outbox_def_t *def, const char *stream, const char *type);

/* A subscription name: 1..200 bytes of letters, digits, '.', '_', '-'. */
bool tr__outbox_valid_name(const char *name, size_t len);

/* Full-jitter backoff before attempt `attempts` + 1: a random delay in [0, cap]. */
uint64_t tr__outbox_backoff_ms(int64_t attempts, uint64_t random);

/* ---- the delivery state (loop thread), shared by outbox.c and outbox_http.c ---------- */

typedef struct tr_outbox_dead_s {
    struct tr_outbox_dead_s *next; /* by position */
    int64_t position, attempts, time_ms;
    char *error;
    bool retry; /* to be sent again before the next new event */
} tr_outbox_dead_t;

typedef struct tr_outbox_event_s {
    int64_t position;
    char *type, *json;
} tr_outbox_event_t;

typedef struct tr_outbox_sub_s tr_outbox_sub_t;
struct tr_outbox_sub_s {
    tr_outbox_sub_t *next;
    tr_eventstore_t *s;
    char *name;
    tr_outbox_def_t def;
    bool ready;               /* stored: delivery may run */
    bool removed;             /* deleted (or being deleted): delivery stops */
    int64_t checkpoint;       /* every position up to it was handled (stored) */
    int64_t cursor;           /* the next position to read */
    tr_outbox_event_t *batch; /* read, not yet handled */
    size_t nbatch, ibatch;
    tr_outbox_event_t cur; /* being sent (json NULL: none) */
    bool cur_retry;        /* cur is a dead letter sent again */
    int64_t attempts;      /* of cur */
    char last_error[160];
    tr_outbox_dead_t *dead;
    size_t ndead;
    bool more; /* read again: a commit came, or the last page was full */
    bool busy; /* a read, send, write or backoff is under way */
    uv_timer_t timer;
    tr_http_client_req_t *fetch; /* the send in flight */
    tr_http_endpoint_t dest;     /* where it goes: def.ep, or the service's instance picked */
    uint32_t discovery_waits;    /* for a new watch's first answer */
    int status;                  /* its response status, once the headers arrived */
    int refs;                    /* the list, the timer, the operation under way */
};

typedef struct tr_outbox_s {
    tr_outbox_sub_t *subs;
    tr_http_client_t *client;
    tr_discovery_t *discovery; /* for service: URLs; NULL when the store has no registry */
} tr_outbox_t;

tr_outbox_sub_t *tr__outbox_find(tr_eventstore_t *s, const char *name);
/* A new subscription (not ready), added to the list; takes def. */
tr_outbox_sub_t *tr__outbox_add(tr_eventstore_t *s, const char *name, tr_outbox_def_t *def,
                                int64_t checkpoint);
/* Drops a reference taken with sub->refs++ (the memory goes with the last one). */
void tr__outbox_release(tr_outbox_sub_t *sub);
/* Takes it off the list and stops its delivery for good (after it was deleted). */
void tr__outbox_remove(tr_outbox_sub_t *sub);
/* Runs the next step of its delivery when none is under way. */
void tr__outbox_pump(tr_outbox_sub_t *sub);
/* Stops a send in flight (the event is sent again by the next pump). */
void tr__outbox_cancel(tr_outbox_sub_t *sub);

/* Loop thread hooks (eventstore.c): load and start; new events; close; the HTTP API. */
int tr__outbox_start(tr_eventstore_t *s);
void tr__outbox_committed(tr_eventstore_t *s);
void tr__outbox_close(tr_eventstore_t *s);
void tr__outbox_handle(tr_eventstore_t *s, tr_http_req_t *req);

#endif
