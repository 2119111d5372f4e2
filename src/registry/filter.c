/* Consul's ?filter= expressions: a go-bexpr parser into a small tree, and its evaluator. */
#include "registry/filter.h"

#include "core/buf.h"
#include "core/mem.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <regex.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SHOWN_MAX       24    /* bytes of a token quoted back in a message */
#define REGEX_COST_MAX  10000 /* estimated expanded size of a pattern's repetitions */
#define REGEX_GROUP_MAX 64    /* parentheses nested in one pattern */

typedef enum { N_OR, N_AND, N_NOT, N_MATCH } kind_t;

/* "contains" is "in" with the operands swapped, so both compile to OP_IN. */
typedef enum {
    OP_EQ,
    OP_NE,
    OP_EMPTY,
    OP_NOT_EMPTY,
    OP_IN,
    OP_NOT_IN,
    OP_MATCHES,
    OP_NOT_MATCHES
} op_t;

typedef struct node_s node_t;
struct node_s {
    kind_t kind;
    node_t **kids; /* N_OR, N_AND: two or more; N_NOT: one */
    size_t nkids;
    op_t op; /* the rest is N_MATCH's */
    char **path;
    size_t npath;
    char *value; /* NULL for is (not) empty; never contains a NUL */
    size_t vlen;
    bool has_int, has_real, has_re;
    int boolean; /* -1 when the value is no boolean word */
    long long ival;
    double dval;
    regex_t re;
};

struct tr_filter_s {
    node_t *root;
};

typedef struct parser_s {
    const char *s;
    size_t len, pos;
    int depth;
    bool failed;
    char *err;
    size_t errlen;
} parser_t;

/* ---- errors ---- */

