/* Trace context: random ids, W3C traceparent/tracestate and B3 headers in and out. */
#include "trellis/trace.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "trellis/error.h"
#include "trellis/http.h"

#define TRACESTATE_MAX_MEMBERS 32
#define TRACESTATE_BIG_MEMBER  128

/* ---- hex ---- */

static const char hexdig[] = "0123456789abcdef";

static inline int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

size_t tr_trace_hex_encode(const uint8_t *in, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hexdig[in[i] >> 4];
        out[2 * i + 1] = hexdig[in[i] & 15];
    }
    out[2 * n] = '\0';
    return 2 * n;
}

int tr_trace_hex_decode(const char *hex, size_t n, uint8_t *out)
{
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) return TR_EPARSE;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

bool tr_trace_id_is_zero(const uint8_t *id, size_t n)
{
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++)
        acc |= id[i];
    return acc == 0;
}

static void trim_ows(const char **v, size_t *len)
{
    while (*len > 0 && (**v == ' ' || **v == '\t')) {
        (*v)++;
        (*len)--;
    }
    while (*len > 0 && ((*v)[*len - 1] == ' ' || (*v)[*len - 1] == '\t'))
        (*len)--;
}

/* ---- ids: a per-thread xoshiro256** seeded from getrandom ---- */

static atomic_uint g_fork_gen;
static pthread_once_t g_atfork_once = PTHREAD_ONCE_INIT;

static void on_fork_child(void)
{
    atomic_fetch_add_explicit(&g_fork_gen, 1, memory_order_relaxed);
}

static void install_atfork(void)
{
    pthread_atfork(NULL, NULL, on_fork_child);
}

static __thread uint64_t tl_rng[4];
static __thread unsigned tl_rng_gen;
static __thread bool tl_rng_seeded;

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void rng_seed(void)
{
    pthread_once(&g_atfork_once, install_atfork);
    uint64_t seed[4] = {0};
    ssize_t got = getrandom(seed, sizeof(seed), GRND_NONBLOCK);
    if (got != (ssize_t)sizeof(seed)) {
        /* No entropy yet (early boot): mix time, pid and an address; ids need only be unique. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^
                     ((uint64_t)getpid() << 48) ^ (uint64_t)(uintptr_t)&tl_rng;
        for (int i = 0; i < 4; i++)
            seed[i] ^= splitmix64(&x);
    }
    if ((seed[0] | seed[1] | seed[2] | seed[3]) == 0) seed[0] = 1;
    memcpy(tl_rng, seed, sizeof(seed));
    tl_rng_gen = atomic_load_explicit(&g_fork_gen, memory_order_relaxed);
    tl_rng_seeded = true;
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(void)
{
    if (!tl_rng_seeded || tl_rng_gen != atomic_load_explicit(&g_fork_gen, memory_order_relaxed))
        rng_seed();
    uint64_t *s = tl_rng;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

static uint64_t rng_nonzero(void)
{
    uint64_t v;
    do
        v = rng_next();
    while (v == 0);
    return v;
}

void tr_trace_new_ids(tr_trace_ctx_t *c, bool new_trace)
{
    if (new_trace) {
        uint64_t a = rng_next(), b = rng_nonzero(); /* b != 0 keeps the id non-zero */
        memcpy(c->trace_id, &a, 8);
        memcpy(c->trace_id + 8, &b, 8);
    }
    uint64_t s = rng_nonzero();
    memcpy(c->span_id, &s, 8);
}

/* ---- W3C traceparent ---- */

int tr_trace_parse_traceparent(const char *v, size_t len, tr_trace_ctx_t *out)
{
    if (v == NULL) return TR_EPARSE;
    trim_ows(&v, &len);
    if (len < TR_TRACEPARENT_LEN) return TR_EPARSE;
    uint8_t version, flags, trace[16], span[8];
    if (tr_trace_hex_decode(v, 1, &version) || version == 0xff) return TR_EPARSE;
    if (version == 0 && len != TR_TRACEPARENT_LEN) return TR_EPARSE;
    if (len > TR_TRACEPARENT_LEN && v[TR_TRACEPARENT_LEN] != '-') return TR_EPARSE;
    if (v[2] != '-' || v[35] != '-' || v[52] != '-') return TR_EPARSE;
    if (tr_trace_hex_decode(v + 3, 16, trace) || tr_trace_hex_decode(v + 36, 8, span) ||
        tr_trace_hex_decode(v + 53, 1, &flags))
        return TR_EPARSE;
    if (tr_trace_id_is_zero(trace, 16) || tr_trace_id_is_zero(span, 8)) return TR_EPARSE;
    memcpy(out->trace_id, trace, 16);
    memcpy(out->span_id, span, 8);
    out->flags = flags;
    return 0;
}

