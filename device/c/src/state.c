/* The device's key state: its keys in one file, its anti-rollback floors
 * in another (path.floor), each replaced atomically. On a real device the
 * floors belong in storage that a restore from backup does not roll back
 * (a monotonic counter, a secure element, eMMC RPMB); the separate file
 * stands for it here. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "device.h"

const dev_key *state_key(const dev_state *s, const char *key_id, const char *version) {
    for (int i = 0; i < s->nkeys; i++)
        if (!strcmp(s->keys[i].key_id, key_id) && !strcmp(s->keys[i].version, version)) return &s->keys[i];
    return NULL;
}

int state_uses_key(const dev_state *s, const char *key_id) {
    for (int i = 0; i < s->nkeys; i++)
        if (!strcmp(s->keys[i].key_id, key_id)) return 1;
    return 0;
}

uint64_t state_floor(const dev_state *s, const char *key_id) {
    for (int i = 0; i < s->nfloors; i++)
        if (!strcmp(s->floors[i].key_id, key_id)) return s->floors[i].floor;
    return 0;
}

void state_wipe(dev_state *s) { wipe(s, sizeof *s); }

static char *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = malloc(65536);
    size_t l = buf ? fread(buf, 1, 65535, f) : 0;
    int big = buf && !feof(f);
    fclose(f);
    if (!buf || big) { free(buf); return NULL; }
    buf[l] = 0;
    *n = l;
    return buf;
}

int state_from_credential(dev_state *s, const char *path) {
    size_t n;
    char *data = read_file(path, &n);
    if (!data) return -1;
    jnode *j = json_parse(data, n, NULL);
    wipe(data, n);
    free(data);
    memset(s, 0, sizeof *s);
    const jnode *d = json_get(j, "device_id"), *k = json_get(j, "key_id"), *v = json_get(j, "key_version"),
                *b = json_get(j, "dek_b64");
    int bad = !d || !k || !v || !b || d->type != J_STR || k->type != J_STR || v->type != J_STR || b->type != J_STR ||
              !valid_device_id(d->str) || !valid_key_id(k->str) || !valid_key_version(v->str);
    uint8_t dek[40];
    if (!bad) bad = b64_decode(b->str, b->slen, dek, sizeof dek) != DEK_SIZE;
    if (!bad) {
        strcpy(s->device_id, d->str);
        strcpy(s->seal_key_id, k->str);
        strcpy(s->seal_version, v->str);
        strcpy(s->keys[0].key_id, k->str);
        strcpy(s->keys[0].version, v->str);
        memcpy(s->keys[0].dek, dek, DEK_SIZE);
        s->nkeys = 1;
    }
    wipe(dek, sizeof dek);
    if (b) wipe(b->str, b->slen);
    json_free(j);
    return bad ? -1 : 0;
}

/* write_atomic replaces path with data: a temporary file beside it,
 * written and fsynced, renamed over path, and the directory fsynced, so
 * that a crash leaves the old file or the new one, never a mix. */
static int write_atomic(const char *path, const char *data, size_t n) {
    char tmp[4096], dir[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) return -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) return -1;
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(fd, data + off, n - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) { close(fd); unlink(tmp); return -1; }
        off += (size_t)w;
    }
    if (fsync(fd) || close(fd) || rename(tmp, path)) { unlink(tmp); return -1; }
    snprintf(dir, sizeof dir, "%s", path);
    int dfd = open(dirname(dir), O_RDONLY);
    if (dfd < 0) return -1;
    int r = fsync(dfd);
    close(dfd);
    return r;
}

