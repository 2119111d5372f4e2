/* Unit tests for child processes: exit, environment, output lines, process groups, exec shim. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "supervisor/process.h"

#define MAX_LINES 64

typedef struct fx_s {
    uv_loop_t loop;
    uv_timer_t wake; /* lets UV_RUN_ONCE return so waits can end on time */
    tr_process_t *p;
    int exits;
    int64_t status;
    int sig;
    int nlines;
    int stream[MAX_LINES];
    char *line[MAX_LINES];
    size_t len[MAX_LINES];
} fx_t;

static void on_wake(uv_timer_t *t) {}

static void on_output(tr_process_t *p, int stream, const char *line, size_t len, void *data)
{
    fx_t *f = data;
    assert_true(f->nlines < MAX_LINES);
    f->stream[f->nlines] = stream;
    f->line[f->nlines] = strndup(line, len);
    f->len[f->nlines] = len;
    f->nlines++;
}

static void on_exit_cb(tr_process_t *p, int64_t status, int sig, void *data)
{
    fx_t *f = data;
    f->exits++;
    f->status = status;
    f->sig = sig;
}

static fx_t *fx_new(void)
{
    fx_t *f = calloc(1, sizeof(*f));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    uv_timer_init(&f->loop, &f->wake);
    uv_timer_start(&f->wake, on_wake, 10, 10);
    return f;
}

static int fx_spawn(fx_t *f, const char *const *argv, const char *const *env)
{
    tr_process_options_t o = {0};
    o.argv = argv;
    o.env = env;
    o.on_output = on_output;
    o.on_exit = on_exit_cb;
    o.data = f;
    return tr_process_spawn(&f->loop, &o, &f->p);
}

static int fx_sh(fx_t *f, const char *script)
{
    const char *argv[] = {"/bin/sh", "-c", script, NULL};
    return fx_spawn(f, argv, NULL);
}

static void run_until(fx_t *f, const int *flag, uint64_t timeout_ms)
{
    uint64_t end = uv_now(&f->loop) + timeout_ms;
    while (!*flag && uv_now(&f->loop) < end)
        uv_run(&f->loop, UV_RUN_ONCE);
}