size_t tr_trace_format_traceparent(const tr_trace_ctx_t *c, char out[56])
{
    memcpy(out, "00-", 3);
    tr_trace_hex_encode(c->trace_id, 16, out + 3);
    out[35] = '-';
    tr_trace_hex_encode(c->span_id, 8, out + 36);
    out[52] = '-';
    uint8_t f = c->flags & TR_TRACE_FLAG_SAMPLED;
    tr_trace_hex_encode(&f, 1, out + 53);
    return TR_TRACEPARENT_LEN;
}

/* ---- W3C tracestate ---- */

static bool key_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '*' ||
           c == '/';
}

/* simple-key: lcalpha 0*255(...); multi-tenant: tenant (1..241) "@" system (lcalpha, 1..14). */
static bool key_valid(const char *k, size_t n)
{
    const char *at = memchr(k, '@', n);
    if (at == NULL) {
        if (n < 1 || n > 256 || !(k[0] >= 'a' && k[0] <= 'z')) return false;
        for (size_t i = 1; i < n; i++)
            if (!key_char(k[i])) return false;
        return true;
    }
    size_t tn = (size_t)(at - k), sn = n - tn - 1;
    if (tn < 1 || tn > 241 || sn < 1 || sn > 14) return false;
    if (!((k[0] >= 'a' && k[0] <= 'z') || (k[0] >= '0' && k[0] <= '9'))) return false;
    for (size_t i = 1; i < tn; i++)
        if (!key_char(k[i])) return false;
    if (!(at[1] >= 'a' && at[1] <= 'z')) return false;
    for (size_t i = 1; i < sn; i++)
        if (!key_char(at[1 + i])) return false;
    return true;
}

/* value: 1..256 of 0x20-0x7e except ',' and '=', not ending in a space. */
static bool value_valid(const char *v, size_t n)
{
    if (n < 1 || n > 256 || v[n - 1] == ' ') return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c < 0x20 || c > 0x7e || c == ',' || c == '=') return false;
    }
    return true;
}

typedef struct member_s {
    const char *p;
    size_t len, klen;
} member_t;

/* Splits and validates; returns the member count or -1 for an invalid header. */
static int split_members(const char *v, size_t len, member_t *m)
{
    int n = 0;
    size_t i = 0;
    while (i <= len) {
        const char *comma = memchr(v + i, ',', len - i);
        size_t end = comma ? (size_t)(comma - v) : len;
        const char *p = v + i;
        size_t plen = end - i;
        trim_ows(&p, &plen);
        if (plen > 0) {
            if (n == TRACESTATE_MAX_MEMBERS) return -1;
            const char *eq = memchr(p, '=', plen);
            if (eq == NULL) return -1;
            size_t klen = (size_t)(eq - p);
            if (!key_valid(p, klen) || !value_valid(eq + 1, plen - klen - 1)) return -1;
            for (int j = 0; j < n; j++)
                if (m[j].klen == klen && memcmp(m[j].p, p, klen) == 0) return -1;
            m[n++] = (member_t){p, plen, klen};
        }
        i = end + 1;
    }
    return n;
}

int tr_trace_parse_tracestate(const char *v, size_t len, tr_trace_ctx_t *out)
{
    out->tracestate[0] = '\0';
    if (v == NULL || len == 0) return 0;
    member_t m[TRACESTATE_MAX_MEMBERS];
    int n = split_members(v, len, m);
    if (n < 0) return TR_EPARSE;
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += m[i].len + (i > 0);
    bool keep[TRACESTATE_MAX_MEMBERS];
    for (int i = 0; i < n; i++)
        keep[i] = true;
    /* Too long: drop members over 128 characters first, then members from the end. The
     * running total may count one comma too many, which only errs towards dropping. */
    for (int i = 0; i < n && total >= sizeof(out->tracestate); i++) {
        if (m[i].len <= TRACESTATE_BIG_MEMBER) continue;
        keep[i] = false;
        total = total > m[i].len ? total - m[i].len - 1 : 0;
    }
    for (int i = n - 1; i >= 0 && total >= sizeof(out->tracestate); i--) {
        if (!keep[i]) continue;
        keep[i] = false;
        total = total > m[i].len ? total - m[i].len - 1 : 0;
    }
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        if (!keep[i]) continue;
        if (o > 0) out->tracestate[o++] = ',';
        memcpy(out->tracestate + o, m[i].p, m[i].len);
        o += m[i].len;
    }
    out->tracestate[o] = '\0';
    return 0;
}

