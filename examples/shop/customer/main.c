/* The shop's customer service: customer profiles and their addresses (examples/shop/API.md). */
#include <trellis/app.h>

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shop.h"

#define EMAIL_MAX    254 /* RFC 5321's limit on a forward path */
#define NAME_MAX_LEN 200
#define LINE_MAX_LEN 200
#define CITY_MAX     100
#define POSTAL_MAX   20
#define LIST_MAX     100

/* Emails are stored lower-case, so UNIQUE makes them unique case-insensitively. At most one
 * default address per customer, enforced by the partial unique index as well as by the
 * handler's transaction. */
static const char *const migrations[] = {
    "CREATE TABLE customer ("
    "  id INTEGER PRIMARY KEY,"
    "  email TEXT NOT NULL UNIQUE,"
    "  name TEXT NOT NULL,"
    "  created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')));"
    "CREATE TABLE address ("
    "  id INTEGER PRIMARY KEY,"
    "  customer_id INTEGER NOT NULL REFERENCES customer(id) ON DELETE CASCADE,"
    "  line1 TEXT NOT NULL,"
    "  city TEXT NOT NULL,"
    "  postal_code TEXT NOT NULL,"
    "  country TEXT NOT NULL CHECK (length(country) = 2),"
    "  is_default INTEGER NOT NULL DEFAULT 0 CHECK (is_default IN (0, 1)));"
    "CREATE INDEX address_customer ON address(customer_id);"
    "CREATE UNIQUE INDEX address_one_default ON address(customer_id) WHERE is_default = 1;",
    NULL};

#define CUSTOMER_SELECT "SELECT id, email, name, created_at FROM customer"
/* A column named *_json comes back parsed, so is_default is a JSON boolean. */
#define ADDRESS_SELECT                                                                             \
    "SELECT id, line1, city, postal_code, country,"                                                \
    " CASE WHEN is_default THEN 'true' ELSE 'false' END AS is_default_json FROM address"

/* ---- validation helpers ---- */

static void invalid(tr_ctx_t *ctx, const char *what, const char *field, const char *why)
{
    char slug[32], title[32];
    snprintf(slug, sizeof(slug), "invalid-%s", what);
    snprintf(title, sizeof(title), "Invalid %s", what);
    tr_ctx_problem(ctx, 422, slug, title, "\"%s\" %s", field, why);
}

/* The body as a JSON object, or NULL after replying 422. */
static json_t *body_object(tr_ctx_t *ctx, const char *what)
{
    json_t *body = tr_ctx_body(ctx);
    if (json_is_object(body)) return body;
    char slug[32];
    snprintf(slug, sizeof(slug), "invalid-%s", what);
    tr_ctx_problem(ctx, 422, slug, "Invalid body", "the body must be a JSON object");
    return NULL;
}

/* Field `name` as a non-blank string of at most `max` bytes, or NULL after replying 422. */
static const char *get_string(tr_ctx_t *ctx, const char *what, json_t *body, const char *name,
                              size_t max)
{
    json_t *v = json_object_get(body, name);
    const char *s = json_string_value(v);
    if (!v) {
        invalid(ctx, what, name, "is required");
        return NULL;
    }
    char why[96];
    snprintf(why, sizeof(why), "must be a non-empty string of at most %zu bytes", max);
    if (!s || !*s || json_string_length(v) > max || strlen(s) != json_string_length(v) ||
        strspn(s, " \t\r\n") == strlen(s)) {
        invalid(ctx, what, name, why);
        return NULL;
    }
    return s;
}

/* Refuses fields other than `allowed` (NULL-terminated) so that a client never believes it
 * changed something it cannot. */
static bool only_fields(tr_ctx_t *ctx, const char *what, json_t *body, const char *const *allowed)
{
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v)
    {
        bool ok = false;
        for (size_t i = 0; allowed[i] && !ok; i++)
            ok = !strcmp(key, allowed[i]);
        if (!ok) {
            invalid(ctx, what, key, "is not a field that can be set here");
            return false;
        }
    }
    return true;
}

