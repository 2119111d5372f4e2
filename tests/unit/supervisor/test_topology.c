/* Unit tests for src/supervisor/topology.c: the topology file, its defaults and its errors. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "supervisor/topology.h"
#include "trellis/error.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char err[1024];

/* Loads text as /srv/app/t.yaml, failing the test if it does not load. */
static tr_topology_t *load_ok(const char *text)
{
    tr_topology_t *t = NULL;
    int rc = tr_topology_load("/srv/app/t.yaml", text, &t, err, sizeof(err));
    if (rc != 0) fail_msg("load failed (%d): %s", rc, err);
    return t;
}

/* Loads text expected to be refused; returns the message. */
static const char *load_fails(const char *text)
{
    tr_topology_t *t = (tr_topology_t *)1;
    int rc = tr_topology_load("/srv/app/t.yaml", text, &t, err, sizeof(err));
    if (rc != TR_ECONFIG) fail_msg("expected TR_ECONFIG, got %d for:\n%s", rc, text);
    assert_null(t);
    return err;
}

static void assert_contains(const char *hay, const char *needle)
{
    if (!strstr(hay, needle)) fail_msg("\"%s\" does not contain \"%s\"", hay, needle);
}

static void assert_starts(const char *s, const char *prefix)
{
    if (strncmp(s, prefix, strlen(prefix)) != 0)
        fail_msg("\"%s\" does not start with \"%s\"", s, prefix);
}

/* ---- the example */

static void test_example_file(void **state)
{
    tr_topology_t *t = NULL;
    const char *path = TR_SOURCE_DIR "/examples/echo/topology.yaml";
    int rc = tr_topology_load(path, NULL, &t, err, sizeof(err));
    if (rc) fail_msg("%s", err);
    const tr_topo_service_t *s;
    assert_int_equal(tr_topology_services(t, &s), 3);
    assert_string_equal(s[0].name, "catalog");
    assert_true(s[0].command_self);
    assert_int_equal(s[0].nargs, 3);
    assert_string_equal(s[0].args[2], "127.0.0.1:${PORT}");
    assert_null(s[0].args[3]);
    assert_int_equal(s[0].replicas, 2);
    assert_true(s[0].port_auto);
    assert_string_equal(s[0].version, "1.0.0");
    assert_string_equal(s[0].context, "catalog");
    assert_string_equal(s[0].owns[0], "catalog-db");
    assert_string_equal(s[0].env[0], "ECHO_NAME=${TRELLIS_SERVICE}-${TRELLIS_INSTANCE}");
    assert_string_equal(s[0].env[1], "LOG_LEVEL=info");
    assert_int_equal(s[0].readiness.initial_delay_ms, 100);
    assert_int_equal(s[0].stop_grace_ms, 5000);
    assert_string_equal(s[0].cwd, TR_SOURCE_DIR "/examples/echo");

    assert_false(s[1].port_auto);
    assert_int_equal(s[1].port, 9101);
    assert_false(s[1].liveness.http);
    assert_null(s[1].liveness.path);
    assert_int_equal(s[1].restart, TR_TOPO_RESTART_ON_FAILURE);
    assert_int_equal(s[1].stop_signal, SIGINT);

    assert_int_equal(s[2].ndeps, 2);
    assert_string_equal(s[2].deps[0].service, "catalog");
    assert_false(s[2].deps[0].async);
    assert_true(s[2].deps[1].async);
    assert_true(s[2].deps[0].line > 0);

    size_t n;
    const tr_topo_service_t *const *order = tr_topology_start_order(t, &n);
    assert_int_equal(n, 3);
    assert_string_equal(order[2]->name, "orders");

    const json_t *gw = tr_topology_gateway(t);
    assert_non_null(gw);
    assert_int_equal(json_array_size(json_object_get(gw, "routes")), 3);
    assert_null(tr_topology_gateway_file(t));
    const tr_topo_control_plane_t *cp = tr_topology_control_plane(t);
    assert_string_equal(cp->data_dir, TR_SOURCE_DIR "/examples/echo/.trellis");

    /* The inline gateway's nodes carry positions in the topology file. */
    int line, col;
    assert_int_equal(
        tr_config_pos(tr_topology_config(t), json_object_get(gw, "routes"), &line, &col), 0);
    assert_true(line > 50);
    tr_topology_free(t);
}

