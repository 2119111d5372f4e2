/* Renders problem+json bodies with jansson so every string is escaped correctly. */
#include "core/problem.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* Peers put arbitrary bytes in what we echo back; keep the JSON valid UTF-8 regardless. */
static json_t *safe_string(const char *s)
{
    json_t *j = json_string(s ? s : "");
    if (j) return j;
    char *copy = strdup(s);
    for (char *p = copy; *p; p++)
        if ((unsigned char)*p >= 0x80) *p = '?';
    j = json_string(copy);
    free(copy);
    return j;
}

void tr_problem_render(tr_buf_t *out, int status, const char *slug, const char *title,
                       const char *detail)
{
    json_t *o = json_object();
    json_object_set_new(o, "type", json_sprintf(TR_PROBLEM_TYPE_BASE "%s", slug));
    json_object_set_new(o, "title", safe_string(title));
    json_object_set_new(o, "status", json_integer(status));
    if (detail) json_object_set_new(o, "detail", safe_string(detail));
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (s) {
        tr_buf_append_str(out, s);
        tr_buf_append(out, "\n", 1);
        free(s);
    }
    json_decref(o);
}
