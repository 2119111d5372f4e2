/* The shop's catalog service: products and their categories (examples/shop/API.md). */
#include <trellis/app.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shop.h"

#define SKU_MAX         64
#define NAME_MAX_LEN    200
#define DESCRIPTION_MAX 4000
#define PRICE_MAX       100000000 /* one million euros, in cents */
#define LIMIT_DEFAULT   20
#define LIMIT_MAX       100
#define OFFSET_MAX      1000000000

/* Schema first, then the seed data in its own migration: migrations run once per database
 * under a write lock, so two replicas starting together seed exactly once. */
static const char *const migrations[] = {
    "CREATE TABLE category ("
    "  id INTEGER PRIMARY KEY,"
    "  slug TEXT NOT NULL UNIQUE,"
    "  name TEXT NOT NULL);"
    "CREATE TABLE product ("
    "  id INTEGER PRIMARY KEY,"
    "  sku TEXT NOT NULL UNIQUE,"
    "  name TEXT NOT NULL,"
    "  description TEXT NOT NULL DEFAULT '',"
    "  category_id INTEGER NOT NULL REFERENCES category(id),"
    "  price_cents INTEGER NOT NULL CHECK (price_cents >= 0),"
    "  currency TEXT NOT NULL DEFAULT 'EUR');"
    "CREATE INDEX product_category ON product(category_id);",

    "INSERT INTO category (id, slug, name) VALUES"
    "  (1, 'books', 'Books'), (2, 'games', 'Games'), (3, 'coffee', 'Coffee');"
    "INSERT INTO product (id, sku, name, description, category_id, price_cents) VALUES"
    "  (1, 'SKU-001', 'The Pragmatic Programmer',"
    "   '20th anniversary edition of the classic on the craft of software.', 1, 4299),"
    "  (2, 'SKU-002', 'Designing Data-Intensive Applications',"
    "   'Reliable, scalable and maintainable systems, from storage engines to streams.', 1, 4999),"
    "  (3, 'SKU-003', 'The C Programming Language',"
    "   'Kernighan and Ritchie, second edition: the language from its authors.', 1, 5499),"
    "  (4, 'SKU-004', 'Site Reliability Engineering',"
    "   'How Google runs production systems, from toil budgets to postmortems.', 1, 3999),"
    "  (5, 'SKU-005', 'Catan',"
    "   'Trade, build and settle the island; 3 to 4 players, 60 minutes.', 2, 3999),"
    "  (6, 'SKU-006', 'Ticket to Ride: Europe',"
    "   'Claim railway routes across Europe; 2 to 5 players.', 2, 4499),"
    "  (7, 'SKU-007', 'Pandemic',"
    "   'A cooperative race to cure four diseases before they spread.', 2, 3799),"
    "  (8, 'SKU-008', 'Carcassonne',"
    "   'Lay tiles to build a medieval landscape of cities, roads and fields.', 2, 2999),"
    "  (9, 'SKU-009', 'Ethiopia Yirgacheffe, 250 g',"
    "   'Washed single origin, light roast: jasmine, lemon and black tea.', 3, 1290),"
    "  (10, 'SKU-010', 'Colombia Huila, 250 g',"
    "   'Medium roast with notes of caramel, red apple and cocoa.', 3, 1150),"
    "  (11, 'SKU-011', 'Espresso Blend, 1 kg',"
    "   'Brazil and Guatemala, dark roast, for a thick crema.', 3, 3290),"
    "  (12, 'SKU-012', 'Kenya Nyeri AA, 250 g',"
    "   'Limited lot: blackcurrant, grapefruit and a syrupy body.', 3, 1690);",
    NULL};

/* Every product read goes through this join so the reply carries the category's slug. */
#define PRODUCT_SELECT                                                                             \
    "SELECT p.id, p.sku, p.name, p.description, p.category_id, c.slug AS category,"                \
    " p.price_cents, p.currency FROM product p JOIN category c ON c.id = p.category_id"

/* ---- validation helpers ---- */

/* Parses `s` as a whole decimal integer in [min, max]; false when it is not one. */
static bool parse_int(const char *s, long long min, long long max, long long *out)
{
    if (!s || !*s || strlen(s) > 18) return false;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (*end || v < min || v > max || (*s != '-' && (*s < '0' || *s > '9'))) return false;
    *out = v;
    return true;
}

