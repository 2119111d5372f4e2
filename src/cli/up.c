/* `trellis up`: the control plane, the gateway and every service of a topology, in one command. */
#include "cli/cli.h"
#include "cli/up.h"

#include "core/buf.h"
#include "core/mem.h"
#include "gateway/gateway.h"
#include "core/fs.h"
#include "eventstore/eventstore.h"
#include "saga/saga.h"
#include "registry/registry.h"
#include "supervisor/supervisor.h"
#include "supervisor/topology.h"
#include "trace/collector.h"
#include "trace/logs.h"
#include "trellis/discovery_hub.h"
#include "trellis/error.h"
#include "trellis/http_client.h"
#include "trellis/log.h"
#include "trellis/metrics.h"
#include "trellis/net.h"
#include "trellis/runtime.h"
#include "trellis/trace.h"

#include <errno.h>
#include <getopt.h>
#include <sys/stat.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- registration: ready instances go into the registry, others leave it */

static void on_registered(tr_http_client_req_t *req, int err, const tr_http_client_response_t *res)
{
    replica_t *r = tr_http_client_req_data(req);
    if (err == TR_ECANCELED) return; /* stopping: the registry closes with us */
    if (err || !res || res->status != 200)
        tr_log_warn("up: registry update failed", TR_LOG_STR("instance", r->id),
                    TR_LOG_INT("status", res ? res->status : 0), TR_LOG_ERR(err));
}

void up_registry_call(up_t *up, replica_t *r, bool add)
{
    char target[256];
    char *body = NULL;
    if (add) {
        char replica[16];
        snprintf(replica, sizeof(replica), "%d", r->index);
        const char *version = r->version ? r->version : "";
        /* Consul's Meta is a map of strings; rollouts shift traffic with the weights. */
        json_t *j =
            json_pack("{s:s, s:s, s:s, s:i, s:{s:s, s:s, s:s}, s:[], s:{s:i, s:i}}", "ID", r->id,
                      "Name", r->svc->def->name, "Address", "127.0.0.1", "Port", (int)r->port,
                      "Meta", "version", version, "managed_by", "trellis-up", "replica", replica,
                      "Tags", "Weights", "Passing", (int)(r->weight ? r->weight : 1), "Warning", 1);
        if (*version) json_array_append_new(json_object_get(j, "Tags"), json_string(version));
        body = json_dumps(j, JSON_COMPACT);
        json_decref(j);
        snprintf(target, sizeof(target), "/v1/agent/service/register");
    } else {
        snprintf(target, sizeof(target), "/v1/agent/service/deregister/%s", r->id);
    }
    tr_http_client_request_t req = {.method = "PUT",
                                    .target = target,
                                    .body_mode = body ? TR_HTTP_CLIENT_BODY_BUFFER
                                                      : TR_HTTP_CLIENT_BODY_NONE,
                                    .body = body,
                                    .body_len = body ? strlen(body) : 0,
                                    .flags = TR_HTTP_CLIENT_IDEMPOTENT,
                                    .data = r};
    tr_http_client_fetch(up->client, &up->api_ep, &req, on_registered, NULL);
    free(body);
    r->registered = add;
}

static void on_self_registered(tr_http_client_req_t *req, int err,
                               const tr_http_client_response_t *res)
{
    (void)req;
    if (err || res->status != 200)
        tr_log_warn("up: the control plane could not register itself as service 'trellis'",
                    TR_LOG_ERR(err));
}

/*
 * The control plane is in its own registry as service `trellis` (as Consul lists `consul`),
 * so gateway routes reach its API by discovery, e.g. a route that starts a saga.
 */
static void register_self(up_t *up)
{
    const char *colon = strrchr(up->api_addr, ':');
    json_t *j = json_pack("{s:s, s:s, s:s, s:i, s:[s], s:{s:s}}", "ID", "trellis", "Name",
                          "trellis", "Address", "127.0.0.1", "Port", colon ? atoi(colon + 1) : 0,
                          "Tags", "control-plane", "Meta", "managed_by", "trellis-up");
    char *body = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    tr_http_client_request_t req = {.method = "PUT",
                                    .target = "/v1/agent/service/register",
                                    .body_mode = TR_HTTP_CLIENT_BODY_BUFFER,
                                    .body = body,
                                    .body_len = strlen(body),
                                    .flags = TR_HTTP_CLIENT_IDEMPOTENT};
    tr_http_client_fetch(up->client, &up->api_ep, &req, on_self_registered, NULL);
    free(body);
}

/* ---- starting services in dependency order */

static bool svc_ready(const svc_t *s)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->replicas[i]->inst && tr_instance_state(s->replicas[i]->inst) == TR_INST_READY)
            return true;
    return s->n == 0;
}

svc_t *up_svc_by_name(up_t *up, const char *name)
{
    for (size_t i = 0; i < up->nsvcs; i++)
        if (!strcmp(up->svcs[i].def->name, name)) return &up->svcs[i];
    return NULL;
}

