/* The collector's stored span, span batches and hex ids shared by the decoders and the store. */
#include "trace/ingest.h"

#include "core/mem.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/*
 * Span memory. The store holds up to a million spans, and on a growing heap the first touch
 * of each fresh page (a fault every dozen spans) cost more than the rest of malloc. Spans
 * come instead from 2 MiB chunks mapped already populated, carved in 16-byte size classes
 * with a free list each: a freed span's block serves a later span of its class, and chunks
 * stay for the life of the process. Sanitizer builds use malloc, so ASan sees every span.
 */
#if defined(__SANITIZE_ADDRESS__)
#define SLAB_ON 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SLAB_ON 0
#endif
#endif
#ifndef SLAB_ON
#define SLAB_ON 1
#endif

#define SLAB_CHUNK   (2u << 20)
#define SLAB_GRAIN   16
#define SLAB_MAX     4096 /* larger spans come from malloc */
#define SLAB_CLASSES (SLAB_MAX / SLAB_GRAIN)

typedef struct slab_block_s {
    struct slab_block_s *next;
} slab_block_t;

static struct {
    pthread_mutex_t lock; /* decoders may run on several loops */
    slab_block_t *free[SLAB_CLASSES + 1];
    char *chunk;
    size_t used;
} slab = {.lock = PTHREAD_MUTEX_INITIALIZER, .used = SLAB_CHUNK};

/* A block of at least n bytes; *cls is its size class, 0 when it came from malloc. */
static void *slab_alloc(size_t n, uint16_t *cls)
{
    size_t c = (n + SLAB_GRAIN - 1) / SLAB_GRAIN, size = c * SLAB_GRAIN;
    void *p = NULL;
    *cls = 0;
    if (!SLAB_ON || n > SLAB_MAX) return tr_malloc(n);
    pthread_mutex_lock(&slab.lock);
    if (slab.free[c]) {
        p = slab.free[c];
        slab.free[c] = slab.free[c]->next;
    } else {
        if (slab.used + size > SLAB_CHUNK) {
            void *m = mmap(NULL, SLAB_CHUNK, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
            if (m != MAP_FAILED) {
                slab.chunk = m;
                slab.used = 0;
            }
        }
        if (slab.used + size <= SLAB_CHUNK) {
            p = slab.chunk + slab.used;
            slab.used += size;
        }
    }
    pthread_mutex_unlock(&slab.lock);
    if (!p) return tr_malloc(n); /* no chunk could be mapped: malloc aborts if it fails too */
    *cls = (uint16_t)c;
    return p;
}

void tr__cspan_free(tr_cspan_t *s)
{
    if (!s) return;
    if (!s->slab) {
        free(s);
        return;
    }
    slab_block_t *b = (slab_block_t *)s;
    pthread_mutex_lock(&slab.lock);
    b->next = slab.free[s->slab];
    slab.free[s->slab] = b;
    pthread_mutex_unlock(&slab.lock);
}

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
    uint16_t cls;
    tr_cspan_t *s = slab_alloc(total, &cls);
    *s = *fields;
    s->slab = cls;
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
        tr__cspan_free(b->spans[i]);
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
