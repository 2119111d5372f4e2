/* http:// URLs for the background fetchers (JWKS, span export): host, port, path. */
#include "trellis/http_client.h"

#include "core/mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static bool host_chars_ok(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.'))
            return false;
    }
    return n > 0;
}

int tr_http_url_parse(const char *url, tr_http_url_t *u)
{
    memset(u, 0, sizeof(*u));
    if (strncasecmp(url, "https://", 8) == 0) return TR_EUNSUPPORTED;
    if (strncasecmp(url, "http://", 7) != 0)
        return strstr(url, "://") ? TR_EUNSUPPORTED : UV_EINVAL;
    const char *auth = url + 7, *slash = strchr(auth, '/');
    size_t alen = slash ? (size_t)(slash - auth) : strlen(auth);
    const char *host = auth, *colon = NULL;
    size_t hlen;
    if (alen > 0 && auth[0] == '[') {
        const char *close = memchr(auth, ']', alen);
        if (close == NULL) return UV_EINVAL;
        host = auth + 1;
        hlen = (size_t)(close - host);
        if (close + 1 < auth + alen) {
            if (close[1] != ':') return UV_EINVAL;
            colon = close + 1;
        }
    } else {
        colon = memchr(auth, ':', alen);
        hlen = colon ? (size_t)(colon - auth) : alen;
        if (!host_chars_ok(host, hlen)) return UV_EINVAL;
    }
    if (hlen == 0 || hlen >= sizeof(u->host)) return UV_EINVAL;
    memcpy(u->host, host, hlen);
    u->host[hlen] = '\0';
    size_t plen = colon ? (size_t)(auth + alen - colon - 1) : 0;
    if (colon && (plen == 0 || plen > 5 || strspn(colon + 1, "0123456789") < plen))
        return UV_EINVAL;
    snprintf(u->port, sizeof(u->port), "%.*s", colon ? (int)plen : 2, colon ? colon + 1 : "80");
    long port = strtol(u->port, NULL, 10);
    if (port < 1 || port > 65535) return UV_EINVAL;
    char hostport[300];
    bool v6 = auth[0] == '[';
    snprintf(hostport, sizeof(hostport), v6 ? "[%s]:%s" : "%s:%s", u->host, u->port);
    u->literal = tr_http_endpoint_parse(&u->ep, hostport) == 0;
    if (!u->literal && v6) return UV_EINVAL;
    if (!u->literal) {
        size_t n = strlen(hostport);
        if (n >= sizeof(u->ep.host)) return UV_EINVAL;
        memcpy(u->ep.host, hostport, n + 1); /* the Host header names the server */
    }
    u->target = tr_strdup(slash ? slash : "/");
    return 0;
}

void tr_http_url_free(tr_http_url_t *u)
{
    free(u->target);
    u->target = NULL;
}
