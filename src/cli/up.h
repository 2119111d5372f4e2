/* `trellis up`'s state, shared by up.c (control plane, services) and up_rollout.c. */
#ifndef TR_CLI_UP_H
#define TR_CLI_UP_H

#include "gateway/gateway.h"
#include "registry/registry.h"
#include "supervisor/supervisor.h"
#include "supervisor/topology.h"
#include "trace/collector.h"
#include "trace/logs.h"
#include "trellis/discovery_hub.h"
#include "trellis/http.h"
#include "trellis/http_client.h"
#include "trellis/trace.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef struct rollout_s rollout_t;

/* One replica of a topology service. */
typedef struct replica_s {
    struct svc_s *svc;
    int index;
    uint16_t port;
    char id[96];
    char **argv, **env; /* expanded; owned */
    tr_instance_t *inst;
    bool registered;
    /* What it runs: NULL → the service's current version and command. */
    char *version;
    char **cmd;      /* command then args, templates (${PORT}); NULL-terminated */
    uint32_t weight; /* Consul Weights.Passing when registered; 0 → 1 */
    bool hold;       /* ready but kept out of the registry (a rollout decides) */
    bool leaving;    /* being stopped for good (scale down, rollout) */
} replica_t;

typedef struct svc_s {
    struct up_s *up;
    const tr_topo_service_t *def;
    replica_t **replicas; /* pointers: instances keep theirs while the list grows */
    size_t n, next_index;
    bool started;
    /* The version new replicas run (scale, restarts): the topology's until a rollout
     * promotes another. cmd NULL → the topology's command and args. */
    char *version;
    char **cmd;
    rollout_t *rollout; /* active, or NULL */
    rollout_t *history; /* finished rollouts, newest first */
} svc_t;

typedef struct up_s {
    const char *topology_path;
    tr_topology_t *topo;
    const tr_topo_control_plane_t *cp;
    char self_exe[4096];
    /* listeners, bound before the workers start */
    int api_fd, otlp_fd, zipkin_fd;
    char api_addr[64], otlp_addr[64], zipkin_addr[64];
    /* control plane (worker 0's loop) */
    uv_loop_t *loop;
    tr_discovery_hub_t *hub;
    tr_registry_t *registry;
    tr_collector_t *collector;
    tr_logs_t *logs;
    struct tr_saga_engine_s *sagas;
    struct tr_eventstore_s *events;
    tr_http_server_t *servers[3]; /* API, OTLP, Zipkin */
    int open_servers;
    bool cp_closed;
    tr_http_client_t *client; /* registers ready instances through the registry's own API */
    tr_http_endpoint_t api_ep;
    tr_supervisor_t *sup;
    svc_t *svcs;
    size_t nsvcs;
    uv_timer_t tick;
    uint64_t started_ms;
    bool all_ready_logged, stopping, tty;
    int stop_next; /* reverse start order: the next service to stop */
    /* gateway (every worker) */
    tr_gateway_t *gw;
    tr_exporter_t *exporter;
    tr_span_sink_t sink;
} up_t;

/* up.c */
svc_t *up_svc_by_name(up_t *up, const char *name);
replica_t *up_replica_add(svc_t *s);
void up_replica_free(replica_t *r);
/* Starts the replica's process with its version/command (or the service's). */
void up_start_replica(up_t *up, svc_t *s, replica_t *r);
/* Registers (add) or deregisters a replica through the registry API. */
void up_registry_call(up_t *up, replica_t *r, bool add);
/* Stops a replica for good: out of the registry, then SIGTERM; removed from its service's
 * list now and freed once stopped. */
void up_replica_retire(up_t *up, replica_t *r);
char **up_strv_dup(char *const *v);
void up_strv_free(char **v);

/* up_rollout.c */
/* /api/rollouts…: POST /api/rollouts/<svc> starts one, GET shows it and its history,
 * POST /api/rollouts/<svc>/abort rolls it back. */
void up_rollout_handle(up_t *up, tr_http_req_t *req);
/* A rollout's JSON for /api/services; NULL when none. */
json_t *up_rollout_summary(const svc_t *s);
/* The control plane stops: timers closed, rollouts end where they are. */
void up_rollout_shutdown(up_t *up);
void up_rollout_free(svc_t *s);

#endif
