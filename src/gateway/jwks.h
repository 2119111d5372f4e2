/* Background JWKS fetcher: keeps a JWT key set fresh from an issuer's jwks_uri. */
#ifndef TR_GATEWAY_JWKS_H
#define TR_GATEWAY_JWKS_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "gateway/jwt.h"

typedef struct tr_jwks_s tr_jwks_t;

/*
 * A new key set was fetched. `set` is borrowed for the call: retain it to keep it (the
 * gateway hands a reference to each worker, which swaps it into its verifier).
 */
typedef void (*tr_jwks_keys_cb)(tr_jwt_keyset_t *set, void *data);
typedef void (*tr_jwks_close_cb)(tr_jwks_t *jwks);

typedef struct tr_jwks_options_s {
    /* "http://host[:port]/path": an IP literal or a name resolved at each fetch. There is no
     * TLS client yet, so https:// is refused with TR_EUNSUPPORTED. Copied. */
    const char *url;
    uint64_t refresh_ms;      /* fetch again this long after a success (5 min) */
    uint64_t retry_ms;        /* fetch again this long after a failure (30 s) */
    uint64_t min_interval_ms; /* on-demand refreshes start at most this often (30 s) */
    uint64_t timeout_ms;      /* deadline of one whole fetch, resolve to last byte (10 s) */
    size_t max_body_bytes;    /* larger documents fail the fetch (1 MiB) */
    tr_jwks_keys_cb on_keys;  /* required */
    void *data;
} tr_jwks_options_t;

/* Fills `o` with the defaults shown in tr_jwks_options_t (url and on_keys NULL). */
void tr_jwks_options_init(tr_jwks_options_t *o);

/*
 * Starts fetching on `loop` at once. Returns 0 with *out owning the fetcher until
 * tr_jwks_close, UV_EINVAL for a missing callback or a URL it cannot parse, or
 * TR_EUNSUPPORTED for a scheme other than http. A failed fetch keeps the last good set
 * (logged as a warning); a document that did not change is not published again.
 */
int tr_jwks_start(uv_loop_t *loop, const tr_jwks_options_t *o, tr_jwks_t **out);

/*
 * Asks for a fetch now, e.g. after a token named an unknown kid. Safe from any thread until
 * tr_jwks_close is called. Rate limited: a fetch starts at most once per min_interval_ms,
 * and requests while one is in flight or waiting are merged.
 */
void tr_jwks_refresh(tr_jwks_t *jwks);

/* The last good set with a new reference for the caller, or NULL before the first success.
 * Loop thread only. */
tr_jwt_keyset_t *tr_jwks_keys(tr_jwks_t *jwks);

/* Fetches started and fetches that failed since start. Loop thread only. */
void tr_jwks_stats(const tr_jwks_t *jwks, uint64_t *fetches, uint64_t *failures);

/*
 * Stops fetching and cancels a fetch in flight (on_keys does not fire again). `cb` (may be
 * NULL) runs once every handle is closed; the memory is freed right after it returns.
 * Closing twice is safe. Loop thread only.
 */
void tr_jwks_close(tr_jwks_t *jwks, tr_jwks_close_cb cb);

#endif
