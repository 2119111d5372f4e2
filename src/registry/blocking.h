/* Consul blocking queries: ?index=&wait= parsing, the X-Consul-* headers, and watchers. */
#ifndef TR_REGISTRY_BLOCKING_H
#define TR_REGISTRY_BLOCKING_H

#include "trellis/http.h"

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
 * Internal: parses a decimal uint64 the way Go's strconv.ParseUint does (digits only, no
 * sign or spaces, no overflow). Shared by the registry's query parsers.
 */
bool tr__blocking_parse_u64(const char *s, uint64_t *out);

#endif
