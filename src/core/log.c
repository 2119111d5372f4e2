/* Structured logger: one JSON or text line per record, built per thread, one write each. */
#include "trellis/log.h"

#include "core/buf.h"
#include "core/mem.h"
#include "trellis/error.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

int tr__log_min_level = TR_LOG_INFO;

/* Settings written by tr_log_init before threads log, then only read. */
static struct {
    tr_log_format_t format; /* resolved: never AUTO */
    int fd;
    bool colour;
    char *service;
} g_log = {TR_LOG_FORMAT_JSON, 2, false, NULL};

static tr_log_sink_cb g_sink;
static void *g_sink_data;
static uint64_t g_dropped;

/* Per-thread state: the line buffers are reused so a line costs no allocation. */
typedef struct log_thread_s {
    tr_buf_t json;
    tr_buf_t text;
    int depth;      /* > 0 while this thread is inside tr_log_write (a sink logging) */
    bool keyed;     /* registered with the key so the buffers are freed at thread exit */
    time_t ts_sec;  /* second the cached timestamp prefixes were built for */
    char utc[24];   /* "2026-11-22T10:00:00" */
    char local[12]; /* "10:00:00" */
} log_thread_t;

static __thread log_thread_t tl_log;
static __thread const char *tl_correlation_id;
static __thread const char *tl_trace_id;

static pthread_once_t g_key_once = PTHREAD_ONCE_INIT;
static pthread_key_t g_key;

/* Buffers that grew for one huge line are released rather than kept for the thread's life. */
#define LOG_BUF_KEEP (64 * 1024)

static const char *const level_names[] = {
#define LEVEL_NAME(name, str, label) str,
    TR_LOG_LEVEL_MAP(LEVEL_NAME)
#undef LEVEL_NAME
};

static const char *const level_labels[] = {
#define LEVEL_LABEL(name, str, label) label,
    TR_LOG_LEVEL_MAP(LEVEL_LABEL)
#undef LEVEL_LABEL
};

#define LEVEL_COUNT (sizeof(level_names) / sizeof(level_names[0]))

/* ANSI colours per level: grey, green, yellow, red. */
static const char *const level_colours[] = {"\x1b[90m", "\x1b[32m", "\x1b[33m", "\x1b[31m"};

static void free_thread_buffers(log_thread_t *t)
{
    tr_buf_free(&t->json);
    tr_buf_free(&t->text);
}

static void on_thread_exit(void *p)
{
    log_thread_t *t = p;
    free_thread_buffers(t);
    t->keyed = false; /* a later destructor that logs registers again and is freed again */
}

static void make_key(void)
{
    pthread_key_create(&g_key, on_thread_exit);
}

static log_thread_t *thread_state(void)
{
    log_thread_t *t = &tl_log;
    if (!t->keyed) {
        pthread_once(&g_key_once, make_key);
        pthread_setspecific(g_key, t);
        t->keyed = true;
    }
    return t;
}

/* ---- options ---------------------------------------------------------------------------- */

static bool no_color_env(void)
{
    const char *v = getenv("NO_COLOR");
    return v != NULL && v[0] != '\0'; /* https://no-color.org: present and non-empty */
}

int tr_log_init(const tr_log_options_t *opts)
{
    tr_log_options_t def = TR_LOG_OPTIONS_INIT;
    if (!opts) opts = &def;
    if ((unsigned)opts->level >= LEVEL_COUNT || (unsigned)opts->format > TR_LOG_FORMAT_TEXT)
        return TR_ECONFIG;
    int fd = opts->fd > 0 ? opts->fd : 2;
    bool tty = isatty(fd) == 1;
    g_log.fd = fd;
    g_log.format = opts->format;
    if (g_log.format == TR_LOG_FORMAT_AUTO)
        g_log.format = tty ? TR_LOG_FORMAT_TEXT : TR_LOG_FORMAT_JSON;
    g_log.colour = g_log.format == TR_LOG_FORMAT_TEXT && tty && !no_color_env();
    tr_free(&g_log.service);
    if (opts->service) g_log.service = tr_strdup(opts->service);
    tr_log_set_level(opts->level);
    return 0;
}

void tr_log_shutdown(void)
{
    tr_free(&g_log.service);
    free_thread_buffers(&tl_log);
}

void tr_log_set_level(tr_log_level_t level)
{
    __atomic_store_n(&tr__log_min_level, (int)level, __ATOMIC_RELAXED);
}

tr_log_level_t tr_log_get_level(void)
{
    return (tr_log_level_t)__atomic_load_n(&tr__log_min_level, __ATOMIC_RELAXED);
}