/* docs/topology.md's "Complete example" is the example file, byte for byte. */
static void test_docs_example_matches(void **state)
{
    char *doc = NULL, *ex = NULL;
    size_t dl = 0, el = 0;
    FILE *f = fopen(TR_SOURCE_DIR "/docs/topology.md", "r");
    assert_non_null(f);
    assert_true(getdelim(&doc, &dl, '\0', f) > 0);
    fclose(f);
    f = fopen(TR_SOURCE_DIR "/examples/echo/topology.yaml", "r");
    assert_non_null(f);
    assert_true(getdelim(&ex, &el, '\0', f) > 0);
    fclose(f);
    assert_contains(doc, ex);
    free(doc);
    free(ex);
}

/* ---- defaults */

static void test_defaults(void **state)
{
    tr_topology_t *t = load_ok("services:\n  a:\n    command: ./bin/a\n");
    const tr_topo_service_t *s;
    assert_int_equal(tr_topology_services(t, &s), 1);
    assert_string_equal(s->command, "/srv/app/bin/a");
    assert_false(s->command_self);
    assert_string_equal(s->cwd, "/srv/app");
    assert_null(s->version);
    assert_null(s->context);
    assert_int_equal(s->nargs, 0);
    assert_int_equal(s->nenv, 0);
    assert_int_equal(s->nowns, 0);
    assert_int_equal(s->ndeps, 0);
    assert_int_equal(s->replicas, 1);
    assert_true(s->port_auto);
    assert_int_equal(s->port, 0);
    assert_true(s->liveness.enabled && s->liveness.http);
    assert_string_equal(s->liveness.path, "/health/live");
    assert_int_equal(s->liveness.period_ms, 10000);
    assert_int_equal(s->liveness.timeout_ms, 1000);
    assert_int_equal(s->liveness.failure_threshold, 3);
    assert_int_equal(s->liveness.success_threshold, 1);
    assert_int_equal(s->liveness.initial_delay_ms, 0);
    assert_true(s->readiness.enabled && s->readiness.http);
    assert_string_equal(s->readiness.path, "/health/ready");
    assert_int_equal(s->readiness.period_ms, 5000);
    assert_int_equal(s->readiness.timeout_ms, 1000);
    assert_int_equal(s->readiness.failure_threshold, 1);
    assert_int_equal(s->readiness.success_threshold, 1);
    assert_int_equal(s->restart, TR_TOPO_RESTART_ALWAYS);
    assert_int_equal(s->backoff_base_ms, 100);
    assert_int_equal(s->backoff_max_ms, 10000);
    assert_int_equal(s->stop_signal, SIGTERM);
    assert_int_equal(s->stop_grace_ms, 10000);
    assert_int_equal(s->index, 0);

    const tr_topo_control_plane_t *cp = tr_topology_control_plane(t);
    assert_string_equal(cp->listen, "127.0.0.1:8500");
    assert_string_equal(cp->data_dir, "/srv/app/.trellis");
    assert_string_equal(cp->otlp, "127.0.0.1:4318");
    assert_string_equal(cp->zipkin, "127.0.0.1:9411");
    assert_null(tr_topology_gateway(t));
    assert_null(tr_topology_gateway_file(t));
    assert_null(tr_topology_sagas(t));

    json_t *eff = tr_topology_effective(t);
    char *text = json_dumps(eff, JSON_COMPACT);
    assert_string_equal(
        text,
        "{\"control_plane\":{\"listen\":\"127.0.0.1:8500\",\"data_dir\":\"/srv/app/.trellis\","
        "\"otlp\":\"127.0.0.1:4318\",\"zipkin\":\"127.0.0.1:9411\"},\"services\":{\"a\":{"
        "\"command\":\"/srv/app/bin/a\",\"args\":[],\"cwd\":\"/srv/app\",\"env\":{},\"replicas\":1,"
        "\"port\":\"auto\",\"version\":null,\"context\":null,\"owns\":[],\"depends_on\":[],"
        "\"probes\":{\"liveness\":{\"http\":\"/health/live\",\"period\":\"10s\",\"timeout\":"
        "\"1s\",\"initial_delay\":\"0s\",\"failure_threshold\":3},\"readiness\":{\"http\":"
        "\"/health/ready\",\"period\":\"5s\",\"timeout\":\"1s\",\"initial_delay\":\"0s\","
        "\"failure_threshold\":1,\"success_threshold\":1}},\"restart\":{\"policy\":\"always\","
        "\"backoff_base\":\"100ms\",\"backoff_max\":\"10s\"},\"stop\":{\"signal\":\"SIGTERM\","
        "\"grace\":\"10s\"}}},\"start_order\":[\"a\"],\"gateway\":null,\"sagas\":null}");
    free(text);
    json_decref(eff);
    tr_topology_free(t);
}

