/* Shared pieces of the trellis command line: sub-command table and option helpers. */
#ifndef TR_CLI_CLI_H
#define TR_CLI_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>

enum { TR_EXIT_OK = 0, TR_EXIT_FAIL = 1, TR_EXIT_USAGE = 2 };

/* Each sub-command: `argv[0]` is the command name; returns an exit code. */
int tr_cmd_collector(int argc, char **argv);
int tr_cmd_echo(int argc, char **argv);
int tr_cmd_eventstore(int argc, char **argv);
int tr_cmd_gateway(int argc, char **argv);
int tr_cmd_logs(int argc, char **argv);
int tr_cmd_registry(int argc, char **argv);
int tr_cmd_trace(int argc, char **argv);
int tr_cmd_up(int argc, char **argv);
int tr_cmd_ps(int argc, char **argv);
int tr_cmd_rollout(int argc, char **argv);
int tr_cmd_saga(int argc, char **argv);
int tr_cmd_service_control(int argc, char **argv);
int tr_cmd_version(int argc, char **argv);

/* Option value helpers: on bad input they print "trellis CMD: --OPT: …" and return false. */
bool tr_cli_duration(const char *cmd, const char *opt, const char *val, uint64_t *ms);

/* --grace, --log-level and --log-format: every long-running command takes them. Put
 * TR_CLI_RUN_OPTIONS in the getopt_long table and call tr_cli_run_option in the switch's
 * default branch: it returns true when `c` was one of them (with *ok false for a bad value,
 * said on stderr). */
enum { TR_CLI_OPT_GRACE = 0x1000, TR_CLI_OPT_LOG_LEVEL, TR_CLI_OPT_LOG_FORMAT };
#define TR_CLI_RUN_OPTIONS                                                                         \
    {"grace", required_argument, NULL, TR_CLI_OPT_GRACE},                                          \
        {"log-level", required_argument, NULL, TR_CLI_OPT_LOG_LEVEL},                              \
    {                                                                                              \
        "log-format", required_argument, NULL, TR_CLI_OPT_LOG_FORMAT                               \
    }
bool tr_cli_run_option(const char *cmd, int c, const char *arg, uint64_t *grace_ms,
                       const char **log_level, const char **log_format, bool *ok);
bool tr_cli_size(const char *cmd, const char *opt, const char *val, uint64_t *bytes);
bool tr_cli_int(const char *cmd, const char *opt, const char *val, long min, long max, long *out);
/* Prints "trellis CMD: MSG\nTry 'trellis CMD --help'." and returns TR_EXIT_USAGE. */
int tr_cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The result of tr_cli_fetch; `body` is malloc'd (the caller frees it). */
typedef struct tr_cli_fetch_s {
    int status, err;
    char *body;
    size_t len;
} tr_cli_fetch_t;

/*
 * One HTTP request to `hostport` ("127.0.0.1:8500") on a private loop, with connect (3 s)
 * and response (30 s) deadlines. Returns 0 (f->status set) or an error code.
 */
int tr_cli_fetch(const char *hostport, const char *method, const char *target, const char *body,
                 tr_cli_fetch_t *f);
/* "http://host:port[/…]" (or "host:port") → "host:port"; false when it isn't one. */
bool tr_cli_hostport(const char *url, char *out, size_t len);

/* Sets up logging from --log-level / --log-format values (NULL → defaults). */
bool tr_cli_log_init(const char *cmd, const char *level, const char *format, const char *service);

#endif
