/* Child processes: spawn in a new process group, read output line by line, report exit. */
#include "supervisor/process.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "core/mem.h"

#define DEFAULT_DRAIN_MS 200

extern char **environ;

typedef struct stream_s {
    uv_pipe_t pipe;
    tr_process_t *proc;
    int id; /* TR_PROCESS_STDOUT / TR_PROCESS_STDERR */
    bool open;
    size_t len; /* bytes of an unfinished line in buf */
    char buf[TR_PROCESS_LINE_MAX];
} stream_t;

struct tr_process_s {
    uv_process_t handle;
    uv_timer_t drain; /* the deadline for the pipes' EOF after exit */
    stream_t out, err;
    tr_process_options_t opts; /* callbacks only; the strings are not kept */
    int pid;
    unsigned handles; /* open handles; freed at zero once closing */
    bool exited, reported, closing;
    int64_t exit_status;
    int term_signal;
    void (*close_cb)(void *data);
    void *close_data;
};

/* ---- environment ---- */

static size_t key_len(const char *kv)
{
    const char *eq = strchr(kv, '=');
    return eq ? (size_t)(eq - kv) : strlen(kv);
}

/* Index of the entry in env[0..n) with the same key as kv, or n. */
static size_t find_key(char **env, size_t n, const char *kv)
{
    size_t kl = key_len(kv);
    for (size_t i = 0; i < n; i++)
        if (key_len(env[i]) == kl && strncmp(env[i], kv, kl) == 0) return i;
    return n;
}

char **tr__process_build_env(char *const *base, const char *const *extra)
{
    size_t nbase = 0, nextra = 0;
    while (base && base[nbase])
        nbase++;
    while (extra && extra[nextra])
        nextra++;
    char **env = tr_malloc((nbase + nextra + 1) * sizeof(*env));
    size_t n = 0;
    for (size_t i = 0; i < nbase; i++)
        env[n++] = base[i];
    for (size_t i = 0; i < nextra; i++) {
        if (!strchr(extra[i], '=')) continue; /* not K=V: ignored */
        size_t at = find_key(env, n, extra[i]);
        env[at] = (char *)extra[i];
        if (at == n) n++;
    }
    env[n] = NULL;
    return env;
}

/* ---- lifetime ---- */

static void maybe_free(tr_process_t *p)
{
    if (!p->closing || p->handles > 0) return;
    void (*cb)(void *) = p->close_cb;
    void *data = p->close_data;
    free(p);
    if (cb) cb(data);
}

static void on_handle_closed(uv_handle_t *h)
{
    tr_process_t *p = h->data;
    p->handles--;
    maybe_free(p);
}

static void close_handle(tr_process_t *p, uv_handle_t *h)
{
    if (!uv_is_closing(h)) uv_close(h, on_handle_closed);
}

/* ---- output ---- */

static void emit(stream_t *s, const char *line, size_t len)
{
    tr_process_t *p = s->proc;
    if (len > 0 && line[len - 1] == '\r') len--;
    if (p->opts.on_output && !p->closing) p->opts.on_output(p, s->id, line, len, p->opts.data);
}

/* Emits every complete line in buf and keeps the unfinished rest at its start. */
static void split_lines(stream_t *s)
{
    size_t start = 0;
    for (;;) {
        char *nl = memchr(s->buf + start, '\n', s->len - start);
        if (!nl) break;
        emit(s, s->buf + start, (size_t)(nl - (s->buf + start)));
        start = (size_t)(nl - s->buf) + 1;
    }
    if (start == 0 && s->len == sizeof(s->buf)) {
        /* A line longer than the buffer: deliver this piece and go on with the rest. */
        emit(s, s->buf, s->len);
        start = s->len;
    }
    memmove(s->buf, s->buf + start, s->len - start);
    s->len -= start;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    stream_t *s = (stream_t *)h; /* the pipe is the stream's first member */
    *buf = uv_buf_init(s->buf + s->len, (unsigned)(sizeof(s->buf) - s->len));
}

static void report_exit(tr_process_t *p);

