/* Central log store: a ring of recent lines, batched into SQLite by a writer thread. */
#include "trace/logs.h"

#include "core/buf.h"
#include "core/sqlite.h"
#include "core/mem.h"
#include "trellis/config.h"
#include "trellis/error.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define WRITE_BATCH          1024
#define DEFAULT_RETENTION_MS (60 * 1000)

/* A stored line: refcounted because the ring and the disk queue share it. */
typedef struct node_s {
    int refs;
    tr_log_line_t line;
    char data[]; /* the strings, NUL-terminated one after another */
} node_t;

/* A raw line handed over by tr_logs_ingest_line_later, waiting for the writer to parse it. */
typedef struct raw_s {
    struct raw_s *next;
    int64_t at_ns; /* when it was handed over: its time if it has none of its own */
    int stream;
    size_t len;
    char *service, *instance; /* into data, or NULL */
    char *line;               /* into data, len bytes */
    char data[];              /* service, instance (NUL-terminated), then the line */
} raw_t;

struct tr_logs_s {
    tr_logs_options_t opts;
    char *path; /* logs.db, NULL when memory only */

    pthread_mutex_t mu; /* ring, queue, counters */
    node_t **ring;
    size_t ring_head, ring_count; /* head: the slot the next line goes to */
    uint64_t next_seq;
    node_t **queue;
    size_t q_head, q_count;
    uint64_t persisted_seq, dropped, truncated;
    uint64_t db_bytes;      /* as of the last write or retention: stats never wait for the disk */
    pthread_cond_t wake;    /* the writer: work or stop */
    pthread_cond_t written; /* flushers: persisted_seq moved */
    bool stop;
    bool writing;               /* the writer holds lines taken off the queue */
    raw_t *raw_head, *raw_tail; /* lines to parse, in arrival order */
    size_t raw_count;
    bool parsing; /* the writer holds raw lines taken off that list */
    pthread_t writer;
    bool writer_started;

    pthread_mutex_t wmu; /* the write connection */
    sqlite3 *wdb;
    pthread_mutex_t rmu; /* the read connection */
    sqlite3 *rdb;

    pthread_mutex_t nmu; /* notify: once set_notify returns, the old callback is not running */
    tr_logs_notify_cb notify;
    void *notify_data;
    bool logger_attached;
    char *log_service, *log_instance;
    void *http; /* logs_http.c's state */
};

void **tr__logs_http_slot(tr_logs_t *l)
{
    return &l->http;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- UTF-8 ------------------------------------------------------------------------------ */

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0 when invalid. */
static size_t utf8_seq_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    unsigned min, cp;
    if (c >= 0xc2 && c <= 0xdf)
        len = 2, min = 0x80, cp = c & 0x1f;
    else if (c >= 0xe0 && c <= 0xef)
        len = 3, min = 0x800, cp = c & 0x0f;
    else if (c >= 0xf0 && c <= 0xf4)
        len = 4, min = 0x10000, cp = c & 0x07;
    else
        return 0;
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return len;
}

/* Appends s[0..n) with each invalid UTF-8 byte (and NUL) replaced by U+FFFD. */
static void append_utf8(tr_buf_t *b, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        size_t run = i;
        while (run < n && s[run] > 0 && s[run] < 0x80)
            run++;
        tr_buf_append(b, s + i, run - i);
        i = run;
        if (i >= n) break;
        size_t len = s[i] ? utf8_seq_len(s + i, n - i) : 0;
        if (len) {
            tr_buf_append(b, s + i, len);
            i += len;
        } else {
            tr_buf_append(b, "\xef\xbf\xbd", 3);
            i++;
        }
    }
}

/* The largest cut <= max that does not split a UTF-8 sequence. */
static size_t utf8_cut(const char *s, size_t len, size_t max)
{
    if (len <= max) return len;
    size_t cut = max;
    while (cut > 0 && cut > max - 4 && ((unsigned char)s[cut] & 0xc0) == 0x80)
        cut--;
    return cut;
}

/* ---- lines ------------------------------------------------------------------------------ */

static void node_release(node_t *n)
{
    if (n && __atomic_sub_fetch(&n->refs, 1, __ATOMIC_ACQ_REL) == 0) free(n);
}

static node_t *node_retain(node_t *n)
{
    __atomic_add_fetch(&n->refs, 1, __ATOMIC_RELAXED);
    return n;
}

enum { S_SERVICE, S_INSTANCE, S_MESSAGE, S_CID, S_TID, S_FIELDS, S_COUNT };

