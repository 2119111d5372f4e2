/* JWT verification with OpenSSL 3: key sets from PEM and JWKS, pinned algorithms, a cache. */
#include "gateway/jwt.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <uv.h>

#include "core/mem.h"
#include "trellis/error.h"

#define MAX_DECODED  (TR_JWT_MAX_TOKEN_BYTES / 4 * 3 + 3)
#define MAX_SIG      1024 /* an RSA-8192 signature; ECDSA and HMAC are far smaller */
#define MIN_RSA_BITS 2048

enum family { FAM_HMAC, FAM_RSA, FAM_PSS, FAM_EC };

static const struct alg_info {
    const char *name;
    enum family fam;
    const char *md;    /* digest name */
    size_t size;       /* HMAC/hash output bytes; for ECDSA the coordinate size */
    const char *curve; /* EC only, OpenSSL group name */
} algs[TR_JWT_ALG_COUNT] = {
    [TR_JWT_HS256] = {"HS256", FAM_HMAC, "SHA256", 32, NULL},
    [TR_JWT_HS384] = {"HS384", FAM_HMAC, "SHA384", 48, NULL},
    [TR_JWT_HS512] = {"HS512", FAM_HMAC, "SHA512", 64, NULL},
    [TR_JWT_RS256] = {"RS256", FAM_RSA, "SHA256", 32, NULL},
    [TR_JWT_RS384] = {"RS384", FAM_RSA, "SHA384", 48, NULL},
    [TR_JWT_RS512] = {"RS512", FAM_RSA, "SHA512", 64, NULL},
    [TR_JWT_PS256] = {"PS256", FAM_PSS, "SHA256", 32, NULL},
    [TR_JWT_ES256] = {"ES256", FAM_EC, "SHA256", 32, "prime256v1"},
    [TR_JWT_ES384] = {"ES384", FAM_EC, "SHA384", 48, "secp384r1"},
};

typedef struct jwt_key_s {
    char *kid; /* NULL when the key has none */
    tr_jwt_alg_t alg;
    EVP_MD *md;            /* fetched once: a lookup by name per verify takes a lock */
    EVP_PKEY *pkey;        /* RSA and EC */
    unsigned char *secret; /* HMAC */
    size_t secret_len;
} jwt_key_t;

struct tr_jwt_keyset_s {
    atomic_uint refs;
    uint64_t gen; /* unique per set, so cache entries never outlive a key rotation */
    size_t n, cap;
    jwt_key_t *keys;
};

typedef struct cache_entry_s {
    unsigned char hash[32];
    uint64_t gen; /* 0 = empty */
    json_t *payload;
} cache_entry_t;

struct tr_jwt_cache_s {
    EVP_MD *sha256; /* fetched once, as for keys */
    size_t mask;
    uint64_t hits, misses;
    cache_entry_t *slots;
};

static atomic_uint_fast64_t next_gen = 1;

/* ---- algorithms */

int tr_jwt_alg_parse(const char *name)
{
    for (int i = 0; name && i < TR_JWT_ALG_COUNT; i++)
        if (strcmp(algs[i].name, name) == 0) return i;
    return TR_EUNSUPPORTED;
}

const char *tr_jwt_alg_name(tr_jwt_alg_t alg)
{
    return (unsigned)alg < TR_JWT_ALG_COUNT ? algs[alg].name : "unknown";
}

/* ---- base64url */

static int b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-' || c == '_') return 62;
    return -1;
}

int tr_jwt_base64url_decode(const char *in, size_t len, unsigned char *out, size_t outcap)
{
    while (len > 0 && in[len - 1] == '=' && len % 4 != 1)
        len--;
    if (len % 4 == 1) return TR_EPARSE;
    size_t pad = (4 - len % 4) % 4;
    size_t dec = len / 4 * 3 + (len % 4 ? len % 4 - 1 : 0);
    if (dec > outcap) return TR_ETOOLARGE;
    if (len == 0) return 0;
    /* EVP_DecodeBlock wants the standard alphabet with padding, and writes whole groups. */
    size_t need = len + pad, total = need + need / 4 * 3;
    unsigned char stackbuf[TR_JWT_MAX_TOKEN_BYTES + MAX_DECODED + 8];
    unsigned char *heap = NULL, *std = stackbuf;
    if (total > sizeof(stackbuf)) {
        heap = std = tr_try_malloc(total);
        if (heap == NULL) return TR_ETOOLARGE;
    }
    unsigned char *raw = std + need;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (b64url_value(c) < 0) {
            free(heap);
            return TR_EPARSE;
        }
        std[i] = c == '-' ? '+' : c == '_' ? '/' : c;
    }
    memset(std + len, '=', pad);
    int n = EVP_DecodeBlock(raw, std, (int)need);
    if (n < 0 || (size_t)n < dec) {
        free(heap);
        return TR_EPARSE;
    }
    memcpy(out, raw, dec);
    free(heap);
    return (int)dec;
}