/* One '@', a non-empty local part, a domain with a dot inside it, no spaces or controls,
 * at most EMAIL_MAX bytes. Deliberately simple: the real check is a confirmation mail. */
static bool valid_email(const char *s)
{
    size_t n = strlen(s);
    const char *at = strchr(s, '@');
    if (n > EMAIL_MAX || !at || at == s || strchr(at + 1, '@')) return false;
    const char *domain = at + 1;
    size_t dn = strlen(domain);
    if (dn < 3 || !strchr(domain, '.') || domain[0] == '.' || domain[dn - 1] == '.' ||
        strstr(domain, ".."))
        return false;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f) return false;
    return true;
}

/* A copy of `s` in lower case (ASCII), memory of the ctx. */
static char *lower(tr_ctx_t *ctx, const char *s)
{
    size_t n = strlen(s);
    char *out = tr_ctx_alloc(ctx, n + 1);
    for (size_t i = 0; i < n; i++)
        out[i] = (char)tolower((unsigned char)s[i]);
    return out;
}

/* The customer id of the path, or false after replying 400. */
static bool path_id(tr_ctx_t *ctx, const char *param, int64_t *id)
{
    if (tr_ctx_param_id(ctx, param, id)) return true;
    tr_ctx_problem(ctx, 400, "bad-id", "Bad id", "\"%s\" must be a positive integer", param);
    return false;
}

static void not_found(tr_ctx_t *ctx, const char *what, int64_t id)
{
    tr_ctx_problem(ctx, 404, "not-found", "Not found", "%s %lld does not exist", what,
                   (long long)id);
}

static void internal(tr_ctx_t *ctx, const char *what)
{
    tr_ctx_problem(ctx, 500, "internal", "Internal error", "cannot %s", what);
}

/* The customer id of the path if it exists; otherwise false after replying 400 or 404. */
static bool existing_customer(tr_ctx_t *ctx, int64_t *id)
{
    if (!path_id(ctx, "id", id)) return false;
    if (tr_db_int(tr_ctx_db(ctx), 0, "SELECT COUNT(*) FROM customer WHERE id = ?", "i", *id))
        return true;
    not_found(ctx, "customer", *id);
    return false;
}

static json_t *load_addresses(tr_db_t *db, int64_t customer_id)
{
    return tr_db_rows(db, NULL, ADDRESS_SELECT " WHERE customer_id = ? ORDER BY id", "i",
                      customer_id);
}

/* ---- customers ---- */

static void create_customer(tr_ctx_t *ctx, void *data)
{
    (void)data;
    static const char *const fields[] = {"email", "name", NULL};
    json_t *body = body_object(ctx, "customer");
    const char *email, *name;
    if (!body || !only_fields(ctx, "customer", body, fields) ||
        !(email = get_string(ctx, "customer", body, "email", EMAIL_MAX)) ||
        !(name = get_string(ctx, "customer", body, "name", NAME_MAX_LEN)))
        return;
    if (!valid_email(email)) {
        invalid(ctx, "customer", "email",
                "must be an address like name@example.com (one @, a domain with a dot)");
        return;
    }
    email = lower(ctx, email);
    tr_db_t *db = tr_ctx_db(ctx);
    int rc = tr_db_run(db, "INSERT INTO customer (email, name) VALUES (?, ?)", "ss", email, name);
    if (rc == TR_EEXISTS) {
        tr_ctx_problem(ctx, 409, "email-taken", "Email taken",
                       "a customer with email \"%s\" exists already", email);
        return;
    }
    if (rc < 0) {
        internal(ctx, "store the customer");
        return;
    }
    int64_t id = tr_db_last_id(db);
    json_t *c = tr_db_row(db, NULL, CUSTOMER_SELECT " WHERE id = ?", "i", id);
    if (!c) {
        internal(ctx, "read the customer back");
        return;
    }
    char location[64];
    snprintf(location, sizeof(location), "/customers/%lld", (long long)id);
    tr_ctx_set_header(ctx, "location", location);
    tr_ctx_reply_json(ctx, 201, c);
}

