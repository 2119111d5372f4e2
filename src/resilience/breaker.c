/* Circuit breaker: a count-based sliding window, consecutive failures and timed half-open. */
#include "trellis/breaker.h"

#include <string.h>

#include <uv.h>

static const char *const state_names[] = {"closed", "open", "half-open"};

void tr_breaker_config_init(tr_breaker_config_t *c)
{
    *c = (tr_breaker_config_t){
        .consecutive_failures = 5,
        .failure_rate = 0.5,
        .window_size = 20,
        .minimum_calls = 10,
        .slow_call_ms = 0,
        .slow_call_rate = 1.0,
        .open_ms = 30000,
        .half_open_calls = 3,
        .half_open_timeout_ms = 10000,
    };
}

static bool valid_rate(double r)
{
    return r >= 0 && r <= 1;
}

int tr_breaker_init(tr_breaker_t *b, const tr_breaker_config_t *c)
{
    tr_breaker_config_t def;
    if (!c) {
        tr_breaker_config_init(&def);
        c = &def;
    }
    if (c->window_size == 0 || c->window_size > TR_BREAKER_MAX_WINDOW ||
        c->minimum_calls > c->window_size || !valid_rate(c->failure_rate) ||
        !valid_rate(c->slow_call_rate) || c->half_open_calls == 0 || c->half_open_timeout_ms == 0)
        return UV_EINVAL;
    memset(b, 0, sizeof(*b));
    b->cfg = *c;
    b->state = TR_BREAKER_CLOSED;
    return 0;
}

const char *tr_breaker_state_name(tr_breaker_state_t s)
{
    return (unsigned)s < 3 ? state_names[s] : "unknown";
}

static void reset_window(tr_breaker_t *b)
{
    b->consecutive = 0;
    b->head = b->count = b->failures = b->slows = 0;
    memset(b->failed_bits, 0, sizeof(b->failed_bits));
    memset(b->slow_bits, 0, sizeof(b->slow_bits));
}

/* Every transition bumps the epoch, so results of calls admitted before it are ignored. */
static void enter(tr_breaker_t *b, tr_breaker_state_t s, uint64_t at)
{
    b->state = s;
    b->since = at;
    b->epoch++;
    switch (s) {
    case TR_BREAKER_OPEN:
        b->stats.opened++;
        break;
    case TR_BREAKER_HALF_OPEN:
        b->admitted = b->succeeded = b->slow_probes = 0;
        b->stats.half_opened++;
        break;
    case TR_BREAKER_CLOSED:
        reset_window(b);
        b->stats.closed++;
        break;
    }
}

static uint64_t elapsed(const tr_breaker_t *b, uint64_t now)
{
    return now > b->since ? now - b->since : 0;
}

/*
 * Time-driven transitions. A half-open period that outlives its timeout becomes an open
 * period that began when the timeout expired, so a late caller sees the same history as
 * a punctual one; an open period that has run its course becomes half-open now.
 */
static void advance(tr_breaker_t *b, uint64_t now)
{
    if (b->state == TR_BREAKER_HALF_OPEN && elapsed(b, now) >= b->cfg.half_open_timeout_ms) {
        b->stats.probe_timeouts++;
        enter(b, TR_BREAKER_OPEN, b->since + b->cfg.half_open_timeout_ms);
    }
    if (b->state == TR_BREAKER_OPEN && elapsed(b, now) >= b->cfg.open_ms)
        enter(b, TR_BREAKER_HALF_OPEN, now > b->since ? now : b->since);
}

tr_breaker_state_t tr_breaker_state(tr_breaker_t *b, uint64_t now)
{
    advance(b, now);
    return b->state;
}

void tr_breaker_force_open(tr_breaker_t *b, uint64_t now)
{
    enter(b, TR_BREAKER_OPEN, now);
}

int tr_breaker_allow(tr_breaker_t *b, uint64_t now, tr_breaker_ticket_t *t)
{
    advance(b, now);
    if (b->state == TR_BREAKER_CLOSED) {
        *t = (tr_breaker_ticket_t){.epoch = b->epoch, .probe = false};
        return 0;
    }
    if (b->state == TR_BREAKER_HALF_OPEN && b->admitted < b->cfg.half_open_calls) {
        b->admitted++;
        *t = (tr_breaker_ticket_t){.epoch = b->epoch, .probe = true};
        return 0;
    }
    b->stats.rejected++;
    return TR_EBUSY;
}

void tr_breaker_cancel(tr_breaker_t *b, const tr_breaker_ticket_t *t)
{
    if (t->probe && t->epoch == b->epoch && b->state == TR_BREAKER_HALF_OPEN && b->admitted > 0)
        b->admitted--;
}

static bool bit(const uint64_t *bits, uint32_t i)
{
    return (bits[i / 64] >> (i % 64)) & 1;
}

static void set_bit(uint64_t *bits, uint32_t i, bool on)
{
    uint64_t m = (uint64_t)1 << (i % 64);
    bits[i / 64] = on ? bits[i / 64] | m : bits[i / 64] & ~m;
}

/* Adds one result to the window, evicting the oldest when it is full. */
static void push(tr_breaker_t *b, bool failed, bool slow)
{
    uint32_t i = b->head;
    if (b->count == b->cfg.window_size) {
        b->failures -= bit(b->failed_bits, i);
        b->slows -= bit(b->slow_bits, i);
    } else {
        b->count++;
    }
    set_bit(b->failed_bits, i, failed);
    set_bit(b->slow_bits, i, slow);
    b->failures += failed;
    b->slows += slow;
    b->head = (i + 1) % b->cfg.window_size;
}