int tr_log_level_parse(const char *name)
{
    if (!name) return TR_ECONFIG;
    for (size_t i = 0; i < LEVEL_COUNT; i++)
        if (strcasecmp(name, level_names[i]) == 0) return (int)i;
    if (strcasecmp(name, "warning") == 0) return TR_LOG_WARN;
    return TR_ECONFIG;
}

int tr_log_format_parse(const char *name)
{
    static const char *const names[] = {"auto", "json", "text"};
    if (!name) return TR_ECONFIG;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcasecmp(name, names[i]) == 0) return (int)i;
    return TR_ECONFIG;
}

const char *tr_log_level_name(tr_log_level_t level)
{
    return (unsigned)level < LEVEL_COUNT ? level_names[level] : "unknown";
}

void tr_log_context_set(const char *correlation_id, const char *trace_id)
{
    tl_correlation_id = correlation_id;
    tl_trace_id = trace_id;
}

void tr_log_context_get(const char **correlation_id, const char **trace_id)
{
    *correlation_id = tl_correlation_id;
    *trace_id = tl_trace_id;
}

void tr_log_context_clear(void)
{
    tl_correlation_id = NULL;
    tl_trace_id = NULL;
}

void tr_log_set_sink(tr_log_sink_cb cb, void *data)
{
    /* Data first, released by the store of cb, so a reader that sees cb sees its data. */
    __atomic_store_n(&g_sink_data, data, __ATOMIC_RELAXED);
    __atomic_store_n(&g_sink, cb, __ATOMIC_RELEASE);
}

uint64_t tr_log_dropped(void)
{
    return __atomic_load_n(&g_dropped, __ATOMIC_RELAXED);
}

/* ---- escaping --------------------------------------------------------------------------- */

/*
 * Length of the valid UTF-8 sequence at s (at most n bytes), or 0 when it is invalid
 * (overlong, surrogate, above U+10FFFF, truncated), so the caller can replace one byte.
 */
static size_t utf8_seq_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    unsigned min;
    unsigned cp;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2, min = 0x80, cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3, min = 0x800, cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4, min = 0x10000, cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return len;
}

/* Appends the escape for an ASCII byte that JSON requires escaping, else returns false. */
static bool append_ascii_escape(tr_buf_t *b, unsigned char c)
{
    static const char hex[] = "0123456789abcdef";
    switch (c) {
    case '"':
        tr_buf_append(b, "\\\"", 2);
        return true;
    case '\\':
        tr_buf_append(b, "\\\\", 2);
        return true;
    case '\n':
        tr_buf_append(b, "\\n", 2);
        return true;
    case '\r':
        tr_buf_append(b, "\\r", 2);
        return true;
    case '\t':
        tr_buf_append(b, "\\t", 2);
        return true;
    default:
        if (c >= 0x20 && c != 0x7f) return false;
        char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 0xf]};
        tr_buf_append(b, esc, sizeof(esc));
        return true;
    }
}

/*
 * Appends s as the inside of a JSON string: quotes, backslashes and control characters
 * (DEL too, so a terminal never sees raw escapes) are escaped, and each byte of invalid
 * UTF-8 becomes U+FFFD, so the output is always valid JSON and valid UTF-8.
 */
static void append_escaped(tr_buf_t *b, const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t n = strlen(str);
    size_t i = 0;
    while (i < n) {
        size_t run = i;
        while (run < n && s[run] >= 0x20 && s[run] < 0x7f && s[run] != '"' && s[run] != '\\')
            run++;
        tr_buf_append(b, s + i, run - i);
        i = run;
        if (i >= n) break;
        if (s[i] < 0x80) {
            append_ascii_escape(b, s[i]);
            i++;
            continue;
        }
        size_t len = utf8_seq_len(s + i, n - i);
        if (len) {
            tr_buf_append(b, s + i, len);
            i += len;
        } else {
            tr_buf_append(b, "\xef\xbf\xbd", 3);
            i++;
        }
    }
}

static void append_json_string(tr_buf_t *b, const char *s)
{
    if (!s) {
        tr_buf_append(b, "null", 4);
        return;
    }
    tr_buf_append(b, "\"", 1);
    append_escaped(b, s);
    tr_buf_append(b, "\"", 1);
}

/* Shortest "%g" form that reads back as the same double. */
static void append_double(tr_buf_t *b, double d)
{
    char tmp[32];
    snprintf(tmp, sizeof(tmp), "%.15g", d);
    if (strtod(tmp, NULL) != d) snprintf(tmp, sizeof(tmp), "%.17g", d);
    tr_buf_append_str(b, tmp);
}

static void append_int(tr_buf_t *b, int64_t v)
{
    if (v < 0) {
        tr_buf_append(b, "-", 1);
        tr_buf_append_u64(b, (unsigned long long)0 - (unsigned long long)v);
    } else {
        tr_buf_append_u64(b, (unsigned long long)v);
    }
}

