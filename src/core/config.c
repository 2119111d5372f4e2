/* Config files: YAML or JSON into one jansson tree, with positions for error messages. */
#include "trellis/config.h"

#include "trellis/error.h"
#include "core/arena.h"
#include "core/buf.h"
#include "core/mem.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <yaml.h>

#define VALUE_SHOWN_MAX 60  /* bytes of a bad value quoted back in a message */
#define SUGGEST_MAX     64  /* longer keys are not compared for "did you mean" */
#define PATH_SHOWN_MAX  240 /* longer key paths are shortened in the middle */

/*
 * Position tables are open-addressing hash maps. One row type serves three tables, and
 * the fields mean different things in each:
 *   nodes    identity ptr (a node); key = its key in the parent object (NULL in an array),
 *            link = the parent (NULL for the root), a = index in the parent array,
 *            line/col = where the node starts.
 *   members  identity (ptr = object, key); line/col = where the key starts, a/b = where the
 *            value starts. This is how true/false/null, which jansson shares, get a position.
 *   anchors  identity (NULL, key = anchor name); link = the anchored node (NULL while it is
 *            still being built), line/col = where it starts.
 */
typedef struct pos_s {
    const void *ptr;
    const char *key;
    const void *link;
    uint32_t line, col;
    uint32_t a, b;
} pos_t;

typedef struct postab_s {
    pos_t *rows;
    size_t cap; /* a power of two, or 0 */
    size_t used;
    bool keyed; /* whether key is part of a row's identity */
} postab_t;

struct tr_config_s {
    char *name;
    json_t *root;
    postab_t nodes;
    postab_t members;
    tr_buf_t err;
};

/* ---- position tables ---- */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

static uint64_t row_hash(const postab_t *t, const void *ptr, const char *key)
{
    uint64_t h = mix64((uint64_t)(uintptr_t)ptr);
    if (t->keyed)
        for (const unsigned char *s = (const unsigned char *)key; *s; s++)
            h = (h ^ *s) * 0x100000001b3ULL;
    return mix64(h);
}

static bool row_empty(const pos_t *r)
{
    return r->ptr == NULL && r->key == NULL;
}

static bool row_is(const postab_t *t, const pos_t *r, const void *ptr, const char *key)
{
    return r->ptr == ptr && (!t->keyed || strcmp(r->key, key) == 0);
}

/* Finds the slot for (ptr, key): the matching row, or the empty slot where it would go. */
static pos_t *postab_slot(const postab_t *t, const void *ptr, const char *key)
{
    size_t mask = t->cap - 1;
    for (size_t i = row_hash(t, ptr, key) & mask;; i = (i + 1) & mask) {
        pos_t *r = &t->rows[i];
        if (row_empty(r) || row_is(t, r, ptr, key)) return r;
    }
}

static pos_t *postab_find(const postab_t *t, const void *ptr, const char *key)
{
    if (t->cap == 0) return NULL;
    pos_t *r = postab_slot(t, ptr, key);
    return row_empty(r) ? NULL : r;
}

static void postab_grow(postab_t *t)
{
    postab_t old = *t;
    t->cap = old.cap ? old.cap * 2 : 64;
    t->rows = tr_calloc(t->cap, sizeof(pos_t));
    for (size_t i = 0; i < old.cap; i++)
        if (!row_empty(&old.rows[i]))
            *postab_slot(t, old.rows[i].ptr, old.rows[i].key) = old.rows[i];
    free(old.rows);
}

/* Returns the row for (ptr, key), adding a zeroed one if needed. The pointer is valid until
 * the next put; in an unkeyed table the caller may then store anything in row->key. */
static pos_t *postab_put(postab_t *t, const void *ptr, const char *key)
{
    if ((t->used + 1) * 4 > t->cap * 3) postab_grow(t);
    pos_t *r = postab_slot(t, ptr, key);
    if (row_empty(r)) {
        memset(r, 0, sizeof(*r));
        r->ptr = ptr;
        r->key = key;
        t->used++;
    }
    return r;
}

static void postab_free(postab_t *t)
{
    tr_free(&t->rows);
    t->cap = t->used = 0;
}

/* ---- describing paths and values in messages ---- */

static bool is_singleton(const json_t *v)
{
    return json_is_true(v) || json_is_false(v) || json_is_null(v);
}

/* The largest length <= n that does not end inside a UTF-8 sequence of s. */
static size_t utf8_cut(const char *s, size_t n)
{
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

/* Appends s quoted and escaped so that a message stays on one line, cut after max bytes. */
static void append_quoted(tr_buf_t *b, const char *s, size_t len, size_t max)
{
    size_t n = len > max ? utf8_cut(s, max) : len;
    tr_buf_append(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            tr_buf_printf(b, "\\%c", c);
        else if (c == '\n')
            tr_buf_append_str(b, "\\n");
        else if (c < 0x20 || c == 0x7f)
            tr_buf_printf(b, "\\x%02x", c);
        else
            tr_buf_append(b, &s[i], 1);
    }
    tr_buf_append_str(b, n < len ? "...\"" : "\"");
}

/* A key goes into a path bare when that cannot be misread, else as ["quoted"]. */
static bool key_is_bare(const char *k)
{
    if (*k == '\0') return false;
    for (; *k; k++)
        if (strchr(".[]\"\\", *k) || (unsigned char)*k <= ' ') return false;
    return true;
}

static void append_segment(tr_buf_t *b, const char *key, uint32_t index)
{
    if (key == NULL) {
        tr_buf_printf(b, "[%u]", index);
    } else if (key_is_bare(key)) {
        if (b->len > 0) tr_buf_append(b, ".", 1);
        tr_buf_append_str(b, key);
    } else {
        tr_buf_append(b, "[", 1);
        append_quoted(b, key, strlen(key), SIZE_MAX);
        tr_buf_append(b, "]", 1);
    }
}

/* Builds the dotted path of a node of this config ("gateway.routes[2]"), "" for the root. */
static void build_path(const tr_config_t *cfg, tr_buf_t *b, const json_t *node)
{
    const pos_t *chain[TR_CONFIG_MAX_DEPTH + 2];
    int n = 0;
    for (const pos_t *p = postab_find(&cfg->nodes, node, NULL); p && p->link;
         p = postab_find(&cfg->nodes, p->link, NULL)) {
        if (n == TR_CONFIG_MAX_DEPTH + 2) break;
        chain[n++] = p;
    }
    while (n-- > 0)
        append_segment(b, chain[n]->key, chain[n]->a);
}

static const char *kind_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "a mapping";
    case JSON_ARRAY:
        return "a list";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number";
    default:
        return "a boolean or null";
    }
}

