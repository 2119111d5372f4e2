/* Cached HTTP dates: formatting a date per response would cost more than parsing it. */
#include "core/httpdate.h"

#include <stdio.h>
#include <string.h>

static const char wdays[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

void tr_httpdate_format(time_t t, char *buf)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    char tmp[64];
    snprintf(tmp, sizeof(tmp), "%s, %02d %s %04d %02d:%02d:%02d GMT", wdays[tm.tm_wday], tm.tm_mday,
             months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    memcpy(buf, tmp, 29);
    buf[29] = '\0';
}

const char *tr_httpdate_header(void)
{
    static __thread time_t cached = -1;
    static __thread char line[48];
    time_t now = time(NULL); /* vDSO: no system call */
    if (now != cached) {
        cached = now;
        memcpy(line, "Date: ", 6);
        tr_httpdate_format(now, line + 6);
        strcat(line, "\r\n");
    }
    return line;
}

void tr_rfc3339_ms(int64_t unix_ms, char out[TR_RFC3339_MS_LEN])
{
    int64_t sec = unix_ms / 1000, ms = unix_ms % 1000;
    if (ms < 0) sec--, ms += 1000;
    time_t t = (time_t)sec;
    struct tm tm;
    gmtime_r(&t, &tm);
    char tmp[64]; /* a year past 9999 would not fit TR_RFC3339_MS_LEN: cut, never overrun */
    snprintf(tmp, sizeof(tmp), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)ms);
    memcpy(out, tmp, TR_RFC3339_MS_LEN - 1);
    out[TR_RFC3339_MS_LEN - 1] = '\0';
}
