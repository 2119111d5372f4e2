/* libFuzzer target: JWT verification (raw tokens and signed payloads) and JWKS parsing. */
#include "gateway/jwt.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char secret[] = "fuzz-secret-fuzz-secret-fuzz-sec"; /* 32 bytes */
static const char *const issuers[] = {"https://idp"};
static const char *const audiences[] = {"shop", "admin"};
static const char *const required[] = {"sub"};

static size_t b64url(const unsigned char *in, size_t len, char *out)
{
    int n = EVP_EncodeBlock((unsigned char *)out, in, (int)len);
    while (n > 0 && out[n - 1] == '=')
        n--;
    for (int i = 0; i < n; i++)
        out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
    out[n] = '\0';
    return (size_t)n;
}

static void verify_twice(tr_jwt_verifier_t *v, const char *tok, size_t len)
{
    for (int i = 0; i < 2; i++) {
        tr_jwt_claims_t c;
        const char *why = NULL;
        int rc = tr_jwt_verify(v, tok, len, 1700000000 + (uint64_t)i * 1000, &c, &why);
        if ((rc == 0) != (why == NULL) || (rc == 0) != (c.payload != NULL)) abort();
        tr_jwt_claims_clear(&c);
    }
}

/* Wraps the input as the payload of a correctly signed HS256 token, so claims get fuzzed. */
static void signed_payload(tr_jwt_verifier_t *v, const uint8_t *data, size_t size)
{
    static char tok[3 * TR_JWT_MAX_TOKEN_BYTES];
    if (size > TR_JWT_MAX_TOKEN_BYTES) return;
    size_t n = b64url((const unsigned char *)"{\"alg\":\"HS256\"}", 15, tok);
    tok[n++] = '.';
    n += b64url(data, size, tok + n);
    unsigned char mac[32];
    unsigned maclen = 0;
    HMAC(EVP_sha256(), secret, 32, (const unsigned char *)tok, n, mac, &maclen);
    tok[n++] = '.';
    n += b64url(mac, maclen, tok + n);
    verify_twice(v, tok, n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static tr_jwt_cache_t *cache;
    static tr_jwt_verifier_t v = {.issuers = issuers,
                                  .nissuers = 1,
                                  .audiences = audiences,
                                  .naudiences = 2,
                                  .required = required,
                                  .nrequired = 1,
                                  .leeway_s = 30};
    if (cache == NULL) {
        cache = tr_jwt_cache_new(64);
        v.cache = cache;
        tr_jwt_keyset_t *set = tr_jwt_keyset_new();
        if (tr_jwt_keyset_add_hmac(set, NULL, TR_JWT_HS256, secret, 32) != 0) abort();
        tr_jwt_verifier_set_keys(&v, set);
        tr_jwt_keyset_release(set);
    }
    if (size == 0) return 0;
    const char *rest = (const char *)data + 1;
    size_t len = size - 1;
    switch (data[0] % 4) {
    case 0:
        verify_twice(&v, rest, len);
        break;
    case 1: {
        tr_jwt_keyset_t *set = NULL;
        char err[128];
        int rc = tr_jwt_keyset_from_jwks(rest, len, &set, err, sizeof(err));
        if ((rc == 0) != (set != NULL)) abort();
        if (set) {
            tr_jwt_verifier_t w = v;
            w.keys = set;
            w.cache = NULL;
            static const char tok[] = "eyJhbGciOiJIUzI1NiIsImtpZCI6ImEifQ.e30.c2ln";
            verify_twice(&w, tok, sizeof(tok) - 1);
            tr_jwt_keyset_release(set);
        }
        break;
    }
    case 2:
        signed_payload(&v, (const uint8_t *)rest, len);
        break;
    default: {
        unsigned char out[TR_JWT_MAX_TOKEN_BYTES];
        int n = tr_jwt_base64url_decode(rest, len, out, sizeof(out));
        if (n > (int)sizeof(out)) abort();
        break;
    }
    }
    return 0;
}
