/* Consul's KV store: /v1/kv with recurse, keys, separator, cas, raw, flags, blocking. */
#ifndef TR_REGISTRY_KV_H
#define TR_REGISTRY_KV_H

#include "registry/store.h"
#include "trellis/http.h"

#include <stdbool.h>
#include <stdint.h>
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

/* Whether `session` names a live session; the session module installs it. */
typedef bool (*tr_kv_session_cb)(void *data, const char *session);

/*
 * Installs the session lookup ?acquire= consults. Without one, every acquire fails as an
 * invalid session. `data` is passed back to cb and must outlive the KV or be reset.
 */
void tr_kv_set_session_check(tr_kv_t *kv, tr_kv_session_cb cb, void *data);

/*
 * Invalidating a session, in two steps around the caller's transaction (tr_store_begin
 * returned `index`): _write stores the release (or, with behavior_delete, the deletion) of
 * every key `session` holds, returning 0 or TR_EIO; after the commit, _apply makes the same
 * change in memory, holds the keys back from acquisition for lock_delay_ms (0: none), and
 * wakes their watchers. Call nothing else on the KV between the two.
 */
int tr_kv_release_session_write(tr_kv_t *kv, const char *session, bool behavior_delete,
                                uint64_t index);
void tr_kv_release_session_apply(tr_kv_t *kv, const char *session, bool behavior_delete,
                                 uint64_t index, uint64_t lock_delay_ms);

/* Answers every blocked watcher with its current result and frees the KV. */
void tr_kv_close(tr_kv_t *kv);

#endif
