/* Saga orchestrator internals: definitions, templates, the engine's sagas, the store. */
#ifndef TR_SAGA_SAGA_INT_H
#define TR_SAGA_SAGA_INT_H

#include "saga/saga.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TR_SAGA_MAX_STEPS    64 /* after parallel groups are flattened */
#define TR_SAGA_MAX_PARALLEL 16 /* steps in one parallel group */

/* One HTTP call of a step: to a service found through discovery. */
typedef struct tr__saga_call_def_s {
    bool defined;
    char *service;
    char method[8];
    char *path;   /* text template */
    json_t *body; /* JSON template, NULL for none */
} tr__saga_call_def_t;

typedef struct tr__saga_step_def_s {
    char *name;
    tr__saga_call_def_t action, compensation;
    bool pivot;
    bool comp_uses_response; /* the compensation's templates name this step's response */
    uint64_t timeout_ms;     /* per attempt */
    uint32_t attempts;       /* before the step counts as failed (before the pivot) */
    uint64_t backoff_ms;     /* first retry delay, doubled per retry, full jitter */
    /* The group the step runs in: steps [group_first, group_end) run at the same time (a
     * `parallel:` group); a step of its own is a group of one. */
    size_t group_first, group_end;
} tr__saga_step_def_t;

typedef struct tr__saga_def_s {
    char *name;
    tr__saga_step_def_t *steps;
    size_t nsteps;
    int pivot; /* index of the pivot step, -1 for none */
    uint32_t max_compensation_attempts, max_forward_attempts;
    json_t *source; /* the definition as given (kept with every saga started from it) */
    int refs;
} tr__saga_def_t;

/*
 * Compiles a definition (a JSON object; `cfg` gives file:line:col positions and collects
 * the error, see trellis/config.h). Returns 0 and *out (refs 1), or TR_ECONFIG.
 */
int tr__saga_def_compile(tr_config_t *cfg, const char *name, const json_t *obj,
                         tr__saga_def_t **out);
tr__saga_def_t *tr__saga_def_retain(tr__saga_def_t *d);
void tr__saga_def_release(tr__saga_def_t *d);
/* Index of the step named `name`, or -1. */
int tr__saga_def_step(const tr__saga_def_t *d, const char *name, size_t len);

/* Templates (template.c). `ctx` is {"input":…, "steps":{name: response}, "saga":{"id":…}}. */
json_t *tr__saga_render(const json_t *tmpl, const json_t *ctx, char *err, size_t errlen);
/* Text with every ${…} replaced by its value's text (percent-encoded when `encode`);
 * malloc'd, or NULL with the reason in err. */
char *tr__saga_render_text(const char *tmpl, const json_t *ctx, bool encode, char *err,
                           size_t errlen);
int tr__saga_template_names(const json_t *tmpl, int (*fn)(const char *name, size_t len, void *d),
                            void *d);

#endif
