/* Config files: YAML or JSON into one jansson tree, with typed getters and file:line:col errors. */
#ifndef TRELLIS_CONFIG_H
#define TRELLIS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/* Limits that keep a hostile or broken file from exhausting memory or the stack. */
#define TR_CONFIG_MAX_BYTES    (16u << 20) /* file or string size */
#define TR_CONFIG_MAX_NODES    1000000     /* values after expanding aliases */
#define TR_CONFIG_MAX_EXPANDED (64u << 20) /* bytes of keys and strings after expanding aliases */
#define TR_CONFIG_MAX_DEPTH    512         /* nesting of mappings and lists */

typedef struct tr_config_s tr_config_t;

/* A rate: `count` events per `per_ms` milliseconds (per_ms is never 0). */
typedef struct tr_rate_s {
    double count;
    uint64_t per_ms;
} tr_rate_t;

/*
 * Loads a YAML or JSON file (JSON is YAML flow syntax) into a tree whose top level is an
 * object; an empty file gives an empty object. On success *out owns the tree (free it with
 * tr_config_free). On failure returns a negative error code (TR_EPARSE for syntax,
 * TR_ECONFIG for a bad document, TR_ETOOLARGE for a limit, -errno when the file cannot be
 * read), sets *out to NULL and writes "file:line:col: what is wrong" to err (may be NULL).
 */
int tr_config_load_file(const char *path, tr_config_t **out, char *err, size_t errlen);

/* Same as tr_config_load_file for text already in memory; `name` (may be NULL) is used in
 * messages as the file name. `text` need not be NUL-terminated and is not kept. */
int tr_config_load_string(const char *name, const char *text, size_t len, tr_config_t **out,
                          char *err, size_t errlen);

/* Frees the config and its tree; every json_t and string obtained from it dies with it. */
void tr_config_free(tr_config_t *cfg);

/* The top-level object, owned by cfg. Treat the tree as read-only: positions and paths are
 * recorded per node at load time. */
json_t *tr_config_root(tr_config_t *cfg);

/* The file name given at load time. */
const char *tr_config_name(const tr_config_t *cfg);

/* The message of the most recent getter error ("" if none), owned by cfg. */
const char *tr_config_error(const tr_config_t *cfg);

/*
 * Finds where `node` starts in the file (1-based). Works for objects, arrays, strings and
 * numbers; true, false and null are shared singletons in jansson, so for those it returns
 * TR_ENOTFOUND (the getters still know their position through the parent and key).
 */
int tr_config_pos(const tr_config_t *cfg, const json_t *node, int *line, int *col);

/*
 * Typed getters. Each reads obj[key]: when obj is NULL, the key is absent or its value is
 * null, it stores `def` and returns 0. On a bad value it stores `def`, returns TR_ECONFIG and
 * records "file:line:col: path.to.key: what is wrong (expected ..., got ...)" for
 * tr_config_error. Strings returned are owned by cfg.
 */
int tr_config_get_string(tr_config_t *cfg, const json_t *obj, const char *key, const char *def,
                         const char **out);
int tr_config_get_bool(tr_config_t *cfg, const json_t *obj, const char *key, bool def, bool *out);
/* An integer within [min, max]. */
int tr_config_get_int(tr_config_t *cfg, const json_t *obj, const char *key, int64_t def,
                      int64_t min, int64_t max, int64_t *out);
/* Any finite number. */
int tr_config_get_double(tr_config_t *cfg, const json_t *obj, const char *key, double def,
                         double *out);
/* A duration string (see tr_parse_duration_ms) or a bare integer number of milliseconds. */
int tr_config_get_duration(tr_config_t *cfg, const json_t *obj, const char *key, uint64_t def_ms,
                           uint64_t *ms);
/* A size string (see tr_parse_size) or a bare integer number of bytes. */
int tr_config_get_size(tr_config_t *cfg, const json_t *obj, const char *key, uint64_t def,
                       uint64_t *bytes);
/* A rate string (see tr_parse_rate); `def` is copied when the key is absent. */
int tr_config_get_rate(tr_config_t *cfg, const json_t *obj, const char *key, tr_rate_t def,
                       tr_rate_t *out);
/* A percentage string ("5%") or a bare number from 0 to 1; *fraction is from 0 to 1. */
int tr_config_get_percent(tr_config_t *cfg, const json_t *obj, const char *key, double def,
                          double *fraction);
/* One of the NULL-terminated `allowed` strings; *out is its index (def when absent). */
int tr_config_get_enum(tr_config_t *cfg, const json_t *obj, const char *key,
                       const char *const *allowed, int def, int *out);
/* A nested object or array; *out is NULL (borrowed otherwise) when absent. */
int tr_config_get_object(tr_config_t *cfg, const json_t *obj, const char *key, json_t **out);
int tr_config_get_array(tr_config_t *cfg, const json_t *obj, const char *key, json_t **out);

/* Returns TR_ECONFIG for the first key of obj not in the NULL-terminated `allowed` list,
 * with "did you mean ...?" when an allowed key is a likely typo of it; 0 otherwise. */
int tr_config_check_keys(tr_config_t *cfg, const json_t *obj, const char *const *allowed);

/*
 * Records a caller's own validation error in the same format and returns TR_ECONFIG: at
 * obj[key], or at obj itself when key is NULL. `fmt` says what is wrong.
 */
int tr_config_fail(tr_config_t *cfg, const json_t *obj, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/*
 * Standalone value parsers, shared by config getters and command-line flags. Each returns 0,
 * TR_EPARSE for malformed input or TR_ETOOLARGE when the value overflows or exceeds its range.
 * No spaces are allowed anywhere in the text.
 *
 * Duration: one or more <number><unit> from the largest unit to the smallest, units
 * us ms s m h d, decimals allowed ("250ms", "1.5s", "1m30s"); "0" alone needs no unit.
 * The result is rounded up to whole milliseconds.
 */
int tr_parse_duration_ms(const char *s, uint64_t *ms);
/* Size: <number>[unit], units (any case) B, kB/KB/MB/GB/TB (powers of 1000) and
 * KiB/MiB/GiB/TiB (powers of 1024); no unit means bytes; rounded up to whole bytes. */
int tr_parse_size(const char *s, uint64_t *bytes);
/* Rate: <count>/<period>, period a word (s sec second m min minute h hr hour d day) or a
 * duration ("100/30s"). */
int tr_parse_rate(const char *s, tr_rate_t *r);
/* Percentage: <number>% from 0% to 100%; *fraction is from 0 to 1. */
int tr_parse_percent(const char *s, double *fraction);

#endif
