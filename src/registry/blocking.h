/* Consul blocking queries: ?index=&wait= parsing, the X-Consul-* headers, and watchers. */
#ifndef TR_REGISTRY_BLOCKING_H
#define TR_REGISTRY_BLOCKING_H

#include "trellis/http.h"
#include "trellis/metrics.h"

#include <stdbool.h>
#include <stdint.h>

#define TR_BLOCKING_DEFAULT_WAIT_MS (5 * 60 * 1000)
#define TR_BLOCKING_MAX_WAIT_MS     (10 * 60 * 1000)

typedef struct tr_blocking_s {
    uint64_t index;   /* ?index=, 0 when absent */
    uint64_t wait_ms; /* ?wait= (default 5 min, capped at 10 min) plus jitter up to wait/16 */
    bool blocking;    /* index was given and is > 0 */
} tr_blocking_t;

/*
 * Reads ?index and ?wait ("10s", "5m", "100ms"; Consul's forms). On a bad value answers
 * 400 problem+json and returns false.
 */
bool tr_blocking_parse(tr_http_req_t *req, tr_blocking_t *out);

/* Adds X-Consul-Index (at least 1), X-Consul-KnownLeader: true, X-Consul-LastContact: 0. */
void tr_blocking_headers(tr_http_req_t *req, uint64_t index);

/*
 * A blocked request: parked on a list until its result changes or its wait runs out.
 * Owners embed it as the first member of their own struct (the query it waits on) and
 * walk their lists to decide who to wake; the machinery here is the same for all.
 */
typedef struct tr_waiter_s tr_waiter_t;
/* Answers the parked request (the watcher is unlinked right after this returns). */
typedef void (*tr_waiter_answer_cb)(tr_waiter_t *w, tr_http_req_t *req);

struct tr_waiter_s {
    uv_timer_t timer;
    tr_http_req_t *req;
    uint64_t index;     /* the client's ?index= */
    tr_waiter_t **head; /* the list it is parked on */
    tr_waiter_t *prev, *next;
    tr_waiter_answer_cb answer;
    void (*dispose)(tr_waiter_t *w); /* optional: frees the owner's parts, answered or not */
    tr_series_t *gauge;              /* optional: counts parked watchers */
};

/*
 * Parks `req` on list `head` for b->wait_ms. Allocates `size` bytes (at least
 * sizeof(tr_waiter_t), zeroed) whose first member is the waiter, and returns them for the
 * owner to fill in; the memory is freed after the watcher is answered or its client
 * goes away. Takes over req->data and req->on_abort.
 */
void *tr_waiter_park(uv_loop_t *loop, tr_http_req_t *req, tr_waiter_t **head, size_t size,
                     const tr_blocking_t *b, tr_waiter_answer_cb answer, tr_series_t *gauge);

/* Answers the watcher now and unlinks it; `w` is invalid afterwards. */
void tr_waiter_wake(tr_waiter_t *w);

/*
 * Internal: parses a decimal uint64 the way Go's strconv.ParseUint does (digits only, no
 * sign or spaces, no overflow). Shared by the registry's query parsers.
 */
bool tr__blocking_parse_u64(const char *s, uint64_t *out);

#endif
