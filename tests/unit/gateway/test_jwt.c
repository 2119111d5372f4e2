/* Unit tests for JWT verification: algorithms, pinning, claims, JWKS, malformed input, cache. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <uv.h>

#include "gateway/jwt.h"
#include "trellis/error.h"

#define NOW 1700000000ull

/* Keys generated once per run; nothing private is ever committed. */
static EVP_PKEY *rsa1, *rsa2, *ec256, *ec384;
static char *rsa1_pem, *ec256_pem, *ec384_pem;
static const char secret64[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/* ---- helpers: encoding and signing with OpenSSL, independent of the code under test */

static char *b64url(const unsigned char *in, size_t len)
{
    char *out = malloc(len / 3 * 4 + 8);
    int n = EVP_EncodeBlock((unsigned char *)out, in, (int)len);
    while (n > 0 && out[n - 1] == '=')
        n--;
    out[n] = '\0';
    for (int i = 0; i < n; i++)
        out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
    return out;
}

static char *b64url_str(const char *s)
{
    return b64url((const unsigned char *)s, strlen(s));
}

static char *pubkey_pem(EVP_PKEY *pkey)
{
    BIO *bio = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PUBKEY(bio, pkey), 1);
    char *data;
    long n = BIO_get_mem_data(bio, &data);
    char *pem = strndup(data, (size_t)n);
    BIO_free(bio);
    return pem;
}

static const char *md_of(const char *alg)
{
    return strstr(alg, "256") ? "SHA256" : strstr(alg, "384") ? "SHA384" : "SHA512";
}

/* Signs `input` with alg; `key` is an EVP_PKEY or, for HS*, a NUL-terminated secret. */
static size_t sign(const char *alg, const void *key, const char *input, unsigned char *sig)
{
    size_t slen = 1024;
    if (alg[0] == 'H') {
        unsigned len = 0;
        HMAC(EVP_get_digestbyname(md_of(alg)), key, (int)strlen(key), (const unsigned char *)input,
             strlen(input), sig, &len);
        return len;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    assert_int_equal(
        EVP_DigestSignInit_ex(ctx, &pctx, md_of(alg), NULL, NULL, (EVP_PKEY *)key, NULL), 1);
    if (alg[0] == 'P') {
        EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING);
        EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST);
    }
    unsigned char der[1024];
    unsigned char *out = alg[0] == 'E' ? der : sig;
    assert_int_equal(EVP_DigestSign(ctx, out, &slen, (const unsigned char *)input, strlen(input)),
                     1);
    EVP_MD_CTX_free(ctx);
    if (alg[0] != 'E') return slen;
    /* JWS wants r||s, each padded to the coordinate size. */
    const unsigned char *p = der;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)slen);
    int size = strstr(alg, "256") ? 32 : 48;
    BN_bn2binpad(ECDSA_SIG_get0_r(es), sig, size);
    BN_bn2binpad(ECDSA_SIG_get0_s(es), sig + size, size);
    ECDSA_SIG_free(es);
    return (size_t)(2 * size);
}

/* A signed token with the given raw header and payload JSON. Caller frees. */
static char *make_raw(const char *header, const char *payload, const char *alg, const void *key)
{
    char *h = b64url_str(header), *p = b64url_str(payload);
    char input[8192];
    snprintf(input, sizeof(input), "%s.%s", h, p);
    unsigned char sig[1024];
    size_t slen = sign(alg, key, input, sig);
    char *s = b64url(sig, slen);
    size_t n = strlen(input) + strlen(s) + 2;
    char *tok = malloc(n);
    snprintf(tok, n, "%s.%s", input, s);
    free(h);
    free(p);
    free(s);
    return tok;
}

static char *make(const char *alg, const void *key, const char *kid, const char *payload)
{
    char header[256];
    if (kid)
        snprintf(header, sizeof(header), "{\"alg\":\"%s\",\"typ\":\"JWT\",\"kid\":\"%s\"}", alg,
                 kid);
    else
        snprintf(header, sizeof(header), "{\"alg\":\"%s\",\"typ\":\"JWT\"}", alg);
    return make_raw(header, payload, alg, key);
}

static char *bn_b64(EVP_PKEY *pkey, const char *name, int pad)
{
    BIGNUM *bn = NULL;
    assert_int_equal(EVP_PKEY_get_bn_param(pkey, name, &bn), 1);
    unsigned char buf[1024];
    int n = pad ? BN_bn2binpad(bn, buf, pad) : BN_bn2bin(bn, buf);
    BN_free(bn);
    return b64url(buf, (size_t)n);
}

