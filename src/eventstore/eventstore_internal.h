/* The event store's state shared by the store (eventstore.c) and its HTTP API. */
#ifndef TR_EVENTSTORE_INTERNAL_H
#define TR_EVENTSTORE_INTERNAL_H

#include "eventstore/eventstore.h"

#include <pthread.h>
#include <sqlite3.h>

typedef struct tr_es_sub_s tr_es_sub_t;

struct tr_eventstore_s {
    tr_eventstore_options_t opts;
    char *path;

    pthread_mutex_t mu; /* queue, done list, head, counters */
    pthread_cond_t wake;
    tr_es_write_t *queue, *queue_tail;
    tr_es_write_t *done, *done_tail; /* finished writes the loop has still to answer */
    bool stop;
    pthread_t writer;
    bool writer_started;
    int64_t head; /* last committed position */
    uint64_t commits, events;

    sqlite3 *wdb; /* the writer thread's */
    pthread_mutex_t rmu;
    sqlite3 *rdb; /* read-only; any thread under rmu */

    uv_async_t async;                      /* writer → loop: writes done, something committed */
    uv_check_t check;                      /* loop: hands the iteration's writes over at once */
    tr_es_write_t *pending, *pending_tail; /* loop thread: writes not yet handed over */
    bool committed;                        /* under mu: a commit since the loop last looked */
    bool closing;
    int refs; /* loop thread: the store, each read in the thread pool, the async handle */

    tr_es_sub_t *subs;          /* loop thread: waiting long polls and SSE followers */
    struct tr_outbox_s *outbox; /* loop thread: push subscriptions (outbox.c) */
};

/* Loop thread: something was committed; wakes the waiting subscribers (eventstore_http.c). */
void tr__eventstore_http_committed(tr_eventstore_t *s);
/* Loop thread: the store closes; answers and ends every subscriber. */
void tr__eventstore_http_close(tr_eventstore_t *s);
/* Loop thread: reference counting that keeps the memory while reads are in flight. */
void tr__eventstore_retain(tr_eventstore_t *s);
void tr__eventstore_release(tr_eventstore_t *s);

#endif
