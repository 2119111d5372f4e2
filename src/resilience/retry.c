/* Retry decisions: which outcomes are retried, how long to wait, and how many may run at once. */
#include "trellis/retry.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static const struct {
    const char *word;
    uint32_t bit;
} retry_words[] = {
#define TR_RETRY_ON_ROW(name, bit, word) {word, bit},
    TR_RETRY_ON_MAP(TR_RETRY_ON_ROW)
#undef TR_RETRY_ON_ROW
};
#define N_WORDS (sizeof(retry_words) / sizeof(retry_words[0]))

/* Outcomes that mean "no response arrived", by the conditions that retry them. */
#define NO_RESPONSE_BITS (TR_RETRY_ON_5XX | TR_RETRY_ON_GATEWAY_ERROR | TR_RETRY_ON_RESET)
#define TIMEOUT_BITS     (TR_RETRY_ON_5XX | TR_RETRY_ON_GATEWAY_ERROR)

void tr_retry_policy_init(tr_retry_policy_t *p)
{
    *p = (tr_retry_policy_t){
        .retry_on = TR_RETRY_ON_CONNECT_FAILURE,
        .attempts = 2,
        .backoff_base_ms = 25,
        .backoff_max_ms = 250,
        .retry_after_max_ms = 10000,
    };
}

const char *tr_retry_on_words(void)
{
    return "5xx, gateway-error, reset, connect-failure, retriable-4xx, retriable-status-codes";
}

static uint32_t word_bit(const char *w, size_t n)
{
    for (size_t i = 0; i < N_WORDS; i++)
        if (strlen(retry_words[i].word) == n && strncasecmp(retry_words[i].word, w, n) == 0)
            return retry_words[i].bit;
    return 0;
}

int tr_retry_on_parse(const char *s, uint32_t *bits, const char **bad, size_t *badlen)
{
    uint32_t out = 0;
    const char *p = s;
    for (;;) {
        const char *end = strchr(p, ',');
        if (!end) end = p + strlen(p);
        const char *w = p, *we = end;
        while (w < we && isspace((unsigned char)*w))
            w++;
        while (we > w && isspace((unsigned char)we[-1]))
            we--;
        uint32_t bit = word_bit(w, (size_t)(we - w));
        if (!bit) {
            if (bad) *bad = w;
            if (badlen) *badlen = (size_t)(we - w);
            return TR_EPARSE;
        }
        out |= bit;
        if (!*end) break;
        p = end + 1;
    }
    *bits = out;
    return 0;
}

bool tr_retry_idempotent(const char *method)
{
    static const char *const idem[] = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"};
    for (size_t i = 0; i < sizeof(idem) / sizeof(idem[0]); i++)
        if (strcmp(method, idem[i]) == 0) return true;
    return false;
}

static bool in_list(const tr_retry_policy_t *p, int status)
{
    for (uint32_t i = 0; i < p->n_status_codes; i++)
        if (p->status_codes[i] == status) return true;
    return false;
}

static bool status_retriable(const tr_retry_policy_t *p, int s)
{
    uint32_t on = p->retry_on;
    if ((on & TR_RETRY_ON_RETRIABLE_STATUS_CODES) && s >= 400 && s <= 599 && in_list(p, s))
        return true;
    if (s >= 500 && s <= 599) {
        if (on & TR_RETRY_ON_5XX) return true;
        return (on & TR_RETRY_ON_GATEWAY_ERROR) && s >= 502 && s <= 504;
    }
    /* Every other 4xx says the request itself is wrong: sending it again cannot help. */
    return s == 409 && (on & TR_RETRY_ON_RETRIABLE_4XX);
}

