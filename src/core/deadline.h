/*
 * Deadlines for many short-lived operations on one loop, without a timer heap operation per
 * operation. Operations that share a duration (a route's timeout, say) expire in the order they
 * were armed, so each duration is a FIFO "lane": arming appends to its tail and disarming
 * unlinks in O(1). A lane has one uv timer, armed for its head; removing the head does not
 * re-arm it — the timer fires, finds nothing due and sleeps until the new head's deadline.
 *
 * Single-threaded: every call on the loop's thread. A callback may arm and disarm deadlines.
 */
#ifndef TR_CORE_DEADLINE_H
#define TR_CORE_DEADLINE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef struct tr_deadlines_s tr_deadlines_t;
typedef struct tr_deadline_lane_s tr_deadline_lane_t;
typedef struct tr_deadline_s tr_deadline_t;
typedef void (*tr_deadline_cb)(tr_deadline_t *d);

/* Embedded in its owner; zero-initialised means "not armed". */
struct tr_deadline_s {
    tr_deadline_t *prev, *next;
    tr_deadline_lane_t *lane; /* NULL when not armed */
    uint64_t due;             /* loop time (ms) */
    tr_deadline_cb cb;
    void *data;
};

tr_deadlines_t *tr_deadlines_new(uv_loop_t *loop);
/* Arms `d` to call cb(d) once `ms` (> 0) from the loop's current time. Re-arming an armed
 * deadline moves it. A set keeps one lane per distinct duration: meant for a handful of
 * durations (route timeouts), not for arbitrary ones. */
void tr_deadline_arm(tr_deadlines_t *ds, tr_deadline_t *d, uint64_t ms, tr_deadline_cb cb,
                     void *data);
/* Disarms `d`; a no-op if it is not armed. O(1). */
void tr_deadline_disarm(tr_deadline_t *d);
static inline bool tr_deadline_armed(const tr_deadline_t *d)
{
    return d->lane != NULL;
}
/* Number of armed deadlines (for tests and metrics). */
size_t tr_deadlines_count(const tr_deadlines_t *ds);
/* Closes the lanes' timers and frees everything once they are closed; armed deadlines are
 * dropped without being called. The loop must run for the close to finish. */
void tr_deadlines_close(tr_deadlines_t *ds);

#endif
