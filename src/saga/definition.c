/* Saga definitions: steps with action, compensation, pivot, timeouts and retries, checked
 * with file:line:col positions. */
#include "saga/saga_int.h"

#include "core/mem.h"
#include "trellis/error.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_TIMEOUT_MS     5000
#define DEFAULT_ATTEMPTS       3
#define DEFAULT_BACKOFF_MS     100
#define DEFAULT_MAX_COMPENSATE 20
#define DEFAULT_MAX_FORWARD    100

static bool name_ok(const char *s)
{
    size_t n = strlen(s);
    if (!n || n > 64) return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '_') return false;
    return true;
}

static void call_free(tr__saga_call_def_t *c)
{
    free(c->service);
    free(c->path);
    json_decref(c->body);
    memset(c, 0, sizeof(*c));
}

/* What a template of step `at` may name: input.*, saga.id, and steps of the groups before
 * its own (or itself, for a compensation): the steps of its group run at the same time. */
typedef struct names_ctx_s {
    const tr__saga_def_t *def;
    size_t at, first; /* the step, and the first step of its group */
    bool compensation;
    char bad[160];
} names_ctx_t;

static int check_name(const char *name, size_t len, void *data)
{
    names_ctx_t *c = data;
    if ((len > 6 && !strncmp(name, "input.", 6)) || (len == 5 && !strncmp(name, "input", 5)) ||
        (len == 7 && !strncmp(name, "saga.id", 7)))
        return 0;
    if (len > 6 && !strncmp(name, "steps.", 6)) {
        const char *step = name + 6, *dot = memchr(step, '.', len - 6);
        size_t slen = dot ? (size_t)(dot - step) : len - 6;
        int idx = tr__saga_def_step(c->def, step, slen);
        if (idx >= 0 && ((size_t)idx < c->first || (c->compensation && (size_t)idx == c->at)))
            return 0;
        snprintf(c->bad, sizeof(c->bad),
                 "${%.*s} names step '%.*s', which is not an earlier step%s%s", (int)len, name,
                 (int)slen, step, c->compensation ? " or this one" : "",
                 idx >= 0 && (size_t)idx >= c->first && (size_t)idx < c->def->steps[c->at].group_end
                     ? " (steps of one parallel group run at the same time)"
                     : "");
        return -1;
    }
    snprintf(c->bad, sizeof(c->bad),
             "${%.*s}: a template names input.<field>, steps.<earlier step>.<field> or saga.id",
             (int)len, name);
    return -1;
}

static int call_compile(tr_config_t *cfg, const json_t *obj, tr__saga_def_t *def, size_t at,
                        bool compensation, tr__saga_call_def_t *out)
{
    static const char *const keys[] = {"service", "method", "path", "body", NULL};
    static const char *const methods[] = {"GET", "POST", "PUT", "PATCH", "DELETE", NULL};
    const char *service, *method, *path;
    int m = 1;
    if (tr_config_check_keys(cfg, obj, keys) ||
        tr_config_get_string(cfg, obj, "service", NULL, &service) ||
        tr_config_get_string(cfg, obj, "path", NULL, &path) ||
        tr_config_get_enum(cfg, obj, "method", methods, 1, &m))
        return TR_ECONFIG;
    (void)method;
    if (!service || !*service)
        return tr_config_fail(cfg, obj, "service", "the service to call is required");
    if (!path || path[0] != '/')
        return tr_config_fail(cfg, obj, "path", "a path starting with '/' is required");
    names_ctx_t nc = {
        .def = def, .at = at, .first = def->steps[at].group_first, .compensation = compensation};
    json_t *p = json_string(path), *body = json_object_get(obj, "body");
    int rc = tr__saga_template_names(p, check_name, &nc);
    json_decref(p);
    if (rc) return tr_config_fail(cfg, obj, "path", "%s", nc.bad);
    if (body && tr__saga_template_names(body, check_name, &nc))
        return tr_config_fail(cfg, obj, "body", "%s", nc.bad);
    out->defined = true;
    out->service = tr_strdup(service);
    snprintf(out->method, sizeof(out->method), "%s", methods[m]);
    out->path = tr_strdup(path);
    out->body = body ? json_deep_copy(body) : NULL;
    return 0;
}

