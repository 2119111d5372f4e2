/* The saga engine's state, shared by the engine (engine.c), its store (store.c) and its
 * HTTP API (api.c). One loop thread owns all of it. */
#ifndef TR_SAGA_ENGINE_INT_H
#define TR_SAGA_ENGINE_INT_H

#include "core/map.h"
#include "saga/saga_int.h"
#include "trellis/discovery.h"
#include "trellis/http_client.h"
#include "trellis/metrics.h"

#include <sqlite3.h>

/* Saga states, X(enum suffix, name). */
#define TR_SAGA_STATE_MAP(X)                                                                       \
    X(RUNNING, "running")                                                                          \
    X(COMPENSATING, "compensating")                                                                \
    X(COMPLETED, "completed")                                                                      \
    X(COMPENSATED, "compensated")                                                                  \
    X(STUCK, "stuck")                                                                              \
    X(ABORTED, "aborted")

typedef enum saga_state_e {
#define TR_SAGA_STATE_ENUM(e, s) SAGA_##e,
    TR_SAGA_STATE_MAP(TR_SAGA_STATE_ENUM)
#undef TR_SAGA_STATE_ENUM
        SAGA_STATES
} saga_state_t;

const char *tr__saga_state_name(saga_state_t s);
/* The state named `s`, or -1. */
int tr__saga_state_parse(const char *s);

/* One call of a step (its action or its compensation). */
typedef struct saga_call_s {
    char state;     /* 'p' pending, 'r' running (started, no result yet), 'd' done, 'f' failed */
    bool uncertain; /* failed without knowing whether it took effect (timeout, 5xx, reset) */
    uint32_t attempts;
    int status;
    char *error;
    json_t *response;
    uint64_t started_ms, finished_ms;
    bool dirty;
} saga_call_t;

typedef struct saga_waiter_s saga_waiter_t;
struct saga_s;

/* Where one step's calls are made: the steps of a parallel group each have a lane busy at
 * the same time; otherwise one lane works at a time. */
typedef struct saga_lane_s {
    struct saga_s *s;
    size_t step;
    bool comp;   /* the lane's call is the step's compensation (else its action) */
    bool active; /* between the start of its call and its outcome (retries included) */
    bool send;   /* its call is sent after the next commit */
    tr_http_client_req_t *req;
    tr_endpoint_t *ep;
    uv_timer_t timer; /* attempt deadline, backoff, discovery wait */
    bool timed_out, ignore_response;
    uint64_t attempt_ns;
    uint8_t span_id[8];
    uint32_t discovery_waits;
} saga_lane_t;

typedef struct saga_s {
    struct tr_saga_engine_s *e;
    char id[33];
    tr__saga_def_t *def;
    json_t *ctx; /* {"input":…, "steps":{name: response}, "saga":{"id":…}} */
    saga_state_t state, stuck_from;
    /* running: the first step of the group being worked on; compensating: the step whose
     * compensation (or action, to learn its answer: comp_phase false) is being worked on */
    size_t cur;
    bool comp_phase;
    bool pivot_passed;
    char *error;       /* why it compensates / is stuck */
    char *idem_key;    /* of the start request, or NULL */
    char *correlation; /* x-correlation-id of the start request, or NULL: the saga's id */
    uint8_t trace_id[16], root_span[8];
    uint8_t parent_span[8]; /* the starting request's span (all zero: the saga began its trace) */
    uint64_t created_ms, updated_ms;
    saga_call_t *action, *comp; /* per step */
    saga_lane_t *lanes;         /* per step */
    size_t open_timers;         /* lane timers not closed yet */
    /* group commit */
    bool dirty, queued, inserted;
    saga_waiter_t *waiters;
    bool closing;
} saga_t;

/* A request waiting for a saga (POST ?wait=, or the 202 of an accepted saga). */
struct saga_waiter_s {
    tr_http_req_t *req;
    saga_t *saga;
    bool accept_only; /* answer as soon as the start is committed */
    uv_timer_t timer; /* ?wait deadline */
    saga_waiter_t *next;
};

/* A saga of a group commit and what its commit announces. */
typedef struct tr__saga_done_s {
    saga_t *saga;
    uint64_t send; /* the lanes (bit = step) whose calls are sent once the commit is done */
    bool ended;    /* it ended in this commit */
    bool stuck;    /* it is stuck in this commit */
} tr__saga_done_t;

