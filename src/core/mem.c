/* Allocation wrappers that turn out-of-memory into a clear abort. */
#include "core/mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void oom(size_t n)
{
    fprintf(stderr, "trellis: out of memory allocating %zu bytes\n", n);
    abort();
}

void *tr_malloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) oom(n);
    return p;
}

void *tr_calloc(size_t count, size_t n)
{
    void *p = calloc(count ? count : 1, n ? n : 1);
    if (!p) oom(count * n);
    return p;
}

void *tr_realloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) oom(n);
    return q;
}

char *tr_strdup(const char *s)
{
    return tr_strndup(s, strlen(s));
}

char *tr_strndup(const char *s, size_t n)
{
    char *d = tr_malloc(n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

void *tr_try_malloc(size_t n)
{
    return malloc(n ? n : 1);
}
