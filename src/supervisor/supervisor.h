/* The process supervisor behind `trellis up`: instances, probes, restarts with backoff, stop. */
#ifndef TR_SUPERVISOR_SUPERVISOR_H
#define TR_SUPERVISOR_SUPERVISOR_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "supervisor/probe.h"
#include "trellis/metrics.h"

/* Instance states: X(ENUM_SUFFIX, name). See docs/supervisor.md for the transitions. */
#define TR_INSTANCE_STATE_MAP(X)                                                                   \
    X(STARTING, "starting") /* spawned, readiness has not passed yet */                            \
    X(RUNNING, "running")   /* alive, was ready, readiness failing now: not registered */          \
    X(READY, "ready")       /* alive and ready: register it */                                     \
    X(BACKOFF, "backoff")   /* exited; waiting out the restart delay */                            \
    X(STOPPING, "stopping") /* stop signal sent, SIGKILL after the grace period */                 \
    X(STOPPED, "stopped")   /* not running and not restarting (stopped, or exited 0) */            \
    X(FAILED, "failed")     /* exited with failure and the policy gives up */

typedef enum tr_instance_state_e {
#define TR_INSTANCE_STATE_ENUM(name, str) TR_INST_##name,
    TR_INSTANCE_STATE_MAP(TR_INSTANCE_STATE_ENUM)
#undef TR_INSTANCE_STATE_ENUM
        TR_INST__COUNT
} tr_instance_state_t;

/* Restart policies, as Docker's and Kubernetes': always, on-failure, never. */
typedef enum tr_restart_policy_e {
    TR_RESTART_ALWAYS = 0, /* restart on any exit */
    TR_RESTART_ON_FAILURE, /* restart on a non-zero exit, a signal or a failed liveness probe */
    TR_RESTART_NEVER,
} tr_restart_policy_t;

/* Output streams of on_output. */
#define TR_INSTANCE_STDOUT 1
#define TR_INSTANCE_STDERR 2

/*
 * One instance (replica) of a service. Everything is copied by tr_supervisor_start; zero
 * fields take the defaults in brackets.
 */
typedef struct tr_instance_spec_s {
    const char *service;     /* required: "orders" */
    const char *instance_id; /* required: "orders-1" */
    const char *version;     /* optional, for the caller's bookkeeping */
    const char *const *argv; /* required, NULL-terminated; argv[0] is looked up in PATH */
    const char *cwd;         /* NULL: the supervisor's */
    /* "K=V" over the inherited and supervisor environment; wins over every other entry. */
    const char *const *env;
    uint16_t port;            /* given as PORT; probes use 127.0.0.1:port; 0 = no PORT, no probes */
    tr_probe_spec_t liveness; /* path ["/health/live"] */
    tr_probe_spec_t readiness; /* path ["/health/ready"]; disabled: ready once spawned */
    tr_restart_policy_t restart;
    uint64_t backoff_base_ms; /* first restart delay [100]; doubles per consecutive failure */
    uint64_t backoff_max_ms;  /* cap [30000] */
    uint32_t max_restarts;    /* FAILED after this many restarts in a row; 0 = no limit */
    int stop_signal;          /* [SIGTERM] */
    uint64_t stop_grace_ms;   /* before SIGKILL [10000] */
    void *data;               /* the caller's, returned by tr_instance_data */
} tr_instance_spec_t;

typedef struct tr_supervisor_s tr_supervisor_t;
typedef struct tr_instance_s tr_instance_t;

typedef struct tr_supervisor_events_s {
    /*
     * Every state change. Register the instance when `now` is READY and deregister it when
     * `old` is READY. `reason` is a short text ("spawned", "exited with code 1; restart in 200ms").
     * May call tr_instance_stop/restart/remove on any instance.
     */
    void (*on_state)(tr_instance_t *i, tr_instance_state_t old, tr_instance_state_t now,
                     const char *reason, void *data);
    /* One line of output without its newline; `line` is valid only during the call. */
    void (*on_output)(tr_instance_t *i, int stream, const char *line, size_t len, void *data);
    void *data;
} tr_supervisor_events_t;

typedef struct tr_supervisor_options_s {
    /*
     * Path of the trellis binary, used as exec shim (`trellis __exec ...`) so children get
     * PR_SET_PDEATHSIG and die with the supervisor. NULL: spawn directly, no such
     * protection (tests, non-Linux).
     */
    const char *self_exe;
    int pdeath_signal; /* [SIGKILL] */
    /* "K=V" given to every instance (TRELLIS_REGISTRY, OTEL_EXPORTER_OTLP_ENDPOINT); copied. */
    const char *const *env;
    tr_supervisor_events_t events;
    tr_metrics_t *metrics;     /* [tr_metrics_default()]; borrowed */
    uint64_t backoff_reset_ms; /* ready this long → backoff starts over [10000] */
    uint64_t ready_fast_ms;    /* readiness period until the first pass [50] */
    uint64_t kill_timeout_ms;  /* after SIGKILL, wait this long for the exit [5000] */
    uint64_t output_drain_ms;  /* after exit, wait this long for the pipes' EOF [200] */
} tr_supervisor_options_t;

