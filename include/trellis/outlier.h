/* Outlier detection: eject an endpoint after consecutive errors, for longer each time. */
#ifndef TRELLIS_OUTLIER_H
#define TRELLIS_OUTLIER_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "trellis/config.h"
#include "trellis/error.h"

/*
 * Thread model: a pool and its endpoints belong to one thread (each gateway worker keeps
 * its own per upstream, like its connection pools); nothing allocates; `now` is the
 * caller's millisecond clock (uv_now()).
 *
 * max_ejection_percent follows Envoy: an ejection is allowed while the ejected share,
 * this one included, stays within the percentage, and one endpoint may always be ejected
 * when none is ("defaults to 10% but will eject at least one host regardless of the
 * value"). So with one endpoint and 10%, that endpoint can be ejected; the load balancer
 * must then fall back to ejected endpoints rather than fail (Envoy's panic routing).
 */

typedef struct tr_outlier_config_s {
    uint32_t consecutive_5xx;             /* 5xx or local failures in a row; 0 = off (5) */
    uint32_t consecutive_gateway_failure; /* 502/503/504 or local failures in a row; 0 = off (5) */
    uint64_t base_ejection_ms;            /* first ejection; then times the ejection count (30 s) */
    uint64_t max_ejection_ms;             /* cap of one ejection (300 s) */
    double max_ejection_percent;          /* fraction of the pool that may be ejected (0.1) */
    uint64_t interval_ms; /* each interval un-ejected lowers the ejection count by one (10 s) */
} tr_outlier_config_t;

/* How a call to an endpoint ended. */
typedef enum tr_outlier_result_e {
    TR_OUTLIER_STATUS = 0,      /* response with a status code */
    TR_OUTLIER_CONNECT_FAILURE, /* local failures count as both 5xx and gateway failure */
    TR_OUTLIER_RESET,
    TR_OUTLIER_TIMEOUT
} tr_outlier_result_t;

typedef struct tr_outlier_endpoint_s {
    uint32_t consecutive_5xx;
    uint32_t consecutive_gateway;
    uint32_t ejections; /* the multiplier: grows per ejection, decays while healthy */
    bool ejected;
    uint64_t ejected_until; /* when ejected */
    uint64_t readmitted_at; /* when last readmitted (for the decay) */
} tr_outlier_endpoint_t;

typedef struct tr_outlier_pool_s {
    tr_outlier_config_t cfg;
    uint32_t endpoints; /* endpoints in the pool */
    uint32_t ejected;   /* endpoints currently marked ejected */
    /* counters for metrics; they only grow */
    uint64_t ejections_total;
    uint64_t ejections_overflow; /* ejections refused by max_ejection_percent */
    uint64_t readmissions;
} tr_outlier_pool_t;

void tr_outlier_config_init(tr_outlier_config_t *c);

/*
 * Fills `c` from an `outlier_detection:` mapping: consecutive_5xx,
 * consecutive_gateway_failure, base_ejection_time, max_ejection_time, max_ejection_percent,
 * interval. Returns 0 or TR_ECONFIG (message in tr_config_error(cfg)).
 */
int tr_outlier_config_from_json(tr_config_t *cfg, const json_t *obj, tr_outlier_config_t *c);

/* Sets up a pool of `endpoints` endpoints with a copy of `c` (NULL = defaults). */
void tr_outlier_pool_init(tr_outlier_pool_t *p, const tr_outlier_config_t *c, uint32_t endpoints);

/* The endpoint count changed (discovery); the ejected count is kept by add/remove below. */
void tr_outlier_pool_resize(tr_outlier_pool_t *p, uint32_t endpoints);

/* A fresh endpoint state (not ejected, counters zero). */
void tr_outlier_endpoint_init(tr_outlier_endpoint_t *e);

/* Call before dropping an endpoint's state from the pool, so an ejected one is uncounted. */
void tr_outlier_endpoint_remove(tr_outlier_pool_t *p, tr_outlier_endpoint_t *e);

/*
 * Records the end of a call to `e`: `status` is used for TR_OUTLIER_STATUS. A success
 * (anything but 5xx and local failures) resets both consecutive counters. Returns true when
 * this call ejected the endpoint. Results for an endpoint already ejected only update its
 * counters (calls that were in flight when it was ejected).
 */
bool tr_outlier_record(tr_outlier_pool_t *p, tr_outlier_endpoint_t *e, uint64_t now,
                       tr_outlier_result_t result, int status);

/*
 * True when `e` may take traffic at `now`; readmits it when its ejection has expired.
 * Readmission is lazy: the pool's ejected count lags until this is called, so the caller
 * calls it for every endpoint on its periodic timer and for each load-balancing candidate.
 */
bool tr_outlier_available(tr_outlier_pool_t *p, tr_outlier_endpoint_t *e, uint64_t now);

#endif