static uint16_t free_port(void)
{
    struct sockaddr_storage a, bound;
    int fd;
    if (tr_net_parse_addr("127.0.0.1:0", &a) || tr_net_listen(&a, 1, 1, &fd, &bound)) return 0;
    close(fd);
    return ntohs(((struct sockaddr_in *)&bound)->sin_port);
}

char **up_strv_dup(char *const *v)
{
    if (!v) return NULL;
    size_t n = 0;
    while (v[n])
        n++;
    char **out = tr_calloc(n + 1, sizeof(char *));
    for (size_t i = 0; i < n; i++)
        out[i] = tr_strdup(v[i]);
    return out;
}

void up_strv_free(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

static char **expand_list(const char *const *tmpl, size_t n, const char *const *vars,
                          const char *first)
{
    char **out = tr_calloc(n + 2, sizeof(char *));
    size_t k = 0;
    if (first) out[k++] = tr_strdup(first);
    for (size_t i = 0; i < n; i++) {
        char buf[8192];
        if (tr_topology_expand(tmpl[i], vars, buf, sizeof(buf)) < 0)
            snprintf(buf, sizeof(buf), "%s", tmpl[i]);
        out[k++] = tr_strdup(buf);
    }
    return out;
}

static void free_list(char **l)
{
    for (size_t i = 0; l && l[i]; i++)
        free(l[i]);
    free(l);
}

replica_t *up_replica_add(svc_t *s)
{
    s->replicas = tr_realloc(s->replicas, (s->n + 1) * sizeof(*s->replicas));
    replica_t *r = tr_calloc(1, sizeof(*r));
    r->svc = s;
    r->index = (int)s->next_index++;
    r->version = s->version ? tr_strdup(s->version) : NULL;
    r->cmd = up_strv_dup(s->cmd);
    s->replicas[s->n++] = r;
    return r;
}

void up_replica_free(replica_t *r)
{
    free_list(r->argv);
    free_list(r->env);
    free(r->version);
    up_strv_free(r->cmd);
    free(r);
}

static void probe_spec(const tr_topo_probe_t *t, tr_probe_spec_t *p)
{
    *p = (tr_probe_spec_t){.enabled = t->enabled,
                           .http = t->http,
                           .path = t->path,
                           .period_ms = t->period_ms,
                           .timeout_ms = t->timeout_ms,
                           .initial_delay_ms = t->initial_delay_ms,
                           .failure_threshold = t->failure_threshold,
                           .success_threshold = t->success_threshold};
}

void up_start_replica(up_t *up, svc_t *s, replica_t *r)
{
    const tr_topo_service_t *d = s->def;
    r->port = d->port_auto ? free_port() : (uint16_t)(d->port + r->index);
    snprintf(r->id, sizeof(r->id), "%s-%d", d->name, r->index);
    char port[16], index[40], service[128];
    snprintf(port, sizeof(port), "PORT=%u", r->port);
    snprintf(index, sizeof(index), "TRELLIS_INSTANCE=%d", r->index);
    snprintf(service, sizeof(service), "TRELLIS_SERVICE=%s", d->name);
    const char *vars[] = {port, service, index, NULL};
    free_list(r->argv);
    free_list(r->env);
    if (r->cmd) { /* a rollout's command: "trellis" is this binary, as in the topology */
        size_t n = 0;
        while (r->cmd[n])
            n++;
        r->argv = expand_list((const char *const *)r->cmd + 1, n - 1, vars,
                              !strcmp(r->cmd[0], "trellis") ? up->self_exe : r->cmd[0]);
    } else {
        r->argv = expand_list(d->args, d->nargs, vars, d->command_self ? up->self_exe : d->command);
    }
    r->env = expand_list(d->env, d->nenv, vars, NULL);
    tr_instance_spec_t spec = {.service = d->name,
                               .instance_id = r->id,
                               .version = r->version,
                               .argv = (const char *const *)r->argv,
                               .cwd = d->cwd,
                               .env = (const char *const *)r->env,
                               .port = r->port,
                               .restart = (tr_restart_policy_t)d->restart,
                               .backoff_base_ms = d->backoff_base_ms,
                               .backoff_max_ms = d->backoff_max_ms,
                               .stop_signal = d->stop_signal,
                               .stop_grace_ms = d->stop_grace_ms,
                               .data = r};
    probe_spec(&d->liveness, &spec.liveness);
    probe_spec(&d->readiness, &spec.readiness);
    int err = tr_supervisor_start(up->sup, &spec, &r->inst);
    if (err)
        tr_log_error("up: cannot start instance", TR_LOG_STR("instance", r->id), TR_LOG_ERR(err));
}

/* Starts every service whose dependencies have a ready instance. */
static void start_eligible(up_t *up)
{
    if (up->stopping) return;
    size_t n;
    const tr_topo_service_t *const *order = tr_topology_start_order(up->topo, &n);
    for (size_t i = 0; i < n; i++) {
        svc_t *s = up_svc_by_name(up, order[i]->name);
        if (!s || s->started) continue;
        bool deps_ready = true;
        for (size_t k = 0; k < s->def->ndeps; k++) {
            svc_t *dep = up_svc_by_name(up, s->def->deps[k].service);
            deps_ready &= dep && dep->started && svc_ready(dep);
        }
        if (!deps_ready) continue;
        s->started = true;
        for (size_t r = 0; r < s->n; r++)
            up_start_replica(up, s, s->replicas[r]);
    }
}

static bool all_ready(const up_t *up)
{
    for (size_t i = 0; i < up->nsvcs; i++)
        for (size_t r = 0; r < up->svcs[i].n; r++) {
            replica_t *rp = up->svcs[i].replicas[r];
            if (!rp->inst || tr_instance_state(rp->inst) != TR_INST_READY) return false;
        }
    return true;
}

static void on_state(tr_instance_t *i, tr_instance_state_t old, tr_instance_state_t now,
                     const char *reason, void *data)
{
    up_t *up = data;
    replica_t *r = tr_instance_data(i);
    (void)old;
    (void)reason;
    if (now == TR_INST_READY && !r->registered && !r->hold && !r->leaving)
        up_registry_call(up, r, true);
    if (now != TR_INST_READY && r->registered) up_registry_call(up, r, false);
    if (now == TR_INST_READY) {
        start_eligible(up);
        if (!up->all_ready_logged && all_ready(up)) {
            up->all_ready_logged = true;
            tr_log_info("up: all services ready",
                        TR_LOG_UINT("ms", uv_now(up->loop) - up->started_ms),
                        TR_LOG_UINT("services", up->nsvcs));
        }
    }
}

static void on_output(tr_instance_t *i, int stream, const char *line, size_t len, void *data)
{
    up_t *up = data;
    replica_t *r = tr_instance_data(i);
    tr_logs_ingest_line_later(up->logs, r->svc->def->name, r->id, stream, line, len);
}

/* ---- the control-plane API on one listener: registry, traces, logs, services */

static void services_json(up_t *up, tr_http_req_t *req)
{
    json_t *out = json_array();
    for (size_t i = 0; i < up->nsvcs; i++) {
        svc_t *s = &up->svcs[i];
        json_t *insts = json_array();
        for (size_t k = 0; k < s->n; k++) {
            replica_t *r = s->replicas[k];
            tr_instance_t *in = r->inst;
            json_array_append_new(
                insts,
                json_pack("{s:s, s:s?, s:i, s:i, s:s, s:b, s:i, s:I}", "id", r->id, "version",
                          r->version, "port", (int)r->port, "pid", in ? tr_instance_pid(in) : 0,
                          "state", in ? tr_instance_state_name(tr_instance_state(in)) : "pending",
                          "ready", in && tr_instance_state(in) == TR_INST_READY, "restarts",
                          in ? (int)tr_instance_restarts(in) : 0, "started_at",
                          (json_int_t)(in ? tr_instance_started_at(in) : 0)));
        }
        json_t *ro = up_rollout_summary(s);
        json_array_append_new(out, json_pack("{s:s, s:s?, s:i, s:o, s:o}", "name", s->def->name,
                                             "version", s->version, "replicas", (int)s->n,
                                             "instances", insts, "rollout", ro ? ro : json_null()));
    }
    char *text = json_dumps(out, JSON_COMPACT);
    json_decref(out);
    tr_http_res_send(req, 200, "application/json", text, strlen(text));
    free(text);
}

/* ---- control: restart, stop, start, scale a service */

static void on_retired(tr_instance_t *i, void *data)
{
    replica_t *r = data;
    tr_instance_remove(i);
    up_replica_free(r);
}

void up_replica_retire(up_t *up, replica_t *r)
{
    svc_t *s = r->svc;
    for (size_t k = 0; k < s->n; k++)
        if (s->replicas[k] == r) {
            memmove(&s->replicas[k], &s->replicas[k + 1], (s->n - k - 1) * sizeof(*s->replicas));
            s->n--;
            break;
        }
    r->leaving = true;
    if (r->registered) up_registry_call(up, r, false);
    if (r->inst)
        tr_instance_stop(r->inst, on_retired, r);
    else
        up_replica_free(r);
}

static void noop_stopped(tr_instance_t *i, void *data)
{
    (void)i;
    (void)data;
}

static void scale(up_t *up, svc_t *s, size_t want)
{
    while (s->n < want) {
        replica_t *r = up_replica_add(s);
        if (s->started) up_start_replica(up, s, r);
    }
    while (s->n > want)
        up_replica_retire(up, s->replicas[s->n - 1]);
}

static void control(up_t *up, tr_http_req_t *req, const char *name, const char *action)
{
    svc_t *s = up_svc_by_name(up, name);
    if (!s) {
        tr_http_res_problem(req, 404, "no-service", "No such service",
                            "the topology has no service named \"%s\"", name);
        return;
    }
    if (s->rollout) {
        tr_http_res_problem(req, 409, "rollout-in-progress", "Rollout in progress",
                            "\"%s\" is being rolled out; wait for it to end or abort it with "
                            "`trellis rollout abort %s`",
                            name, name);
        return;
    }
    if (!strcmp(action, "scale")) {
        const char *v;
        long n = -1;
        if (tr_http_query_param(req, "replicas", &v)) n = strtol(v, NULL, 10);
        if (n < 0 || n > 100) {
            tr_http_res_problem(req, 400, "bad-replicas", "Bad replica count",
                                "give ?replicas=N with N from 0 to 100");
            return;
        }
        scale(up, s, (size_t)n);
    } else if (!strcmp(action, "restart") || !strcmp(action, "start")) {
        if (!s->started) {
            s->started = true;
            for (size_t r = 0; r < s->n; r++)
                up_start_replica(up, s, s->replicas[r]);
        } else {
            for (size_t r = 0; r < s->n; r++) {
                replica_t *rp = s->replicas[r];
                bool down = !rp->inst || tr_instance_state(rp->inst) == TR_INST_STOPPED ||
                            tr_instance_state(rp->inst) == TR_INST_FAILED;
                if (!rp->inst)
                    up_start_replica(up, s, rp);
                else if (!strcmp(action, "restart") || down)
                    tr_instance_restart(rp->inst);
            }
        }
    } else if (!strcmp(action, "stop")) {
        for (size_t r = 0; r < s->n; r++)
            if (s->replicas[r]->inst) tr_instance_stop(s->replicas[r]->inst, noop_stopped, NULL);
    } else {
        tr_http_res_problem(req, 404, "no-action", "Unknown action",
                            "POST /api/services/<name>/restart, /stop, /start or "
                            "/scale?replicas=N");
        return;
    }
    tr_log_info("up: control", TR_LOG_STR("service", name), TR_LOG_STR("action", action),
                TR_LOG_UINT("replicas", s->n));
    tr_http_res_send(req, 202, "application/json", "{\"accepted\":true}", 17);
}

static void route_control(up_t *up, tr_http_req_t *req)
{
    char name[128], action[32];
    const char *p = req->path + strlen("/api/services/");
    size_t len = req->path_len - strlen("/api/services/");
    const char *slash = memchr(p, '/', len);
    if (!slash || (size_t)(slash - p) >= sizeof(name) ||
        (size_t)(p + len - slash - 1) >= sizeof(action) || strcmp(req->method, "POST")) {
        tr_http_res_problem(req, 404, "not-found", "Not found",
                            "POST /api/services/<name>/restart, /stop, /start or "
                            "/scale?replicas=N");
        return;
    }
    snprintf(name, sizeof(name), "%.*s", (int)(slash - p), p);
    snprintf(action, sizeof(action), "%.*s", (int)(p + len - slash - 1), slash + 1);
    control(up, req, name, action);
}

static bool path_is(const tr_http_req_t *req, const char *p)
{
    return req->path_len == strlen(p) && !memcmp(req->path, p, req->path_len);
}

static bool path_has(const tr_http_req_t *req, const char *prefix)
{
    size_t n = strlen(prefix);
    return req->path_len >= n && !memcmp(req->path, prefix, n);
}

/* Pipelined appends go to the event store while earlier ones wait for their commit. */
static bool api_ordered(const tr_http_req_t *req, void *data)
{
    up_t *up = data;
    return up->events && tr_eventstore_ordered(req);
}

static void on_api(tr_http_req_t *req, void *data)
{
    up_t *up = data;
    if (path_has(req, "/v1/")) {
        tr_registry_handle(req, up->registry);
    } else if (path_is(req, "/api/services")) {
        services_json(up, req);
    } else if (path_has(req, "/api/services/")) {
        route_control(up, req);
    } else if (path_is(req, "/api/rollouts") || path_has(req, "/api/rollouts/")) {
        up_rollout_handle(up, req);
    } else if (path_has(req, "/api/logs")) {
        if (!tr_logs_handle(up->logs, req)) tr_http_res_send(req, 404, NULL, NULL, 0);
    } else if (path_has(req, "/api/traces") || path_has(req, "/api/dependencies") ||
               path_has(req, "/api/v2/")) {
        tr_collector_handle(req, up->collector);
    } else if (up->events && tr_eventstore_handle(up->events, req)) {
        /* answered (or will be) by the event store */
    } else if (up->sagas && tr_saga_handle(up->sagas, req)) {
        /* answered (or will be) by the saga orchestrator */
    } else if (path_is(req, "/metrics")) {
        tr_buf_t b = TR_BUF_INIT;
        tr_metrics_render(tr_metrics_default(), &b);
        tr_http_res_send(req, 200, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len);
        tr_buf_free(&b);
    } else if (path_is(req, "/health/live")) {
        tr_http_res_send(req, 200, "text/plain", "ok\n", 3);
    } else if (path_is(req, "/health/ready")) {
        bool ok = all_ready(up);
        tr_http_res_send(req, ok ? 200 : 503, "text/plain", ok ? "ready\n" : "starting\n",
                         ok ? 6 : 9);
    } else {
        tr_http_res_problem(
            req, 404, "not-found", "Not found",
            "the control plane serves /v1/ (registry), /api/services, /api/rollouts, /api/logs, "
            "/api/traces, /api/dependencies, /api/sagas, /api/saga-definitions, /api/streams, "
            "/metrics and /health/*");
    }
}

/* ---- the live status table (TTY) */

static void on_tick(uv_timer_t *t)
{
    up_t *up = t->data;
    if (!up->tty || up->stopping) return;
    fprintf(stderr, "\033[H\033[J%-14s %-14s %-10s %7s %-9s %-5s %8s %8s\n", "SERVICE", "INSTANCE",
            "VERSION", "PID", "STATE", "READY", "RESTARTS", "UPTIME");
    int64_t now = (int64_t)time(NULL) * 1000;
    for (size_t i = 0; i < up->nsvcs; i++)
        for (size_t k = 0; k < up->svcs[i].n; k++) {
            replica_t *r = up->svcs[i].replicas[k];
            tr_instance_t *in = r->inst;
            int64_t since = in ? tr_instance_started_at(in) : 0;
            fprintf(stderr, "%-14s %-14s %-10s %7d %-9s %-5s %8u %7llds\n", up->svcs[i].def->name,
                    r->id, r->version ? r->version : "-", in ? tr_instance_pid(in) : 0,
                    in ? tr_instance_state_name(tr_instance_state(in)) : "pending",
                    in && tr_instance_state(in) == TR_INST_READY ? "yes" : "no",
                    in ? tr_instance_restarts(in) : 0,
                    (long long)(since ? (now - since) / 1000 : 0));
        }
    for (size_t i = 0; i < up->nsvcs; i++) {
        json_t *ro = up_rollout_summary(&up->svcs[i]);
        if (!ro) continue;
        json_t *ev = json_object_get(ro, "events");
        const char *from = json_string_value(json_object_get(ro, "from_version"));
        const char *last = json_string_value(
            json_object_get(json_array_get(ev, json_array_size(ev) - 1), "message"));
        fprintf(stderr, "\nrollout %s: %s -> %s (%s), %s\n", up->svcs[i].def->name,
                from ? from : "-", json_string_value(json_object_get(ro, "to_version")),
                json_string_value(json_object_get(ro, "strategy")), last ? last : "");
        json_decref(ro);
    }
    fprintf(stderr, "\ngateway http://%s   control plane http://%s   Ctrl-C stops everything\n",
            tr_gateway_listen_addr(up->gw), up->api_addr);
}

/* ---- workers */

/* The saga orchestrator: its database in the data directory, the topology's definitions,
 * then every saga an earlier run left unfinished resumes. */
static int open_sagas(up_t *up, uv_loop_t *loop)
{
    char err[512], path[4200];
    snprintf(path, sizeof(path), "%s/sagas.db", up->cp->data_dir);
    const char *sync = getenv("TRELLIS_SAGA_SYNC"); /* "full": fsync every group commit */
    tr_saga_options_t so = {.db_path = path,
                            .sync_full = sync && !strcmp(sync, "full"),
                            .hub = up->hub,
                            .spans = up->sink,
                            .service_name = "saga"};
    int e = tr_saga_engine_open(loop, &so, &up->sagas, err, sizeof(err));
    if (e) {
        tr_log_error("up: cannot open the saga store", TR_LOG_STR("detail", err), TR_LOG_ERR(e));
        return e;
    }
    tr_config_t *cfg = tr_topology_config(up->topo);
    if ((e = tr_saga_define_all(up->sagas, cfg, tr_topology_sagas(up->topo)))) {
        tr_log_error("up: sagas", TR_LOG_STR("detail", tr_config_error(cfg)));
        return e;
    }
    e = tr_saga_engine_resume(up->sagas);
    return e < 0 ? e : 0;
}

static int open_control_plane(up_t *up, uv_loop_t *loop)
{
    char err[512];
    up->loop = loop;
    up->started_ms = uv_now(loop);
    tr_registry_options_t ro = {.data_dir = up->cp->data_dir, .hub = up->hub};
    int e = tr_registry_open(loop, &ro, &up->registry, err, sizeof(err));
    if (e) {
        tr_log_error("up: cannot open the registry", TR_LOG_STR("detail", err), TR_LOG_ERR(e));
        return e;
    }
    tr_collector_options_t co = {.data_dir = up->cp->data_dir, .retention_ms = 24 * 3600 * 1000ULL};
    if ((e = tr_collector_open(loop, &co, &up->collector, err, sizeof(err)))) {
        tr_log_error("up: cannot open the trace store", TR_LOG_STR("detail", err), TR_LOG_ERR(e));
        return e;
    }
    if ((e = open_sagas(up, loop))) return e;
    tr_eventstore_options_t eo = {.loop = loop, .hub = up->hub};
    if ((e = tr_eventstore_open(up->cp->data_dir, &eo, &up->events, err, sizeof(err)))) {
        tr_log_error("up: cannot open the event store", TR_LOG_STR("detail", err), TR_LOG_ERR(e));
        return e;
    }
    tr_http_server_options_t api = {.handler = on_api, .handler_data = up, .ordered = api_ordered};
    tr_http_server_options_t col = {.handler = tr_collector_handle,
                                    .handler_data = up->collector,
                                    .max_body_bytes = TR_COLLECTOR_MAX_BODY};
    int fds[3] = {up->api_fd, up->otlp_fd, up->zipkin_fd};
    for (int i = 0; i < 3; i++) {
        if (fds[i] < 0) continue; /* otlp: off, zipkin: off */
        if ((e = tr_http_server_start(loop, fds[i], i ? &col : &api, &up->servers[i]))) return e;
        up->open_servers++;
    }
    tr_http_endpoint_parse(&up->api_ep, up->api_addr);
    up->client = tr_http_client_new(loop, NULL);
    register_self(up);
    char reg_env[96], otel_env[128];
    snprintf(reg_env, sizeof(reg_env), "TRELLIS_REGISTRY=%s", up->api_addr);
    snprintf(otel_env, sizeof(otel_env), "OTEL_EXPORTER_OTLP_ENDPOINT=http://%s", up->otlp_addr);
    const char *env[] = {reg_env, up->otlp_addr[0] ? otel_env : NULL, NULL};
    tr_supervisor_options_t so = {
        .self_exe = up->self_exe, .env = env, .events = {on_state, on_output, up}};
    up->sup = tr_supervisor_new(loop, &so);
    uv_timer_init(loop, &up->tick);
    up->tick.data = up;
    uv_timer_start(&up->tick, on_tick, 500, 1000);
    tr_log_info("up: control plane ready", TR_LOG_STR("api", up->api_addr),
                TR_LOG_STR("otlp", up->otlp_addr), TR_LOG_STR("zipkin", up->zipkin_addr),
                TR_LOG_STR("gateway", tr_gateway_listen_addr(up->gw)));
    start_eligible(up);
    return 0;
}

static int on_worker_start(tr_worker_t *w, void *data)
{
    up_t *up = data;
    int e = tr_gateway_worker_start(up->gw, w);
    if (!e && tr_worker_id(w) == 0) e = open_control_plane(up, tr_worker_loop(w));
    return e;
}

/* The last control-plane listener closed: nothing can reach the state any more. */
static void on_cp_server_closed(void *data)
{
    up_t *up = data;
    if (--up->open_servers > 0) return;
    tr_registry_close(up->registry);
    up->registry = NULL;
    tr_collector_close(up->collector);
    up->collector = NULL;
}

static void close_control_plane(up_t *up, bool force)
{
    if (up->cp_closed) {
        for (int i = 0; force && i < 3; i++)
            if (up->servers[i]) tr_http_server_close(up->servers[i], true, NULL, NULL);
        return;
    }
    up->cp_closed = true;
    up_rollout_shutdown(up);
    uv_timer_stop(&up->tick);
    uv_close((uv_handle_t *)&up->tick, NULL);
    if (up->registry) tr_registry_shutdown(up->registry);
    if (up->sagas) tr_saga_engine_close(up->sagas, NULL, NULL);
    up->sagas = NULL;
    tr_eventstore_close(up->events);
    up->events = NULL;
    tr_logs_shutdown(up->logs);
    for (int i = 0; i < 3; i++)
        if (up->servers[i]) tr_http_server_close(up->servers[i], force, on_cp_server_closed, up);
    tr_http_client_close(up->client, NULL);
    tr_supervisor_close(up->sup, NULL, NULL);
}

/* Stops services one at a time, in reverse start order, then the control plane. */
static void stop_next(void *data)
{
    up_t *up = data;
    size_t n;
    const tr_topo_service_t *const *order = tr_topology_start_order(up->topo, &n);
    while (up->stop_next >= 0) {
        svc_t *s = up_svc_by_name(up, order[up->stop_next--]->name);
        tr_instance_t **list = tr_calloc(s->n + 1, sizeof(*list));
        size_t k = 0;
        for (size_t r = 0; r < s->n; r++)
            if (s->replicas[r]->inst) list[k++] = s->replicas[r]->inst;
        if (!k) {
            free(list);
            continue;
        }
        tr_supervisor_stop_instances(up->sup, list, k, stop_next, up);
        free(list);
        return;
    }
    close_control_plane(up, false);
}

static void on_worker_stop(tr_worker_t *w, bool force, void *data)
{
    up_t *up = data;
    tr_gateway_worker_stop(up->gw, w, force);
    if (tr_worker_id(w) != 0) return;
    if (force) {
        up->stopping = true;
        close_control_plane(up, true);
        return;
    }
    if (up->stopping) return;
    up->stopping = true;
    size_t n;
    tr_topology_start_order(up->topo, &n);
    up->stop_next = (int)n - 1;
    tr_log_info("up: stopping services in reverse order");
    stop_next(up);
}

/* ---- set-up */

static int bind_addr(const char *text, int *fd, char *out, size_t n)
{
    struct sockaddr_storage a, bound;
    int e = tr_net_parse_addr(text, &a);
    if (!e) e = tr_net_listen(&a, 1, 1024, fd, &bound);
    if (e) {
        fprintf(stderr, "trellis up: cannot listen on %s: %s\n", text, tr_strerror(e));
        return e;
    }
    tr_net_format_addr((struct sockaddr *)&bound, out, n);
    return 0;
}

/* The gateway's access lines go to the log store too, so a correlation ID finds them. */
static void on_access_lines(void *data, const char *lines, size_t len)
{
    up_t *up = data;
    if (!up->logs) return;
    const char *p = lines, *end = lines + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (n) tr_logs_ingest_line_later(up->logs, "gateway", "access", 1, p, n);
        p += n + 1;
    }
}