/* ---- key sets */

tr_jwt_keyset_t *tr_jwt_keyset_new(void)
{
    tr_jwt_keyset_t *set = tr_calloc(1, sizeof(*set));
    atomic_init(&set->refs, 1);
    set->gen = atomic_fetch_add_explicit(&next_gen, 1, memory_order_relaxed);
    return set;
}

tr_jwt_keyset_t *tr_jwt_keyset_retain(tr_jwt_keyset_t *set)
{
    atomic_fetch_add_explicit(&set->refs, 1, memory_order_relaxed);
    return set;
}

void tr_jwt_keyset_release(tr_jwt_keyset_t *set)
{
    if (set == NULL) return;
    if (atomic_fetch_sub_explicit(&set->refs, 1, memory_order_acq_rel) != 1) return;
    for (size_t i = 0; i < set->n; i++) {
        jwt_key_t *k = &set->keys[i];
        free(k->kid);
        EVP_MD_free(k->md);
        EVP_PKEY_free(k->pkey);
        if (k->secret) OPENSSL_cleanse(k->secret, k->secret_len);
        free(k->secret);
    }
    free(set->keys);
    free(set);
}

size_t tr_jwt_keyset_count(const tr_jwt_keyset_t *set)
{
    return set ? set->n : 0;
}

bool tr_jwt_keyset_has_kid(const tr_jwt_keyset_t *set, const char *kid)
{
    for (size_t i = 0; set && kid && i < set->n; i++)
        if (set->keys[i].kid && strcmp(set->keys[i].kid, kid) == 0) return true;
    return false;
}

static jwt_key_t *key_push(tr_jwt_keyset_t *set, const char *kid, tr_jwt_alg_t alg)
{
    if (set->n == set->cap) {
        set->cap = set->cap ? set->cap * 2 : 4;
        set->keys = tr_realloc(set->keys, set->cap * sizeof(*set->keys));
    }
    jwt_key_t *k = &set->keys[set->n++];
    memset(k, 0, sizeof(*k));
    k->kid = kid ? tr_strdup(kid) : NULL;
    k->alg = alg;
    k->md = EVP_MD_fetch(NULL, algs[alg].md, NULL);
    if (k->md == NULL) abort(); /* SHA-2 missing means a broken OpenSSL install */
    return k;
}

/* Whether a public key can serve `alg`: the right type, curve and size. */
static bool pkey_fits(EVP_PKEY *pkey, tr_jwt_alg_t alg)
{
    const struct alg_info *a = &algs[alg];
    if (a->fam == FAM_RSA || a->fam == FAM_PSS)
        return (EVP_PKEY_is_a(pkey, "RSA") ||
                (a->fam == FAM_PSS && EVP_PKEY_is_a(pkey, "RSA-PSS"))) &&
               EVP_PKEY_get_bits(pkey) >= MIN_RSA_BITS;
    if (a->fam != FAM_EC || !EVP_PKEY_is_a(pkey, "EC")) return false;
    char group[64];
    size_t glen = 0;
    if (!EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                        &glen))
        return false;
    return OBJ_sn2nid(group) == OBJ_sn2nid(a->curve);
}

static int add_pkey(tr_jwt_keyset_t *set, const char *kid, tr_jwt_alg_t alg, EVP_PKEY *pkey)
{
    if ((unsigned)alg >= TR_JWT_ALG_COUNT || !pkey_fits(pkey, alg)) {
        EVP_PKEY_free(pkey);
        return TR_EUNSUPPORTED;
    }
    key_push(set, kid, alg)->pkey = pkey;
    return 0;
}