static void stream_finish(stream_t *s)
{
    if (!s->open) return;
    s->open = false;
    if (s->len > 0) emit(s, s->buf, s->len);
    s->len = 0;
    uv_read_stop((uv_stream_t *)&s->pipe);
    close_handle(s->proc, (uv_handle_t *)&s->pipe);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    stream_t *s = (stream_t *)st;
    tr_process_t *p = s->proc;
    if (nread > 0) {
        s->len += (size_t)nread;
        split_lines(s);
    } else if (nread < 0) {
        stream_finish(s);
        if (p->exited && !p->out.open && !p->err.open) report_exit(p);
    }
}

/* ---- exit ---- */

static void report_exit(tr_process_t *p)
{
    if (p->reported || p->closing) return;
    p->reported = true;
    uv_timer_stop(&p->drain);
    p->opts.on_exit(p, p->exit_status, p->term_signal, p->opts.data);
}

static void on_drain_deadline(uv_timer_t *t)
{
    tr_process_t *p = t->data;
    stream_finish(&p->out);
    stream_finish(&p->err);
    report_exit(p);
}

static void on_child_exit(uv_process_t *h, int64_t exit_status, int term_signal)
{
    tr_process_t *p = h->data;
    p->exited = true;
    p->exit_status = exit_status;
    p->term_signal = term_signal;
    /*
     * Whatever the leader left behind in its group goes with it: a restarted service must
     * not find its old workers still holding the port, and the pipes reach EOF.
     */
    kill(-p->pid, SIGKILL);
    if (!p->out.open && !p->err.open) {
        report_exit(p);
        return;
    }
    uv_timer_start(&p->drain, on_drain_deadline, p->opts.drain_ms, 0);
}

/* ---- spawn ---- */

/* argv for the shim: SHIM __exec SIG PPID -- argv... (the strings live in `nums`). */
static char **shim_argv(const tr_process_options_t *o, char nums[2][24])
{
    size_t n = 0;
    while (o->argv[n])
        n++;
    char **a = tr_malloc((n + 6) * sizeof(*a));
    snprintf(nums[0], sizeof(nums[0]), "%d", o->pdeath_signal);
    snprintf(nums[1], sizeof(nums[1]), "%d", (int)getpid());
    a[0] = (char *)o->shim_exe;
    a[1] = "__exec";
    a[2] = nums[0];
    a[3] = nums[1];
    a[4] = "--";
    for (size_t i = 0; i < n; i++)
        a[5 + i] = (char *)o->argv[i];
    a[5 + n] = NULL;
    return a;
}

static void stream_init(uv_loop_t *loop, tr_process_t *p, stream_t *s, int id)
{
    uv_pipe_init(loop, &s->pipe, 0);
    s->pipe.data = p;
    s->proc = p;
    s->id = id;
    p->handles++;
}

static int do_spawn(uv_loop_t *loop, tr_process_t *p, const tr_process_options_t *o)
{
    char nums[2][24];
    char **args = o->shim_exe ? shim_argv(o, nums) : (char **)o->argv;
    char **env = tr__process_build_env(environ, o->env);
    uv_stdio_container_t stdio[3] = {
        {.flags = UV_IGNORE},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&p->out.pipe},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&p->err.pipe},
    };
    uv_process_options_t po = {
        .exit_cb = on_child_exit,
        .file = args[0],
        .args = args,
        .env = env,
        .cwd = o->cwd,
        /* setsid(): its own session and process group, so kill(-pid) reaches all of it. */
        .flags = UV_PROCESS_DETACHED,
        .stdio_count = 3,
        .stdio = stdio,
    };
    int rc = uv_spawn(loop, &p->handle, &po);
    free(env);
    if (args != (char **)o->argv) free(args);
    return rc;
}

