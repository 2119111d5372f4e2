/* Central log store: a bounded in-memory ring in front of a SQLite file, with queries. */
#ifndef TR_TRACE_LOGS_H
#define TR_TRACE_LOGS_H

#include "trellis/http.h"
#include "trellis/log.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tr_logs_s tr_logs_t;

#define TR_LOGS_DEFAULT_MAX_LINES    100000
#define TR_LOGS_DEFAULT_MAX_DB_BYTES (256ull * 1024 * 1024)
#define TR_LOGS_DEFAULT_MAX_AGE_MS   (7ull * 24 * 3600 * 1000)
#define TR_LOGS_DEFAULT_QUEUE        16384
#define TR_LOGS_MAX_LINE             (16 * 1024) /* longer raw lines are truncated */
#define TR_LOGS_DEFAULT_LIMIT        100
#define TR_LOGS_MAX_LIMIT            10000

typedef struct tr_logs_options_s {
    const char *data_dir;           /* logs.db lives here (WAL); NULL keeps lines in memory only */
    size_t max_lines;               /* lines kept in memory, a ring; 0 → 100,000 */
    uint64_t max_db_bytes;          /* SQLite size cap; 0 → 256 MiB */
    uint64_t max_age_ms;            /* lines older than this are deleted; 0 → 7 days */
    uint64_t retention_interval_ms; /* how often retention runs; 0 → 1 minute */
    size_t queue_max;               /* lines waiting for the disk; beyond, dropped; 0 → 16384 */
} tr_logs_options_t;

/* One log line. Every string may be NULL (service and instance read as ""). */
typedef struct tr_log_entry_s {
    int64_t time_ns; /* Unix time in nanoseconds; 0 → now */
    tr_log_level_t level;
    const char *service;
    const char *instance;
    const char *message;
    const char *correlation_id;
    const char *trace_id;
    const char *fields_json; /* the whole original JSON object, or NULL */
    bool truncated;          /* the original line was longer than TR_LOGS_MAX_LINE */
} tr_log_entry_t;

/* A stored line: its cursor (`seq`, increasing by one per line accepted) and its entry. */
typedef struct tr_log_line_s {
    uint64_t seq;
    tr_log_entry_t entry;
} tr_log_line_t;

typedef struct tr_logs_query_s {
    const char *service;        /* exact match, NULL for any */
    const char *correlation_id; /* exact match */
    const char *trace_id;       /* exact match */
    const char *q;              /* case-insensitive (ASCII) substring of the message */
    int64_t since_ns;           /* time >= since; 0 for no bound */
    int64_t until_ns;           /* time < until; 0 for no bound */
    tr_log_level_t min_level;   /* lines below this level are skipped */
    uint64_t after;             /* only seq > after (a cursor); 0 for all */
    uint64_t upto;              /* only seq <= upto; 0 for no bound */
    size_t limit;               /* 0 → 100; at most 10,000 */
    bool oldest_first;          /* default newest first */
} tr_logs_query_t;

/* Receives one matching line; everything it points to is valid only during the call.
 * It must not call back into the store. */
typedef void (*tr_logs_result_cb)(const tr_log_line_t *line, void *data);

/* Called after lines were accepted (`persisted` false) or written to disk (true), from the
 * thread that did it, with no lock held. Keep it short: tr_logs_handle uses uv_async_send. */
typedef void (*tr_logs_notify_cb)(void *data, bool persisted);

typedef struct tr_logs_stats_s {
    uint64_t last_seq;      /* newest line accepted */
    uint64_t persisted_seq; /* every line up to this one is on disk (or was dropped) */
    uint64_t dropped;       /* lines not persisted because the disk queue was full */
    uint64_t truncated;     /* raw lines cut at TR_LOGS_MAX_LINE */
    size_t in_memory;       /* lines in the ring */
    uint64_t db_bytes;      /* SQLite pages in use after the last write; 0 when memory only */
} tr_logs_stats_t;

/*
 * Opens the store: creates <data_dir>/logs.db if needed and starts its writer thread. `o`
 * may be NULL for defaults and is copied. Returns NULL with a reason in err on failure.
 */
tr_logs_t *tr_logs_open(const tr_logs_options_t *o, char *err, size_t errlen);