/* ---- JSON lines ------------------------------------------------------------------------- */

static void json_key(tr_buf_t *b, const char *key)
{
    tr_buf_append(b, ",", 1);
    append_json_string(b, key ? key : "null");
    tr_buf_append(b, ":", 1);
}

static void json_field(tr_buf_t *b, const tr_log_field_t *f)
{
    if (f->type == TR_LOG_FIELD_NONE) return;
    json_key(b, f->key);
    switch (f->type) {
    case TR_LOG_FIELD_STR:
        append_json_string(b, f->v.s);
        break;
    case TR_LOG_FIELD_INT:
        append_int(b, f->v.i);
        break;
    case TR_LOG_FIELD_UINT:
        tr_buf_append_u64(b, f->v.u);
        break;
    case TR_LOG_FIELD_DOUBLE:
        /* JSON has no NaN or infinity. */
        if (isfinite(f->v.d))
            append_double(b, f->v.d);
        else
            tr_buf_append(b, "null", 4);
        break;
    case TR_LOG_FIELD_BOOL:
        tr_buf_append_str(b, f->v.b ? "true" : "false");
        break;
    case TR_LOG_FIELD_ERR:
        append_json_string(b, tr_err_name((int)f->v.i));
        json_key(b, "error_message");
        append_json_string(b, tr_strerror((int)f->v.i));
        break;
    default:
        tr_buf_append(b, "null", 4);
        break;
    }
}

typedef struct log_line_s {
    tr_log_level_t level;
    const char *msg;
    const tr_log_field_t *fields;
    size_t nfields;
    struct timespec now;
    log_thread_t *t;
} log_line_t;

/* Refreshes the per-second timestamp prefixes, so most lines skip gmtime/localtime. */
static void refresh_time_cache(log_thread_t *t, time_t sec)
{
    if (t->ts_sec == sec && t->utc[0]) return;
    struct tm tm;
    gmtime_r(&sec, &tm);
    strftime(t->utc, sizeof(t->utc), "%Y-%m-%dT%H:%M:%S", &tm);
    localtime_r(&sec, &tm);
    strftime(t->local, sizeof(t->local), "%H:%M:%S", &tm);
    t->ts_sec = sec;
}

static void build_json(tr_buf_t *b, const log_line_t *l)
{
    tr_buf_append_str(b, "{\"ts\":\"");
    tr_buf_append_str(b, l->t->utc);
    tr_buf_printf(b, ".%03ldZ\",\"level\":\"%s\"", l->now.tv_nsec / 1000000, level_names[l->level]);
    if (g_log.service) {
        json_key(b, "service");
        append_json_string(b, g_log.service);
    }
    json_key(b, "msg");
    append_json_string(b, l->msg);
    for (size_t i = 0; i < l->nfields; i++)
        json_field(b, &l->fields[i]);
    if (tl_correlation_id) {
        json_key(b, "correlation_id");
        append_json_string(b, tl_correlation_id);
    }
    if (tl_trace_id) {
        json_key(b, "trace_id");
        append_json_string(b, tl_trace_id);
    }
    tr_buf_append(b, "}", 1);
}

/* ---- text lines ------------------------------------------------------------------------- */

/* logfmt-style values are bare when they are plain printable ASCII without ' ', '"', '='. */
static bool needs_quotes(const char *s)
{
    if (!*s) return true;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p <= ' ' || *p >= 0x7f || *p == '"' || *p == '=' || *p == '\\') return true;
    return false;
}

static void text_key(tr_buf_t *b, const char *key)
{
    tr_buf_append(b, " ", 1);
    if (g_log.colour) tr_buf_append_str(b, "\x1b[2m");
    append_escaped(b, key ? key : "null");
    tr_buf_append(b, "=", 1);
    if (g_log.colour) tr_buf_append_str(b, "\x1b[0m");
}

static void text_str(tr_buf_t *b, const char *s)
{
    if (!s)
        tr_buf_append(b, "null", 4);
    else if (needs_quotes(s))
        append_json_string(b, s);
    else
        tr_buf_append_str(b, s);
}

static void text_field(tr_buf_t *b, const tr_log_field_t *f)
{
    if (f->type == TR_LOG_FIELD_NONE) return;
    text_key(b, f->key);
    switch (f->type) {
    case TR_LOG_FIELD_STR:
        text_str(b, f->v.s);
        break;
    case TR_LOG_FIELD_INT:
        append_int(b, f->v.i);
        break;
    case TR_LOG_FIELD_UINT:
        tr_buf_append_u64(b, f->v.u);
        break;
    case TR_LOG_FIELD_DOUBLE:
        append_double(b, f->v.d);
        break;
    case TR_LOG_FIELD_BOOL:
        tr_buf_append_str(b, f->v.b ? "true" : "false");
        break;
    case TR_LOG_FIELD_ERR:
        text_str(b, tr_err_name((int)f->v.i));
        text_key(b, "error_message");
        text_str(b, tr_strerror((int)f->v.i));
        break;
    default:
        tr_buf_append(b, "null", 4);
        break;
    }
}