int tr_process_spawn(uv_loop_t *loop, const tr_process_options_t *opts, tr_process_t **out)
{
    if (!opts->argv || !opts->argv[0] || !opts->on_exit) return UV_EINVAL;
    tr_process_t *p = tr_calloc(1, sizeof(*p));
    p->opts = *opts;
    p->opts.argv = NULL;
    p->opts.env = NULL;
    p->opts.cwd = NULL;
    p->opts.shim_exe = NULL;
    if (p->opts.drain_ms == 0) p->opts.drain_ms = DEFAULT_DRAIN_MS;
    stream_init(loop, p, &p->out, TR_PROCESS_STDOUT);
    stream_init(loop, p, &p->err, TR_PROCESS_STDERR);
    uv_timer_init(loop, &p->drain);
    p->drain.data = p;
    p->handles++;
    p->handle.data = p;
    int rc = do_spawn(loop, p, opts);
    /* uv_spawn initialises the handle even when it fails, so it always needs closing. */
    p->handles++;
    if (rc != 0) {
        p->closing = true;
        close_handle(p, (uv_handle_t *)&p->handle);
        close_handle(p, (uv_handle_t *)&p->out.pipe);
        close_handle(p, (uv_handle_t *)&p->err.pipe);
        close_handle(p, (uv_handle_t *)&p->drain);
        return rc;
    }
    p->pid = p->handle.pid;
    p->out.open = p->err.open = true;
    p->out.pipe.data = p->err.pipe.data = p;
    uv_read_start((uv_stream_t *)&p->out.pipe, on_alloc, on_read);
    uv_read_start((uv_stream_t *)&p->err.pipe, on_alloc, on_read);
    *out = p;
    return 0;
}

int tr_process_pid(const tr_process_t *p)
{
    return p->pid;
}

int tr_process_kill(tr_process_t *p, int sig)
{
    if (p->pid <= 0) return UV_ESRCH;
    if (kill(-p->pid, sig) == 0) return 0;
    /* Not (yet) a group leader: the child may not have reached setsid(). */
    if (!p->exited && kill(p->pid, sig) == 0) return 0;
    return UV_ESRCH;
}

void tr_process_close(tr_process_t *p, void (*cb)(void *data), void *data)
{
    if (p->closing) return;
    p->closing = true;
    p->close_cb = cb;
    p->close_data = data;
    if (!p->exited) tr_process_kill(p, SIGKILL);
    p->out.open = p->err.open = false;
    close_handle(p, (uv_handle_t *)&p->out.pipe);
    close_handle(p, (uv_handle_t *)&p->err.pipe);
    close_handle(p, (uv_handle_t *)&p->drain);
    close_handle(p, (uv_handle_t *)&p->handle);
}

/* ---- the exec shim ---- */

static int parse_signal(const char *s)
{
    static const struct {
        const char *name;
        int sig;
    } names[] = {{"KILL", SIGKILL}, {"TERM", SIGTERM}, {"INT", SIGINT},  {"HUP", SIGHUP},
                 {"QUIT", SIGQUIT}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2}};
    char *end;
    long v = strtol(s, &end, 10);
    if (*s && *end == '\0') return v >= 0 && v < NSIG ? (int)v : -1;
    if (strncasecmp(s, "SIG", 3) == 0) s += 3;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcasecmp(s, names[i].name) == 0) return names[i].sig;
    return -1;
}

int tr_supervisor_exec_shim(int argc, char **argv)
{
    if (argc < 6 || strcmp(argv[4], "--") != 0) {
        fprintf(stderr, "usage: %s __exec SIGNAL PPID -- COMMAND [ARG...]\n",
                argc > 0 ? argv[0] : "trellis");
        return 2;
    }
    int sig = parse_signal(argv[2]);
    char *end;
    long ppid = strtol(argv[3], &end, 10);
    if (sig < 0 || *argv[3] == '\0' || *end != '\0' || ppid < 0) {
        fprintf(stderr, "trellis __exec: bad signal '%s' or parent pid '%s'\n", argv[2], argv[3]);
        return 2;
    }
#ifdef __linux__
    if (sig > 0 && prctl(PR_SET_PDEATHSIG, sig) != 0) {
        fprintf(stderr, "trellis __exec: prctl(PR_SET_PDEATHSIG): %s\n", strerror(errno));
        return 126;
    }
#endif
    /* The parent may have died before the prctl took effect: then nobody would tell us. */
    if (ppid > 0 && getppid() != (pid_t)ppid) {
        if (sig > 0) raise(sig);
        return 1;
    }
    execvp(argv[5], argv + 5);
    int err = errno;
    fprintf(stderr, "trellis __exec: %s: %s\n", argv[5], strerror(err));
    return err == ENOENT ? 127 : 126;
}