int tr_jwt_keyset_add_pem(tr_jwt_keyset_t *set, const char *kid, tr_jwt_alg_t alg, const char *pem,
                          size_t len)
{
    if (len > INT32_MAX) return TR_ETOOLARGE;
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    if (bio == NULL) return TR_EPARSE;
    EVP_PKEY *pkey = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (pkey == NULL) return TR_EPARSE;
    return add_pkey(set, kid, alg, pkey);
}

int tr_jwt_keyset_add_hmac(tr_jwt_keyset_t *set, const char *kid, tr_jwt_alg_t alg,
                           const void *secret, size_t len)
{
    if ((unsigned)alg >= TR_JWT_ALG_COUNT || algs[alg].fam != FAM_HMAC || len < algs[alg].size)
        return TR_EUNSUPPORTED;
    jwt_key_t *k = key_push(set, kid, alg);
    k->secret = tr_malloc(len);
    memcpy(k->secret, secret, len);
    k->secret_len = len;
    return 0;
}

int tr_jwt_keyset_from_pem(tr_jwt_alg_t alg, const char *kid, const char *pem, size_t len,
                           tr_jwt_keyset_t **out)
{
    tr_jwt_keyset_t *set = tr_jwt_keyset_new();
    int err = tr_jwt_keyset_add_pem(set, kid, alg, pem, len);
    if (err) {
        tr_jwt_keyset_release(set);
        set = NULL;
    }
    *out = set;
    return err;
}

/* ---- JWK */

/* Decodes a base64url JWK member into a fresh buffer; NULL when absent or bad. */
static unsigned char *jwk_bytes(const json_t *jwk, const char *name, size_t *len)
{
    const char *s = json_string_value(json_object_get(jwk, name));
    if (s == NULL) return NULL;
    size_t slen = strlen(s);
    if (slen == 0 || slen > 16384) return NULL;
    unsigned char *buf = tr_malloc(slen / 4 * 3 + 3);
    int n = tr_jwt_base64url_decode(s, slen, buf, slen / 4 * 3 + 3);
    if (n <= 0) {
        free(buf);
        return NULL;
    }
    *len = (size_t)n;
    return buf;
}

static EVP_PKEY *pkey_fromdata(const char *type, OSSL_PARAM_BLD *bld)
{
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    EVP_PKEY *pkey = NULL;
    if (params == NULL || ctx == NULL || EVP_PKEY_fromdata_init(ctx) <= 0 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        pkey = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    return pkey;
}

static EVP_PKEY *jwk_rsa(const json_t *jwk)
{
    size_t nlen = 0, elen = 0;
    unsigned char *n = jwk_bytes(jwk, "n", &nlen), *e = jwk_bytes(jwk, "e", &elen);
    BIGNUM *bn = n ? BN_bin2bn(n, (int)nlen, NULL) : NULL;
    BIGNUM *be = e ? BN_bin2bn(e, (int)elen, NULL) : NULL;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    EVP_PKEY *pkey = NULL;
    if (bn && be && bld && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be))
        pkey = pkey_fromdata("RSA", bld);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    free(n);
    free(e);
    return pkey;
}

/* EC public key from crv/x/y; x and y must be full-length coordinates (RFC 7518 6.2.1.2). */
static EVP_PKEY *jwk_ec(const json_t *jwk, tr_jwt_alg_t alg)
{
    const struct alg_info *a = &algs[alg];
    size_t xlen = 0, ylen = 0;
    unsigned char *x = jwk_bytes(jwk, "x", &xlen), *y = jwk_bytes(jwk, "y", &ylen);
    unsigned char point[1 + 2 * 48];
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    if (x && y && bld && xlen == a->size && ylen == a->size) {
        point[0] = 0x04; /* uncompressed */
        memcpy(point + 1, x, xlen);
        memcpy(point + 1 + xlen, y, ylen);
        if (OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, a->curve, 0) &&
            OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, 1 + 2 * xlen))
            pkey = pkey_fromdata("EC", bld);
    }
    OSSL_PARAM_BLD_free(bld);
    free(x);
    free(y);
    return pkey;
}