/* A group commit: rows copied from the sagas on the loop, written on a thread-pool thread. */
typedef struct tr__saga_commit_s {
    uv_work_t work;
    struct tr_saga_engine_s *e;
    tr__saga_done_t *batch; /* every queued saga, in order */
    size_t n;
    struct saga_row_s *sagas; /* the dirty ones */
    size_t nsagas;
    struct call_row_s *calls;
    size_t ncalls;
    int rc;
    bool running; /* queued on the thread pool, not done yet */
    char why[160];
} tr__saga_commit_t;

struct tr_saga_engine_s {
    uv_loop_t *loop;
    sqlite3 *db;  /* the loop's: loading at start, reads for the API */
    sqlite3 *wdb; /* the group commits' (one at a time, on a thread-pool thread) */
    struct tr_sqlite_checkpointer_s *ckpt; /* WAL checkpoints, off the commits' path */
    sqlite3_stmt *wsaga, *wcall;
    tr__saga_commit_t *inflight; /* the commit being written, or NULL */
    char *db_path;
    tr_map_t defs;  /* name → tr__saga_def_t */
    tr_map_t sagas; /* id → saga_t (those not ended, and ended ones until their commit) */
    tr_http_client_t *client;
    tr_discovery_t *discovery;
    tr_span_sink_t spans;
    char *service_name;
    saga_t **queue; /* sagas with something to commit, in order */
    size_t nqueue, capqueue;
    uv_prepare_t flush;
    uv_timer_t retry_flush;
    bool flush_failing, closing;
    int open_handles;
    void (*done)(void *data);
    void *done_data;
    tr_metric_t *ended, *attempts;
    uint64_t fsyncs; /* group commits made */
};

/* store.c: schema, commit of queued sagas, loading unfinished ones, reading for the API. */
int tr__saga_store_open(struct tr_saga_engine_s *e, bool sync_full, char *err, size_t errlen);
/* Copies every queued saga's dirty rows and empties the queue (loop thread). */
tr__saga_commit_t *tr__saga_store_snapshot(struct tr_saga_engine_s *e);
/* Writes a snapshot in one transaction (any one thread at a time): 0, or TR_EIO with c->why. */
int tr__saga_store_write(tr__saga_commit_t *c);
void tr__saga_commit_free(tr__saga_commit_t *c);
int tr__saga_store_load(struct tr_saga_engine_s *e);
/* The saga as the API serves it, from the committed state; NULL when unknown. */
json_t *tr__saga_store_get(struct tr_saga_engine_s *e, const char *id);
json_t *tr__saga_store_list(struct tr_saga_engine_s *e, const char *name, const char *state,
                            int limit);
/* The id of the saga started with this Idempotency-Key, into id (33 bytes); false if none. */
bool tr__saga_store_by_key(struct tr_saga_engine_s *e, const char *key, char *id);

/* engine.c */
/* What a start request tells about a new saga; every field may be NULL. */
typedef struct {
    const char *idem_key;         /* its Idempotency-Key */
    const tr_trace_ctx_t *parent; /* its trace context: the saga joins that trace */
    const char *correlation;      /* its x-correlation-id: every step call carries it */
} tr__saga_origin_t;

/* A saga in memory: a new one (id NULL, its own random id), or one loaded from the store. */
saga_t *tr__saga_new(struct tr_saga_engine_s *e, tr__saga_def_t *def, json_t *input, const char *id,
                     const tr__saga_origin_t *origin);

/* The x-correlation-id of the saga's calls. */
const char *tr__saga_correlation(const saga_t *s);
void tr__saga_mark(saga_t *s);
void tr__saga_advance(saga_t *s);
void tr__saga_add_waiter(saga_t *s, tr_http_req_t *req, bool accept_only, uint64_t wait_ms);
/* retry / abort from the API: 0, or TR_ESTATE (not allowed in the saga's state) */
int tr__saga_retry(saga_t *s);
int tr__saga_abort(saga_t *s);
/* Answers a waiter with the committed saga (200 when ended, 202 otherwise). */
void tr__saga_answer(struct tr_saga_engine_s *e, tr_http_req_t *req, const char *id, bool ended);
bool tr__saga_ended(saga_state_t s);

#endif