/* Copies the entry into one block, cleaning its strings. */
static node_t *node_new(const tr_log_entry_t *e)
{
    const char *src[S_COUNT] = {e->service,        e->instance, e->message,
                                e->correlation_id, e->trace_id, e->fields_json};
    tr_buf_t b = TR_BUF_INIT;
    size_t off[S_COUNT];
    bool present[S_COUNT];
    bool truncated = e->truncated;
    for (int i = 0; i < S_COUNT; i++) {
        off[i] = b.len;
        present[i] = src[i] != NULL || i <= S_MESSAGE;
        if (!src[i]) {
            tr_buf_append(&b, "", 1);
            continue;
        }
        size_t len = strlen(src[i]);
        size_t cut = utf8_cut(src[i], len, TR_LOGS_MAX_LINE);
        if (cut < len) {
            truncated = true;
            /* A cut JSON object is no longer one: keep the message, drop the fields. */
            if (i == S_FIELDS) present[i] = false;
        }
        if (present[i]) append_utf8(&b, src[i], cut);
        tr_buf_append(&b, "", 1);
    }
    node_t *n = tr_malloc(sizeof(*n) + b.len);
    memcpy(n->data, b.data, b.len);
    tr_buf_free(&b);
    n->refs = 1;
    n->line.seq = 0;
    n->line.entry = (tr_log_entry_t){
        .time_ns = e->time_ns ? e->time_ns : now_ns(),
        .level = (unsigned)e->level <= TR_LOG_ERROR ? e->level : TR_LOG_ERROR,
        .truncated = truncated,
    };
    const char **dst[S_COUNT] = {&n->line.entry.service,  &n->line.entry.instance,
                                 &n->line.entry.message,  &n->line.entry.correlation_id,
                                 &n->line.entry.trace_id, &n->line.entry.fields_json};
    for (int i = 0; i < S_COUNT; i++)
        *dst[i] =
            present[i] && !(i > S_MESSAGE && n->data[off[i]] == '\0') ? n->data + off[i] : NULL;
    return n;
}

/* ---- SQLite ----------------------------------------------------------------------------- */

static const char *const migrations[] = {
    /* 1: the lines, by seq, with indexes for the filters that select few lines. */
    "CREATE TABLE lines (seq INTEGER PRIMARY KEY, ts INTEGER NOT NULL, level INTEGER NOT NULL,"
    " service TEXT NOT NULL, instance TEXT NOT NULL, message TEXT NOT NULL,"
    " correlation_id TEXT, trace_id TEXT, fields TEXT, truncated INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX lines_ts ON lines (ts);"
    "CREATE INDEX lines_service ON lines (service, seq);"
    "CREATE INDEX lines_cid ON lines (correlation_id) WHERE correlation_id IS NOT NULL;"
    "CREATE INDEX lines_tid ON lines (trace_id) WHERE trace_id IS NOT NULL;",
};

#define NMIGRATIONS ((int)(sizeof(migrations) / sizeof(migrations[0])))

static int migrate(sqlite3 *db, const char *path, char *err, size_t errlen)
{
    return tr_sqlite_migrate(db, path, "logs", migrations, NMIGRATIONS, err, errlen);
}

/*
 * WAL with synchronous=NORMAL, as the registry: durable against a process crash without an
 * fsync per batch. Incremental auto-vacuum (set before the first table) lets size
 * retention give pages back to the file system.
 */
static int open_db(const char *path, sqlite3 **out, bool writer, char *err, size_t errlen)
{
    sqlite3 *db = NULL;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(path, &db, flags, NULL) != SQLITE_OK) {
        snprintf(err, errlen,
                 "%s: cannot open: %s (check the data directory exists and is writable)", path,
                 db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_close(db);
        return TR_EIO;
    }
    sqlite3_busy_timeout(db, 5000);
    int rc = 0;
    if (writer) {
        rc = tr_sqlite_exec(db,
                            "PRAGMA auto_vacuum=INCREMENTAL; PRAGMA journal_mode=WAL;"
                            " PRAGMA synchronous=NORMAL; PRAGMA temp_store=MEMORY;"
                            " PRAGMA cache_size=-32768;",
                            err, errlen, path);
        if (rc == 0) rc = migrate(db, path, err, errlen);
    }
    if (rc < 0) {
        sqlite3_close(db);
        return rc;
    }
    *out = db;
    return 0;
}

static uint64_t db_last_seq(sqlite3 *db)
{
    int64_t v = tr_sqlite_int(db, "SELECT coalesce(max(seq), 0) FROM lines");
    return v > 0 ? (uint64_t)v : 0;
}