static int open_gateway(up_t *up, const char *listen, int workers, char *err, size_t errlen)
{
    const json_t *inline_cfg = tr_topology_gateway(up->topo);
    const char *file = tr_topology_gateway_file(up->topo);
    tr_gateway_options_t go = {.config_path = file ? file : up->topology_path,
                               .hub = up->hub,
                               .listen = listen,
                               .workers = workers,
                               .service_name = "gateway",
                               .access_sink = on_access_lines,
                               .access_sink_data = up};
    if (!file && inline_cfg) {
        /* The inline section compiles in place: its errors point into the topology file. */
        go.config_tree = tr_topology_config(up->topo);
        go.config_root = (json_t *)inline_cfg;
    } else if (!file) {
        go.config_text = "{}"; /* no gateway section: every default, no routes */
    }
    int e = tr_gateway_open(&go, &up->gw, err, errlen);
    if (e) return e;
    tr_exporter_options_t eo;
    const tr_exporter_options_t *tracing = tr_gateway_tracing(up->gw);
    char endpoint[128];
    if (!tracing) { /* trace to our own collector by default */
        tr_exporter_options_init(&eo);
        snprintf(endpoint, sizeof(endpoint), "http://%s/v1/traces",
                 up->otlp_addr[0] ? up->otlp_addr : up->cp->otlp);
        eo.endpoint = endpoint;
        eo.service = "gateway";
        tracing = &eo;
    }
    if (!tracing->endpoint || !up->cp->otlp) return 0; /* no collector to send spans to */
    up->exporter = tr_exporter_start(tracing);
    if (up->exporter) {
        up->sink = tr_exporter_sink(up->exporter);
        tr_gateway_set_spans(up->gw, &up->sink);
    }
    return 0;
}