static void test_empty_file(void **state)
{
    tr_topology_t *t = load_ok("");
    const tr_topo_service_t *s;
    size_t n;
    assert_int_equal(tr_topology_services(t, &s), 0);
    assert_non_null(tr_topology_start_order(t, &n));
    assert_int_equal(n, 0);
    json_t *eff = tr_topology_effective(t);
    assert_int_equal(json_object_size(json_object_get(eff, "services")), 0);
    json_decref(eff);
    tr_topology_free(t);
}

/* ---- forms of values */

static void test_values(void **state)
{
    tr_topology_t *t = load_ok("control_plane: {listen: '[::1]:8600', data_dir: /var/lib/tr,\n"
                               "                otlp: off, zipkin: 127.0.0.1:9999}\n"
                               "gateway: {file: gw/gateway.yaml}\n"
                               "sagas: [{name: order}]\n"
                               "services:\n"
                               "  a:\n"
                               "    command: trellis\n"
                               "    args: [echo, 2, 1.5, true, 'x$$y']\n"
                               "    cwd: ./work\n"
                               "    env: {N: 3, F: false, S: 'a b', T: '${PORT}'}\n"
                               "    port: 65000\n"
                               "    replicas: 0\n"
                               "    owns: one-db\n"
                               "    probes: {liveness: false, readiness: none}\n"
                               "    restart: never\n"
                               "    stop: {signal: kill, grace: 0}\n"
                               "  b:\n"
                               "    command: /usr/bin/b\n"
                               "    cwd: /tmp\n"
                               "    port: 65000\n"
                               "    probes: {liveness: true, readiness: {tcp: true}}\n"
                               "    stop: {signal: SIGUSR2}\n");
    const tr_topo_service_t *s;
    assert_int_equal(tr_topology_services(t, &s), 2);
    const char *args[] = {"echo", "2", "1.5", "true", "x$$y"};
    assert_int_equal(s[0].nargs, 5);
    for (int i = 0; i < 5; i++)
        assert_string_equal(s[0].args[i], args[i]);
    assert_string_equal(s[0].cwd, "/srv/app/work");
    assert_int_equal(s[0].nenv, 4);
    assert_string_equal(s[0].env[0], "N=3");
    assert_string_equal(s[0].env[1], "F=false");
    assert_string_equal(s[0].env[2], "S=a b");
    assert_string_equal(s[0].env[3], "T=${PORT}");
    assert_int_equal(s[0].replicas, 0);
    assert_int_equal(s[0].nowns, 1);
    assert_false(s[0].liveness.enabled);
    assert_false(s[0].readiness.enabled);
    assert_int_equal(s[0].restart, TR_TOPO_RESTART_NEVER);
    assert_int_equal(s[0].stop_signal, SIGKILL);
    assert_int_equal(s[0].stop_grace_ms, 0);
    assert_string_equal(s[1].cwd, "/tmp");
    assert_string_equal(s[1].command, "/usr/bin/b");
    assert_true(s[1].liveness.enabled);
    assert_false(s[1].readiness.http);
    assert_int_equal(s[1].stop_signal, SIGUSR2);
    assert_string_equal(tr_topology_gateway_file(t), "/srv/app/gw/gateway.yaml");
    assert_null(tr_topology_gateway(t));
    assert_true(json_is_array(tr_topology_sagas(t)));
    const tr_topo_control_plane_t *cp = tr_topology_control_plane(t);
    assert_string_equal(cp->listen, "[::1]:8600");
    assert_string_equal(cp->data_dir, "/var/lib/tr");
    assert_null(cp->otlp);
    assert_string_equal(cp->zipkin, "127.0.0.1:9999");
    assert_ptr_equal(tr_topology_service(t, "b"), &s[1]);
    assert_null(tr_topology_service(t, "c"));

    json_t *eff = tr_topology_effective(t);
    json_t *a = json_object_get(json_object_get(eff, "services"), "a");
    assert_true(json_is_false(json_object_get(json_object_get(a, "probes"), "liveness")));
    assert_int_equal(json_integer_value(json_object_get(a, "port")), 65000);
    assert_string_equal(json_string_value(json_object_get(json_object_get(a, "stop"), "signal")),
                        "SIGKILL");
    assert_string_equal(json_string_value(json_object_get(json_object_get(eff, "gateway"), "file")),
                        "/srv/app/gw/gateway.yaml");
    assert_true(json_is_null(json_object_get(json_object_get(eff, "control_plane"), "otlp")));
    json_decref(eff);
    tr_topology_free(t);
}

