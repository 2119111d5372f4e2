/* A per-thread bump arena for the nodes a JSON parser (jansson or cJSON) makes for a request body.
 */
#ifndef TR_CORE_JSON_ARENA_H
#define TR_CORE_JSON_ARENA_H

#include <stdbool.h>

#include <cjson/cJSON.h>
#include <jansson.h>
#include <stddef.h>

/*
 * Parsing a 200 KB span batch makes tens of thousands of small jansson allocations that all
 * die together a moment later; malloc and free for each, interleaved with the long-lived
 * spans the collector keeps, and then json_decref walking the whole tree to free it, cost
 * a third of the parse. tr_json_arena_loadb parses with every jansson allocation of this
 * thread coming from a bump arena instead, and tr_json_arena_reset takes the whole tree
 * back at once: no json_decref needed (one is harmless: freeing arena memory is a no-op).
 *
 * Rules (the caller's to keep):
 *  - Call reset only when nothing parsed since the last reset is used any more: no value
 *    from the tree kept (json_incref) or attached to a longer-lived value, and the tree
 *    never handed to another thread.
 *  - Only the parse itself runs in arena mode, so other jansson and cJSON values (json_dumps
 *    and cJSON_Print results too) come from malloc as usual.
 *
 * jansson's and cJSON's allocation functions are process-wide; ours are installed by a constructor
 * before main. The free function recognises arena memory by address, so values made with
 * plain malloc (even before the functions were installed) are freed as usual.
 */

/* json_loadb(buf, len, 0, err) with the tree in this thread's arena. */
json_t *tr_json_arena_loadb(const char *buf, size_t len, json_error_t *err);
/*
 * cJSON_ParseWithLengthOpts(buf, len) with the tree in this thread's arena; the whole of buf
 * must be one JSON value (white space around it is fine). On failure returns NULL and sets
 * *err_offset to where parsing stopped.
 */
cJSON *tr_json_arena_parse(const char *buf, size_t len, size_t *err_offset);
/* Takes back every arena allocation of this thread (keeps one block for the next parse). */
void tr_json_arena_reset(void);
/* True when jansson's allocations go through the arena's functions. */
bool tr_json_arena_installed(void);

#endif
