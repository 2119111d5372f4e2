/* Address parsing and SO_REUSEPORT listeners. */
#include "trellis/net.h"

#include "trellis/error.h"

#include <stdbool.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int parse_port(const char *s, int *port)
{
    /* Digits only: strtol alone would take " 80", "+80" and "-0". */
    if (!*s || strspn(s, "0123456789") != strlen(s)) return TR_EPARSE;
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || v < 0 || v > 65535) return TR_EPARSE;
    *port = (int)v;
    return 0;
}

static int parse_host(const char *host, int port, struct sockaddr_storage *out)
{
    memset(out, 0, sizeof(*out));
    struct sockaddr_in *v4 = (struct sockaddr_in *)out;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)out;
    if (!*host || !strcmp(host, "localhost")) host = "127.0.0.1";
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        return 0;
    }
    return TR_EPARSE;
}

int tr_net_parse_addr(const char *text, struct sockaddr_storage *out)
{
    char host[64];
    int port;
    if (!text || strlen(text) >= sizeof(host)) return TR_EPARSE;
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (!close || close[1] != ':') return TR_EPARSE;
        memcpy(host, text + 1, (size_t)(close - text - 1));
        host[close - text - 1] = '\0';
        if (parse_port(close + 2, &port)) return TR_EPARSE;
        return parse_host(host, port, out);
    }
    const char *colon = strrchr(text, ':');
    if (!colon) {
        if (parse_port(text, &port)) return TR_EPARSE;
        return parse_host("", port, out);
    }
    if (strchr(text, ':') != colon) return TR_EPARSE; /* bare IPv6 needs brackets */
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    if (parse_port(colon + 1, &port)) return TR_EPARSE;
    return parse_host(host, port, out);
}

void tr_net_format_addr(const struct sockaddr *sa, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &v4->sin_addr, ip, sizeof(ip));
        port = ntohs(v4->sin_port);
        snprintf(buf, len, "%s:%d", ip, port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &v6->sin6_addr, ip, sizeof(ip));
        port = ntohs(v6->sin6_port);
        snprintf(buf, len, "[%s]:%d", ip, port);
    } else {
        snprintf(buf, len, "?");
    }
}

static socklen_t addr_len(const struct sockaddr_storage *a)
{
    return a->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

static int open_one(const struct sockaddr_storage *addr, int backlog, bool reuseport)
{
    int fd = socket(addr->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
        (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one))) ||
        bind(fd, (const struct sockaddr *)addr, addr_len(addr)) || listen(fd, backlog)) {
        int err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

int tr_net_listen(const struct sockaddr_storage *addr, int n, int backlog, int *fds,
                  struct sockaddr_storage *bound)
{
    struct sockaddr_storage want = *addr;
    for (int i = 0; i < n; i++) {
        /* One socket needs no SO_REUSEPORT, and without it a second process that binds
         * the same port fails with EADDRINUSE instead of silently sharing the traffic. */
        int fd = open_one(&want, backlog, n > 1);
        if (fd < 0) {
            while (i-- > 0)
                close(fds[i]);
            return fd;
        }
        fds[i] = fd;
        if (i == 0) {
            /* With port 0, the rest must join the port the kernel chose for the first. */
            socklen_t len = sizeof(want);
            getsockname(fd, (struct sockaddr *)&want, &len);
        }
    }
    if (bound) *bound = want;
    return 0;
}
