/* What every shop service's main() shares: --help, its name and database from the
 * environment, making and running the app. */
#ifndef SHOP_COMMON_SHOP_H
#define SHOP_COMMON_SHOP_H

#include <stddef.h>
#include <trellis/app.h>

typedef struct shop_service_s {
    const char *name;              /* default service name ($TRELLIS_SERVICE wins); the
                                      database is $SHOP_DATA_DIR/<name>.db */
    const char *about;             /* what the service is, for --help (ends with \n) */
    const char *const *migrations; /* NULL: the service has no database */
    /* Adds routes and declares dependencies; a non-zero return (with err filled) stops the
     * service before it serves. */
    int (*setup)(tr_app_t *app, char *err, size_t errlen);
} shop_service_t;

/* The directory of the shop's data: $SHOP_DATA_DIR, else "./.data". */
const char *shop_data_dir(void);

/*
 * A service's whole main(): --help prints usage (exit 0), any other argument is a usage
 * error (exit 2); then the app is made (exit 2 on a bad setting or database), set up and
 * run until SIGTERM (exit 0, or 1 when it could not serve). Returns the exit code.
 */
int shop_main(const shop_service_t *s, int argc, char **argv);

#endif
