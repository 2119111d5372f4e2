/* Worker threads, one libuv loop each, and the signals that stop or reload them. */
#ifndef TRELLIS_RUNTIME_H
#define TRELLIS_RUNTIME_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef struct tr_worker_s tr_worker_t;

/* Runs on the worker's own thread before its loop starts. Return 0 or an error to abort. */
typedef int (*tr_worker_start_cb)(tr_worker_t *w, void *data);
/*
 * Runs on the worker's thread when the process is asked to stop: first with force=false
 * (stop accepting, let in-flight work finish), then, if handles remain when the grace
 * period ends, with force=true (close everything now). The worker's loop ends when it
 * has no open handles left.
 */
typedef void (*tr_worker_stop_cb)(tr_worker_t *w, bool force, void *data);

typedef struct tr_runtime_options_s {
    int workers;       /* 0 → number of CPUs */
    uint64_t grace_ms; /* drain deadline after SIGTERM/SIGINT; 0 → 10 s */
    tr_worker_start_cb on_start;
    tr_worker_stop_cb on_stop;
    void (*on_reload)(void *data); /* SIGHUP, on the main thread */
    void *data;
} tr_runtime_options_t;

/*
 * Starts the workers and blocks until they all stopped (after SIGTERM, SIGINT or
 * tr_runtime_stop). A second signal skips the grace period. Returns 0, or the first
 * error a worker's start callback returned.
 */
int tr_runtime_run(const tr_runtime_options_t *opts);

/* Asks a running runtime to stop as SIGTERM would (safe from any thread). */
void tr_runtime_stop(void);

uv_loop_t *tr_worker_loop(tr_worker_t *w);
/* 0-based index of the worker. */
int tr_worker_id(const tr_worker_t *w);
/* The worker's per-thread slot for the caller's state. */
void tr_worker_set_data(tr_worker_t *w, void *data);
void *tr_worker_data(const tr_worker_t *w);

/* Number of CPUs this process may run on. */
int tr_cpu_count(void);

#endif
