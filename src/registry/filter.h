/* Consul's ?filter= expressions (go-bexpr syntax): compiled once, matched per result entry. */
#ifndef TR_REGISTRY_FILTER_H
#define TR_REGISTRY_FILTER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#define TR_FILTER_MAX_LEN   4096 /* bytes of expression text */
#define TR_FILTER_MAX_DEPTH 32   /* nested parentheses and 'not's */

typedef struct tr_filter_s tr_filter_t;

/*
 * Compiles `expr` (borrowed; not kept). Returns a filter the caller owns and frees with
 * tr_filter_free(). On a bad expression returns NULL and writes into err (errlen bytes,
 * always NUL-terminated when errlen > 0) a message with the 1-based column that says what to
 * fix, such as "filter: column 14: expected a value after '==', found end of input". An
 * empty expression is an error: callers treat an absent or empty ?filter= as no filter.
 */
tr_filter_t *tr_filter_compile(const char *expr, char *err, size_t errlen);

/*
 * True when `obj` (borrowed) matches. Selectors that name no field match nothing: ==,
 * contains, in and matches are false, their negations and 'is empty' are true.
 */
bool tr_filter_match(const tr_filter_t *f, const json_t *obj);

/* Frees a compiled filter; NULL is allowed. */
void tr_filter_free(tr_filter_t *f);

#endif
