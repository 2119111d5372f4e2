/* The live service dependency graph: parent → child service call and error counts. */
#ifndef TR_TRACE_DEPS_H
#define TR_TRACE_DEPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tr_deps_s tr_deps_t;

typedef struct tr_dep_edge_s {
    const char *parent, *child; /* owned by the graph */
    uint64_t calls, errors;
} tr_dep_edge_t;

/*
 * A graph keeping at most `max_pending` children whose parent span has not arrived yet
 * (oldest forgotten first) and at most `max_edges` distinct edges (later ones are not
 * counted). Aborts on out-of-memory.
 */
tr_deps_t *tr_deps_new(size_t max_pending, size_t max_edges);
void tr_deps_free(tr_deps_t *d);

/* Counts one call parent → child (nothing when they are the same service). */
void tr_deps_link(tr_deps_t *d, const char *parent_service, const char *child_service,
                  bool child_error);
/*
 * Remembers a child whose parent (trace_id, parent_id) is unknown so far. `child_service`
 * is borrowed and must live as long as the graph (the store interns service names).
 */
void tr_deps_pend(tr_deps_t *d, const uint8_t trace_id[16], const uint8_t parent_id[8],
                  const char *child_service, bool child_error);
/* A span arrived: links the pending children it is the parent of. Returns how many. */
size_t tr_deps_resolve(tr_deps_t *d, const uint8_t trace_id[16], const uint8_t span_id[8],
                       const char *service);
/* The edges, sorted by parent then child; `*out` is malloc'd (free it), entries borrowed. */
size_t tr_deps_edges(const tr_deps_t *d, tr_dep_edge_t **out);
size_t tr_deps_pending(const tr_deps_t *d);

#endif