static void build_text(tr_buf_t *b, const log_line_t *l)
{
    tr_buf_append_str(b, l->t->local);
    tr_buf_printf(b, ".%03ld ", l->now.tv_nsec / 1000000);
    if (g_log.colour) tr_buf_append_str(b, level_colours[l->level]);
    tr_buf_append_str(b, level_labels[l->level]);
    if (g_log.colour) tr_buf_append_str(b, "\x1b[0m");
    tr_buf_append(b, " ", 1);
    /* The message is escaped but not quoted: a newline in it must not split the line. */
    append_escaped(b, l->msg ? l->msg : "null");
    if (g_log.service) {
        text_key(b, "service");
        text_str(b, g_log.service);
    }
    for (size_t i = 0; i < l->nfields; i++)
        text_field(b, &l->fields[i]);
    if (tl_correlation_id) {
        text_key(b, "correlation_id");
        text_str(b, tl_correlation_id);
    }
    if (tl_trace_id) {
        text_key(b, "trace_id");
        text_str(b, tl_trace_id);
    }
}

/* ---- output ----------------------------------------------------------------------------- */

/*
 * Writes the whole line, normally in one write(2). Retries only after a signal or a
 * partial write; a full non-blocking fd drops the line rather than block a loop thread.
 */
static void write_line(const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = write(g_log.fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            __atomic_fetch_add(&g_dropped, 1, __ATOMIC_RELAXED);
            return;
        }
        p += n;
        len -= (size_t)n;
    }
}

static void emit(tr_buf_t *b)
{
    tr_buf_append(b, "\n", 1);
    write_line(b->data, b->len);
    b->len--;
    b->data[b->len] = '\0'; /* the sink gets the JSON as a C string without the newline */
}

static void call_sink(tr_log_sink_cb sink, const log_line_t *l, tr_buf_t *json)
{
    tr_log_record_t rec = {
        .level = l->level,
        .ts_ms = (int64_t)l->now.tv_sec * 1000 + l->now.tv_nsec / 1000000,
        .msg = l->msg,
        .json = json->data,
        .json_len = json->len,
        .fields = l->fields,
        .nfields = l->nfields,
        .correlation_id = tl_correlation_id,
        .trace_id = tl_trace_id,
    };
    sink(&rec, __atomic_load_n(&g_sink_data, __ATOMIC_RELAXED));
}

static void shrink(tr_buf_t *b)
{
    if (b->cap > LOG_BUF_KEEP)
        tr_buf_free(b);
    else
        tr_buf_reset(b);
}

/* Formats into the given buffers (the thread's own, or fresh ones when nested). */
static void write_record(log_line_t *l, tr_buf_t *json, tr_buf_t *text)
{
    tr_log_sink_cb sink = __atomic_load_n(&g_sink, __ATOMIC_ACQUIRE);
    if (l->t->depth > 1) sink = NULL; /* a sink's own lines do not loop back into it */
    bool want_text = g_log.format == TR_LOG_FORMAT_TEXT;
    tr_buf_reset(json);
    tr_buf_reset(text);
    if (!want_text || sink) build_json(json, l);
    if (want_text) {
        build_text(text, l);
        emit(text);
    } else {
        emit(json);
    }
    if (sink) {
        tr_buf_cstr(json);
        call_sink(sink, l, json);
    }
}

void tr_log_write(tr_log_level_t level, const char *msg, const tr_log_field_t *fields,
                  size_t nfields)
{
    if ((unsigned)level >= LEVEL_COUNT || !tr_log_enabled(level)) return;
    log_thread_t *t = thread_state();
    log_line_t l = {level, msg, fields, fields ? nfields : 0, {0, 0}, t};
    clock_gettime(CLOCK_REALTIME, &l.now);
    refresh_time_cache(t, l.now.tv_sec);
    t->depth++;
    if (t->depth == 1) {
        write_record(&l, &t->json, &t->text);
        shrink(&t->json);
        shrink(&t->text);
    } else {
        /* The thread's buffers hold the line a sink is looking at; use fresh ones. */
        tr_buf_t json = TR_BUF_INIT, text = TR_BUF_INIT;
        write_record(&l, &json, &text);
        tr_buf_free(&json);
        tr_buf_free(&text);
    }
    t->depth--;
}
