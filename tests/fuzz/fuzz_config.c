/* libFuzzer target: config loading, every typed getter, and the standalone value parsers. */
#include "trellis/config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Bounds the getter calls per input, so an input that loads a million values stays fast. */
#define MAX_VISITS 2000

static const char *const modes[] = {"round_robin", "least_conn", "random", NULL};
static const char *const keys[] = {"listen", "routes", "timeout", "workers", "name", NULL};

/* Calls every getter on `key` of obj; errors are expected, crashes and leaks are not. */
static void get_all(tr_config_t *cfg, const json_t *obj, const char *key)
{
    const char *s;
    bool b;
    int64_t i;
    double d;
    uint64_t u;
    tr_rate_t r;
    int e, line, col;
    json_t *sub;
    tr_config_get_string(cfg, obj, key, "x", &s);
    tr_config_get_bool(cfg, obj, key, false, &b);
    tr_config_get_int(cfg, obj, key, 0, -100, 100, &i);
    tr_config_get_double(cfg, obj, key, 0, &d);
    tr_config_get_duration(cfg, obj, key, 0, &u);
    tr_config_get_size(cfg, obj, key, 0, &u);
    tr_config_get_rate(cfg, obj, key, (tr_rate_t){1, 1000}, &r);
    tr_config_get_percent(cfg, obj, key, 0, &d);
    tr_config_get_enum(cfg, obj, key, modes, 0, &e);
    tr_config_get_array(cfg, obj, key, &sub);
    tr_config_get_object(cfg, obj, key, &sub);
    tr_config_fail(cfg, obj, key, "fuzz %d", 1);
    tr_config_pos(cfg, json_object_get(obj, key), &line, &col);
    if (strlen(tr_config_error(cfg)) > (1u << 20)) abort(); /* messages must stay short */
}

/* Visits obj and the objects under it (in nested objects and arrays), depth first. */
static void visit(tr_config_t *cfg, const json_t *obj, int *budget)
{
    const char *key;
    json_t *v;
    tr_config_check_keys(cfg, obj, keys);
    json_object_foreach((json_t *)obj, key, v)
    {
        if (--*budget < 0) return;
        get_all(cfg, obj, key);
        if (json_is_object(v)) visit(cfg, v, budget);
        for (size_t i = 0; json_is_array(v) && i < json_array_size(v) && *budget > 0; i++) {
            json_t *item = json_array_get(v, i);
            tr_config_fail(cfg, item, NULL, "item");
            if (json_is_object(item)) visit(cfg, item, budget);
        }
    }
}

static void parse_values(const uint8_t *data, size_t size)
{
    char buf[128];
    size_t n = size < sizeof(buf) - 1 ? size : sizeof(buf) - 1;
    memcpy(buf, data, n);
    buf[n] = '\0';
    uint64_t u;
    double d;
    tr_rate_t r;
    tr_parse_duration_ms(buf, &u);
    tr_parse_size(buf, &u);
    tr_parse_rate(buf, &r);
    tr_parse_percent(buf, &d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    tr_config_t *cfg;
    parse_values(data, size);
    if (tr_config_load_string("fuzz.yaml", (const char *)data, size, &cfg, err, sizeof(err)) != 0)
        return 0;
    int budget = MAX_VISITS;
    visit(cfg, tr_config_root(cfg), &budget);
    tr_config_free(cfg);
    return 0;
}