static void test_env_list_and_gateway_string(void **state)
{
    tr_topology_t *t = load_ok("gateway: /etc/gw.yaml\n"
                               "services:\n"
                               "  a: {command: a, env: ['A=1', 'B=x=y', 'C=']}\n");
    const tr_topo_service_t *s;
    tr_topology_services(t, &s);
    assert_int_equal(s->nenv, 3);
    assert_string_equal(s->env[1], "B=x=y");
    assert_string_equal(s->env[2], "C=");
    assert_null(s->env[3]);
    assert_string_equal(tr_topology_gateway_file(t), "/etc/gw.yaml");
    tr_topology_free(t);
}

static void test_relative_path_name(void **state)
{
    tr_topology_t *t = NULL;
    char cwd[4096];
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(
        tr_topology_load("conf/t.yaml", "services: {a: {command: a}}", &t, err, sizeof(err)), 0);
    const tr_topo_service_t *s;
    tr_topology_services(t, &s);
    char want[4200];
    snprintf(want, sizeof(want), "%s/conf", cwd);
    assert_string_equal(s->cwd, want);
    tr_topology_free(t);
    assert_int_equal(tr_topology_load(NULL, "services: {a: {command: a}}", &t, err, sizeof(err)),
                     0);
    tr_topology_services(t, &s);
    assert_string_equal(s->cwd, cwd);
    tr_topology_free(t);
}

static void test_missing_file(void **state)
{
    tr_topology_t *t = (tr_topology_t *)1;
    assert_int_equal(tr_topology_load("/nonexistent/t.yaml", NULL, &t, err, sizeof(err)), -ENOENT);
    assert_null(t);
    assert_contains(err, "/nonexistent/t.yaml");
    assert_int_equal(tr_topology_load("t.yaml", "a: [", &t, err, sizeof(err)), TR_EPARSE);
    assert_starts(err, "t.yaml:");
}

/* ---- errors: each names file:line:col and the key */

