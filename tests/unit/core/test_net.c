/* Unit tests for address parsing and formatting and SO_REUSEPORT listeners. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <stdio.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "trellis/error.h"
#include "trellis/net.h"

static void expect_addr(const char *text, const char *formatted)
{
    struct sockaddr_storage ss;
    memset(&ss, 0xab, sizeof(ss));
    int err = tr_net_parse_addr(text, &ss);
    if (err) fail_msg("'%s' should parse, got %s", text, tr_err_name(err));
    char buf[64];
    tr_net_format_addr((struct sockaddr *)&ss, buf, sizeof(buf));
    assert_string_equal(buf, formatted);
}

static void expect_bad(const char *text)
{
    struct sockaddr_storage ss;
    int err = tr_net_parse_addr(text, &ss);
    if (err != TR_EPARSE) fail_msg("'%s' should be rejected, got %d", text, err);
}

static void test_parse_good(void **state)
{
    expect_addr("127.0.0.1:80", "127.0.0.1:80");
    expect_addr("0.0.0.0:0", "0.0.0.0:0");
    expect_addr("[::1]:8080", "[::1]:8080");
    expect_addr("[::]:1", "[::]:1");
    expect_addr("[::ffff:10.0.0.1]:443", "[::ffff:10.0.0.1]:443");
    expect_addr(":9000", "127.0.0.1:9000");
    expect_addr("9000", "127.0.0.1:9000");
    expect_addr("localhost:1", "127.0.0.1:1");
    expect_addr("10.1.2.3:65535", "10.1.2.3:65535");

    struct sockaddr_storage ss;
    assert_int_equal(tr_net_parse_addr("[::1]:8080", &ss), 0);
    assert_int_equal(ss.ss_family, AF_INET6);
    assert_int_equal(ntohs(((struct sockaddr_in6 *)&ss)->sin6_port), 8080);
    assert_int_equal(tr_net_parse_addr("1.2.3.4:5", &ss), 0);
    assert_int_equal(ss.ss_family, AF_INET);
    assert_int_equal(ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr), 0x01020304);
}

static void test_parse_bad(void **state)
{
    expect_bad("");
    expect_bad("1.2.3.4:65536");
    expect_bad("1.2.3.4:-1");
    expect_bad("1.2.3.4:");
    expect_bad("1.2.3.4:80x");
    expect_bad("1.2.3.4: 80");
    expect_bad("1.2.3.4:+80");
    expect_bad("host:80"); /* names other than localhost need a resolver: not here */
    expect_bad("::1:80");  /* IPv6 needs brackets */
    expect_bad("[::1]80");
    expect_bad("[::1");
    expect_bad("[::1]:");
    expect_bad("[1.2.3]:80");
    expect_bad("256.1.1.1:80");
    expect_bad("abc");
    expect_bad("[::1]:8080:1");
    expect_bad("1.2.3.4:99999999999999999999");
    expect_bad("[0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000]:80");
    assert_int_equal(tr_net_parse_addr(NULL, &(struct sockaddr_storage){0}), TR_EPARSE);
}

static void test_format(void **state)
{
    struct sockaddr_in v4 = {.sin_family = AF_INET, .sin_port = htons(8080)};
    inet_pton(AF_INET, "192.168.1.20", &v4.sin_addr);
    char buf[64];
    tr_net_format_addr((struct sockaddr *)&v4, buf, sizeof(buf));
    assert_string_equal(buf, "192.168.1.20:8080");
    struct sockaddr_in6 v6 = {.sin6_family = AF_INET6, .sin6_port = htons(443)};
    inet_pton(AF_INET6, "2001:db8::1", &v6.sin6_addr);
    tr_net_format_addr((struct sockaddr *)&v6, buf, sizeof(buf));
    assert_string_equal(buf, "[2001:db8::1]:443");
    /* Truncates to the buffer, always NUL-terminated. */
    char small[8];
    tr_net_format_addr((struct sockaddr *)&v4, small, sizeof(small));
    assert_string_equal(small, "192.168");
    struct sockaddr other = {.sa_family = AF_UNIX};
    tr_net_format_addr(&other, buf, sizeof(buf));
    assert_string_equal(buf, "?");
}

static int open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    int n = 0;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

static int port_of(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&ss, &len), 0);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void test_listen_shares_port(void **state)
{
    struct sockaddr_storage addr, bound;
    assert_int_equal(tr_net_parse_addr("127.0.0.1:0", &addr), 0);
    int fds[3] = {-1, -1, -1};
    assert_int_equal(tr_net_listen(&addr, 3, 16, fds, &bound), 0);
    int port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    assert_true(port > 0);
    for (int i = 0; i < 3; i++) {
        assert_true(fds[i] >= 0);
        assert_int_equal(port_of(fds[i]), port);
        for (int j = 0; j < i; j++)
            assert_int_not_equal(fds[i], fds[j]);
    }
    /* Each socket really listens: a connect succeeds. */
    int cfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(connect(cfd, (struct sockaddr *)&bound, sizeof(struct sockaddr_in)), 0);
    close(cfd);
    for (int i = 0; i < 3; i++)
        close(fds[i]);
}

static void test_listen_ipv6(void **state)
{
    struct sockaddr_storage addr, bound;
    assert_int_equal(tr_net_parse_addr("[::1]:0", &addr), 0);
    int fd = -1;
    int err = tr_net_listen(&addr, 1, 16, &fd, &bound);
    if (err == UV_EADDRNOTAVAIL || err == UV_EAFNOSUPPORT) skip(); /* no IPv6 loopback here */
    assert_int_equal(err, 0);
    char buf[64];
    tr_net_format_addr((struct sockaddr *)&bound, buf, sizeof(buf));
    assert_int_equal(strncmp(buf, "[::1]:", 6), 0);
    close(fd);
}

static void test_listen_conflict(void **state)
{
    /* A socket without SO_REUSEPORT holds the port: nobody may share it. */
    int holder = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(holder, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(holder, 1), 0);
    int port = port_of(holder);
    struct sockaddr_storage addr;
    char text[32];
    snprintf(text, sizeof(text), "127.0.0.1:%d", port);
    assert_int_equal(tr_net_parse_addr(text, &addr), 0);
    int before = open_fds();
    int fds[2] = {-1, -1};
    struct sockaddr_storage bound;
    assert_int_equal(tr_net_listen(&addr, 2, 16, fds, &bound), UV_EADDRINUSE);
    assert_int_equal(open_fds(), before); /* nothing stays open */
    close(holder);
    /* Once the holder is gone the same address works. */
    assert_int_equal(tr_net_listen(&addr, 2, 16, fds, &bound), 0);
    assert_int_equal(port_of(fds[1]), port);
    close(fds[0]);
    close(fds[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_good),  cmocka_unit_test(test_parse_bad),
        cmocka_unit_test(test_format),      cmocka_unit_test(test_listen_shares_port),
        cmocka_unit_test(test_listen_ipv6), cmocka_unit_test(test_listen_conflict),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
