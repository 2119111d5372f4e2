/*
 * The "trellis-walbuf" SQLite VFS: the default (unix) VFS with the writes of a commit's WAL
 * frames gathered into one write.
 *
 * SQLite writes each WAL frame as two pwrite calls (its 24-byte header, then the page), so
 * a group commit that dirties 500 pages costs 1,000 system calls. Here the WAL file's
 * writes that follow each other are kept in a buffer and written, 64 KiB per pwrite, when the
 * frame that commits the transaction has been written, before xWrite returns: SQLite sees
 * a failure exactly where it would have, and the frames are in the file before SQLite
 * publishes them to other connections in the WAL index. As a second guard, the buffer is
 * also written before every other operation on the WAL file (read, sync, truncate, size,
 * close, file control) and at the database file's shared-memory barrier and locks, which
 * SQLite calls before a new WAL index header becomes visible.
 *
 * Everything else — the database file, locks, shared memory, mmap — is the unix VFS's,
 * so connections opened with and without this VFS share locks and the WAL index.
 */
#include "core/sqlite.h"

#include "core/mem.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define WB_NAME      "trellis-walbuf"
#define WB_MAX       (1024 * 1024) /* written out when it holds this much */
#define WB_CHUNK     (64 * 1024)   /* bytes per write */
#define WB_FRAME_HDR 24

typedef struct wb_file_s {
    sqlite3_file base;
    sqlite3_file *real;    /* the unix VFS's file, in the bytes right after this struct */
    struct wb_file_s *wal; /* the database file: its WAL file while open */
    struct wb_file_s *db;  /* the WAL file: its database file */
    bool is_wal;
    bool commit_next; /* the last write was the header of a commit frame */
    char *buf;
    size_t len, cap;
    sqlite3_int64 off; /* the file offset of buf[0] */
} wb_file_t;

static sqlite3_vfs wb_vfs;
static sqlite3_vfs *unix_vfs;
static _Atomic uint64_t n_writes, n_flushes, n_late_flushes;

static sqlite3_file *R(sqlite3_file *f)
{
    return ((wb_file_t *)f)->real;
}

static int flush(wb_file_t *f)
{
    if (!f->len) return SQLITE_OK;
    int rc = SQLITE_OK;
    /* The unix VFS writes at most 128 KiB - 1 bytes per call (it masks the length). */
    for (size_t done = 0; done < f->len && rc == SQLITE_OK; done += WB_CHUNK) {
        size_t n = f->len - done < WB_CHUNK ? f->len - done : WB_CHUNK;
        rc =
            f->real->pMethods->xWrite(f->real, f->buf + done, (int)n, f->off + (sqlite3_int64)done);
        atomic_fetch_add_explicit(&n_flushes, 1, memory_order_relaxed);
    }
    f->len = 0;
    return rc;
}

/* The guard: a buffer still full here means a commit was not recognised. */
static void flush_late(wb_file_t *f)
{
    if (!f || !f->len) return;
    atomic_fetch_add_explicit(&n_late_flushes, 1, memory_order_relaxed);
    flush(f);
}

static int wb_close(sqlite3_file *pf)
{
    wb_file_t *f = (wb_file_t *)pf;
    int rc = flush(f);
    if (f->is_wal && f->db) f->db->wal = NULL;
    if (!f->is_wal && f->wal) f->wal->db = NULL;
    int rc2 = f->real->pMethods ? f->real->pMethods->xClose(f->real) : SQLITE_OK;
    free(f->buf);
    f->buf = NULL;
    return rc != SQLITE_OK ? rc : rc2;
}

static int wb_read(sqlite3_file *pf, void *out, int amt, sqlite3_int64 off)
{
    wb_file_t *f = (wb_file_t *)pf;
    int rc = flush(f);
    return rc != SQLITE_OK ? rc : f->real->pMethods->xRead(f->real, out, amt, off);
}

static int wb_write(sqlite3_file *pf, const void *data, int amt, sqlite3_int64 off)
{
    wb_file_t *f = (wb_file_t *)pf;
    if (!f->is_wal) return f->real->pMethods->xWrite(f->real, data, amt, off);
    atomic_fetch_add_explicit(&n_writes, 1, memory_order_relaxed);
    int rc;
    if (f->len && f->off + (sqlite3_int64)f->len != off && (rc = flush(f)) != SQLITE_OK) return rc;
    if (!f->len) f->off = off;
    if (f->cap - f->len < (size_t)amt) {
        size_t cap = f->cap ? f->cap : 64 * 1024;
        while (cap - f->len < (size_t)amt)
            cap *= 2;
        f->buf = tr_realloc(f->buf, cap);
        f->cap = cap;
    }
    memcpy(f->buf + f->len, data, (size_t)amt);
    f->len += (size_t)amt;
    bool commit = f->commit_next;
    f->commit_next = false;
    if (amt == WB_FRAME_HDR) {
        /* A frame header: bytes 4..7 are the database size after a commit, else zero. */
        const unsigned char *h = data;
        f->commit_next = (h[4] | h[5] | h[6] | h[7]) != 0;
    }
    if (commit || f->len >= WB_MAX) return flush(f);
    return SQLITE_OK;
}

