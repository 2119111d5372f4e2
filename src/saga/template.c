/* Saga templates: "${input.x}", "${steps.order.id}", "${saga.id}" in paths and bodies. */
#include "saga/saga_int.h"

#include "core/buf.h"
#include "trellis/error.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The value at dot-separated `path` (object keys, array indexes) in ctx, or NULL. */
static const json_t *lookup(const json_t *ctx, const char *path, size_t len)
{
    const json_t *v = ctx;
    size_t i = 0;
    while (v && i <= len) {
        size_t j = i;
        while (j < len && path[j] != '.')
            j++;
        char key[128];
        if (j - i == 0 || j - i >= sizeof(key)) return NULL;
        memcpy(key, path + i, j - i);
        key[j - i] = '\0';
        if (json_is_object(v)) {
            v = json_object_get(v, key);
        } else if (json_is_array(v)) {
            char *end;
            unsigned long idx = strtoul(key, &end, 10);
            v = *end || !isdigit((unsigned char)key[0]) ? NULL : json_array_get(v, idx);
        } else {
            v = NULL;
        }
        i = j + 1;
    }
    return v;
}

/* A whole-string template "${name}": its name in *name / *len. */
static bool whole(const char *s, const char **name, size_t *len)
{
    size_t n = strlen(s);
    if (n < 4 || strncmp(s, "${", 2) || s[n - 1] != '}' || memchr(s + 2, '}', n - 3)) return false;
    *name = s + 2;
    *len = n - 3;
    return true;
}

/* Appends v as text: strings as they are, numbers and others as JSON. In a path (`encode`),
 * every byte outside RFC 3986's unreserved set is percent-encoded. */
static void put_text(tr_buf_t *b, const json_t *v, bool encode)
{
    char *dumped = NULL;
    const char *s = json_is_string(v) ? json_string_value(v)
                                      : (dumped = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY));
    for (const char *p = s ? s : ""; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (!encode || isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
            tr_buf_append(b, p, 1);
        } else {
            char hex[4];
            snprintf(hex, sizeof(hex), "%%%02X", c);
            tr_buf_append(b, hex, 3);
        }
    }
    free(dumped);
}

static int missing(const char *name, size_t len, char *err, size_t errlen)
{
    snprintf(err, errlen, "template ${%.*s} names nothing (no such input field or response field)",
             (int)len, name);
    return TR_ENOTFOUND;
}

char *tr__saga_render_text(const char *tmpl, const json_t *ctx, bool encode, char *err,
                           size_t errlen)
{
    tr_buf_t b = TR_BUF_INIT;
    const char *p = tmpl;
    while (*p) {
        const char *open = strstr(p, "${");
        const char *close = open ? strchr(open, '}') : NULL;
        if (!open || !close) {
            tr_buf_append_str(&b, p);
            break;
        }
        tr_buf_append(&b, p, (size_t)(open - p));
        const json_t *v = lookup(ctx, open + 2, (size_t)(close - open - 2));
        if (!v) {
            missing(open + 2, (size_t)(close - open - 2), err, errlen);
            tr_buf_free(&b);
            return NULL;
        }
        put_text(&b, v, encode);
        p = close + 1;
    }
    char *out = tr_buf_cstr(&b) ? strdup(tr_buf_cstr(&b)) : strdup("");
    tr_buf_free(&b);
    return out;
}

json_t *tr__saga_render(const json_t *tmpl, const json_t *ctx, char *err, size_t errlen)
{
    const char *key, *name;
    size_t i, len;
    json_t *v, *out;
    switch (json_typeof(tmpl)) {
    case JSON_STRING: {
        const char *s = json_string_value(tmpl);
        if (whole(s, &name, &len)) {
            const json_t *found = lookup(ctx, name, len);
            if (!found) missing(name, len, err, errlen);
            return found ? json_deep_copy(found) : NULL;
        }
        if (!strstr(s, "${")) return json_incref((json_t *)tmpl);
        char *text = tr__saga_render_text(s, ctx, false, err, errlen);
        out = text ? json_string(text) : NULL;
        free(text);
        return out;
    }
    case JSON_OBJECT:
        out = json_object();
        json_object_foreach((json_t *)tmpl, key, v)
        {
            json_t *r = tr__saga_render(v, ctx, err, errlen);
            if (!r) {
                json_decref(out);
                return NULL;
            }
            json_object_set_new(out, key, r);
        }
        return out;
    case JSON_ARRAY:
        out = json_array();
        json_array_foreach((json_t *)tmpl, i, v)
        {
            json_t *r = tr__saga_render(v, ctx, err, errlen);
            if (!r) {
                json_decref(out);
                return NULL;
            }
            json_array_append_new(out, r);
        }
        return out;
    default:
        return json_incref((json_t *)tmpl);
    }
}

/* Calls `fn` for each ${name} in every string of tmpl; stops at the first non-zero. */
int tr__saga_template_names(const json_t *tmpl, int (*fn)(const char *name, size_t len, void *d),
                            void *d)
{
    const char *key;
    size_t i;
    json_t *v;
    int rc = 0;
    if (json_is_string(tmpl)) {
        for (const char *p = json_string_value(tmpl); !rc && (p = strstr(p, "${"));) {
            const char *close = strchr(p, '}');
            if (!close) return fn(p + 2, strlen(p + 2), d);
            rc = fn(p + 2, (size_t)(close - p - 2), d);
            p = close + 1;
        }
    } else if (json_is_object(tmpl)) {
        json_object_foreach((json_t *)tmpl, key, v) if (!rc) rc = tr__saga_template_names(v, fn, d);
    } else if (json_is_array(tmpl)) {
        json_array_foreach((json_t *)tmpl, i, v) if (!rc) rc = tr__saga_template_names(v, fn, d);
    }
    return rc;
}
