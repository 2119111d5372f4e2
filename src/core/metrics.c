/* Metrics registry: per-thread shards written without locks, summed when scraped. */
#include "trellis/metrics.h"

#include "core/buf.h"
#include "core/mem.h"
#include "trellis/error.h"
#include "trellis/log.h"

#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

/*
 * Each recording thread owns one of SHARDS - 1 slots and writes it with plain relaxed
 * load/store pairs; threads beyond that share the last slot and use atomic read-modify-write
 * there. Slots are handed back when a thread exits, so pools that churn threads stay
 * exclusive.
 */
#define SHARDS       64
#define SHARED_SHARD (SHARDS - 1)
#define CACHE_LINE   64

struct tr_series_s {
    tr_metric_t *family;
    tr_metric_type_t type;
    char **values; /* one per label name */
    tr_series_t *next;
    _Atomic uint64_t gauge_bits; /* gauges are one atomic double: set needs one truth */
    /*
     * Counters and histograms: per-shard cells allocated by the shard's first write, each on
     * its own cache lines. Cell word 0 is the counter value or the histogram sum (double
     * bits); words 1..nbuckets+1 are the per-bucket (non-cumulative) histogram counts.
     */
    _Atomic(_Atomic uint64_t *) cells[];
};

struct tr_metric_s {
    tr_metrics_t *reg;
    tr_metric_t *next;
    char *name;
    char *help;
    tr_metric_type_t type;
    char **labels;
    size_t nlabels;
    double *buckets; /* histograms: finite upper bounds; +Inf is implied */
    size_t nbuckets;
    size_t cell_size;
    tr_metric_fn fn; /* callback families have no series */
    void *fn_data;
    tr_series_t *series;
    tr_series_t **series_tail;
};

struct tr_metrics_s {
    pthread_mutex_t mu; /* guards the family and series lists, never the hot path */
    tr_metric_t *families;
    tr_metric_t **tail;
};

/* ---- shards ----------------------------------------------------------------------------- */

static __thread int tl_shard = -1;
static pthread_mutex_t g_shard_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t g_shard_used; /* bit i set: slot i owned by a live thread */
static pthread_once_t g_shard_once = PTHREAD_ONCE_INIT;
static pthread_key_t g_shard_key;

static void on_thread_exit(void *p)
{
    int idx = (int)(uintptr_t)p - 1;
    /* The mutex orders this thread's last writes before the next owner's first read. */
    pthread_mutex_lock(&g_shard_mu);
    g_shard_used &= ~(UINT64_C(1) << idx);
    pthread_mutex_unlock(&g_shard_mu);
    tl_shard = -1;
}

static void make_shard_key(void)
{
    pthread_key_create(&g_shard_key, on_thread_exit);
}

static int shard_acquire(void)
{
    pthread_once(&g_shard_once, make_shard_key);
    int idx = SHARED_SHARD;
    pthread_mutex_lock(&g_shard_mu);
    for (int i = 0; i < SHARED_SHARD; i++) {
        if (!(g_shard_used & (UINT64_C(1) << i))) {
            g_shard_used |= UINT64_C(1) << i;
            idx = i;
            break;
        }
    }
    pthread_mutex_unlock(&g_shard_mu);
    if (idx != SHARED_SHARD) pthread_setspecific(g_shard_key, (void *)(uintptr_t)(idx + 1));
    tl_shard = idx;
    return idx;
}

static inline int shard_index(void)
{
    int s = tl_shard;
    return s >= 0 ? s : shard_acquire();
}

static _Atomic uint64_t *cell_install(tr_series_t *s, int shard)
{
    size_t size = (s->family->cell_size + CACHE_LINE - 1) / CACHE_LINE * CACHE_LINE;
    void *mem = NULL;
    if (posix_memalign(&mem, CACHE_LINE, size) != 0) abort();
    memset(mem, 0, size);
    _Atomic uint64_t *expected = NULL;
    if (atomic_compare_exchange_strong_explicit(&s->cells[shard], &expected, mem,
                                                memory_order_acq_rel, memory_order_acquire))
        return mem;
    free(mem); /* another thread sharing the overflow slot installed it first */
    return expected;
}

static inline _Atomic uint64_t *cell_get(tr_series_t *s, int shard)
{
    _Atomic uint64_t *c = atomic_load_explicit(&s->cells[shard], memory_order_acquire);
    return c ? c : cell_install(s, shard);
}