static void bind_text(sqlite3_stmt *s, int i, const char *v)
{
    if (v)
        sqlite3_bind_text(s, i, v, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(s, i);
}

/* Writes a batch in one transaction; returns false (and says why) when SQLite refused. */
static bool write_batch(tr_logs_t *l, node_t **batch, size_t n, char *why, size_t whylen)
{
    sqlite3 *db = l->wdb;
    sqlite3_stmt *s = NULL;
    bool ok = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK;
    if (ok)
        ok = sqlite3_prepare_v2(db,
                                "INSERT OR REPLACE INTO lines (seq, ts, level, service, instance,"
                                " message, correlation_id, trace_id, fields, truncated)"
                                " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                                -1, &s, NULL) == SQLITE_OK;
    for (size_t i = 0; ok && i < n; i++) {
        const tr_log_line_t *ln = &batch[i]->line;
        sqlite3_reset(s);
        sqlite3_bind_int64(s, 1, (sqlite3_int64)ln->seq);
        sqlite3_bind_int64(s, 2, ln->entry.time_ns);
        sqlite3_bind_int(s, 3, (int)ln->entry.level);
        bind_text(s, 4, ln->entry.service);
        bind_text(s, 5, ln->entry.instance);
        bind_text(s, 6, ln->entry.message);
        bind_text(s, 7, ln->entry.correlation_id);
        bind_text(s, 8, ln->entry.trace_id);
        bind_text(s, 9, ln->entry.fields_json);
        sqlite3_bind_int(s, 10, ln->entry.truncated);
        ok = sqlite3_step(s) == SQLITE_DONE;
    }
    sqlite3_finalize(s);
    if (ok) ok = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK;
    if (!ok) {
        snprintf(why, whylen, "%s", sqlite3_errmsg(db));
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    }
    return ok;
}

/* ---- retention -------------------------------------------------------------------------- */

static void ring_drop_old(tr_logs_t *l, int64_t cutoff)
{
    size_t cap = l->opts.max_lines;
    while (l->ring_count > 0) {
        size_t tail = (l->ring_head + cap - l->ring_count) % cap;
        if (l->ring[tail]->line.entry.time_ns >= cutoff) break;
        node_release(l->ring[tail]);
        l->ring[tail] = NULL;
        l->ring_count--;
    }
}

/* Deletes the oldest lines in chunks until the pages in use fit the cap. */
static void db_shrink(sqlite3 *db, uint64_t max_bytes)
{
    for (int round = 0; round < 64 && tr_sqlite_used_bytes(db) > max_bytes; round++) {
        int64_t count = tr_sqlite_int(db, "SELECT count(*) FROM lines");
        if (count <= 0) break;
        int64_t chunk = count / 10 > 100 ? count / 10 : 100;
        sqlite3_stmt *s;
        if (sqlite3_prepare_v2(db,
                               "DELETE FROM lines WHERE seq IN"
                               " (SELECT seq FROM lines ORDER BY seq LIMIT ?1)",
                               -1, &s, NULL) != SQLITE_OK)
            return;
        sqlite3_bind_int64(s, 1, chunk);
        sqlite3_step(s);
        sqlite3_finalize(s);
        sqlite3_exec(db, "PRAGMA incremental_vacuum", NULL, NULL, NULL);
    }
}

static void retain_locked_db(tr_logs_t *l, int64_t cutoff)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(l->wdb, "DELETE FROM lines WHERE ts < ?1", -1, &s, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(s, 1, cutoff);
        sqlite3_step(s);
        sqlite3_finalize(s);
    }
    db_shrink(l->wdb, l->opts.max_db_bytes);
    sqlite3_exec(l->wdb, "PRAGMA incremental_vacuum", NULL, NULL, NULL);
    sqlite3_wal_checkpoint_v2(l->wdb, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
}

void tr_logs_retain(tr_logs_t *l, int64_t now)
{
    if (!now) now = now_ns();
    int64_t cutoff = now - (int64_t)l->opts.max_age_ms * 1000000;
    pthread_mutex_lock(&l->mu);
    ring_drop_old(l, cutoff);
    pthread_mutex_unlock(&l->mu);
    if (!l->wdb) return;
    pthread_mutex_lock(&l->wmu);
    retain_locked_db(l, cutoff);
    uint64_t bytes = tr_sqlite_used_bytes(l->wdb);
    pthread_mutex_unlock(&l->wmu);
    pthread_mutex_lock(&l->mu);
    l->db_bytes = bytes;
    pthread_mutex_unlock(&l->mu);
}

/* ---- the writer thread ------------------------------------------------------------------ */

static void call_notify(tr_logs_t *l, bool persisted)
{
    pthread_mutex_lock(&l->nmu);
    if (l->notify) l->notify(l->notify_data, persisted);
    pthread_mutex_unlock(&l->nmu);
}

/* Takes up to WRITE_BATCH lines off the queue (l->mu held). */
static size_t take_batch(tr_logs_t *l, node_t **batch)
{
    size_t n = 0;
    while (l->q_count > 0 && n < WRITE_BATCH) {
        batch[n++] = l->queue[l->q_head];
        l->queue[l->q_head] = NULL;
        l->q_head = (l->q_head + 1) % l->opts.queue_max;
        l->q_count--;
    }
    l->writing = n > 0;
    return n;
}

static void deadline_after(struct timespec *ts, uint64_t ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += (time_t)(ms / 1000);
    ts->tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts->tv_nsec >= 1000000000) ts->tv_sec++, ts->tv_nsec -= 1000000000;
}

static void persist(tr_logs_t *l, node_t **batch, size_t n)
{
    char why[256] = "";
    pthread_mutex_lock(&l->wmu);
    bool ok = write_batch(l, batch, n, why, sizeof(why));
    uint64_t bytes = tr_sqlite_used_bytes(l->wdb);
    pthread_mutex_unlock(&l->wmu);
    uint64_t last = batch[n - 1]->line.seq;
    for (size_t i = 0; i < n; i++)
        node_release(batch[i]);
    pthread_mutex_lock(&l->mu);
    if (!ok) l->dropped += n;
    l->persisted_seq = last;
    l->db_bytes = bytes;
    l->writing = false;
    pthread_cond_broadcast(&l->written);
    pthread_mutex_unlock(&l->mu);
    /* Logged with no lock held: the logger's sink may append to this very store. */
    if (!ok)
        tr_log_error("log store write failed", TR_LOG_STR("path", l->path),
                     TR_LOG_STR("reason", why), TR_LOG_UINT("lines", n));
    call_notify(l, true);
}

static void parse_raw(tr_logs_t *l, raw_t *r);

static void *writer_main(void *arg)
{
    tr_logs_t *l = arg;
    node_t **batch = tr_malloc(sizeof(*batch) * WRITE_BATCH);
    struct timespec next_retain;
    deadline_after(&next_retain, l->opts.retention_interval_ms);
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (l->q_count == 0 && !l->raw_head && !l->stop) {
            if (pthread_cond_timedwait(&l->wake, &l->mu, &next_retain) != 0) break;
        }
        /* Raw lines first: parsing them here keeps it off the loops that hand them over. */
        raw_t *raw = l->raw_head;
        l->raw_head = l->raw_tail = NULL;
        l->raw_count = 0;
        l->parsing = raw != NULL;
        if (raw) {
            pthread_mutex_unlock(&l->mu);
            parse_raw(l, raw);
            pthread_mutex_lock(&l->mu);
            l->parsing = false;
            pthread_cond_broadcast(&l->written);
        }
        size_t n = take_batch(l, batch);
        bool stop = l->stop && n == 0 && !l->raw_head;
        pthread_mutex_unlock(&l->mu);
        if (stop) break;
        if (n) persist(l, batch, n);
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        if (now.tv_sec > next_retain.tv_sec ||
            (now.tv_sec == next_retain.tv_sec && now.tv_nsec >= next_retain.tv_nsec)) {
            tr_logs_retain(l, 0);
            deadline_after(&next_retain, l->opts.retention_interval_ms);
        }
        pthread_mutex_lock(&l->mu);
    }
    free(batch);
    return NULL;
}

