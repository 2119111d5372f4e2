/* The part of main() every shop service shares (see shop.h). */
#include "shop.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *shop_data_dir(void)
{
    const char *dir = getenv("SHOP_DATA_DIR");
    return dir && *dir ? dir : "./.data";
}

static void usage(const shop_service_t *s, FILE *out)
{
    fprintf(out,
            "Usage: shop-%s [--help]\n\n%s\n"
            "Environment:\n"
            "  PORT              port to listen on, on 127.0.0.1 (default 8080; 0: any free one)\n"
            "  SHOP_DATA_DIR     the shop's data directory (default ./.data)%s%s%s\n"
            "  TRELLIS_REGISTRY  registry to register with and find services in, ip:port\n"
            "                    (default 127.0.0.1:8500)\n"
            "  TRELLIS_SERVICE   service name (default %s)\n"
            "  OTEL_EXPORTER_OTLP_ENDPOINT  where spans go (default: none)\n"
            "  TRELLIS_LOG_LEVEL debug, info, warn or error (default info)\n\n"
            "Example:\n"
            "  PORT=7001 SHOP_DATA_DIR=/tmp/shop shop-%s\n",
            s->name, s->about, s->migrations ? "; the database is " : "",
            s->migrations ? s->name : "", s->migrations ? ".db there" : "", s->name, s->name);
}

int shop_main(const shop_service_t *s, int argc, char **argv)
{
    if (argc > 1) {
        bool help = !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h");
        if (!help) fprintf(stderr, "shop-%s: unexpected argument '%s'\n\n", s->name, argv[1]);
        usage(s, help ? stdout : stderr);
        return help ? 0 : 2;
    }
    tr_app_options_t o;
    char err[512], db_path[4096];
    tr_app_options_init(&o);
    const char *name = getenv("TRELLIS_SERVICE"); /* the SDK reads it when o.name is NULL */
    if (!name || !*name) name = o.name = s->name;
    if (s->migrations) {
        snprintf(db_path, sizeof(db_path), "%s/%s.db", shop_data_dir(), name);
        o.db_path = db_path;
        o.migrations = s->migrations;
    }
    tr_app_t *app = tr_app_new(&o, err, sizeof(err));
    if (!app) {
        fprintf(stderr, "shop-%s: %s\n", s->name, err);
        return 2;
    }
    if (s->setup && s->setup(app, err, sizeof(err))) {
        fprintf(stderr, "shop-%s: %s\n", s->name, err);
        tr_app_free(app);
        return 2;
    }
    int rc = tr_app_run(app);
    tr_app_free(app);
    return rc ? 1 : 0;
}
