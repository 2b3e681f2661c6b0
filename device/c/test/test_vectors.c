/* Runs the published vectors against the reference device:
 *   test_vectors ENVELOPE.json REKEY.json TMPDIR
 * Envelope: every case is classified as docs/envelope-v1.md says (the
 * checks a receiver makes, in the order of its reason table, with a replay
 * window), and in every ok case each sealed value, sealed again by the
 * device with the vector's nonce, gives the vector's bytes. Rekey: each
 * case's device state decides as `expect` says. State: keys survive a save
 * and load; a key file restored from an older copy is detected. */
#include <inttypes.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/device.h"

static int failures, passed;

#define FAIL(name, ...) do { fprintf(stderr, "FAIL %s: ", name); fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); failures++; } while (0)

static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    long l = ftell(f);
    rewind(f);
    char *b = malloc((size_t)l + 1);
    if (!b || fread(b, 1, (size_t)l, f) != (size_t)l) exit(2);
    fclose(f);
    b[l] = 0;
    *n = (size_t)l;
    return b;
}

static const char *sget(const jnode *o, const char *name) {
    const jnode *j = json_get(o, name);
    return j && j->type == J_STR ? j->str : NULL;
}

/* ---------- envelope ---------- */

typedef struct { char kid[KEY_ID_MAX + 1], ver[KEY_VERSION_MAX + 1]; uint8_t nonce[NONCE_SIZE]; uint8_t digest[32]; } seen_nonce;
static seen_nonce window[256];
static int nwindow;

typedef struct { uint8_t sealed[4096]; size_t n; char pointer[512]; char text[6000]; } sealed_val;

/* collect finds every "ENC:AES256:" string of a shape B message, with its
 * pointer; -1 if one is not base64 of at least 28 bytes. */
static int collect(const jnode *j, char *ptr, sealed_val *out, int *n, int top) {
    for (const jnode *c = j->child; c; c = c->next) {
        char p[512];
        strcpy(p, ptr);
        if (j->type == J_OBJ) {
            if (json_pointer_append(p, sizeof p, c->name)) return -1;
        } else {
            int k = 0;
            for (const jnode *x = j->child; x != c; x = x->next) k++;
            snprintf(p + strlen(p), sizeof p - strlen(p), "/%d", k);
        }
        if (top && j->type == J_OBJ && (!strcmp(c->name, "device_id") || !strcmp(c->name, "timestamp") ||
                                        !strcmp(c->name, "key_version") || !strcmp(c->name, "key_id")))
            continue;
        if (c->type == J_STR && !strncmp(c->str, "ENC:AES256:", 11)) {
            if (*n >= 16) return -1;
            sealed_val *v = &out[(*n)++];
            long l = b64_decode(c->str + 11, c->slen - 11, v->sealed, sizeof v->sealed);
            if (l < 28) return -1;
            v->n = (size_t)l;
            strcpy(v->pointer, p);
            snprintf(v->text, sizeof v->text, "%s", c->str);
        } else if (c->type == J_OBJ || c->type == J_ARR) {
            if (collect(c, p, out, n, 0)) return -1;
        }
    }
    return 0;
}