/* ---- open / close ----------------------------------------------------------------------- */

static void apply_defaults(tr_logs_options_t *o)
{
    if (!o->max_lines) o->max_lines = TR_LOGS_DEFAULT_MAX_LINES;
    if (!o->max_db_bytes) o->max_db_bytes = TR_LOGS_DEFAULT_MAX_DB_BYTES;
    if (!o->max_age_ms) o->max_age_ms = TR_LOGS_DEFAULT_MAX_AGE_MS;
    if (!o->retention_interval_ms) o->retention_interval_ms = DEFAULT_RETENTION_MS;
    if (!o->queue_max) o->queue_max = TR_LOGS_DEFAULT_QUEUE;
}

static int open_disk(tr_logs_t *l, char *err, size_t errlen)
{
    size_t n = strlen(l->opts.data_dir) + sizeof("/logs.db");
    l->path = tr_malloc(n);
    snprintf(l->path, n, "%s/logs.db", l->opts.data_dir);
    int rc = open_db(l->path, &l->wdb, true, err, errlen);
    if (rc == 0) rc = open_db(l->path, &l->rdb, false, err, errlen);
    if (rc < 0) return rc;
    l->next_seq = db_last_seq(l->wdb) + 1;
    l->persisted_seq = l->next_seq - 1;
    l->db_bytes = tr_sqlite_used_bytes(l->wdb);
    if (pthread_create(&l->writer, NULL, writer_main, l) != 0) {
        snprintf(err, errlen, "%s: cannot start the writer thread", l->path);
        return TR_EIO;
    }
    l->writer_started = true;
    return 0;
}

tr_logs_t *tr_logs_open(const tr_logs_options_t *o, char *err, size_t errlen)
{
    tr_logs_t *l = tr_calloc(1, sizeof(*l));
    if (o) l->opts = *o;
    apply_defaults(&l->opts);
    l->opts.data_dir = NULL;
    l->ring = tr_calloc(l->opts.max_lines, sizeof(*l->ring));
    l->next_seq = 1;
    pthread_mutex_init(&l->mu, NULL);
    pthread_mutex_init(&l->wmu, NULL);
    pthread_mutex_init(&l->rmu, NULL);
    pthread_mutex_init(&l->nmu, NULL);
    pthread_cond_init(&l->wake, NULL);
    pthread_cond_init(&l->written, NULL);
    if (o && o->data_dir) {
        l->opts.data_dir = tr_strdup(o->data_dir);
        l->queue = tr_calloc(l->opts.queue_max, sizeof(*l->queue));
        if (open_disk(l, err, errlen) < 0) {
            tr_logs_close(l);
            return NULL;
        }
    }
    return l;
}

void tr_logs_close(tr_logs_t *l)
{
    if (!l) return;
    if (l->logger_attached) tr_log_set_sink(NULL, NULL);
    if (l->writer_started) {
        pthread_mutex_lock(&l->mu);
        l->stop = true;
        pthread_cond_signal(&l->wake);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->writer, NULL);
    }
    for (size_t i = 0; i < l->opts.max_lines; i++)
        node_release(l->ring[i]);
    for (size_t i = 0; l->queue && i < l->q_count; i++)
        node_release(l->queue[(l->q_head + i) % l->opts.queue_max]);
    sqlite3_close(l->wdb);
    sqlite3_close(l->rdb);
    pthread_mutex_destroy(&l->mu);
    pthread_mutex_destroy(&l->wmu);
    pthread_mutex_destroy(&l->rmu);
    pthread_mutex_destroy(&l->nmu);
    pthread_cond_destroy(&l->wake);
    pthread_cond_destroy(&l->written);
    free(l->ring);
    free(l->queue);
    free(l->path);
    free((char *)l->opts.data_dir);
    free(l->log_service);
    free(l->log_instance);
    free(l);
}

/* ---- append ----------------------------------------------------------------------------- */

