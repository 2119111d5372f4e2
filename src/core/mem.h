/* Allocation wrappers: tr_malloc aborts on out-of-memory, tr_try_malloc does not. */
#ifndef TR_CORE_MEM_H
#define TR_CORE_MEM_H

#include <stddef.h>

void *tr_malloc(size_t n);
void *tr_calloc(size_t count, size_t n);
void *tr_realloc(void *p, size_t n);
char *tr_strdup(const char *s);
char *tr_strndup(const char *s, size_t n);
/* For sizes a remote peer controls: returns NULL instead of aborting. */
void *tr_try_malloc(size_t n);

/* Frees *pp and sets it to NULL; `pp` is evaluated once. */
#define tr_free(pp)                                                                                \
    do {                                                                                           \
        __typeof__(pp) tr__pp = (pp);                                                              \
        free(*tr__pp);                                                                             \
        *tr__pp = NULL;                                                                            \
    } while (0)

#endif