static void fx_free(fx_t *f)
{
    if (f->p) tr_process_close(f->p, NULL, NULL);
    uv_close((uv_handle_t *)&f->wake, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    for (int k = 0; k < f->nlines; k++)
        free(f->line[k]);
    free(f);
}

/* True once pid no longer exists or is a zombie nobody reaped yet. */
static bool pid_gone(int pid)
{
    if (kill(pid, 0) != 0 && errno == ESRCH) return true;
    char path[64], buf[256];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *fp = fopen(path, "r");
    if (!fp) return true;
    size_t n = fread(buf, 1, sizeof(buf) - 1, fp);
    fclose(fp);
    buf[n] = '\0';
    const char *rp = strrchr(buf, ')');
    return rp && (rp[2] == 'Z' || rp[2] == 'X');
}

static bool wait_gone(int pid, int ms)
{
    for (int k = 0; k < ms / 10; k++) {
        if (pid_gone(pid)) return true;
        usleep(10000);
    }
    return pid_gone(pid);
}

static void test_exit_code(void **state)
{
    fx_t *f = fx_new();
    assert_int_equal(fx_sh(f, "exit 3"), 0);
    assert_true(tr_process_pid(f->p) > 0);
    run_until(f, &f->exits, 5000);
    assert_int_equal(f->exits, 1);
    assert_int_equal(f->status, 3);
    assert_int_equal(f->sig, 0);
    fx_free(f);
}

static void test_killed_by_signal(void **state)
{
    fx_t *f = fx_new();
    assert_int_equal(fx_sh(f, "kill -9 $$"), 0);
    run_until(f, &f->exits, 5000);
    assert_int_equal(f->exits, 1);
    assert_int_equal(f->sig, SIGKILL);
    fx_free(f);
}

static void test_spawn_failure(void **state)
{
    fx_t *f = fx_new();
    const char *argv[] = {"/nonexistent/trellis-test-program", NULL};
    assert_int_equal(fx_spawn(f, argv, NULL), UV_ENOENT);
    f->p = NULL;
    const char *empty[] = {NULL};
    assert_int_equal(fx_spawn(f, empty, NULL), UV_EINVAL);
    f->p = NULL;
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(f->exits, 0);
    fx_free(f);
}

static void test_env(void **state)
{
    fx_t *f = fx_new();
    setenv("TR_TEST_INHERITED", "inh", 1);
    setenv("TR_TEST_REPLACED", "old", 1);
    const char *argv[] = {"/bin/sh", "-c", "echo \"$PORT $TR_TEST_INHERITED $TR_TEST_REPLACED $X\"",
                          NULL};
    const char *env[] = {"PORT=4321", "TR_TEST_REPLACED=new", "X=1", "X=2", "not-a-pair", NULL};
    assert_int_equal(fx_spawn(f, argv, env), 0);
    run_until(f, &f->exits, 5000);
    assert_int_equal(f->nlines, 1);
    assert_string_equal(f->line[0], "4321 inh new 2");
    unsetenv("TR_TEST_INHERITED");
    unsetenv("TR_TEST_REPLACED");
    fx_free(f);
}

static void test_build_env(void **state)
{
    char *base[] = {"A=1", "B=2", NULL};
    const char *extra[] = {"B=3", "C=4", "junk", "A=0", NULL};
    char **env = tr__process_build_env(base, extra);
    assert_string_equal(env[0], "A=0");
    assert_string_equal(env[1], "B=3");
    assert_string_equal(env[2], "C=4");
    assert_null(env[3]);
    free(env);
    env = tr__process_build_env(NULL, NULL);
    assert_null(env[0]);
    free(env);
}

static void test_output_lines(void **state)
{
    fx_t *f = fx_new();
    assert_int_equal(fx_sh(f, "printf 'a\\nb\\r\\n\\nlast'; printf 'err\\n' >&2"), 0);
    run_until(f, &f->exits, 5000);
    assert_int_equal(f->exits, 1);
    int out = 0, err = 0;
    const char *want_out[] = {"a", "b", "", "last"};
    for (int k = 0; k < f->nlines; k++) {
        if (f->stream[k] == TR_PROCESS_STDOUT) {
            assert_true(out < 4);
            assert_string_equal(f->line[k], want_out[out++]);
        } else {
            assert_int_equal(f->stream[k], TR_PROCESS_STDERR);
            assert_string_equal(f->line[k], "err");
            err++;
        }
    }
    assert_int_equal(out, 4); /* the partial last line arrives at EOF */
    assert_int_equal(err, 1);
    fx_free(f);
}

static void test_long_line_split(void **state)
{
    fx_t *f = fx_new();
    assert_int_equal(fx_sh(f, "head -c 40000 /dev/zero | tr '\\000' x; echo; echo short"), 0);
    run_until(f, &f->exits, 5000);
    assert_int_equal(f->nlines, 4);
    assert_int_equal(f->len[0], TR_PROCESS_LINE_MAX);
    assert_int_equal(f->len[1], TR_PROCESS_LINE_MAX);
    assert_int_equal(f->len[2], 40000 - 2 * TR_PROCESS_LINE_MAX);
    for (int k = 0; k < 3; k++)
        assert_int_equal(strspn(f->line[k], "x"), f->len[k]);
    assert_string_equal(f->line[3], "short");
    fx_free(f);
}

static int first_line_int(fx_t *f)
{
    uint64_t end = uv_now(&f->loop) + 5000;
    while (f->nlines == 0 && uv_now(&f->loop) < end)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_true(f->nlines > 0);
    return atoi(f->line[0]);
}

static void test_own_process_group(void **state)
{
    fx_t *f = fx_new();
    assert_int_equal(fx_sh(f, "sleep 100"), 0);
    int pid = tr_process_pid(f->p);
    assert_int_equal(getpgid(pid), pid);
    assert_int_equal(getsid(pid), pid);
    assert_int_not_equal(getpgid(pid), getpgid(0));
    fx_free(f); /* close kills it */
    assert_true(wait_gone(pid, 3000));
}

static void test_group_kill_reaches_grandchild(void **state)
{
    fx_t *f = fx_new();
    assert_int_equal(fx_sh(f, "sleep 100 & echo $!; wait"), 0);
    int grandchild = first_line_int(f);
    assert_true(grandchild > 0);
    assert_false(pid_gone(grandchild));
    assert_int_equal(tr_process_kill(f->p, SIGTERM), 0);
    run_until(f, &f->exits, 5000);
    assert_int_equal(f->exits, 1);
    assert_int_equal(f->sig, SIGTERM);
    assert_true(wait_gone(grandchild, 3000));
    fx_free(f);
}

static void test_exit_kills_leftovers(void **state)
{
    fx_t *f = fx_new();
    /* The shell exits at once; its background child still holds the output pipe. */
    assert_int_equal(fx_sh(f, "sleep 100 & echo $!"), 0);
    run_until(f, &f->exits, 3000);
    assert_int_equal(f->exits, 1);
    assert_int_equal(f->status, 0);
    int grandchild = atoi(f->line[0]);
    assert_true(grandchild > 0);
    assert_true(wait_gone(grandchild, 3000));
    fx_free(f);
}

static void test_close_running(void **state)
{
    fx_t *f = fx_new();
    assert_int_equal(fx_sh(f, "sleep 100"), 0);
    int pid = tr_process_pid(f->p);
    tr_process_close(f->p, NULL, NULL);
    tr_process_close(f->p, NULL, NULL); /* twice is safe */
    f->p = NULL;
    for (int k = 0; k < 20; k++)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(f->exits, 0); /* no callback after close */
    fx_free(f);
    assert_true(wait_gone(pid, 3000));
}

/* ---- the exec shim ---- */

static int shim(const char *sig, const char *ppid, const char *cmd, const char *arg)
{
    char *argv[] = {"trellis", "__exec",    (char *)sig, (char *)ppid,
                    "--",      (char *)cmd, (char *)arg, NULL};
    return tr_supervisor_exec_shim(arg ? 7 : 6, argv);
}

static void test_shim_usage(void **state)
{
    char *a[] = {"trellis", "__exec", "KILL", "1", "sleep", NULL};
    assert_int_equal(tr_supervisor_exec_shim(5, a), 2);
    char *b[] = {"trellis", "__exec", "KILL", "1", "-x", "sleep", NULL};
    assert_int_equal(tr_supervisor_exec_shim(6, b), 2);
    assert_int_equal(shim("NOPE", "1", "sleep", NULL), 2);
    assert_int_equal(shim("KILL", "x1", "sleep", NULL), 2);
}

static int fork_shim(const char *sig, const char *ppid, const char *cmd)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) _exit(shim(sig, ppid, cmd, NULL));
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return st;
}