/*
 * Writes the queued lines, stops the writer thread, detaches the logger sink if this store
 * owns it, and frees everything. Call tr_logs_shutdown first if HTTP requests were served.
 * NULL is fine.
 */
void tr_logs_close(tr_logs_t *l);

/* Stores a copy of `e` (from any thread; never blocks on the disk). Invalid UTF-8 becomes
 * U+FFFD, strings are cut at TR_LOGS_MAX_LINE. Returns the line's seq. */
uint64_t tr_logs_append(tr_logs_t *l, const tr_log_entry_t *e);

/*
 * Stores one raw output line of a process (`line` need not be NUL-terminated; a trailing
 * "\n" or "\r\n" is ignored). `stream` is 1 for stdout, 2 for stderr. A JSON object line
 * gives time, level, message, correlation_id and trace_id from its keys (see docs/logs.md);
 * any other line is the message itself at level info (stdout) or error (stderr). `service`
 * NULL takes the line's own "service" key. Returns the line's seq.
 */
uint64_t tr_logs_ingest_line(tr_logs_t *l, const char *service, const char *instance, int stream,
                             const char *line, size_t len);

/*
 * tr_logs_ingest_line without waiting for the parse: the line is copied, then parsed and
 * stored by the store's writer thread, in order with every other line handed over this way;
 * a line without a time of its own gets the time of this call. Past `queue_max` lines
 * waiting, a line is dropped (counted as dropped). A store without a database ingests at
 * once. For lines that arrive on a loop that also serves requests: the supervised
 * processes' output and the gateway's access lines in `trellis up`.
 */
void tr_logs_ingest_line_later(tr_logs_t *l, const char *service, const char *instance, int stream,
                               const char *line, size_t len);

/*
 * Parses a raw line into `e` without storing it (the parser behind tr_logs_ingest_line).
 * Strings in *e point into `scratch`, which the caller frees with free() afterwards.
 */
void tr_logs_parse_line(const char *line, size_t len, int stream, tr_log_entry_t *e,
                        char **scratch);

/* Sends trellis's own log lines (tr_log_*) to the store as well as to their fd. */
void tr_logs_attach_logger(tr_logs_t *l, const char *service, const char *instance);

/*
 * Calls `cb` for each matching line, in the query's order, up to its limit: newest lines
 * come from memory, older ones from SQLite. Returns the number of lines given to cb.
 */
size_t tr_logs_query(tr_logs_t *l, const tr_logs_query_t *q, tr_logs_result_cb cb, void *data);

/* Sets the one notify callback (NULL removes it). */
void tr_logs_set_notify(tr_logs_t *l, tr_logs_notify_cb cb, void *data);

/* Counters, from memory only: cheap enough for a loop thread. */
void tr_logs_stats(tr_logs_t *l, tr_logs_stats_t *out);

/* Blocks until every line accepted so far is written (for tests and shutdown). */
void tr_logs_flush(tr_logs_t *l);

/* Applies age and size retention now as if the time were now_ns (0 → the real time). */
void tr_logs_retain(tr_logs_t *l, int64_t now_ns);

/*
 * Parses a time: RFC 3339 ("2026-11-22T10:00:00.5+01:00"), epoch seconds, milliseconds,
 * microseconds or nanoseconds (told apart by magnitude), or a duration before now ("5m",
 * only when `durations`). Returns false when it is none of those.
 */
bool tr_logs_parse_time(const char *s, bool durations, int64_t now_ns, int64_t *out_ns);

/* ---- HTTP API (logs_http.c) ---------------------------------------------------------- */

/*
 * Serves GET /api/logs (query and follow) and POST /api/logs (ingest). Returns false, and
 * leaves `req` alone, when the path is not /api/logs. The first request binds the store to
 * req->loop: serve it from one loop only.
 */
bool tr_logs_handle(tr_logs_t *l, tr_http_req_t *req);

/* Answers parked followers and closes the loop handles; call on the serving loop before
 * its loop ends. Safe when nothing was served. */
void tr_logs_shutdown(tr_logs_t *l);

/* Internal: where logs_http.c keeps its per-loop state inside the store. */
void **tr__logs_http_slot(tr_logs_t *l);

#endif
