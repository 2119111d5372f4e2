/* In-process discovery: the registry's answers handed to clients on other threads. */
#include "trellis/discovery_hub.h"

#include <stdlib.h>
#include <string.h>

#include "core/map.h"
#include "core/mem.h"

/* One watched service and its latest answer (none until the registry publishes one). */
typedef struct entry_s {
    char *service;
    bool published;
    uint64_t index;
    char *body;
    size_t len;
} entry_t;

typedef struct sub_s {
    uv_async_t *notify;
    struct sub_s *next;
} sub_t;

/*
 * One mutex guards everything: the hub is touched when a service's passing set changes
 * or a client starts watching, never per request.
 */
struct tr_discovery_hub_s {
    uv_mutex_t lock;
    tr_map_t entries; /* service → entry_t */
    sub_t *subs;
    uv_async_t *want;
};

tr_discovery_hub_t *tr_discovery_hub_new(void)
{
    tr_discovery_hub_t *h = tr_calloc(1, sizeof(*h));
    if (uv_mutex_init(&h->lock) != 0) abort();
    h->entries = (tr_map_t)TR_MAP_INIT;
    return h;
}

void tr_discovery_hub_free(tr_discovery_hub_t *h)
{
    if (!h) return;
    size_t pos = 0;
    void *v;
    while (tr_map_next(&h->entries, &pos, NULL, &v)) {
        entry_t *e = v;
        free(e->service);
        free(e->body);
        free(e);
    }
    tr_map_free(&h->entries);
    while (h->subs) {
        sub_t *s = h->subs;
        h->subs = s->next;
        free(s);
    }
    uv_mutex_destroy(&h->lock);
    free(h);
}

void tr_discovery_hub_provide(tr_discovery_hub_t *h, uv_async_t *want)
{
    uv_mutex_lock(&h->lock);
    h->want = want;
    uv_mutex_unlock(&h->lock);
}

size_t tr_discovery_hub_wanted(tr_discovery_hub_t *h, bool unanswered, char ***names)
{
    uv_mutex_lock(&h->lock);
    char **out = tr_malloc((h->entries.len + 1) * sizeof(*out));
    size_t n = 0, pos = 0;
    void *v;
    while (tr_map_next(&h->entries, &pos, NULL, &v)) {
        entry_t *e = v;
        if (!unanswered || !e->published) out[n++] = tr_strdup(e->service);
    }
    uv_mutex_unlock(&h->lock);
    *names = out;
    return n;
}

bool tr_discovery_hub_watched(tr_discovery_hub_t *h, const char *service)
{
    uv_mutex_lock(&h->lock);
    bool found = tr_map_get(&h->entries, service) != NULL;
    uv_mutex_unlock(&h->lock);
    return found;
}

void tr_discovery_hub_publish(tr_discovery_hub_t *h, const char *service, uint64_t index,
                              const char *body, size_t len)
{
    uv_mutex_lock(&h->lock);
    entry_t *e = tr_map_get(&h->entries, service);
    if (e) {
        char *copy = tr_malloc(len + 1);
        memcpy(copy, body, len);
        copy[len] = '\0';
        free(e->body);
        e->body = copy;
        e->len = len;
        e->index = index;
        e->published = true;
        /* uv_async_send coalesces: a burst of publishes wakes each client once. */
        for (sub_t *s = h->subs; s; s = s->next)
            uv_async_send(s->notify);
    }
    uv_mutex_unlock(&h->lock);
}

void tr_discovery_hub_subscribe(tr_discovery_hub_t *h, uv_async_t *notify)
{
    sub_t *s = tr_malloc(sizeof(*s));
    s->notify = notify;
    uv_mutex_lock(&h->lock);
    s->next = h->subs;
    h->subs = s;
    uv_mutex_unlock(&h->lock);
}

void tr_discovery_hub_unsubscribe(tr_discovery_hub_t *h, uv_async_t *notify)
{
    uv_mutex_lock(&h->lock);
    for (sub_t **p = &h->subs; *p; p = &(*p)->next) {
        if ((*p)->notify == notify) {
            sub_t *s = *p;
            *p = s->next;
            free(s);
            break;
        }
    }
    uv_mutex_unlock(&h->lock);
}

void tr_discovery_hub_want(tr_discovery_hub_t *h, const char *service)
{
    uv_mutex_lock(&h->lock);
    if (!tr_map_get(&h->entries, service)) {
        entry_t *e = tr_calloc(1, sizeof(*e));
        e->service = tr_strdup(service);
        tr_map_put(&h->entries, e->service, e);
        if (h->want) uv_async_send(h->want);
    }
    uv_mutex_unlock(&h->lock);
}

bool tr_discovery_hub_read(tr_discovery_hub_t *h, const char *service, uint64_t *index, char **body,
                           size_t *len)
{
    bool fresh = false;
    uv_mutex_lock(&h->lock);
    entry_t *e = tr_map_get(&h->entries, service);
    if (e && e->published && e->index != *index) {
        *body = tr_malloc(e->len + 1);
        memcpy(*body, e->body, e->len + 1);
        *len = e->len;
        *index = e->index;
        fresh = true;
    }
    uv_mutex_unlock(&h->lock);
    return fresh;
}
