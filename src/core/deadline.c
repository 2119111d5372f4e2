#include "core/deadline.h"
#include "core/mem.h"
#include <stdlib.h>

struct tr_deadline_lane_s {
    uv_timer_t timer;
    tr_deadlines_t *owner;
    uint64_t ms;
    tr_deadline_t *head, *tail;
    uint64_t timer_due; /* 0 = the timer is not armed */
};

struct tr_deadlines_s {
    uv_loop_t *loop;
    tr_deadline_lane_t **lanes;
    size_t nlanes, cap, armed;
    unsigned closing; /* lanes whose close is pending */
};

tr_deadlines_t *tr_deadlines_new(uv_loop_t *loop)
{
    tr_deadlines_t *ds = tr_calloc(1, sizeof(*ds));
    ds->loop = loop;
    return ds;
}

static tr_deadline_lane_t *lane_for(tr_deadlines_t *ds, uint64_t ms)
{
    for (size_t i = 0; i < ds->nlanes; i++)
        if (ds->lanes[i]->ms == ms) return ds->lanes[i];
    if (ds->nlanes == ds->cap) {
        size_t cap = ds->cap ? ds->cap * 2 : 4;
        ds->lanes = tr_realloc(ds->lanes, cap * sizeof(*ds->lanes));
        ds->cap = cap;
    }
    tr_deadline_lane_t *lane = tr_calloc(1, sizeof(*lane));
    uv_timer_init(ds->loop, &lane->timer);
    lane->timer.data = lane;
    lane->owner = ds;
    lane->ms = ms;
    ds->lanes[ds->nlanes++] = lane;
    return lane;
}

static void on_lane_timer(uv_timer_t *t);

static void lane_schedule(tr_deadline_lane_t *lane, uint64_t now)
{
    if (!lane->head) {
        lane->timer_due = 0;
        return;
    }
    lane->timer_due = lane->head->due;
    uv_timer_start(&lane->timer, on_lane_timer, lane->head->due > now ? lane->head->due - now : 0,
                   0);
}

static void on_lane_timer(uv_timer_t *t)
{
    tr_deadline_lane_t *lane = t->data;
    uint64_t now = uv_now(t->loop);
    lane->timer_due = 0;
    while (lane->head && lane->head->due <= now) {
        tr_deadline_t *d = lane->head;
        tr_deadline_disarm(d);
        d->cb(d); /* may arm new deadlines on this lane: they land behind `now` */
    }
    if (!lane->timer_due) lane_schedule(lane, now);
}

void tr_deadline_arm(tr_deadlines_t *ds, tr_deadline_t *d, uint64_t ms, tr_deadline_cb cb,
                     void *data)
{
    tr_deadline_disarm(d);
    tr_deadline_lane_t *lane = lane_for(ds, ms);
    uint64_t now = uv_now(ds->loop);
    d->due = now + ms;
    d->cb = cb;
    d->data = data;
    d->lane = lane;
    d->next = NULL;
    d->prev = lane->tail;
    if (lane->tail)
        lane->tail->next = d;
    else
        lane->head = d;
    lane->tail = d;
    ds->armed++;
    /* The lane's timer only ever needs to fire sooner for a new head. */
    if (!lane->timer_due) lane_schedule(lane, now);
}

void tr_deadline_disarm(tr_deadline_t *d)
{
    tr_deadline_lane_t *lane = d->lane;
    if (!lane) return;
    if (d->prev)
        d->prev->next = d->next;
    else
        lane->head = d->next;
    if (d->next)
        d->next->prev = d->prev;
    else
        lane->tail = d->prev;
    d->prev = d->next = NULL;
    d->lane = NULL;
    lane->owner->armed--;
}

size_t tr_deadlines_count(const tr_deadlines_t *ds)
{
    return ds->armed;
}

static void on_lane_closed(uv_handle_t *h)
{
    tr_deadline_lane_t *lane = h->data;
    tr_deadlines_t *ds = lane->owner;
    free(lane);
    if (--ds->closing == 0) {
        free(ds->lanes);
        free(ds);
    }
}

void tr_deadlines_close(tr_deadlines_t *ds)
{
    if (!ds) return;
    if (ds->nlanes == 0) {
        free(ds->lanes);
        free(ds);
        return;
    }
    ds->closing = (unsigned)ds->nlanes;
    for (size_t i = 0; i < ds->nlanes; i++) {
        tr_deadline_lane_t *lane = ds->lanes[i];
        while (lane->head)
            tr_deadline_disarm(lane->head);
        uv_close((uv_handle_t *)&lane->timer, on_lane_closed);
    }
}