static int retry_compile(tr_config_t *cfg, const json_t *step, tr__saga_step_def_t *s)
{
    static const char *const keys[] = {"attempts", "backoff", NULL};
    json_t *retry = NULL;
    int64_t attempts = DEFAULT_ATTEMPTS;
    s->backoff_ms = DEFAULT_BACKOFF_MS;
    if (tr_config_get_object(cfg, step, "retry", &retry)) return TR_ECONFIG;
    if (retry &&
        (tr_config_check_keys(cfg, retry, keys) ||
         tr_config_get_int(cfg, retry, "attempts", DEFAULT_ATTEMPTS, 1, 1000, &attempts) ||
         tr_config_get_duration(cfg, retry, "backoff", DEFAULT_BACKOFF_MS, &s->backoff_ms)))
        return TR_ECONFIG;
    s->attempts = (uint32_t)attempts;
    return 0;
}

static int step_compile(tr_config_t *cfg, const json_t *obj, tr__saga_def_t *d, size_t at)
{
    static const char *const keys[] = {"name",  "action", "compensation", "pivot", "timeout",
                                       "retry", NULL};
    tr__saga_step_def_t *s = &d->steps[at];
    const char *name;
    json_t *action = NULL, *comp = NULL;
    if (!json_is_object(obj)) return tr_config_fail(cfg, obj, NULL, "a step must be a mapping");
    if (tr_config_check_keys(cfg, obj, keys) ||
        tr_config_get_string(cfg, obj, "name", NULL, &name) ||
        tr_config_get_bool(cfg, obj, "pivot", false, &s->pivot) ||
        tr_config_get_duration(cfg, obj, "timeout", DEFAULT_TIMEOUT_MS, &s->timeout_ms) ||
        tr_config_get_object(cfg, obj, "action", &action) ||
        tr_config_get_object(cfg, obj, "compensation", &comp) || retry_compile(cfg, obj, s))
        return TR_ECONFIG;
    if (!name || !name_ok(name))
        return tr_config_fail(cfg, obj, "name",
                              "each step needs a name of letters, digits, - or _");
    if (tr__saga_def_step(d, name, strlen(name)) >= 0)
        return tr_config_fail(cfg, obj, "name", "step '%s' is defined twice", name);
    s->name = tr_strdup(name);
    if (!action) return tr_config_fail(cfg, obj, "action", "each step needs an action");
    if (s->timeout_ms == 0) return tr_config_fail(cfg, obj, "timeout", "must be above 0");
    if (call_compile(cfg, action, d, at, false, &s->action)) return TR_ECONFIG;
    if (s->pivot && d->pivot >= 0)
        return tr_config_fail(cfg, obj, "pivot", "only one step can be the pivot");
    if (s->pivot && s->group_end - s->group_first > 1)
        return tr_config_fail(cfg, obj, "pivot",
                              "the pivot must be a step of its own, not in a parallel group");
    if (comp && (d->pivot >= 0 || s->pivot))
        return tr_config_fail(
            cfg, obj, "compensation",
            "the pivot and the steps after it are never compensated; remove this");
    if (comp && call_compile(cfg, comp, d, at, true, &s->compensation)) return TR_ECONFIG;
    if (comp) {
        char own[96];
        snprintf(own, sizeof(own), "${steps.%s", s->name);
        char *body = s->compensation.body ? json_dumps(s->compensation.body, JSON_COMPACT) : NULL;
        s->comp_uses_response = strstr(s->compensation.path, own) || (body && strstr(body, own));
        free(body);
    }
    if (s->pivot) d->pivot = (int)at;
    return 0;
}

/* One item of `steps`: a step, or {parallel: [step, …]} whose steps run at the same time.
 * Appends its steps to d (flattened, with their group). */
