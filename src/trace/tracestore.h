/* The collector's trace store: a bounded in-memory index over SQLite persistence. */
#ifndef TR_TRACE_TRACESTORE_H
#define TR_TRACE_TRACESTORE_H

#include "trace/deps.h"
#include "trace/ingest.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tr_tracestore_s tr_tracestore_t;

typedef struct tr_tracestore_options_s {
    const char *path;       /* SQLite file; NULL keeps everything in memory only */
    size_t max_spans;       /* spans held in memory (oldest traces evicted); 0 → 1,000,000 */
    size_t max_trace_spans; /* spans kept per trace, more are rejected; 0 → 10,000 */
    uint64_t retention_ms;  /* spans older than this (by arrival) are dropped; 0 → never */
    uint64_t max_db_bytes;  /* the database's used pages above this drop the oldest; 0 → none */
} tr_tracestore_options_t;

/* One trace as held in memory; spans in arrival order. */
typedef struct tr_trace_s {
    uint8_t trace_id[16];
    tr_cspan_t **spans;
    size_t n, cap;
    size_t incoming; /* spans of the request being appended (limit accounting) */
    uint64_t start_ns, end_ns;
    uint64_t last_recv_ms;
    bool error;
    struct tr_trace_s *prev, *next; /* least recently updated first */
} tr_trace_t;

typedef struct tr_trace_query_s {
    const char *service, *operation, *correlation_id; /* NULL: any */
    uint64_t min_duration_ns;
    int error;                 /* -1 any, 0 only without errors, 1 only with */
    uint64_t start_ns, end_ns; /* the trace starts within [start, end]; 0: open */
    size_t limit;
} tr_trace_query_t;

/* Opens (creating and migrating) the store; on error `err` says what to fix. */
int tr_tracestore_open(const tr_tracestore_options_t *opts, tr_tracestore_t **out, char *err,
                       size_t errlen);
void tr_tracestore_close(tr_tracestore_t *st);

/*
 * Stores the spans of `b` in one transaction and indexes them. Spans it accepts move out of
 * the batch; spans over a trace's limit stay there and are counted in b->rejected with a
 * message. `now_ms` is the arrival time. Returns 0, or TR_EIO when SQLite failed (nothing
 * was stored and the batch is unchanged). The same as the three steps below in a row.
 */
int tr_tracestore_append(tr_tracestore_t *st, tr_span_batch_t *b, uint64_t now_ms);

/*
 * tr_tracestore_append in three steps, so that the SQLite write can run on another thread:
 *   admit (the loop): decides which spans of `b` fit their trace's limit; `b` must stay
 *     as it is until settled;
 *   write (any one thread at a time, never two writes at once): stores the admitted spans
 *     of `n` admitted batches in one transaction; touches nothing but the writer's
 *     connection; 0 or TR_EIO;
 *   settle (the loop): with write's result, indexes the stored spans (they leave the batch)
 *     or leaves them in it, and frees `a`.
 * Lookups and stats meanwhile read SQLite on a connection of their own.
 */
typedef struct tr_tracestore_admitted_s tr_tracestore_admitted_t;
tr_tracestore_admitted_t *tr_tracestore_admit(tr_tracestore_t *st, tr_span_batch_t *b,
                                              uint64_t now_ms);
int tr_tracestore_write(tr_tracestore_t *st, tr_tracestore_admitted_t *const *a, size_t n);
void tr_tracestore_settle(tr_tracestore_t *st, tr_tracestore_admitted_t *a, int rc);
/* Whether the store has a SQLite file (write does nothing without one). */
bool tr_tracestore_persistent(const tr_tracestore_t *st);

/*
 * A trace by id: from memory, else from SQLite. Returns 0 and *out (with *owned true when
 * the caller must free it with tr_tracestore_trace_free), TR_ENOTFOUND, or TR_EIO.
 */
int tr_tracestore_find(tr_tracestore_t *st, const uint8_t id[16], tr_trace_t **out, bool *owned);
void tr_tracestore_trace_free(tr_trace_t *t);

/* Traces in memory matching `q`, newest start first; *out is malloc'd, entries borrowed. */
size_t tr_tracestore_query(tr_tracestore_t *st, const tr_trace_query_t *q, tr_trace_t ***out);
/* The root span of a trace: no parent within it, earliest start. */
const tr_cspan_t *tr_tracestore_root(tr_tracestore_t *st, const tr_trace_t *t);
/* A span of `t` by id (the SERVER half of a shared Zipkin span first), or NULL. */
const tr_cspan_t *tr_tracestore_span(tr_tracestore_t *st, const tr_trace_t *t, const uint8_t id[8]);

/* Service names seen, sorted; *out is malloc'd, names borrowed. */
size_t tr_tracestore_services(tr_tracestore_t *st, const char ***out);
tr_deps_t *tr_tracestore_deps(tr_tracestore_t *st);

/* Applies retention (age in memory and SQLite, size in SQLite). Bounded work per call. */
void tr_tracestore_sweep(tr_tracestore_t *st, uint64_t now_ms);
/* The two halves of a sweep: memory on the loop; SQLite where tr_tracestore_write runs (and
 * never at the same time as a write). */
void tr_tracestore_sweep_memory(tr_tracestore_t *st, uint64_t now_ms);
void tr_tracestore_sweep_db(tr_tracestore_t *st, uint64_t now_ms);

typedef struct tr_tracestore_stats_s {
    size_t traces, spans; /* in memory */
    uint64_t db_spans;    /* rows in SQLite */
    uint64_t db_bytes;    /* used pages */
} tr_tracestore_stats_t;
void tr_tracestore_stats(tr_tracestore_t *st, tr_tracestore_stats_t *out);

#endif
