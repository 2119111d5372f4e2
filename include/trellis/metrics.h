/* Counters, gauges and histograms with labels, exposed in Prometheus text format. */
#ifndef TRELLIS_METRICS_H
#define TRELLIS_METRICS_H

#include <stddef.h>
#include <stdint.h>

#define TR_METRIC_TYPE_MAP(X)                                                                      \
    X(COUNTER, "counter")                                                                          \
    X(GAUGE, "gauge")                                                                              \
    X(HISTOGRAM, "histogram")

typedef enum tr_metric_type_e {
#define TR_METRIC_TYPE_ENUM(name, str) TR_METRIC_##name,
    TR_METRIC_TYPE_MAP(TR_METRIC_TYPE_ENUM)
#undef TR_METRIC_TYPE_ENUM
} tr_metric_type_t;

typedef struct tr_metrics_s tr_metrics_t; /* a registry: families in registration order */
typedef struct tr_metric_s tr_metric_t;   /* a family: name, help, type, label names */
typedef struct tr_series_s tr_series_t;   /* one set of label values of a family */
struct tr_buf_s;

/* Callback metrics compute their value at scrape time, under the registry lock. */
typedef double (*tr_metric_fn)(void *data);

/* Bucket upper bounds used when a histogram is registered without any (seconds). */
#define TR_METRICS_DEFAULT_BUCKETS                                                                 \
    {                                                                                              \
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10             \
    }

/* The process-wide registry, created on first use and never freed. */
tr_metrics_t *tr_metrics_default(void);

/* A separate registry (tests, embedding). The caller owns it; free with tr_metrics_free. */
tr_metrics_t *tr_metrics_create(void);

/* Frees the registry, its families and series; no thread may record into it any more. */
void tr_metrics_free(tr_metrics_t *reg);

/*
 * Registers a family, or returns the existing one when `name` is already registered with
 * the same type and label names (and buckets, for histograms). Returns NULL and logs the
 * reason for an invalid name or label name, or a conflicting registration. `name`, `help`
 * and `label_names` (a NULL-terminated array, or NULL for none) are copied. The registry
 * owns the family.
 */
tr_metric_t *tr_metrics_counter(tr_metrics_t *reg, const char *name, const char *help,
                                const char *const *label_names);
tr_metric_t *tr_metrics_gauge(tr_metrics_t *reg, const char *name, const char *help,
                              const char *const *label_names);
/*
 * `buckets` are strictly increasing finite upper bounds (a final +Inf is implied and may be
 * given); NULL or nbuckets 0 selects TR_METRICS_DEFAULT_BUCKETS. Copied.
 */
tr_metric_t *tr_metrics_histogram(tr_metrics_t *reg, const char *name, const char *help,
                                  const char *const *label_names, const double *buckets,
                                  size_t nbuckets);

/*
 * Unlabeled gauge or counter whose value is fn(data), called at each render under the
 * registry lock (fn must not register metrics). `data` is borrowed until the registry is
 * freed. Registering the same name again with the same fn and data returns the family.
 */
tr_metric_t *tr_metrics_gauge_fn(tr_metrics_t *reg, const char *name, const char *help,
                                 tr_metric_fn fn, void *data);
tr_metric_t *tr_metrics_counter_fn(tr_metrics_t *reg, const char *name, const char *help,
                                   tr_metric_fn fn, void *data);

/*
 * Resolves the series for `label_values` (NULL-terminated, one per label name, copied;
 * NULL for an unlabeled family), creating it on first use. Takes the registry lock: call it
 * once and keep the result, which lives as long as the registry. Returns NULL and logs when
 * the number of values does not match, or for a callback family.
 */
tr_series_t *tr_metric_series(tr_metric_t *metric, const char *const *label_values);

/*
 * The hot path: no lock and no shared cache line; each thread writes its own shard. A NULL
 * series (failed registration) or a series of another type is ignored.
 */
void tr_counter_add(tr_series_t *series, uint64_t n);
void tr_counter_inc(tr_series_t *series);
void tr_gauge_set(tr_series_t *series, double v);
void tr_gauge_add(tr_series_t *series, double delta);
void tr_histogram_observe(tr_series_t *series, double v);

/*
 * Appends every family in registration order, series in creation order, in Prometheus text
 * exposition format 0.0.4 (Content-Type: text/plain; version=0.0.4). `out` is caller-owned.
 */
void tr_metrics_render(tr_metrics_t *reg, struct tr_buf_s *out);

/*
 * Registers process_resident_memory_bytes, process_virtual_memory_bytes,
 * process_cpu_seconds_total, process_open_fds, process_max_fds and
 * process_start_time_seconds, read from /proc at scrape time. Returns 0, TR_EIO when
 * /proc is unreadable (non-Linux), or TR_EEXISTS when one of those names is already taken
 * by a different family (the others are still registered).
 */
int tr_metrics_register_process(tr_metrics_t *reg);

#endif