/* True when `part` out of `whole` reaches `rate` (a fraction); whole > 0. */
static bool reaches(uint32_t part, uint32_t whole, double rate)
{
    /* Compare in integers scaled by 1e6 so 10 of 20 reaches exactly 50%. */
    return (uint64_t)part * 1000000 >= (uint64_t)(rate * 1000000 + 0.5) * whole;
}

static bool should_trip(const tr_breaker_t *b)
{
    const tr_breaker_config_t *c = &b->cfg;
    if (c->consecutive_failures && b->consecutive >= c->consecutive_failures) return true;
    uint32_t min = c->minimum_calls ? c->minimum_calls : 1;
    if (b->count < min) return false;
    if (c->failure_rate > 0 && reaches(b->failures, b->count, c->failure_rate)) return true;
    return c->slow_call_ms && c->slow_call_rate > 0 &&
           reaches(b->slows, b->count, c->slow_call_rate);
}

/* A failed probe reopens at once; slow probes reopen when, once all are in, their share
 * reaches slow_call_rate; otherwise the last probe closes the breaker. */
static void record_probe(tr_breaker_t *b, uint64_t now, bool success, bool slow)
{
    const tr_breaker_config_t *c = &b->cfg;
    if (!success) {
        enter(b, TR_BREAKER_OPEN, now);
        return;
    }
    b->succeeded++;
    b->slow_probes += slow;
    if (b->succeeded < c->half_open_calls) return;
    if (c->slow_call_rate > 0 && b->slow_probes > 0 &&
        reaches(b->slow_probes, b->succeeded, c->slow_call_rate))
        enter(b, TR_BREAKER_OPEN, now);
    else
        enter(b, TR_BREAKER_CLOSED, now);
}

void tr_breaker_record(tr_breaker_t *b, const tr_breaker_ticket_t *t, uint64_t now, bool success,
                       uint64_t duration_ms)
{
    advance(b, now);
    if (t->epoch != b->epoch) return;
    bool slow = b->cfg.slow_call_ms && duration_ms >= b->cfg.slow_call_ms;
    if (b->state == TR_BREAKER_HALF_OPEN) {
        if (t->probe) record_probe(b, now, success, slow);
        return;
    }
    if (b->state != TR_BREAKER_CLOSED) return;
    push(b, !success, slow);
    b->consecutive = success ? 0 : b->consecutive + 1;
    if (should_trip(b)) enter(b, TR_BREAKER_OPEN, now);
}

static int get_u32(tr_config_t *cfg, const json_t *obj, const char *key, uint32_t min, uint32_t max,
                   uint32_t *out)
{
    int64_t v;
    int rc = tr_config_get_int(cfg, obj, key, *out, min, max, &v);
    if (rc == 0) *out = (uint32_t)v;
    return rc;
}

int tr_breaker_config_from_json(tr_config_t *cfg, const json_t *obj, tr_breaker_config_t *c)
{
    static const char *const keys[] = {
        "consecutive_failures", "failure_rate", "window",          "minimum_calls",     "slow_call",
        "slow_call_rate",       "open",         "half_open_calls", "half_open_timeout", NULL};
    tr_breaker_config_init(c);
    if (!obj || json_is_null(obj)) return 0;
    if (!json_is_object(obj)) return tr_config_fail(cfg, obj, NULL, "expected a mapping");
    int rc = tr_config_check_keys(cfg, obj, keys);
    if (!rc) rc = get_u32(cfg, obj, "consecutive_failures", 0, 1000000, &c->consecutive_failures);
    if (!rc)
        rc = tr_config_get_percent(cfg, obj, "failure_rate", c->failure_rate, &c->failure_rate);
    if (!rc) rc = get_u32(cfg, obj, "window", 1, TR_BREAKER_MAX_WINDOW, &c->window_size);
    if (!rc) rc = get_u32(cfg, obj, "minimum_calls", 1, TR_BREAKER_MAX_WINDOW, &c->minimum_calls);
    if (!rc) rc = tr_config_get_duration(cfg, obj, "slow_call", c->slow_call_ms, &c->slow_call_ms);
    if (!rc)
        rc = tr_config_get_percent(cfg, obj, "slow_call_rate", c->slow_call_rate,
                                   &c->slow_call_rate);
    if (!rc) rc = tr_config_get_duration(cfg, obj, "open", c->open_ms, &c->open_ms);
    if (!rc) rc = get_u32(cfg, obj, "half_open_calls", 1, 1000000, &c->half_open_calls);
    if (!rc)
        rc = tr_config_get_duration(cfg, obj, "half_open_timeout", c->half_open_timeout_ms,
                                    &c->half_open_timeout_ms);
    if (rc) return rc;
    /* The default minimum follows a smaller window; a minimum the user wrote does not. */
    if (c->minimum_calls > c->window_size && !json_object_get(obj, "minimum_calls"))
        c->minimum_calls = c->window_size;
    if (c->minimum_calls > c->window_size)
        return tr_config_fail(cfg, obj, "minimum_calls", "must not exceed window (%u)",
                              c->window_size);
    if (c->half_open_timeout_ms == 0)
        return tr_config_fail(cfg, obj, "half_open_timeout",
                              "must be above 0 (probes that never finish would keep the breaker "
                              "half-open)");
    return 0;
}