/* A JWK for a public key; `alg` may be NULL to leave it out. Caller frees. */
static char *jwk(EVP_PKEY *pkey, const char *kid, const char *alg)
{
    char *out = malloc(2048), *a = NULL, *b = NULL;
    char extra[64] = "";
    if (alg) snprintf(extra, sizeof(extra), ",\"alg\":\"%s\"", alg);
    if (EVP_PKEY_is_a(pkey, "RSA")) {
        a = bn_b64(pkey, OSSL_PKEY_PARAM_RSA_N, 0);
        b = bn_b64(pkey, OSSL_PKEY_PARAM_RSA_E, 0);
        snprintf(out, 2048,
                 "{\"kty\":\"RSA\",\"kid\":\"%s\",\"use\":\"sig\",\"n\":\"%s\",\"e\":\"%s\"%s}",
                 kid, a, b, extra);
    } else {
        int size = EVP_PKEY_get_bits(pkey) / 8;
        a = bn_b64(pkey, OSSL_PKEY_PARAM_EC_PUB_X, size);
        b = bn_b64(pkey, OSSL_PKEY_PARAM_EC_PUB_Y, size);
        snprintf(out, 2048,
                 "{\"kty\":\"EC\",\"kid\":\"%s\",\"crv\":\"P-%d\",\"x\":\"%s\",\"y\":\"%s\"%s}",
                 kid, size * 8, a, b, extra);
    }
    free(a);
    free(b);
    return out;
}

static tr_jwt_keyset_t *jwks(const char *keys_json)
{
    char doc[8192];
    snprintf(doc, sizeof(doc), "{\"keys\":[%s]}", keys_json);
    tr_jwt_keyset_t *set = NULL;
    char err[128];
    assert_int_equal(tr_jwt_keyset_from_jwks(doc, strlen(doc), &set, err, sizeof(err)), 0);
    return set;
}

static tr_jwt_keyset_t *pem_set(tr_jwt_alg_t alg, const char *pem)
{
    tr_jwt_keyset_t *set = NULL;
    assert_int_equal(tr_jwt_keyset_from_pem(alg, NULL, pem, strlen(pem), &set), 0);
    return set;
}

/* Verifies with a verifier over `set` (which it consumes) and default claims rules. */
static int check(tr_jwt_keyset_t *set, const char *tok, uint64_t now, const char **why)
{
    tr_jwt_verifier_t v = {0};
    tr_jwt_verifier_set_keys(&v, set);
    tr_jwt_keyset_release(set);
    tr_jwt_claims_t c;
    int rc = tr_jwt_verify(&v, tok, strlen(tok), now, &c, why);
    if (rc == 0) {
        assert_non_null(c.payload);
    } else {
        assert_null(c.payload);
    }
    tr_jwt_claims_clear(&c);
    tr_jwt_verifier_set_keys(&v, NULL);
    return rc;
}

#define PAYLOAD "{\"sub\":\"alice\",\"iss\":\"https://idp\",\"aud\":\"shop\",\"exp\":1700000600}"

static int setup(void **state)
{
    rsa1 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    rsa2 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    ec256 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    ec384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    if (!rsa1 || !rsa2 || !ec256 || !ec384) return -1;
    rsa1_pem = pubkey_pem(rsa1);
    ec256_pem = pubkey_pem(ec256);
    ec384_pem = pubkey_pem(ec384);
    return 0;
}

static int teardown(void **state)
{
    EVP_PKEY_free(rsa1);
    EVP_PKEY_free(rsa2);
    EVP_PKEY_free(ec256);
    EVP_PKEY_free(ec384);
    free(rsa1_pem);
    free(ec256_pem);
    free(ec384_pem);
    return 0;
}

/* ---- tests */

static void test_alg_names(void **state)
{
    assert_int_equal(tr_jwt_alg_parse("PS256"), TR_JWT_PS256);
    assert_int_equal(tr_jwt_alg_parse("none"), TR_EUNSUPPORTED);
    assert_int_equal(tr_jwt_alg_parse("rs256"), TR_EUNSUPPORTED);
    assert_string_equal(tr_jwt_alg_name(TR_JWT_ES384), "ES384");
    assert_string_equal(tr_jwt_alg_name((tr_jwt_alg_t)99), "unknown");
}

static void test_valid_hmac(void **state)
{
    static const struct {
        const char *alg;
        tr_jwt_alg_t id;
        size_t len;
    } cases[] = {
        {"HS256", TR_JWT_HS256, 32}, {"HS384", TR_JWT_HS384, 48}, {"HS512", TR_JWT_HS512, 64}};
    for (size_t i = 0; i < 3; i++) {
        char secret[65];
        memcpy(secret, secret64, cases[i].len);
        secret[cases[i].len] = '\0';
        tr_jwt_keyset_t *set = tr_jwt_keyset_new();
        /* RFC 7518: a secret shorter than the hash is refused. */
        assert_int_equal(tr_jwt_keyset_add_hmac(set, NULL, cases[i].id, secret, cases[i].len - 1),
                         TR_EUNSUPPORTED);
        assert_int_equal(tr_jwt_keyset_add_hmac(set, NULL, cases[i].id, secret, cases[i].len), 0);
        char *tok = make(cases[i].alg, secret, NULL, PAYLOAD);
        tr_jwt_verifier_t v = {0};
        tr_jwt_verifier_set_keys(&v, set);
        tr_jwt_keyset_release(set);
        tr_jwt_claims_t c;
        const char *why = "unset";
        assert_int_equal(tr_jwt_verify(&v, tok, strlen(tok), NOW, &c, &why), 0);
        assert_null(why);
        assert_string_equal(c.sub, "alice");
        assert_int_equal(c.exp, 1700000600);
        assert_string_equal(json_string_value(json_object_get(c.payload, "aud")), "shop");
        tr_jwt_claims_clear(&c);
        /* A flipped signature byte fails. */
        tok[strlen(tok) - 2] = tok[strlen(tok) - 2] == 'A' ? 'B' : 'A';
        assert_int_equal(tr_jwt_verify(&v, tok, strlen(tok), NOW, &c, &why), UV_EACCES);
        assert_string_equal(why, "signature invalid");
        tr_jwt_verifier_set_keys(&v, NULL);
        free(tok);
    }
}