uint64_t tr_logs_append(tr_logs_t *l, const tr_log_entry_t *e)
{
    node_t *n = node_new(e);
    size_t cap = l->opts.max_lines;
    pthread_mutex_lock(&l->mu);
    uint64_t seq = n->line.seq = l->next_seq++;
    if (n->line.entry.truncated) l->truncated++;
    node_release(l->ring[l->ring_head]);
    l->ring[l->ring_head] = n;
    l->ring_head = (l->ring_head + 1) % cap;
    if (l->ring_count < cap) l->ring_count++;
    if (l->queue) {
        if (l->q_count < l->opts.queue_max) {
            l->queue[(l->q_head + l->q_count) % l->opts.queue_max] = node_retain(n);
            l->q_count++;
            pthread_cond_signal(&l->wake);
        } else {
            l->dropped++;
        }
    } else {
        l->persisted_seq = seq;
    }
    pthread_mutex_unlock(&l->mu);
    call_notify(l, false);
    return seq;
}

void tr_logs_flush(tr_logs_t *l)
{
    pthread_mutex_lock(&l->mu);
    while (l->writer_started && (l->q_count > 0 || l->writing || l->raw_head || l->parsing))
        pthread_cond_wait(&l->written, &l->mu);
    pthread_mutex_unlock(&l->mu);
}

void tr_logs_set_notify(tr_logs_t *l, tr_logs_notify_cb cb, void *data)
{
    pthread_mutex_lock(&l->nmu);
    l->notify = cb;
    l->notify_data = data;
    pthread_mutex_unlock(&l->nmu);
}

void tr_logs_stats(tr_logs_t *l, tr_logs_stats_t *out)
{
    pthread_mutex_lock(&l->mu);
    *out = (tr_logs_stats_t){
        .last_seq = l->next_seq - 1,
        .persisted_seq = l->queue ? l->persisted_seq : l->next_seq - 1,
        .dropped = l->dropped,
        .truncated = l->truncated,
        .in_memory = l->ring_count,
        .db_bytes = l->db_bytes,
    };
    pthread_mutex_unlock(&l->mu);
}

/* ---- trellis's own logger --------------------------------------------------------------- */

static void on_log_record(const tr_log_record_t *r, void *data)
{
    tr_logs_t *l = data;
    tr_log_entry_t e = {
        .time_ns = r->ts_ms * 1000000,
        .level = r->level,
        .service = l->log_service,
        .instance = l->log_instance,
        .message = r->msg ? r->msg : "",
        .correlation_id = r->correlation_id,
        .trace_id = r->trace_id,
        .fields_json = r->json,
    };
    tr_logs_append(l, &e);
}

void tr_logs_attach_logger(tr_logs_t *l, const char *service, const char *instance)
{
    tr_free(&l->log_service);
    tr_free(&l->log_instance);
    l->log_service = tr_strdup(service ? service : "trellis");
    l->log_instance = tr_strdup(instance ? instance : "");
    l->logger_attached = true;
    /* The logger writes the line to its fd before calling the sink, so stderr output is
     * unchanged; the store only adds a copy. */
    tr_log_set_sink(on_log_record, l);
}

/* ---- raw lines -------------------------------------------------------------------------- */

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static bool digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

/* RFC 3339: 2026-11-22T10:00:00[.frac](Z|+hh:mm|-hh:mm); 't', 'z' and ' ' accepted too. */
static bool parse_rfc3339(const char *s, int64_t *out)
{
    int y, mo, d, h, mi, sec;
    if (!digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) || s[7] != '-' ||
        !digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
        !digits(s + 11, 2, &h) || s[13] != ':' || !digits(s + 14, 2, &mi) || s[16] != ':' ||
        !digits(s + 17, 2, &sec))
        return false;
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60) return false;
    const char *p = s + 19;
    int64_t frac = 0, scale = 1000000000;
    if (*p == '.' || *p == ',') {
        p++;
        if (*p < '0' || *p > '9') return false;
        for (; *p >= '0' && *p <= '9'; p++)
            if (scale > 1) frac = frac * 10 + (*p - '0'), scale /= 10;
        frac *= scale;
    }
    int64_t offset = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om;
        if (!digits(p + 1, 2, &oh) || p[3] != ':' || !digits(p + 4, 2, &om) || oh > 23 || om > 59)
            return false;
        offset = (oh * 60 + om) * 60 * (*p == '-' ? -1 : 1);
        p += 6;
    } else {
        return false;
    }
    if (*p) return false;
    int64_t secs =
        days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 + sec - offset;
    *out = secs * 1000000000 + frac;
    return true;
}

/* Epoch seconds, ms, µs or ns, told apart by magnitude (seconds stay below 1e11 until 5138),
 * exactly for integers: a double would round nanoseconds away. */
static bool epoch_int_ns(int64_t v, int64_t *out, int64_t *unit)
{
    if (v <= 0) return false;
    *unit = v < INT64_C(100000000000)         ? 1000000000
            : v < INT64_C(100000000000000)    ? 1000000
            : v < INT64_C(100000000000000000) ? 1000
                                              : 1;
    if (v > INT64_MAX / *unit) return false;
    *out = v * *unit;
    return true;
}

/* A fractional epoch: the whole part exactly, the fraction in the same unit. */
static bool epoch_ns(double v, int64_t *out)
{
    if (!(v > 0) || v > 9.2e18) return false;
    double whole = floor(v);
    int64_t unit;
    if (!epoch_int_ns((int64_t)whole, out, &unit)) return false;
    *out += (int64_t)((v - whole) * (double)unit + 0.5);
    return true;
}

