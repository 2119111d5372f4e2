/* Consul's KV store: /v1/kv with recurse, keys, separator, cas, raw, flags, blocking. */
#ifndef TR_REGISTRY_KV_H
#define TR_REGISTRY_KV_H

#include "registry/store.h"
#include "trellis/http.h"

#include <uv.h>

typedef struct tr_kv_s tr_kv_t;

/* Loads every key from the store into memory. The store outlives the KV. */
int tr_kv_open(uv_loop_t *loop, tr_store_t *store, tr_kv_t **out, char *err, size_t errlen);

/*
 * Serves GET, PUT and DELETE on /v1/kv/<key>; `key` is the decoded key (may be "", e.g.
 * for ?recurse over everything). Blocking GETs are answered when their result changes or
 * their wait ends.
 */
void tr_kv_handle(tr_kv_t *kv, tr_http_req_t *req, const char *key);

/* Answers every blocked watcher with its current result and frees the KV. */
void tr_kv_close(tr_kv_t *kv);

#endif