static void get_customer(tr_ctx_t *ctx, void *data)
{
    (void)data;
    int64_t id;
    if (!path_id(ctx, "id", &id)) return;
    tr_db_t *db = tr_ctx_db(ctx);
    json_t *c = tr_db_row(db, NULL, CUSTOMER_SELECT " WHERE id = ?", "i", id);
    if (!c) {
        not_found(ctx, "customer", id);
        return;
    }
    json_t *addresses = load_addresses(db, id);
    if (!addresses) {
        json_decref(c);
        internal(ctx, "read the addresses");
        return;
    }
    json_object_set_new(c, "addresses", addresses);
    tr_ctx_reply_json(ctx, 200, c);
}

static void list_customers(tr_ctx_t *ctx, void *data)
{
    (void)data;
    const char *email = tr_ctx_query(ctx, "email");
    email = email && *email ? lower(ctx, email) : NULL;
    json_t *items = tr_db_rows(tr_ctx_db(ctx), NULL,
                               CUSTOMER_SELECT " WHERE ?1 IS NULL OR email = ?1"
                                               " ORDER BY created_at DESC, id DESC LIMIT ?2",
                               "si", email, (int64_t)LIST_MAX);
    if (!items) {
        internal(ctx, "read the customers");
        return;
    }
    tr_ctx_reply_json(ctx, 200, json_pack("{so}", "items", items));
}

static void patch_customer(tr_ctx_t *ctx, void *data)
{
    (void)data;
    static const char *const fields[] = {"name", NULL};
    int64_t id;
    if (!existing_customer(ctx, &id)) return;
    json_t *body = body_object(ctx, "customer");
    const char *name;
    if (!body || !only_fields(ctx, "customer", body, fields) ||
        !(name = get_string(ctx, "customer", body, "name", NAME_MAX_LEN)))
        return;
    tr_db_t *db = tr_ctx_db(ctx);
    if (tr_db_run(db, "UPDATE customer SET name = ? WHERE id = ?", "si", name, id) < 0) {
        internal(ctx, "update the customer");
        return;
    }
    json_t *c = tr_db_row(db, NULL, CUSTOMER_SELECT " WHERE id = ?", "i", id);
    if (!c) {
        internal(ctx, "read the customer back");
        return;
    }
    tr_ctx_reply_json(ctx, 200, c);
}

/* ---- addresses ---- */

typedef struct address_s {
    const char *line1, *city, *postal_code;
    char country[3];
    bool is_default;
} address_t;

/* Validates an address body into `a`; false after replying 422. */
static bool parse_address(tr_ctx_t *ctx, json_t *body, address_t *a)
{
    static const char *const fields[] = {"line1",   "city",       "postal_code",
                                         "country", "is_default", NULL};
    if (!only_fields(ctx, "address", body, fields) ||
        !(a->line1 = get_string(ctx, "address", body, "line1", LINE_MAX_LEN)) ||
        !(a->city = get_string(ctx, "address", body, "city", CITY_MAX)) ||
        !(a->postal_code = get_string(ctx, "address", body, "postal_code", POSTAL_MAX)))
        return false;
    const char *c = json_string_value(json_object_get(body, "country"));
    if (!c || strlen(c) != 2 || !isalpha((unsigned char)c[0]) || !isalpha((unsigned char)c[1])) {
        invalid(ctx, "address", "country", "must be two letters (ISO 3166-1 alpha-2, \"DE\")");
        return false;
    }
    a->country[0] = (char)toupper((unsigned char)c[0]);
    a->country[1] = (char)toupper((unsigned char)c[1]);
    a->country[2] = '\0';
    json_t *d = json_object_get(body, "is_default");
    if (d && !json_is_boolean(d)) {
        invalid(ctx, "address", "is_default", "must be true or false");
        return false;
    }
    a->is_default = json_is_true(d);
    return true;
}

/* Inserts the address in one transaction with clearing the old default, so a customer
 * never has two defaults or, while switching, none. Returns the new id or a negative error. */
