/* libFuzzer target: the topology compiler (tr_topology_load from YAML text) and its effective JSON.
 */
#include "supervisor/topology.h"
#include "trellis/error.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    tr_topology_t *t = NULL;
    if (tr_topology_load("/fuzz/topology.yaml", text, &t, err, sizeof(err)) == 0) {
        size_t n;
        const tr_topo_service_t *const *order = tr_topology_start_order(t, &n);
        const char *vars[] = {"PORT=9000", "TRELLIS_SERVICE=s", "TRELLIS_INSTANCE=0", NULL};
        char out[256];
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < order[i]->nargs; j++)
                if (tr_topology_expand(order[i]->args[j], vars, out, sizeof(out)) == TR_ENOTFOUND)
                    abort(); /* the loader admits only variables that expand */
        json_decref(tr_topology_effective(t));
        tr_topology_free(t);
    } else if (memchr(err, '\0', sizeof(err)) == NULL) {
        abort();
    }
    free(text);
    return 0;
}