bool tr_logs_parse_time(const char *s, bool durations, int64_t now, int64_t *out)
{
    if (!s || !*s) return false;
    if (parse_rfc3339(s, out)) return true;
    if (!now) now = now_ns();
    uint64_t ms;
    if (durations && strcmp(s, "0") != 0 && tr_parse_duration_ms(s, &ms) == 0) {
        *out = now - (int64_t)ms * 1000000;
        return true;
    }
    if (*s < '0' || *s > '9') return false;
    char *end;
    if (strspn(s, "0123456789") == strlen(s)) {
        errno = 0;
        long long i = strtoll(s, &end, 10);
        int64_t unit;
        return errno == 0 && epoch_int_ns(i, out, &unit);
    }
    double v = strtod(s, &end);
    return *end == '\0' && epoch_ns(v, out);
}

static const char *first_string(json_t *o, const char *const *keys)
{
    for (; *keys; keys++) {
        json_t *v = json_object_get(o, *keys);
        if (json_is_string(v)) return json_string_value(v);
    }
    return NULL;
}

static bool json_time(json_t *o, int64_t *out)
{
    static const char *const keys[] = {"ts", "time", "timestamp", "@timestamp", NULL};
    for (const char *const *k = keys; *k; k++) {
        json_t *v = json_object_get(o, *k);
        if (json_is_string(v) && tr_logs_parse_time(json_string_value(v), false, 0, out))
            return true;
        int64_t unit;
        if (json_is_integer(v) && epoch_int_ns((int64_t)json_integer_value(v), out, &unit))
            return true;
        if (json_is_real(v) && epoch_ns(json_real_value(v), out)) return true;
    }
    return false;
}

/* Level words of common loggers; numbers are pino/bunyan's (10 trace … 60 fatal). */
static bool json_level(json_t *o, tr_log_level_t *out)
{
    static const char *const keys[] = {"level", "severity", "lvl", "log.level", NULL};
    for (const char *const *k = keys; *k; k++) {
        json_t *v = json_object_get(o, *k);
        if (json_is_integer(v)) {
            json_int_t n = json_integer_value(v);
            *out = n < 30   ? TR_LOG_DEBUG
                   : n < 40 ? TR_LOG_INFO
                   : n < 50 ? TR_LOG_WARN
                            : TR_LOG_ERROR;
            return true;
        }
        const char *s = json_string_value(v);
        if (!s) continue;
        int lv = tr_log_level_parse(s);
        if (lv >= 0) {
            *out = (tr_log_level_t)lv;
            return true;
        }
        static const char *const dbg[] = {"trace", "verbose", "dbg", NULL};
        static const char *const inf[] = {"information", "notice", "inf", NULL};
        static const char *const err[] = {"err",   "fatal",     "critical", "crit", "panic",
                                          "alert", "emergency", "emerg",    NULL};
        const char *const *lists[] = {dbg, inf, err};
        const tr_log_level_t levels[] = {TR_LOG_DEBUG, TR_LOG_INFO, TR_LOG_ERROR};
        for (int i = 0; i < 3; i++)
            for (const char *const *w = lists[i]; *w; w++)
                if (strcasecmp(s, *w) == 0) {
                    *out = levels[i];
                    return true;
                }
    }
    return false;
}

/* The trace ID as "trace_id", "traceId", "trace.id" or {"trace": {"id": …}} (ECS). */
static const char *json_trace_id(json_t *o)
{
    static const char *const keys[] = {"trace_id", "traceId", "trace.id", "traceid", NULL};
    const char *s = first_string(o, keys);
    if (s) return s;
    json_t *t = json_object_get(o, "trace");
    return json_is_object(t) ? json_string_value(json_object_get(t, "id")) : NULL;
}

/* Fills e from a JSON object line; its strings stay borrowed from *out until it is freed. */
static bool parse_json_line(const char *s, size_t n, tr_log_entry_t *e, json_t **out)
{
    if (n < 2 || s[0] != '{') return false;
    json_t *o = json_loadb(s, n, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(o)) {
        json_decref(o);
        return false;
    }
    static const char *const msg_keys[] = {"msg", "message", "log", NULL};
    static const char *const cid_keys[] = {"correlation_id",   "correlationId",  "x-correlation-id",
                                           "X-Correlation-ID", "correlation.id", NULL};
    static const char *const svc_keys[] = {"service", "service.name", NULL};
    static const char *const inst_keys[] = {"instance", "service.instance.id", NULL};
    json_time(o, &e->time_ns);
    json_level(o, &e->level);
    e->message = first_string(o, msg_keys);
    e->correlation_id = first_string(o, cid_keys);
    e->trace_id = json_trace_id(o);
    e->service = first_string(o, svc_keys);
    e->instance = first_string(o, inst_keys);
    e->fields_json = s;
    *out = o;
    return true;
}

/* Copies the entry's borrowed strings into one malloc'd block the caller frees. */
static char *pack_entry(tr_log_entry_t *e)
{
    const char **f[] = {&e->service,  &e->instance,    &e->message,
                        &e->trace_id, &e->fields_json, &e->correlation_id};
    size_t nf = sizeof(f) / sizeof(f[0]), total = 1, off[6];
    for (size_t i = 0; i < nf; i++)
        total += *f[i] ? strlen(*f[i]) + 1 : 0;
    char *block = tr_malloc(total), *p = block;
    for (size_t i = 0; i < nf; i++) {
        off[i] = (size_t)(p - block);
        if (!*f[i]) continue;
        size_t len = strlen(*f[i]) + 1;
        memcpy(p, *f[i], len);
        p += len;
    }
    for (size_t i = 0; i < nf; i++)
        if (*f[i]) *f[i] = block + off[i];
    return block;
}

