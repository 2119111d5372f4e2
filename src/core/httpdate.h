/* Dates as trellis writes them: the HTTP Date header (formatted at most once per second per
 * thread) and RFC 3339 UTC times with milliseconds for JSON and listings. */
#ifndef TR_CORE_HTTPDATE_H
#define TR_CORE_HTTPDATE_H

#include <time.h>

/* Returns "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n" for now; valid until the next call. */
const char *tr_httpdate_header(void);

/* Formats `t` as an IMF-fixdate into buf (at least 30 bytes). */
void tr_httpdate_format(time_t t, char *buf);

#include <stdint.h>

#define TR_RFC3339_MS_LEN 25 /* "2026-11-22T16:53:04.123Z" and its NUL */

/* Formats `unix_ms` (milliseconds since the epoch) as "YYYY-MM-DDTHH:MM:SS.mmmZ". */
void tr_rfc3339_ms(int64_t unix_ms, char out[TR_RFC3339_MS_LEN]);

#endif
