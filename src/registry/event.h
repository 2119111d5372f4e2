/* Consul's user events: /v1/event/fire/<name> and /v1/event/list, kept in a memory ring. */
#ifndef TR_REGISTRY_EVENT_H
#define TR_REGISTRY_EVENT_H

#include "trellis/http.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

/* How many recent events /v1/event/list can show; older ones fall off, as in Consul. */
#define TR_EVENT_RING 256
/* Consul (serf) refuses user events whose payload is larger than this. */
#define TR_EVENT_MAX_PAYLOAD 512

typedef struct tr_event_s tr_event_t;

/* Creates an empty event ring on `loop` (blocking lists wait on its timers). */
int tr_event_open(uv_loop_t *loop, tr_event_t **out);

/*
 * Serves the request when its path is /v1/event/fire/<name> or /v1/event/list and returns
 * true; returns false without answering otherwise.
 */
bool tr_event_handle(tr_event_t *ev, tr_http_req_t *req);

/* Answers blocked listers and frees the ring. Safe with NULL. */
void tr_event_close(tr_event_t *ev);

/*
 * Internal: Consul's index for an event ID: the two 64-bit halves of the UUID XORed, which
 * is what clients (consul-api's IDToIndex) compute to wait for the next event. 0 when
 * `id` is not a UUID.
 */
uint64_t tr__event_id_index(const char *id);

#endif
