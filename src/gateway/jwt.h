/* JWT (JWS compact) verification for the gateway: key sets pinned per algorithm, claims, cache. */
#ifndef TR_GATEWAY_JWT_H
#define TR_GATEWAY_JWT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/* Tokens longer than this are rejected before any decoding ("token too large"). */
#define TR_JWT_MAX_TOKEN_BYTES 8192

/* Supported algorithms: X(ENUM_SUFFIX, "name"). There is deliberately no "none". */
#define TR_JWT_ALG_MAP(X)                                                                          \
    X(HS256, "HS256")                                                                              \
    X(HS384, "HS384")                                                                              \
    X(HS512, "HS512")                                                                              \
    X(RS256, "RS256")                                                                              \
    X(RS384, "RS384")                                                                              \
    X(RS512, "RS512")                                                                              \
    X(PS256, "PS256")                                                                              \
    X(ES256, "ES256")                                                                              \
    X(ES384, "ES384")

typedef enum tr_jwt_alg_e {
#define TR_JWT_ALG_ENUM(name, str) TR_JWT_##name,
    TR_JWT_ALG_MAP(TR_JWT_ALG_ENUM)
#undef TR_JWT_ALG_ENUM
        TR_JWT_ALG_COUNT
} tr_jwt_alg_t;

/* "RS256" → TR_JWT_RS256. Returns the algorithm, or TR_EUNSUPPORTED (negative). */
int tr_jwt_alg_parse(const char *name);
/* The JOSE name of an algorithm ("RS256"); "unknown" outside the enum. */
const char *tr_jwt_alg_name(tr_jwt_alg_t alg);

/*
 * A set of verification keys, each pinned to exactly one algorithm and optionally named by
 * a `kid`. A set is built by one thread (the add/from functions), then published and never
 * changed again: readers on any thread share it and hold a reference while they use it.
 */
typedef struct tr_jwt_keyset_s tr_jwt_keyset_t;

/* A new empty set with one reference. Aborts on out-of-memory. */
tr_jwt_keyset_t *tr_jwt_keyset_new(void);
/* Adds a reference (any thread). Returns `set`. */
tr_jwt_keyset_t *tr_jwt_keyset_retain(tr_jwt_keyset_t *set);
/* Drops a reference (any thread); the last one frees the set. NULL is ignored. */
void tr_jwt_keyset_release(tr_jwt_keyset_t *set);
/* Number of keys, and whether a key named `kid` is in the set. */
size_t tr_jwt_keyset_count(const tr_jwt_keyset_t *set);
bool tr_jwt_keyset_has_kid(const tr_jwt_keyset_t *set, const char *kid);

/*
 * Adds a public key from PEM text ("-----BEGIN PUBLIC KEY-----", SubjectPublicKeyInfo) pinned
 * to `alg` (RS*, PS256: RSA of at least 2048 bits; ES256: P-256; ES384: P-384). `kid` (may be
 * NULL) and `pem` are copied. Only call before the set is shared. Returns 0, TR_EPARSE for
 * text that is not a public key, TR_EUNSUPPORTED when the key does not fit `alg` (an HS*
 * algorithm included: a public key is never an HMAC secret).
 */
int tr_jwt_keyset_add_pem(tr_jwt_keyset_t *set, const char *kid, tr_jwt_alg_t alg, const char *pem,
                          size_t len);
/*
 * Adds an HMAC secret (raw bytes, copied) pinned to `alg` (HS256/384/512). RFC 7518 3.2: the
 * secret must be at least as long as the hash (32, 48, 64 bytes), else TR_EUNSUPPORTED.
 */
int tr_jwt_keyset_add_hmac(tr_jwt_keyset_t *set, const char *kid, tr_jwt_alg_t alg,
                           const void *secret, size_t len);
/* A new set holding one PEM key; *out is NULL on error. Same errors as tr_jwt_keyset_add_pem. */
int tr_jwt_keyset_from_pem(tr_jwt_alg_t alg, const char *kid, const char *pem, size_t len,
                           tr_jwt_keyset_t **out);
