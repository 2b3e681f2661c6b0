/* Taking a rekey (docs/rekey-v1.md with amendment 1; the checks are the
 * ones docs/device-guide.md lists, in its order). */
#include <string.h>

#include "device.h"

const char *rk_outcome_name(rk_outcome o) {
    static const char *names[] = {"installed", "repeat", "malformed", "not_for_device", "rollback", "unknown_wrap_key",
                                  "auth_failed"};
    return names[o];
}

static int put(uint8_t *out, size_t cap, size_t *n, const char *s, int sep) {
    size_t l = strlen(s);
    if (*n + l + (sep ? 1 : 0) > cap) return -1;
    if (sep) out[(*n)++] = 0;
    memcpy(out + *n, s, l);
    *n += l;
    return 0;
}

static size_t aad_names(const rk_msg *m, const char *label, uint8_t *out, size_t cap) {
    size_t n = 0;
    if (put(out, cap, &n, label, 0) || put(out, cap, &n, m->device_id, 1) || put(out, cap, &n, m->key_id, 1) ||
        put(out, cap, &n, m->new_version, 1) || put(out, cap, &n, m->wrap_key_id, 1) ||
        put(out, cap, &n, m->wrap_key_version, 1))
        return 0;
    return n;
}

size_t rekey_aad(const rk_msg *m, uint8_t *out, size_t cap) { return aad_names(m, "decryptd-rekey-v1", out, cap); }

size_t rekey_gen_aad(const rk_msg *m, uint8_t *out, size_t cap) {
    size_t n = aad_names(m, "decryptd-rekey-v1-gen", out, cap);
    if (!n || n + 17 > cap) return 0;
    out[n++] = 0;
    for (int i = 7; i >= 0; i--) out[n++] = (uint8_t)(m->generation >> (8 * i));
    for (int i = 7; i >= 0; i--) out[n++] = (uint8_t)(m->issued_at >> (8 * i));
    return n;
}

/* str copies a string member into dst (cap bytes with the NUL). */
static int str(const jnode *o, const char *name, char *dst, size_t cap) {
    const jnode *j = json_get(o, name);
    if (!j || j->type != J_STR || j->slen >= cap || strlen(j->str) != j->slen) return -1;
    memcpy(dst, j->str, j->slen + 1);
    return 0;
}

static int sealed(const jnode *o, const char *name, uint8_t out[60]) {
    const jnode *j = json_get(o, name);
    uint8_t buf[64];
    if (!j || j->type != J_STR || b64_decode(j->str, j->slen, buf, sizeof buf) != 60) return -1;
    memcpy(out, buf, 60);
    return 0;
}

/* parse: step 1 of the guide, the form. */
static int parse(const char *msg, size_t n, rk_msg *m) {
    if (n > REKEY_MAX) return -1;
    jnode *j = json_parse(msg, n, NULL);
    int bad = !j || j->type != J_OBJ;
    char type[8];
    uint64_t v = 0;
    if (!bad) {
        bad = str(j, "type", type, sizeof type) || strcmp(type, "rekey") || json_uint(json_get(j, "v"), 1, &v) || v != 1 ||
              str(j, "device_id", m->device_id, sizeof m->device_id) || str(j, "key_id", m->key_id, sizeof m->key_id) ||
              str(j, "new_version", m->new_version, sizeof m->new_version) ||
              str(j, "wrap_key_id", m->wrap_key_id, sizeof m->wrap_key_id) ||
              str(j, "wrap_key_version", m->wrap_key_version, sizeof m->wrap_key_version) ||
              json_uint(json_get(j, "issued_at"), UINT64_MAX >> 1, &m->issued_at) || sealed(j, "sealed_dek", m->sealed);
    }
    if (!bad) {
        bad = !valid_device_id(m->device_id) || !valid_key_id(m->key_id) || !valid_key_version(m->new_version) ||
              !valid_key_id(m->wrap_key_id) || !valid_key_version(m->wrap_key_version) ||
              (!strcmp(m->key_id, m->wrap_key_id) && !strcmp(m->new_version, m->wrap_key_version));
    }
    if (!bad) { /* amendment 1: generation and sealed_dek_gen, both or neither */
        const jnode *g = json_get(j, "generation"), *sg = json_get(j, "sealed_dek_gen");
        m->generation = 0;
        if (!g != !sg) bad = 1;
        else if (g)
            bad = json_uint(g, GEN_MAX, &m->generation) || m->generation == 0 || sealed(j, "sealed_dek_gen", m->sealed_gen) ||
                  m->issued_at > GEN_MAX;
    }
    json_free(j);
    return bad ? -1 : 0;
}

