/* The API gateway: config, workers, reload. The CLI and `trellis up` drive it. */
#ifndef TR_GATEWAY_GATEWAY_H
#define TR_GATEWAY_GATEWAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "trellis/discovery_hub.h"
#include "trellis/runtime.h"
#include "trellis/trace.h"

typedef struct tr_gateway_s tr_gateway_t;

typedef struct tr_gateway_options_s {
    const char *config_path; /* YAML or JSON file (required) */
    const char *config_text; /* the config itself (config_path then only names it in messages) */
    /* Or a section of a tree loaded elsewhere (borrowed; it outlives the gateway). */
    struct tr_config_s *config_tree;
    struct json_t *config_root;
    const char *listen;          /* overrides the file's `listen` */
    const char *admin_listen;    /* overrides `admin.listen`; "off" disables the admin listener */
    int workers;                 /* overrides `workers` (0: keep) */
    tr_discovery_hub_t *hub;     /* in-process registry instead of `discovery.registry` */
    const tr_span_sink_t *spans; /* where finished spans go (sampled requests); NULL: none */
    const char *service_name;    /* the spans' service.name ("gateway") */
    /* Also receives each batch of access-log lines (complete JSON lines), from any worker. */
    void (*access_sink)(void *data, const char *lines, size_t len);
    void *access_sink_data;
} tr_gateway_options_t;

/*
 * Loads and compiles the config and binds the listeners (one socket per worker). On error
 * returns it and writes "file:line:col: key: what is wrong" (or the bind error) to err.
 */
int tr_gateway_open(const tr_gateway_options_t *o, tr_gateway_t **out, char *err, size_t errlen);

/* Workers the gateway was opened for (the runtime must start exactly this many). */
int tr_gateway_workers(const tr_gateway_t *gw);
/* The bound addresses ("127.0.0.1:8080"), for logs and tests. */
const char *tr_gateway_listen_addr(const tr_gateway_t *gw);
const char *tr_gateway_admin_addr(const tr_gateway_t *gw);

/*
 * The exporter settings when the config has a `tracing:` section with an endpoint (NULL
 * otherwise); strings live as long as the gateway. The caller starts the exporter and
 * hands its sink over with tr_gateway_set_spans before the workers start.
 */
const tr_exporter_options_t *tr_gateway_tracing(const tr_gateway_t *gw);
void tr_gateway_set_spans(tr_gateway_t *gw, const tr_span_sink_t *spans);

/* Runtime hooks: start serving on worker `w` / stop it (see tr_worker_stop_cb). */
int tr_gateway_worker_start(tr_gateway_t *gw, tr_worker_t *w);
void tr_gateway_worker_stop(tr_gateway_t *gw, tr_worker_t *w, bool force);

/*
 * Re-reads the config file; on success every worker switches to it between requests and
 * returns 0. On failure the old config keeps serving and err says why. Any thread.
 */
int tr_gateway_reload(tr_gateway_t *gw, char *err, size_t errlen);

/*
 * What the gateway saw of one endpoint (by its ID: the registry's Service.ID), summed over
 * workers since the gateway started: every attempt, whether it failed (5xx, connect failure,
 * reset or timeout) and its latency in buckets. Rollouts judge a version from these: retries
 * hide an attempt's failure from the client, not from here.
 */
#define TR_GATEWAY_LAT_BUCKETS 16
/* Upper bounds (ms, inclusive) of the latency buckets; the last is "more". */
extern const uint32_t tr_gateway_lat_bounds_ms[TR_GATEWAY_LAT_BUCKETS];
typedef struct tr_gateway_ep_stats_s {
    uint64_t attempts, failures;
    uint64_t latency[TR_GATEWAY_LAT_BUCKETS];
} tr_gateway_ep_stats_t;
/* Fills `out` and returns true when the endpoint was ever called. Any thread. */
bool tr_gateway_endpoint_stats(tr_gateway_t *gw, const char *id, tr_gateway_ep_stats_t *out);
/* `now` minus `before`, field by field (a window between two snapshots). */
void tr_gateway_ep_stats_sub(tr_gateway_ep_stats_t *now, const tr_gateway_ep_stats_t *before);
void tr_gateway_ep_stats_add(tr_gateway_ep_stats_t *sum, const tr_gateway_ep_stats_t *x);
/* The upper bound (ms) of the bucket holding quantile q (0..1); UINT32_MAX past the last
 * bound; 0 without attempts. */
uint32_t tr_gateway_ep_stats_quantile(const tr_gateway_ep_stats_t *s, double q);

/* Frees the gateway once the runtime has stopped. */
void tr_gateway_close(tr_gateway_t *gw);

#endif