/* ---- B3 ---- */

static int parse_b3_trace_id(const char *p, size_t n, uint8_t out[16])
{
    if (n != 16 && n != 32) return TR_EPARSE;
    memset(out, 0, 16);
    if (tr_trace_hex_decode(p, n / 2, out + 16 - n / 2)) return TR_EPARSE;
    return tr_trace_id_is_zero(out, 16) ? TR_EPARSE : 0;
}

static int parse_b3_span_id(const char *p, size_t n, uint8_t out[8])
{
    if (n != 16 || tr_trace_hex_decode(p, 8, out)) return TR_EPARSE;
    return tr_trace_id_is_zero(out, 8) ? TR_EPARSE : 0;
}

/* "0" → 0, "1" or "d" → sampled; -1 otherwise. */
static int b3_sampled(const char *p, size_t n)
{
    if (n != 1) return -1;
    return p[0] == '0' ? 0 : (p[0] == '1' || p[0] == 'd') ? 1 : -1;
}

static void ctx_reset(tr_trace_ctx_t *out)
{
    memset(out->trace_id, 0, sizeof(out->trace_id));
    memset(out->span_id, 0, sizeof(out->span_id));
    out->flags = 0;
    out->tracestate[0] = '\0';
}

int tr_trace_parse_b3_single(const char *v, size_t len, tr_trace_ctx_t *out)
{
    if (v == NULL) return TR_EPARSE;
    trim_ows(&v, &len);
    int s = b3_sampled(v, len);
    if (s >= 0) {
        ctx_reset(out);
        out->flags = s ? TR_TRACE_HINT_ACCEPT : TR_TRACE_HINT_DENY;
        return 1;
    }
    const char *f[4];
    size_t fl[4], nf = 0, start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && v[i] != '-') continue;
        if (nf == 4) return TR_EPARSE;
        f[nf] = v + start;
        fl[nf++] = i - start;
        start = i + 1;
    }
    if (nf < 2) return TR_EPARSE;
    tr_trace_ctx_t c;
    if (parse_b3_trace_id(f[0], fl[0], c.trace_id) || parse_b3_span_id(f[1], fl[1], c.span_id))
        return TR_EPARSE;
    c.flags = 0;
    if (nf >= 3) {
        s = b3_sampled(f[2], fl[2]);
        if (s < 0) return TR_EPARSE;
        c.flags = s ? TR_TRACE_FLAG_SAMPLED : 0;
    }
    uint8_t parent[8];
    if (nf == 4 && parse_b3_span_id(f[3], fl[3], parent)) return TR_EPARSE;
    ctx_reset(out);
    memcpy(out->trace_id, c.trace_id, 16);
    memcpy(out->span_id, c.span_id, 8);
    out->flags = c.flags;
    return 0;
}

/* X-B3-Sampled: "1"/"0"/"true"/"false" → 1/0, else -1. */
static int b3_multi_sampled(const char *s)
{
    if (strcmp(s, "1") == 0 || strcasecmp(s, "true") == 0) return 1;
    if (strcmp(s, "0") == 0 || strcasecmp(s, "false") == 0) return 0;
    return -1;
}

int tr_trace_parse_b3_multi(const char *trace_id, const char *span_id, const char *sampled,
                            const char *flags, tr_trace_ctx_t *out)
{
    int s = -1;
    if (flags && strcmp(flags, "1") == 0)
        s = 1; /* debug implies sampled */
    else if (sampled && (s = b3_multi_sampled(sampled)) < 0)
        return TR_EPARSE;
    if (trace_id == NULL && span_id == NULL) {
        if (s < 0) return TR_EPARSE;
        ctx_reset(out);
        out->flags = s ? TR_TRACE_HINT_ACCEPT : TR_TRACE_HINT_DENY;
        return 1;
    }
    if (trace_id == NULL || span_id == NULL) return TR_EPARSE;
    uint8_t t[16], sp[8];
    if (parse_b3_trace_id(trace_id, strlen(trace_id), t) ||
        parse_b3_span_id(span_id, strlen(span_id), sp))
        return TR_EPARSE;
    ctx_reset(out);
    memcpy(out->trace_id, t, 16);
    memcpy(out->span_id, sp, 8);
    out->flags = s == 1 ? TR_TRACE_FLAG_SAMPLED : 0;
    return 0;
}

