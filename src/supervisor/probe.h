/* Liveness and readiness probes: periodic HTTP GET or TCP connect with thresholds. */
#ifndef TR_SUPERVISOR_PROBE_H
#define TR_SUPERVISOR_PROBE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "trellis/http_client.h"

/* What a probe checks and how often; zero fields take the defaults in brackets. */
typedef struct tr_probe_spec_s {
    bool enabled;
    bool http;                  /* HTTP GET `path` (2xx/3xx pass); false: TCP connect */
    const char *path;           /* ["/health/live" or "/health/ready", chosen by the caller] */
    uint64_t period_ms;         /* between the starts of two probes [10000] */
    uint64_t timeout_ms;        /* one probe's deadline [1000] */
    uint64_t initial_delay_ms;  /* before the first probe [0] */
    uint32_t failure_threshold; /* consecutive failures that flip a pass to a fail [3] */
    uint32_t success_threshold; /* consecutive successes that flip a fail to a pass [1] */
} tr_probe_spec_t;

typedef struct tr_probe_s tr_probe_t;

/* The verdict changed; `why` is a short text ("HTTP 503", "connection refused"). */
typedef void (*tr_probe_change_cb)(tr_probe_t *p, bool passing, const char *why, void *data);

typedef struct tr_probe_options_s {
    tr_probe_spec_t spec;   /* the path is copied */
    uint16_t port;          /* probes go to 127.0.0.1:port */
    tr_http_client_t *http; /* required for HTTP probes; borrowed, must outlive the probe */
    /*
     * The verdict before the first probe: false for readiness (not ready until a probe
     * passes), true for liveness (alive until proven otherwise).
     */
    bool initially_passing;
    /*
     * While the verdict has never been "passing", probe every `fast_period_ms` instead of
     * spec.period_ms (0 = off): a readiness probe notices a fast service at once.
     */
    uint64_t fast_period_ms;
    tr_probe_change_cb on_change;
    void *data;
} tr_probe_options_t;

/*
 * Starts probing on `loop` after spec.initial_delay_ms. On success *out owns the probe until
 * tr_probe_close. Returns UV_EINVAL for an HTTP probe without a client or a port of 0.
 */
int tr_probe_start(uv_loop_t *loop, const tr_probe_options_t *opts, tr_probe_t **out);

/* The current verdict. */
bool tr_probe_passing(const tr_probe_t *p);

/* Probes run so far (finished), for tests and status. */
uint64_t tr_probe_runs(const tr_probe_t *p);

/*
 * Stops probing: a probe in flight is abandoned and on_change never fires again. The probe
 * is freed once its handles are closed; `cb` (may be NULL) fires then. Closing twice is safe.
 */
void tr_probe_close(tr_probe_t *p, void (*cb)(void *data), void *data);

/* Fills the zero fields of `spec` with the defaults; `path` with `default_path`. */
void tr_probe_spec_defaults(tr_probe_spec_t *spec, const char *default_path);

#endif