static void build_services(up_t *up)
{
    const tr_topo_service_t *defs;
    up->nsvcs = tr_topology_services(up->topo, &defs);
    up->svcs = tr_calloc(up->nsvcs + 1, sizeof(*up->svcs));
    for (size_t i = 0; i < up->nsvcs; i++) {
        svc_t *s = &up->svcs[i];
        s->def = &defs[i];
        s->up = up;
        s->version = defs[i].version ? tr_strdup(defs[i].version) : NULL;
        for (uint32_t r = 0; r < defs[i].replicas; r++)
            up_replica_add(s);
    }
}

static void free_services(up_t *up)
{
    for (size_t i = 0; i < up->nsvcs; i++) {
        for (size_t r = 0; r < up->svcs[i].n; r++)
            up_replica_free(up->svcs[i].replicas[r]);
        free(up->svcs[i].replicas);
        free(up->svcs[i].version);
        up_strv_free(up->svcs[i].cmd);
        up_rollout_free(&up->svcs[i]);
    }
    free(up->svcs);
}

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: trellis up [topology.yaml] [options]\n\n"
            "Runs a whole topology on this machine: the control plane (registry on the\n"
            "Consul API, trace collector, central logs, the /api of `trellis ps`), the\n"
            "gateway, and every service's replicas under the supervisor, started in\n"
            "dependency order, registered once ready. Ctrl-C stops everything in reverse order.\n"
            "The topology file is documented in docs/topology.md (default: ./topology.yaml).\n\n"
            "Options:\n"
            "  -l, --listen ADDR        gateway address (default: the gateway section's, "
            "127.0.0.1:8080)\n"
            "  -w, --workers N          gateway worker threads (default: CPUs)\n"
            "      --check              validate the topology and its gateway, then exit\n"
            "      --grace DUR          longest drain after SIGTERM/SIGINT (default 60s)\n"
            "      --log-level LEVEL    debug, info, warn or error (default info)\n"
            "      --log-format FORMAT  auto, json or text (default auto)\n"
            "  -h, --help               show this help\n\n"
            "Example:\n"
            "  trellis up examples/echo/topology.yaml && curl localhost:8080/api/orders/echo\n");
}

