/* Consul's sessions: /v1/session create, destroy, renew, info, node and list, with TTLs. */
#ifndef TR_REGISTRY_SESSION_H
#define TR_REGISTRY_SESSION_H

#include "registry/kv.h"
#include "registry/store.h"
#include "trellis/http.h"

#include <uv.h>

typedef struct tr_session_s tr_session_t;

/* Consul's bounds on a session TTL are 10s..86400s; trellis accepts down to 10ms so tests
 * and short-lived locks need not wait, and documents the difference. */
#define TR_SESSION_TTL_MIN_MS 10
#define TR_SESSION_TTL_MAX_MS (86400ULL * 1000)

/*
 * Loads the sessions in the store, re-arms their TTL timers (2x TTL from now, as Consul
 * does after a leader change) and installs the session lookup that KV ?acquire= uses.
 * `node` (copied) is this agent's node name, the default and only node for sessions. The
 * store and the KV outlive the sessions.
 */
int tr_session_open(uv_loop_t *loop, tr_store_t *store, tr_kv_t *kv, const char *node,
                    tr_session_t **out, char *err, size_t errlen);

/* The status of a check by ID (a tr_check_status_t), or -1 when there is none. */
typedef int (*tr_session_check_fn)(void *data, const char *check_id);

/*
 * Links sessions to health checks, as Consul does: creating a session needs every check it
 * names to exist and not be critical; tr_session_check_down invalidates the sessions that
 * name a check that went critical or away. Without a lookup, checks are not validated.
 */
void tr_session_set_check_lookup(tr_session_t *s, tr_session_check_fn fn, void *data);
void tr_session_check_down(tr_session_t *s, const char *check_id);

/* Serves a request whose path starts with /v1/session/. */
void tr_session_handle(tr_session_t *s, tr_http_req_t *req);

/* Stops the TTL timers (sessions stay stored, their locks held) and frees the module; the
 * session memory goes in the timers' close callbacks. Safe with NULL. */
void tr_session_close(tr_session_t *s);

#endif