static inline void word_add(_Atomic uint64_t *w, uint64_t n, bool exclusive)
{
    if (exclusive)
        atomic_store_explicit(w, atomic_load_explicit(w, memory_order_relaxed) + n,
                              memory_order_relaxed);
    else
        atomic_fetch_add_explicit(w, n, memory_order_relaxed);
}

static inline double bits_to_double(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof(d));
    return d;
}

static inline uint64_t double_to_bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof(u));
    return u;
}

static void double_add(_Atomic uint64_t *w, double delta, bool exclusive)
{
    uint64_t old = atomic_load_explicit(w, memory_order_relaxed);
    if (exclusive) {
        atomic_store_explicit(w, double_to_bits(bits_to_double(old) + delta), memory_order_relaxed);
        return;
    }
    while (!atomic_compare_exchange_weak_explicit(w, &old,
                                                  double_to_bits(bits_to_double(old) + delta),
                                                  memory_order_relaxed, memory_order_relaxed)) {
    }
}

/* ---- hot path --------------------------------------------------------------------------- */

void tr_counter_add(tr_series_t *series, uint64_t n)
{
    if (!series || series->type != TR_METRIC_COUNTER) return;
    int shard = shard_index();
    word_add(&cell_get(series, shard)[0], n, shard != SHARED_SHARD);
}

void tr_counter_inc(tr_series_t *series)
{
    tr_counter_add(series, 1);
}

void tr_gauge_set(tr_series_t *series, double v)
{
    if (!series || series->type != TR_METRIC_GAUGE) return;
    atomic_store_explicit(&series->gauge_bits, double_to_bits(v), memory_order_relaxed);
}

void tr_gauge_add(tr_series_t *series, double delta)
{
    if (!series || series->type != TR_METRIC_GAUGE) return;
    double_add(&series->gauge_bits, delta, false);
}

/* Index of the first bucket whose upper bound is >= v; nbuckets means +Inf (and NaN). */
static size_t bucket_index(const double *b, size_t n, double v)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v <= b[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    return isnan(v) ? n : lo;
}

void tr_histogram_observe(tr_series_t *series, double v)
{
    if (!series || series->type != TR_METRIC_HISTOGRAM) return;
    const tr_metric_t *m = series->family;
    int shard = shard_index();
    bool exclusive = shard != SHARED_SHARD;
    _Atomic uint64_t *cell = cell_get(series, shard);
    word_add(&cell[1 + bucket_index(m->buckets, m->nbuckets, v)], 1, exclusive);
    double_add(&cell[0], v, exclusive);
}

/* ---- registry --------------------------------------------------------------------------- */

static pthread_once_t g_default_once = PTHREAD_ONCE_INIT;
static tr_metrics_t *g_default;

static void make_default(void)
{
    g_default = tr_metrics_create();
}

tr_metrics_t *tr_metrics_default(void)
{
    pthread_once(&g_default_once, make_default);
    return g_default;
}

tr_metrics_t *tr_metrics_create(void)
{
    tr_metrics_t *reg = tr_calloc(1, sizeof(*reg));
    pthread_mutex_init(&reg->mu, NULL);
    reg->tail = &reg->families;
    return reg;
}

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static void free_series(tr_series_t *s, bool sharded)
{
    if (sharded)
        for (int i = 0; i < SHARDS; i++)
            free(atomic_load_explicit(&s->cells[i], memory_order_relaxed));
    free_strv(s->values, s->family->nlabels);
    free(s);
}

static void free_family(tr_metric_t *m)
{
    tr_series_t *s = m->series;
    while (s) {
        tr_series_t *next = s->next;
        free_series(s, m->type != TR_METRIC_GAUGE);
        s = next;
    }
    free_strv(m->labels, m->nlabels);
    free(m->buckets);
    free(m->name);
    free(m->help);
    free(m);
}

void tr_metrics_free(tr_metrics_t *reg)
{
    if (!reg) return;
    tr_metric_t *m = reg->families;
    while (m) {
        tr_metric_t *next = m->next;
        free_family(m);
        m = next;
    }
    pthread_mutex_destroy(&reg->mu);
    free(reg);
}

/* ---- validation ------------------------------------------------------------------------- */

static bool name_char(char c, bool first, bool colon)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') return true;
    if (colon && c == ':') return true;
    return !first && c >= '0' && c <= '9';
}

