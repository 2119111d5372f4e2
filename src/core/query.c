/* Query-string parameters and percent-decoding for request handlers. */
#include "trellis/http.h"

#include <string.h>

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

long tr_http_percent_decode(char *dst, const char *src, size_t len)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] != '%') {
            dst[o++] = src[i];
            continue;
        }
        int hi = i + 1 < len ? hexval(src[i + 1]) : -1;
        int lo = i + 2 < len ? hexval(src[i + 2]) : -1;
        if (hi < 0 || lo < 0) return -1;
        dst[o++] = (char)(hi * 16 + lo);
        i += 2;
    }
    dst[o] = '\0';
    return (long)o;
}

bool tr_http_query_param(tr_http_req_t *req, const char *name, const char **value)
{
    size_t nlen = strlen(name);
    const char *q = req->query, *end = req->query + req->query_len;
    while (q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *pair_end = amp ? amp : end;
        const char *eq = memchr(q, '=', (size_t)(pair_end - q));
        const char *key_end = eq ? eq : pair_end;
        if ((size_t)(key_end - q) == nlen && !memcmp(q, name, nlen)) {
            if (!value) return true;
            const char *v = eq ? eq + 1 : pair_end;
            size_t vlen = (size_t)(pair_end - v);
            char *d = tr_http_req_alloc(req, vlen + 1);
            /* Form encoding, as Go's url.ParseQuery (Consul) reads it: '+' is a space. */
            for (size_t i = 0; i < vlen; i++)
                d[i] = v[i] == '+' ? ' ' : v[i];
            d[vlen] = '\0';
            char *out = tr_http_req_alloc(req, vlen + 1);
            *value = tr_http_percent_decode(out, d, vlen) < 0 ? d : out; /* malformed: as sent */
            return true;
        }
        q = pair_end + 1;
    }
    return false;
}
