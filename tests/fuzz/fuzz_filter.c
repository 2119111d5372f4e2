/* libFuzzer target: ?filter= compile and match. Input: an expression, then optionally a NUL
 * and a JSON document to match it against, besides a fixed health entry. */
#include "registry/filter.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char ENTRY[] =
    "{\"Node\": {\"Node\": \"node-1\", \"Address\": \"10.0.0.1\", \"Meta\": {\"os\": \"linux\"}},"
    " \"Service\": {\"ID\": \"web-1\", \"Service\": \"web\", \"Tags\": [\"v1\", \"primary\", 7],"
    "  \"Port\": 8080, \"Ratio\": 0.5, \"On\": true, \"Off\": false, \"Proxy\": null,"
    "  \"Meta\": {\"version\": \"1.2.3\", \"a.b\": \"dotted\", \"\": \"\"}, \"Kinds\": {}},"
    " \"Checks\": [{\"CheckID\": \"serfHealth\", \"Status\": \"passing\"},"
    "             {\"CheckID\": \"c2\", \"Status\": \"critical\", \"Tags\": [[{\"x\": 1}]]}, 3]}";

static json_t *entry;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!entry) entry = json_loads(ENTRY, 0, NULL);
    const uint8_t *nul = memchr(data, '\0', size);
    size_t elen = nul ? (size_t)(nul - data) : size;
    char *expr = malloc(elen + 1);
    memcpy(expr, data, elen);
    expr[elen] = '\0';
    char err[256];
    tr_filter_t *f = tr_filter_compile(expr, err, sizeof(err));
    free(expr);
    if (!f) {
        /* Every refusal says where. */
        if (strncmp(err, "filter: column ", 15) != 0) abort();
        return 0;
    }
    tr_filter_match(f, entry);
    if (nul) {
        json_t *doc = json_loadb((const char *)nul + 1, size - elen - 1,
                                 JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        if (doc) tr_filter_match(f, doc);
        json_decref(doc);
    }
    tr_filter_free(f);
    return 0;
}