static void test_valid_rsa_and_ec(void **state)
{
    static const struct {
        const char *alg;
        tr_jwt_alg_t id;
        int key;
    } cases[] = {{"RS256", TR_JWT_RS256, 0}, {"RS384", TR_JWT_RS384, 0},
                 {"RS512", TR_JWT_RS512, 0}, {"PS256", TR_JWT_PS256, 0},
                 {"ES256", TR_JWT_ES256, 1}, {"ES384", TR_JWT_ES384, 2}};
    EVP_PKEY *keys[] = {rsa1, ec256, ec384};
    const char *pems[] = {rsa1_pem, ec256_pem, ec384_pem};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *tok = make(cases[i].alg, keys[cases[i].key], NULL, PAYLOAD);
        const char *why = NULL;
        assert_int_equal(check(pem_set(cases[i].id, pems[cases[i].key]), tok, NOW, &why), 0);
        /* Tampering with the payload breaks the signature. */
        char *dot = strchr(tok, '.');
        dot[2] = dot[2] == 'A' ? 'B' : 'A';
        assert_int_equal(check(pem_set(cases[i].id, pems[cases[i].key]), tok, NOW, &why),
                         UV_EACCES);
        assert_string_equal(why, "signature invalid");
        free(tok);
    }
    /* A key configured without a kid serves tokens naming a kid the set does not know. */
    char *named = make("RS256", rsa1, "any", PAYLOAD);
    const char *why0 = NULL;
    assert_int_equal(check(pem_set(TR_JWT_RS256, rsa1_pem), named, NOW, &why0), 0);
    free(named);
    /* RS256 tokens are not PS256 tokens even with the same key. */
    char *tok = make("RS256", rsa1, NULL, PAYLOAD);
    const char *why = NULL;
    assert_int_equal(check(pem_set(TR_JWT_PS256, rsa1_pem), tok, NOW, &why), UV_EACCES);
    assert_string_equal(why, "no key for algorithm");
    free(tok);
}

static void test_pem_must_fit_alg(void **state)
{
    tr_jwt_keyset_t *set = NULL;
    assert_int_equal(tr_jwt_keyset_from_pem(TR_JWT_HS256, NULL, rsa1_pem, strlen(rsa1_pem), &set),
                     TR_EUNSUPPORTED);
    assert_null(set);
    assert_int_equal(tr_jwt_keyset_from_pem(TR_JWT_ES256, NULL, rsa1_pem, strlen(rsa1_pem), &set),
                     TR_EUNSUPPORTED);
    assert_int_equal(tr_jwt_keyset_from_pem(TR_JWT_ES384, NULL, ec256_pem, strlen(ec256_pem), &set),
                     TR_EUNSUPPORTED);
    assert_int_equal(tr_jwt_keyset_from_pem(TR_JWT_RS256, NULL, "junk", 4, &set), TR_EPARSE);
    /* RSA below 2048 bits is refused. */
    EVP_PKEY *small = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    char *pem = pubkey_pem(small);
    assert_int_equal(tr_jwt_keyset_from_pem(TR_JWT_RS256, NULL, pem, strlen(pem), &set),
                     TR_EUNSUPPORTED);
    free(pem);
    EVP_PKEY_free(small);
}

static void test_exp_and_nbf(void **state)
{
    tr_jwt_keyset_t *set = tr_jwt_keyset_new();
    assert_int_equal(tr_jwt_keyset_add_hmac(set, NULL, TR_JWT_HS256, secret64, 32), 0);
    char secret[33];
    memcpy(secret, secret64, 32);
    secret[32] = '\0';
    tr_jwt_verifier_t v = {0};
    tr_jwt_verifier_set_keys(&v, set);
    tr_jwt_keyset_release(set);
    const char *why = NULL;
    char *tok = make("HS256", secret, NULL, "{\"exp\":1700000000,\"nbf\":1699999000}");
    /* exp is the first instant the token is no longer valid. */
    assert_int_equal(tr_jwt_verify(&v, tok, strlen(tok), NOW - 1, NULL, &why), 0);
    assert_int_equal(tr_jwt_verify(&v, tok, strlen(tok), NOW, NULL, &why), UV_EACCES);
    assert_string_equal(why, "token expired");
    assert_int_equal(tr_jwt_verify(&v, tok, strlen(tok), 1699998999, NULL, &why), UV_EACCES);
    assert_string_equal(why, "token not yet valid");
    v.leeway_s = 30;
    assert_int_equal(tr_jwt_verify(&v, tok, strlen(tok), NOW + 29, NULL, &why), 0);
    assert_int_equal(tr_jwt_verify(&v, tok, strlen(tok), NOW + 30, NULL, &why), UV_EACCES);
    assert_int_equal(tr_jwt_verify(&v, tok, strlen(tok), 1699998970, NULL, &why), 0);
    assert_int_equal(tr_jwt_verify(&v, tok, strlen(tok), 1699998969, NULL, &why), UV_EACCES);
    assert_string_equal(why, "token not yet valid");
    free(tok);
    tr_jwt_verifier_set_keys(&v, NULL);
}

