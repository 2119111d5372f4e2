/* libFuzzer target: the central log store's raw line parser and time parser. Input: one
 * output line of a supervised process (JSON or not, any bytes). */
#include "trace/logs.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* True when s is valid UTF-8 with no NUL before its end (what the store promises). */
static int valid_utf8(const unsigned char *s)
{
    while (*s) {
        unsigned char c = *s;
        size_t len = c < 0x80                 ? 1
                     : c >= 0xc2 && c <= 0xdf ? 2
                     : c >= 0xe0 && c <= 0xef ? 3
                     : c >= 0xf0 && c <= 0xf4 ? 4
                                              : 0;
        if (!len) return 0;
        for (size_t i = 1; i < len; i++)
            if ((s[i] & 0xc0) != 0x80) return 0;
        s += len;
    }
    return 1;
}

static tr_logs_t *store;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tr_log_entry_t e;
    char *scratch;
    tr_logs_parse_line((const char *)data, size, (int)(size % 2) + 1, &e, &scratch);
    if (!e.message || !valid_utf8((const unsigned char *)e.message)) abort();
    if ((unsigned)e.level > TR_LOG_ERROR) abort();
    const char *ids[] = {e.correlation_id, e.trace_id, e.service, e.instance, e.fields_json};
    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++)
        if (ids[i] && !valid_utf8((const unsigned char *)ids[i])) abort();
    free(scratch);

    /* The same bytes as a query time, and stored in a small ring. */
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    int64_t ns;
    tr_logs_parse_time(text, true, 1, &ns);
    free(text);
    if (!store) {
        tr_logs_options_t o = {.max_lines = 64};
        store = tr_logs_open(&o, NULL, 0);
    }
    tr_logs_ingest_line(store, NULL, "fuzz", 1, (const char *)data, size);
    return 0;
}