static const char *classify(const jnode *keys, const char *topic, const char *msg, size_t mlen, int *ok_out,
                            sealed_val *vals, int *nvals, const jnode **key_out, char *device_id, uint64_t *ts) {
    *ok_out = 0;
    *nvals = 0;
    jnode *j = json_parse(msg, mlen, NULL);
    static char reason[64];
    const char *r = NULL;
    const jnode *meta = NULL;
    char kid[KEY_ID_MAX + 1] = "", ver[KEY_VERSION_MAX + 1] = "";
    if (!j || j->type != J_OBJ) { r = "malformed"; goto out; }
    const jnode *enc = json_get(j, "encrypted_data");
    const jnode *holder = enc ? (meta = json_get(j, "metadata")) : j;
    if (enc && (!meta || meta->type != J_OBJ || enc->type != J_STR)) { r = "malformed"; goto out; }
    const char *d = sget(holder, "device_id");
    if (!d || !valid_device_id(d) || json_uint(json_get(holder, "timestamp"), UINT64_MAX >> 1, ts)) { r = "malformed"; goto out; }
    strcpy(device_id, d);
    const char *kv = sget(j, "key_version"), *ki = sget(j, "key_id");
    if ((json_get(j, "key_version") && (!kv || !valid_key_version(kv))) || (json_get(j, "key_id") && (!ki || !valid_key_id(ki)))) {
        r = "malformed";
        goto out;
    }
    if (enc) {
        long l = b64_decode(enc->str, enc->slen, vals[0].sealed, sizeof vals[0].sealed);
        if (l < 28 || !kv) { r = "malformed"; goto out; }
        vals[0].n = (size_t)l;
        vals[0].pointer[0] = 0;
        snprintf(vals[0].text, sizeof vals[0].text, "%s", enc->str);
        *nvals = 1;
    } else {
        char p[512] = "";
        if (collect(j, p, vals, nvals, 1) || (*nvals > 0 && !kv)) { r = "malformed"; goto out; }
    }
    /* topic: iot-2/type/<type>/id/<device>/evt/<event>/fmt/<fmt> */
    char t[512];
    snprintf(t, sizeof t, "%s", topic);
    char *save = NULL, *lvl = strtok_r(t, "/", &save);
    for (int i = 0; lvl && i < 4; i++) lvl = strtok_r(NULL, "/", &save);
    if (lvl && strcmp(lvl, d)) { r = "topic_mismatch"; goto out; }
    if (*nvals == 0) { *ok_out = 1; goto out; }
    snprintf(kid, sizeof kid, "%s", ki ? ki : "");
    if (!ki) snprintf(kid, sizeof kid, "device/%s", d);
    snprintf(ver, sizeof ver, "%s", kv);
    const jnode *key = NULL;
    for (const jnode *k = keys->child; k; k = k->next)
        if (!strcmp(sget(k, "key_id"), kid) && !strcmp(sget(k, "key_version"), ver)) key = k;
    char own[KEY_ID_MAX + 8];
    snprintf(own, sizeof own, "device/%s", d);
    int allowed = !strcmp(kid, own);
    if (key && !allowed)
        for (const jnode *x = json_get(key, "devices") ? json_get(key, "devices")->child : NULL; x; x = x->next)
            if (x->type == J_STR && !strcmp(x->str, d)) allowed = 1;
    if (!key || !allowed) { r = "unknown_key"; goto out; }
    if (sget(key, "state") && !strcmp(sget(key, "state"), "revoked")) { r = "key_revoked"; goto out; }
    *key_out = key;
    uint8_t dek[DEK_SIZE];
    hex_decode(sget(key, "dek_hex"), dek, DEK_SIZE);
    for (int i = 0; i < *nvals && !r; i++) {
        uint8_t aad[1024], *pt = malloc(vals[i].n);
        size_t al = env_aad(aad, sizeof aad, d, *ts, vals[i].pointer[0] ? vals[i].pointer : NULL);
        if (gcm_open(dek, aad, al, vals[i].sealed, vals[i].n, pt)) r = "auth_failed";
        else {
            jnode *pj = json_parse((char *)pt, vals[i].n - 28, NULL);
            if (!pj || (!vals[i].pointer[0] && pj->type != J_OBJ)) r = "bad_plaintext";
            json_free(pj);
        }
        free(pt);
    }
    if (r) goto out;
    /* replay window: (key id, version, nonce) of each sealed value */
    uint8_t digest[32];
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    EVP_DigestUpdate(c, topic, strlen(topic));
    EVP_DigestUpdate(c, "", 1);
    EVP_DigestUpdate(c, msg, mlen);
    EVP_DigestFinal_ex(c, digest, NULL);
    EVP_MD_CTX_free(c);
    for (int i = 0; i < *nvals; i++)
        for (int w = 0; w < nwindow; w++)
            if (!strcmp(window[w].kid, kid) && !strcmp(window[w].ver, ver) && !memcmp(window[w].nonce, vals[i].sealed, NONCE_SIZE)) {
                r = memcmp(window[w].digest, digest, 32) ? "replay" : "duplicate";
                goto out;
            }
    for (int i = 0; i < *nvals && nwindow < 256; i++, nwindow++) {
        strcpy(window[nwindow].kid, kid);
        strcpy(window[nwindow].ver, ver);
        memcpy(window[nwindow].nonce, vals[i].sealed, NONCE_SIZE);
        memcpy(window[nwindow].digest, digest, 32);
    }
    *ok_out = 1;
out:
    json_free(j);
    if (r) snprintf(reason, sizeof reason, "%s", r);
    return r ? reason : NULL;
}

