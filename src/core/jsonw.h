/* A small JSON writer: appends escaped strings, numbers and raw text to a tr_buf_t. */
#ifndef TR_CORE_JSONW_H
#define TR_CORE_JSONW_H

#include "core/buf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Appends `len` bytes of `s` as a quoted JSON string (RFC 8259): '"' and '\' escaped,
 * control characters as \n, \r, \t or \u00XX, and each byte that does not start a valid
 * UTF-8 sequence (overlong, surrogate, above U+10FFFF, cut short) as U+FFFD. Embedded NUL
 * bytes are written as \u0000. The caller keeps `s`.
 */
void tr_jsonw_str(tr_buf_t *b, const char *s, size_t len);

/* As tr_jsonw_str for a NUL-terminated string; NULL writes "". */
void tr_jsonw_cstr(tr_buf_t *b, const char *s);

/* Appends a decimal integer (unquoted). */
void tr_jsonw_i64(tr_buf_t *b, int64_t v);
void tr_jsonw_u64(tr_buf_t *b, uint64_t v);

/*
 * Appends a finite double with 17 significant digits, always with a fraction or exponent
 * so it reads back as a real ("1.0", not "1"); NaN and infinities, which JSON lacks, write
 * null.
 */
void tr_jsonw_double(tr_buf_t *b, double d);

/* Appends `n` bytes as lower-case hex digits in quotes ("0a1b…"). */
void tr_jsonw_hex(tr_buf_t *b, const uint8_t *bytes, size_t n);

/* Appends JSON text the caller vouches for as it is (punctuation, literals, prepared values). */
static inline void tr_jsonw_raw(tr_buf_t *b, const char *s, size_t len)
{
    tr_buf_append(b, s, len);
}

#define TR_JSONW_LIT(b, lit) tr_buf_append((b), (lit), sizeof(lit) - 1)

#endif
