/* libFuzzer target: otlp span batch decoding, then indexing the spans in a memory-only trace
 * store (trees, dependency links, pending parents, queries). */
#include "trace/ingest.h"
#include "trace/tracestore.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tr_span_batch_t b;
    memset(&b, 0, sizeof(b));
    char err[256];
    if (tr_ingest_otlp((const char *)data, size, 1, &b, err, sizeof(err)) != 0) return 0;
    tr_tracestore_options_t o = {.max_spans = 64, .max_trace_spans = 16};
    tr_tracestore_t *st;
    if (tr_tracestore_open(&o, &st, err, sizeof(err)) != 0) abort();
    uint8_t ids[8][16];
    size_t nids = 0;
    for (size_t i = 0; i < b.n && nids < 8; i++)
        memcpy(ids[nids++], b.spans[i]->trace_id, 16);
    if (tr_tracestore_append(st, &b, 2) != 0) abort();
    for (size_t i = 0; i < nids; i++) {
        tr_trace_t *t;
        bool owned;
        if (tr_tracestore_find(st, ids[i], &t, &owned) != 0) continue;
        (void)tr_tracestore_root(st, t);
        if (owned) tr_tracestore_trace_free(t);
    }
    tr_trace_query_t q = {.error = -1, .service = "a", .limit = 5};
    tr_trace_t **found;
    (void)tr_tracestore_query(st, &q, &found);
    free(found);
    tr_dep_edge_t *edges;
    (void)tr_deps_edges(tr_tracestore_deps(st), &edges);
    free(edges);
    tr_tracestore_sweep(st, 3);
    tr_tracestore_close(st);
    tr__span_batch_free(&b);
    return 0;
}
