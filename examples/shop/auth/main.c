/*
 * The shop's demo identity provider: signs RS256 access tokens for the gateway to check,
 * and publishes its public key as a JWKS document. The key pair is made at first start in
 * the data directory (never shipped), and every replica uses the same one.
 */
#include <trellis/app.h>
#include <trellis/log.h>

#include <errno.h>
#include <fcntl.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "shop.h"

#define ISSUER       "https://auth.shop.local"
#define AUDIENCE     "shop-api"
#define TOKEN_TTL_S  3600
#define DEMO_SECRET  "demo"
#define USERNAME_MAX 64

typedef struct auth_s {
    EVP_PKEY *key;
    char kid[17];
    char *jwks; /* the JWKS document, made once */
} auth_t;

/* base64url without padding (RFC 7515 §2) of n bytes. Returns a malloc'd string. */
static char *b64url(const unsigned char *in, size_t n)
{
    char *out = malloc(4 * ((n + 2) / 3) + 1);
    int len = EVP_EncodeBlock((unsigned char *)out, in, (int)n);
    for (int i = 0; i < len; i++) {
        if (out[i] == '+') out[i] = '-';
        if (out[i] == '/') out[i] = '_';
    }
    while (len > 0 && out[len - 1] == '=')
        len--;
    out[len] = '\0';
    return out;
}

static char *b64url_str(const char *s)
{
    return b64url((const unsigned char *)s, strlen(s));
}

/* Reads the key at path, or makes one and publishes it there atomically (link(2) fails
 * when another replica won the race; then its key is read). */
static EVP_PKEY *load_or_make_key(const char *path)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        FILE *f = fopen(path, "r");
        if (f) {
            EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
            fclose(f);
            return k;
        }
        EVP_PKEY *k = EVP_RSA_gen(2048);
        if (!k) return NULL;
        char tmp[1100];
        snprintf(tmp, sizeof(tmp), "%.1024s.%d.tmp", path, (int)getpid());
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        FILE *out = fd >= 0 ? fdopen(fd, "w") : NULL;
        bool ok = out && PEM_write_PrivateKey(out, k, NULL, NULL, 0, NULL, NULL);
        if (out) ok = fclose(out) == 0 && ok;
        bool won = ok && link(tmp, path) == 0;
        unlink(tmp);
        if (won) {
            tr_log_info("auth: made a new signing key", TR_LOG_STR("path", path));
            return k;
        }
        EVP_PKEY_free(k);
        if (!ok) return NULL;
    }
    return NULL;
}

/* kid: the first 8 bytes of SHA-256 over the DER public key, in hex. */
static void make_kid(EVP_PKEY *key, char kid[17])
{
    unsigned char *der = NULL, digest[32];
    int n = i2d_PUBKEY(key, &der);
    EVP_Digest(der, (size_t)n, digest, NULL, EVP_sha256(), NULL);
    OPENSSL_free(der);
    for (int i = 0; i < 8; i++)
        snprintf(kid + 2 * i, 3, "%02x", digest[i]);
}

static char *bn_b64url(EVP_PKEY *key, const char *param)
{
    BIGNUM *bn = NULL;
    if (!EVP_PKEY_get_bn_param(key, param, &bn)) return NULL;
    int n = BN_num_bytes(bn);
    unsigned char *bytes = malloc((size_t)n);
    BN_bn2bin(bn, bytes);
    char *out = b64url(bytes, (size_t)n);
    free(bytes);
    BN_free(bn);
    return out;
}

static char *make_jwks(auth_t *a)
{
    char *n = bn_b64url(a->key, OSSL_PKEY_PARAM_RSA_N);
    char *e = bn_b64url(a->key, OSSL_PKEY_PARAM_RSA_E);
    json_t *doc = json_pack("{s[{ss,ss,ss,ss,ss,ss}]}", "keys", "kty", "RSA", "kid", a->kid, "use",
                            "sig", "alg", "RS256", "n", n ? n : "", "e", e ? e : "");
    char *text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    free(n);
    free(e);
    return text;
}

