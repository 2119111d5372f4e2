/* Internals of the HTTP client that its tests and fuzz target drive directly. */
#ifndef TR_CORE_HTTP_CLIENT_INTERNAL_H
#define TR_CORE_HTTP_CLIENT_INTERNAL_H

#include <stddef.h>

/*
 * Parses `data` as a server's response through the client's own parser, split into reads
 * of `chunk` bytes (0 = one read), then EOF. flags: 1 = the request was HEAD, 2 = buffer the body
 * like fetch. Returns what on_complete would get.
 */
int tr__http_client_parse_test(const char *data, size_t len, size_t chunk, unsigned flags);

#endif
