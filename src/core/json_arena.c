/* A per-thread bump arena for jansson's and cJSON's allocations while a request body is parsed. */
#include "core/json_arena.h"

#include "core/mem.h"

#include <cjson/cJSON.h>
#include <jansson.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#define BLOCK_SIZE  (1024 * 1024)
#define KEEP_BLOCKS 8 /* kept across resets: a 1-2 MB body parses without touching malloc */
#define ALIGN       16

typedef struct block_s {
    char *data;
    size_t size;
    bool big; /* one allocation's own block, never filled further */
} block_t;

/*
 * blocks[0..nblocks) are filled in order (cur, used), skipping big ones; each reset frees
 * the big blocks and all but KEEP_BLOCKS of the others.
 */
typedef struct json_arena_s {
    block_t *blocks;
    size_t nblocks, cap, cur, used;
    bool active;
} json_arena_t;

static __thread json_arena_t arena;
static bool installed;
static pthread_key_t exit_key; /* frees a thread's blocks when it exits */

static bool in_arena(const void *p)
{
    for (size_t i = 0; i < arena.nblocks; i++) {
        const block_t *b = &arena.blocks[i];
        if ((const char *)p >= b->data && (const char *)p < b->data + b->size) return true;
    }
    return false;
}

static block_t *block_add(size_t size, bool big)
{
    if (!arena.blocks) pthread_setspecific(exit_key, &arena);
    if (arena.nblocks == arena.cap) {
        arena.cap = arena.cap ? arena.cap * 2 : 16;
        arena.blocks = tr_realloc(arena.blocks, arena.cap * sizeof(*arena.blocks));
    }
    block_t *b = &arena.blocks[arena.nblocks++];
    b->data = tr_malloc(size);
    b->size = size;
    b->big = big;
    return b;
}

static void *bump(size_t n)
{
    n = (n + ALIGN - 1) & ~(size_t)(ALIGN - 1);
    if (n > BLOCK_SIZE / 4) return block_add(n, true)->data;
    while (arena.cur < arena.nblocks &&
           (arena.blocks[arena.cur].big || arena.used + n > BLOCK_SIZE)) {
        arena.cur++;
        arena.used = 0;
    }
    if (arena.cur == arena.nblocks) block_add(BLOCK_SIZE, false);
    void *p = arena.blocks[arena.cur].data + arena.used;
    arena.used += n;
    return p;
}

static void *arena_malloc(size_t n)
{
    return arena.active ? bump(n) : malloc(n);
}

static void arena_free(void *p)
{
    if (p && !in_arena(p)) free(p);
}

json_t *tr_json_arena_loadb(const char *buf, size_t len, json_error_t *err)
{
    arena.active = true;
    json_t *doc = json_loadb(buf, len, 0, err);
    arena.active = false;
    return doc;
}

cJSON *tr_json_arena_parse(const char *buf, size_t len, size_t *err_offset)
{
    const char *end = NULL;
    arena.active = true;
    cJSON *doc = cJSON_ParseWithLengthOpts(buf, len, &end, false);
    arena.active = false;
    if (!end) end = buf;
    while (doc && end < buf + len && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
        end++;
    if (doc && end < buf + len) doc = NULL; /* something after the value */
    if (!doc) *err_offset = (size_t)(end - buf);
    return doc;
}

void tr_json_arena_reset(void)
{
    size_t kept = 0;
    arena.active = false;
    for (size_t i = 0; i < arena.nblocks; i++) {
        block_t *b = &arena.blocks[i];
        if (!b->big && kept < KEEP_BLOCKS)
            arena.blocks[kept++] = *b;
        else
            free(b->data);
    }
    arena.nblocks = kept;
    arena.cur = arena.used = 0;
}

bool tr_json_arena_installed(void)
{
    return installed;
}

static void on_thread_exit(void *unused)
{
    tr_json_arena_reset();
    for (size_t i = 0; i < arena.nblocks; i++)
        free(arena.blocks[i].data);
    tr_free(&arena.blocks);
    arena.nblocks = arena.cap = 0;
}

/* Installed before main so every jansson and cJSON allocation of the process sees the same pair. */
__attribute__((constructor)) static void install(void)
{
    pthread_key_create(&exit_key, on_thread_exit);
    json_set_alloc_funcs(arena_malloc, arena_free);
    cJSON_Hooks hooks = {.malloc_fn = arena_malloc, .free_fn = arena_free};
    cJSON_InitHooks(&hooks);
    installed = true;
}