/* Accessors' view of how an instance last exited. */
typedef struct tr_instance_exit_s {
    bool exited;   /* false until the first exit */
    int64_t code;  /* exit code when signal == 0 */
    int signal;    /* the signal that ended it, 0 if it exited by itself */
    bool liveness; /* it was killed because its liveness probe failed */
} tr_instance_exit_t;

/*
 * Creates a supervisor on `loop` (the caller's; it must outlive the supervisor). `opts` is
 * copied. Aborts on out-of-memory.
 */
tr_supervisor_t *tr_supervisor_new(uv_loop_t *loop, const tr_supervisor_options_t *opts);

/*
 * Spawns an instance: on_state fires STOPPED → STARTING (and STARTING → READY when there
 * is no readiness probe) before this returns; use spec->data to find your record. The spec
 * is copied. Returns 0 and the instance in *out (may be NULL), which the supervisor owns.
 * A program that can't be run is an exit with code 127 handled by the restart policy.
 * Returns UV_EINVAL for a spec missing service, instance_id or argv; TR_ESTATE once closing.
 */
int tr_supervisor_start(tr_supervisor_t *s, const tr_instance_spec_t *spec, tr_instance_t **out);

/*
 * Stops the instance for good: the stop signal to its process group, SIGKILL after the
 * grace period, no restart. `done` (may be NULL) fires once, from the loop, when it is
 * STOPPED (or FAILED) — also when it already was, and also when the instance is removed
 * first. Every call's `done` fires, in the order of the calls.
 */
void tr_instance_stop(tr_instance_t *i, void (*done)(tr_instance_t *i, void *data), void *data);

/*
 * Stops the instance as tr_instance_stop does, then spawns it again at once; the restart
 * count goes up and is kept. Works from any state, also STOPPED and FAILED.
 */
void tr_instance_restart(tr_instance_t *i);

/*
 * Forgets the instance: a process still running gets SIGKILL (group), on_state and
 * on_output never fire for it again, pending stops' `done` fire now (inside this call,
 * seeing STOPPED), and its memory is freed once its handles are closed. Stop it first for
 * a graceful end.
 */
void tr_instance_remove(tr_instance_t *i);

/*
 * Stops the `n` instances of `list` at once (tr_instance_stop on each); `done` (may be NULL)
 * fires once, from the loop, when all of them are stopped. `list` is read during the call
 * only. For `up`'s reverse dependency order: stop one service's instances, and the next
 * service's from `done`.
 */
void tr_supervisor_stop_instances(tr_supervisor_t *s, tr_instance_t *const *list, size_t n,
                                  void (*done)(void *data), void *data);

/* tr_supervisor_stop_instances of every instance. */
void tr_supervisor_stop_all(tr_supervisor_t *s, void (*done)(void *data), void *data);

/*
 * Removes every instance (SIGKILL to what still runs; use tr_supervisor_stop_all first
 * for a graceful stop), closes the probes' HTTP client and frees the supervisor once
 * every handle is closed; `done` (may be NULL) fires then. Closing twice is safe.
 */
void tr_supervisor_close(tr_supervisor_t *s, void (*done)(void *data), void *data);

/* Accessors. Times are Unix milliseconds, 0 when never. */
tr_instance_state_t tr_instance_state(const tr_instance_t *i);
const char *tr_instance_state_name(tr_instance_state_t state);
const tr_instance_spec_t *tr_instance_spec(const tr_instance_t *i);
int tr_instance_pid(const tr_instance_t *i); /* 0 when no process runs */
uint32_t tr_instance_restarts(const tr_instance_t *i);
int64_t tr_instance_started_at(const tr_instance_t *i);
int64_t tr_instance_ready_since(const tr_instance_t *i);
tr_instance_exit_t tr_instance_last_exit(const tr_instance_t *i);
uint64_t tr_instance_backoff_ms(const tr_instance_t *i); /* the last restart delay chosen */
tr_supervisor_t *tr_instance_supervisor(const tr_instance_t *i);
void *tr_instance_data(const tr_instance_t *i); /* spec.data */

/* The restart delay after `failures` consecutive failures: base × 2^(failures-1) ≤ max. */
uint64_t tr_supervisor_backoff(uint64_t base_ms, uint64_t max_ms, uint32_t failures);

#endif
