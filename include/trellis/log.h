/* Structured logging: JSON lines for machines, aligned text for people on a TTY. */
#ifndef TRELLIS_LOG_H
#define TRELLIS_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Levels in increasing severity: X(ENUM_SUFFIX, lowercase name, fixed-width text label). */
#define TR_LOG_LEVEL_MAP(X)                                                                        \
    X(DEBUG, "debug", "DEBUG")                                                                     \
    X(INFO, "info", "INFO ")                                                                       \
    X(WARN, "warn", "WARN ")                                                                       \
    X(ERROR, "error", "ERROR")

typedef enum tr_log_level_e {
#define TR_LOG_LEVEL_ENUM(name, str, label) TR_LOG_##name,
    TR_LOG_LEVEL_MAP(TR_LOG_LEVEL_ENUM)
#undef TR_LOG_LEVEL_ENUM
} tr_log_level_t;

typedef enum tr_log_format_e {
    TR_LOG_FORMAT_AUTO = 0, /* text when the fd is a TTY, JSON otherwise */
    TR_LOG_FORMAT_JSON,
    TR_LOG_FORMAT_TEXT,
} tr_log_format_t;

typedef enum tr_log_field_type_e {
    TR_LOG_FIELD_NONE = 0, /* placeholder used by the macros; never printed */
    TR_LOG_FIELD_STR,
    TR_LOG_FIELD_INT,
    TR_LOG_FIELD_UINT,
    TR_LOG_FIELD_DOUBLE,
    TR_LOG_FIELD_BOOL,
    TR_LOG_FIELD_ERR, /* prints "error" (symbolic name) and "error_message" */
} tr_log_field_type_t;

/* One key/value of a log line. Strings are borrowed for the duration of the call only. */
typedef struct tr_log_field_s {
    const char *key;
    tr_log_field_type_t type;
    union {
        const char *s;
        int64_t i;
        uint64_t u;
        double d;
        bool b;
    } v;
} tr_log_field_t;

#define TR_LOG_STR(k, val)  ((tr_log_field_t){.key = (k), .type = TR_LOG_FIELD_STR, .v.s = (val)})
#define TR_LOG_INT(k, val)  ((tr_log_field_t){.key = (k), .type = TR_LOG_FIELD_INT, .v.i = (val)})
#define TR_LOG_UINT(k, val) ((tr_log_field_t){.key = (k), .type = TR_LOG_FIELD_UINT, .v.u = (val)})
#define TR_LOG_DOUBLE(k, val)                                                                      \
    ((tr_log_field_t){.key = (k), .type = TR_LOG_FIELD_DOUBLE, .v.d = (val)})
#define TR_LOG_BOOL(k, val) ((tr_log_field_t){.key = (k), .type = TR_LOG_FIELD_BOOL, .v.b = (val)})
/* An error code (trellis or libuv): adds "error":"TR_ECONFIG","error_message":"...". */
#define TR_LOG_ERR(err) ((tr_log_field_t){.key = "error", .type = TR_LOG_FIELD_ERR, .v.i = (err)})

typedef struct tr_log_options_s {
    tr_log_level_t level;   /* lines below this level are skipped */
    tr_log_format_t format; /* auto, json or text */
    int fd;                 /* where lines go; 0 or less means 2 (stderr) */
    const char *service;    /* added as "service" to every line when not NULL; copied */
} tr_log_options_t;

#define TR_LOG_OPTIONS_INIT                                                                        \
    {                                                                                              \
        TR_LOG_INFO, TR_LOG_FORMAT_AUTO, 2, NULL                                                   \
    }

/* What a sink receives for each line; every pointer is valid only during the callback. */
typedef struct tr_log_record_s {
    tr_log_level_t level;
    int64_t ts_ms;    /* Unix time in milliseconds */
    const char *msg;  /* may be NULL */
    const char *json; /* the line as one JSON object, NUL-terminated, no newline */
    size_t json_len;
    const tr_log_field_t *fields;
    size_t nfields;
    const char *correlation_id; /* NULL when the thread has no context */
    const char *trace_id;
} tr_log_record_t;

