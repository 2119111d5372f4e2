#include "core/sqlite.h"

#include "trellis/error.h"
#include "trellis/log.h"

#include <stdio.h>

int tr_sqlite_exec(sqlite3 *db, const char *sql, char *err, size_t errlen, const char *path)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) == SQLITE_OK) return 0;
    snprintf(err, errlen, "%s: %s", path, msg ? msg : sqlite3_errmsg(db));
    sqlite3_free(msg);
    return TR_EIO;
}

int64_t tr_sqlite_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *s;
    int64_t v = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK) return -1;
    if (sqlite3_step(s) == SQLITE_ROW) v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return v;
}

int tr_sqlite_migrate(sqlite3 *db, const char *path, const char *store,
                      const char *const *migrations, int n, char *err, size_t errlen)
{
    int64_t version = tr_sqlite_int(db, "PRAGMA user_version");
    if (version < 0) {
        snprintf(err, errlen, "%s: cannot read the schema version: %s", path, sqlite3_errmsg(db));
        return TR_EIO;
    }
    if (version > n) {
        snprintf(err, errlen,
                 "%s: schema version %lld is newer than this trellis knows (%d); "
                 "run a newer trellis or use another data directory",
                 path, (long long)version, n);
        return TR_ESTATE;
    }
    for (int v = (int)version; v < n; v++) {
        char bump[64];
        snprintf(bump, sizeof(bump), "PRAGMA user_version = %d;", v + 1);
        if (tr_sqlite_exec(db, "BEGIN IMMEDIATE", err, errlen, path) < 0) return TR_EIO;
        /* Another process (a second replica) may have migrated while this one waited for
         * the write lock: go on from the version the file has now. */
        int64_t now = tr_sqlite_int(db, "PRAGMA user_version");
        if (now > v) {
            if (tr_sqlite_exec(db, "COMMIT", err, errlen, path) < 0) return TR_EIO;
            v = (int)now - 1;
            continue;
        }
        if (tr_sqlite_exec(db, migrations[v], err, errlen, path) < 0 ||
            tr_sqlite_exec(db, bump, err, errlen, path) < 0 ||
            tr_sqlite_exec(db, "COMMIT", err, errlen, path) < 0) {
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
            return TR_EIO;
        }
        tr_log_info("schema migrated", TR_LOG_STR("store", store), TR_LOG_STR("path", path),
                    TR_LOG_INT("version", v + 1));
    }
    return 0;
}