bool tr_retry_should(const tr_retry_policy_t *p, const char *method, const tr_retry_outcome_t *o,
                     uint32_t attempts_made)
{
    if (attempts_made >= p->attempts) return false;
    bool matches;
    switch (o->kind) {
    case TR_RETRY_CONNECT_FAILURE:
        /* Nothing reached the upstream, so even a POST is safe to send again. */
        return p->retry_on & (NO_RESPONSE_BITS | TR_RETRY_ON_CONNECT_FAILURE);
    case TR_RETRY_RESET:
        matches = p->retry_on & NO_RESPONSE_BITS;
        break;
    case TR_RETRY_TIMEOUT:
        matches = p->retry_on & TIMEOUT_BITS;
        break;
    case TR_RETRY_STATUS:
        matches = status_retriable(p, o->status);
        break;
    default:
        return false;
    }
    return matches && (p->allow_non_idempotent || tr_retry_idempotent(method));
}

uint64_t tr_retry_backoff_ms(const tr_retry_policy_t *p, uint32_t retry, uint64_t rnd)
{
    uint64_t base = p->backoff_base_ms, max = p->backoff_max_ms;
    if (retry == 0 || base == 0) return 0;
    uint64_t mult = retry >= 63 ? UINT64_MAX : ((uint64_t)1 << retry) - 1;
    uint64_t upper = mult > max / base ? max : base * mult;
    if (upper > max) upper = max;
    return upper == UINT64_MAX ? rnd : rnd % (upper + 1);
}

int tr_retry_delay_ms(const tr_retry_policy_t *p, uint32_t retry, uint64_t rnd,
                      const tr_retry_outcome_t *o, uint64_t *delay_ms)
{
    uint64_t d = tr_retry_backoff_ms(p, retry, rnd);
    if (o->kind == TR_RETRY_STATUS && (o->status == 429 || o->status == 503) &&
        o->retry_after_ms >= 0) {
        if ((uint64_t)o->retry_after_ms > p->retry_after_max_ms) return TR_EBUSY;
        if ((uint64_t)o->retry_after_ms > d) d = (uint64_t)o->retry_after_ms;
    }
    *delay_ms = d;
    return 0;
}

/* ---- Retry-After ---- */

static int month_index(const char *m)
{
    static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    for (int i = 0; i < 12; i++)
        if (strcmp(m, months[i]) == 0) return i;
    return -1;
}

/* Parses the three HTTP-date forms of RFC 9110 section 5.6.7 into seconds since the epoch. */
static int parse_http_date(const char *s, int64_t *out)
{
    char wd[16], mon[4];
    int d, y, h, mi, sec, n = -1;
    struct tm tm = {0};
    if (sscanf(s, "%3[A-Za-z], %2d %3[A-Za-z] %4d %2d:%2d:%2d GMT%n", wd, &d, mon, &y, &h, &mi,
               &sec, &n) == 7 &&
        n == (int)strlen(s)) {
        /* IMF-fixdate */
    } else if (n = -1, sscanf(s, "%9[A-Za-z], %2d-%3[A-Za-z]-%2d %2d:%2d:%2d GMT%n", wd, &d, mon,
                              &y, &h, &mi, &sec, &n) == 7 &&
                           n == (int)strlen(s)) {
        y += y < 70 ? 2000 : 1900; /* RFC 850's two-digit year */
    } else if (n = -1, sscanf(s, "%3[A-Za-z] %3[A-Za-z] %2d %2d:%2d:%2d %4d%n", wd, mon, &d, &h,
                              &mi, &sec, &y, &n) == 7 &&
                           n == (int)strlen(s)) {
        /* asctime */
    } else {
        return TR_EPARSE;
    }
    int m = month_index(mon);
    if (m < 0 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60 || y < 1970 || h < 0 || mi < 0 ||
        sec < 0)
        return TR_EPARSE;
    tm.tm_year = y - 1900;
    tm.tm_mon = m;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    *out = (int64_t)timegm(&tm);
    return 0;
}

