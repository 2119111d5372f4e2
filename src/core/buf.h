/* Growable byte buffer for building output (responses, JSON, log lines). */
#ifndef TR_CORE_BUF_H
#define TR_CORE_BUF_H

#include <stdarg.h>
#include <stddef.h>
#include <string.h>

typedef struct tr_buf_s {
    char *data; /* owned; NULL until the first append */
    size_t len;
    size_t cap;
} tr_buf_t;

#define TR_BUF_INIT                                                                                \
    {                                                                                              \
        NULL, 0, 0                                                                                 \
    }

/* Grows the buffer (the slow path of tr_buf_reserve). */
void tr__buf_grow(tr_buf_t *b, size_t extra);

/* Ensures room for `extra` more bytes; aborts on out-of-memory. Inline: encoders append
 * dozens of small pieces per record, and a call per piece showed in profiles. */
static inline void tr_buf_reserve(tr_buf_t *b, size_t extra)
{
    if (b->cap - b->len <= extra) tr__buf_grow(b, extra);
}

static inline void tr_buf_append(tr_buf_t *b, const void *data, size_t len)
{
    if (len == 0) return;
    tr_buf_reserve(b, len);
    memcpy(b->data + b->len, data, len);
    b->len += len;
}
void tr_buf_printf(tr_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void tr_buf_vprintf(tr_buf_t *b, const char *fmt, va_list ap);
/* Appends the decimal form of v. */
void tr_buf_append_u64(tr_buf_t *b, unsigned long long v);
/* Drops the first n bytes, keeping the rest. */
void tr_buf_consume(tr_buf_t *b, size_t n);
/* Returns a NUL-terminated view (the NUL is not counted in len). */
const char *tr_buf_cstr(tr_buf_t *b);
void tr_buf_free(tr_buf_t *b);

static inline void tr_buf_append_str(tr_buf_t *b, const char *s)
{
    tr_buf_append(b, s, strlen(s));
}

static inline void tr_buf_reset(tr_buf_t *b)
{
    b->len = 0;
}

#endif
