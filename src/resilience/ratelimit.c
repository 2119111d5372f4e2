/* GCRA rate limits shared by all threads: one CAS per decision, and a lock-free keyed table. */
#include "trellis/ratelimit.h"

#include <math.h>
#include <pthread.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <sched.h>
#include <string.h>
#include <sys/random.h>

#include <uv.h>

#include "core/mem.h"

#define NS_PER_MS 1000000ull
#define NS_PER_S  1000000000ull

void tr_ratelimit_config_init(tr_ratelimit_config_t *c)
{
    *c = (tr_ratelimit_config_t){
        .count = 100, .period_ms = 60000, .burst = 0, .key = "", .max_keys = 10000};
}

int tr_ratelimit_init(tr_ratelimit_t *rl, const tr_ratelimit_config_t *c)
{
    if (!(c->count > 0) || c->period_ms == 0) return UV_EINVAL;
    double interval = (double)c->period_ms * NS_PER_MS / c->count;
    double burst_d = c->burst ? c->burst : ceil(c->count);
    if (interval < 1 || burst_d > UINT32_MAX || interval * burst_d > 1e18) return UV_EINVAL;
    uint32_t burst = (uint32_t)burst_d;
    rl->interval_ns = (uint64_t)llround(interval);
    rl->burst = burst;
    rl->tolerance_ns = rl->interval_ns * burst;
    atomic_init(&rl->tat, 0);
    return 0;
}

static uint64_t ceil_s(uint64_t ns)
{
    return (ns + NS_PER_S - 1) / NS_PER_S;
}

/*
 * The GCRA step on one TAT word. Allowing moves the TAT from max(tat, now) one interval on;
 * it is refused when that lands more than `burst` intervals past now. The CAS makes the
 * read-decide-write one atomic step, so concurrent callers each see every earlier grant.
 */
