/* Bulkhead: bounded connections, pending and active requests per upstream; never an unbounded
 * queue. */
#ifndef TRELLIS_BULKHEAD_H
#define TRELLIS_BULKHEAD_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "trellis/config.h"
#include "trellis/error.h"

/*
 * Envoy's cluster "circuit breakers" under their usual name. The counters are atomics
 * (try-acquire is a CAS loop that never overshoots), so one bulkhead can bound an upstream
 * across every worker of the process without a lock; a per-worker bulkhead works too.
 */

typedef enum tr_bulkhead_kind_e {
    TR_BULKHEAD_CONNECTIONS = 0, /* open upstream connections */
    TR_BULKHEAD_PENDING,         /* requests waiting for a connection */
    TR_BULKHEAD_REQUESTS,        /* requests in flight */
    TR_BULKHEAD_KINDS
} tr_bulkhead_kind_t;

typedef struct tr_bulkhead_config_s {
    uint32_t max[TR_BULKHEAD_KINDS]; /* limits, at least 1 (1024 each, Envoy's defaults) */
} tr_bulkhead_config_t;

typedef struct tr_bulkhead_s {
    uint32_t max[TR_BULKHEAD_KINDS];
    _Atomic uint32_t used[TR_BULKHEAD_KINDS];
    _Atomic uint64_t rejected[TR_BULKHEAD_KINDS]; /* refusals, for metrics */
} tr_bulkhead_t;

void tr_bulkhead_config_init(tr_bulkhead_config_t *c);

/* Fills `c` from a `bulkhead:` mapping: max_connections, max_pending_requests,
 * max_requests (each at least 1). Returns 0 or TR_ECONFIG (message in tr_config_error). */
int tr_bulkhead_config_from_json(tr_config_t *cfg, const json_t *obj, tr_bulkhead_config_t *c);

/* Sets up `b` with every counter at 0 (NULL c = defaults). */
void tr_bulkhead_init(tr_bulkhead_t *b, const tr_bulkhead_config_t *c);

/* Takes one unit of `kind`: 0, or TR_EBUSY (counted) when the limit is reached. */
int tr_bulkhead_acquire(tr_bulkhead_t *b, tr_bulkhead_kind_t kind);

/* Gives back one unit taken by tr_bulkhead_acquire (exactly once per success). */
void tr_bulkhead_release(tr_bulkhead_t *b, tr_bulkhead_kind_t kind);

/* Units of `kind` in use now. */
uint32_t tr_bulkhead_used(const tr_bulkhead_t *b, tr_bulkhead_kind_t kind);

#endif
