/* A small JSON writer: escaped strings, numbers and raw text appended to a tr_buf_t. */
#include "core/jsonw.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const char hexdig[] = "0123456789abcdef";

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 when invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    unsigned min;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF)
        len = 3, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4)
        len = 4, min = 0x10000;
    else
        return 0;
    if (n < len) return 0;
    unsigned cp = c & (0x7F >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

static char *put_control(char *o, unsigned c)
{
    const char *esc = c == '\n' ? "\\n" : c == '\r' ? "\\r" : c == '\t' ? "\\t" : NULL;
    if (esc) {
        memcpy(o, esc, 2);
        return o + 2;
    }
    memcpy(o, "\\u00", 4);
    o[4] = hexdig[c >> 4];
    o[5] = hexdig[c & 15];
    return o + 6;
}

/* Non-ASCII at s[0]: the valid sequence as it is, or U+FFFD for one bad byte. */
static char *put_utf8(char *o, const unsigned char *s, size_t left, size_t *used)
{
    size_t n = utf8_seq(s, left);
    if (n == 0) {
        memcpy(o, "\xEF\xBF\xBD", 3);
        *used = 1;
        return o + 3;
    }
    memcpy(o, s, n);
    *used = n;
    return o + n;
}

void tr_jsonw_str(tr_buf_t *b, const char *str, size_t len)
{
    /* Worst case: every byte becomes "\u00XX" (6) or U+FFFD (3). */
    tr_buf_reserve(b, len * 6 + 2);
    char *o = b->data + b->len;
    const unsigned char *s = (const unsigned char *)str;
    *o++ = '"';
    for (size_t i = 0; i < len;) {
        unsigned c = s[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            *o++ = (char)c;
            i++;
        } else if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
            i++;
        } else if (c < 0x20) {
            o = put_control(o, c);
            i++;
        } else {
            size_t used;
            o = put_utf8(o, s + i, len - i, &used);
            i += used;
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
}

void tr_jsonw_cstr(tr_buf_t *b, const char *s)
{
    tr_jsonw_str(b, s ? s : "", s ? strlen(s) : 0);
}

static void put_mag(tr_buf_t *b, uint64_t mag, bool neg)
{
    char tmp[24];
    int i = (int)sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + mag % 10);
        mag /= 10;
    } while (mag);
    if (neg) tmp[--i] = '-';
    tr_buf_append(b, tmp + i, sizeof(tmp) - (size_t)i);
}

void tr_jsonw_i64(tr_buf_t *b, int64_t v)
{
    put_mag(b, v < 0 ? 0 - (uint64_t)v : (uint64_t)v, v < 0);
}

void tr_jsonw_u64(tr_buf_t *b, uint64_t v)
{
    put_mag(b, v, false);
}

void tr_jsonw_double(tr_buf_t *b, double d)
{
    if (!isfinite(d)) {
        TR_JSONW_LIT(b, "null");
        return;
    }
    char tmp[40];
    int n = snprintf(tmp, sizeof(tmp), "%.17g", d);
    if (!strpbrk(tmp, ".eE")) {
        memcpy(tmp + n, ".0", 3);
        n += 2;
    }
    tr_buf_append(b, tmp, (size_t)n);
}

void tr_jsonw_hex(tr_buf_t *b, const uint8_t *bytes, size_t n)
{
    tr_buf_reserve(b, 2 * n + 2);
    char *o = b->data + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        *o++ = hexdig[bytes[i] >> 4];
        *o++ = hexdig[bytes[i] & 15];
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
}