int state_save(const dev_state *s, const char *path) {
    char *buf = malloc(65536), hex[2 * DEK_SIZE + 1], fpath[4096];
    if (!buf) return -1;
    int n = snprintf(buf, 65536, "decryptd-device-state 1\ndevice %s\nseal %s %s\n", s->device_id, s->seal_key_id,
                     s->seal_version);
    for (int i = 0; i < s->nkeys; i++) {
        hex_encode(s->keys[i].dek, DEK_SIZE, hex);
        n += snprintf(buf + n, 65536 - (size_t)n, "key %s %s %" PRIu64 " %s\n", s->keys[i].key_id, s->keys[i].version,
                      s->keys[i].generation, hex);
    }
    wipe(hex, sizeof hex);
    int r = write_atomic(path, buf, (size_t)n);
    wipe(buf, 65536);
    if (!r) {
        n = snprintf(buf, 65536, "decryptd-device-floors 1\n");
        for (int i = 0; i < s->nfloors; i++)
            n += snprintf(buf + n, 65536 - (size_t)n, "floor %s %" PRIu64 "\n", s->floors[i].key_id, s->floors[i].floor);
        snprintf(fpath, sizeof fpath, "%s.floor", path);
        r = write_atomic(fpath, buf, (size_t)n);
    }
    free(buf);
    return r;
}

int state_load(dev_state *s, const char *path) {
    char fpath[4096], *line, *save = NULL;
    size_t n;
    struct stat st;
    memset(s, 0, sizeof *s);
    if (stat(path, &st) || (st.st_mode & 077)) return -1; /* keys: owner only */
    char *data = read_file(path, &n);
    if (!data) return -1;
    int bad = strncmp(data, "decryptd-device-state 1\n", 24) != 0;
    for (line = strtok_r(data, "\n", &save); line && !bad; line = strtok_r(NULL, "\n", &save)) {
        char a[KEY_ID_MAX + 2], b[KEY_ID_MAX + 2], hex[2 * DEK_SIZE + 2];
        uint64_t g;
        if (!strncmp(line, "device ", 7)) {
            bad = sscanf(line, "device %128s", s->device_id) != 1 || !valid_device_id(s->device_id);
        } else if (!strncmp(line, "seal ", 5)) {
            bad = sscanf(line, "seal %200s %32s", s->seal_key_id, s->seal_version) != 2;
        } else if (!strncmp(line, "key ", 4)) {
            dev_key *k = &s->keys[s->nkeys];
            bad = s->nkeys >= DEV_MAX_KEYS || sscanf(line, "key %201s %33s %" SCNu64 " %65s", a, b, &g, hex) != 4 ||
                  !valid_key_id(a) || !valid_key_version(b) || hex_decode(hex, k->dek, DEK_SIZE);
            if (!bad) {
                strcpy(k->key_id, a);
                strcpy(k->version, b);
                k->generation = g;
                s->nkeys++;
            }
            wipe(hex, sizeof hex);
        }
    }
    wipe(data, n);
    free(data);
    if (bad || !s->device_id[0] || !state_key(s, s->seal_key_id, s->seal_version)) { state_wipe(s); return -1; }
    /* floors: the file's, raised to what the keys held say */
    snprintf(fpath, sizeof fpath, "%s.floor", path);
    if ((data = read_file(fpath, &n))) {
        for (line = strtok_r(data, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            char k[KEY_ID_MAX + 2];
            uint64_t f;
            if (sscanf(line, "floor %201s %" SCNu64, k, &f) == 2 && valid_key_id(k) && s->nfloors < DEV_MAX_KEYS) {
                strcpy(s->floors[s->nfloors].key_id, k);
                s->floors[s->nfloors++].floor = f;
            }
        }
        free(data);
    }
    int rolled_back = 0;
    for (int i = 0; i < s->nfloors; i++) {
        uint64_t held = 0;
        for (int k = 0; k < s->nkeys; k++)
            if (!strcmp(s->keys[k].key_id, s->floors[i].key_id) && s->keys[k].generation > held) held = s->keys[k].generation;
        if (s->floors[i].floor > held) rolled_back = 1;
    }
    for (int k = 0; k < s->nkeys; k++) {
        if (s->keys[k].generation > state_floor(s, s->keys[k].key_id)) {
            int i;
            for (i = 0; i < s->nfloors && strcmp(s->floors[i].key_id, s->keys[k].key_id); i++) {}
            if (i == s->nfloors) {
                if (s->nfloors >= DEV_MAX_KEYS) continue;
                strcpy(s->floors[s->nfloors++].key_id, s->keys[k].key_id);
            }
            s->floors[i].floor = s->keys[k].generation;
        }
    }
    return rolled_back ? STATE_ROLLED_BACK : 0;
}