int tr_retry_after_parse(const char *s, size_t len, int64_t now_unix, uint64_t *ms)
{
    while (len && isspace((unsigned char)*s))
        s++, len--;
    while (len && isspace((unsigned char)s[len - 1]))
        len--;
    char buf[64];
    if (len == 0 || len >= sizeof(buf)) return TR_EPARSE;
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (isdigit((unsigned char)buf[0])) {
        uint64_t secs = 0;
        for (size_t i = 0; i < len; i++) {
            if (!isdigit((unsigned char)buf[i])) return TR_EPARSE;
            /* Saturate: any absurd delay is simply "longer than we will wait". */
            secs = secs > UINT64_MAX / 10000 ? UINT64_MAX / 10000 : secs * 10 + (buf[i] - '0');
        }
        *ms = secs * 1000;
        return 0;
    }
    int64_t when;
    if (parse_http_date(buf, &when)) return TR_EPARSE;
    *ms = when > now_unix ? (uint64_t)(when - now_unix) * 1000 : 0;
    return 0;
}

/* ---- budget ---- */

void tr_retry_budget_init(tr_retry_budget_t *b, double percent, uint32_t min_concurrency)
{
    b->percent = percent;
    b->min_concurrency = min_concurrency;
    atomic_init(&b->active, 0);
    atomic_init(&b->retries_active, 0);
    atomic_init(&b->rejected, 0);
}

void tr_retry_budget_request_begin(tr_retry_budget_t *b)
{
    atomic_fetch_add_explicit(&b->active, 1, memory_order_relaxed);
}

void tr_retry_budget_request_end(tr_retry_budget_t *b)
{
    atomic_fetch_sub_explicit(&b->active, 1, memory_order_relaxed);
}

bool tr_retry_budget_allow(tr_retry_budget_t *b)
{
    uint32_t active = atomic_load_explicit(&b->active, memory_order_relaxed);
    uint32_t limit = (uint32_t)(active * b->percent);
    if (limit < b->min_concurrency) limit = b->min_concurrency;
    uint32_t cur = atomic_load_explicit(&b->retries_active, memory_order_relaxed);
    /* CAS, not fetch_add then check: concurrent workers must not overshoot the limit. */
    while (cur < limit) {
        if (atomic_compare_exchange_weak_explicit(&b->retries_active, &cur, cur + 1,
                                                  memory_order_relaxed, memory_order_relaxed))
            return true;
    }
    atomic_fetch_add_explicit(&b->rejected, 1, memory_order_relaxed);
    return false;
}

void tr_retry_budget_retry_end(tr_retry_budget_t *b)
{
    atomic_fetch_sub_explicit(&b->retries_active, 1, memory_order_relaxed);
}

/* ---- config ---- */

static int add_words(tr_config_t *cfg, const json_t *node, const char *key, const json_t *parent,
                     uint32_t *bits)
{
    const char *bad = NULL;
    size_t badlen = 0;
    if (!json_is_string(node))
        return tr_config_fail(cfg, node, NULL, "expected a retry condition (one of: %s)",
                              tr_retry_on_words());
    uint32_t more;
    if (tr_retry_on_parse(json_string_value(node), &more, &bad, &badlen) == 0) {
        *bits |= more;
        return 0;
    }
    const char *fmt = badlen ? "unknown retry condition \"%.*s\" (expected one of: %s)"
                             : "empty retry condition%.*s (expected one of: %s)";
    if (parent) return tr_config_fail(cfg, parent, key, fmt, (int)badlen, bad, tr_retry_on_words());
    return tr_config_fail(cfg, node, NULL, fmt, (int)badlen, bad, tr_retry_on_words());
}

static int parse_retry_on(tr_config_t *cfg, const json_t *obj, uint32_t *bits)
{
    json_t *v = json_object_get(obj, "retry_on");
    if (!v || json_is_null(v)) return 0;
    uint32_t out = 0;
    if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e)
        {
            int rc = add_words(cfg, e, NULL, NULL, &out);
            if (rc) return rc;
        }
    } else if (json_is_string(v)) {
        int rc = add_words(cfg, v, "retry_on", obj, &out);
        if (rc) return rc;
    } else {
        return tr_config_fail(cfg, obj, "retry_on",
                              "expected a comma-separated list or a list of: %s",
                              tr_retry_on_words());
    }
    *bits = out;
    return 0;
}

