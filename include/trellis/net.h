/* Addresses and listening sockets shared by every server in trellis. */
#ifndef TRELLIS_NET_H
#define TRELLIS_NET_H

#include <stddef.h>
#include <sys/socket.h>

/*
 * Parses "host:port", "[v6]:port", ":port" or "port" (host defaults to 127.0.0.1).
 * Host must be an IP literal or "localhost". Returns 0 or TR_EPARSE.
 */
int tr_net_parse_addr(const char *text, struct sockaddr_storage *out);

/* Formats an address as "ip:port" ("[ip]:port" for IPv6). */
void tr_net_format_addr(const struct sockaddr *sa, char *buf, size_t len);

/*
 * Opens `n` non-blocking listening sockets on `addr` with SO_REUSEPORT so each worker
 * loop accepts on its own (one socket: no SO_REUSEPORT, so a port in use is an error,
 * never silently shared). With port 0 every socket shares the one port the kernel
 * picked. On success fds[0..n-1] are owned by the caller and *bound holds the
 * address actually bound. On failure nothing stays open and a UV_E* code is returned.
 */
int tr_net_listen(const struct sockaddr_storage *addr, int n, int backlog, int *fds,
                  struct sockaddr_storage *bound);

#endif
