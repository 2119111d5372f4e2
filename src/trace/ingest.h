/* Decoding span batches (OTLP/HTTP JSON, Zipkin v2 JSON) into the collector's stored spans. */
#ifndef TR_TRACE_INGEST_H
#define TR_TRACE_INGEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * A span as the collector keeps it: one allocation holding the fixed fields and, after
 * them, the strings. `detail` is the JSON object text of everything the query API serves
 * beyond the indexed fields (attributes, events, resource, scope, endpoints).
 */
typedef struct tr_cspan_s {
    uint8_t trace_id[16];
    uint8_t span_id[8];
    uint8_t parent_id[8]; /* all zero for none */
    uint64_t start_ns, end_ns;
    uint64_t recv_ms; /* when the collector accepted it (retention is by arrival) */
    uint8_t kind;     /* tr_span_kind_t */
    uint8_t status;   /* tr_span_status_t */
    bool error;       /* status ERROR or a Zipkin `error` tag */
    uint16_t slab;    /* where its memory came from (cspan.c); set by tr__cspan_new */
    const char *service, *name, *correlation_id, *status_message, *detail; /* never NULL */
} tr_cspan_t;

/*
 * Makes a span whose strings are copied into the same allocation (NULL reads as "").
 * Free it with tr__cspan_free(). Aborts on out-of-memory.
 */
tr_cspan_t *tr__cspan_new(const tr_cspan_t *fields, const char *service, const char *name,
                          const char *correlation_id, const char *status_message,
                          const char *detail);
/* Frees a span made by tr__cspan_new; NULL is fine. */
void tr__cspan_free(tr_cspan_t *s);

/* The spans of one request, in arrival order; the batch owns them. */
typedef struct tr_span_batch_s {
    tr_cspan_t **spans;
    size_t n, cap;
    size_t rejected;   /* spans that failed validation (not in `spans`) */
    char message[256]; /* why the first one was rejected; "" when none */
} tr_span_batch_t;

void tr__span_batch_add(tr_span_batch_t *b, tr_cspan_t *s);
/* Counts a rejected span; the first message is kept. */
void tr__span_batch_reject(tr_span_batch_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Frees every span still in the batch and the array (the batch can be reused). */
void tr__span_batch_free(tr_span_batch_t *b);

/* Hex ids: decodes exactly 2*n hex digits of either case; false otherwise. */
bool tr__hex_decode(const char *hex, size_t len, uint8_t *out, size_t n);
/* Lower-case hex of n bytes into out (2n+1 bytes). */
void tr__hex_encode(const uint8_t *in, size_t n, char *out);
bool tr__id_is_zero(const uint8_t *id, size_t n);

/*
 * Decodes an OTLP ExportTraceServiceRequest in JSON. Returns 0 and fills `out` (spans that
 * passed validation; rejected ones counted with a reason), or TR_EPARSE with a message in
 * `err` when the document itself is not such a request (then `out` is empty).
 */
int tr_ingest_otlp(const char *body, size_t len, uint64_t now_ms, tr_span_batch_t *out, char *err,
                   size_t errlen);

/*
 * Decodes a Zipkin v2 JSON span list. Zipkin accepts or rejects a batch as a whole, so any
 * invalid span fails the call: TR_EPARSE with the reason in `err` and `out` empty.
 */
int tr_ingest_zipkin(const char *body, size_t len, uint64_t now_ms, tr_span_batch_t *out, char *err,
                     size_t errlen);

#endif
