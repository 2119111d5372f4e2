/* Test helpers shared by the resilience unit tests: load a YAML snippet as config. */
#ifndef TR_TEST_RESILIENCE_FIXTURE_H
#define TR_TEST_RESILIENCE_FIXTURE_H

#include <jansson.h>

#include "trellis/config.h"

/* Loads `yaml` as "t.yaml", failing the test when it does not load. */
tr_config_t *fx_load(const char *yaml);

/* The top-level value at `key` (the test fails when absent). */
json_t *fx_get(tr_config_t *cfg, const char *key);

#endif
