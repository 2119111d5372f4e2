/* The HTTP Date header, formatted at most once per second per thread. */
#ifndef TR_CORE_HTTPDATE_H
#define TR_CORE_HTTPDATE_H

#include <time.h>

/* Returns "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n" for now; valid until the next call. */
const char *tr_httpdate_header(void);

/* Formats `t` as an IMF-fixdate into buf (at least 30 bytes). */
void tr_httpdate_format(time_t t, char *buf);

#endif
