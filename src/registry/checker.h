/* Health checks run on their own thread and loop; results come back to the registry loop. */
#ifndef TR_REGISTRY_CHECKER_H
#define TR_REGISTRY_CHECKER_H

#include <stdint.h>
#include <uv.h>

typedef struct tr_checker_s tr_checker_t;

typedef enum tr_check_status_e {
    TR_CHECK_PASSING,
    TR_CHECK_WARNING,
    TR_CHECK_CRITICAL,
} tr_check_status_t;

typedef enum tr_check_kind_e {
    TR_CHECK_HTTP, /* 2xx passing, 429 warning, anything else critical */
    TR_CHECK_TCP,  /* connect succeeds → passing */
} tr_check_kind_t;

/* One active check. Every string is copied by tr_checker_upsert. */
typedef struct tr_check_spec_s {
    const char *id; /* the check's ID ("service:web-1") */
    tr_check_kind_t kind;
    const char *target;   /* HTTP: a URL "http://host:port/path"; TCP: "host:port" */
    const char *method;   /* HTTP method, default GET */
    const char *headers;  /* HTTP headers as a JSON object {"Name": ["v1", "v2"]}, or NULL */
    const char *body;     /* HTTP request body, or NULL */
    uint64_t interval_ms; /* how often; > 0 */
    uint64_t timeout_ms;  /* per run; 0 → the interval, capped at 10 s */
} tr_check_spec_t;

/*
 * Called on the loop given to tr_checker_start, once per finished run. `output` is a
 * short human text (for HTTP: "HTTP GET url: 200 OK Output: <first bytes of the body>").
 * Both strings are valid only during the call.
 */
typedef void (*tr_checker_result_cb)(void *data, const char *check_id, tr_check_status_t status,
                                     const char *output);

/* Starts the checker thread. Results are delivered on `loop` (the registry's). */
int tr_checker_start(uv_loop_t *loop, tr_checker_result_cb cb, void *data, tr_checker_t **out);
/*
 * Adds or replaces a check (safe from the registry loop; the spec is copied). Start times
 * are spread over the interval so thousands of checks don't fire in bursts.
 */
void tr_checker_upsert(tr_checker_t *ck, const tr_check_spec_t *spec);
/* Removes a check; a run in flight is abandoned and never reported. */
void tr_checker_remove(tr_checker_t *ck, const char *id);
/*
 * Stops the thread, abandons every run, and frees the checker after its loop has ended
 * (blocking, bounded by the runs' own timeouts). Must be called on `loop`'s thread.
 */
void tr_checker_stop(tr_checker_t *ck);

/* Internal: the delay before a check's first run, in [0, interval_ms); deterministic per id. */
uint64_t tr__checker_first_delay(const char *id, uint64_t interval_ms);

#endif
