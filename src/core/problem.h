/* RFC 9457 problem+json bodies, shared by every HTTP surface of trellis. */
#ifndef TR_CORE_PROBLEM_H
#define TR_CORE_PROBLEM_H

#include "core/buf.h"

#define TR_PROBLEM_TYPE_BASE    "https://trellis.dev/problems/"
#define TR_PROBLEM_CONTENT_TYPE "application/problem+json"

/*
 * Appends {"type":BASE+slug,"title":…,"status":…,"detail":…} to `out`, escaping every
 * string. `detail` may be NULL.
 */
void tr_problem_render(tr_buf_t *out, int status, const char *slug, const char *title,
                       const char *detail);

#endif