/*
 * Builds a set from a JWKS document ({"keys": [...]}, RFC 7517). Each key's "alg" pins it;
 * without "alg", EC keys are pinned by curve (P-256 → ES256, P-384 → ES384), RSA keys to
 * RS256 only and "oct" keys to HS256. Keys with "use" other than "sig", unknown types or
 * algorithms, or bad parameters are skipped. Returns 0 with *out owning a new set (and the
 * reason the first key was skipped, if one was, in `err`), or TR_EPARSE / TR_ETOOLARGE when
 * the document is unusable or holds no usable key; then *out is NULL and `err` says why.
 * `err` (may be NULL) is always NUL-terminated when errlen > 0.
 */
int tr_jwt_keyset_from_jwks(const char *json, size_t len, tr_jwt_keyset_t **out, char *err,
                            size_t errlen);

/*
 * A per-thread cache of tokens whose signature was verified, keyed by the SHA-256 of the
 * whole token and tied to the key set that verified it. A hit skips decoding and the
 * signature check; the claims (exp, nbf, iss, aud, required) are still checked every time.
 * Not thread-safe: one per worker.
 */
typedef struct tr_jwt_cache_s tr_jwt_cache_t;

/* A direct-mapped cache of `entries` slots (rounded up to a power of two; 0 means 1024). */
tr_jwt_cache_t *tr_jwt_cache_new(size_t entries);
void tr_jwt_cache_free(tr_jwt_cache_t *cache);
/* Lookups answered from the cache and lookups that were not. */
void tr_jwt_cache_stats(const tr_jwt_cache_t *cache, uint64_t *hits, uint64_t *misses);

/*
 * What a route verifies against. Everything is borrowed and must outlive the calls.
 * One verifier per worker: `keys` is swapped on the worker's own thread with
 * tr_jwt_verifier_set_keys, so no reader ever sees a set being freed.
 */
typedef struct tr_jwt_verifier_s {
    tr_jwt_keyset_t *keys;      /* holds a reference; see tr_jwt_verifier_set_keys */
    const char *const *issuers; /* "iss" must be one of these; none = any */
    size_t nissuers;
    const char *const *audiences; /* "aud" (string or array) must hold one; none = any */
    size_t naudiences;
    const char *const *required; /* claim names that must be present ("exp", "sub") */
    size_t nrequired;
    uint64_t leeway_s;     /* clock skew allowed for exp and nbf */
    tr_jwt_cache_t *cache; /* optional, owned by the caller, this thread's */
} tr_jwt_verifier_t;

/* Replaces v->keys with a new reference to `set` (may be NULL) and releases the old one. */
void tr_jwt_verifier_set_keys(tr_jwt_verifier_t *v, tr_jwt_keyset_t *set);

/* A verified token's claims. */
typedef struct tr_jwt_claims_s {
    json_t *payload; /* the claims object; one reference owned by the caller; read-only */
    const char *sub; /* payload's "sub", or NULL; lives as long as payload */
    uint64_t exp;    /* 0 when the token has no "exp" */
} tr_jwt_claims_t;

/* Drops the payload reference and clears *c. */
void tr_jwt_claims_clear(tr_jwt_claims_t *c);

/*
 * Verifies a compact JWS `token` (len bytes, need not be NUL-terminated) at time `now_s`
 * (Unix seconds). Returns 0 and fills *out (may be NULL). Otherwise *out is cleared, *reason
 * (may be NULL) gets a short static string for the 401 detail, and the result is:
 * TR_ETOOLARGE (token too large), TR_EPARSE (malformed token, malformed claims),
 * TR_ENOTFOUND ("unknown kid": a JWKS refresh may help) or UV_EACCES (every other reason:
 * "signature invalid", "token expired", "token not yet valid", "issuer not allowed",
 * "audience not allowed", "missing required claim", "algorithm none not allowed",
 * "algorithm not supported", "algorithm not allowed for key", "no key for algorithm").
 */
int tr_jwt_verify(const tr_jwt_verifier_t *v, const char *token, size_t len, uint64_t now_s,
                  tr_jwt_claims_t *out, const char **reason);

/*
 * Decodes base64url (RFC 4648 section 5; padding optional) into out (room for outcap bytes;
 * len * 3 / 4 always suffices). Returns the decoded length or TR_EPARSE / TR_ETOOLARGE.
 */
int tr_jwt_base64url_decode(const char *in, size_t len, unsigned char *out, size_t outcap);

#endif