static void test_iss_aud_required(void **state)
{
    static const char *const issuers[] = {"https://idp", "https://other"};
    static const char *const auds[] = {"shop", "admin"};
    static const char *const required[] = {"exp", "sub"};
    tr_jwt_keyset_t *set = tr_jwt_keyset_new();
    assert_int_equal(tr_jwt_keyset_add_hmac(set, NULL, TR_JWT_HS256, secret64, 64), 0);
    tr_jwt_verifier_t v = {.issuers = issuers,
                           .nissuers = 2,
                           .audiences = auds,
                           .naudiences = 2,
                           .required = required,
                           .nrequired = 2};
    tr_jwt_verifier_set_keys(&v, set);
    tr_jwt_keyset_release(set);
    static const struct {
        const char *payload;
        const char *why; /* NULL = accepted */
    } cases[] = {
        {PAYLOAD, NULL},
        {"{\"sub\":\"a\",\"exp\":1700000600,\"iss\":\"https://evil\",\"aud\":\"shop\"}",
         "issuer not allowed"},
        {"{\"sub\":\"a\",\"exp\":1700000600,\"aud\":\"shop\"}", "issuer not allowed"},
        {"{\"sub\":\"a\",\"exp\":1700000600,\"iss\":\"https://idp\",\"aud\":\"blog\"}",
         "audience not allowed"},
        {"{\"sub\":\"a\",\"exp\":1700000600,\"iss\":\"https://idp\"}", "audience not allowed"},
        {"{\"sub\":\"a\",\"exp\":1700000600,\"iss\":\"https://other\",\"aud\":[\"x\",\"admin\"]}",
         NULL},
        {"{\"sub\":\"a\",\"exp\":1700000600,\"iss\":\"https://idp\",\"aud\":[\"x\",\"y\"]}",
         "audience not allowed"},
        {"{\"sub\":\"a\",\"exp\":1700000600,\"iss\":\"https://idp\",\"aud\":[]}",
         "audience not allowed"},
        {"{\"sub\":\"a\",\"iss\":\"https://idp\",\"aud\":\"shop\"}", "missing required claim"},
        {"{\"sub\":7,\"exp\":1700000600,\"iss\":\"https://idp\",\"aud\":\"shop\"}",
         "malformed claims"},
        {"{\"sub\":\"a\",\"exp\":\"soon\",\"iss\":\"https://idp\",\"aud\":\"shop\"}",
         "malformed claims"},
        {"{\"sub\":\"a\",\"exp\":-5,\"iss\":\"https://idp\",\"aud\":\"shop\"}", "malformed claims"},
        {"{\"sub\":\"a\",\"exp\":1700000600.5,\"iss\":\"https://idp\",\"aud\":\"shop\"}", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *tok = make("HS256", secret64, NULL, cases[i].payload);
        const char *why = NULL;
        int rc = tr_jwt_verify(&v, tok, strlen(tok), NOW, NULL, &why);
        if (cases[i].why == NULL) {
            assert_int_equal(rc, 0);
        } else {
            assert_true(rc < 0);
            assert_string_equal(why, cases[i].why);
        }
        free(tok);
    }
    tr_jwt_verifier_set_keys(&v, NULL);
}

static void test_alg_none(void **state)
{
    char *h = b64url_str("{\"alg\":\"none\",\"typ\":\"JWT\"}"), *p = b64url_str(PAYLOAD);
    char *h2 = b64url_str("{\"alg\":\"NONE\"}");
    char tok[1024];
    const char *why = NULL;
    const char *forms[] = {"%s.%s.", "%s.%s", "%s.%s.c2ln"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(tok, sizeof(tok), forms[i], h, p);
        tr_jwt_keyset_t *set = tr_jwt_keyset_new();
        assert_int_equal(tr_jwt_keyset_add_hmac(set, NULL, TR_JWT_HS256, secret64, 64), 0);
        assert_int_equal(check(set, tok, NOW, &why), UV_EACCES);
        assert_string_equal(why, "algorithm none not allowed");
        snprintf(tok, sizeof(tok), forms[i], h2, p);
        assert_int_equal(check(pem_set(TR_JWT_RS256, rsa1_pem), tok, NOW, &why), UV_EACCES);
        assert_string_equal(why, "algorithm none not allowed");
    }
    free(h);
    free(h2);
    free(p);
}

/* The classic confusion: the attacker HMACs with the RSA public key's PEM text as secret. */
static void test_rsa_pem_as_hmac_secret(void **state)
{
    const char *why = NULL;
    char *tok = make("HS256", rsa1_pem, NULL, PAYLOAD);
    assert_int_equal(check(pem_set(TR_JWT_RS256, rsa1_pem), tok, NOW, &why), UV_EACCES);
    assert_string_equal(why, "no key for algorithm");
    free(tok);
    tr_jwt_keyset_t *set = NULL;
    assert_int_equal(tr_jwt_keyset_from_pem(TR_JWT_RS256, "k1", rsa1_pem, strlen(rsa1_pem), &set),
                     0);
    tok = make("HS256", rsa1_pem, "k1", PAYLOAD);
    assert_int_equal(check(set, tok, NOW, &why), UV_EACCES);
    assert_string_equal(why, "algorithm not allowed for key");
    free(tok);
    /* The same through JWKS: an RSA JWK without alg is RS256 only. */
    char *k = jwk(rsa1, "k1", NULL);
    tok = make("HS256", rsa1_pem, "k1", PAYLOAD);
    assert_int_equal(check(jwks(k), tok, NOW, &why), UV_EACCES);
    assert_string_equal(why, "algorithm not allowed for key");
    free(tok);
    tok = make("PS256", rsa1, "k1", PAYLOAD);
    assert_int_equal(check(jwks(k), tok, NOW, &why), UV_EACCES);
    assert_string_equal(why, "algorithm not allowed for key");
    free(tok);
    free(k);
}

static void test_jwks_keys(void **state)
{
    char *r = jwk(rsa1, "r", NULL), *rp = jwk(rsa2, "rp", "PS256"), *e1 = jwk(ec256, "e1", NULL);
    char *e2 = jwk(ec384, "e2", "ES384");
    char *k = b64url((const unsigned char *)secret64, 64);
    char all[8192];
    snprintf(all, sizeof(all),
             "%s,%s,%s,%s,{\"kty\":\"oct\",\"kid\":\"h\",\"alg\":\"HS512\",\"k\":\"%s\"},"
             "{\"kty\":\"RSA\",\"kid\":\"enc\",\"use\":\"enc\",\"n\":\"AQAB\",\"e\":\"AQAB\"},"
             "{\"kty\":\"OKP\",\"kid\":\"ed\",\"crv\":\"Ed25519\",\"x\":\"AAAA\"}",
             r, rp, e1, e2, k);
    tr_jwt_keyset_t *set = jwks(all);
    assert_int_equal(tr_jwt_keyset_count(set), 5);
    assert_true(tr_jwt_keyset_has_kid(set, "e2"));
    assert_false(tr_jwt_keyset_has_kid(set, "enc"));
    static const struct {
        const char *alg, *kid;
        int key; /* index into keys below */
    } cases[] = {{"RS256", "r", 0},
                 {"PS256", "rp", 1},
                 {"ES256", "e1", 2},
                 {"ES384", "e2", 3},
                 {"HS512", "h", 4}};
    const void *keys[] = {rsa1, rsa2, ec256, ec384, secret64};
    for (size_t i = 0; i < 5; i++) {
        char *tok = make(cases[i].alg, keys[cases[i].key], cases[i].kid, PAYLOAD);
        const char *why = NULL;
        assert_int_equal(check(tr_jwt_keyset_retain(set), tok, NOW, &why), 0);
        free(tok);
    }
    /* Without a kid, keys of the header's algorithm are tried in turn. */
    char *tok = make("ES384", ec384, NULL, PAYLOAD);
    const char *why = NULL;
    assert_int_equal(check(tr_jwt_keyset_retain(set), tok, NOW, &why), 0);
    free(tok);
    tr_jwt_keyset_release(set);
    free(r);
    free(rp);
    free(e1);
    free(e2);
    free(k);
}

static void test_jwks_bad(void **state)
{
    static const char *const docs[] = {
        "",
        "not json",
        "[]",
        "{\"keys\":{}}",
        "{\"keys\":[]}",
        "{\"keys\":[1,\"x\"]}",
        "{\"keys\":[{\"kty\":\"RSA\",\"use\":\"enc\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}",
        /* too small an RSA modulus */
        "{\"keys\":[{\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}",
        /* a short EC coordinate */
        "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"AAAA\",\"y\":\"AAAA\"}]}",
        /* a short HMAC secret */
        "{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2VjcmV0\"}]}",
        "{\"keys\":[{\"kty\":\"oct\",\"alg\":\"RS256\",\"k\":\"c2VjcmV0\"}]}",
        "{\"keys\":[{\"kty\":\"RSA\",\"alg\":\"none\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}",
        "{\"keys\":[{\"kty\":\"RSA\",\"alg\":7,\"n\":\"AQAB\",\"e\":\"AQAB\"}]}",
        "{\"keys\":[{\"kty\":\"RSA\",\"kid\":1,\"n\":\"AQAB\",\"e\":\"AQAB\"}]}",
        "{\"keys\":[],\"keys\":[]}",
    };
    for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
        tr_jwt_keyset_t *set = (tr_jwt_keyset_t *)1;
        char err[128];
        assert_int_equal(tr_jwt_keyset_from_jwks(docs[i], strlen(docs[i]), &set, err, sizeof(err)),
                         TR_EPARSE);
        assert_null(set);
        assert_true(err[0] != '\0');
    }
    /* An EC point that is not on the curve is refused. */
    char *e = jwk(ec256, "e", NULL);
    char *x = strstr(e, "\"x\":\"") + 5;
    x[3] = x[3] == 'A' ? 'B' : 'A';
    char doc[2048];
    snprintf(doc, sizeof(doc), "{\"keys\":[%s]}", e);
    tr_jwt_keyset_t *set = NULL;
    assert_int_equal(tr_jwt_keyset_from_jwks(doc, strlen(doc), &set, NULL, 0), TR_EPARSE);
    free(e);
    /* One bad key among good ones is skipped and reported. */
    char *g = jwk(ec256, "g", NULL);
    snprintf(doc, sizeof(doc), "{\"keys\":[{\"kty\":\"XX\"},%s]}", g);
    char err[128];
    assert_int_equal(tr_jwt_keyset_from_jwks(doc, strlen(doc), &set, err, sizeof(err)), 0);
    assert_int_equal(tr_jwt_keyset_count(set), 1);
    assert_string_equal(err, "keys[0]: unsupported alg");
    tr_jwt_keyset_release(set);
    free(g);
}