/* Appends a short form of a bad value: strings quoted, containers by kind. */
static void append_value(tr_buf_t *b, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_STRING:
        append_quoted(b, json_string_value(v), json_string_length(v), VALUE_SHOWN_MAX);
        break;
    case JSON_INTEGER:
        tr_buf_printf(b, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        break;
    case JSON_REAL:
        tr_buf_printf(b, "%.15g", json_real_value(v));
        break;
    case JSON_TRUE:
        tr_buf_append_str(b, "true");
        break;
    case JSON_FALSE:
        tr_buf_append_str(b, "false");
        break;
    case JSON_NULL:
        tr_buf_append_str(b, "null");
        break;
    default:
        tr_buf_append_str(b, kind_name(v));
    }
}

/* Terminates a finished message (appends leave it unterminated) and passes rc through. */
static int end_error(tr_buf_t *b, int rc)
{
    tr_buf_cstr(b);
    return rc;
}

/* Starts a message "name:line:col: path: " (position and path left out when unknown). */
static void begin_error(tr_buf_t *b, const char *name, uint32_t line, uint32_t col,
                        const char *path, size_t path_len)
{
    tr_buf_reset(b);
    tr_buf_append_str(b, name);
    if (line > 0) tr_buf_printf(b, ":%u:%u", line, col);
    tr_buf_append_str(b, ": ");
    if (path_len > PATH_SHOWN_MAX) {
        /* Keep both ends of a very deep path: the top says where, the end says what. */
        size_t head = utf8_cut(path, PATH_SHOWN_MAX / 3);
        size_t tail = path_len - utf8_cut(path, path_len - PATH_SHOWN_MAX / 2);
        tr_buf_append(b, path, head);
        tr_buf_append_str(b, "...");
        tr_buf_append(b, path + path_len - tail, tail);
        tr_buf_append_str(b, ": ");
    } else if (path_len > 0) {
        tr_buf_append(b, path, path_len);
        tr_buf_append_str(b, ": ");
    }
}

/* Starts an error about obj[key]: at the key itself or at its value. */
static void begin_member_error(tr_config_t *cfg, const json_t *obj, const char *key, bool at_key)
{
    tr_buf_t path = TR_BUF_INIT;
    build_path(cfg, &path, obj);
    append_segment(&path, key, 0);
    uint32_t line = 0, col = 0;
    const pos_t *m = postab_find(&cfg->members, obj, key);
    if (m) {
        line = at_key ? m->line : m->a;
        col = at_key ? m->col : m->b;
    }
    begin_error(&cfg->err, cfg->name, line, col, path.data, path.len);
    tr_buf_free(&path);
}

static void begin_node_error(tr_config_t *cfg, const json_t *node)
{
    tr_buf_t path = TR_BUF_INIT;
    build_path(cfg, &path, node);
    const pos_t *p = postab_find(&cfg->nodes, node, NULL);
    begin_error(&cfg->err, cfg->name, p ? p->line : 0, p ? p->col : 0, path.data, path.len);
    tr_buf_free(&path);
}

/* Records "what (expected ..., got <value>)" at obj[key]'s value. */
static int fail_got(tr_config_t *cfg, const json_t *obj, const char *key, const json_t *v,
                    const char *what, const char *expected)
{
    begin_member_error(cfg, obj, key, false);
    tr_buf_printf(&cfg->err, "%s (expected %s, got ", what, expected);
    append_value(&cfg->err, v);
    tr_buf_append_str(&cfg->err, ")");
    return end_error(&cfg->err, TR_ECONFIG);
}

/* ---- decimal numbers and units, shared by the value parsers ---- */

/* A non-negative decimal as written, kept exact: whole + frac / scale. */
typedef struct decnum_s {
    uint64_t whole;
    uint64_t frac;
    uint64_t scale; /* 10^(number of fraction digits) */
} decnum_t;

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* Says why no number starts at p, for the messages of the getters. */
static const char *no_number_why(const char *p)
{
    if (*p == '\0') return "empty";
    if (*p == '-') return "negative values are not allowed";
    if (*p == ' ' || *p == '\t') return "spaces are not allowed";
    return "expected a number";
}

/* Scans digits[.digits] at *p, advancing it. At most 18 fraction digits keeps frac exact. */
static int scan_decimal(const char **p, decnum_t *n, const char **why)
{
    const char *s = *p;
    *n = (decnum_t){0, 0, 1};
    if (!is_digit(*s)) return *why = no_number_why(s), TR_EPARSE;
    for (; is_digit(*s); s++) {
        if (n->whole > (UINT64_MAX - 9) / 10) return *why = "too large", TR_ETOOLARGE;
        n->whole = n->whole * 10 + (uint64_t)(*s - '0');
    }
    if (*s == '.') {
        if (!is_digit(*++s)) return *why = "expected digits after the decimal point", TR_EPARSE;
        for (; is_digit(*s); s++) {
            if (n->scale == 1000000000000000000ULL)
                return *why = "too many decimal places", TR_EPARSE;
            n->frac = n->frac * 10 + (uint64_t)(*s - '0');
            n->scale *= 10;
        }
    }
    *p = s;
    return 0;
}

/* n * mult rounded up, or TR_ETOOLARGE when it does not fit in 64 bits. */
static int scale_decimal(const decnum_t *n, uint64_t mult, uint64_t *out)
{
    unsigned __int128 v = (unsigned __int128)n->whole * mult;
    unsigned __int128 f = (unsigned __int128)n->frac * mult;
    v += f / n->scale + (f % n->scale != 0);
    if (v > UINT64_MAX) return TR_ETOOLARGE;
    *out = (uint64_t)v;
    return 0;
}

static double decimal_value(const decnum_t *n)
{
    return (double)n->whole + (double)n->frac / (double)n->scale;
}

/* Why the text after a number is not a unit. */
static const char *bad_unit_why(const char *p)
{
    if (*p == ' ' || *p == '\t') return "spaces are not allowed";
    return "unexpected character";
}

typedef struct unit_s {
    const char *name;
    uint64_t mult;
} unit_t;

/* Finds the unit spelled by s[0..len) in a NULL-terminated table, or -1. */
static int find_unit(const unit_t *units, const char *s, size_t len, bool any_case)
{
    for (int i = 0; units[i].name; i++) {
        const char *u = units[i].name;
        if (strlen(u) != len) continue;
        if (any_case ? strncasecmp(u, s, len) == 0 : strncmp(u, s, len) == 0) return i;
    }
    return -1;
}

/* Largest first: a duration's units must appear in this order. Multipliers are in us. */
static const unit_t duration_units[] = {
    {"d", 86400000000ULL}, {"h", 3600000000ULL}, {"m", 60000000ULL}, {"s", 1000000ULL},
    {"ms", 1000ULL},       {"us", 1ULL},         {NULL, 0},
};