/* The algorithm a JWK is pinned to: its "alg", else one implied by kty/crv. */
static int jwk_alg(const json_t *jwk, const char *kty)
{
    const json_t *alg = json_object_get(jwk, "alg");
    if (alg) return json_is_string(alg) ? tr_jwt_alg_parse(json_string_value(alg)) : TR_EPARSE;
    if (strcmp(kty, "RSA") == 0) return TR_JWT_RS256;
    if (strcmp(kty, "oct") == 0) return TR_JWT_HS256;
    const char *crv = json_string_value(json_object_get(jwk, "crv"));
    if (strcmp(kty, "EC") == 0 && crv && strcmp(crv, "P-256") == 0) return TR_JWT_ES256;
    if (strcmp(kty, "EC") == 0 && crv && strcmp(crv, "P-384") == 0) return TR_JWT_ES384;
    return TR_EUNSUPPORTED;
}

/* Adds one JWK to `set`; returns 0 or a static reason it was skipped. */
static const char *jwk_add(tr_jwt_keyset_t *set, const json_t *jwk)
{
    if (!json_is_object(jwk)) return "key is not an object";
    const char *kty = json_string_value(json_object_get(jwk, "kty"));
    if (kty == NULL) return "key has no kty";
    const json_t *use = json_object_get(jwk, "use");
    if (use && !(json_is_string(use) && strcmp(json_string_value(use), "sig") == 0))
        return "key is not for signatures";
    const json_t *kidj = json_object_get(jwk, "kid");
    if (kidj && !json_is_string(kidj)) return "kid is not a string";
    const char *kid = json_string_value(kidj);
    int alg = jwk_alg(jwk, kty);
    if (alg < 0) return "unsupported alg";
    enum family fam = algs[alg].fam;
    if (fam == FAM_HMAC) {
        if (strcmp(kty, "oct") != 0) return "alg does not match kty";
        size_t klen = 0;
        unsigned char *k = jwk_bytes(jwk, "k", &klen);
        int err = k ? tr_jwt_keyset_add_hmac(set, kid, (tr_jwt_alg_t)alg, k, klen) : TR_EPARSE;
        if (k) OPENSSL_cleanse(k, klen);
        free(k);
        return err ? "bad or short oct key" : NULL;
    }
    EVP_PKEY *pkey = NULL;
    if ((fam == FAM_RSA || fam == FAM_PSS) && strcmp(kty, "RSA") == 0)
        pkey = jwk_rsa(jwk);
    else if (fam == FAM_EC && strcmp(kty, "EC") == 0)
        pkey = jwk_ec(jwk, (tr_jwt_alg_t)alg);
    else
        return "alg does not match kty";
    if (pkey == NULL) return "bad key parameters";
    return add_pkey(set, kid, (tr_jwt_alg_t)alg, pkey) ? "key does not fit its alg" : NULL;
}

int tr_jwt_keyset_from_jwks(const char *json, size_t len, tr_jwt_keyset_t **out, char *err,
                            size_t errlen)
{
    char dummy[1];
    if (err == NULL || errlen == 0) err = dummy, errlen = sizeof(dummy);
    err[0] = '\0';
    *out = NULL;
    if (len > (8u << 20)) {
        snprintf(err, errlen, "JWKS document larger than 8 MiB");
        return TR_ETOOLARGE;
    }
    json_error_t jerr;
    json_t *doc = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    json_t *keys = json_object_get(doc, "keys");
    if (!json_is_array(keys)) {
        snprintf(err, errlen, "%s", doc ? "JWKS has no \"keys\" array" : jerr.text);
        json_decref(doc);
        return TR_EPARSE;
    }
    tr_jwt_keyset_t *set = tr_jwt_keyset_new();
    size_t i;
    json_t *jwk;
    json_array_foreach(keys, i, jwk)
    {
        const char *why = jwk_add(set, jwk);
        if (why && err[0] == '\0') snprintf(err, errlen, "keys[%zu]: %s", i, why);
    }
    json_decref(doc);
    if (set->n == 0) {
        if (err[0] == '\0') snprintf(err, errlen, "JWKS holds no keys");
        tr_jwt_keyset_release(set);
        return TR_EPARSE;
    }
    *out = set;
    return 0;
}

/* ---- cache */

tr_jwt_cache_t *tr_jwt_cache_new(size_t entries)
{
    size_t n = 1;
    if (entries == 0) entries = 1024;
    while (n < entries && n < ((size_t)1 << 24))
        n <<= 1;
    tr_jwt_cache_t *c = tr_calloc(1, sizeof(*c));
    c->slots = tr_calloc(n, sizeof(*c->slots));
    c->mask = n - 1;
    c->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (c->sha256 == NULL) abort();
    return c;
}