static int wb_truncate(sqlite3_file *pf, sqlite3_int64 size)
{
    int rc = flush((wb_file_t *)pf);
    return rc != SQLITE_OK ? rc : R(pf)->pMethods->xTruncate(R(pf), size);
}

static int wb_sync(sqlite3_file *pf, int flags)
{
    int rc = flush((wb_file_t *)pf);
    return rc != SQLITE_OK ? rc : R(pf)->pMethods->xSync(R(pf), flags);
}

static int wb_file_size(sqlite3_file *pf, sqlite3_int64 *size)
{
    int rc = flush((wb_file_t *)pf);
    return rc != SQLITE_OK ? rc : R(pf)->pMethods->xFileSize(R(pf), size);
}

static int wb_lock(sqlite3_file *pf, int lock)
{
    return R(pf)->pMethods->xLock(R(pf), lock);
}

static int wb_unlock(sqlite3_file *pf, int lock)
{
    return R(pf)->pMethods->xUnlock(R(pf), lock);
}

static int wb_check_reserved(sqlite3_file *pf, int *out)
{
    return R(pf)->pMethods->xCheckReservedLock(R(pf), out);
}

static int wb_file_control(sqlite3_file *pf, int op, void *arg)
{
    int rc = flush((wb_file_t *)pf);
    if (rc != SQLITE_OK) return rc;
    if (op == SQLITE_FCNTL_VFSNAME) {
        /* Name this VFS, then the one under it, as other shims do. */
        char *under = NULL;
        R(pf)->pMethods->xFileControl(R(pf), op, &under);
        *(char **)arg = sqlite3_mprintf("%s/%s", WB_NAME, under ? under : "unix");
        sqlite3_free(under);
        return SQLITE_OK;
    }
    return R(pf)->pMethods->xFileControl(R(pf), op, arg);
}

static int wb_sector_size(sqlite3_file *pf)
{
    return R(pf)->pMethods->xSectorSize(R(pf));
}

static int wb_device_chars(sqlite3_file *pf)
{
    return R(pf)->pMethods->xDeviceCharacteristics(R(pf));
}

static int wb_shm_map(sqlite3_file *pf, int pg, int pgsz, int extend, void volatile **pp)
{
    return R(pf)->pMethods->xShmMap(R(pf), pg, pgsz, extend, pp);
}

static int wb_shm_lock(sqlite3_file *pf, int offset, int n, int flags)
{
    flush_late(((wb_file_t *)pf)->wal);
    return R(pf)->pMethods->xShmLock(R(pf), offset, n, flags);
}

static void wb_shm_barrier(sqlite3_file *pf)
{
    flush_late(((wb_file_t *)pf)->wal);
    R(pf)->pMethods->xShmBarrier(R(pf));
}

static int wb_shm_unmap(sqlite3_file *pf, int del)
{
    return R(pf)->pMethods->xShmUnmap(R(pf), del);
}

static int wb_fetch(sqlite3_file *pf, sqlite3_int64 off, int amt, void **pp)
{
    return R(pf)->pMethods->xFetch(R(pf), off, amt, pp);
}

static int wb_unfetch(sqlite3_file *pf, sqlite3_int64 off, void *p)
{
    return R(pf)->pMethods->xUnfetch(R(pf), off, p);
}

static const sqlite3_io_methods wb_methods = {
    .iVersion = 3,
    .xClose = wb_close,
    .xRead = wb_read,
    .xWrite = wb_write,
    .xTruncate = wb_truncate,
    .xSync = wb_sync,
    .xFileSize = wb_file_size,
    .xLock = wb_lock,
    .xUnlock = wb_unlock,
    .xCheckReservedLock = wb_check_reserved,
    .xFileControl = wb_file_control,
    .xSectorSize = wb_sector_size,
    .xDeviceCharacteristics = wb_device_chars,
    .xShmMap = wb_shm_map,
    .xShmLock = wb_shm_lock,
    .xShmBarrier = wb_shm_barrier,
    .xShmUnmap = wb_shm_unmap,
    .xFetch = wb_fetch,
    .xUnfetch = wb_unfetch,
};

