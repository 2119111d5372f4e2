/* The topology file: services, their processes, probes and dependencies, compiled from YAML. */
#ifndef TR_SUPERVISOR_TOPOLOGY_H
#define TR_SUPERVISOR_TOPOLOGY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "trellis/config.h"

#define TR_TOPO_MAX_SERVICES 1000
#define TR_TOPO_MAX_REPLICAS 100
#define TR_TOPO_NAME_MAX     63

/* Restart policies: X(enum suffix, word in the file). */
#define TR_TOPO_RESTART_MAP(X)                                                                     \
    X(ALWAYS, "always")                                                                            \
    X(ON_FAILURE, "on-failure")                                                                    \
    X(NEVER, "never")

enum tr_topo_restart {
#define TR_TOPO_RESTART_ENUM(name, word) TR_TOPO_RESTART_##name,
    TR_TOPO_RESTART_MAP(TR_TOPO_RESTART_ENUM)
#undef TR_TOPO_RESTART_ENUM
};

typedef struct tr_topology_s tr_topology_t;

/* A liveness or readiness probe. `http` false means a TCP connect to the instance's port. */
typedef struct tr_topo_probe_s {
    bool enabled;
    bool http;
    const char *path; /* HTTP path ("/health/live"), NULL for tcp */
    uint64_t period_ms, timeout_ms, initial_delay_ms;
    uint32_t failure_threshold; /* consecutive failures that make it fail */
    uint32_t success_threshold; /* consecutive successes that make it pass (1 for liveness) */
} tr_topo_probe_t;

/* One depends_on entry; `line` is where it is in the file (for messages and lint). */
typedef struct tr_topo_dep_s {
    const char *service;
    bool async;
    int line, col;
} tr_topo_dep_t;

typedef struct tr_topo_service_s {
    const char *name;
    const char *command; /* as written; see command_self */
    bool command_self;   /* command was `trellis`: run this trellis binary (/proc/self/exe) */
    const char *cwd;     /* absolute: relative paths are resolved against the file's dir */
    const char *version; /* NULL when not given */
    const char *context; /* bounded context name, NULL when not given */
    const char **args;   /* NULL-terminated; may hold ${PORT} etc. (tr_topology_expand) */
    size_t nargs;
    const char **env; /* NULL-terminated "K=V"; values may hold ${...} */
    size_t nenv;
    const char **owns; /* databases this service owns, NULL-terminated */
    size_t nowns;
    tr_topo_dep_t *deps;
    size_t ndeps;
    uint32_t replicas; /* 0..100 */
    bool port_auto;    /* a free port per instance, passed as PORT */
    uint16_t port;     /* fixed base port: replica i gets port + i (0 when auto) */
    tr_topo_probe_t liveness, readiness;
    int restart; /* enum tr_topo_restart */
    uint64_t backoff_base_ms, backoff_max_ms;
    int stop_signal;        /* SIGTERM etc. */
    uint64_t stop_grace_ms; /* after it, SIGKILL */
    size_t index;           /* position in the file, 0-based */
    int line, col;          /* where the service's name is in the file */
} tr_topo_service_t;

/* Control-plane settings (`control_plane:`); otlp and zipkin are NULL when `off`. */
typedef struct tr_topo_control_plane_s {
    const char *listen;   /* 127.0.0.1:8500 */
    const char *data_dir; /* absolute; ./.trellis next to the file by default */
    const char *otlp;     /* 127.0.0.1:4318 */
    const char *zipkin;   /* 127.0.0.1:9411 */
} tr_topo_control_plane_t;

/*
 * Loads and validates a topology. `path` names the file (in messages, and its directory is
 * the base of relative paths); `text` is the file's content, or NULL to read `path`. On
 * success *out owns everything (free with tr_topology_free). On failure returns TR_ECONFIG,
 * TR_EPARSE, TR_ETOOLARGE or -errno, sets *out to NULL and writes
 * "file:line:col: services.x.key: what is wrong" to err.
 */
int tr_topology_load(const char *path, const char *text, tr_topology_t **out, char *err,
                     size_t errlen);

/* The services in file order; *out borrowed from t. */
size_t tr_topology_services(const tr_topology_t *t, const tr_topo_service_t **out);

/* The service named `name`, or NULL. */
const tr_topo_service_t *tr_topology_service(const tr_topology_t *t, const char *name);

/* Services in start order: every dependency (sync or async) before its dependents, ties in
 * file order. Stop in the reverse order. Borrowed from t. */
const tr_topo_service_t *const *tr_topology_start_order(const tr_topology_t *t, size_t *n);

/* The inline `gateway:` mapping (NULL when absent or given as a file). Its nodes belong to
 * tr_topology_config(t), so the gateway compiler can report positions in this file. */
const json_t *tr_topology_gateway(const tr_topology_t *t);
/* The absolute path of `gateway: {file: ...}`, or NULL. */
const char *tr_topology_gateway_file(const tr_topology_t *t);
/* The `sagas:` value as written (not validated here), or NULL. */
const json_t *tr_topology_sagas(const tr_topology_t *t);

const tr_topo_control_plane_t *tr_topology_control_plane(const tr_topology_t *t);

/* The loaded config tree (for positions of the gateway and sagas subtrees); owned by t. */
tr_config_t *tr_topology_config(const tr_topology_t *t);

/* The effective topology as JSON, every default filled in (for `trellis up --check` and the
 * API). The caller owns the result. */
json_t *tr_topology_effective(const tr_topology_t *t);

/* "always", "on-failure", "never"; "?" for anything else. */
const char *tr_topo_restart_name(int restart);

/* "SIGTERM" etc. for the signals a topology accepts; NULL for others. */
const char *tr_topo_signal_name(int sig);

/*
 * Expands ${NAME} in tmpl from vars, a NULL-terminated list of "NAME=value" (for instance
 * {"PORT=9001", "TRELLIS_SERVICE=catalog", "TRELLIS_INSTANCE=0", NULL}); "$$" is a literal
 * "$", and any other "$" is kept. Writes a NUL-terminated result to out and returns its
 * length, TR_ENOTFOUND when a name is not in vars, or TR_ETOOLARGE when out is too small.
 */
int tr_topology_expand(const char *tmpl, const char *const *vars, char *out, size_t n);

/* Frees t and everything borrowed from it; NULL is fine. */
void tr_topology_free(tr_topology_t *t);

#endif