/* Metric names match [a-zA-Z_:][a-zA-Z0-9_:]*, label names [a-zA-Z_][a-zA-Z0-9_]*. */
static bool valid_name(const char *s, bool colon)
{
    if (!s || !*s) return false;
    for (const char *p = s; *p; p++)
        if (!name_char(*p, p == s, colon)) return false;
    return true;
}

static size_t strv_len(const char *const *v)
{
    size_t n = 0;
    while (v && v[n])
        n++;
    return n;
}

static const char *check_labels(const char *const *labels, tr_metric_type_t type)
{
    size_t n = strv_len(labels);
    for (size_t i = 0; i < n; i++) {
        if (!valid_name(labels[i], false)) return "invalid label name";
        if (strncmp(labels[i], "__", 2) == 0) return "label names starting with __ are reserved";
        if (type == TR_METRIC_HISTOGRAM && strcmp(labels[i], "le") == 0)
            return "a histogram cannot have a label named le";
        for (size_t j = 0; j < i; j++)
            if (strcmp(labels[i], labels[j]) == 0) return "duplicate label name";
    }
    return NULL;
}

/* Validates user buckets into a fresh array (a trailing +Inf dropped); NULL when invalid. */
static double *copy_buckets(const double *in, size_t n, size_t *out_n)
{
    static const double defaults[] = TR_METRICS_DEFAULT_BUCKETS;
    if (!in || n == 0) {
        in = defaults;
        n = sizeof(defaults) / sizeof(defaults[0]);
    }
    if (n > 0 && isinf(in[n - 1]) && in[n - 1] > 0) n--;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(in[i]) || (i > 0 && in[i] <= in[i - 1])) return NULL;
    double *b = tr_malloc((n ? n : 1) * sizeof(double));
    if (n) memcpy(b, in, n * sizeof(double));
    *out_n = n;
    return b;
}

/* ---- families --------------------------------------------------------------------------- */

typedef struct family_spec_s {
    const char *name;
    const char *help;
    tr_metric_type_t type;
    const char *const *labels;
    double *buckets; /* owned by the spec until the family takes it */
    size_t nbuckets;
    tr_metric_fn fn;
    void *fn_data;
} family_spec_t;

static void registration_failed(const char *name, const char *reason)
{
    tr_log_error("metric registration failed", TR_LOG_STR("metric", name),
                 TR_LOG_STR("reason", reason));
}

static const char *conflict(const tr_metric_t *m, const family_spec_t *spec)
{
    if (m->type != spec->type || m->fn != spec->fn || m->fn_data != spec->fn_data)
        return "already registered with another type or callback";
    size_t n = strv_len(spec->labels);
    if (n != m->nlabels) return "already registered with other label names";
    for (size_t i = 0; i < n; i++)
        if (strcmp(m->labels[i], spec->labels[i]) != 0)
            return "already registered with other label names";
    if (spec->type == TR_METRIC_HISTOGRAM &&
        (m->nbuckets != spec->nbuckets ||
         memcmp(m->buckets, spec->buckets, m->nbuckets * sizeof(double)) != 0))
        return "already registered with other buckets";
    return NULL;
}

static char **copy_strv(const char *const *v, size_t n)
{
    char **out = tr_calloc(n ? n : 1, sizeof(char *));
    for (size_t i = 0; i < n; i++)
        out[i] = tr_strdup(v[i]);
    return out;
}

static tr_series_t *series_new(tr_metric_t *m, const char *const *values)
{
    size_t ncells = m->type == TR_METRIC_GAUGE ? 0 : SHARDS;
    tr_series_t *s = tr_calloc(1, sizeof(*s) + ncells * sizeof(s->cells[0]));
    s->family = m;
    s->type = m->type;
    s->values = copy_strv(values, m->nlabels);
    *m->series_tail = s;
    m->series_tail = &s->next;
    return s;
}

static tr_metric_t *family_new(tr_metrics_t *reg, family_spec_t *spec)
{
    tr_metric_t *m = tr_calloc(1, sizeof(*m));
    m->reg = reg;
    m->name = tr_strdup(spec->name);
    m->help = tr_strdup(spec->help ? spec->help : "");
    m->type = spec->type;
    m->nlabels = strv_len(spec->labels);
    m->labels = copy_strv(spec->labels, m->nlabels);
    m->buckets = spec->buckets;
    m->nbuckets = spec->nbuckets;
    spec->buckets = NULL;
    m->cell_size = sizeof(uint64_t) * (m->type == TR_METRIC_HISTOGRAM ? m->nbuckets + 2 : 1);
    m->fn = spec->fn;
    m->fn_data = spec->fn_data;
    m->series_tail = &m->series;
    /* An unlabeled family has exactly one series, shown as 0 before its first write. */
    if (m->nlabels == 0 && !m->fn) series_new(m, NULL);
    *reg->tail = m;
    reg->tail = &m->next;
    return m;
}