/* A query parameter as an integer in [min, max] (`def` when absent). Replies 400 and
 * returns false when it is present and not one. */
static bool query_int(tr_ctx_t *ctx, const char *name, long long min, long long max, long long def,
                      long long *out)
{
    const char *s = tr_ctx_query(ctx, name);
    *out = def;
    if (!s) return true;
    if (parse_int(s, min, max, out)) return true;
    tr_ctx_problem(ctx, 400, "bad-query", "Bad query parameter",
                   "\"%s\" must be an integer from %lld to %lld", name, min, max);
    return false;
}

/* The body as a JSON object, or NULL after replying 422. */
static json_t *body_object(tr_ctx_t *ctx)
{
    json_t *body = tr_ctx_body(ctx);
    if (json_is_object(body)) return body;
    tr_ctx_problem(ctx, 422, "invalid-product", "Invalid product",
                   "the body must be a JSON object");
    return NULL;
}

/* Replies 422 naming `field` and why. */
static void invalid(tr_ctx_t *ctx, const char *field, const char *why)
{
    tr_ctx_problem(ctx, 422, "invalid-product", "Invalid product", "\"%s\" %s", field, why);
}

/* How a string field may be: required or optional (absent or null: *out NULL), and whether
 * it may be empty (a description may; names and SKUs may not). */
enum { REQUIRED = 0, OPTIONAL = 1, MAY_BE_EMPTY = 2 };

/* Field `name` of `body` as a string of at most max bytes, as `how` allows. Replies 422 and
 * returns false otherwise. */
static bool get_string(tr_ctx_t *ctx, json_t *body, const char *name, size_t max, int how,
                       const char **out)
{
    json_t *v = json_object_get(body, name);
    *out = NULL;
    if (!v || json_is_null(v)) {
        if (how & OPTIONAL) return true;
        invalid(ctx, name, "is required");
        return false;
    }
    const char *s = json_string_value(v);
    size_t min = how & MAY_BE_EMPTY ? 0 : 1;
    if (!s || json_string_length(v) < min || json_string_length(v) > max ||
        strlen(s) != json_string_length(v)) {
        char why[96];
        snprintf(why, sizeof(why), "must be a %sstring of at most %zu bytes",
                 min ? "non-empty " : "", max);
        invalid(ctx, name, why);
        return false;
    }
    if (min && strspn(s, " \t\r\n") == strlen(s)) {
        invalid(ctx, name, "must not be blank");
        return false;
    }
    *out = s;
    return true;
}

/* Field `name` as an integer in [min, max] (optional: *present false when absent). */
static bool get_int(tr_ctx_t *ctx, json_t *body, const char *name, long long min, long long max,
                    bool optional, bool *present, int64_t *out)
{
    json_t *v = json_object_get(body, name);
    *present = v != NULL;
    if (!v && optional) return true;
    if (!v) {
        invalid(ctx, name, "is required");
        return false;
    }
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        char why[96];
        snprintf(why, sizeof(why), "must be an integer from %lld to %lld", min, max);
        invalid(ctx, name, why);
        return false;
    }
    *out = (int64_t)json_integer_value(v);
    return true;
}

/* A path's product id, or false after replying 400. */
static bool product_id(tr_ctx_t *ctx, int64_t *id)
{
    if (tr_ctx_param_id(ctx, "id", id)) return true;
    tr_ctx_problem(ctx, 400, "bad-id", "Bad product id", "the id must be a positive integer");
    return false;
}

static json_t *load_product(tr_db_t *db, int64_t id)
{
    return tr_db_row(db, NULL, PRODUCT_SELECT " WHERE p.id = ?", "i", id);
}

static void reply_product(tr_ctx_t *ctx, int status, int64_t id)
{
    json_t *p = load_product(tr_ctx_db(ctx), id);
    if (!p) {
        tr_ctx_problem(ctx, 500, "internal", "Internal error", "product %lld vanished",
                       (long long)id);
        return;
    }
    tr_ctx_reply_json(ctx, status, p);
}

/* ---- handlers ---- */