static int group_compile(tr_config_t *cfg, const json_t *item, tr__saga_def_t *d)
{
    static const char *const keys[] = {"parallel", NULL};
    json_t *par = json_object_get(item, "parallel");
    size_t n = par ? json_array_size(par) : 1, first = d->nsteps;
    if (par && tr_config_check_keys(cfg, item, keys)) return TR_ECONFIG;
    if (par && (!json_is_array(par) || n < 2 || n > TR_SAGA_MAX_PARALLEL))
        return tr_config_fail(cfg, item, "parallel", "a parallel group is a list of 2 to %d steps",
                              TR_SAGA_MAX_PARALLEL);
    if (first + n > TR_SAGA_MAX_STEPS)
        return tr_config_fail(cfg, item, NULL,
                              "a saga has at most %d steps (parallel ones counted)",
                              TR_SAGA_MAX_STEPS);
    for (size_t k = 0; k < n; k++) {
        d->steps[first + k].group_first = first;
        d->steps[first + k].group_end = first + n;
    }
    for (size_t k = 0; k < n; k++) {
        d->nsteps = first + k + 1; /* templates may name steps up to here (check_name says which) */
        if (step_compile(cfg, par ? json_array_get(par, k) : item, d, first + k)) return TR_ECONFIG;
    }
    return 0;
}

int tr__saga_def_compile(tr_config_t *cfg, const char *name, const json_t *obj,
                         tr__saga_def_t **out)
{
    static const char *const keys[] = {"steps", "max_compensation_attempts", "max_forward_attempts",
                                       NULL};
    json_t *steps = NULL;
    int64_t maxc, maxf;
    *out = NULL;
    if (!json_is_object(obj)) return tr_config_fail(cfg, obj, NULL, "a saga must be a mapping");
    if (!name_ok(name))
        return tr_config_fail(cfg, obj, NULL, "saga name '%s': use letters, digits, - or _", name);
    if (tr_config_check_keys(cfg, obj, keys) || tr_config_get_array(cfg, obj, "steps", &steps) ||
        tr_config_get_int(cfg, obj, "max_compensation_attempts", DEFAULT_MAX_COMPENSATE, 1, 1000000,
                          &maxc) ||
        tr_config_get_int(cfg, obj, "max_forward_attempts", DEFAULT_MAX_FORWARD, 1, 1000000, &maxf))
        return TR_ECONFIG;
    if (!steps || !json_array_size(steps) || json_array_size(steps) > TR_SAGA_MAX_STEPS)
        return tr_config_fail(cfg, obj, "steps", "expected 1 to %d steps", TR_SAGA_MAX_STEPS);
    if (maxc < 1 || maxf < 1)
        return tr_config_fail(cfg, obj,
                              maxc < 1 ? "max_compensation_attempts" : "max_forward_attempts",
                              "must be at least 1");
    tr__saga_def_t *d = tr_calloc(1, sizeof(*d));
    d->refs = 1;
    d->name = tr_strdup(name);
    d->pivot = -1;
    d->max_compensation_attempts = (uint32_t)maxc;
    d->max_forward_attempts = (uint32_t)maxf;
    d->steps = tr_calloc(TR_SAGA_MAX_STEPS, sizeof(*d->steps));
    d->source = json_deep_copy(obj);
    for (size_t i = 0; i < json_array_size(steps); i++) {
        if (group_compile(cfg, json_array_get(steps, i), d)) {
            tr__saga_def_release(d);
            return TR_ECONFIG;
        }
    }
    *out = d;
    return 0;
}

int tr__saga_def_step(const tr__saga_def_t *d, const char *name, size_t len)
{
    for (size_t i = 0; i < d->nsteps; i++)
        if (d->steps[i].name && strlen(d->steps[i].name) == len &&
            !memcmp(d->steps[i].name, name, len))
            return (int)i;
    return -1;
}

tr__saga_def_t *tr__saga_def_retain(tr__saga_def_t *d)
{
    d->refs++;
    return d;
}

void tr__saga_def_release(tr__saga_def_t *d)
{
    if (!d || --d->refs > 0) return;
    for (size_t i = 0; i < d->nsteps; i++) {
        free(d->steps[i].name);
        call_free(&d->steps[i].action);
        call_free(&d->steps[i].compensation);
    }
    free(d->steps);
    free(d->name);
    json_decref(d->source);
    free(d);
}

int tr_saga_check(tr_config_t *cfg, const json_t *sagas)
{
    const char *name;
    json_t *def;
    if (!sagas) return 0;
    if (!json_is_object(sagas))
        return tr_config_fail(cfg, sagas, NULL, "expected a mapping of saga name to saga");
    json_object_foreach((json_t *)sagas, name, def)
    {
        tr__saga_def_t *d;
        if (tr__saga_def_compile(cfg, name, def, &d)) return TR_ECONFIG;
        tr__saga_def_release(d);
    }
    return 0;
}