static tr_metric_t *find_family(tr_metrics_t *reg, const char *name)
{
    for (tr_metric_t *m = reg->families; m; m = m->next)
        if (strcmp(m->name, name) == 0) return m;
    return NULL;
}

static tr_metric_t *register_family(tr_metrics_t *reg, family_spec_t *spec)
{
    const char *why = NULL;
    tr_metric_t *m = NULL;
    if (!reg)
        why = "no registry";
    else if (!valid_name(spec->name, true))
        why = "invalid metric name";
    else
        why = check_labels(spec->labels, spec->type);
    if (!why && spec->type == TR_METRIC_HISTOGRAM && !spec->buckets)
        why = "buckets must be finite and strictly increasing";
    if (!why) {
        pthread_mutex_lock(&reg->mu);
        m = find_family(reg, spec->name);
        if (m)
            why = conflict(m, spec);
        else
            m = family_new(reg, spec);
        pthread_mutex_unlock(&reg->mu);
    }
    free(spec->buckets);
    if (!why) return m;
    registration_failed(spec->name ? spec->name : "(null)", why);
    return NULL;
}

tr_metric_t *tr_metrics_counter(tr_metrics_t *reg, const char *name, const char *help,
                                const char *const *label_names)
{
    family_spec_t spec = {
        .name = name, .help = help, .type = TR_METRIC_COUNTER, .labels = label_names};
    return register_family(reg, &spec);
}

tr_metric_t *tr_metrics_gauge(tr_metrics_t *reg, const char *name, const char *help,
                              const char *const *label_names)
{
    family_spec_t spec = {
        .name = name, .help = help, .type = TR_METRIC_GAUGE, .labels = label_names};
    return register_family(reg, &spec);
}

tr_metric_t *tr_metrics_histogram(tr_metrics_t *reg, const char *name, const char *help,
                                  const char *const *label_names, const double *buckets,
                                  size_t nbuckets)
{
    family_spec_t spec = {
        .name = name, .help = help, .type = TR_METRIC_HISTOGRAM, .labels = label_names};
    spec.buckets = copy_buckets(buckets, nbuckets, &spec.nbuckets);
    return register_family(reg, &spec);
}

tr_metric_t *tr_metrics_gauge_fn(tr_metrics_t *reg, const char *name, const char *help,
                                 tr_metric_fn fn, void *data)
{
    family_spec_t spec = {
        .name = name, .help = help, .type = TR_METRIC_GAUGE, .fn = fn, .fn_data = data};
    if (!fn) {
        registration_failed(name ? name : "(null)", "no callback");
        return NULL;
    }
    return register_family(reg, &spec);
}

tr_metric_t *tr_metrics_counter_fn(tr_metrics_t *reg, const char *name, const char *help,
                                   tr_metric_fn fn, void *data)
{
    family_spec_t spec = {
        .name = name, .help = help, .type = TR_METRIC_COUNTER, .fn = fn, .fn_data = data};
    if (!fn) {
        registration_failed(name ? name : "(null)", "no callback");
        return NULL;
    }
    return register_family(reg, &spec);
}

/* ---- series ----------------------------------------------------------------------------- */

static bool values_equal(const tr_series_t *s, const char *const *values, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(s->values[i], values[i]) != 0) return false;
    return true;
}

tr_series_t *tr_metric_series(tr_metric_t *m, const char *const *label_values)
{
    if (!m) return NULL;
    size_t n = strv_len(label_values);
    if (m->fn || n != m->nlabels) {
        tr_log_error("metric series rejected", TR_LOG_STR("metric", m->name),
                     TR_LOG_STR("reason", m->fn ? "callback metrics have no series"
                                                : "wrong number of label values"),
                     TR_LOG_UINT("expected", m->nlabels), TR_LOG_UINT("got", n));
        return NULL;
    }
    pthread_mutex_lock(&m->reg->mu);
    tr_series_t *s = m->series;
    while (s && !values_equal(s, label_values, n))
        s = s->next;
    if (!s) s = series_new(m, label_values);
    pthread_mutex_unlock(&m->reg->mu);
    return s;
}