static void test_unknown_kid_and_rotation(void **state)
{
    char *k1 = jwk(rsa1, "k1", "RS256"), *k2 = jwk(rsa2, "k2", "RS256");
    tr_jwt_keyset_t *doc1 = jwks(k1);
    char both[4096];
    snprintf(both, sizeof(both), "%s,%s", k1, k2);
    tr_jwt_keyset_t *doc2 = jwks(both);
    tr_jwt_keyset_t *doc3 = jwks(k2);
    char *t1 = make("RS256", rsa1, "k1", PAYLOAD), *t2 = make("RS256", rsa2, "k2", PAYLOAD);
    tr_jwt_cache_t *cache = tr_jwt_cache_new(16);
    tr_jwt_verifier_t v = {.cache = cache};
    const char *why = NULL;
    tr_jwt_verifier_set_keys(&v, doc1);
    assert_int_equal(tr_jwt_verify(&v, t1, strlen(t1), NOW, NULL, &why), 0);
    assert_int_equal(tr_jwt_verify(&v, t2, strlen(t2), NOW, NULL, &why), TR_ENOTFOUND);
    assert_string_equal(why, "unknown kid");
    /* The issuer publishes the new key next to the old one, then drops the old one. */
    tr_jwt_verifier_set_keys(&v, doc2);
    assert_int_equal(tr_jwt_verify(&v, t1, strlen(t1), NOW, NULL, &why), 0);
    assert_int_equal(tr_jwt_verify(&v, t2, strlen(t2), NOW, NULL, &why), 0);
    tr_jwt_verifier_set_keys(&v, doc3);
    /* t1 was cached under doc2: the cache must not outlive the rotation. */
    assert_int_equal(tr_jwt_verify(&v, t1, strlen(t1), NOW, NULL, &why), TR_ENOTFOUND);
    assert_int_equal(tr_jwt_verify(&v, t2, strlen(t2), NOW, NULL, &why), 0);
    /* A kid-less token signed by a key that is in the set under a kid still verifies. */
    char *t3 = make("RS256", rsa2, NULL, PAYLOAD);
    assert_int_equal(tr_jwt_verify(&v, t3, strlen(t3), NOW, NULL, &why), 0);
    /* The verifier holds its own reference: the publisher's can go at any time. */
    tr_jwt_keyset_release(doc1);
    tr_jwt_keyset_release(doc2);
    tr_jwt_keyset_release(doc3);
    assert_int_equal(tr_jwt_verify(&v, t2, strlen(t2), NOW, NULL, &why), 0);
    tr_jwt_verifier_set_keys(&v, NULL);
    assert_int_equal(tr_jwt_verify(&v, t2, strlen(t2), NOW, NULL, &why), TR_ENOTFOUND);
    tr_jwt_cache_free(cache);
    free(t1);
    free(t2);
    free(t3);
    free(k1);
    free(k2);
}