void tr_jwt_cache_free(tr_jwt_cache_t *cache)
{
    if (cache == NULL) return;
    for (size_t i = 0; i <= cache->mask; i++)
        json_decref(cache->slots[i].payload);
    free(cache->slots);
    EVP_MD_free(cache->sha256);
    free(cache);
}

void tr_jwt_cache_stats(const tr_jwt_cache_t *cache, uint64_t *hits, uint64_t *misses)
{
    *hits = cache ? cache->hits : 0;
    *misses = cache ? cache->misses : 0;
}

static cache_entry_t *cache_slot(tr_jwt_cache_t *c, const unsigned char hash[32])
{
    size_t idx;
    memcpy(&idx, hash, sizeof(idx));
    return &c->slots[idx & c->mask];
}

/* ---- verification */

void tr_jwt_verifier_set_keys(tr_jwt_verifier_t *v, tr_jwt_keyset_t *set)
{
    tr_jwt_keyset_t *old = v->keys;
    v->keys = set ? tr_jwt_keyset_retain(set) : NULL;
    tr_jwt_keyset_release(old);
}

void tr_jwt_claims_clear(tr_jwt_claims_t *c)
{
    json_decref(c->payload);
    memset(c, 0, sizeof(*c));
}

static bool verify_hmac(const jwt_key_t *k, const char *input, size_t ilen,
                        const unsigned char *sig, size_t slen)
{
    const struct alg_info *a = &algs[k->alg];
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned maclen = 0;
    if (slen != a->size || !HMAC(k->md, k->secret, (int)k->secret_len, (const unsigned char *)input,
                                 ilen, mac, &maclen))
        return false;
    return maclen == slen && CRYPTO_memcmp(mac, sig, slen) == 0;
}

/* JWS carries ECDSA as fixed-size r||s; OpenSSL verifies DER. */
static int ecdsa_to_der(const struct alg_info *a, const unsigned char *sig, size_t slen,
                        unsigned char *der, size_t dercap)
{
    if (slen != 2 * a->size) return -1;
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, (int)a->size, NULL),
           *s = BN_bin2bn(sig + a->size, (int)a->size, NULL);
    if (es == NULL || r == NULL || s == NULL || !ECDSA_SIG_set0(es, r, s)) {
        BN_free(r);
        BN_free(s);
        ECDSA_SIG_free(es);
        return -1;
    }
    int n = i2d_ECDSA_SIG(es, NULL);
    if (n > 0 && (size_t)n <= dercap)
        n = i2d_ECDSA_SIG(es, &der);
    else
        n = -1;
    ECDSA_SIG_free(es);
    return n;
}

static bool verify_pkey(const jwt_key_t *k, const char *input, size_t ilen,
                        const unsigned char *sig, size_t slen)
{
    const struct alg_info *a = &algs[k->alg];
    unsigned char der[2 * 48 + 16];
    if (a->fam == FAM_EC) {
        int n = ecdsa_to_der(a, sig, slen, der, sizeof(der));
        if (n <= 0) return false;
        sig = der;
        slen = (size_t)n;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    bool ok = ctx && EVP_DigestVerifyInit(ctx, &pctx, k->md, NULL, k->pkey) > 0;
    if (ok && a->fam == FAM_PSS)
        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) > 0 &&
             EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) > 0;
    ok = ok && EVP_DigestVerify(ctx, sig, slen, (const unsigned char *)input, ilen) == 1;
    EVP_MD_CTX_free(ctx);
    return ok;
}

static bool verify_key(const jwt_key_t *k, const char *input, size_t ilen, const unsigned char *sig,
                       size_t slen)
{
    return algs[k->alg].fam == FAM_HMAC ? verify_hmac(k, input, ilen, sig, slen)
                                        : verify_pkey(k, input, ilen, sig, slen);
}

/* The three parts of a compact JWS. */
typedef struct parts_s {
    const char *p[3];
    size_t len[3];
    size_t n;
} parts_t;