static void envelope(const char *path) {
    size_t n;
    char *data = slurp(path, &n);
    const char *err;
    jnode *root = json_parse(data, n, &err);
    if (!root) { FAIL(path, "%s", err); return; }
    const jnode *keys = json_get(root, "keys");
    int count = 0, resealed = 0;
    for (const jnode *c = json_get(root, "cases")->child; c; c = c->next, count++) {
        const char *name = sget(c, "name"), *topic = sget(c, "topic"), *msg = sget(c, "message");
        const jnode *ex = json_get(c, "expect");
        int want_ok = json_get(ex, "ok")->type == J_TRUE;
        const char *want = want_ok ? NULL : json_get(ex, "duplicate") ? "duplicate" : sget(ex, "reason");
        sealed_val vals[16];
        int nvals, ok;
        const jnode *key = NULL;
        char dev[DEV_ID_MAX + 1] = "";
        uint64_t ts = 0;
        const char *got = classify(keys, topic, msg, strlen(msg), &ok, vals, &nvals, &key, dev, &ts);
        if (want_ok != ok || (!ok && strcmp(got, want))) { FAIL(name, "got %s, want %s", got ? got : "ok", want ? want : "ok"); continue; }
        if (ok) {
            /* the record id: SHA-256 of key_id 0 key_version 0 first nonce (of the payload with no sealed value) */
            const jnode *rec = json_get(ex, "record");
            uint8_t h[32];
            char hex[65];
            if (nvals == 0) SHA256((const uint8_t *)msg, strlen(msg), h);
            else {
                char buf[300];
                int l = snprintf(buf, sizeof buf, "%s%c%s%c", sget(key, "key_id"), 0, sget(key, "key_version"), 0);
                memcpy(buf + l, vals[0].sealed, NONCE_SIZE);
                SHA256((uint8_t *)buf, (size_t)l + NONCE_SIZE, h);
            }
            hex_encode(h, 32, hex);
            if (strcmp(hex, sget(rec, "id"))) { FAIL(name, "record id %s, want %s", hex, sget(rec, "id")); continue; }
            /* sealed again with the vector's nonce: the same bytes */
            uint8_t dek[DEK_SIZE];
            if (nvals) hex_decode(sget(key, "dek_hex"), dek, DEK_SIZE);
            for (int i = 0; i < nvals; i++) {
                uint8_t aad[1024], pt[4096];
                const char *ptr = vals[i].pointer[0] ? vals[i].pointer : NULL;
                size_t al = env_aad(aad, sizeof aad, dev, ts, ptr), pl = vals[i].n - 28;
                gcm_open(dek, aad, al, vals[i].sealed, vals[i].n, pt);
                char out[6000];
                size_t ol = env_seal_value(dek, vals[i].sealed, dev, ts, ptr, (char *)pt, pl, out, sizeof out);
                const char *b = out + (ptr ? 11 : 0);
                uint8_t again[4096];
                long al2 = b64_decode(b, strlen(b), again, sizeof again);
                int standard = !strchr(vals[i].text, '-') && !strchr(vals[i].text, '_') && strlen(vals[i].text) % 4 == 0;
                if (!ol || al2 != (long)vals[i].n || memcmp(again, vals[i].sealed, vals[i].n) ||
                    (standard && strcmp(out, vals[i].text))) {
                    FAIL(name, "sealed again with the vector's nonce, %s differs", ptr ? ptr : "encrypted_data");
                    goto next;
                }
                resealed++;
            }
        }
        passed++;
    next:;
    }
    printf("envelope: %d cases (%d sealed values sealed again to the same bytes)\n", count, resealed);
    json_free(root);
    free(data);
}