static void parse_line_at(const char *line, size_t len, int stream, int64_t at_ns,
                          tr_log_entry_t *e, char **scratch)
{
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
        len--;
    *e = (tr_log_entry_t){.level = stream == 2 ? TR_LOG_ERROR : TR_LOG_INFO};
    size_t cut = utf8_cut(line, len, TR_LOGS_MAX_LINE);
    e->truncated = cut < len;
    tr_buf_t clean = TR_BUF_INIT;
    append_utf8(&clean, line, cut);
    tr_buf_cstr(&clean);
    json_t *o = NULL;
    /* A JSON line without a message key shows as itself rather than as nothing. */
    if (!parse_json_line(clean.data, clean.len, e, &o) || !e->message) e->message = clean.data;
    if (!e->time_ns) e->time_ns = at_ns;
    *scratch = pack_entry(e);
    json_decref(o);
    tr_buf_free(&clean);
}

void tr_logs_parse_line(const char *line, size_t len, int stream, tr_log_entry_t *e, char **scratch)
{
    parse_line_at(line, len, stream, now_ns(), e, scratch);
}

static uint64_t ingest_at(tr_logs_t *l, const char *service, const char *instance, int stream,
                          const char *line, size_t len, int64_t at_ns)
{
    tr_log_entry_t e;
    char *scratch;
    parse_line_at(line, len, stream, at_ns, &e, &scratch);
    if (service) e.service = service;
    if (instance) e.instance = instance;
    uint64_t seq = tr_logs_append(l, &e);
    free(scratch);
    return seq;
}

uint64_t tr_logs_ingest_line(tr_logs_t *l, const char *service, const char *instance, int stream,
                             const char *line, size_t len)
{
    return ingest_at(l, service, instance, stream, line, len, now_ns());
}

static char *copy_str(char *at, const char *s, char **out)
{
    if (!s) {
        *out = NULL;
        return at;
    }
    size_t n = strlen(s) + 1;
    memcpy(at, s, n);
    *out = at;
    return at + n;
}

void tr_logs_ingest_line_later(tr_logs_t *l, const char *service, const char *instance, int stream,
                               const char *line, size_t len)
{
    if (!l->writer_started) {
        tr_logs_ingest_line(l, service, instance, stream, line, len);
        return;
    }
    size_t ns = service ? strlen(service) + 1 : 0, ni = instance ? strlen(instance) + 1 : 0;
    raw_t *r = tr_malloc(sizeof(*r) + ns + ni + len);
    r->next = NULL;
    r->at_ns = now_ns();
    r->stream = stream;
    r->len = len;
    char *p = copy_str(r->data, service, &r->service);
    p = copy_str(p, instance, &r->instance);
    r->line = p;
    memcpy(p, line, len);
    pthread_mutex_lock(&l->mu);
    if (l->raw_count >= l->opts.queue_max) { /* the writer is far behind: as a full queue */
        l->dropped++;
        pthread_mutex_unlock(&l->mu);
        free(r);
        return;
    }
    if (l->raw_tail)
        l->raw_tail->next = r;
    else
        l->raw_head = r;
    l->raw_tail = r;
    l->raw_count++;
    pthread_cond_signal(&l->wake);
    pthread_mutex_unlock(&l->mu);
}

/* Parses and stores the raw lines taken off the list (no lock held). */
static void parse_raw(tr_logs_t *l, raw_t *r)
{
    while (r) {
        raw_t *next = r->next;
        ingest_at(l, r->service, r->instance, r->stream, r->line, r->len, r->at_ns);
        free(r);
        r = next;
    }
}

/* ---- queries ---------------------------------------------------------------------------- */

static bool str_eq(const char *want, const char *have)
{
    return !want || (have && strcmp(want, have) == 0);
}

static bool matches(const tr_logs_query_t *q, const tr_log_line_t *ln)
{
    const tr_log_entry_t *e = &ln->entry;
    if (ln->seq <= q->after || (q->upto && ln->seq > q->upto)) return false;
    if (e->level < q->min_level) return false;
    if (q->since_ns && e->time_ns < q->since_ns) return false;
    if (q->until_ns && e->time_ns >= q->until_ns) return false;
    if (!str_eq(q->service, e->service) || !str_eq(q->correlation_id, e->correlation_id) ||
        !str_eq(q->trace_id, e->trace_id))
        return false;
    return !q->q || !*q->q || strcasestr(e->message, q->q) != NULL;
}

/* Collects matching ring lines (retained) in the query's order; returns how many, and the
 * seq of the oldest line in the ring (everything below it is only on disk). */
static size_t ring_collect(tr_logs_t *l, const tr_logs_query_t *q, size_t limit, node_t **out,
                           uint64_t *ring_min)
{
    size_t n = 0, cap = l->opts.max_lines;
    pthread_mutex_lock(&l->mu);
    size_t count = l->ring_count, tail = (l->ring_head + cap - count) % cap;
    *ring_min = count ? l->ring[tail]->line.seq : l->next_seq;
    for (size_t i = 0; i < count && n < limit; i++) {
        size_t k = q->oldest_first ? i : count - 1 - i;
        node_t *nd = l->ring[(tail + k) % cap];
        if (matches(q, &nd->line)) out[n++] = node_retain(nd);
    }
    pthread_mutex_unlock(&l->mu);
    return n;
}