/* Splits at the dots; n is the number of parts (more than 3 means malformed). */
static void split(const char *token, size_t len, parts_t *parts)
{
    const char *start = token, *end = token + len;
    parts->n = 0;
    for (;;) {
        const char *dot = memchr(start, '.', (size_t)(end - start));
        const char *stop = dot ? dot : end;
        if (parts->n < 3) {
            parts->p[parts->n] = start;
            parts->len[parts->n] = (size_t)(stop - start);
        }
        parts->n++;
        if (dot == NULL) return;
        start = dot + 1;
    }
}

static json_t *decode_json(const char *b64, size_t len)
{
    unsigned char buf[MAX_DECODED];
    int n = tr_jwt_base64url_decode(b64, len, buf, sizeof(buf));
    if (n <= 0) return NULL;
    json_t *j = json_loadb((const char *)buf, (size_t)n, JSON_REJECT_DUPLICATES, NULL);
    if (j && !json_is_object(j)) {
        json_decref(j);
        j = NULL;
    }
    return j;
}

/*
 * Parses the header into *alg and *kid (borrowed from *hdr). Returns NULL or a reason.
 */
static const char *parse_header(const parts_t *parts, json_t **hdr, int *alg, const char **kid)
{
    *hdr = decode_json(parts->p[0], parts->len[0]);
    if (*hdr == NULL) return "malformed token";
    const json_t *a = json_object_get(*hdr, "alg"), *k = json_object_get(*hdr, "kid");
    if (!json_is_string(a) || (k && !json_is_string(k))) return "malformed token";
    const char *name = json_string_value(a);
    if (strcasecmp(name, "none") == 0) return "algorithm none not allowed";
    /* RFC 7515 4.1.11: an extension we do not understand must not be ignored. */
    if (json_object_get(*hdr, "crit")) return "unsupported critical header";
    if (parts->n != 3) return "malformed token";
    *alg = tr_jwt_alg_parse(name);
    if (*alg < 0) return "algorithm not supported";
    *kid = json_string_value(k);
    return NULL;
}

static bool has_anonymous(const tr_jwt_keyset_t *set)
{
    for (size_t i = 0; set && i < set->n; i++)
        if (set->keys[i].kid == NULL) return true;
    return false;
}

/* Checks the signature with the key the header selects. Returns NULL or a reason. */
static const char *check_signature(const tr_jwt_keyset_t *set, const parts_t *parts, int alg,
                                   const char *kid)
{
    unsigned char sig[MAX_SIG];
    int slen = tr_jwt_base64url_decode(parts->p[2], parts->len[2], sig, sizeof(sig));
    if (slen == TR_EPARSE) return "malformed token";
    if (slen <= 0) return "signature invalid";
    const char *input = parts->p[0];
    size_t ilen = parts->len[0] + 1 + parts->len[1];
    /* A key configured without a kid (a PEM file) serves tokens that name any kid that is
     * not in the set, so an issuer adding kids does not break a static configuration. */
    bool named = kid && tr_jwt_keyset_has_kid(set, kid), alg_seen = false;
    for (size_t i = 0; set && i < set->n; i++) {
        const jwt_key_t *k = &set->keys[i];
        if (named && strcmp(k->kid ? k->kid : "", kid) != 0) continue;
        if (kid && !named && k->kid) continue;
        if ((int)k->alg != alg) continue;
        alg_seen = true;
        if (verify_key(k, input, ilen, sig, (size_t)slen)) return NULL;
    }
    if (kid && !named && !has_anonymous(set)) return "unknown kid";
    if (!alg_seen) return kid ? "algorithm not allowed for key" : "no key for algorithm";
    return "signature invalid";
}

static bool in_list(const char *s, const char *const *list, size_t n)
{
    for (size_t i = 0; s && i < n; i++)
        if (strcmp(s, list[i]) == 0) return true;
    return false;
}

static bool aud_allowed(const tr_jwt_verifier_t *v, const json_t *aud)
{
    if (json_is_string(aud)) return in_list(json_string_value(aud), v->audiences, v->naudiences);
    size_t i;
    const json_t *a;
    json_array_foreach(aud, i, a)
    {
        if (in_list(json_string_value(a), v->audiences, v->naudiences)) return true;
    }
    return false;
}

/* A NumericDate claim (RFC 7519 2): absent is fine, otherwise a non-negative number. */
static bool numeric_date(const json_t *payload, const char *name, bool *present, double *out)
{
    const json_t *j = json_object_get(payload, name);
    *present = j != NULL;
    if (j == NULL) return true;
    if (!json_is_number(j)) return false;
    *out = json_number_value(j);
    return *out >= 0 && *out < 1e15;
}

