/* Rate limits exact across threads: GCRA buckets updated by compare-and-swap, and a keyed table. */
#ifndef TRELLIS_RATELIMIT_H
#define TRELLIS_RATELIMIT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "trellis/config.h"
#include "trellis/error.h"

/*
 * GCRA (the generic cell rate algorithm): a token bucket kept as one number, the
 * "theoretical arrival time" (TAT) in nanoseconds. Each allowed request moves the TAT one
 * emission interval (period / count) later; a request is refused when that would put the
 * TAT more than `burst` intervals ahead of now. The TAT is one atomic word updated with a
 * compare-and-swap loop, so every thread of a process shares one exact bucket without a
 * lock: at a fixed `now`, exactly `burst` requests pass however many threads race.
 *
 * `now` is the caller's millisecond clock; all threads must use the same one (uv_now() is:
 * every loop reads the same monotonic clock). A thread whose cached time lags slightly
 * behind another's is harmless: the bucket never moves backwards.
 */

typedef struct tr_ratelimit_config_s {
    double count;       /* requests per period (100) */
    uint64_t period_ms; /* (60 s) */
    uint32_t burst;     /* requests allowed at once; 0 = ceil(count) */
    const char *key;    /* what keys the buckets ("" = one bucket); interpreted by the gateway,
                           owned by the config tree it came from */
    uint32_t max_keys;  /* capacity of the keyed table (10000) */
} tr_ratelimit_config_t;

typedef enum tr_ratelimit_verdict_e {
    TR_RATELIMIT_ALLOWED = 0,
    TR_RATELIMIT_LIMITED,   /* over the rate: answer 429 with Retry-After */
    TR_RATELIMIT_TABLE_FULL /* keyed table full of active keys: refused, see tr_ratelimit_table_t */
} tr_ratelimit_verdict_t;

/* Everything the response headers need (RateLimit-Limit, -Remaining, -Reset, Retry-After). */
typedef struct tr_ratelimit_result_s {
    tr_ratelimit_verdict_t verdict;
    uint32_t limit;         /* the burst: most requests that can pass at once */
    uint32_t remaining;     /* requests that could still pass right now */
    uint64_t reset_s;       /* seconds until the bucket is full again (rounded up) */
    uint64_t retry_after_s; /* when refused: seconds until one request can pass (>= 1) */
} tr_ratelimit_result_t;

/* One bucket; share it between threads freely once initialised. */
typedef struct tr_ratelimit_s {
    uint64_t interval_ns;  /* emission interval: period / count */
    uint64_t tolerance_ns; /* burst * interval */
    uint32_t burst;
    _Atomic uint64_t tat;
} tr_ratelimit_t;

void tr_ratelimit_config_init(tr_ratelimit_config_t *c);

/*
 * Fills `c` from a `rate_limit:` mapping: rate ("100/minute"), burst, key, max_keys.
 * Returns 0 or TR_ECONFIG (message in tr_config_error(cfg)).
 */
int tr_ratelimit_config_from_json(tr_config_t *cfg, const json_t *obj, tr_ratelimit_config_t *c);

/* Sets up a full bucket. Returns 0, or UV_EINVAL for a count or period of 0 or an interval
 * below one nanosecond. */
int tr_ratelimit_init(tr_ratelimit_t *rl, const tr_ratelimit_config_t *c);

/* Takes one request from the bucket at `now` (ms); fills *r (may be NULL) and returns its
 * verdict (TR_RATELIMIT_ALLOWED or TR_RATELIMIT_LIMITED). Lock-free, any thread. */
tr_ratelimit_verdict_t tr_ratelimit_take(tr_ratelimit_t *rl, uint64_t now,
                                         tr_ratelimit_result_t *r);

/*
 * A fixed-capacity table of buckets keyed by any bytes (a JWT subject, a client IP, a
 * header value), shared by all threads. Keys are not stored: each is identified by a
 * 112-bit SipHash fingerprint under a random per-table key, so long keys cost nothing
 * extra and a client cannot aim collisions. A key may live in one of 8 slots from its hash.
 *
 * Lookups of a present key and every bucket update are lock-free (CAS). A slot whose bucket
 * is full again (idle) carries no information, so a new key may take it over: the one
 * idle longest among its 8 candidates. When all 8 are busy, the request is refused with
 * TR_RATELIMIT_TABLE_FULL and `full` counts it: failing closed keeps an attacker who
 * floods the table with fresh keys from getting unlimited requests through. Two threads
 * inserting the same new key at once agree on one slot; the later waits (yielding) for
 * the few instructions the earlier needs to publish it.
 */
typedef struct tr_ratelimit_table_s tr_ratelimit_table_t;

/* Creates a table of at least `capacity` slots (rounded up to a power of two, at least 8)
 * with the rate of `c`. `seed` NULL draws a random SipHash key; tests may pass 16 bytes.
 * Returns NULL on a bad config. Free with tr_ratelimit_table_free. */
tr_ratelimit_table_t *tr_ratelimit_table_new(const tr_ratelimit_config_t *c, uint32_t capacity,
                                             const uint8_t *seed);
void tr_ratelimit_table_free(tr_ratelimit_table_t **t);

/* Takes one request from the bucket of `key` at `now`; fills *r (may be NULL). */
tr_ratelimit_verdict_t tr_ratelimit_table_take(tr_ratelimit_table_t *t, const void *key, size_t len,
                                               uint64_t now, tr_ratelimit_result_t *r);

/* Requests refused because the table was full (since creation). */
uint64_t tr_ratelimit_table_full_count(const tr_ratelimit_table_t *t);

/* Slots in the table. */
uint32_t tr_ratelimit_table_capacity(const tr_ratelimit_table_t *t);

#endif
