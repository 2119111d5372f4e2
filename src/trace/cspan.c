/* The collector's stored span, span batches and hex ids shared by the decoders and the store. */
#include "trace/ingest.h"

#include "core/mem.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

tr_cspan_t *tr__cspan_new(const tr_cspan_t *fields, const char *service, const char *name,
                          const char *correlation_id, const char *status_message,
                          const char *detail)
{
    const char *strs[5] = {service, name, correlation_id, status_message, detail};
    size_t lens[5], total = sizeof(tr_cspan_t);
    for (int i = 0; i < 5; i++) {
        if (!strs[i]) strs[i] = "";
        lens[i] = strlen(strs[i]) + 1;
        total += lens[i];
    }
    tr_cspan_t *s = tr_malloc(total);
    *s = *fields;
    char *p = (char *)(s + 1);
    const char **dst[5] = {&s->service, &s->name, &s->correlation_id, &s->status_message,
                           &s->detail};
    for (int i = 0; i < 5; i++) {
        memcpy(p, strs[i], lens[i]);
        *dst[i] = p;
        p += lens[i];
    }
    return s;
}

void tr__span_batch_add(tr_span_batch_t *b, tr_cspan_t *s)
{
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 64;
        b->spans = tr_realloc(b->spans, b->cap * sizeof(*b->spans));
    }
    b->spans[b->n++] = s;
}

void tr__span_batch_reject(tr_span_batch_t *b, const char *fmt, ...)
{
    if (b->rejected++ == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(b->message, sizeof(b->message), fmt, ap);
        va_end(ap);
    }
}

void tr__span_batch_free(tr_span_batch_t *b)
{
    for (size_t i = 0; i < b->n; i++)
        free(b->spans[i]);
    tr_free(&b->spans);
    b->n = b->cap = b->rejected = 0;
    b->message[0] = '\0';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

bool tr__hex_decode(const char *hex, size_t len, uint8_t *out, size_t n)
{
    if (len != 2 * n) return false;
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) return false;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return true;
}

void tr__hex_encode(const uint8_t *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

bool tr__id_is_zero(const uint8_t *id, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (id[i]) return false;
    return true;
}