/* Parses one <number><unit> part of a duration at *p, adding it to *us. */
static int duration_part(const char **p, int *last, uint64_t *us, const char **why)
{
    decnum_t n;
    int rc = scan_decimal(p, &n, why);
    if (rc) return rc;
    const char *u = *p;
    while (is_alpha(**p))
        (*p)++;
    if (*p == u) return *why = **p ? bad_unit_why(*p) : "missing unit", TR_EPARSE;
    int unit = find_unit(duration_units, u, (size_t)(*p - u), false);
    if (unit < 0) return *why = "unknown unit", TR_EPARSE;
    if (unit <= *last) return *why = "units must go from largest to smallest", TR_EPARSE;
    *last = unit;
    uint64_t part;
    if (scale_decimal(&n, duration_units[unit].mult, &part) || part > UINT64_MAX - *us)
        return *why = "too large", TR_ETOOLARGE;
    *us += part;
    return 0;
}

static int parse_duration(const char *s, uint64_t *ms, const char **why)
{
    if (strcmp(s, "0") == 0) return *ms = 0, 0;
    if (*s == '\0') return *why = "empty", TR_EPARSE;
    uint64_t us = 0;
    int last = -1;
    for (const char *p = s; *p;) {
        int rc = duration_part(&p, &last, &us, why);
        if (rc) return rc;
    }
    *ms = us / 1000 + (us % 1000 != 0);
    return 0;
}

static const unit_t size_units[] = {
    {"b", 1ULL},
    {"kb", 1000ULL},
    {"mb", 1000000ULL},
    {"gb", 1000000000ULL},
    {"tb", 1000000000000ULL},
    {"kib", 1ULL << 10},
    {"mib", 1ULL << 20},
    {"gib", 1ULL << 30},
    {"tib", 1ULL << 40},
    {NULL, 0},
};

static int parse_size(const char *s, uint64_t *bytes, const char **why)
{
    const char *p = s;
    decnum_t n;
    int rc = scan_decimal(&p, &n, why);
    if (rc) return rc;
    const char *u = p;
    while (is_alpha(*p))
        p++;
    if (*p) return *why = bad_unit_why(p), TR_EPARSE;
    uint64_t mult = 1;
    if (p > u) {
        int unit = find_unit(size_units, u, (size_t)(p - u), true);
        if (unit < 0) return *why = "unknown unit", TR_EPARSE;
        mult = size_units[unit].mult;
    }
    if (mult == 1 && n.frac != 0) return *why = "a number of bytes must be whole", TR_EPARSE;
    if (scale_decimal(&n, mult, bytes)) return *why = "too large", TR_ETOOLARGE;
    return 0;
}

static const unit_t rate_periods[] = {
    {"s", 1000},       {"sec", 1000},     {"second", 1000},  {"m", 60000},
    {"min", 60000},    {"minute", 60000}, {"h", 3600000},    {"hr", 3600000},
    {"hour", 3600000}, {"d", 86400000},   {"day", 86400000}, {NULL, 0},
};

static int parse_rate(const char *s, tr_rate_t *r, const char **why)
{
    const char *p = s;
    decnum_t n;
    int rc = scan_decimal(&p, &n, why);
    if (rc) return rc;
    if (*p != '/') return *why = *p ? bad_unit_why(p) : "missing /period", TR_EPARSE;
    p++;
    uint64_t per_ms;
    if (is_digit(*p)) {
        if ((rc = parse_duration(p, &per_ms, why))) return rc;
        if (per_ms == 0) return *why = "the period must be longer than zero", TR_EPARSE;
    } else {
        int unit = find_unit(rate_periods, p, strlen(p), true);
        if (unit < 0) return *why = *p ? "unknown period" : "missing period", TR_EPARSE;
        per_ms = rate_periods[unit].mult;
    }
    r->count = decimal_value(&n);
    r->per_ms = per_ms;
    return 0;
}

static int parse_percent(const char *s, double *fraction, const char **why)
{
    const char *p = s;
    decnum_t n;
    int rc = scan_decimal(&p, &n, why);
    if (rc) return rc;
    if (*p != '%') return *why = *p ? bad_unit_why(p) : "missing %", TR_EPARSE;
    if (p[1]) return *why = "unexpected text after %", TR_EPARSE;
    if (n.whole > 100 || (n.whole == 100 && n.frac > 0))
        return *why = "more than 100%", TR_ETOOLARGE;
    *fraction = decimal_value(&n) / 100.0;
    return 0;
}

int tr_parse_duration_ms(const char *s, uint64_t *ms)
{
    const char *why;
    return parse_duration(s, ms, &why);
}

int tr_parse_size(const char *s, uint64_t *bytes)
{
    const char *why;
    return parse_size(s, bytes, &why);
}

int tr_parse_rate(const char *s, tr_rate_t *r)
{
    const char *why;
    return parse_rate(s, r, &why);
}

int tr_parse_percent(const char *s, double *fraction)
{
    const char *why;
    return parse_percent(s, fraction, &why);
}

/* ---- loading: libyaml events into a jansson tree ---- */

/* A mapping or list being filled. */
typedef struct frame_s {
    json_t *node; /* borrowed: owned by its parent, or by cfg->root */
    char *key;    /* mappings: the key whose value comes next (owned), or NULL */
    uint32_t key_line, key_col;
    const char *anchor; /* the node's anchor name (in the loader's arena), or NULL */
} frame_t;

typedef struct loader_s {
    tr_config_t *cfg;
    yaml_parser_t parser;
    const char *text;
    size_t len;
    frame_t stack[TR_CONFIG_MAX_DEPTH];
    int depth;
    size_t nodes;    /* values created so far, alias copies included */
    size_t expanded; /* bytes of keys and strings created by alias copies */
    int documents;
    uint32_t alias_line, alias_col; /* the alias being expanded, where limit errors point */
    postab_t anchors;
    tr_arena_t arena;
} loader_t;

static frame_t *top(loader_t *ld)
{
    return ld->depth > 0 ? &ld->stack[ld->depth - 1] : NULL;
}

/* Whether the next scalar is a mapping key rather than a value. */
static bool awaiting_key(loader_t *ld)
{
    frame_t *f = top(ld);
    return f && json_is_object(f->node) && f->key == NULL;
}

