/* The service registry: a Consul-compatible HTTP API over the catalog, checks and KV. */
#ifndef TR_REGISTRY_REGISTRY_H
#define TR_REGISTRY_REGISTRY_H

#include "trellis/discovery_hub.h"
#include "trellis/http.h"

#include <uv.h>

typedef struct tr_registry_s tr_registry_t;

typedef struct tr_registry_options_s {
    const char *data_dir;    /* holds registry.db; created when missing */
    const char *node;        /* this agent's node name; default: the host name */
    const char *datacenter;  /* default "dc1" */
    const char *address;     /* the node's address in answers; default 127.0.0.1 */
    tr_discovery_hub_t *hub; /* optional: serves discovery clients of this process */
} tr_registry_options_t;

/* Opens the store and loads the state. On failure err says what to fix. */
int tr_registry_open(uv_loop_t *loop, const tr_registry_options_t *opts, tr_registry_t **out,
                     char *err, size_t errlen);

/* Serves one HTTP request under /v1/ (a tr_http_handler_cb with the registry as data). */
void tr_registry_handle(tr_http_req_t *req, void *registry);

/*
 * Begins a stop: blocked watchers are answered now and later requests get 503, so the
 * HTTP server can drain. Safe to call twice.
 */
void tr_registry_shutdown(tr_registry_t *reg);

/* Closes the store and frees the registry (after the HTTP server using it has closed). */
void tr_registry_close(tr_registry_t *reg);

#endif