/* Checks the claims of a token whose signature is good. Returns NULL or a reason. */
static const char *check_claims(const tr_jwt_verifier_t *v, const json_t *payload, uint64_t now,
                                tr_jwt_claims_t *out)
{
    bool has_exp, has_nbf, has_iat;
    double exp = 0, nbf = 0, iat = 0;
    if (!numeric_date(payload, "exp", &has_exp, &exp) ||
        !numeric_date(payload, "nbf", &has_nbf, &nbf) ||
        !numeric_date(payload, "iat", &has_iat, &iat))
        return "malformed claims";
    const json_t *sub = json_object_get(payload, "sub"), *iss = json_object_get(payload, "iss");
    const json_t *aud = json_object_get(payload, "aud");
    if ((sub && !json_is_string(sub)) || (iss && !json_is_string(iss)) ||
        (aud && !json_is_string(aud) && !json_is_array(aud)))
        return "malformed claims";
    double t = (double)now, leeway = (double)v->leeway_s;
    if (has_exp && t >= exp + leeway) return "token expired";
    if (has_nbf && t + leeway < nbf) return "token not yet valid";
    if (v->nissuers && !in_list(json_string_value(iss), v->issuers, v->nissuers))
        return "issuer not allowed";
    if (v->naudiences && !aud_allowed(v, aud)) return "audience not allowed";
    for (size_t i = 0; i < v->nrequired; i++)
        if (json_object_get(payload, v->required[i]) == NULL) return "missing required claim";
    out->sub = json_string_value(sub);
    out->exp = has_exp ? (uint64_t)exp : 0;
    return NULL;
}

static int reason_code(const char *why)
{
    if (strcmp(why, "unknown kid") == 0) return TR_ENOTFOUND;
    if (strncmp(why, "malformed", 9) == 0) return TR_EPARSE;
    return UV_EACCES;
}

/* Decodes and checks the signature of an uncached token; *payload gets a new reference. */
static const char *verify_uncached(const tr_jwt_verifier_t *v, const char *token, size_t len,
                                   json_t **payload)
{
    parts_t parts;
    split(token, len, &parts);
    if (parts.n < 2) return "malformed token";
    json_t *hdr = NULL;
    int alg = -1;
    const char *kid = NULL;
    const char *why = parse_header(&parts, &hdr, &alg, &kid);
    if (why == NULL) why = check_signature(v->keys, &parts, alg, kid);
    json_decref(hdr);
    if (why) return why;
    *payload = decode_json(parts.p[1], parts.len[1]);
    return *payload ? NULL : "malformed token";
}

int tr_jwt_verify(const tr_jwt_verifier_t *v, const char *token, size_t len, uint64_t now_s,
                  tr_jwt_claims_t *out, const char **reason)
{
    tr_jwt_claims_t claims = {0};
    const char *why = NULL;
    cache_entry_t *slot = NULL;
    unsigned char hash[32];
    uint64_t gen = v->keys ? v->keys->gen : 0;
    if (len > TR_JWT_MAX_TOKEN_BYTES) {
        why = "token too large";
        goto done;
    }
    if (v->cache && gen && EVP_Digest(token, len, hash, NULL, v->cache->sha256, NULL)) {
        slot = cache_slot(v->cache, hash);
        if (slot->gen == gen && memcmp(slot->hash, hash, sizeof(hash)) == 0) {
            v->cache->hits++;
            claims.payload = json_incref(slot->payload);
        } else {
            v->cache->misses++;
        }
    }
    if (claims.payload == NULL) {
        why = verify_uncached(v, token, len, &claims.payload);
        if (why == NULL && slot) {
            json_decref(slot->payload);
            memcpy(slot->hash, hash, sizeof(hash));
            slot->gen = gen;
            slot->payload = json_incref(claims.payload);
        }
    }
    if (why == NULL) why = check_claims(v, claims.payload, now_s, &claims);
done:
    if (why) tr_jwt_claims_clear(&claims);
    if (out)
        *out = claims;
    else
        tr_jwt_claims_clear(&claims);
    if (reason) *reason = why;
    return why == NULL ? 0 : strcmp(why, "token too large") == 0 ? TR_ETOOLARGE : reason_code(why);
}