/* Records a load error at line:col about the slot being filled (its path when known). */
static int load_fail(loader_t *ld, int rc, uint32_t line, uint32_t col, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static int load_fail(loader_t *ld, int rc, uint32_t line, uint32_t col, const char *fmt, ...)
{
    tr_buf_t path = TR_BUF_INIT;
    frame_t *f = top(ld);
    if (f) {
        build_path(ld->cfg, &path, f->node);
        if (f->key) append_segment(&path, f->key, 0);
        if (json_is_array(f->node)) append_segment(&path, NULL, (uint32_t)json_array_size(f->node));
    }
    begin_error(&ld->cfg->err, ld->cfg->name, line, col, path.data, path.len);
    tr_buf_free(&path);
    va_list ap;
    va_start(ap, fmt);
    tr_buf_vprintf(&ld->cfg->err, fmt, ap);
    va_end(ap);
    return end_error(&ld->cfg->err, rc);
}

/* Counts a new value against the limits that stop alias bombs. */
static int charge(loader_t *ld, size_t bytes, uint32_t line, uint32_t col)
{
    if (++ld->nodes > TR_CONFIG_MAX_NODES)
        return load_fail(ld, TR_ETOOLARGE, line, col,
                         "more than %d values (aliases included); is an alias expanding "
                         "exponentially?",
                         TR_CONFIG_MAX_NODES);
    ld->expanded += bytes;
    if (ld->expanded > TR_CONFIG_MAX_EXPANDED)
        return load_fail(ld, TR_ETOOLARGE, line, col, "aliases expand to more than %u MiB of text",
                         TR_CONFIG_MAX_EXPANDED >> 20);
    return 0;
}

static void record_node(tr_config_t *cfg, const json_t *node, const json_t *parent, const char *key,
                        size_t index, uint32_t line, uint32_t col)
{
    if (is_singleton(node)) return;
    pos_t *r = postab_put(&cfg->nodes, node, NULL);
    r->key = key;
    r->link = parent;
    r->a = (uint32_t)index;
    r->line = line;
    r->col = col;
}

static void record_member(tr_config_t *cfg, const json_t *obj, const char *key, uint32_t key_line,
                          uint32_t key_col, uint32_t line, uint32_t col)
{
    pos_t *m = postab_put(&cfg->members, obj, key);
    m->line = key_line;
    m->col = key_col;
    m->a = line;
    m->b = col;
}

/* Sets obj[key] = value (stolen), returning jansson's copy of the key, which lives as long
 * as the member and so can be kept in the position tables. */
static const char *object_put(json_t *obj, const char *key, json_t *value)
{
    if (json_object_set_new(obj, key, value)) return NULL;
    return json_object_iter_key(json_object_iter_at(obj, key));
}

static int set_root(loader_t *ld, json_t *value, uint32_t line, uint32_t col)
{
    if (json_is_null(value)) {
        value = json_object(); /* an empty document is an empty config */
        line = col = 1;
    }
    if (!json_is_object(value)) {
        const char *kind = kind_name(value);
        json_decref(value);
        return load_fail(ld, TR_ECONFIG, line, col,
                         "the top level must be a mapping of keys to values, not %s", kind);
    }
    ld->cfg->root = value;
    record_node(ld->cfg, value, NULL, NULL, 0, line, col);
    return 0;
}

/* Puts a new value (stolen) into the mapping or list being filled, or makes it the root. */
static int attach(loader_t *ld, json_t *value, uint32_t line, uint32_t col)
{
    frame_t *f = top(ld);
    if (!f) return set_root(ld, value, line, col);
    if (json_is_array(f->node)) {
        size_t index = json_array_size(f->node);
        json_array_append_new(f->node, value);
        record_node(ld->cfg, value, f->node, NULL, index, line, col);
        return 0;
    }
    const char *key = object_put(f->node, f->key, value);
    if (!key) return load_fail(ld, TR_ECONFIG, f->key_line, f->key_col, "invalid key");
    record_member(ld->cfg, f->node, key, f->key_line, f->key_col, line, col);
    record_node(ld->cfg, value, f->node, key, 0, line, col);
    tr_free(&f->key);
    return 0;
}

/* ---- scalars: the YAML 1.2 core schema ---- */

static bool is_int10(const char *s)
{
    if (*s == '+' || *s == '-') s++;
    if (!is_digit(*s)) return false;
    while (is_digit(*s))
        s++;
    return *s == '\0';
}

static bool is_int_base(const char *s, const char *prefix, const char *digits)
{
    size_t n = strlen(prefix);
    if (strncmp(s, prefix, n) != 0 || s[n] == '\0') return false;
    return strspn(s + n, digits) == strlen(s + n);
}

static bool is_float(const char *s)
{
    bool digits = false;
    if (*s == '+' || *s == '-') s++;
    for (; is_digit(*s); s++)
        digits = true;
    if (*s == '.')
        for (s++; is_digit(*s); s++)
            digits = true;
    if (!digits) return false;
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '+' || *s == '-') s++;
        if (!is_digit(*s)) return false;
        while (is_digit(*s))
            s++;
    }
    return *s == '\0';
}

static bool is_one_of(const char *s, const char *const *words)
{
    for (; *words; words++)
        if (strcmp(s, *words) == 0) return true;
    return false;
}

static const char *const null_words[] = {"", "~", "null", "Null", "NULL", NULL};
static const char *const true_words[] = {"true", "True", "TRUE", NULL};
static const char *const false_words[] = {"false", "False", "FALSE", NULL};
static const char *const inf_nan_words[] = {".inf",  ".Inf",  ".INF",  "+.inf", "+.Inf",
                                            "+.INF", "-.inf", "-.Inf", "-.INF", ".nan",
                                            ".NaN",  ".NAN",  NULL};

/* An integer in one of the core schema's forms, or NULL when it does not fit in 64 bits. */
static json_t *make_int(const char *s)
{
    int base = 10;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'o')) {
        base = s[1] == 'x' ? 16 : 8;
        s += 2;
    }
    errno = 0;
    long long v = strtoll(s, NULL, base);
    return errno == ERANGE ? NULL : json_integer(v);
}

/* Resolves a plain (unquoted) scalar; NULL with *why for a number JSON cannot hold. */
static json_t *resolve_plain(const char *s, size_t len, const char **why)
{
    if (is_one_of(s, null_words)) return json_null();
    if (is_one_of(s, true_words)) return json_true();
    if (is_one_of(s, false_words)) return json_false();
    *why = "does not fit in 64 bits";
    if (is_int10(s) || is_int_base(s, "0x", "0123456789abcdefABCDEF") ||
        is_int_base(s, "0o", "01234567"))
        return make_int(s);
    *why = "is not a finite number, which JSON cannot hold";
    if (is_float(s)) {
        double d = strtod(s, NULL);
        return isfinite(d) ? json_real(d) : NULL;
    }
    if (is_one_of(s, inf_nan_words)) return NULL;
    *why = "is not valid UTF-8";
    return json_stringn(s, len);
}

#define CORE_TAG "tag:yaml.org,2002:"

/* Checks an explicit tag on a scalar; sets *as_string for tags that force a string. */
static int scalar_tag(loader_t *ld, const yaml_event_t *ev, bool *as_string)
{
    const char *tag = (const char *)ev->data.scalar.tag;
    *as_string = ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE;
    if (!tag) return 0;
    if (strcmp(tag, "!") == 0 || strcmp(tag, CORE_TAG "str") == 0) return *as_string = true, 0;
    static const char *const core[] = {CORE_TAG "null", CORE_TAG "bool", CORE_TAG "int",
                                       CORE_TAG "float", NULL};
    if (is_one_of(tag, core)) return *as_string = false, 0;
    return load_fail(ld, TR_ECONFIG, (uint32_t)ev->start_mark.line + 1,
                     (uint32_t)ev->start_mark.column + 1, "unsupported tag %s", tag);
}