static void list_categories(tr_ctx_t *ctx, void *data)
{
    (void)data;
    json_t *rows =
        tr_db_rows(tr_ctx_db(ctx), NULL, "SELECT id, slug, name FROM category ORDER BY id", "");
    if (!rows) {
        tr_ctx_problem(ctx, 500, "internal", "Internal error", "cannot read the categories");
        return;
    }
    tr_ctx_reply_json(ctx, 200, rows);
}

/* `q` with LIKE's wildcards and the escape character escaped (memory of the ctx). */
static const char *like_escape(tr_ctx_t *ctx, const char *q)
{
    char *out = tr_ctx_alloc(ctx, 2 * strlen(q) + 1), *o = out;
    for (const char *p = q; *p; p++) {
        if (*p == '%' || *p == '_' || *p == '\\') *o++ = '\\';
        *o++ = *p;
    }
    *o = '\0';
    return out;
}

/* The filters are bound as NULL when absent, so one cached statement serves every query. */
#define PRODUCT_FILTER                                                                             \
    " WHERE (?1 IS NULL OR p.name LIKE '%' || ?1 || '%' ESCAPE '\\')"                              \
    " AND (?2 IS NULL OR c.slug = ?2)"

static void list_products(tr_ctx_t *ctx, void *data)
{
    (void)data;
    long long limit, offset;
    if (!query_int(ctx, "limit", 1, LIMIT_MAX, LIMIT_DEFAULT, &limit) ||
        !query_int(ctx, "offset", 0, OFFSET_MAX, 0, &offset))
        return;
    const char *q = tr_ctx_query(ctx, "q");
    const char *category = tr_ctx_query(ctx, "category");
    q = q && *q ? like_escape(ctx, q) : NULL;
    if (category && !*category) category = NULL;
    tr_db_t *db = tr_ctx_db(ctx);
    int err = 0;
    json_t *items =
        tr_db_rows(db, &err, PRODUCT_SELECT PRODUCT_FILTER " ORDER BY p.id LIMIT ?3 OFFSET ?4",
                   "ssii", q, category, (int64_t)limit, (int64_t)offset);
    int64_t total = tr_db_int(db, -1,
                              "SELECT COUNT(*) FROM product p JOIN category c"
                              " ON c.id = p.category_id" PRODUCT_FILTER,
                              "ss", q, category);
    if (!items || total < 0) {
        json_decref(items);
        tr_ctx_problem(ctx, 500, "internal", "Internal error", "cannot read the products");
        return;
    }
    tr_ctx_reply_json(ctx, 200, json_pack("{so,sI}", "items", items, "total", (json_int_t)total));
}

static void get_product(tr_ctx_t *ctx, void *data)
{
    (void)data;
    int64_t id;
    if (!product_id(ctx, &id)) return;
    json_t *p = load_product(tr_ctx_db(ctx), id);
    if (!p) {
        tr_ctx_problem(ctx, 404, "not-found", "No such product", "product %lld does not exist",
                       (long long)id);
        return;
    }
    tr_ctx_reply_json(ctx, 200, p);
}

/* Inserts the validated product and replies 201, 409 or 422. */
static void insert_product(tr_ctx_t *ctx, const char *sku, const char *name,
                           const char *description, int64_t category_id, int64_t price)
{
    tr_db_t *db = tr_ctx_db(ctx);
    int rc = tr_db_run(db,
                       "INSERT INTO product (sku, name, description, category_id, price_cents)"
                       " VALUES (?, ?, ?, ?, ?)",
                       "sssii", sku, name, description ? description : "", category_id, price);
    if (rc == TR_EEXISTS) {
        tr_ctx_problem(ctx, 409, "duplicate-sku", "Duplicate SKU",
                       "a product with sku \"%s\" exists already", sku);
        return;
    }
    if (rc == TR_ESTATE) {
        invalid(ctx, "category_id", "names no category");
        return;
    }
    if (rc < 0) {
        tr_ctx_problem(ctx, 500, "internal", "Internal error", "cannot store the product");
        return;
    }
    int64_t id = tr_db_last_id(db);
    char location[64];
    snprintf(location, sizeof(location), "/products/%lld", (long long)id);
    tr_ctx_set_header(ctx, "location", location);
    reply_product(ctx, 201, id);
}

