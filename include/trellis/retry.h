/* Retry policy: Envoy's retry_on vocabulary, idempotency, full-jitter backoff, Retry-After,
 * budgets. */
#ifndef TRELLIS_RETRY_H
#define TRELLIS_RETRY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "trellis/config.h"
#include "trellis/error.h"

/* retry_on conditions, Envoy's words (x-envoy-retry-on). */
#define TR_RETRY_ON_MAP(X)                                                                         \
    X(5XX, 1u << 0, "5xx")                     /* any 5xx, connect failure, reset, timeout */      \
    X(GATEWAY_ERROR, 1u << 1, "gateway-error") /* 502/503/504, connect failure, reset, timeout */  \
    X(RESET, 1u << 2, "reset")                 /* connect failure or reset: no response */         \
    X(CONNECT_FAILURE, 1u << 3, "connect-failure") /* the connection was never established */      \
    X(RETRIABLE_4XX, 1u << 4, "retriable-4xx")     /* 409 Conflict */                              \
    X(RETRIABLE_STATUS_CODES, 1u << 5, "retriable-status-codes") /* the policy's status list */

enum tr_retry_on {
#define TR_RETRY_ON_ENUM(name, bit, word) TR_RETRY_ON_##name = (bit),
    TR_RETRY_ON_MAP(TR_RETRY_ON_ENUM)
#undef TR_RETRY_ON_ENUM
};

#define TR_RETRY_MAX_STATUS_CODES 16

typedef struct tr_retry_policy_s {
    uint32_t retry_on;         /* TR_RETRY_ON_ bits (TR_RETRY_ON_CONNECT_FAILURE) */
    uint32_t attempts;         /* total attempts including the first; 1 = no retries (2) */
    bool allow_non_idempotent; /* also retry POST/PATCH/... after the request was sent (false) */
    uint16_t status_codes[TR_RETRY_MAX_STATUS_CODES]; /* for retriable-status-codes */
    uint32_t n_status_codes;
    uint64_t backoff_base_ms;    /* full-jitter exponential backoff base (25 ms) */
    uint64_t backoff_max_ms;     /* cap of one backoff (250 ms) */
    uint64_t retry_after_max_ms; /* longest Retry-After (429/503) waited for (10 s) */
} tr_retry_policy_t;

/* How one attempt ended. */
typedef enum tr_retry_outcome_kind_e {
    TR_RETRY_STATUS = 0,      /* a response with `status` arrived */
    TR_RETRY_CONNECT_FAILURE, /* no connection: the request never left */
    TR_RETRY_RESET,           /* the connection broke before a complete response head */
    TR_RETRY_TIMEOUT          /* the attempt's deadline passed */
} tr_retry_outcome_kind_t;

typedef struct tr_retry_outcome_s {
    tr_retry_outcome_kind_t kind;
    int status;             /* for TR_RETRY_STATUS */
    int64_t retry_after_ms; /* parsed Retry-After of that response, -1 when absent */
} tr_retry_outcome_t;

/* Fills `p` with the defaults shown in tr_retry_policy_t. */
void tr_retry_policy_init(tr_retry_policy_t *p);

/*
 * Parses a comma-separated retry_on list ("5xx,reset"; spaces around words are allowed)
 * into TR_RETRY_ON_ bits. Returns 0, or TR_EPARSE with *bad and *badlen (may be NULL) set to
 * the first unknown or empty word.
 */
int tr_retry_on_parse(const char *s, uint32_t *bits, const char **bad, size_t *badlen);

/* The retry_on words separated by ", " (for messages); static storage. */
const char *tr_retry_on_words(void);

/*
 * Fills `p` from a `retry:` mapping: retry_on (a comma list or a list of words),
 * retriable_status_codes (list of 400..599), attempts, allow_non_idempotent, backoff_base,
 * backoff_max, retry_after_max. Returns 0 or TR_ECONFIG with the message in
 * tr_config_error(cfg) (an unknown word or key is named).
 */
int tr_retry_config_from_json(tr_config_t *cfg, const json_t *obj, tr_retry_policy_t *p);

/* True for methods RFC 9110 defines as idempotent: GET HEAD OPTIONS TRACE PUT DELETE. */
bool tr_retry_idempotent(const char *method);

/*
 * Decides whether an attempt that ended with `o` is retried, `attempts_made` attempts
 * having been made so far (1 after the first). Rules: never beyond p->attempts; a 4xx only
 * for 409 under retriable-4xx or a code in the status list under retriable-status-codes;
 * a connect failure is safe for every method (nothing was sent); anything else only for
 * idempotent methods unless allow_non_idempotent. The budget is checked separately.
 */
bool tr_retry_should(const tr_retry_policy_t *p, const char *method, const tr_retry_outcome_t *o,
                     uint32_t attempts_made);

/*
 * Full-jitter exponential backoff before retry number `retry` (1 = first retry): uniform
 * in [0, min(backoff_max, base * (2^retry - 1))] using `rnd` (any 64 random bits).
 */
uint64_t tr_retry_backoff_ms(const tr_retry_policy_t *p, uint32_t retry, uint64_t rnd);

/*
 * The delay before retry `retry` after outcome `o`: the backoff, or for a 429 or 503 with a
 * Retry-After, the larger of the two. Returns 0 with *delay_ms set, or TR_EBUSY when the
 * server asks for a wait above retry_after_max_ms: the caller gives up and passes the
 * response (and its Retry-After) on, rather than retrying before the server allows.
 */
int tr_retry_delay_ms(const tr_retry_policy_t *p, uint32_t retry, uint64_t rnd,
                      const tr_retry_outcome_t *o, uint64_t *delay_ms);

/*
 * Parses a Retry-After value: delta-seconds, or an HTTP-date (IMF-fixdate, RFC 850 or
 * asctime form) taken relative to `now_unix` (seconds since the epoch; a date in the past
 * gives 0). Surrounding spaces are allowed. Returns 0 with *ms set, or TR_EPARSE.
 */
int tr_retry_after_parse(const char *s, size_t len, int64_t now_unix, uint64_t *ms);

/*
 * Retry budget (Envoy's): concurrent retries are limited to `percent` of active requests,
 * but at least `min_concurrency`. The counters are atomics, so one budget can be shared by
 * every worker of an upstream without a lock.
 */
typedef struct tr_retry_budget_s {
    double percent;           /* fraction of active requests (0.2) */
    uint32_t min_concurrency; /* retries always allowed up to this many at once (3) */
    _Atomic uint32_t active;  /* requests in flight (first attempts and retries alike) */
    _Atomic uint32_t retries_active;
    _Atomic uint64_t rejected; /* retries refused by the budget */
} tr_retry_budget_t;

/* Sets up `b` (percent 0..1). */
void tr_retry_budget_init(tr_retry_budget_t *b, double percent, uint32_t min_concurrency);

/* Fills percent/min_concurrency from a `retry_budget:` mapping {percent, min_concurrency}. */
int tr_retry_budget_config_from_json(tr_config_t *cfg, const json_t *obj, double *percent,
                                     uint32_t *min_concurrency);

/* A request starts / ends (call once each per client request, not per attempt). */
void tr_retry_budget_request_begin(tr_retry_budget_t *b);
void tr_retry_budget_request_end(tr_retry_budget_t *b);

/* Takes one retry slot if the budget allows; on true, call tr_retry_budget_retry_end
 * when that retry attempt ends. */
bool tr_retry_budget_allow(tr_retry_budget_t *b);
void tr_retry_budget_retry_end(tr_retry_budget_t *b);

#endif
