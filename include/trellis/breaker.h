/* Circuit breaker (closed / open / half-open) with count-based failure and slow-call rates. */
#ifndef TRELLIS_BREAKER_H
#define TRELLIS_BREAKER_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "trellis/config.h"
#include "trellis/error.h"

/*
 * Thread model: one tr_breaker_t belongs to one thread (a gateway worker owns one per
 * upstream). Nothing in it is atomic and nothing allocates; `now` is the caller's clock
 * in milliseconds (uv_now() on a loop), and every transition that depends on time happens
 * lazily on the next call that passes `now`.
 *
 * Per-worker breakers are deliberate: a shared breaker would put a lock or a contended
 * cache line on every request. Rate thresholds are fractions, so each worker, seeing its
 * share of the same traffic, trips at the same failure rate as a shared breaker would;
 * what changes is that counts (consecutive_failures, minimum_calls, half_open_calls) are
 * per worker, so a dead upstream costs up to workers x consecutive_failures failed calls
 * before every worker has tripped, and up to workers x half_open_calls probes. Callers
 * that want one verdict for all workers can forward a trip with tr_breaker_force_open.
 */

/* Largest count-based window; the window lives inline as two bitsets. */
#define TR_BREAKER_MAX_WINDOW 1024

typedef enum tr_breaker_state_e {
    TR_BREAKER_CLOSED = 0,
    TR_BREAKER_OPEN,
    TR_BREAKER_HALF_OPEN
} tr_breaker_state_t;

typedef struct tr_breaker_config_s {
    uint32_t consecutive_failures; /* trip after this many failures in a row; 0 = off (5) */
    double failure_rate;      /* trip at this failure fraction over the window; 0 = off (0.5) */
    uint32_t window_size;     /* calls in the sliding window, 1..TR_BREAKER_MAX_WINDOW (20) */
    uint32_t minimum_calls;   /* rates are judged only from this many calls on (10) */
    uint64_t slow_call_ms;    /* a call at least this long is slow; 0 = off (0) */
    double slow_call_rate;    /* trip at this slow fraction over the window (1.0) */
    uint64_t open_ms;         /* time spent open before admitting probes (30 s) */
    uint32_t half_open_calls; /* probes admitted in half-open, at least 1 (3) */
    uint64_t half_open_timeout_ms; /* probes unfinished after this reopen the breaker (10 s) */
} tr_breaker_config_t;

/* Transition and rejection counters, for metrics. They only grow. */
typedef struct tr_breaker_stats_s {
    uint64_t opened;         /* transitions to open (from closed or half-open) */
    uint64_t half_opened;    /* transitions to half-open */
    uint64_t closed;         /* transitions from half-open to closed */
    uint64_t rejected;       /* tr_breaker_allow calls refused */
    uint64_t probe_timeouts; /* half-open periods ended by half_open_timeout_ms */
} tr_breaker_stats_t;

/* What tr_breaker_allow hands out; give it back to tr_breaker_record or tr_breaker_cancel. */
typedef struct tr_breaker_ticket_s {
    uint64_t epoch; /* the breaker period the call was admitted in */
    bool probe;     /* admitted in half-open */
} tr_breaker_ticket_t;

typedef struct tr_breaker_s {
    tr_breaker_config_t cfg;
    tr_breaker_state_t state;
    uint64_t epoch; /* bumped on every transition; results from older epochs are ignored */
    uint64_t since; /* when the current state began */
    uint32_t consecutive;
    /* sliding window: `count` results ending before `head`, failed/slow bits per call */
    uint32_t head, count, failures, slows;
    uint64_t failed_bits[TR_BREAKER_MAX_WINDOW / 64];
    uint64_t slow_bits[TR_BREAKER_MAX_WINDOW / 64];
    /* half-open */
    uint32_t admitted, succeeded, slow_probes;
    tr_breaker_stats_t stats;
} tr_breaker_t;

/* Fills `c` with the defaults shown in tr_breaker_config_t. */
void tr_breaker_config_init(tr_breaker_config_t *c);

/*
 * Fills `c` from a `circuit_breaker:` mapping of a config tree (defaults for absent keys;
 * NULL obj gives the defaults). Keys: consecutive_failures, failure_rate, window,
 * minimum_calls, slow_call, slow_call_rate, open, half_open_calls, half_open_timeout.
 * Returns 0, or TR_ECONFIG with "file:line:col: key: what is wrong" in tr_config_error(cfg)
 * for an unknown key or a bad value.
 */
int tr_breaker_config_from_json(tr_config_t *cfg, const json_t *obj, tr_breaker_config_t *c);

/*
 * Starts `b` closed with a copy of `c` (NULL = defaults). Returns 0, or UV_EINVAL when the
 * window is 0 or above TR_BREAKER_MAX_WINDOW, a rate is outside 0..1, half_open_calls is
 * 0 or half_open_timeout_ms is 0 (probes that never finish would leave it half-open).
 */
int tr_breaker_init(tr_breaker_t *b, const tr_breaker_config_t *c);

/*
 * Asks to make a call at `now`. Returns 0 and fills *t when the call may go ahead; the
 * caller then reports it exactly once with tr_breaker_record or tr_breaker_cancel. Returns
 * TR_EBUSY when the breaker is open, or half-open with all probes already admitted.
 */
int tr_breaker_allow(tr_breaker_t *b, uint64_t now, tr_breaker_ticket_t *t);

/*
 * Reports the result of an admitted call that ended at `now` after `duration_ms`. Results
 * of calls admitted before the latest transition are ignored (they describe an upstream
 * the breaker has already judged).
 */
void tr_breaker_record(tr_breaker_t *b, const tr_breaker_ticket_t *t, uint64_t now, bool success,
                       uint64_t duration_ms);

/* Gives back an admitted call that ended without a verdict (the client went away): a
 * half-open probe slot becomes free again; nothing is counted. */
void tr_breaker_cancel(tr_breaker_t *b, const tr_breaker_ticket_t *t);

/* The state at `now` (applies the time-driven transitions first). */
tr_breaker_state_t tr_breaker_state(tr_breaker_t *b, uint64_t now);

/* Opens the breaker at `now` whatever its state (a trip forwarded from another worker, an
 * operator's command). Already open: restarts the open period. */
void tr_breaker_force_open(tr_breaker_t *b, uint64_t now);

/* "closed", "open" or "half-open". */
const char *tr_breaker_state_name(tr_breaker_state_t s);

#endif