static void test_shim_exec_errors(void **state)
{
    char me[24];
    snprintf(me, sizeof(me), "%d", (int)getpid());
    int st = fork_shim("SIGTERM", me, "/nonexistent/trellis-test");
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 127);
    st = fork_shim("0", "0", "true");
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    /* The expected parent is not ours: it "died" before the prctl, so we take the signal. */
    st = fork_shim("KILL", "1", "true");
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGKILL);
}

/* A helper process runs a child through the shim; SIGKILL the helper, the child must die. */
static void test_shim_pdeathsig(void **state)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t helper = fork();
    assert_true(helper >= 0);
    if (helper == 0) {
        char ppid[24];
        snprintf(ppid, sizeof(ppid), "%d", (int)getpid());
        pid_t child = fork();
        if (child == 0) _exit(shim("KILL", ppid, "sleep", "100"));
        (void)!write(fds[1], &child, sizeof(child));
        for (;;)
            pause();
    }
    close(fds[1]);
    pid_t child = 0;
    assert_int_equal(read(fds[0], &child, sizeof(child)), (ssize_t)sizeof(child));
    close(fds[0]);
    /* Wait for the exec, so the death signal is tested on the real program. */
    char path[64], comm[32] = "";
    snprintf(path, sizeof(path), "/proc/%d/comm", (int)child);
    for (int k = 0; k < 300 && strncmp(comm, "sleep", 5) != 0; k++) {
        FILE *fp = fopen(path, "r");
        if (fp) {
            if (!fgets(comm, sizeof(comm), fp)) comm[0] = '\0';
            fclose(fp);
        }
        if (strncmp(comm, "sleep", 5) != 0) usleep(10000);
    }
    assert_string_equal(comm, "sleep\n");
    assert_false(pid_gone(child));
    assert_int_equal(kill(helper, SIGKILL), 0);
    int st;
    assert_int_equal(waitpid(helper, &st, 0), helper);
    assert_true(wait_gone(child, 3000));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exit_code),
        cmocka_unit_test(test_killed_by_signal),
        cmocka_unit_test(test_spawn_failure),
        cmocka_unit_test(test_env),
        cmocka_unit_test(test_build_env),
        cmocka_unit_test(test_output_lines),
        cmocka_unit_test(test_long_line_split),
        cmocka_unit_test(test_own_process_group),
        cmocka_unit_test(test_group_kill_reaches_grandchild),
        cmocka_unit_test(test_exit_kills_leftovers),
        cmocka_unit_test(test_close_running),
        cmocka_unit_test(test_shim_usage),
        cmocka_unit_test(test_shim_exec_errors),
        cmocka_unit_test(test_shim_pdeathsig),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