static int parse_codes(tr_config_t *cfg, const json_t *obj, tr_retry_policy_t *p)
{
    json_t *arr;
    int rc = tr_config_get_array(cfg, obj, "retriable_status_codes", &arr);
    if (rc || !arr) return rc;
    if (json_array_size(arr) > TR_RETRY_MAX_STATUS_CODES)
        return tr_config_fail(cfg, obj, "retriable_status_codes", "at most %d codes",
                              TR_RETRY_MAX_STATUS_CODES);
    size_t i;
    json_t *e;
    json_array_foreach(arr, i, e)
    {
        if (!json_is_integer(e) || json_integer_value(e) < 400 || json_integer_value(e) > 599)
            return tr_config_fail(cfg, e, NULL, "expected an HTTP status code from 400 to 599");
        p->status_codes[p->n_status_codes++] = (uint16_t)json_integer_value(e);
    }
    /* Listing codes says what to retry; requiring the word too would only invite mistakes. */
    if (p->n_status_codes) p->retry_on |= TR_RETRY_ON_RETRIABLE_STATUS_CODES;
    return 0;
}

int tr_retry_config_from_json(tr_config_t *cfg, const json_t *obj, tr_retry_policy_t *p)
{
    static const char *const keys[] = {
        "retry_on",    "retriable_status_codes", "attempts", "allow_non_idempotent", "backoff_base",
        "backoff_max", "retry_after_max",        NULL};
    tr_retry_policy_init(p);
    if (!obj || json_is_null(obj)) return 0;
    if (!json_is_object(obj)) return tr_config_fail(cfg, obj, NULL, "expected a mapping");
    int64_t attempts;
    int rc = tr_config_check_keys(cfg, obj, keys);
    if (!rc) rc = parse_retry_on(cfg, obj, &p->retry_on);
    if (!rc) rc = parse_codes(cfg, obj, p);
    if (!rc) rc = tr_config_get_int(cfg, obj, "attempts", p->attempts, 1, 100, &attempts);
    if (!rc) p->attempts = (uint32_t)attempts;
    if (!rc)
        rc = tr_config_get_bool(cfg, obj, "allow_non_idempotent", false, &p->allow_non_idempotent);
    if (!rc)
        rc = tr_config_get_duration(cfg, obj, "backoff_base", p->backoff_base_ms,
                                    &p->backoff_base_ms);
    if (!rc)
        rc = tr_config_get_duration(cfg, obj, "backoff_max", p->backoff_max_ms, &p->backoff_max_ms);
    if (!rc)
        rc = tr_config_get_duration(cfg, obj, "retry_after_max", p->retry_after_max_ms,
                                    &p->retry_after_max_ms);
    if (rc) return rc;
    if (p->backoff_max_ms < p->backoff_base_ms)
        return tr_config_fail(cfg, obj, "backoff_max", "must not be below backoff_base (%llu ms)",
                              (unsigned long long)p->backoff_base_ms);
    return 0;
}

int tr_retry_budget_config_from_json(tr_config_t *cfg, const json_t *obj, double *percent,
                                     uint32_t *min_concurrency)
{
    static const char *const keys[] = {"percent", "min_concurrency", NULL};
    *percent = 0.2;
    *min_concurrency = 3;
    if (!obj || json_is_null(obj)) return 0;
    if (!json_is_object(obj)) return tr_config_fail(cfg, obj, NULL, "expected a mapping");
    int64_t min;
    int rc = tr_config_check_keys(cfg, obj, keys);
    if (!rc) rc = tr_config_get_percent(cfg, obj, "percent", 0.2, percent);
    if (!rc) rc = tr_config_get_int(cfg, obj, "min_concurrency", 3, 0, 1000000, &min);
    if (!rc) *min_concurrency = (uint32_t)min;
    return rc;
}
