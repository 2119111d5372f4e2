/* Head sampling: always on/off, trace-id ratio and parent-based, plus their config. */
#include "trellis/trace.h"

#include <string.h>

#include "trellis/config.h"
#include "trellis/error.h"

#define SAMPLER_KIND_MAP(X)                                                                        \
    X(TR_SAMPLER_PARENT_BASED, "parent_based")                                                     \
    X(TR_SAMPLER_ALWAYS_ON, "always_on")                                                           \
    X(TR_SAMPLER_ALWAYS_OFF, "always_off")                                                         \
    X(TR_SAMPLER_RATIO, "ratio")

static const char *const kind_names[] = {
#define KIND_NAME(kind, name) [kind] = name,
    SAMPLER_KIND_MAP(KIND_NAME)
#undef KIND_NAME
        NULL};

int tr_sampler_kind_parse(const char *name)
{
    for (int i = 0; name && kind_names[i]; i++)
        if (strcmp(name, kind_names[i]) == 0) return i;
    return TR_EPARSE;
}

const char *tr_sampler_kind_name(int kind)
{
    if (kind < 0 || kind > TR_SAMPLER_RATIO) return "unknown";
    return kind_names[kind];
}

/*
 * The last 7 bytes of the trace id as a 56-bit number, compared with ratio * 2^56. W3C
 * level 2 makes those bytes the random part; B3's 64-bit ids padded to 128 keep them random
 * too. Every service computes the same value, so a trace is kept or dropped as a whole.
 */
static bool ratio_should(double ratio, const uint8_t id[16])
{
    if (!(ratio > 0)) return false;
    if (ratio >= 1) return true;
    uint64_t r = 0;
    for (int i = 9; i < 16; i++)
        r = r << 8 | id[i];
    return (double)r < ratio * 72057594037927936.0; /* 2^56 */
}

bool tr_sampler_should(const tr_sampler_t *s, const tr_trace_ctx_t *parent, bool has_parent,
                       const uint8_t trace_id[16])
{
    switch (s->kind) {
    case TR_SAMPLER_ALWAYS_ON:
        return true;
    case TR_SAMPLER_ALWAYS_OFF:
        return false;
    case TR_SAMPLER_RATIO:
        return ratio_should(s->ratio, trace_id);
    case TR_SAMPLER_PARENT_BASED:
    default:
        if (has_parent && parent) return (parent->flags & TR_TRACE_FLAG_SAMPLED) != 0;
        if (parent && (parent->flags & TR_TRACE_HINT_DENY)) return false;
        if (parent && (parent->flags & TR_TRACE_HINT_ACCEPT)) return true;
        return ratio_should(s->ratio, trace_id);
    }
}

int tr_sampler_config(tr_config_t *cfg, const json_t *tracing, tr_sampler_t *out)
{
    *out = (tr_sampler_t)TR_SAMPLER_DEFAULT;
    int kind;
    int err =
        tr_config_get_enum(cfg, tracing, "sampler", kind_names, TR_SAMPLER_PARENT_BASED, &kind);
    if (err) return err;
    double ratio;
    err = tr_config_get_percent(cfg, tracing, "ratio", 1.0, &ratio);
    if (err) return err;
    out->kind = kind;
    out->ratio = ratio;
    return 0;
}