/* ---- extraction ---- */

static bool name_is(const tr_http_header_t *h, const char *name, size_t n)
{
    return h->name_len == n && strncasecmp(h->name, name, n) == 0;
}
#define NAME_IS(h, lit) name_is((h), (lit), sizeof(lit) - 1)

typedef struct found_s {
    const tr_http_header_t *tp, *b3, *b3_trace, *b3_span, *b3_sampled, *b3_flags;
    int ntp;
    const tr_http_header_t *ts[TRACESTATE_MAX_MEMBERS];
    int nts;
} found_t;

static void scan_headers(const tr_http_header_t *h, size_t n, found_t *f)
{
    memset(f, 0, sizeof(*f));
    for (size_t i = 0; i < n; i++) {
        if (h[i].name_len < 2) continue;
        if (NAME_IS(&h[i], "traceparent")) {
            f->tp = &h[i];
            f->ntp++;
        } else if (NAME_IS(&h[i], "tracestate")) {
            if (f->nts < TRACESTATE_MAX_MEMBERS) f->ts[f->nts] = &h[i];
            f->nts++;
        } else if (NAME_IS(&h[i], "b3")) {
            if (f->b3 == NULL) f->b3 = &h[i];
        } else if (NAME_IS(&h[i], "x-b3-traceid")) {
            f->b3_trace = &h[i];
        } else if (NAME_IS(&h[i], "x-b3-spanid")) {
            f->b3_span = &h[i];
        } else if (NAME_IS(&h[i], "x-b3-sampled")) {
            f->b3_sampled = &h[i];
        } else if (NAME_IS(&h[i], "x-b3-flags")) {
            f->b3_flags = &h[i];
        }
    }
}

/* Several tracestate headers form one list (RFC 9110 field combination). */
static void extract_tracestate(const found_t *f, tr_trace_ctx_t *parent)
{
    parent->tracestate[0] = '\0';
    if (f->nts == 0) return;
    if (f->nts == 1) {
        tr_trace_parse_tracestate(f->ts[0]->value, f->ts[0]->value_len, parent);
        return;
    }
    if (f->nts > TRACESTATE_MAX_MEMBERS) return; /* more headers than members allowed */
    char joined[TRACESTATE_MAX_MEMBERS * 520];
    size_t o = 0;
    for (int i = 0; i < f->nts; i++) {
        size_t l = f->ts[i]->value_len;
        if (o + l + 1 > sizeof(joined)) return; /* can't be valid: 32 members of ≤ 512 */
        if (i > 0) joined[o++] = ',';
        memcpy(joined + o, f->ts[i]->value, l);
        o += l;
    }
    tr_trace_parse_tracestate(joined, o, parent);
}

static const char *hval(const tr_http_header_t *h)
{
    return h ? h->value : NULL;
}

void tr_trace_extract(const tr_http_header_t *headers, size_t n, tr_trace_ctx_t *parent,
                      bool *has_parent)
{
    found_t f;
    scan_headers(headers, n, &f);
    ctx_reset(parent);
    *has_parent = false;
    if (f.tp) {
        if (f.ntp == 1 && tr_trace_parse_traceparent(f.tp->value, f.tp->value_len, parent) == 0) {
            extract_tracestate(&f, parent);
            *has_parent = true;
        } else {
            ctx_reset(parent);
        }
        return;
    }
    int rc = TR_EPARSE;
    if (f.b3) rc = tr_trace_parse_b3_single(f.b3->value, f.b3->value_len, parent);
    if (rc < 0 && (f.b3_trace || f.b3_span || f.b3_sampled || f.b3_flags))
        rc = tr_trace_parse_b3_multi(hval(f.b3_trace), hval(f.b3_span), hval(f.b3_sampled),
                                     hval(f.b3_flags), parent);
    if (rc < 0) ctx_reset(parent);
    *has_parent = rc == 0;
}