static void build_sql(const tr_logs_query_t *q, tr_buf_t *sql)
{
    tr_buf_append_str(sql, "SELECT seq, ts, level, service, instance, message, correlation_id,"
                           " trace_id, fields, truncated FROM lines"
                           " WHERE seq < :below AND seq > :after AND level >= :level");
    if (q->upto) tr_buf_append_str(sql, " AND seq <= :upto");
    if (q->service) tr_buf_append_str(sql, " AND service = :service");
    if (q->correlation_id) tr_buf_append_str(sql, " AND correlation_id = :cid");
    if (q->trace_id) tr_buf_append_str(sql, " AND trace_id = :tid");
    if (q->since_ns) tr_buf_append_str(sql, " AND ts >= :since");
    if (q->until_ns) tr_buf_append_str(sql, " AND ts < :until");
    if (q->q && *q->q) tr_buf_append_str(sql, " AND instr(lower(message), lower(:q)) > 0");
    tr_buf_append_str(sql, q->oldest_first ? " ORDER BY seq ASC" : " ORDER BY seq DESC");
    tr_buf_append_str(sql, " LIMIT :limit");
    tr_buf_cstr(sql);
}

static void bind_named_text(sqlite3_stmt *s, const char *name, const char *v)
{
    int i = sqlite3_bind_parameter_index(s, name);
    if (i > 0) sqlite3_bind_text(s, i, v, -1, SQLITE_STATIC);
}

static void bind_named_int(sqlite3_stmt *s, const char *name, int64_t v)
{
    int i = sqlite3_bind_parameter_index(s, name);
    if (i > 0) sqlite3_bind_int64(s, i, v);
}

static const char *col_text(sqlite3_stmt *s, int i)
{
    return (const char *)sqlite3_column_text(s, i);
}

/* Lines older than the ring, from SQLite. */
static size_t db_query(tr_logs_t *l, const tr_logs_query_t *q, uint64_t below, size_t limit,
                       tr_logs_result_cb cb, void *data)
{
    if (!l->rdb || limit == 0 || below <= q->after + 1) return 0;
    tr_buf_t sql = TR_BUF_INIT;
    build_sql(q, &sql);
    size_t n = 0;
    pthread_mutex_lock(&l->rmu);
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(l->rdb, sql.data, -1, &s, NULL) == SQLITE_OK) {
        bind_named_int(s, ":below", (int64_t)below);
        bind_named_int(s, ":after", (int64_t)q->after);
        bind_named_int(s, ":level", q->min_level);
        bind_named_int(s, ":upto", (int64_t)q->upto);
        bind_named_text(s, ":service", q->service);
        bind_named_text(s, ":cid", q->correlation_id);
        bind_named_text(s, ":tid", q->trace_id);
        bind_named_int(s, ":since", q->since_ns);
        bind_named_int(s, ":until", q->until_ns);
        bind_named_text(s, ":q", q->q);
        bind_named_int(s, ":limit", (int64_t)limit);
        while (sqlite3_step(s) == SQLITE_ROW) {
            tr_log_line_t ln = {
                .seq = (uint64_t)sqlite3_column_int64(s, 0),
                .entry = {.time_ns = sqlite3_column_int64(s, 1),
                          .level = (tr_log_level_t)sqlite3_column_int(s, 2),
                          .service = col_text(s, 3),
                          .instance = col_text(s, 4),
                          .message = col_text(s, 5),
                          .correlation_id = col_text(s, 6),
                          .trace_id = col_text(s, 7),
                          .fields_json = col_text(s, 8),
                          .truncated = sqlite3_column_int(s, 9) != 0},
            };
            cb(&ln, data);
            n++;
        }
        sqlite3_finalize(s);
    }
    pthread_mutex_unlock(&l->rmu);
    tr_buf_free(&sql);
    return n;
}

static size_t give(node_t **nodes, size_t n, tr_logs_result_cb cb, void *data)
{
    for (size_t i = 0; i < n; i++) {
        cb(&nodes[i]->line, data);
        node_release(nodes[i]);
    }
    return n;
}

size_t tr_logs_query(tr_logs_t *l, const tr_logs_query_t *q, tr_logs_result_cb cb, void *data)
{
    size_t limit = q->limit ? q->limit : TR_LOGS_DEFAULT_LIMIT;
    if (limit > TR_LOGS_MAX_LIMIT) limit = TR_LOGS_MAX_LIMIT;
    node_t **nodes = tr_malloc(sizeof(*nodes) * limit);
    uint64_t ring_min;
    size_t n = ring_collect(l, q, limit, nodes, &ring_min);
    size_t given;
    if (q->oldest_first) {
        /* Disk lines are older than every ring line: they come first. */
        given = db_query(l, q, ring_min, limit, cb, data);
        size_t take = n < limit - given ? n : limit - given;
        given += give(nodes, take, cb, data);
        for (size_t i = take; i < n; i++)
            node_release(nodes[i]);
    } else {
        given = give(nodes, n, cb, data);
        given += db_query(l, q, ring_min, limit - n, cb, data);
    }
    free(nodes);
    return given;
}
