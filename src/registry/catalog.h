/* Services, checks and nodes: Consul's /v1/agent, /v1/catalog and /v1/health endpoints. */
#ifndef TR_REGISTRY_CATALOG_H
#define TR_REGISTRY_CATALOG_H

#include "registry/store.h"
#include "trellis/discovery_hub.h"
#include "trellis/http.h"

#include <stdbool.h>
#include <uv.h>

typedef struct tr_catalog_s tr_catalog_t;

/* This agent's node, reported in every answer. Strings are copied. */
typedef struct tr_catalog_node_s {
    const char *name;
    const char *id; /* UUID */
    const char *address;
    const char *datacenter;
} tr_catalog_node_t;

/*
 * Loads services and checks from the store and starts health checking (its own thread).
 * The store outlives the catalog.
 */
int tr_catalog_open(uv_loop_t *loop, tr_store_t *store, const tr_catalog_node_t *node,
                    tr_catalog_t **out, char *err, size_t errlen);

/*
 * Serves the request when its path belongs to the catalog (/v1/agent/service…,
 * /v1/agent/services, /v1/agent/check…, /v1/agent/checks, /v1/catalog/…, /v1/health/…)
 * and returns true; returns false without answering otherwise.
 */
bool tr_catalog_handle(tr_catalog_t *cat, tr_http_req_t *req);

/*
 * Publishes the passing-health answer of every service watched through `hub` (NULL:
 * stop), now and after each change, for discovery clients in this process.
 */
void tr_catalog_set_hub(tr_catalog_t *cat, tr_discovery_hub_t *hub);

/* A check went critical, or was deregistered (alone or with its service). */
typedef void (*tr_catalog_check_cb)(void *data, const char *check_id);

/* Sets the one listener for checks going down (sessions invalidate on it). */
void tr_catalog_on_check_down(tr_catalog_t *cat, tr_catalog_check_cb cb, void *data);

/* The status of check `id` (a tr_check_status_t; "serfHealth" is passing), or -1. */
int tr_catalog_check_status(const tr_catalog_t *cat, const char *id);

/* Answers blocked watchers, stops health checking and frees the catalog. */
void tr_catalog_close(tr_catalog_t *cat);

#endif
