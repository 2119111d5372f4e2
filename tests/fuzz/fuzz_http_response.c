/* libFuzzer target: arbitrary bytes as a server's response, through the client's parser. */
#include <stddef.h>
#include <stdint.h>

#include "trellis/http_client.h"
#include "core/http_client_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * The first byte picks the read size (how the response is split across reads, where
 * split-state bugs live) and the mode (HEAD request, buffered fetch); the rest is the
 * response.
 */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    size_t chunk = data[0] >> 2; /* 0 = everything in one read */
    unsigned flags = data[0] & 3;
    tr__http_client_parse_test((const char *)data + 1, size - 1, chunk, flags);
    return 0;
}