static int resolve_scalar(loader_t *ld, const yaml_event_t *ev, json_t **out)
{
    const char *s = (const char *)ev->data.scalar.value;
    size_t len = ev->data.scalar.length;
    uint32_t line = (uint32_t)ev->start_mark.line + 1, col = (uint32_t)ev->start_mark.column + 1;
    bool as_string;
    const char *why = "is not valid UTF-8";
    int rc = scalar_tag(ld, ev, &as_string);
    if (rc) return rc;
    *out = as_string ? json_stringn(s, len) : resolve_plain(s, len, &why);
    if (*out) return 0;
    tr_buf_t shown = TR_BUF_INIT;
    append_quoted(&shown, s, len, VALUE_SHOWN_MAX);
    rc = load_fail(ld, TR_ECONFIG, line, col, "%s %s (quote it to make it a string)",
                   tr_buf_cstr(&shown), why);
    tr_buf_free(&shown);
    return rc;
}

/* Keeps a mapping key until its value arrives; keys are always strings, taken as written. */
static int take_key(loader_t *ld, const yaml_event_t *ev)
{
    frame_t *f = top(ld);
    const char *s = (const char *)ev->data.scalar.value;
    uint32_t line = (uint32_t)ev->start_mark.line + 1, col = (uint32_t)ev->start_mark.column + 1;
    if (strlen(s) != ev->data.scalar.length)
        return load_fail(ld, TR_ECONFIG, line, col, "a key cannot contain a NUL character");
    f->key = tr_strdup(s);
    f->key_line = line;
    f->key_col = col;
    const pos_t *first = postab_find(&ld->cfg->members, f->node, s);
    if (first)
        return load_fail(ld, TR_ECONFIG, line, col, "duplicate key (first defined at line %u)",
                         first->line);
    return 0;
}

static void define_anchor(loader_t *ld, const char *name, const json_t *node, uint32_t line,
                          uint32_t col)
{
    pos_t *a = postab_find(&ld->anchors, NULL, name);
    if (!a) a = postab_put(&ld->anchors, NULL, tr_arena_strdup(&ld->arena, name));
    a->link = node;
    a->line = line;
    a->col = col;
}

static int on_scalar(loader_t *ld, const yaml_event_t *ev)
{
    if (awaiting_key(ld)) return take_key(ld, ev);
    uint32_t line = (uint32_t)ev->start_mark.line + 1, col = (uint32_t)ev->start_mark.column + 1;
    json_t *v = NULL;
    int rc = resolve_scalar(ld, ev, &v);
    if (rc == 0) rc = charge(ld, 0, line, col);
    if (rc) {
        json_decref(v);
        return rc;
    }
    if ((rc = attach(ld, v, line, col))) return rc;
    if (ev->data.scalar.anchor)
        define_anchor(ld, (const char *)ev->data.scalar.anchor, v, line, col);
    return 0;
}

static int on_start(loader_t *ld, const yaml_event_t *ev, bool is_map)
{
    uint32_t line = (uint32_t)ev->start_mark.line + 1, col = (uint32_t)ev->start_mark.column + 1;
    if (awaiting_key(ld))
        return load_fail(ld, TR_ECONFIG, line, col, "a key must be a string, not %s",
                         is_map ? "a mapping" : "a list");
    if (ld->depth == TR_CONFIG_MAX_DEPTH)
        return load_fail(ld, TR_ETOOLARGE, line, col, "nested deeper than %d levels",
                         TR_CONFIG_MAX_DEPTH);
    int rc = charge(ld, 0, line, col);
    json_t *node = is_map ? json_object() : json_array();
    if (rc == 0)
        rc = attach(ld, node, line, col);
    else
        json_decref(node);
    if (rc) return rc;
    const yaml_char_t *anchor =
        is_map ? ev->data.mapping_start.anchor : ev->data.sequence_start.anchor;
    frame_t *f = &ld->stack[ld->depth++];
    *f = (frame_t){.node = node};
    if (anchor) {
        /* Defined now but without a node, so an alias inside it is caught as recursive. */
        define_anchor(ld, (const char *)anchor, NULL, line, col);
        f->anchor = postab_find(&ld->anchors, NULL, (const char *)anchor)->key;
    }
    return 0;
}

static void on_end(loader_t *ld)
{
    frame_t *f = &ld->stack[--ld->depth];
    if (f->anchor) postab_find(&ld->anchors, NULL, f->anchor)->link = f->node;
    tr_free(&f->key);
}

/* Deep-copies an anchored value for an alias at nesting `depth`. Copies keep the positions of
 * the anchored text, which is where a bad value has to be fixed. */
static json_t *copy_value(loader_t *ld, const json_t *src, int depth, int *rc);

static int copy_members(loader_t *ld, const json_t *src, json_t *dst, int depth)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)src, key, v)
    {
        int rc = 0;
        json_t *c = copy_value(ld, v, depth + 1, &rc);
        if (!c) return rc;
        const pos_t *m = postab_find(&ld->cfg->members, src, key);
        pos_t sm = m ? *m : (pos_t){0};
        const char *k = object_put(dst, key, c);
        if (!k) return load_fail(ld, TR_ECONFIG, sm.line, sm.col, "invalid key");
        record_member(ld->cfg, dst, k, sm.line, sm.col, sm.a, sm.b);
        record_node(ld->cfg, c, dst, k, 0, sm.a, sm.b);
        ld->expanded += strlen(key);
    }
    return 0;
}

static int copy_items(loader_t *ld, const json_t *src, json_t *dst, int depth)
{
    for (size_t i = 0; i < json_array_size(src); i++) {
        const json_t *v = json_array_get(src, i);
        int rc = 0;
        json_t *c = copy_value(ld, v, depth + 1, &rc);
        if (!c) return rc;
        const pos_t *p = postab_find(&ld->cfg->nodes, v, NULL);
        json_array_append_new(dst, c);
        record_node(ld->cfg, c, dst, NULL, i, p ? p->line : 0, p ? p->col : 0);
    }
    return 0;
}