rk_outcome rekey_take(const dev_state *s, const char *msg, size_t n, rk_msg *m) {
    memset(m, 0, sizeof *m);
    if (parse(msg, n, m)) return RK_MALFORMED;
    /* 2. for this device, and a key it uses */
    if (strcmp(m->device_id, s->device_id) || !state_uses_key(s, m->key_id)) return RK_NOT_FOR_DEVICE;
    /* 3. a repeat of a version it holds: nothing changes */
    if (state_key(s, m->key_id, m->new_version)) return RK_REPEAT;
    /* 4. anti-rollback: the generation must be above the floor; none at
     * all only while no generation was ever accepted for the key */
    uint64_t floor = state_floor(s, m->key_id);
    if ((m->generation == 0 && floor > 0) || (m->generation > 0 && m->generation <= floor)) return RK_ROLLBACK;
    /* 5. the wrapping key */
    const dev_key *w = state_key(s, m->wrap_key_id, m->wrap_key_version);
    if (!w) return RK_UNKNOWN_WRAP_KEY;
    /* 6. authenticity: sealed_dek_gen with the generation, else sealed_dek */
    uint8_t aad[1200];
    size_t al = m->generation ? rekey_gen_aad(m, aad, sizeof aad) : rekey_aad(m, aad, sizeof aad);
    if (!al || gcm_open(w->dek, aad, al, m->generation ? m->sealed_gen : m->sealed, 60, m->new_dek)) return RK_AUTH_FAILED;
    return RK_INSTALLED;
}

int rekey_install(dev_state *s, const rk_msg *m) {
    if (state_key(s, m->key_id, m->new_version)) return 0;
    /* keep the two newest versions of the key (by generation, then order):
     * the new one and the one it replaces, for buffered messages */
    int same = 0, oldest = -1;
    for (int i = 0; i < s->nkeys; i++) {
        if (strcmp(s->keys[i].key_id, m->key_id)) continue;
        same++;
        if (oldest < 0 || s->keys[i].generation < s->keys[oldest].generation) oldest = i;
    }
    if (same >= 2 && oldest >= 0 &&
        !(strcmp(s->keys[oldest].key_id, m->wrap_key_id) == 0 && strcmp(s->keys[oldest].version, m->wrap_key_version) == 0)) {
        wipe(&s->keys[oldest], sizeof s->keys[oldest]);
        s->keys[oldest] = s->keys[--s->nkeys];
    }
    if (s->nkeys >= DEV_MAX_KEYS) return -1;
    dev_key *k = &s->keys[s->nkeys++];
    strcpy(k->key_id, m->key_id);
    strcpy(k->version, m->new_version);
    k->generation = m->generation;
    memcpy(k->dek, m->new_dek, DEK_SIZE);
    if (m->generation) {
        int i;
        for (i = 0; i < s->nfloors && strcmp(s->floors[i].key_id, m->key_id); i++) {}
        if (i == s->nfloors) {
            if (s->nfloors >= DEV_MAX_KEYS) return -1;
            s->nfloors++;
            strcpy(s->floors[i].key_id, m->key_id);
            s->floors[i].floor = 0;
        }
        if (m->generation > s->floors[i].floor) s->floors[i].floor = m->generation;
    }
    if (!strcmp(s->seal_key_id, m->key_id)) strcpy(s->seal_version, m->new_version);
    return 0;
}