static void test_malformed(void **state)
{
    tr_jwt_keyset_t *set = tr_jwt_keyset_new();
    assert_int_equal(tr_jwt_keyset_add_hmac(set, NULL, TR_JWT_HS256, secret64, 64), 0);
    tr_jwt_verifier_t v = {0};
    tr_jwt_verifier_set_keys(&v, set);
    tr_jwt_keyset_release(set);
    char *good = make("HS256", secret64, NULL, PAYLOAD);
    char *p = b64url_str(PAYLOAD);
    char *hnum = b64url_str("{\"alg\":256}"), *harr = b64url_str("[\"HS256\"]");
    char *hjunk = b64url_str("{alg:HS256}"), *hkid = b64url_str("{\"alg\":\"HS256\",\"kid\":5}");
    char *hdup = b64url_str("{\"alg\":\"HS256\",\"alg\":\"none\"}");
    char *hcrit = b64url_str("{\"alg\":\"HS256\",\"crit\":[\"exp\"]}");
    char *hunk = b64url_str("{\"alg\":\"XS999\"}");
    char buf[4][512];
    snprintf(buf[0], sizeof(buf[0]), "%s.%s.c2ln", hnum, p);
    snprintf(buf[1], sizeof(buf[1]), "%s.%s.c2ln", harr, p);
    snprintf(buf[2], sizeof(buf[2]), "%s.%s.c2ln", hjunk, p);
    snprintf(buf[3], sizeof(buf[3]), "%s.%s.c2ln", hkid, p);
    char dup[512], crit[512], unk[512], two[512], four[1024], badsig[1024], badpay[1024];
    snprintf(dup, sizeof(dup), "%s.%s.c2ln", hdup, p);
    snprintf(crit, sizeof(crit), "%s.%s.c2ln", hcrit, p);
    snprintf(unk, sizeof(unk), "%s.%s.c2ln", hunk, p);
    snprintf(two, sizeof(two), "%.*s", (int)(strrchr(good, '.') - good), good);
    snprintf(four, sizeof(four), "%s.c2ln", good);
    snprintf(badsig, sizeof(badsig), "%s*", good);
    snprintf(badpay, sizeof(badpay), "%s", good);
    strchr(badpay, '.')[3] = '!';
    static char huge[TR_JWT_MAX_TOKEN_BYTES + 2];
    memset(huge, 'A', sizeof(huge) - 1);
    huge[10] = huge[20] = '.';
    const struct {
        const char *tok;
        int rc;
        const char *why;
    } cases[] = {
        {"", TR_EPARSE, "malformed token"},
        {".", TR_EPARSE, "malformed token"},
        {"..", TR_EPARSE, "malformed token"},
        {"a.b.c", TR_EPARSE, "malformed token"},
        {two, TR_EPARSE, "malformed token"},
        {four, TR_EPARSE, "malformed token"},
        {"@@@@.e30.c2ln", TR_EPARSE, "malformed token"},
        {"e30.e30.c2ln", TR_EPARSE, "malformed token"}, /* {} has no alg */
        {buf[0], TR_EPARSE, "malformed token"},
        {buf[1], TR_EPARSE, "malformed token"},
        {buf[2], TR_EPARSE, "malformed token"},
        {buf[3], TR_EPARSE, "malformed token"},
        {dup, TR_EPARSE, "malformed token"},
        {crit, UV_EACCES, "unsupported critical header"},
        {unk, UV_EACCES, "algorithm not supported"},
        {badsig, TR_EPARSE, "malformed token"},
        {badpay, UV_EACCES, "signature invalid"},
        {huge, TR_ETOOLARGE, "token too large"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *why = NULL;
        tr_jwt_claims_t c = {.payload = (json_t *)1};
        int rc = tr_jwt_verify(&v, cases[i].tok, strlen(cases[i].tok), NOW, &c, &why);
        if (rc != cases[i].rc || strcmp(why, cases[i].why) != 0)
            fail_msg("case %zu: got %d %s", i, rc, why ? why : "(null)");
        assert_null(c.payload);
    }
    /* A valid signature over a payload that is not a JSON object. */
    char *arr = make("HS256", secret64, NULL, "[1,2]");
    const char *why = NULL;
    assert_int_equal(tr_jwt_verify(&v, arr, strlen(arr), NOW, NULL, &why), TR_EPARSE);
    free(arr);
    /* Exactly at the size limit is still parsed (and fails for its content). */
    huge[TR_JWT_MAX_TOKEN_BYTES] = '\0';
    assert_int_equal(tr_jwt_verify(&v, huge, TR_JWT_MAX_TOKEN_BYTES, NOW, NULL, &why), TR_EPARSE);
    tr_jwt_verifier_set_keys(&v, NULL);
    free(good);
    free(p);
    free(hnum);
    free(harr);
    free(hjunk);
    free(hkid);
    free(hdup);
    free(hcrit);
    free(hunk);
}

static void test_base64url(void **state)
{
    unsigned char out[16];
    assert_int_equal(tr_jwt_base64url_decode("", 0, out, sizeof(out)), 0);
    assert_int_equal(tr_jwt_base64url_decode("YQ", 2, out, sizeof(out)), 1);
    assert_int_equal(out[0], 'a');
    assert_int_equal(tr_jwt_base64url_decode("YQ==", 4, out, sizeof(out)), 1);
    assert_int_equal(tr_jwt_base64url_decode("_-8", 3, out, sizeof(out)), 2);
    assert_int_equal(out[0], 0xff);
    assert_int_equal(out[1], 0xef);
    assert_int_equal(tr_jwt_base64url_decode("Y", 1, out, sizeof(out)), TR_EPARSE);
    assert_int_equal(tr_jwt_base64url_decode("YQ+/", 4, out, sizeof(out)), TR_EPARSE);
    assert_int_equal(tr_jwt_base64url_decode("Y Q", 3, out, sizeof(out)), TR_EPARSE);
    assert_int_equal(tr_jwt_base64url_decode("YWJjZA", 6, out, 3), TR_ETOOLARGE);
}

static void test_cache_rechecks_exp(void **state)
{
    tr_jwt_keyset_t *set = pem_set(TR_JWT_RS256, rsa1_pem);
    tr_jwt_cache_t *cache = tr_jwt_cache_new(0);
    static const char *const auds[] = {"shop"};
    tr_jwt_verifier_t v = {.cache = cache, .audiences = auds, .naudiences = 1};
    tr_jwt_verifier_set_keys(&v, set);
    tr_jwt_keyset_release(set);
    char *tok = make("RS256", rsa1, NULL, PAYLOAD);
    tr_jwt_claims_t c;
    const char *why = NULL;
    uint64_t hits, misses;
    assert_int_equal(tr_jwt_verify(&v, tok, strlen(tok), NOW, &c, &why), 0);
    tr_jwt_claims_clear(&c);
    assert_int_equal(tr_jwt_verify(&v, tok, strlen(tok), NOW + 1, &c, &why), 0);
    assert_string_equal(c.sub, "alice");
    tr_jwt_claims_clear(&c);
    tr_jwt_cache_stats(cache, &hits, &misses);
    assert_int_equal(hits, 1);
    assert_int_equal(misses, 1);
    /* A hit still checks the time... */
    assert_int_equal(tr_jwt_verify(&v, tok, strlen(tok), 1700000600, &c, &why), UV_EACCES);
    assert_string_equal(why, "token expired");
    assert_null(c.payload);
    /* ...and the route's own rules: another verifier sharing the worker's cache. */
    static const char *const other[] = {"admin"};
    tr_jwt_verifier_t v2 = v;
    v2.audiences = other;
    assert_int_equal(tr_jwt_verify(&v2, tok, strlen(tok), NOW, NULL, &why), UV_EACCES);
    assert_string_equal(why, "audience not allowed");
    tr_jwt_cache_stats(cache, &hits, &misses);
    assert_int_equal(hits, 3);
    /* A forged token never enters the cache. */
    tok[strlen(tok) - 3] = tok[strlen(tok) - 3] == 'A' ? 'B' : 'A';
    assert_int_equal(tr_jwt_verify(&v, tok, strlen(tok), NOW, NULL, &why), UV_EACCES);
    assert_int_equal(tr_jwt_verify(&v, tok, strlen(tok), NOW, NULL, &why), UV_EACCES);
    tr_jwt_cache_stats(cache, &hits, &misses);
    assert_int_equal(hits, 3);
    assert_int_equal(misses, 3);
    tr_jwt_verifier_set_keys(&v, NULL);
    tr_jwt_cache_free(cache);
    free(tok);
}

/* Not an assertion on speed: prints the cost so regressions are visible in the log. */
static void test_bench_rs256(void **state)
{
    tr_jwt_keyset_t *set = pem_set(TR_JWT_RS256, rsa1_pem);
    tr_jwt_cache_t *cache = tr_jwt_cache_new(0);
    tr_jwt_verifier_t v = {0};
    tr_jwt_verifier_set_keys(&v, set);
    tr_jwt_keyset_release(set);
    char *tok = make("RS256", rsa1, "k", PAYLOAD);
    char *es = make("ES256", ec256, NULL, PAYLOAD);
    tr_jwt_keyset_t *eset = pem_set(TR_JWT_ES256, ec256_pem);
    const int n = 2000;
    double us[3];
    for (int mode = 0; mode < 3; mode++) {
        tr_jwt_verifier_t w = v;
        w.cache = mode == 1 ? cache : NULL;
        if (mode == 2) w.keys = eset;
        const char *t = mode == 2 ? es : tok;
        uint64_t start = uv_hrtime();
        for (int i = 0; i < n; i++) {
            tr_jwt_claims_t c;
            assert_int_equal(tr_jwt_verify(&w, t, strlen(t), NOW, &c, NULL), 0);
            tr_jwt_claims_clear(&c);
        }
        us[mode] = (double)(uv_hrtime() - start) / 1e3 / n;
    }
    printf("jwt bench: RS256 verify %.2f us without cache, %.2f us with cache; ES256 %.2f us\n",
           us[0], us[1], us[2]);
    tr_jwt_keyset_release(eset);
    tr_jwt_verifier_set_keys(&v, NULL);
    tr_jwt_cache_free(cache);
    free(tok);
    free(es);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alg_names),
        cmocka_unit_test(test_base64url),
        cmocka_unit_test(test_valid_hmac),
        cmocka_unit_test(test_valid_rsa_and_ec),
        cmocka_unit_test(test_pem_must_fit_alg),
        cmocka_unit_test(test_exp_and_nbf),
        cmocka_unit_test(test_iss_aud_required),
        cmocka_unit_test(test_alg_none),
        cmocka_unit_test(test_rsa_pem_as_hmac_secret),
        cmocka_unit_test(test_jwks_keys),
        cmocka_unit_test(test_jwks_bad),
        cmocka_unit_test(test_unknown_kid_and_rotation),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_cache_rechecks_exp),
        cmocka_unit_test(test_bench_rs256),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