static tr_ratelimit_verdict_t gcra(const tr_ratelimit_t *rl, _Atomic uint64_t *tatp,
                                   uint64_t now_ms, tr_ratelimit_result_t *r)
{
    uint64_t now = now_ms * NS_PER_MS;
    uint64_t tat = atomic_load_explicit(tatp, memory_order_relaxed);
    for (;;) {
        uint64_t next = (tat > now ? tat : now) + rl->interval_ns;
        if (next - now > rl->tolerance_ns) {
            if (r)
                *r = (tr_ratelimit_result_t){
                    .verdict = TR_RATELIMIT_LIMITED,
                    .limit = rl->burst,
                    .remaining = 0,
                    .reset_s = ceil_s(tat - now),
                    .retry_after_s = ceil_s(next - now - rl->tolerance_ns),
                };
            if (r && r->retry_after_s == 0) r->retry_after_s = 1;
            return TR_RATELIMIT_LIMITED;
        }
        if (atomic_compare_exchange_weak_explicit(tatp, &tat, next, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            if (r)
                *r = (tr_ratelimit_result_t){
                    .verdict = TR_RATELIMIT_ALLOWED,
                    .limit = rl->burst,
                    .remaining = (uint32_t)((rl->tolerance_ns - (next - now)) / rl->interval_ns),
                    .reset_s = ceil_s(next - now),
                    .retry_after_s = 0,
                };
            return TR_RATELIMIT_ALLOWED;
        }
    }
}

tr_ratelimit_verdict_t tr_ratelimit_take(tr_ratelimit_t *rl, uint64_t now, tr_ratelimit_result_t *r)
{
    return gcra(rl, &rl->tat, now, r);
}

/* ---- fingerprints: OpenSSL's SipHash-2-4 (128-bit), a keyed PRF, so they cannot be aimed */

static uint64_t load_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/*
 * One MAC context per thread, made on first use: EVP_MAC_init with a key and then
 * update/final do not allocate, so the per-request cost is the hash alone.
 */
static pthread_key_t mac_key;
static pthread_once_t mac_once = PTHREAD_ONCE_INIT;

static void mac_free(void *ctx)
{
    EVP_MAC_CTX_free(ctx);
}

static void mac_key_init(void)
{
    if (pthread_key_create(&mac_key, mac_free) != 0) abort();
}

static void siphash128(const uint8_t key[16], const uint8_t *in, size_t len, uint64_t out[2])
{
    static __thread EVP_MAC_CTX *ctx;
    if (!ctx) {
        EVP_MAC *mac = EVP_MAC_fetch(NULL, "SIPHASH", NULL);
        ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
        EVP_MAC_free(mac);
        if (!ctx) abort(); /* OpenSSL 3 always has SipHash in its default provider */
        /* Freed when the thread exits. */
        pthread_once(&mac_once, mac_key_init);
        pthread_setspecific(mac_key, ctx);
    }
    size_t size = 16, outl = 0;
    OSSL_PARAM params[] = {OSSL_PARAM_construct_size_t(OSSL_MAC_PARAM_SIZE, &size),
                           OSSL_PARAM_construct_end()};
    uint8_t digest[16];
    if (EVP_MAC_init(ctx, key, 16, params) != 1 || EVP_MAC_update(ctx, in, len) != 1 ||
        EVP_MAC_final(ctx, digest, &outl, sizeof(digest)) != 1 || outl != 16)
        abort();
    out[0] = load_le64(digest);
    out[1] = load_le64(digest + 8);
}

/* ---- the keyed table ---- */

/*
 * A slot's word: tag (48 bits of the fingerprint) | state (2 bits) | pins (14 bits).
 * 0 is an empty slot. CLAIMED means one thread is (re)initialising the slot for a key and
 * only that thread writes the word until it publishes or abandons it. PUBLISHED slots are
 * pinned (pins > 0) while a thread updates their bucket; only an unpinned idle slot may be
 * taken over, and the pin count lives in the same word as the tag, so pinning and taking
 * over cannot both succeed.
 */
#define WINDOW      8
#define PIN_MASK    ((1ull << 14) - 1)
#define ST_CLAIMED  (1ull << 14)
#define ST_PUBLISH  (2ull << 14)
#define ST_MASK     (3ull << 14)
#define TAG_OF(w)   ((w) >> 16)
#define STATE_OF(w) ((w)&ST_MASK)

typedef struct slot_s {
    _Atomic uint64_t word;
    _Atomic uint64_t tag2; /* the other 64 bits of the fingerprint */
    _Atomic uint64_t tat;  /* the bucket */
    uint64_t pad;          /* 32-byte slots: two per cache line, never straddling */
} slot_t;

struct tr_ratelimit_table_s {
    tr_ratelimit_t proto; /* the rate (its own tat is unused) */
    uint8_t key[16];      /* SipHash key */
    uint32_t mask;
    _Atomic uint64_t full;
    slot_t *slots;
};

typedef struct probe_s {
    uint64_t tag, tag2;
    uint32_t start;
    uint64_t now_ns;
} probe_t;

tr_ratelimit_table_t *tr_ratelimit_table_new(const tr_ratelimit_config_t *c, uint32_t capacity,
                                             const uint8_t *seed)
{
    tr_ratelimit_t proto;
    if (tr_ratelimit_init(&proto, c) != 0 || capacity > (1u << 30)) return NULL;
    uint32_t n = WINDOW;
    while (n < capacity)
        n <<= 1;
    tr_ratelimit_table_t *t = tr_calloc(1, sizeof(*t));
    t->proto = proto;
    t->mask = n - 1;
    t->slots = tr_calloc(n, sizeof(slot_t));
    uint8_t key[16];
    if (seed) {
        memcpy(key, seed, 16);
    } else if (getrandom(key, sizeof(key), 0) != (ssize_t)sizeof(key)) {
        uint64_t mix[2] = {uv_hrtime(), (uint64_t)(uintptr_t)t};
        memcpy(key, mix, 16);
    }
    memcpy(t->key, key, sizeof(key));
    atomic_init(&t->full, 0);
    return t;
}

void tr_ratelimit_table_free(tr_ratelimit_table_t **t)
{
    if (!*t) return;
    tr_free(&(*t)->slots);
    tr_free(t);
}

uint64_t tr_ratelimit_table_full_count(const tr_ratelimit_table_t *t)
{
    return atomic_load_explicit(&((tr_ratelimit_table_t *)t)->full, memory_order_relaxed);
}

uint32_t tr_ratelimit_table_capacity(const tr_ratelimit_table_t *t)
{
    return t->mask + 1;
}

static slot_t *at(tr_ratelimit_table_t *t, const probe_t *p, int i)
{
    return &t->slots[(p->start + (uint32_t)i) & t->mask];
}

/* Pins the published slot whose word was `w`; false when the word changed meanwhile. */
static bool pin(slot_t *s, uint64_t w)
{
    if ((w & PIN_MASK) == PIN_MASK) return false; /* absurdly many pins: let the caller retry */
    return atomic_compare_exchange_strong(&s->word, &w, w + 1);
}

static void unpin(slot_t *s)
{
    atomic_fetch_sub_explicit(&s->word, 1, memory_order_release);
}

static tr_ratelimit_verdict_t use(tr_ratelimit_table_t *t, slot_t *s, uint64_t now,
                                  tr_ratelimit_result_t *r)
{
    tr_ratelimit_verdict_t v = gcra(&t->proto, &s->tat, now, r);
    unpin(s);
    return v;
}

enum scan { SCAN_NONE, SCAN_USED, SCAN_WAIT, SCAN_RETRY };

/* Phase 1: the key's published slot (used and unpinned on return), or a claim to wait for. */
static enum scan find(tr_ratelimit_table_t *t, const probe_t *p, uint64_t now,
                      tr_ratelimit_result_t *r, tr_ratelimit_verdict_t *v)
{
    for (int i = 0; i < WINDOW; i++) {
        slot_t *s = at(t, p, i);
        uint64_t w = atomic_load(&s->word);
        if (w == 0 || TAG_OF(w) != p->tag) continue;
        if (STATE_OF(w) == ST_CLAIMED) return SCAN_WAIT;
        if (atomic_load(&s->tag2) != p->tag2) continue;
        if (!pin(s, w)) return SCAN_RETRY;
        /* Pinned: the slot cannot change hands now; make sure it did not just before. */
        if (atomic_load(&s->tag2) != p->tag2) {
            unpin(s);
            return SCAN_RETRY;
        }
        *v = use(t, s, now, r);
        return SCAN_USED;
    }
    return SCAN_NONE;
}

/* Phase 2: the slot to claim — the first empty one, else the unpinned idle one idle longest. */
static int pick(tr_ratelimit_table_t *t, const probe_t *p, uint64_t *seen)
{
    int best = -1;
    uint64_t best_tat = UINT64_MAX;
    for (int i = 0; i < WINDOW; i++) {
        slot_t *s = at(t, p, i);
        uint64_t w = atomic_load(&s->word);
        if (w == 0) {
            *seen = 0;
            return i;
        }
        if (STATE_OF(w) != ST_PUBLISH || (w & PIN_MASK)) continue;
        uint64_t tat = atomic_load_explicit(&s->tat, memory_order_relaxed);
        if (tat <= p->now_ns && tat < best_tat) {
            best = i;
            best_tat = tat;
            *seen = w;
        }
    }
    return best;
}

/*
 * Phase 3, after claiming slot `mine`: make sure no other slot holds or is claiming the
 * key. A published copy wins; between two claims the lower position wins, and the lower
 * one waits for the higher to give up or publish. Claims and these loads are sequentially
 * consistent, so of two racing claimers at least one sees the other.
 * Returns true when `mine` may be published.
 */
static bool unique(tr_ratelimit_table_t *t, const probe_t *p, int mine)
{
    for (int i = 0; i < WINDOW; i++) {
        if (i == mine) continue;
        slot_t *s = at(t, p, i);
        for (;;) {
            uint64_t w = atomic_load(&s->word);
            if (w == 0 || TAG_OF(w) != p->tag) break;
            if (STATE_OF(w) == ST_PUBLISH) {
                if (atomic_load(&s->tag2) == p->tag2) return false;
                break;
            }
            if (i < mine) return false;
            sched_yield(); /* a higher claim: wait until it publishes or gives up */
        }
    }
    return true;
}

/* Claims, initialises and publishes a slot for the key; SCAN_USED when it was used. */
static enum scan insert(tr_ratelimit_table_t *t, const probe_t *p, uint64_t now,
                        tr_ratelimit_result_t *r, tr_ratelimit_verdict_t *v)
{
    uint64_t seen = 0;
    int i = pick(t, p, &seen);
    if (i < 0) return SCAN_NONE;
    slot_t *s = at(t, p, i);
    uint64_t claim = (p->tag << 16) | ST_CLAIMED;
    if (!atomic_compare_exchange_strong(&s->word, &seen, claim)) return SCAN_RETRY;
    /* The word may have been pinned and unpinned since pick() (ABA): check idleness again
     * now that nobody can pin it. */
    if (seen && atomic_load(&s->tat) > p->now_ns) {
        atomic_store(&s->word, seen);
        return SCAN_RETRY;
    }
    atomic_store(&s->tag2, p->tag2);
    atomic_store(&s->tat, 0); /* a full bucket */
    if (!unique(t, p, i)) {
        atomic_store(&s->word, 0);
        return SCAN_RETRY;
    }
    atomic_store(&s->word, ((p->tag << 16) | ST_PUBLISH) + 1); /* published, pinned by us */
    *v = use(t, s, now, r);
    return SCAN_USED;
}

tr_ratelimit_verdict_t tr_ratelimit_table_take(tr_ratelimit_table_t *t, const void *key, size_t len,
                                               uint64_t now, tr_ratelimit_result_t *r)
{
    uint64_t h[2];
    siphash128(t->key, key, len, h);
    probe_t p = {
        .tag = h[0] >> 16, .tag2 = h[1], .start = (uint32_t)h[0], .now_ns = now * NS_PER_MS};
    if (p.tag == 0) p.tag = 1;
    tr_ratelimit_verdict_t v = TR_RATELIMIT_LIMITED;
    for (;;) {
        enum scan sc = find(t, &p, now, r, &v);
        if (sc == SCAN_USED) return v;
        if (sc == SCAN_WAIT || sc == SCAN_RETRY) {
            if (sc == SCAN_WAIT) sched_yield();
            continue;
        }
        sc = insert(t, &p, now, r, &v);
        if (sc == SCAN_USED) return v;
        if (sc == SCAN_RETRY) continue;
        atomic_fetch_add_explicit(&t->full, 1, memory_order_relaxed);
        if (r)
            *r = (tr_ratelimit_result_t){.verdict = TR_RATELIMIT_TABLE_FULL,
                                         .limit = t->proto.burst,
                                         .remaining = 0,
                                         .reset_s = 1,
                                         .retry_after_s = 1};
        return TR_RATELIMIT_TABLE_FULL;
    }
}

int tr_ratelimit_config_from_json(tr_config_t *cfg, const json_t *obj, tr_ratelimit_config_t *c)
{
    static const char *const keys[] = {"rate", "burst", "key", "max_keys", NULL};
    tr_ratelimit_config_init(c);
    if (!obj || json_is_null(obj)) return 0;
    if (!json_is_object(obj)) return tr_config_fail(cfg, obj, NULL, "expected a mapping");
    tr_rate_t rate = {c->count, c->period_ms};
    int64_t burst = 0, max_keys = c->max_keys;
    int rc = tr_config_check_keys(cfg, obj, keys);
    if (!rc && !json_object_get(obj, "rate"))
        rc = tr_config_fail(cfg, obj, NULL, "rate is required (like rate: 100/minute)");
    if (!rc) rc = tr_config_get_rate(cfg, obj, "rate", rate, &rate);
    if (!rc) rc = tr_config_get_int(cfg, obj, "burst", 0, 1, UINT32_MAX, &burst);
    if (!rc) rc = tr_config_get_string(cfg, obj, "key", "", &c->key);
    if (!rc) rc = tr_config_get_int(cfg, obj, "max_keys", max_keys, 8, 1 << 30, &max_keys);
    if (rc) return rc;
    c->count = rate.count;
    c->period_ms = rate.per_ms;
    c->burst = (uint32_t)burst;
    c->max_keys = (uint32_t)max_keys;
    tr_ratelimit_t probe;
    if (!(c->count > 0) || tr_ratelimit_init(&probe, c) != 0)
        return tr_config_fail(cfg, obj, "rate",
                              "must allow at least one request and at most "
                              "one per nanosecond");
    return 0;
}