/* ---- exposition ------------------------------------------------------------------------- */

/* Prometheus float text: shortest round-trip form, +Inf, -Inf, NaN. */
static void format_value(char *out, size_t n, double d)
{
    if (isnan(d)) {
        snprintf(out, n, "NaN");
    } else if (isinf(d)) {
        snprintf(out, n, "%s", d > 0 ? "+Inf" : "-Inf");
    } else {
        snprintf(out, n, "%.15g", d);
        if (strtod(out, NULL) != d) snprintf(out, n, "%.17g", d);
    }
}

static void append_value(tr_buf_t *b, double d)
{
    char tmp[32];
    format_value(tmp, sizeof(tmp), d);
    tr_buf_append_str(b, tmp);
}

/* HELP text escapes backslash and newline; label values also escape the double quote. */
static void append_escaped(tr_buf_t *b, const char *s, bool quote)
{
    for (; *s; s++) {
        if (*s == '\\')
            tr_buf_append(b, "\\\\", 2);
        else if (*s == '\n')
            tr_buf_append(b, "\\n", 2);
        else if (*s == '"' && quote)
            tr_buf_append(b, "\\\"", 2);
        else
            tr_buf_append(b, s, 1);
    }
}

static void append_label(tr_buf_t *b, bool *first, const char *name, const char *value)
{
    tr_buf_append_str(b, *first ? "{" : ",");
    *first = false;
    tr_buf_append_str(b, name);
    tr_buf_append(b, "=\"", 2);
    append_escaped(b, value, true);
    tr_buf_append(b, "\"", 1);
}

/* Writes `name<suffix>{labels[,le="…"]} ` ready for the value. */
static void sample_start(tr_buf_t *b, const tr_metric_t *m, const tr_series_t *s,
                         const char *suffix, const char *le)
{
    bool first = true;
    tr_buf_append_str(b, m->name);
    tr_buf_append_str(b, suffix);
    for (size_t i = 0; s && i < m->nlabels; i++)
        append_label(b, &first, m->labels[i], s->values[i]);
    if (le) append_label(b, &first, "le", le);
    if (!first) tr_buf_append(b, "}", 1);
    tr_buf_append(b, " ", 1);
}

static uint64_t sum_word(const tr_series_t *s, size_t word)
{
    uint64_t total = 0;
    for (int i = 0; i < SHARDS; i++) {
        _Atomic uint64_t *c = atomic_load_explicit(&s->cells[i], memory_order_acquire);
        if (c) total += atomic_load_explicit(&c[word], memory_order_relaxed);
    }
    return total;
}

static double sum_double_word(const tr_series_t *s, size_t word)
{
    double total = 0;
    for (int i = 0; i < SHARDS; i++) {
        _Atomic uint64_t *c = atomic_load_explicit(&s->cells[i], memory_order_acquire);
        if (c) total += bits_to_double(atomic_load_explicit(&c[word], memory_order_relaxed));
    }
    return total;
}

static void render_histogram(tr_buf_t *b, const tr_metric_t *m, const tr_series_t *s)
{
    uint64_t cumulative = 0;
    char le[32];
    for (size_t i = 0; i <= m->nbuckets; i++) {
        cumulative += sum_word(s, 1 + i);
        format_value(le, sizeof(le), i < m->nbuckets ? m->buckets[i] : INFINITY);
        sample_start(b, m, s, "_bucket", le);
        tr_buf_append_u64(b, cumulative);
        tr_buf_append(b, "\n", 1);
    }
    sample_start(b, m, s, "_sum", NULL);
    append_value(b, sum_double_word(s, 0));
    tr_buf_append(b, "\n", 1);
    sample_start(b, m, s, "_count", NULL);
    tr_buf_append_u64(b, cumulative);
    tr_buf_append(b, "\n", 1);
}

static void render_series(tr_buf_t *b, const tr_metric_t *m, const tr_series_t *s)
{
    if (m->type == TR_METRIC_HISTOGRAM) {
        render_histogram(b, m, s);
        return;
    }
    sample_start(b, m, s, "", NULL);
    if (m->type == TR_METRIC_COUNTER)
        tr_buf_append_u64(b, sum_word(s, 0));
    else
        append_value(b, bits_to_double(atomic_load_explicit(&s->gauge_bits, memory_order_relaxed)));
    tr_buf_append(b, "\n", 1);
}