/* header.payload.signature, RS256. Returns a malloc'd token or NULL. */
static char *sign_token(auth_t *a, const char *sub)
{
    json_t *h = json_pack("{ss,ss,ss}", "alg", "RS256", "typ", "JWT", "kid", a->kid);
    time_t now = time(NULL);
    json_t *p = json_pack("{ss,ss,ss,sI,sI,ss}", "iss", ISSUER, "aud", AUDIENCE, "sub", sub, "iat",
                          (json_int_t)now, "exp", (json_int_t)(now + TOKEN_TTL_S), "scope", "shop");
    char *hs = json_dumps(h, JSON_COMPACT), *ps = json_dumps(p, JSON_COMPACT);
    char *h64 = b64url_str(hs), *p64 = b64url_str(ps);
    size_t len = strlen(h64) + 1 + strlen(p64);
    char *input = malloc(len + 1);
    snprintf(input, len + 1, "%s.%s", h64, p64);
    unsigned char sig[512];
    size_t siglen = sizeof(sig);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    bool ok = EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, a->key) == 1 &&
              EVP_DigestSign(md, sig, &siglen, (const unsigned char *)input, len) == 1;
    EVP_MD_CTX_free(md);
    char *token = NULL;
    if (ok) {
        char *s64 = b64url(sig, siglen);
        size_t tlen = len + 1 + strlen(s64) + 1;
        token = malloc(tlen);
        snprintf(token, tlen, "%s.%s", input, s64);
        free(s64);
    }
    free(input);
    free(h64);
    free(p64);
    free(hs);
    free(ps);
    json_decref(h);
    json_decref(p);
    return token;
}

static void get_jwks(tr_ctx_t *ctx, void *data)
{
    auth_t *a = data;
    tr_ctx_set_header(ctx, "cache-control", "max-age=300");
    tr_ctx_reply(ctx, 200, "application/json", a->jwks, strlen(a->jwks));
}

static bool valid_username(const char *u)
{
    size_t n = u ? strlen(u) : 0;
    if (!n || n > USERNAME_MAX) return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)u[i] < 0x21 || u[i] == '"' || u[i] == '\\') return false;
    return true;
}

/* POST /token {"username", "password"}: the demo accepts any user whose password is "demo". */
static void post_token(tr_ctx_t *ctx, void *data)
{
    auth_t *a = data;
    json_t *body = tr_ctx_body(ctx);
    const char *user = json_string_value(json_object_get(body, "username"));
    const char *pass = json_string_value(json_object_get(body, "password"));
    if (!valid_username(user)) {
        tr_ctx_problem(ctx, 422, "invalid-credentials-request", "Invalid token request",
                       "\"username\" must be a string of 1-%d printable characters without "
                       "spaces or quotes",
                       USERNAME_MAX);
        return;
    }
    if (!pass) {
        tr_ctx_problem(ctx, 422, "invalid-credentials-request", "Invalid token request",
                       "\"password\" must be a string");
        return;
    }
    if (strcmp(pass, DEMO_SECRET) != 0) {
        tr_log_warn("auth: wrong password", TR_LOG_STR("username", user));
        tr_ctx_problem(ctx, 401, "invalid-credentials", "Invalid credentials",
                       "wrong username or password (this demo accepts any username with the "
                       "password \"demo\")");
        return;
    }
    char *token = sign_token(a, user);
    if (!token) {
        tr_ctx_problem(ctx, 500, "signing-failed", "Could not sign the token", "see the logs");
        return;
    }
    tr_log_info("auth: token issued", TR_LOG_STR("sub", user));
    tr_ctx_set_header(ctx, "cache-control", "no-store");
    tr_ctx_reply_json(ctx, 200,
                      json_pack("{ss,ss,si}", "access_token", token, "token_type", "Bearer",
                                "expires_in", TOKEN_TTL_S));
    free(token);
}

/* mkdir -p of the directories above `path`. */
static int make_dirs(const char *path)
{
    char buf[1024];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0700) && errno != EEXIST) return -1;
        *p = '/';
    }
    return 0;
}

static auth_t auth; /* the signing key and JWKS of this process, made once at start */

static int setup(tr_app_t *app, char *err, size_t errlen)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/auth-key.pem", shop_data_dir());
    if (make_dirs(path)) {
        snprintf(err, errlen, "cannot create %s: %s", shop_data_dir(), strerror(errno));
        return -1;
    }
    auth.key = load_or_make_key(path);
    if (!auth.key) {
        snprintf(err, errlen, "cannot read or make the signing key %s", path);
        return -1;
    }
    make_kid(auth.key, auth.kid);
    auth.jwks = make_jwks(&auth);
    tr_app_route(app, "GET", "/.well-known/jwks.json", get_jwks, &auth);
    tr_app_route(app, "POST", "/token", post_token, &auth);
    return 0;
}

int main(int argc, char **argv)
{
    static const shop_service_t service = {
        .name = "auth",
        .about =
            "The shop's demo identity provider: POST /token {\"username\",\"password\":\"demo\"}\n"
            "answers an RS256 access token (iss " ISSUER ", aud " AUDIENCE ", 1 h);\n"
            "GET /.well-known/jwks.json publishes the public key for the gateway. The key\n"
            "pair is made at first start as $SHOP_DATA_DIR/auth-key.pem (mode 0600) and\n"
            "shared by every replica.\n",
        .setup = setup,
    };
    int rc = shop_main(&service, argc, argv);
    free(auth.jwks);
    EVP_PKEY_free(auth.key);
    return rc;
}