typedef void (*tr_log_sink_cb)(const tr_log_record_t *record, void *data);

/*
 * Configures the process-wide logger. `opts` may be NULL for TR_LOG_OPTIONS_INIT. Call it
 * before other threads log: only the level may change while threads are logging (see
 * tr_log_set_level). Returns 0, or TR_ECONFIG for an unknown level or format.
 */
int tr_log_init(const tr_log_options_t *opts);

/* Frees the logger's copy of the service name and the calling thread's line buffers. */
void tr_log_shutdown(void);

/* Changes the minimum level; safe at any time from any thread. */
void tr_log_set_level(tr_log_level_t level);
tr_log_level_t tr_log_get_level(void);

/* Parses "debug", "info", "warn" (or "warning"), "error", any case. Returns the level, or
 * TR_ECONFIG (negative) when `name` is NULL or unknown. */
int tr_log_level_parse(const char *name);
/* Parses "auto", "json", "text". Returns the format, or TR_ECONFIG (negative). */
int tr_log_format_parse(const char *name);
/* Lowercase name of a level ("warn"); "unknown" for values outside the enum. */
const char *tr_log_level_name(tr_log_level_t level);

/*
 * Sets the calling thread's request context; every line this thread writes until
 * tr_log_context_clear() carries "correlation_id" and "trace_id" (either may be NULL to
 * leave it out). The strings are borrowed: they must stay valid until the context is
 * cleared or replaced.
 */
void tr_log_context_set(const char *correlation_id, const char *trace_id);
void tr_log_context_clear(void);
/* The calling thread's current context (NULLs when none), e.g. to restore it later. */
void tr_log_context_get(const char **correlation_id, const char **trace_id);

/*
 * Installs a sink that receives every line written, after it has been written to the fd
 * (cb NULL removes it). The sink runs on the logging thread; lines it logs itself go to
 * the fd but not back to the sink. Install or remove it while no other thread logs.
 */
void tr_log_set_sink(tr_log_sink_cb cb, void *data);

/* Lines that could not be written (fd full or closed) since start. */
uint64_t tr_log_dropped(void);

/*
 * Formats and writes one line if `level` is enabled. `fields` (nfields entries, may be
 * NULL when 0) and `msg` are borrowed. Prefer the tr_log_<level> macros.
 */
void tr_log_write(tr_log_level_t level, const char *msg, const tr_log_field_t *fields,
                  size_t nfields);

/* Internal: the minimum level, read by tr_log_enabled without a function call. */
extern int tr__log_min_level;

/* True when lines at `level` are written; one relaxed load. */
static inline bool tr_log_enabled(tr_log_level_t level)
{
    return (int)level >= __atomic_load_n(&tr__log_min_level, __ATOMIC_RELAXED);
}

/*
 * tr_log_info("listening", TR_LOG_STR("addr", addr), TR_LOG_INT("workers", n));
 * The level is checked first, so field expressions are not evaluated when it is disabled.
 * The trailing empty argument keeps a call with no fields valid ISO C; the leading
 * placeholder keeps the array non-empty.
 */
#define tr_log(level, ...) TR__LOG_AT((level), __VA_ARGS__, )
#define TR__LOG_AT(level, msg, ...)                                                                \
    do {                                                                                           \
        if (tr_log_enabled(level)) {                                                               \
            const tr_log_field_t tr__log_fields[] = {                                              \
                (tr_log_field_t){.key = NULL, .type = TR_LOG_FIELD_NONE}, __VA_ARGS__};            \
            tr_log_write((level), (msg), tr__log_fields + 1,                                       \
                         sizeof(tr__log_fields) / sizeof(tr__log_fields[0]) - 1);                  \
        }                                                                                          \
    } while (0)

#define tr_log_debug(...) tr_log(TR_LOG_DEBUG, __VA_ARGS__)
#define tr_log_info(...)  tr_log(TR_LOG_INFO, __VA_ARGS__)
#define tr_log_warn(...)  tr_log(TR_LOG_WARN, __VA_ARGS__)
#define tr_log_error(...) tr_log(TR_LOG_ERROR, __VA_ARGS__)

#endif