static json_t *copy_value(loader_t *ld, const json_t *src, int depth, int *rc)
{
    size_t bytes = json_is_string(src) ? json_string_length(src) : 0;
    if ((*rc = charge(ld, bytes, ld->alias_line, ld->alias_col))) return NULL;
    if (json_is_object(src) || json_is_array(src)) {
        if (depth > TR_CONFIG_MAX_DEPTH) {
            *rc = load_fail(ld, TR_ETOOLARGE, ld->alias_line, ld->alias_col,
                            "nested deeper than %d levels", TR_CONFIG_MAX_DEPTH);
            return NULL;
        }
        json_t *dst = json_is_object(src) ? json_object() : json_array();
        *rc = json_is_object(src) ? copy_members(ld, src, dst, depth)
                                  : copy_items(ld, src, dst, depth);
        if (*rc) json_decref(dst);
        return *rc ? NULL : dst;
    }
    return json_deep_copy(src); /* a scalar: a fresh node, or the same singleton */
}

static int on_alias(loader_t *ld, const yaml_event_t *ev)
{
    const char *name = (const char *)ev->data.alias.anchor;
    uint32_t line = (uint32_t)ev->start_mark.line + 1, col = (uint32_t)ev->start_mark.column + 1;
    if (awaiting_key(ld))
        return load_fail(ld, TR_ECONFIG, line, col, "an alias cannot be used as a key");
    const pos_t *a = postab_find(&ld->anchors, NULL, name);
    if (!a) return load_fail(ld, TR_ECONFIG, line, col, "unknown anchor &%s", name);
    if (!a->link)
        return load_fail(ld, TR_ECONFIG, line, col,
                         "alias *%s is inside the value it refers to (recursive aliases are "
                         "not supported)",
                         name);
    uint32_t aline = a->line, acol = a->col;
    int rc = 0;
    ld->alias_line = line;
    ld->alias_col = col;
    /* charge() in copy_value counts this node, so the copy is attached without another. */
    json_t *copy = copy_value(ld, a->link, ld->depth + 1, &rc);
    if (!copy) return rc;
    return attach(ld, copy, aline, acol);
}

static int on_event(loader_t *ld, const yaml_event_t *ev)
{
    switch (ev->type) {
    case YAML_DOCUMENT_START_EVENT:
        if (++ld->documents > 1)
            return load_fail(ld, TR_ECONFIG, (uint32_t)ev->start_mark.line + 1,
                             (uint32_t)ev->start_mark.column + 1,
                             "a second document; a config file holds exactly one");
        return 0;
    case YAML_SCALAR_EVENT:
        return on_scalar(ld, ev);
    case YAML_SEQUENCE_START_EVENT:
        return on_start(ld, ev, false);
    case YAML_MAPPING_START_EVENT:
        return on_start(ld, ev, true);
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
        on_end(ld);
        return 0;
    case YAML_ALIAS_EVENT:
        return on_alias(ld, ev);
    default:
        return 0;
    }
}

/* Converts a byte offset (reader errors have no line) to a 1-based line and column. */
static void offset_to_pos(const char *text, size_t len, size_t off, uint32_t *line, uint32_t *col)
{
    *line = *col = 1;
    for (size_t i = 0; i < off && i < len; i++) {
        if (text[i] == '\n') {
            (*line)++;
            *col = 1;
        } else if (((unsigned char)text[i] & 0xC0) != 0x80) {
            (*col)++;
        }
    }
}

static int syntax_error(loader_t *ld)
{
    const yaml_parser_t *p = &ld->parser;
    uint32_t line = (uint32_t)p->problem_mark.line + 1, col = (uint32_t)p->problem_mark.column + 1;
    if (p->error == YAML_READER_ERROR)
        offset_to_pos(ld->text, ld->len, p->problem_offset, &line, &col);
    tr_buf_t *b = &ld->cfg->err;
    begin_error(b, ld->cfg->name, line, col, NULL, 0);
    tr_buf_printf(b, "syntax error: %s", p->problem ? p->problem : "unknown problem");
    if (p->error == YAML_READER_ERROR && p->problem_value != -1)
        tr_buf_printf(b, " (byte 0x%02x)", (unsigned)p->problem_value & 0xff);
    if (p->context)
        tr_buf_printf(b, " (%s at line %zu, column %zu)", p->context, p->context_mark.line + 1,
                      p->context_mark.column + 1);
    return end_error(b, TR_EPARSE);
}

static int load_events(loader_t *ld)
{
    for (;;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&ld->parser, &ev)) return syntax_error(ld);
        int rc = on_event(ld, &ev);
        bool done = ev.type == YAML_STREAM_END_EVENT;
        yaml_event_delete(&ev);
        if (rc) return rc;
        if (done) return ld->cfg->root ? 0 : set_root(ld, json_null(), 1, 1);
    }
}

static int load_text(tr_config_t *cfg, const char *text, size_t len)
{
    if (len > TR_CONFIG_MAX_BYTES) {
        begin_error(&cfg->err, cfg->name, 0, 0, NULL, 0);
        tr_buf_printf(&cfg->err, "larger than the %u MiB limit for config files",
                      TR_CONFIG_MAX_BYTES >> 20);
        return end_error(&cfg->err, TR_ETOOLARGE);
    }
    loader_t *ld = tr_calloc(1, sizeof(*ld));
    ld->cfg = cfg;
    ld->text = text;
    ld->len = len;
    ld->anchors.keyed = true;
    tr_arena_init(&ld->arena, NULL, 0);
    yaml_parser_initialize(&ld->parser);
    yaml_parser_set_input_string(&ld->parser, (const unsigned char *)text, len);
    int rc = load_events(ld);
    while (ld->depth > 0)
        tr_free(&ld->stack[--ld->depth].key);
    yaml_parser_delete(&ld->parser);
    postab_free(&ld->anchors);
    tr_arena_destroy(&ld->arena);
    free(ld);
    return rc;
}

static tr_config_t *config_new(const char *name)
{
    tr_config_t *cfg = tr_calloc(1, sizeof(*cfg));
    cfg->name = tr_strdup(name ? name : "<string>");
    cfg->members.keyed = true;
    return cfg;
}

static void copy_message(char *err, size_t errlen, const char *msg)
{
    if (err && errlen > 0) snprintf(err, errlen, "%s", msg);
}

int tr_config_load_string(const char *name, const char *text, size_t len, tr_config_t **out,
                          char *err, size_t errlen)
{
    tr_config_t *cfg = config_new(name);
    int rc = load_text(cfg, text, len);
    *out = NULL;
    if (rc) {
        copy_message(err, errlen, tr_config_error(cfg));
        tr_config_free(cfg);
        return rc;
    }
    tr_buf_reset(&cfg->err);
    copy_message(err, errlen, "");
    *out = cfg;
    return 0;
}

/* Reads a whole file of at most TR_CONFIG_MAX_BYTES (+1, to notice a larger one). */
static int read_file(const char *path, tr_buf_t *b)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    for (;;) {
        tr_buf_reserve(b, 65536);
        size_t room = b->cap - b->len;
        if (room > TR_CONFIG_MAX_BYTES + 1 - b->len) room = TR_CONFIG_MAX_BYTES + 1 - b->len;
        ssize_t n = read(fd, b->data + b->len, room);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0 || (b->len += (size_t)n) > TR_CONFIG_MAX_BYTES) {
            int rc = n < 0 ? -errno : 0;
            close(fd);
            return rc;
        }
    }
}

