/*
 * In-process discovery: hands a registry's answers to discovery clients on other threads
 * of the same process, without HTTP. The registry publishes the passing-health answer of
 * every service someone watches; clients read it and parse it exactly as they parse the
 * HTTP answer, so both sources behave the same.
 */
#ifndef TRELLIS_DISCOVERY_HUB_H
#define TRELLIS_DISCOVERY_HUB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct tr_discovery_hub_s tr_discovery_hub_t;

/* Creates an empty hub. Every function below is safe to call from any thread. */
tr_discovery_hub_t *tr_discovery_hub_new(void);

/* Frees the hub; nothing may be attached or subscribed any more. */
void tr_discovery_hub_free(tr_discovery_hub_t *h);

/* ---- the registry's side */

/*
 * Attaches the publisher: `want` (an initialised uv_async_t on the registry's loop) is
 * sent whenever a client starts watching a service that has no answer yet. NULL detaches.
 */
void tr_discovery_hub_provide(tr_discovery_hub_t *h, uv_async_t *want);

/*
 * The watched services (only those with no answer yet when `unanswered`): returns their
 * count and stores a malloc'd array of malloc'd names in *names (the caller frees both).
 */
size_t tr_discovery_hub_wanted(tr_discovery_hub_t *h, bool unanswered, char ***names);

/* True when some client watches `service`. */
bool tr_discovery_hub_watched(tr_discovery_hub_t *h, const char *service);

/*
 * Publishes the answer of GET /v1/health/service/<service>?passing at `index` (the body is
 * copied) and wakes every subscriber. Ignored unless the service is watched.
 */
void tr_discovery_hub_publish(tr_discovery_hub_t *h, const char *service, uint64_t index,
                              const char *body, size_t len);

/* ---- the clients' side */

/* `notify` (an initialised uv_async_t on the client's loop) is sent after every publish. */
void tr_discovery_hub_subscribe(tr_discovery_hub_t *h, uv_async_t *notify);
void tr_discovery_hub_unsubscribe(tr_discovery_hub_t *h, uv_async_t *notify);

/* Marks `service` watched; the publisher is asked for an answer when it has none. */
void tr_discovery_hub_want(tr_discovery_hub_t *h, const char *service);

/*
 * When `service` has an answer whose index differs from *index, copies it: *index gets
 * its index, *body a malloc'd NUL-terminated copy (the caller frees it) and *len its
 * length, and returns true. Returns false when there is nothing new.
 */
bool tr_discovery_hub_read(tr_discovery_hub_t *h, const char *service, uint64_t *index, char **body,
                           size_t *len);

#endif
