/* Test helpers shared by the resilience unit tests. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "fixture.h"

tr_config_t *fx_load(const char *yaml)
{
    char err[512] = "";
    tr_config_t *cfg = NULL;
    if (tr_config_load_string("t.yaml", yaml, strlen(yaml), &cfg, err, sizeof(err)) != 0)
        fail_msg("load failed: %s", err);
    return cfg;
}

json_t *fx_get(tr_config_t *cfg, const char *key)
{
    json_t *v = json_object_get(tr_config_root(cfg), key);
    if (!v) fail_msg("missing key %s", key);
    return v;
}