/* ---------- rekey ---------- */

static int state_of(const jnode *d, dev_state *s) {
    memset(s, 0, sizeof *s);
    snprintf(s->device_id, sizeof s->device_id, "%s", sget(d, "device_id"));
    for (const jnode *k = json_get(d, "keys")->child; k; k = k->next) {
        dev_key *x = &s->keys[s->nkeys++];
        snprintf(x->key_id, sizeof x->key_id, "%s", sget(k, "key_id"));
        snprintf(x->version, sizeof x->version, "%s", sget(k, "key_version"));
        if (json_uint(json_get(k, "generation"), GEN_MAX, &x->generation) || hex_decode(sget(k, "dek_hex"), x->dek, DEK_SIZE)) return -1;
    }
    strcpy(s->seal_key_id, s->keys[0].key_id);
    strcpy(s->seal_version, s->keys[0].version);
    for (const jnode *f = json_get(d, "floors")->child; f; f = f->next) {
        snprintf(s->floors[s->nfloors].key_id, KEY_ID_MAX + 1, "%s", f->name);
        if (json_uint(f, GEN_MAX, &s->floors[s->nfloors++].floor)) return -1;
    }
    return 0;
}

static void rekeys(const char *path) {
    size_t n;
    char *data = slurp(path, &n);
    const char *err;
    jnode *root = json_parse(data, n, &err);
    if (!root) { FAIL(path, "%s", err); return; }
    int count = 0;
    for (const jnode *c = json_get(root, "cases")->child; c; c = c->next, count++) {
        const char *name = sget(c, "name"), *msg = sget(c, "message"), *want = sget(c, "expect");
        dev_state s;
        rk_msg m;
        if (state_of(json_get(c, "device"), &s)) { FAIL(name, "bad device state"); continue; }
        rk_outcome o = rekey_take(&s, msg, strlen(msg), &m);
        if (strcmp(rk_outcome_name(o), want)) { FAIL(name, "decided %s, want %s", rk_outcome_name(o), want); continue; }
        char hex[2 * 1200 + 1];
        uint8_t aad[1200];
        if (o == RK_INSTALLED) {
            hex_encode(m.new_dek, DEK_SIZE, hex);
            if (strcmp(hex, sget(c, "new_dek_hex"))) { FAIL(name, "wrong DEK"); continue; }
            /* installing it raises the floor and moves sealing to it */
            if (rekey_install(&s, &m) || !state_key(&s, m.key_id, m.new_version) ||
                (m.generation && state_floor(&s, m.key_id) != m.generation)) { FAIL(name, "install"); continue; }
            dev_state before = s;
            if (rekey_take(&s, msg, strlen(msg), &m) != RK_REPEAT || memcmp(&before, &s, sizeof s)) { FAIL(name, "repeat after install"); continue; }
        }
        if (o != RK_MALFORMED && sget(c, "aad_hex")) {
            hex_encode(aad, rekey_aad(&m, aad, sizeof aad), hex);
            if (strcmp(hex, sget(c, "aad_hex"))) { FAIL(name, "AAD %s", hex); continue; }
            if (sget(c, "gen_aad_hex")) {
                hex_encode(aad, rekey_gen_aad(&m, aad, sizeof aad), hex);
                if (strcmp(hex, sget(c, "gen_aad_hex"))) { FAIL(name, "gen AAD %s", hex); continue; }
            }
        }
        passed++;
        state_wipe(&s);
    }
    printf("rekey: %d cases\n", count);
    json_free(root);
    free(data);
}