static void create_product(tr_ctx_t *ctx, void *data)
{
    (void)data;
    json_t *body = body_object(ctx);
    const char *sku, *name, *description;
    int64_t category_id, price;
    bool present;
    if (!body || !get_string(ctx, body, "sku", SKU_MAX, REQUIRED, &sku) ||
        !get_string(ctx, body, "name", NAME_MAX_LEN, REQUIRED, &name) ||
        !get_string(ctx, body, "description", DESCRIPTION_MAX, OPTIONAL | MAY_BE_EMPTY,
                    &description) ||
        !get_int(ctx, body, "category_id", 1, INT64_MAX, false, &present, &category_id) ||
        !get_int(ctx, body, "price_cents", 0, PRICE_MAX, false, &present, &price))
        return;
    if (!tr_db_int(tr_ctx_db(ctx), 0, "SELECT COUNT(*) FROM category WHERE id = ?", "i",
                   category_id)) {
        char why[64];
        snprintf(why, sizeof(why), "names no category (%lld)", (long long)category_id);
        invalid(ctx, "category_id", why);
        return;
    }
    insert_product(ctx, sku, name, description, category_id, price);
}

/* PATCH changes only name, description and price; any other field (sku, category_id, …)
 * is refused rather than silently ignored, so a client never believes it changed it. */
static bool only_patchable_fields(tr_ctx_t *ctx, json_t *body)
{
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v)
    {
        if (strcmp(key, "name") && strcmp(key, "description") && strcmp(key, "price_cents")) {
            invalid(ctx, key, "cannot be changed (name, description and price_cents can)");
            return false;
        }
        if (json_is_null(v)) {
            invalid(ctx, key, "must not be null");
            return false;
        }
    }
    return true;
}

static void patch_product(tr_ctx_t *ctx, void *data)
{
    (void)data;
    int64_t id, price = 0;
    if (!product_id(ctx, &id)) return;
    tr_db_t *db = tr_ctx_db(ctx);
    if (!tr_db_int(db, 0, "SELECT COUNT(*) FROM product WHERE id = ?", "i", id)) {
        tr_ctx_problem(ctx, 404, "not-found", "No such product", "product %lld does not exist",
                       (long long)id);
        return;
    }
    json_t *body = body_object(ctx);
    const char *name, *description;
    bool has_price;
    if (!body || !only_patchable_fields(ctx, body)) return;
    if (!get_string(ctx, body, "name", NAME_MAX_LEN, OPTIONAL, &name) ||
        !get_string(ctx, body, "description", DESCRIPTION_MAX, OPTIONAL | MAY_BE_EMPTY,
                    &description) ||
        !get_int(ctx, body, "price_cents", 0, PRICE_MAX, true, &has_price, &price))
        return;
    int rc = tr_db_run(db,
                       "UPDATE product SET name = COALESCE(?1, name),"
                       " description = COALESCE(?2, description),"
                       " price_cents = CASE WHEN ?3 THEN ?4 ELSE price_cents END WHERE id = ?5",
                       "ssiii", name, description, (int64_t)has_price, price, id);
    if (rc < 0) {
        tr_ctx_problem(ctx, 500, "internal", "Internal error", "cannot update the product");
        return;
    }
    reply_product(ctx, 200, id);
}

/* ---- main ---- */

static int setup(tr_app_t *app, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    tr_app_route(app, "GET", "/categories", list_categories, NULL);
    tr_app_route(app, "GET", "/products", list_products, NULL);
    tr_app_route(app, "POST", "/products", create_product, NULL);
    tr_app_route(app, "GET", "/products/{id}", get_product, NULL);
    tr_app_route(app, "PATCH", "/products/{id}", patch_product, NULL);
    return 0;
}

int main(int argc, char **argv)
{
    static const shop_service_t service = {
        .name = "catalog",
        .about = "The shop's catalog service: products and categories over HTTP\n"
                 "(examples/shop/API.md), stored in SQLite and seeded with 12 products.\n",
        .migrations = migrations,
        .setup = setup,
    };
    return shop_main(&service, argc, argv);
}