int tr_config_load_file(const char *path, tr_config_t **out, char *err, size_t errlen)
{
    tr_buf_t b = TR_BUF_INIT;
    *out = NULL;
    int rc = read_file(path, &b);
    if (rc) {
        tr_buf_reset(&b);
        tr_buf_printf(&b, "%s: cannot read: %s", path, strerror(-rc));
        copy_message(err, errlen, tr_buf_cstr(&b));
    } else {
        rc = tr_config_load_string(path, b.data ? b.data : "", b.len, out, err, errlen);
    }
    tr_buf_free(&b);
    return rc;
}

void tr_config_free(tr_config_t *cfg)
{
    if (!cfg) return;
    json_decref(cfg->root);
    postab_free(&cfg->nodes);
    postab_free(&cfg->members);
    tr_buf_free(&cfg->err);
    free(cfg->name);
    free(cfg);
}

json_t *tr_config_root(tr_config_t *cfg)
{
    return cfg->root;
}

const char *tr_config_name(const tr_config_t *cfg)
{
    return cfg->name;
}

const char *tr_config_error(const tr_config_t *cfg)
{
    return cfg->err.len ? cfg->err.data : "";
}

int tr_config_pos(const tr_config_t *cfg, const json_t *node, int *line, int *col)
{
    const pos_t *p = node ? postab_find(&cfg->nodes, node, NULL) : NULL;
    if (!p) return TR_ENOTFOUND;
    *line = (int)p->line;
    *col = (int)p->col;
    return 0;
}

/* ---- getters ---- */

/* Finds obj[key] for a getter: 1 with *v set when present, 0 when absent or null (use the
 * default), TR_ECONFIG when obj is not an object. */
static int lookup(tr_config_t *cfg, const json_t *obj, const char *key, json_t **v)
{
    if (!obj) return 0;
    if (!json_is_object(obj)) {
        begin_node_error(cfg, obj);
        tr_buf_printf(&cfg->err, "expected a mapping of keys to values, got %s", kind_name(obj));
        return end_error(&cfg->err, TR_ECONFIG);
    }
    *v = json_object_get(obj, key);
    return *v && !json_is_null(*v);
}

int tr_config_get_string(tr_config_t *cfg, const json_t *obj, const char *key, const char *def,
                         const char **out)
{
    json_t *v;
    *out = def;
    int rc = lookup(cfg, obj, key, &v);
    if (rc <= 0) return rc;
    if (!json_is_string(v)) return fail_got(cfg, obj, key, v, "not a string", "a string");
    if (strlen(json_string_value(v)) != json_string_length(v))
        return fail_got(cfg, obj, key, v, "contains a NUL character", "text");
    *out = json_string_value(v);
    return 0;
}

int tr_config_get_bool(tr_config_t *cfg, const json_t *obj, const char *key, bool def, bool *out)
{
    static const char *const yaml11[] = {"yes", "no", "on", "off", "y", "n",
                                         "Yes", "No", "On", "Off", NULL};
    json_t *v;
    *out = def;
    int rc = lookup(cfg, obj, key, &v);
    if (rc <= 0) return rc;
    if (json_is_string(v) && is_one_of(json_string_value(v), yaml11))
        return fail_got(cfg, obj, key, v, "not a boolean (YAML 1.2 reads yes/no/on/off as text)",
                        "true or false");
    if (!json_is_boolean(v)) return fail_got(cfg, obj, key, v, "not a boolean", "true or false");
    *out = json_is_true(v);
    return 0;
}

int tr_config_get_int(tr_config_t *cfg, const json_t *obj, const char *key, int64_t def,
                      int64_t min, int64_t max, int64_t *out)
{
    json_t *v;
    *out = def;
    int rc = lookup(cfg, obj, key, &v);
    if (rc <= 0) return rc;
    char expected[96];
    snprintf(expected, sizeof(expected), "an integer from %lld to %lld", (long long)min,
             (long long)max);
    if (!json_is_integer(v)) return fail_got(cfg, obj, key, v, "not an integer", expected);
    int64_t n = json_integer_value(v);
    if (n < min || n > max) return fail_got(cfg, obj, key, v, "out of range", expected);
    *out = n;
    return 0;
}

int tr_config_get_double(tr_config_t *cfg, const json_t *obj, const char *key, double def,
                         double *out)
{
    json_t *v;
    *out = def;
    int rc = lookup(cfg, obj, key, &v);
    if (rc <= 0) return rc;
    if (!json_is_number(v)) return fail_got(cfg, obj, key, v, "not a number", "a number");
    *out = json_number_value(v);
    return 0;
}

/* Shared by the getters whose values are unit strings or bare integers. */
typedef int (*unit_parse_fn)(const char *s, uint64_t *out, const char **why);

static int get_units(tr_config_t *cfg, const json_t *obj, const char *key, uint64_t def,
                     uint64_t *out, unit_parse_fn parse, const char *what, const char *expected)
{
    json_t *v;
    *out = def;
    int rc = lookup(cfg, obj, key, &v);
    if (rc <= 0) return rc;
    char msg[96];
    const char *why = "wrong type";
    if (json_is_integer(v) && json_integer_value(v) >= 0) {
        *out = (uint64_t)json_integer_value(v);
        return 0;
    }
    if (json_is_integer(v)) why = "negative values are not allowed";
    if (json_is_real(v)) why = "a bare number must be whole";
    if (json_is_string(v) && parse(json_string_value(v), out, &why) == 0) return 0;
    *out = def;
    snprintf(msg, sizeof(msg), "invalid %s: %s", what, why);
    return fail_got(cfg, obj, key, v, msg, expected);
}

int tr_config_get_duration(tr_config_t *cfg, const json_t *obj, const char *key, uint64_t def_ms,
                           uint64_t *ms)
{
    return get_units(cfg, obj, key, def_ms, ms, parse_duration, "duration",
                     "a duration like 250ms, 1.5s or 1m30s with units us, ms, s, m, h, d, or an "
                     "integer number of milliseconds");
}

int tr_config_get_size(tr_config_t *cfg, const json_t *obj, const char *key, uint64_t def,
                       uint64_t *bytes)
{
    return get_units(cfg, obj, key, def, bytes, parse_size, "size",
                     "a size like 512B, 16KiB or 1.5MiB with units B, kB, MB, GB, TB, KiB, MiB, "
                     "GiB, TiB, or an integer number of bytes");
}

