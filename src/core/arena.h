/* Region allocator: request-, message- and step-scoped memory freed in one go. */
#ifndef TR_CORE_ARENA_H
#define TR_CORE_ARENA_H

#include <stddef.h>

typedef void (*tr_arena_cleanup_cb)(void *data);

typedef struct tr_arena_block_s tr_arena_block_t;
typedef struct tr_arena_cleanup_s tr_arena_cleanup_t;

typedef struct tr_arena_s {
    tr_arena_block_t *head;       /* current block */
    tr_arena_block_t *first;      /* caller-provided first block, kept across resets */
    tr_arena_cleanup_t *cleanups; /* run in reverse order of registration on reset */
    size_t block_size;
} tr_arena_t;

/*
 * Initialises an arena. `storage` (may be NULL) is a caller-owned first block of
 * `storage_len` bytes that the arena uses before it mallocs; it is never freed here.
 */
void tr_arena_init(tr_arena_t *a, void *storage, size_t storage_len);
/* Returns 16-byte aligned memory valid until the next reset; aborts on out-of-memory. */
void *tr_arena_alloc(tr_arena_t *a, size_t n);
void *tr_arena_calloc(tr_arena_t *a, size_t n);
char *tr_arena_strndup(tr_arena_t *a, const char *s, size_t n);
char *tr_arena_strdup(tr_arena_t *a, const char *s);
char *tr_arena_printf(tr_arena_t *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/*
 * Grows the most recent allocation `p` (of `old` bytes) to `new_len` bytes in place when
 * it is the last one in its block, else copies. Returns the (possibly moved) pointer.
 */
void *tr_arena_grow(tr_arena_t *a, void *p, size_t old, size_t new_len);
/* Registers cb(data) to run at the next reset (for fds, statements, TLS objects). */
void tr_arena_on_reset(tr_arena_t *a, tr_arena_cleanup_cb cb, void *data);
/* Runs cleanups, frees every malloc'd block, and keeps the caller's first block. */
void tr_arena_reset(tr_arena_t *a);
/* Same as reset; the arena may be initialised again. */
void tr_arena_destroy(tr_arena_t *a);

#endif
