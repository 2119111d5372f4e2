/* Option value parsing with errors that say which flag was wrong and what it wants. */
#include "cli/cli.h"

#include "trellis/config.h"
#include "trellis/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>

int tr_cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "trellis %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'trellis %s --help'.\n", cmd);
    return TR_EXIT_USAGE;
}

bool tr_cli_duration(const char *cmd, const char *opt, const char *val, uint64_t *ms)
{
    if (tr_parse_duration_ms(val, ms) == 0) return true;
    tr_cli_usage_error(cmd, "--%s: '%s' is not a duration (examples: 250ms, 10s, 1m)", opt, val);
    return false;
}

bool tr_cli_size(const char *cmd, const char *opt, const char *val, uint64_t *bytes)
{
    if (tr_parse_size(val, bytes) == 0) return true;
    tr_cli_usage_error(cmd, "--%s: '%s' is not a size (examples: 512, 16KiB, 1MiB, 2GiB)", opt,
                       val);
    return false;
}

bool tr_cli_int(const char *cmd, const char *opt, const char *val, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(val, &end, 10);
    if (errno || end == val || *end || v < min || v > max) {
        tr_cli_usage_error(cmd, "--%s: '%s' is not a whole number from %ld to %ld", opt, val, min,
                           max);
        return false;
    }
    *out = v;
    return true;
}

bool tr_cli_log_init(const char *cmd, const char *level, const char *format, const char *service)
{
    tr_log_options_t o = TR_LOG_OPTIONS_INIT;
    o.service = service;
    if (level) {
        int l = tr_log_level_parse(level);
        if (l < 0) {
            tr_cli_usage_error(cmd, "--log-level: '%s' is not one of debug, info, warn, error",
                               level);
            return false;
        }
        o.level = (tr_log_level_t)l;
    }
    if (format) {
        int f = tr_log_format_parse(format);
        if (f < 0) {
            tr_cli_usage_error(cmd, "--log-format: '%s' is not one of auto, json, text", format);
            return false;
        }
        o.format = (tr_log_format_t)f;
    }
    tr_log_init(&o);
    return true;
}

bool tr_cli_run_option(const char *cmd, int c, const char *arg, uint64_t *grace_ms,
                       const char **log_level, const char **log_format, bool *ok)
{
    switch (c) {
    case TR_CLI_OPT_GRACE:
        *ok = tr_cli_duration(cmd, "grace", arg, grace_ms);
        return true;
    case TR_CLI_OPT_LOG_LEVEL:
        *log_level = arg;
        return true;
    case TR_CLI_OPT_LOG_FORMAT:
        *log_format = arg;
        return true;
    default:
        return false;
    }
}