static void test_errors(void **state)
{
    static const struct {
        const char *text;
        const char *where; /* "t.yaml:line:col: path: " prefix */
        const char *what;
    } cases[] = {
        {"servces: {}\n", "/srv/app/t.yaml:1:1: servces: ", "did you mean \"services\""},
        {"services: [a]\n", "/srv/app/t.yaml:1:11: services: ", "not a mapping"},
        {"services:\n  a:\n    comand: x\n",
         "/srv/app/t.yaml:3:5: services.a.comand: ", "did you mean \"command\""},
        {"services:\n  Bad_Name: {command: x}\n",
         "/srv/app/t.yaml:2:13: services.Bad_Name: ", "a-z, 0-9"},
        {"services:\n  -a: {command: x}\n", "/srv/app/t.yaml:2:7: services.-a: ", "not starting"},
        {"services:\n  a: {args: [x]}\n",
         "/srv/app/t.yaml:2:6: services.a: ", "`command` is required"},
        {"services:\n  a:\n", "/srv/app/t.yaml:2:5: services.a: ", "`command` is required"},
        {"services:\n  a: {command: ''}\n",
         "/srv/app/t.yaml:2:16: services.a.command: ", "required"},
        {"services:\n  a: [x]\n", "/srv/app/t.yaml:2:6: services.a: ", "a service is a mapping"},
        {"services:\n  a: {command: x, replicas: 101}\n",
         "/srv/app/t.yaml:2:29: services.a.replicas: ", "out of range"},
        {"services:\n  a: {command: x, replicas: -1}\n",
         "/srv/app/t.yaml:2:29: services.a.replicas: ", "out of range"},
        {"services:\n  a: {command: x, port: 0}\n",
         "/srv/app/t.yaml:2:25: services.a.port: ", "out of range"},
        {"services:\n  a: {command: x, port: 70000}\n",
         "/srv/app/t.yaml:2:25: services.a.port: ", "out of range"},
        {"services:\n  a: {command: x, port: fixed}\n",
         "/srv/app/t.yaml:2:25: services.a.port: ", "expected `auto`"},
        {"services:\n  a: {command: x, port: 65535, replicas: 2}\n",
         "/srv/app/t.yaml:2:25: services.a.port: ", "past 65535"},
        {"services:\n  a: {command: x, port: 9000, replicas: 2}\n"
         "  b: {command: x, port: 9001}\n",
         "/srv/app/t.yaml:3:25: services.b.port: ",
         "port 9001 (port + one per replica) overlaps a's ports 9000-9001"},
        {"services:\n  a: {command: x, port: 8500}\n", "/srv/app/t.yaml:2:25: services.a.port: ",
         "port 8500 includes control_plane.listen's port 8500"},
        {"services:\n  a: {command: x, depends_on: [b]}\n",
         "/srv/app/t.yaml:2:32: services.a.depends_on[0]: ", "no service named \"b\""},
        {"services:\n  catalog: {command: x}\n  a: {command: x, depends_on: [catalgo]}\n",
         "/srv/app/t.yaml:3:32: services.a.depends_on[0]: ", "did you mean \"catalog\""},
        {"services:\n  a: {command: x, depends_on: [{service: a}]}\n",
         "/srv/app/t.yaml:2:42: services.a.depends_on[0].service: ", "itself"},
        {"services:\n  a: {command: x, depends_on: [b, b]}\n  b: {command: x}\n",
         "/srv/app/t.yaml:2:35: services.a.depends_on[1]: ", "already listed"},
        {"services:\n  a: {command: x, depends_on: [{service: b, mode: rpc}]}\n  b: {command: "
         "x}\n",
         "/srv/app/t.yaml:2:51: services.a.depends_on[0].mode: ", "expected one of: sync, async"},
        {"services:\n  a: {command: x, depends_on: [{mode: sync}]}\n",
         "/srv/app/t.yaml:2:32: services.a.depends_on[0]: ", "`service` is required"},
        {"services:\n  a: {command: x, depends_on: b}\n",
         "/srv/app/t.yaml:2:31: services.a.depends_on: ", "expected a list"},
        {"services:\n  a: {command: x, restart: sometimes}\n",
         "/srv/app/t.yaml:2:28: services.a.restart: ",
         "expected one of: always, on-failure, never"},
        {"services:\n  a: {command: x, restart: {policy: alway}}\n",
         "/srv/app/t.yaml:2:37: services.a.restart.policy: ", "did you mean \"always\""},
        {"services:\n  a: {command: x, restart: {backoff_base: 2s, backoff_max: 1s}}\n",
         "/srv/app/t.yaml:2:60: services.a.restart.backoff_max: ", "at least backoff_base"},
        {"services:\n  a: {command: x, restart: {backoff_base: 0}}\n",
         "/srv/app/t.yaml:2:43: services.a.restart.backoff_base: ", "at least 1ms"},
        {"services:\n  a: {command: x, restart: [always]}\n",
         "/srv/app/t.yaml:2:28: services.a.restart: ", "expected always"},
        {"services:\n  a: {command: x, stop: {signal: SIGSTOP}}\n",
         "/srv/app/t.yaml:2:34: services.a.stop.signal: ", "unknown signal \"SIGSTOP\""},
        {"services:\n  a: {command: x, stop: {grace: 10}}\n", "", "NOT AN ERROR"},
        {"services:\n  a: {command: x, stop: {grace: 10 s}}\n",
         "/srv/app/t.yaml:2:33: services.a.stop.grace: ", "invalid duration"},
        {"services:\n  a: {command: x, stop: {timeout: 1s}}\n",
         "/srv/app/t.yaml:2:26: services.a.stop.timeout: ", "unknown key"},
        {"services:\n  a: {command: x, probes: {liveness: {http: health}}}\n",
         "/srv/app/t.yaml:2:45: services.a.probes.liveness.http: ", "starts with '/'"},
        {"services:\n  a: {command: x, probes: {liveness: {http: /h, tcp: true}}}\n",
         "/srv/app/t.yaml:2:54: services.a.probes.liveness.tcp: ", "not both"},
        {"services:\n  a: {command: x, probes: {liveness: {success_threshold: 2}}}\n",
         "/srv/app/t.yaml:2:58: services.a.probes.liveness.success_threshold: ", "one success"},
        {"services:\n  a: {command: x, probes: {readiness: {success_threshold: 0}}}\n",
         "/srv/app/t.yaml:2:59: services.a.probes.readiness.success_threshold: ", "out of range"},
        {"services:\n  a: {command: x, probes: {readiness: {period: 0}}}\n",
         "/srv/app/t.yaml:2:48: services.a.probes.readiness.period: ", "more than 0"},
        {"services:\n  a: {command: x, probes: {readiness: {timeout: 0}}}\n",
         "/srv/app/t.yaml:2:49: services.a.probes.readiness.timeout: ", "more than 0"},
        {"services:\n  a: {command: x, probes: {readiness: {perod: 1s}}}\n",
         "/srv/app/t.yaml:2:40: services.a.probes.readiness.perod: ", "did you mean \"period\""},
        {"services:\n  a: {command: x, probes: {readiness: /ready}}\n",
         "/srv/app/t.yaml:2:39: services.a.probes.readiness: ", "expected {http: /path}"},
        {"services:\n  a: {command: x, probes: {startup: {}}}\n",
         "/srv/app/t.yaml:2:28: services.a.probes.startup: ", "unknown key"},
        {"services:\n  a: {command: x, env: {PORT: 1}}\n",
         "/srv/app/t.yaml:2:31: services.a.env.PORT: ", "set by trellis"},
        {"services:\n  a: {command: x, env: ['A=1', 'A=2']}\n",
         "/srv/app/t.yaml:2:32: services.a.env[1]: ", "A is set twice"},
        {"services:\n  a: {command: x, env: [NOEQUALS]}\n",
         "/srv/app/t.yaml:2:25: services.a.env[0]: ", "expected NAME=value"},
        {"services:\n  a: {command: x, env: {1X: y}}\n", "/srv/app/t.yaml:2:29: services.a.env",
         "not a variable name"},
        {"services:\n  a: {command: x, env: {X: [1]}}\n",
         "/srv/app/t.yaml:2:28: services.a.env.X: ", "expected a string, number or boolean"},
        {"services:\n  a: {command: x, env: {X: ~}}\n",
         "/srv/app/t.yaml:2:28: services.a.env.X: ", "expected a string"},
        {"services:\n  a: {command: x, env: x}\n",
         "/srv/app/t.yaml:2:24: services.a.env: ", "expected a mapping"},
        {"services:\n  a: {command: x, args: [--home, '${HOME}']}\n",
         "/srv/app/t.yaml:2:34: services.a.args[1]: ", "unknown variable \"${HOME}\""},
        {"services:\n  a: {command: x, args: ['${PORT']}\n",
         "/srv/app/t.yaml:2:26: services.a.args[0]: ", "unterminated"},
        {"services:\n  a: {command: x, args: [[x]]}\n",
         "/srv/app/t.yaml:2:26: services.a.args[0]: ", "expected a string, number"},
        {"services:\n  a: {command: x, env: {A: '${X}'}}\n",
         "/srv/app/t.yaml:2:28: services.a.env.A: ", "unknown variable"},
        {"services:\n  a: {command: x, version: 1.2}\n",
         "/srv/app/t.yaml:2:28: services.a.version: ", "quote it"},
        {"services:\n  a: {command: x, context: ''}\n",
         "/srv/app/t.yaml:2:28: services.a.context: ", "empty"},
        {"services:\n  a: {command: x, owns: [db, db]}\n",
         "/srv/app/t.yaml:2:30: services.a.owns[1]: ", "listed twice"},
        {"services:\n  a: {command: x, owns: [1]}\n",
         "/srv/app/t.yaml:2:26: services.a.owns[0]: ", "expected a string"},
        {"services:\n  a: {command: x, cwd: 5}\n",
         "/srv/app/t.yaml:2:24: services.a.cwd: ", "not a string"},
        {"control_plane: {listen: localhost}\n",
         "/srv/app/t.yaml:1:25: control_plane.listen: ", "expected ip:port"},
        {"control_plane: {otlp: nope}\n", "/srv/app/t.yaml:1:23: control_plane.otlp: ", "or off"},
        {"control_plane: {data_dir: ''}\n",
         "/srv/app/t.yaml:1:27: control_plane.data_dir: ", "empty"},
        {"control_plane: {listn: x}\n",
         "/srv/app/t.yaml:1:17: control_plane.listn: ", "did you mean \"listen\""},
        {"gateway: {file: gw.yaml, listen: x}\n",
         "/srv/app/t.yaml:1:17: gateway.file: ", "not both"},
        {"gateway: {file: ''}\n", "/srv/app/t.yaml:1:17: gateway.file: ", "empty"},
        {"gateway: 3\n", "/srv/app/t.yaml:1:10: gateway: ", "inline"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (!strcmp(cases[i].what, "NOT AN ERROR")) {
            tr_topology_free(load_ok(cases[i].text));
            continue;
        }
        const char *msg = load_fails(cases[i].text);
        assert_starts(msg, cases[i].where);
        assert_contains(msg, cases[i].what);
    }
}

/* ---- dependencies */

static void test_cycle(void **state)
{
    const char *msg = load_fails("services:\n"
                                 "  a: {command: x, depends_on: [b]}\n"
                                 "  b: {command: x, depends_on: [c]}\n"
                                 "  c:\n"
                                 "    command: x\n"
                                 "    depends_on:\n"
                                 "      - {service: a, mode: async}\n");
    assert_starts(msg, "/srv/app/t.yaml:7:19: services.c.depends_on[0].service: ");
    assert_contains(msg, "dependency cycle a \u2192 b \u2192 c \u2192 a");

    msg = load_fails("services:\n"
                     "  x: {command: x}\n"
                     "  a: {command: x, depends_on: [x, b]}\n"
                     "  b: {command: x, depends_on: [a]}\n");
    assert_starts(msg, "/srv/app/t.yaml:4:32: services.b.depends_on[0]: ");
    assert_contains(msg, "dependency cycle a \u2192 b \u2192 a");
}

static void test_start_order(void **state)
{
    tr_topology_t *t = load_ok("services:\n"
                               "  web: {command: x, depends_on: [orders, catalog]}\n"
                               "  orders: {command: x, depends_on: [{service: payment, mode: "
                               "async}, inventory]}\n"
                               "  catalog: {command: x}\n"
                               "  payment: {command: x}\n"
                               "  inventory: {command: x, depends_on: [catalog]}\n"
                               "  mail: {command: x}\n");
    size_t n;
    const tr_topo_service_t *const *order = tr_topology_start_order(t, &n);
    const char *want[] = {"catalog", "payment", "inventory", "orders", "web", "mail"};
    assert_int_equal(n, 6);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(order[i]->name, want[i]);
    json_t *eff = tr_topology_effective(t);
    json_t *eo = json_object_get(eff, "start_order");
    for (size_t i = 0; i < n; i++)
        assert_string_equal(json_string_value(json_array_get(eo, i)), want[i]);
    json_t *deps =
        json_object_get(json_object_get(json_object_get(eff, "services"), "orders"), "depends_on");
    assert_string_equal(json_string_value(json_object_get(json_array_get(deps, 0), "mode")),
                        "async");
    assert_string_equal(json_string_value(json_object_get(json_array_get(deps, 1), "mode")),
                        "sync");
    json_decref(eff);
    tr_topology_free(t);
}

static void test_port_ranges(void **state)
{
    /* Adjacent ranges and zero replicas do not overlap. */
    tr_topology_t *t = load_ok("services:\n"
                               "  a: {command: x, port: 9000, replicas: 2}\n"
                               "  b: {command: x, port: 9002, replicas: 3}\n"
                               "  c: {command: x, port: 9002, replicas: 0}\n"
                               "  d: {command: x, port: auto, replicas: 5}\n");
    tr_topology_free(t);
}

/* ---- expansion */

static void test_expand(void **state)
{
    const char *vars[] = {"PORT=9001", "TRELLIS_SERVICE=catalog", "TRELLIS_INSTANCE=1", NULL};
    char out[64];
    assert_int_equal(tr_topology_expand("127.0.0.1:${PORT}", vars, out, sizeof(out)), 14);
    assert_string_equal(out, "127.0.0.1:9001");
    tr_topology_expand("${TRELLIS_SERVICE}-${TRELLIS_INSTANCE}", vars, out, sizeof(out));
    assert_string_equal(out, "catalog-1");
    tr_topology_expand("$$PORT costs $5 ${", vars, out, sizeof(out));
    assert_string_equal(out, "$PORT costs $5 ${");
    tr_topology_expand("$${PORT}", vars, out, sizeof(out));
    assert_string_equal(out, "${PORT}");
    assert_int_equal(tr_topology_expand("", vars, out, sizeof(out)), 0);
    assert_string_equal(out, "");
    assert_int_equal(tr_topology_expand("${PORTX}", vars, out, sizeof(out)), TR_ENOTFOUND);
    assert_int_equal(tr_topology_expand("${POR}", vars, out, sizeof(out)), TR_ENOTFOUND);
    assert_int_equal(tr_topology_expand("${PORT}", NULL, out, sizeof(out)), TR_ENOTFOUND);
    assert_int_equal(tr_topology_expand("${PORT}", vars, out, 4), TR_ETOOLARGE);
    assert_int_equal(tr_topology_expand("${PORT}", vars, out, 5), 4);
    assert_int_equal(tr_topology_expand("x", vars, out, 0), TR_ETOOLARGE);
}

/* The example's args expand to what `trellis echo` accepts. */
static void test_expand_example(void **state)
{
    tr_topology_t *t = NULL;
    assert_int_equal(
        tr_topology_load(TR_SOURCE_DIR "/examples/echo/topology.yaml", NULL, &t, err, sizeof(err)),
        0);
    const tr_topo_service_t *s;
    tr_topology_services(t, &s);
    const char *vars[] = {"PORT=40001", "TRELLIS_SERVICE=catalog", "TRELLIS_INSTANCE=0", NULL};
    char out[128];
    assert_true(tr_topology_expand(s[0].args[2], vars, out, sizeof(out)) > 0);
    assert_string_equal(out, "127.0.0.1:40001");
    assert_true(tr_topology_expand(s[0].env[0], vars, out, sizeof(out)) > 0);
    assert_string_equal(out, "ECHO_NAME=catalog-0");
    tr_topology_free(t);
}

static void test_names(void **state)
{
    assert_string_equal(tr_topo_restart_name(TR_TOPO_RESTART_ON_FAILURE), "on-failure");
    assert_string_equal(tr_topo_restart_name(7), "?");
    assert_string_equal(tr_topo_signal_name(SIGHUP), "SIGHUP");
    assert_null(tr_topo_signal_name(SIGSTOP));
    tr_topology_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_example_file),
        cmocka_unit_test(test_docs_example_matches),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_empty_file),
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_env_list_and_gateway_string),
        cmocka_unit_test(test_relative_path_name),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_cycle),
        cmocka_unit_test(test_start_order),
        cmocka_unit_test(test_port_ranges),
        cmocka_unit_test(test_expand),
        cmocka_unit_test(test_expand_example),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
