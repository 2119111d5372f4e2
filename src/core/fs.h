/* File system helpers shared by the stores and commands. */
#ifndef TR_CORE_FS_H
#define TR_CORE_FS_H

/* mkdir -p `dir` (mode 0755 for what it creates). Returns 0 or a negative errno
 * (UV_ENAMETOOLONG for a path over 4 KiB). */
int tr_mkdirs(const char *dir);
/* mkdir -p of the directory that holds `path` (nothing for a bare file name). */
int tr_mkdirs_parent(const char *path);

#endif
