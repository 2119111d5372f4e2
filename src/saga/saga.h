/* The saga orchestrator (docs/sagas.md): durable sagas with compensation over HTTP. */
#ifndef TR_SAGA_SAGA_H
#define TR_SAGA_SAGA_H

#include "trellis/config.h"
#include "trellis/discovery_hub.h"
#include "trellis/http.h"
#include "trellis/trace.h"

#include <jansson.h>
#include <stdbool.h>
#include <uv.h>

typedef struct tr_saga_engine_s tr_saga_engine_t;

typedef struct tr_saga_options_s {
    const char *db_path;      /* SQLite file (its directory is created) */
    bool sync_full;           /* fsync every commit (default: WAL + synchronous=NORMAL) */
    tr_discovery_hub_t *hub;  /* find participants in this process's registry, or… */
    const char *registry;     /* …a Consul-compatible registry "ip:port" */
    tr_span_sink_t spans;     /* where step spans go (emit NULL: none) */
    const char *service_name; /* resource service.name of the spans ("saga") */
} tr_saga_options_t;

/*
 * Opens the orchestrator on `loop`: its database, then every saga left running or
 * compensating resumes. Returns 0 and *out, or an error with the reason in err.
 */
int tr_saga_engine_open(uv_loop_t *loop, const tr_saga_options_t *o, tr_saga_engine_t **out,
                        char *err, size_t errlen);
/* Checks a `sagas:` mapping without an engine (trellis up --check). 0 or TR_ECONFIG. */
int tr_saga_check(tr_config_t *cfg, const json_t *sagas);
/*
 * Adds or replaces the definitions of a `sagas:` mapping (name → definition); positions for
 * errors come from cfg. Sagas already started keep the definition they started with.
 * Returns 0 or TR_ECONFIG (tr_config_error(cfg) says where and what).
 */
int tr_saga_define_all(tr_saga_engine_t *e, tr_config_t *cfg, const json_t *sagas);
/* Resumes every saga left running, compensating or stuck by an earlier process (call it
 * after tr_saga_define_all; sagas keep the definition they started with). Returns the
 * number resumed, or an error. */
int tr_saga_engine_resume(tr_saga_engine_t *e);
/* Answers the request when its path is under /api/sagas or /api/saga-definitions. */
bool tr_saga_handle(tr_saga_engine_t *e, tr_http_req_t *req);
/* Stops timers and calls; `done` fires when every handle is closed, then e is freed. */
void tr_saga_engine_close(tr_saga_engine_t *e, void (*done)(void *data), void *data);

#endif
