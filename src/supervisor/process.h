/* Child processes for the supervisor: spawn in a new process group, capture output, exit. */
#ifndef TR_SUPERVISOR_PROCESS_H
#define TR_SUPERVISOR_PROCESS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Output lines longer than this are split into pieces of at most this many bytes. */
#define TR_PROCESS_LINE_MAX (16 * 1024)

/* Which stream a line came from. */
enum tr_process_stream { TR_PROCESS_STDOUT = 1, TR_PROCESS_STDERR = 2 };

typedef struct tr_process_s tr_process_t;

/* One line without its "\n" (and without a "\r" before it); valid only during the call. */
typedef void (*tr_process_output_cb)(tr_process_t *p, int stream, const char *line, size_t len,
                                     void *data);
/*
 * The process exited and its output has been delivered (both pipes reached EOF, or the
 * drain deadline passed). `exit_status` is the exit code, `term_signal` the signal that
 * killed it (0 if none). Fires exactly once per successful spawn unless closed before.
 */
typedef void (*tr_process_exit_cb)(tr_process_t *p, int64_t exit_status, int term_signal,
                                   void *data);

typedef struct tr_process_options_s {
    const char *const *argv; /* argv[0] is looked up in PATH; NULL-terminated; copied */
    const char *cwd;         /* NULL = the supervisor's */
    /*
     * "K=V" entries laid over the inherited environment in order (a later one replaces an
     * earlier one with the same K); NULL-terminated or NULL. Copied.
     */
    const char *const *env;
    /*
     * The trellis binary used as exec shim (`trellis __exec SIG PPID -- argv...`), which
     * sets the parent-death signal before exec. NULL spawns argv directly (no orphan
     * protection).
     */
    const char *shim_exe;
    int pdeath_signal; /* with shim_exe: the signal the child gets when we die (SIGKILL) */
    uint64_t drain_ms; /* after exit, how long to wait for the pipes' EOF (default 200) */
    tr_process_output_cb on_output; /* optional */
    tr_process_exit_cb on_exit;     /* required */
    void *data;
} tr_process_options_t;

/*
 * Spawns the process in its own session and process group (setsid; pgid == pid) with
 * stdin on /dev/null and stdout/stderr captured. On success *out owns it until
 * tr_process_close. On failure (UV_ENOENT for a missing program without a shim, UV_EINVAL
 * for an empty argv, ...) nothing was started and no callback fires.
 */
int tr_process_spawn(uv_loop_t *loop, const tr_process_options_t *opts, tr_process_t **out);

/* The child's pid, which is also its process group id. */
int tr_process_pid(const tr_process_t *p);

/*
 * Sends `sig` to the whole process group (grandchildren included). Returns 0, or
 * UV_ESRCH when nothing was left to signal.
 */
int tr_process_kill(tr_process_t *p, int sig);

/*
 * Stops reading, stops every callback and frees the process once its handles are closed;
 * `cb` (may be NULL) fires then. A process still running is killed with SIGKILL (group)
 * first. Closing twice is safe (the second call does nothing).
 */
void tr_process_close(tr_process_t *p, void (*cb)(void *data), void *data);

/*
 * Builds the child's environment: `base` (e.g. environ) with `extra` laid over it (see
 * tr_process_options_t.env). Returns a NULL-terminated array in one allocation; free() it.
 */
char **tr__process_build_env(char *const *base, const char *const *extra);

/*
 * The exec shim behind the hidden command `trellis __exec SIG PPID -- cmd args...`:
 * sets PR_SET_PDEATHSIG to SIG (a number, or a name such as KILL, SIGTERM), checks that
 * getppid() is still PPID (0 skips the check) so a parent that died before the prctl is
 * noticed, then execvp(cmd, args). Returns only on failure: 2 for bad usage, 126/127
 * when cmd can't be executed or isn't found (like a shell). When the parent is already
 * gone it raises SIG on itself. argv[0] is the program, argv[1] "__exec".
 */
int tr_supervisor_exec_shim(int argc, char **argv);

#endif