enum { OPT_CHECK = 256 };

int tr_cmd_up(int argc, char **argv)
{
    static const struct option opts[] = {
        {"listen", required_argument, NULL, 'l'}, {"workers", required_argument, NULL, 'w'},
        {"check", no_argument, NULL, OPT_CHECK},  TR_CLI_RUN_OPTIONS,
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0}};
    const char *listen = NULL, *level = NULL, *format = NULL;
    long workers = 0;
    uint64_t grace = 60000;
    bool check = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "l:w:h", opts, NULL)) != -1) {
        bool ok = true;
        switch (c) {
        case 'l':
            listen = optarg;
            break;
        case 'w':
            ok = tr_cli_int("up", "workers", optarg, 1, 256, &workers);
            break;
        case OPT_CHECK:
            check = true;
            break;
        case 'h':
            usage(stdout);
            return TR_EXIT_OK;
        default:
            if (tr_cli_run_option("up", c, optarg, &grace, &level, &format, &ok)) break;
            fprintf(stderr, "Try 'trellis up --help'.\n");
            return TR_EXIT_USAGE;
        }
        if (!ok) return TR_EXIT_USAGE;
    }
    up_t up = {.topology_path = optind < argc ? argv[optind] : "topology.yaml"};
    if (optind + 1 < argc)
        return tr_cli_usage_error("up", "unexpected argument '%s'", argv[optind + 1]);
    if (!tr_cli_log_init("up", level, format, "up")) return TR_EXIT_USAGE;
    char err[1024];
    int e = tr_topology_load(up.topology_path, NULL, &up.topo, err, sizeof(err));
    if (e) {
        fprintf(stderr, "trellis up: %s\n", err);
        return e == TR_ECONFIG || e == TR_EPARSE ? TR_EXIT_USAGE : TR_EXIT_FAIL;
    }
    up.cp = tr_topology_control_plane(up.topo);
    if (tr_saga_check(tr_topology_config(up.topo), tr_topology_sagas(up.topo))) {
        fprintf(stderr, "trellis up: %s\n", tr_config_error(tr_topology_config(up.topo)));
        tr_topology_free(up.topo);
        return TR_EXIT_USAGE;
    }
    size_t n = sizeof(up.self_exe);
    if (uv_exepath(up.self_exe, &n) != 0)
        snprintf(up.self_exe, sizeof(up.self_exe), "/proc/self/exe");
    up.hub = tr_discovery_hub_new();
    up.api_fd = up.otlp_fd = up.zipkin_fd = -1;
    int rc = TR_EXIT_FAIL;
    if (check) {
        e = open_gateway(&up, "127.0.0.1:0", 1, err, sizeof(err));
        if (e) {
            fprintf(stderr, "trellis up: gateway: %s\n", err);
            rc = TR_EXIT_USAGE;
        } else {
            json_t *eff = tr_topology_effective(up.topo);
            char *text = json_dumps(eff, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
            printf("%s\n", text);
            free(text);
            json_decref(eff);
            fprintf(stderr, "%s: ok\n", up.topology_path);
            rc = TR_EXIT_OK;
        }
        goto out;
    }
    /* Everything that can be refused is checked before anything is created. */
    if ((e = open_gateway(&up, listen, (int)workers, err, sizeof(err)))) {
        fprintf(stderr, "trellis up: gateway: %s\n", err);
        rc = e == TR_ECONFIG || e == TR_EPARSE ? TR_EXIT_USAGE : TR_EXIT_FAIL;
        goto out;
    }
    if (bind_addr(up.cp->listen, &up.api_fd, up.api_addr, sizeof(up.api_addr)) ||
        (up.cp->otlp && bind_addr(up.cp->otlp, &up.otlp_fd, up.otlp_addr, sizeof(up.otlp_addr))) ||
        (up.cp->zipkin &&
         bind_addr(up.cp->zipkin, &up.zipkin_fd, up.zipkin_addr, sizeof(up.zipkin_addr))))
        goto out;
    if ((e = tr_mkdirs(up.cp->data_dir))) {
        fprintf(stderr, "trellis up: control_plane.data_dir: cannot create %s: %s\n",
                up.cp->data_dir, tr_strerror(e));
        goto out;
    }
    tr_logs_options_t lo = {.data_dir = up.cp->data_dir};
    if (!(up.logs = tr_logs_open(&lo, err, sizeof(err)))) {
        fprintf(stderr, "trellis up: logs: %s\n", err);
        goto out;
    }
    tr_logs_attach_logger(up.logs, "trellis", "up");
    build_services(&up);
    up.tty = isatty(STDERR_FILENO) && !getenv("NO_COLOR");
    tr_metrics_register_process(tr_metrics_default());
    tr_runtime_options_t ro = {.workers = tr_gateway_workers(up.gw),
                               .grace_ms = grace,
                               .on_start = on_worker_start,
                               .on_stop = on_worker_stop,
                               .data = &up};
    e = tr_runtime_run(&ro);
    rc = e ? TR_EXIT_FAIL : TR_EXIT_OK;
    tr_log_info("up: stopped");
out:
    if (up.exporter) tr_exporter_stop(up.exporter, 2000);
    if (up.gw) tr_gateway_close(up.gw);
    if (up.logs) tr_logs_close(up.logs);
    free_services(&up);
    tr_discovery_hub_free(up.hub);
    tr_topology_free(up.topo);
    return rc;
}