/* ---------- state ---------- */

static void state(const char *dir) {
    char cred[4096], path[4096], old[4096];
    snprintf(cred, sizeof cred, "%s/cred.json", dir);
    snprintf(path, sizeof path, "%s/state", dir);
    snprintf(old, sizeof old, "%s/state.backup", dir);
    FILE *f = fopen(cred, "w");
    fputs("{\"device_id\":\"pump-1\",\"key_id\":\"device/pump-1\",\"key_version\":\"v1\",\"dek_b64\":\"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"}\n", f);
    fclose(f);
    dev_state s, t;
    if (state_from_credential(&s, cred) || state_save(&s, path)) { FAIL("state", "from credential"); return; }
    /* the backup: taken while the device held only v1 */
    if (state_save(&s, old)) { FAIL("state", "backup"); return; }
    rk_msg m;
    memset(&m, 0, sizeof m);
    strcpy(m.key_id, "device/pump-1");
    strcpy(m.new_version, "v2");
    strcpy(m.wrap_key_id, "device/pump-1");
    strcpy(m.wrap_key_version, "v1");
    m.generation = 2;
    memset(m.new_dek, 7, DEK_SIZE);
    if (rekey_install(&s, &m) || state_save(&s, path)) { FAIL("state", "install v2"); return; }
    if (state_load(&t, path) || t.nkeys != 2 || strcmp(t.seal_version, "v2") || state_floor(&t, "device/pump-1") != 2 ||
        memcmp(state_key(&t, "device/pump-1", "v2")->dek, m.new_dek, DEK_SIZE)) { FAIL("state", "load after install"); return; }
    /* the key file restored from the backup, the floor kept: detected */
    char cmd[9000];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", old, path);
    if (system(cmd) != 0) { FAIL("state", "restore"); return; }
    if (state_load(&t, path) != STATE_ROLLED_BACK) { FAIL("state", "a key file restored from backup was not detected"); return; }
    printf("state: save, load, restore from backup detected\n");
    passed++;
}

/* decide: the rekey decision for many messages at one device state, for a
 * differential test against another implementation. stdin: the state as
 * JSON (a vector's "device") on the first line, then one message per line
 * in hex. stdout: one line per message, the outcome name (and the new
 * DEK's hex when installed). */
static int decide(void) {
    static char line[4 * REKEY_MAX + 64];
    static uint8_t msg[2 * REKEY_MAX + 32];
    if (!fgets(line, sizeof line, stdin)) return 2;
    jnode *d = json_parse(line, strlen(line), NULL);
    dev_state s;
    if (!d || state_of(d, &s)) return 2;
    json_free(d);
    while (fgets(line, sizeof line, stdin)) {
        size_t l = strcspn(line, "\n");
        line[l] = 0;
        if (l % 2 || l / 2 > sizeof msg) return 2;
        if (l && hex_decode(line, msg, l / 2)) return 2;
        rk_msg m;
        rk_outcome o = rekey_take(&s, (const char *)msg, l / 2, &m);
        if (o == RK_INSTALLED) {
            char hex[2 * DEK_SIZE + 1];
            hex_encode(m.new_dek, DEK_SIZE, hex);
            printf("%s %s\n", rk_outcome_name(o), hex);
        } else {
            printf("%s\n", rk_outcome_name(o));
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "--decide")) return decide();
    if (argc != 4) { fprintf(stderr, "usage: test_vectors ENVELOPE.json REKEY.json TMPDIR\n"); return 2; }
    envelope(argv[1]);
    rekeys(argv[2]);
    state(argv[3]);
    printf("%d passed, %d failed\n", passed, failures);
    return failures ? 1 : 0;
}