static void fail(parser_t *p, size_t at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Keeps the first error only: later ones are consequences of it. */
static void fail(parser_t *p, size_t at, const char *fmt, ...)
{
    if (p->failed) return;
    p->failed = true;
    if (!p->errlen) return;
    int n = snprintf(p->err, p->errlen, "filter: column %zu: ", at + 1);
    if (n < 0 || (size_t)n >= p->errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
    va_end(ap);
}

static bool is_ident_start(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_ident_char(int c)
{
    return is_ident_start(c) || (c >= '0' && c <= '9') || c == '_' || c == '/';
}

static bool is_op_char(int c)
{
    return c && strchr("=!<>~&|", c) != NULL;
}

/* Describes the token at `at` for a "found ..." clause. */
static const char *describe(const parser_t *p, size_t at, char *buf, size_t n)
{
    if (at >= p->len) return "end of input";
    unsigned char c = (unsigned char)p->s[at];
    size_t end = at + 1;
    if (is_ident_char(c) || c == '-' || c == '.')
        while (end < p->len && end - at < SHOWN_MAX &&
               (is_ident_char((unsigned char)p->s[end]) || p->s[end] == '.'))
            end++;
    else if (is_op_char(c))
        while (end < p->len && end - at < 3 && is_op_char((unsigned char)p->s[end]))
            end++;
    else if (!isprint(c)) {
        snprintf(buf, n, "byte 0x%02x", c);
        return buf;
    }
    snprintf(buf, n, "'%.*s'", (int)(end - at), p->s + at);
    return buf;
}

/* ---- lexing helpers ---- */

static void skip_ws(parser_t *p)
{
    while (p->pos < p->len && strchr(" \t\r\n", p->s[p->pos]) && p->s[p->pos])
        p->pos++;
}

/* Whether keyword `kw` (a whole word) starts at `at`. */
static bool word_at(const parser_t *p, size_t at, const char *kw)
{
    size_t n = strlen(kw);
    if (at + n > p->len || memcmp(p->s + at, kw, n) != 0) return false;
    return at + n == p->len || !is_ident_char((unsigned char)p->s[at + n]);
}

/* Consumes keyword `kw` after optional whitespace; leaves pos alone when it is not there. */
static bool accept(parser_t *p, const char *kw)
{
    size_t save = p->pos;
    skip_ws(p);
    if (word_at(p, p->pos, kw)) {
        p->pos += strlen(kw);
        return true;
    }
    p->pos = save;
    return false;
}

/* ---- nodes ---- */

static void node_free(node_t *n)
{
    if (!n) return;
    for (size_t i = 0; i < n->nkids; i++)
        node_free(n->kids[i]);
    free(n->kids);
    for (size_t i = 0; i < n->npath; i++)
        free(n->path[i]);
    free(n->path);
    free(n->value);
    if (n->has_re) regfree(&n->re);
    free(n);
}

static node_t *node_new(kind_t kind)
{
    node_t *n = tr_calloc(1, sizeof(*n));
    n->kind = kind;
    n->boolean = -1;
    return n;
}

static void node_add(node_t *n, node_t *kid)
{
    n->kids = tr_realloc(n->kids, (n->nkids + 1) * sizeof(*n->kids));
    n->kids[n->nkids++] = kid;
}

static void path_add(node_t *n, char *step)
{
    n->path = tr_realloc(n->path, (n->npath + 1) * sizeof(*n->path));
    n->path[n->npath++] = step;
}

/* ---- string literals ---- */

static int hex_digit(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static void append_utf8(tr_buf_t *b, uint32_t cp)
{
    unsigned char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (unsigned char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (unsigned char)(0xc0 | cp >> 6);
        u[1] = (unsigned char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (unsigned char)(0xe0 | cp >> 12);
        u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        u[2] = (unsigned char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        u[0] = (unsigned char)(0xf0 | cp >> 18);
        u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
        u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        u[3] = (unsigned char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    tr_buf_append(b, u, n);
}

/* Reads `digits` hex digits at pos into *out. */
static bool read_hex(parser_t *p, int digits, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < digits; i++) {
        int d = p->pos < p->len ? hex_digit((unsigned char)p->s[p->pos]) : -1;
        if (d < 0) return false;
        v = v << 4 | (uint32_t)d;
        p->pos++;
    }
    *out = v;
    return true;
}

/* Decodes the escape after a backslash (pos is on the character after it), Go's set. */
static bool read_escape(parser_t *p, tr_buf_t *b)
{
    static const char simple[] = "a\ab\bf\fn\nr\rt\tv\v\\\\\"\"''";
    size_t at = p->pos - 1;
    char c = p->pos < p->len ? p->s[p->pos++] : '\0';
    uint32_t cp = 0;
    for (size_t i = 0; c && i + 1 < sizeof(simple); i += 2)
        if (simple[i] == c) {
            tr_buf_append(b, &simple[i + 1], 1);
            return true;
        }
    bool ok = false;
    if (c == 'x')
        ok = read_hex(p, 2, &cp);
    else if (c == 'u')
        ok = read_hex(p, 4, &cp);
    else if (c == 'U')
        ok = read_hex(p, 8, &cp);
    else if (c >= '0' && c <= '7' && p->pos + 1 < p->len) {
        const char *o = p->s + p->pos - 1;
        cp = (uint32_t)((o[0] - '0') * 64 + (o[1] - '0') * 8 + (o[2] - '0'));
        ok = o[1] >= '0' && o[1] <= '7' && o[2] >= '0' && o[2] <= '7' && cp <= 0xff;
        if (ok) p->pos += 2;
    }
    if (!ok || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
        fail(p, at,
             "invalid escape in string; use \\\\, \\\", \\n, \\t, \\xHH, \\uHHHH or a raw "
             "`string`");
        return false;
    }
    if (cp == 0) {
        fail(p, at, "a string cannot contain a NUL character");
        return false;
    }
    if (c == 'x' || (c >= '0' && c <= '7'))
        tr_buf_append(b, &(char){(char)cp}, 1);
    else
        append_utf8(b, cp);
    return true;
}

/* Reads a "double-quoted" or `raw` string at pos into a new string (*len bytes). */
static char *read_string(parser_t *p, size_t *len)
{
    size_t start = p->pos;
    char quote = p->s[p->pos++];
    tr_buf_t b = TR_BUF_INIT;
    for (;;) {
        if (p->pos >= p->len) {
            fail(p, start, "unterminated string; close it with %c", quote);
            break;
        }
        char c = p->s[p->pos++];
        if (c == quote) {
            *len = b.len;
            char *s = tr_strndup(b.data ? b.data : "", b.len);
            tr_buf_free(&b);
            return s;
        }
        if (c == '\\' && quote == '"') {
            if (!read_escape(p, &b)) break;
        } else if (c == '\n' && quote == '"') {
            fail(p, p->pos - 1, "newline in a \"string\"; write \\n or use a `raw string`");
            break;
        } else {
            tr_buf_append(&b, &c, 1);
        }
    }
    tr_buf_free(&b);
    return NULL;
}

/* ---- selectors and values ---- */

/* Reads an identifier at pos (the caller checked its first character). */
static char *read_ident(parser_t *p)
{
    size_t start = p->pos;
    while (p->pos < p->len && is_ident_char((unsigned char)p->s[p->pos]))
        p->pos++;
    return tr_strndup(p->s + start, p->pos - start);
}

/* Reads `["key"]` at pos (on the '[') into a path step. */
static char *read_index(parser_t *p)
{
    size_t open = p->pos++;
    skip_ws(p);
    if (p->pos >= p->len || (p->s[p->pos] != '"' && p->s[p->pos] != '`')) {
        char buf[64];
        fail(p, p->pos, "expected a quoted key after '[', found %s; write Meta[\"key\"]",
             describe(p, p->pos, buf, sizeof(buf)));
        return NULL;
    }
    size_t len;
    char *key = read_string(p, &len);
    if (!key) return NULL;
    skip_ws(p);
    if (p->pos >= p->len || p->s[p->pos] != ']') {
        char buf[64];
        fail(p, p->pos, "expected ']' to close the '[' at column %zu, found %s", open + 1,
             describe(p, p->pos, buf, sizeof(buf)));
        free(key);
        return NULL;
    }
    p->pos++;
    return key;
}

/* Reads a selector (Ident, then .Ident, .0 or ["key"] steps) into n->path. */
static bool read_selector(parser_t *p, node_t *n, bool *bracketed)
{
    path_add(n, read_ident(p));
    for (;;) {
        const char *c = p->s + p->pos;
        if (p->pos + 1 < p->len && c[0] == '.' &&
            (is_ident_start((unsigned char)c[1]) || isdigit((unsigned char)c[1]))) {
            p->pos++;
            path_add(n, read_ident(p));
        } else if (p->pos < p->len && c[0] == '[') {
            char *key = read_index(p);
            if (!key) return false;
            path_add(n, key);
            *bracketed = true;
        } else {
            return true;
        }
    }
}

/* Length of the unquoted token at `at`: up to whitespace or ')', at most SHOWN_MAX. */
static int token_len(const parser_t *p, size_t at)
{
    size_t end = at;
    while (end < p->len && end - at < SHOWN_MAX && !strchr(" \t\r\n)", p->s[end]))
        end++;
    return (int)(end - at);
}

/* Reads a number literal: -?(0|[1-9][0-9]*)(.[0-9]+)? ended by space, ')' or the end. */
static char *read_number(parser_t *p, size_t *len)
{
    size_t start = p->pos, i = p->pos;
    if (i < p->len && p->s[i] == '-') i++;
    size_t digits = i;
    while (i < p->len && isdigit((unsigned char)p->s[i]))
        i++;
    bool ok = i > digits && (p->s[digits] != '0' || i == digits + 1);
    if (ok && i < p->len && p->s[i] == '.') {
        size_t frac = ++i;
        while (i < p->len && isdigit((unsigned char)p->s[i]))
            i++;
        ok = i > frac;
    }
    if (!ok || (i < p->len && !strchr(" \t\r\n)", p->s[i]))) {
        fail(p, start, "invalid number; write it like 80, -1 or 0.5, or quote it as \"%.*s\"",
             token_len(p, start), p->s + start);
        return NULL;
    }
    p->pos = i;
    *len = i - start;
    return tr_strndup(p->s + start, *len);
}

/*
 * Reads a value: a string, a number, or a bare word that starts with a letter (passing,
 * v1.2, node-1). go-bexpr's bare words are selector-shaped; '-' and ':' are our addition.
 */
static char *read_value(parser_t *p, const char *after, size_t *len)
{
    skip_ws(p);
    char c = p->pos < p->len ? p->s[p->pos] : '\0';
    if (c == '"' || c == '`') return read_string(p, len);
    if (c == '-' || isdigit((unsigned char)c)) return read_number(p, len);
    if (is_ident_start((unsigned char)c)) {
        size_t start = p->pos;
        while (p->pos < p->len &&
               (is_ident_char((unsigned char)p->s[p->pos]) || strchr(".-:", p->s[p->pos])))
            p->pos++;
        if (p->pos < p->len && !strchr(" \t\r\n)", p->s[p->pos])) {
            fail(p, start, "a bare value holds letters, digits and _ / . - :; quote it as \"%.*s\"",
                 token_len(p, start), p->s + start);
            return NULL;
        }
        *len = p->pos - start;
        return tr_strndup(p->s + start, *len);
    }
    char buf[64];
    fail(p, p->pos, "expected a value after '%s', found %s", after,
         describe(p, p->pos, buf, sizeof(buf)));
    return NULL;
}

/* ---- values: what they mean as numbers, booleans and patterns ---- */

/* Go's strconv.ParseBool words, which go-bexpr accepts for boolean fields. */
static int bool_word(const char *s)
{
    static const char *const yes[] = {"1", "t", "T", "TRUE", "true", "True"};
    static const char *const no[] = {"0", "f", "F", "FALSE", "false", "False"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (!strcmp(s, yes[i])) return 1;
        if (!strcmp(s, no[i])) return 0;
    }
    return -1;
}

/* Decimal only: strtod's hex, inf and nan forms are not numbers here. */
static void classify_value(node_t *n)
{
    const char *s = n->value;
    n->boolean = bool_word(s);
    if (!*s || strspn(s, "0123456789+-.eE") != n->vlen || !strpbrk(s, "0123456789")) return;
    char *end;
    errno = 0;
    long long i = strtoll(s, &end, 10);
    if (!errno && !*end) {
        n->has_int = true;
        n->ival = i;
    }
    errno = 0;
    double d = strtod(s, &end);
    if (!errno && !*end && isfinite(d)) {
        n->has_real = true;
        n->dval = d;
    }
}

/* Reads {m}, {m,}, {,n} or {m,n} at *pp (on the '{'); returns the largest count, or -1. */
static double repeat_bound(const char **pp)
{
    const char *q = *pp + 1;
    char *end = (char *)q;
    double m = isdigit((unsigned char)*q) ? strtod(q, &end) : 0;
    double n = m;
    if (*end == ',') {
        q = end + 1;
        if (isdigit((unsigned char)*q))
            n = strtod(q, &end);
        else
            n = m + 1, end = (char *)q;
    }
    if (*end != '}' || end == *pp + 1) return -1;
    *pp = end;
    return n > m ? n : m;
}

/*
 * glibc expands bounded repetitions when it compiles a pattern, so nested ones such as
 * ((a{255}){255}){255} or a+++++++++++++++++++++ take gigabytes. This estimates the expanded
 * size (each atom is 1, a repetition multiplies what it repeats) so such patterns are refused
 * before regcomp.
 */
static bool regex_too_costly(const char *re)
{
    double sum[REGEX_GROUP_MAX + 1] = {0};
    int top = 0;
    double last = 0;
    for (const char *c = re; *c; c++) {
        if (*c == '(') {
            if (++top > REGEX_GROUP_MAX) return true;
            sum[top] = 0;
            last = 0;
        } else if (*c == ')' && top > 0) {
            last = sum[top--] + 1;
            sum[top] += last;
        } else if (*c == '{') {
            double n = repeat_bound(&c);
            if (n < 0) continue;
            sum[top] += last * (n - 1);
            last *= n;
        } else if (*c == '[') {
            /* A bracket expression is one atom; ']' first is a member, not the end. */
            c++;
            if (*c == '^') c++;
            if (*c == ']') c++;
            while (*c && *c != ']')
                c++;
            if (!*c) break;
            sum[top] += last = 1;
        } else if (*c == '+') {
            /* glibc compiles x+ as xx*, so stacked '+' doubles the pattern each time. */
            sum[top] += last;
            last *= 2;
        } else if (!strchr("*?|", *c)) {
            if (*c == '\\' && c[1]) c++;
            sum[top] += last = 1;
        }
        if (sum[top] > REGEX_COST_MAX) return true;
    }
    return false;
}

static bool compile_regex(parser_t *p, node_t *n, size_t at)
{
    for (const char *c = n->value; *c; c++) {
        if (*c != '\\') continue;
        if (isdigit((unsigned char)c[1])) {
            fail(p, at, "back-references such as \\%c are not supported in regular expressions",
                 c[1]);
            return false;
        }
        if (c[1]) c++;
    }
    if (regex_too_costly(n->value)) {
        fail(p, at, "regular expression repeats too much (over %d expanded atoms); simplify it",
             REGEX_COST_MAX);
        return false;
    }
    int rc = regcomp(&n->re, n->value, REG_EXTENDED | REG_NOSUB);
    if (rc != 0) {
        char msg[128];
        regerror(rc, &n->re, msg, sizeof(msg));
        fail(p, at, "invalid regular expression \"%.*s\": %s (POSIX extended syntax)", SHOWN_MAX,
             n->value, msg);
        return false;
    }
    n->has_re = true;
    return true;
}

/* ---- match expressions ---- */

static const char OPERATORS[] =
    "use ==, !=, is empty, is not empty, in, not in, contains, not contains, matches or "
    "not matches";

/* Reads the operator after a selector; *name gets its text for messages. */
static bool read_operator(parser_t *p, op_t *op, const char **name)
{
    skip_ws(p);
    size_t at = p->pos;
    const char *c = p->s + at;
    if (at + 1 < p->len && c[0] == '=' && c[1] == '=') {
        p->pos += 2;
        *op = OP_EQ, *name = "==";
    } else if (at + 1 < p->len && c[0] == '!' && c[1] == '=') {
        p->pos += 2;
        *op = OP_NE, *name = "!=";
    } else if (accept(p, "is")) {
        bool neg = accept(p, "not");
        if (!accept(p, "empty")) {
            char buf[64];
            skip_ws(p);
            fail(p, p->pos, "expected 'empty' after '%s', found %s", neg ? "is not" : "is",
                 describe(p, p->pos, buf, sizeof(buf)));
            return false;
        }
        *op = neg ? OP_NOT_EMPTY : OP_EMPTY, *name = neg ? "is not empty" : "is empty";
    } else if (accept(p, "contains")) {
        *op = OP_IN, *name = "contains";
    } else if (accept(p, "matches")) {
        *op = OP_MATCHES, *name = "matches";
    } else if (accept(p, "in")) {
        *op = OP_IN, *name = "in";
    } else if (accept(p, "not")) {
        if (accept(p, "contains"))
            *op = OP_NOT_IN, *name = "not contains";
        else if (accept(p, "matches"))
            *op = OP_NOT_MATCHES, *name = "not matches";
        else if (accept(p, "in"))
            *op = OP_NOT_IN, *name = "not in";
        else {
            char buf[64];
            skip_ws(p);
            fail(p, p->pos, "expected 'in', 'contains' or 'matches' after 'not', found %s",
                 describe(p, p->pos, buf, sizeof(buf)));
            return false;
        }
    } else {
        char buf[64];
        if (at >= p->len)
            fail(p, at, "expected an operator, found end of input; %s", OPERATORS);
        else if (c[0] == '=' && (at + 1 >= p->len || c[1] != '='))
            fail(p, at, "unknown operator '='; did you mean '=='?");
        else
            fail(p, at, "unknown operator %s; %s", describe(p, at, buf, sizeof(buf)), OPERATORS);
        return false;
    }
    return true;
}

/* After `<value> in`: reads the selector the value is looked up in. */
static bool read_in_selector(parser_t *p, node_t *n, const char *op)
{
    skip_ws(p);
    if (p->pos >= p->len || !is_ident_start((unsigned char)p->s[p->pos])) {
        char buf[64];
        fail(p, p->pos, "expected a selector after '%s', found %s", op,
             describe(p, p->pos, buf, sizeof(buf)));
        return false;
    }
    bool bracketed = false;
    return read_selector(p, n, &bracketed);
}

/* `"value" in Selector` or `"value" not in Selector`, the value already read. */
static bool finish_value_first(parser_t *p, node_t *n, size_t vstart)
{
    skip_ws(p);
    size_t at = p->pos;
    if (accept(p, "in"))
        n->op = OP_IN;
    else if (accept(p, "not") && accept(p, "in"))
        n->op = OP_NOT_IN;
    else {
        char buf[64];
        fail(p, at,
             "expected 'in' or 'not in' after the value at column %zu, found %s; selectors "
             "are not quoted (write Service.Tags, not \"Service.Tags\")",
             vstart + 1, describe(p, at, buf, sizeof(buf)));
        return false;
    }
    return read_in_selector(p, n, n->op == OP_IN ? "in" : "not in");
}

/* Drops a path read as a selector, to read the same text again as a value. */
static void path_clear(node_t *n)
{
    for (size_t i = 0; i < n->npath; i++)
        free(n->path[i]);
    free(n->path);
    n->path = NULL;
    n->npath = 0;
}

/*
 * A leading bare word may be a selector or, before 'in', a value, so this reads it as a
 * selector first and, when 'in' or 'not in' follows, reads it again as a value.
 */
static bool read_match(parser_t *p, node_t *n)
{
    size_t start = p->pos;
    char c = p->pos < p->len ? p->s[p->pos] : '\0';
    if (c == '"' || c == '`' || c == '-' || isdigit((unsigned char)c)) {
        n->value = read_value(p, "(", &n->vlen);
        return n->value && finish_value_first(p, n, start);
    }
    if (!is_ident_start((unsigned char)c)) {
        char buf[64];
        fail(p, start, "expected a selector, a value, 'not' or '(', found %s",
             describe(p, start, buf, sizeof(buf)));
        return false;
    }
    bool bracketed = false;
    const char *name;
    if (!read_selector(p, n, &bracketed) || !read_operator(p, &n->op, &name)) return false;
    if (!strcmp(name, "in") || !strcmp(name, "not in")) {
        if (bracketed) {
            fail(p, start, "a value before '%s' cannot have [\"key\"] steps; quote it", name);
            return false;
        }
        path_clear(n);
        p->pos = start;
        n->value = read_value(p, "(", &n->vlen);
        return n->value && finish_value_first(p, n, start);
    }
    if (n->op == OP_EMPTY || n->op == OP_NOT_EMPTY) return true;
    skip_ws(p);
    size_t vat = p->pos;
    n->value = read_value(p, name, &n->vlen);
    if (!n->value) return false;
    if (n->op == OP_MATCHES || n->op == OP_NOT_MATCHES) return compile_regex(p, n, vat);
    return true;
}

static node_t *parse_match(parser_t *p)
{
    node_t *n = node_new(N_MATCH);
    if (!read_match(p, n)) {
        node_free(n);
        return NULL;
    }
    if (n->value) classify_value(n);
    return n;
}

/* ---- expressions: or of ands of unaries; and/or nodes are n-ary to keep the tree shallow */

static node_t *parse_or(parser_t *p);

/* Checks the nesting limit before descending into '(' or 'not' at `at`. */
static bool enter(parser_t *p, size_t at)
{
    if (++p->depth <= TR_FILTER_MAX_DEPTH) return true;
    fail(p, at, "expression nests deeper than %d levels of '(' and 'not'; simplify it",
         TR_FILTER_MAX_DEPTH);
    return false;
}

static node_t *parse_group(parser_t *p)
{
    size_t open = p->pos++;
    node_t *n = parse_or(p);
    if (!n) return NULL;
    skip_ws(p);
    if (p->pos >= p->len || p->s[p->pos] != ')') {
        char buf[64];
        fail(p, p->pos, "expected ')' to close the '(' at column %zu, found %s", open + 1,
             describe(p, p->pos, buf, sizeof(buf)));
        node_free(n);
        return NULL;
    }
    p->pos++;
    return n;
}

static node_t *parse_unary(parser_t *p)
{
    skip_ws(p);
    size_t at = p->pos;
    node_t *n = NULL;
    if (at < p->len && p->s[at] == '(') {
        if (enter(p, at)) n = parse_group(p);
        p->depth--;
    } else if (word_at(p, at, "not")) {
        if (enter(p, at)) {
            p->pos += 3;
            node_t *kid = parse_unary(p);
            if (kid) {
                n = node_new(N_NOT);
                node_add(n, kid);
            }
        }
        p->depth--;
    } else {
        n = parse_match(p);
    }
    return n;
}

/* One or more `next` joined by keyword `kw`; a lone operand is returned as it is. */
static node_t *parse_list(parser_t *p, kind_t kind, const char *kw, node_t *(*next)(parser_t *))
{
    node_t *first = next(p);
    if (!first || !accept(p, kw)) return first;
    node_t *n = node_new(kind);
    node_add(n, first);
    do {
        node_t *kid = next(p);
        if (!kid) {
            node_free(n);
            return NULL;
        }
        node_add(n, kid);
    } while (accept(p, kw));
    return n;
}

static node_t *parse_and(parser_t *p)
{
    return parse_list(p, N_AND, "and", parse_unary);
}

static node_t *parse_or(parser_t *p)
{
    return parse_list(p, N_OR, "or", parse_and);
}

tr_filter_t *tr_filter_compile(const char *expr, char *err, size_t errlen)
{
    parser_t p = {.s = expr ? expr : "", .err = err, .errlen = errlen};
    if (errlen) err[0] = '\0';
    p.len = strnlen(p.s, TR_FILTER_MAX_LEN + 1);
    if (p.len > TR_FILTER_MAX_LEN) {
        fail(&p, TR_FILTER_MAX_LEN, "expression is longer than %d bytes; shorten it",
             TR_FILTER_MAX_LEN);
        return NULL;
    }
    skip_ws(&p);
    if (p.pos >= p.len) {
        fail(&p, p.pos, "expected an expression, found end of input");
        return NULL;
    }
    node_t *root = parse_or(&p);
    if (!root) return NULL;
    skip_ws(&p);
    if (p.pos < p.len) {
        char buf[64];
        fail(&p, p.pos,
             "unexpected %s after a complete expression; join expressions with "
             "'and' or 'or'",
             describe(&p, p.pos, buf, sizeof(buf)));
        node_free(root);
        return NULL;
    }
    tr_filter_t *f = tr_malloc(sizeof(*f));
    f->root = root;
    return f;
}

void tr_filter_free(tr_filter_t *f)
{
    if (!f) return;
    node_free(f->root);
    free(f);
}

/* ---- evaluation ---- */

typedef bool (*leaf_fn)(const node_t *m, const json_t *v);

/*
 * Calls fn on each value the selector yields from v, from path step `step` on; true when
 * any call is. A step on an object is a key; on an array it is an index when it is all
 * digits, and otherwise applies to every object element, so Checks.Status yields the
 * Status of every check.
 */
static bool any_value(const node_t *m, const json_t *v, size_t step, leaf_fn fn)
{
    if (step == m->npath) return fn(m, v);
    const char *key = m->path[step];
    if (json_is_object(v)) {
        const json_t *kid = json_object_get(v, key);
        return kid && any_value(m, kid, step + 1, fn);
    }
    if (!json_is_array(v)) return false;
    if (strspn(key, "0123456789") == strlen(key)) {
        char *end;
        errno = 0;
        unsigned long long i = strtoull(key, &end, 10);
        const json_t *kid = errno ? NULL : json_array_get(v, (size_t)i);
        return kid && any_value(m, kid, step + 1, fn);
    }
    size_t i;
    const json_t *item;
    json_array_foreach(v, i, item)
    {
        if (json_is_object(item) && any_value(m, item, step, fn)) return true;
    }
    return false;
}

/* A string equals byte for byte; a number numerically; a boolean by Go's ParseBool words. */
static bool leaf_equal(const node_t *m, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_STRING:
        return json_string_length(v) == m->vlen && !memcmp(json_string_value(v), m->value, m->vlen);
    case JSON_INTEGER:
        if (m->has_int) return json_integer_value(v) == m->ival;
        return m->has_real && (double)json_integer_value(v) == m->dval;
    case JSON_REAL:
        return m->has_real && json_real_value(v) == m->dval;
    case JSON_TRUE:
        return m->boolean == 1;
    case JSON_FALSE:
        return m->boolean == 0;
    default:
        return false;
    }
}

static bool leaf_not_empty(const node_t *m, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_NULL:
        return false;
    case JSON_STRING:
        return json_string_length(v) > 0;
    case JSON_ARRAY:
        return json_array_size(v) > 0;
    case JSON_OBJECT:
        return json_object_size(v) > 0;
    default:
        return true;
    }
}

/* Membership in an array, a key of an object, or a substring of a string. */
static bool leaf_contains(const node_t *m, const json_t *v)
{
    if (json_is_string(v))
        return memmem(json_string_value(v), json_string_length(v), m->value, m->vlen) != NULL;
    if (json_is_object(v)) return json_object_getn(v, m->value, m->vlen) != NULL;
    size_t i;
    const json_t *item;
    json_array_foreach(v, i, item)
    {
        if (leaf_equal(m, item)) return true;
    }
    return false;
}

static bool leaf_matches(const node_t *m, const json_t *v)
{
    return json_is_string(v) && regexec(&m->re, json_string_value(v), 0, NULL, 0) == 0;
}

static bool eval(const node_t *n, const json_t *obj)
{
    switch (n->kind) {
    case N_OR:
        for (size_t i = 0; i < n->nkids; i++)
            if (eval(n->kids[i], obj)) return true;
        return false;
    case N_AND:
        for (size_t i = 0; i < n->nkids; i++)
            if (!eval(n->kids[i], obj)) return false;
        return true;
    case N_NOT:
        return !eval(n->kids[0], obj);
    case N_MATCH:
        break;
    }
    /* Each negated operator is the negation of its positive one over all values. */
    switch (n->op) {
    case OP_EQ:
        return any_value(n, obj, 0, leaf_equal);
    case OP_NE:
        return !any_value(n, obj, 0, leaf_equal);
    case OP_EMPTY:
        return !any_value(n, obj, 0, leaf_not_empty);
    case OP_NOT_EMPTY:
        return any_value(n, obj, 0, leaf_not_empty);
    case OP_IN:
        return any_value(n, obj, 0, leaf_contains);
    case OP_NOT_IN:
        return !any_value(n, obj, 0, leaf_contains);
    case OP_MATCHES:
        return any_value(n, obj, 0, leaf_matches);
    case OP_NOT_MATCHES:
        return !any_value(n, obj, 0, leaf_matches);
    }
    return false;
}

bool tr_filter_match(const tr_filter_t *f, const json_t *obj)
{
    return f && obj && eval(f->root, obj);
}
