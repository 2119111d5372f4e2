/* The API gateway: config, workers, reload. The CLI and `trellis up` drive it. */
#ifndef TR_GATEWAY_GATEWAY_H
#define TR_GATEWAY_GATEWAY_H

#include <stddef.h>

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

/* Frees the gateway once the runtime has stopped. */
void tr_gateway_close(tr_gateway_t *gw);

#endif
