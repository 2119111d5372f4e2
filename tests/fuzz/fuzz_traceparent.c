/* libFuzzer target: trace context parsing (traceparent, tracestate, B3) and extraction. */
#include "trellis/http.h"
#include "trellis/trace.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Checks what every successful parse promises. */
static void check_ctx(const tr_trace_ctx_t *c, bool ids)
{
    if (memchr(c->tracestate, '\0', sizeof(c->tracestate)) == NULL) abort();
    if (ids && (tr_trace_id_is_zero(c->trace_id, 16) || tr_trace_id_is_zero(c->span_id, 8)))
        abort();
}

/* A valid traceparent survives a format/parse round trip (flags reduced to "sampled"). */
static void round_trip(const tr_trace_ctx_t *c)
{
    char out[56];
    if (tr_trace_format_traceparent(c, out) != 55 || strlen(out) != 55) abort();
    tr_trace_ctx_t d;
    if (tr_trace_parse_traceparent(out, 55, &d) != 0) abort();
    if (memcmp(d.trace_id, c->trace_id, 16) || memcmp(d.span_id, c->span_id, 8)) abort();
}

/* Input: header lines "name: value" separated by '\n'; also each whole input alone. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    memcpy(s, data, size);
    s[size] = '\0';
    tr_trace_ctx_t c;
    if (tr_trace_parse_traceparent(s, size, &c) == 0) {
        check_ctx(&c, true);
        round_trip(&c);
    }
    memset(c.tracestate, 'x', sizeof(c.tracestate));
    int rc = tr_trace_parse_tracestate(s, size, &c);
    check_ctx(&c, false);
    if (rc == 0) {
        if (strlen(c.tracestate) >= sizeof(c.tracestate)) abort();
        tr_trace_ctx_t d; /* normalised output parses to itself */
        if (tr_trace_parse_tracestate(c.tracestate, strlen(c.tracestate), &d) != 0 ||
            strcmp(c.tracestate, d.tracestate) != 0)
            abort();
    } else if (c.tracestate[0] != '\0') {
        abort();
    }
    rc = tr_trace_parse_b3_single(s, size, &c);
    if (rc == 0) check_ctx(&c, true);

    tr_http_header_t h[16];
    size_t n = 0;
    char *line = s;
    while (line && n < 16) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = '\0';
        char *colon = strchr(line, ':');
        if (colon) {
            *colon = '\0';
            char *v = colon + 1;
            while (*v == ' ')
                v++;
            h[n++] = (tr_http_header_t){line, v, (uint32_t)strlen(line), (uint32_t)strlen(v)};
        }
        line = nl ? nl + 1 : NULL;
    }
    bool has;
    tr_trace_extract(h, n, &c, &has);
    check_ctx(&c, has);
    if (has) round_trip(&c);
    free(s);
    return 0;
}