static int64_t insert_address(tr_db_t *db, int64_t customer_id, const address_t *a)
{
    if (tr_db_begin(db)) return TR_EIO;
    int rc = 0;
    if (a->is_default)
        rc = tr_db_run(db, "UPDATE address SET is_default = 0 WHERE customer_id = ?", "i",
                       customer_id);
    if (rc >= 0)
        rc = tr_db_run(db,
                       "INSERT INTO address (customer_id, line1, city, postal_code, country,"
                       " is_default) VALUES (?, ?, ?, ?, ?, ?)",
                       "issssi", customer_id, a->line1, a->city, a->postal_code, a->country,
                       (int64_t)a->is_default);
    int64_t id = tr_db_last_id(db);
    if (rc < 0 || tr_db_commit(db)) {
        tr_db_rollback(db);
        return rc < 0 ? rc : TR_EIO;
    }
    return id;
}

static void create_address(tr_ctx_t *ctx, void *data)
{
    (void)data;
    int64_t customer_id;
    address_t a;
    if (!existing_customer(ctx, &customer_id)) return;
    json_t *body = body_object(ctx, "address");
    if (!body || !parse_address(ctx, body, &a)) return;
    tr_db_t *db = tr_ctx_db(ctx);
    int64_t id = insert_address(db, customer_id, &a);
    /* The customer may have been deleted in between: the foreign key says so. */
    if (id == TR_ESTATE) {
        not_found(ctx, "customer", customer_id);
        return;
    }
    if (id < 0) {
        internal(ctx, "store the address");
        return;
    }
    json_t *row = tr_db_row(db, NULL, ADDRESS_SELECT " WHERE id = ?", "i", id);
    if (!row) {
        internal(ctx, "read the address back");
        return;
    }
    char location[96];
    snprintf(location, sizeof(location), "/customers/%lld/addresses/%lld", (long long)customer_id,
             (long long)id);
    tr_ctx_set_header(ctx, "location", location);
    tr_ctx_reply_json(ctx, 201, row);
}

static void list_addresses(tr_ctx_t *ctx, void *data)
{
    (void)data;
    int64_t customer_id;
    if (!existing_customer(ctx, &customer_id)) return;
    json_t *rows = load_addresses(tr_ctx_db(ctx), customer_id);
    if (!rows) {
        internal(ctx, "read the addresses");
        return;
    }
    tr_ctx_reply_json(ctx, 200, rows);
}

static void delete_address(tr_ctx_t *ctx, void *data)
{
    (void)data;
    int64_t customer_id, id;
    if (!path_id(ctx, "id", &customer_id) || !path_id(ctx, "address_id", &id)) return;
    int rc = tr_db_run(tr_ctx_db(ctx), "DELETE FROM address WHERE id = ? AND customer_id = ?", "ii",
                       id, customer_id);
    if (rc < 0) {
        internal(ctx, "delete the address");
        return;
    }
    if (rc == 0) {
        tr_ctx_problem(ctx, 404, "not-found", "Not found", "customer %lld has no address %lld",
                       (long long)customer_id, (long long)id);
        return;
    }
    tr_ctx_reply_json(ctx, 204, NULL);
}

/* ---- main ---- */

static int setup(tr_app_t *app, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    tr_app_route(app, "POST", "/customers", create_customer, NULL);
    tr_app_route(app, "GET", "/customers", list_customers, NULL);
    tr_app_route(app, "GET", "/customers/{id}", get_customer, NULL);
    tr_app_route(app, "PATCH", "/customers/{id}", patch_customer, NULL);
    tr_app_route(app, "POST", "/customers/{id}/addresses", create_address, NULL);
    tr_app_route(app, "GET", "/customers/{id}/addresses", list_addresses, NULL);
    tr_app_route(app, "DELETE", "/customers/{id}/addresses/{address_id}", delete_address, NULL);
    return 0;
}

int main(int argc, char **argv)
{
    static const shop_service_t service = {
        .name = "customer",
        .about = "The shop's customer service: customer profiles and their addresses over HTTP\n"
                 "(examples/shop/API.md), stored in SQLite.\n",
        .migrations = migrations,
        .setup = setup,
    };
    return shop_main(&service, argc, argv);
}