int tr_config_get_rate(tr_config_t *cfg, const json_t *obj, const char *key, tr_rate_t def,
                       tr_rate_t *out)
{
    json_t *v;
    *out = def;
    int rc = lookup(cfg, obj, key, &v);
    if (rc <= 0) return rc;
    const char *why = "wrong type";
    if (json_is_string(v) && parse_rate(json_string_value(v), out, &why) == 0) return 0;
    *out = def;
    char msg[96];
    snprintf(msg, sizeof(msg), "invalid rate: %s", why);
    return fail_got(cfg, obj, key, v, msg,
                    "a rate like 100/minute, 10/s or 100/30s with periods s, sec, second, m, "
                    "min, minute, h, hr, hour, d, day or a duration");
}

int tr_config_get_percent(tr_config_t *cfg, const json_t *obj, const char *key, double def,
                          double *fraction)
{
    json_t *v;
    *fraction = def;
    int rc = lookup(cfg, obj, key, &v);
    if (rc <= 0) return rc;
    const char *why = "wrong type";
    if (json_is_number(v)) {
        double d = json_number_value(v);
        if (d >= 0 && d <= 1) return *fraction = d, 0;
        why = "a bare number is a fraction from 0 to 1";
    } else if (json_is_string(v) && parse_percent(json_string_value(v), fraction, &why) == 0) {
        return 0;
    }
    *fraction = def;
    char msg[96];
    snprintf(msg, sizeof(msg), "invalid percentage: %s", why);
    return fail_got(cfg, obj, key, v, msg,
                    "a percentage like 5% or 0.5%, or a fraction from 0 to 1");
}

/* Case-blind optimal string alignment distance (edits, swaps of neighbours count as one). */
static int edit_distance(const char *a, const char *b)
{
    size_t n = strlen(a), m = strlen(b);
    if (n > SUGGEST_MAX || m > SUGGEST_MAX) return SUGGEST_MAX;
    int rows[3][SUGGEST_MAX + 1];
    int *prev2 = rows[0], *prev = rows[1], *cur = rows[2];
    for (size_t j = 0; j <= m; j++)
        prev[j] = (int)j;
    for (size_t i = 1; i <= n; i++) {
        cur[0] = (int)i;
        for (size_t j = 1; j <= m; j++) {
            int cost = tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]);
            int d = prev[j - 1] + cost;
            if (prev[j] + 1 < d) d = prev[j] + 1;
            if (cur[j - 1] + 1 < d) d = cur[j - 1] + 1;
            if (i > 1 && j > 1 &&
                tolower((unsigned char)a[i - 1]) == tolower((unsigned char)b[j - 2]) &&
                tolower((unsigned char)a[i - 2]) == tolower((unsigned char)b[j - 1]) &&
                prev2[j - 2] + 1 < d)
                d = prev2[j - 2] + 1;
            cur[j] = d;
        }
        int *t = prev2;
        prev2 = prev;
        prev = cur;
        cur = t;
    }
    return prev[m];
}

/* The allowed word `typed` is most likely a typo of, or NULL when none is close. */
static const char *suggest(const char *typed, const char *const *allowed)
{
    size_t len = strlen(typed);
    int limit = len <= 3 ? 1 : len <= 7 ? 2 : 3, best_d = limit + 1;
    const char *best = NULL;
    for (; *allowed; allowed++) {
        int d = edit_distance(typed, *allowed);
        if (d < best_d) {
            best_d = d;
            best = *allowed;
        }
    }
    return best;
}

static void append_list(tr_buf_t *b, const char *const *words)
{
    for (int i = 0; words[i]; i++)
        tr_buf_printf(b, "%s%s", i ? ", " : "", words[i]);
}

int tr_config_get_enum(tr_config_t *cfg, const json_t *obj, const char *key,
                       const char *const *allowed, int def, int *out)
{
    json_t *v;
    *out = def;
    int rc = lookup(cfg, obj, key, &v);
    if (rc <= 0) return rc;
    if (json_is_string(v))
        for (int i = 0; allowed[i]; i++)
            if (strcmp(json_string_value(v), allowed[i]) == 0) return *out = i, 0;
    const char *guess = json_is_string(v) ? suggest(json_string_value(v), allowed) : NULL;
    begin_member_error(cfg, obj, key, false);
    if (guess) {
        tr_buf_append_str(&cfg->err, "unknown value ");
        append_value(&cfg->err, v);
        tr_buf_printf(&cfg->err, " (did you mean \"%s\"?)", guess);
        return end_error(&cfg->err, TR_ECONFIG);
    }
    tr_buf_append_str(&cfg->err, "unknown value (expected one of: ");
    append_list(&cfg->err, allowed);
    tr_buf_append_str(&cfg->err, "; got ");
    append_value(&cfg->err, v);
    tr_buf_append_str(&cfg->err, ")");
    return end_error(&cfg->err, TR_ECONFIG);
}

static int get_container(tr_config_t *cfg, const json_t *obj, const char *key, json_t **out,
                         json_type type)
{
    json_t *v;
    *out = NULL;
    int rc = lookup(cfg, obj, key, &v);
    if (rc <= 0) return rc;
    if (json_typeof(v) != type) {
        const char *kind = type == JSON_OBJECT ? "a mapping" : "a list";
        char what[32];
        snprintf(what, sizeof(what), "not %s", kind);
        return fail_got(cfg, obj, key, v, what, kind);
    }
    *out = v;
    return 0;
}

int tr_config_get_object(tr_config_t *cfg, const json_t *obj, const char *key, json_t **out)
{
    return get_container(cfg, obj, key, out, JSON_OBJECT);
}

int tr_config_get_array(tr_config_t *cfg, const json_t *obj, const char *key, json_t **out)
{
    return get_container(cfg, obj, key, out, JSON_ARRAY);
}

int tr_config_check_keys(tr_config_t *cfg, const json_t *obj, const char *const *allowed)
{
    const char *key;
    json_t *v;
    if (!json_is_object(obj)) return 0;
    json_object_foreach((json_t *)obj, key, v)
    {
        if (is_one_of(key, allowed)) continue;
        const char *guess = suggest(key, allowed);
        begin_member_error(cfg, obj, key, true);
        if (guess) {
            tr_buf_printf(&cfg->err, "unknown key (did you mean \"%s\"?)", guess);
        } else {
            tr_buf_append_str(&cfg->err, "unknown key (expected one of: ");
            append_list(&cfg->err, allowed);
            tr_buf_append_str(&cfg->err, ")");
        }
        return end_error(&cfg->err, TR_ECONFIG);
    }
    return 0;
}

int tr_config_fail(tr_config_t *cfg, const json_t *obj, const char *key, const char *fmt, ...)
{
    if (key)
        begin_member_error(cfg, obj, key, false);
    else
        begin_node_error(cfg, obj);
    va_list ap;
    va_start(ap, fmt);
    tr_buf_vprintf(&cfg->err, fmt, ap);
    va_end(ap);
    return end_error(&cfg->err, TR_ECONFIG);
}