static int wb_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *pf, int flags, int *out_flags)
{
    (void)vfs;
    wb_file_t *f = (wb_file_t *)pf;
    memset(f, 0, sizeof(*f));
    f->real = (sqlite3_file *)(f + 1);
    int rc = unix_vfs->xOpen(unix_vfs, name, f->real, flags, out_flags);
    if (rc != SQLITE_OK) {
        /* SQLite calls xClose only when pMethods is set: the unix file is already closed. */
        f->base.pMethods = NULL;
        return rc;
    }
    f->base.pMethods = &wb_methods;
    if ((flags & SQLITE_OPEN_WAL) && name) {
        f->is_wal = true;
        sqlite3_file *db = sqlite3_database_file_object(name);
        if (db && db->pMethods == &wb_methods) {
            f->db = (wb_file_t *)db;
            f->db->wal = f;
        }
    }
    return SQLITE_OK;
}

/* The rest of the VFS is unix's. */
static int wb_delete(sqlite3_vfs *v, const char *name, int sync)
{
    (void)v;
    return unix_vfs->xDelete(unix_vfs, name, sync);
}

static int wb_access(sqlite3_vfs *v, const char *name, int flags, int *out)
{
    (void)v;
    return unix_vfs->xAccess(unix_vfs, name, flags, out);
}

static int wb_full_pathname(sqlite3_vfs *v, const char *name, int n, char *out)
{
    (void)v;
    return unix_vfs->xFullPathname(unix_vfs, name, n, out);
}

static void *wb_dlopen(sqlite3_vfs *v, const char *name)
{
    (void)v;
    return unix_vfs->xDlOpen(unix_vfs, name);
}

static void wb_dlerror(sqlite3_vfs *v, int n, char *out)
{
    (void)v;
    unix_vfs->xDlError(unix_vfs, n, out);
}

static void (*wb_dlsym(sqlite3_vfs *v, void *h, const char *sym))(void)
{
    (void)v;
    return unix_vfs->xDlSym(unix_vfs, h, sym);
}

static void wb_dlclose(sqlite3_vfs *v, void *h)
{
    (void)v;
    unix_vfs->xDlClose(unix_vfs, h);
}

static int wb_randomness(sqlite3_vfs *v, int n, char *out)
{
    (void)v;
    return unix_vfs->xRandomness(unix_vfs, n, out);
}

static int wb_sleep(sqlite3_vfs *v, int us)
{
    (void)v;
    return unix_vfs->xSleep(unix_vfs, us);
}

static int wb_current_time(sqlite3_vfs *v, double *out)
{
    (void)v;
    return unix_vfs->xCurrentTime(unix_vfs, out);
}

static int wb_last_error(sqlite3_vfs *v, int n, char *out)
{
    (void)v;
    return unix_vfs->xGetLastError(unix_vfs, n, out);
}

static int wb_current_time64(sqlite3_vfs *v, sqlite3_int64 *out)
{
    (void)v;
    return unix_vfs->xCurrentTimeInt64(unix_vfs, out);
}

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int registered = SQLITE_ERROR;

static void wb_register(void)
{
    unix_vfs = sqlite3_vfs_find("unix");
    if (!unix_vfs || unix_vfs->iVersion < 2) return;
    wb_vfs = (sqlite3_vfs){
        .iVersion = 2,
        .szOsFile = (int)sizeof(wb_file_t) + unix_vfs->szOsFile,
        .mxPathname = unix_vfs->mxPathname,
        .zName = WB_NAME,
        .xOpen = wb_open,
        .xDelete = wb_delete,
        .xAccess = wb_access,
        .xFullPathname = wb_full_pathname,
        .xDlOpen = wb_dlopen,
        .xDlError = wb_dlerror,
        .xDlSym = wb_dlsym,
        .xDlClose = wb_dlclose,
        .xRandomness = wb_randomness,
        .xSleep = wb_sleep,
        .xCurrentTime = wb_current_time,
        .xGetLastError = wb_last_error,
        .xCurrentTimeInt64 = wb_current_time64,
    };
    registered = sqlite3_vfs_register(&wb_vfs, 0);
}

const char *tr_sqlite_walbuf_vfs(void)
{
    pthread_once(&once, wb_register);
    return registered == SQLITE_OK ? WB_NAME : NULL;
}

void tr_sqlite_walbuf_stats(uint64_t *writes, uint64_t *flushes, uint64_t *late_flushes)
{
    *writes = atomic_load(&n_writes);
    *flushes = atomic_load(&n_flushes);
    *late_flushes = atomic_load(&n_late_flushes);
}