static const char *const type_names[] = {
#define TYPE_NAME(name, str) str,
    TR_METRIC_TYPE_MAP(TYPE_NAME)
#undef TYPE_NAME
};

static void render_family(tr_buf_t *b, const tr_metric_t *m)
{
    tr_buf_printf(b, "# HELP %s ", m->name);
    append_escaped(b, m->help, false);
    tr_buf_printf(b, "\n# TYPE %s %s\n", m->name, type_names[m->type]);
    if (m->fn) {
        sample_start(b, m, NULL, "", NULL);
        append_value(b, m->fn(m->fn_data));
        tr_buf_append(b, "\n", 1);
        return;
    }
    for (const tr_series_t *s = m->series; s; s = s->next)
        render_series(b, m, s);
}

void tr_metrics_render(tr_metrics_t *reg, tr_buf_t *out)
{
    if (!reg) return;
    pthread_mutex_lock(&reg->mu);
    for (const tr_metric_t *m = reg->families; m; m = m->next)
        render_family(out, m);
    pthread_mutex_unlock(&reg->mu);
}

/* ---- process metrics -------------------------------------------------------------------- */

/* Reads field `idx` (1-based, as in proc(5)) of /proc/self/stat; the name may hold spaces. */
static bool proc_stat_field(int idx, unsigned long long *out)
{
    char line[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f) return false;
    bool ok = fgets(line, sizeof(line), f) != NULL;
    fclose(f);
    char *p = ok ? strrchr(line, ')') : NULL;
    if (!p) return false;
    p++;
    for (int field = 3; field <= idx; field++) {
        char *end;
        while (*p == ' ')
            p++;
        unsigned long long v = strtoull(p, &end, 10);
        if (field == idx && end != p) {
            *out = v;
            return true;
        }
        p = strchr(p, ' ');
        if (!p) return false;
    }
    return false;
}

static double statm_bytes(int field)
{
    unsigned long long v[2] = {0, 0};
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return 0;
    int n = fscanf(f, "%llu %llu", &v[0], &v[1]);
    fclose(f);
    return n == 2 ? (double)v[field] * (double)sysconf(_SC_PAGESIZE) : 0;
}

static double process_rss(void *data)
{
    return statm_bytes(1);
}

static double process_vsize(void *data)
{
    return statm_bytes(0);
}

static double process_cpu(void *data)
{
    unsigned long long utime = 0, stime = 0;
    proc_stat_field(14, &utime);
    proc_stat_field(15, &stime);
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

static double process_open_fds(void *data)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) return 0;
    double n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n - 1; /* the directory stream's own descriptor */
}

static double process_max_fds(void *data)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return INFINITY;
    return (double)rl.rlim_cur;
}

/* Start time = boot time (btime in /proc/stat) + start ticks since boot. */
static bool process_start_time(double *out)
{
    unsigned long long start_ticks, btime = 0;
    char line[256];
    if (!proc_stat_field(22, &start_ticks)) return false;
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return false;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "btime %llu", &btime) == 1) break;
    fclose(f);
    if (!btime) return false;
    *out = (double)btime + (double)start_ticks / (double)sysconf(_SC_CLK_TCK);
    return true;
}

int tr_metrics_register_process(tr_metrics_t *reg)
{
    double start;
    if (!process_start_time(&start)) return TR_EIO;
    tr_series_t *s = tr_metric_series(
        tr_metrics_gauge(reg, "process_start_time_seconds",
                         "Start time of the process since unix epoch in seconds.", NULL),
        NULL);
    tr_gauge_set(s, start);
    bool ok = s != NULL;
    ok &= tr_metrics_counter_fn(reg, "process_cpu_seconds_total",
                                "Total user and system CPU time spent in seconds.", process_cpu,
                                NULL) != NULL;
    ok &= tr_metrics_gauge_fn(reg, "process_resident_memory_bytes",
                              "Resident memory size in bytes.", process_rss, NULL) != NULL;
    ok &= tr_metrics_gauge_fn(reg, "process_virtual_memory_bytes", "Virtual memory size in bytes.",
                              process_vsize, NULL) != NULL;
    ok &= tr_metrics_gauge_fn(reg, "process_open_fds", "Number of open file descriptors.",
                              process_open_fds, NULL) != NULL;
    ok &= tr_metrics_gauge_fn(reg, "process_max_fds", "Maximum number of open file descriptors.",
                              process_max_fds, NULL) != NULL;
    return ok ? 0 : TR_EEXISTS;
}
