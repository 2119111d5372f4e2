/* The trace collector's HTTP surface: OTLP and Zipkin ingest, and the query API. */
#ifndef TR_TRACE_COLLECTOR_H
#define TR_TRACE_COLLECTOR_H

#include "trace/tracestore.h"
#include "trellis/http.h"

#include <stdint.h>
#include <uv.h>

/* Largest request body the ingest endpoints take (8 MiB → 413 beyond). */
#define TR_COLLECTOR_MAX_BODY (8u << 20)

typedef struct tr_collector_s tr_collector_t;

typedef struct tr_collector_options_s {
    const char *data_dir;  /* traces.db lives here; NULL → memory only */
    size_t max_spans;      /* in memory; 0 → 1,000,000 */
    uint64_t retention_ms; /* by arrival; 0 → keep */
    uint64_t max_db_bytes; /* 0 → no size limit */
    uint64_t sweep_ms;     /* retention timer; 0 → retention/10 within [200 ms, 60 s] */
} tr_collector_options_t;

/* Opens the store under data_dir (created if missing) and starts the retention timer. */
int tr_collector_open(uv_loop_t *loop, const tr_collector_options_t *opts, tr_collector_t **out,
                      char *err, size_t errlen);
/* The HTTP handler (`data` is the collector): every route on whichever listener. */
void tr_collector_handle(tr_http_req_t *req, void *data);
/* Stops the timer and frees everything once its handle closed (runs the loop to finish). */
void tr_collector_close(tr_collector_t *c);
tr_tracestore_t *tr_collector_store(tr_collector_t *c);

#endif
