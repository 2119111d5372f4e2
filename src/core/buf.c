/* Growable byte buffer. */
#include "core/buf.h"

#include "core/mem.h"

#include <stdio.h>
#include <stdlib.h>

void tr__buf_grow(tr_buf_t *b, size_t extra)
{
    if (b->cap - b->len > extra) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len <= extra)
        cap *= 2;
    b->data = tr_realloc(b->data, cap);
    b->cap = cap;
}

void tr_buf_vprintf(tr_buf_t *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    tr_buf_reserve(b, 64);
    int n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
    if (n >= 0 && (size_t)n >= b->cap - b->len) {
        tr_buf_reserve(b, (size_t)n + 1);
        n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap2);
    }
    va_end(ap2);
    if (n > 0) b->len += (size_t)n;
}

void tr_buf_printf(tr_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    tr_buf_vprintf(b, fmt, ap);
    va_end(ap);
}

void tr_buf_append_u64(tr_buf_t *b, unsigned long long v)
{
    char tmp[24];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    tr_buf_append(b, tmp + i, sizeof(tmp) - i);
}

void tr_buf_consume(tr_buf_t *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

const char *tr_buf_cstr(tr_buf_t *b)
{
    tr_buf_reserve(b, 1);
    b->data[b->len] = '\0';
    return b->data;
}

void tr_buf_free(tr_buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}
