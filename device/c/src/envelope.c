/* Sealing telemetry (docs/envelope-v1.md): shape A (the whole readings
 * object) and shape B (single fields in place, AAD bound to their JSON
 * Pointer). */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device.h"

#define ENC_PREFIX "ENC:AES256:"

size_t env_aad(uint8_t *out, size_t cap, const char *device_id, uint64_t ts, const char *pointer) {
    int n = snprintf((char *)out, cap, "%s%c%" PRIu64, device_id, 0, ts);
    if (n < 0 || (size_t)n >= cap) return 0;
    if (pointer) {
        size_t l = strlen(pointer);
        if ((size_t)n + 1 + l > cap) return 0;
        out[n++] = 0;
        memcpy(out + n, pointer, l);
        n += (int)l;
    }
    return (size_t)n;
}

int json_pointer_append(char *ptr, size_t cap, const char *name) {
    size_t n = strlen(ptr);
    if (n + 1 >= cap) return -1;
    ptr[n++] = '/';
    for (; *name; name++) {
        const char *w = *name == '~' ? "~0" : *name == '/' ? "~1" : NULL;
        size_t l = w ? 2 : 1;
        if (n + l >= cap) return -1;
        if (w) memcpy(ptr + n, w, 2);
        else ptr[n] = *name;
        n += l;
    }
    ptr[n] = 0;
    return 0;
}

size_t env_seal_value(const uint8_t key[DEK_SIZE], const uint8_t *nonce, const char *device_id, uint64_t ts,
                      const char *pointer, const char *json, size_t jlen, char *out, size_t cap) {
    size_t alen = strlen(device_id) + 32 + (pointer ? strlen(pointer) : 0);
    size_t slen = jlen + NONCE_SIZE + TAG_SIZE;
    size_t prefix = pointer ? strlen(ENC_PREFIX) : 0;
    if (cap < prefix + (slen + 2) / 3 * 4 + 1) return 0;
    uint8_t *aad = malloc(alen), *sealed = malloc(slen);
    size_t n = 0;
    if (aad && sealed) {
        size_t al = env_aad(aad, alen, device_id, ts, pointer);
        if (al && !gcm_seal(key, nonce, aad, al, (const uint8_t *)json, jlen, sealed)) {
            memcpy(out, ENC_PREFIX, prefix);
            n = prefix + b64_encode(sealed, slen, out + prefix);
        }
    }
    free(aad);
    free(sealed);
    return n;
}

/* appendf appends formatted text; (size_t)-1 once it does not fit. */
static size_t appendf(char *out, size_t len, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static size_t appendf(char *out, size_t len, size_t cap, const char *fmt, ...) {
    if (len == (size_t)-1) return len;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out + len, cap - len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap - len) return (size_t)-1;
    return len + (size_t)n;
}
static size_t append_str(char *out, size_t len, size_t cap, const char *s) {
    return len == (size_t)-1 ? len : json_put_string(out, len, cap, s);
}

size_t env_shape_a(const uint8_t key[DEK_SIZE], const uint8_t *nonce, const char *device_id, uint64_t ts,
                   const char *key_id, const char *key_version, const char *readings, char *out, size_t cap) {
    if (!valid_device_id(device_id) || !valid_key_version(key_version) || (key_id && !valid_key_id(key_id))) return 0;
    size_t rl = strlen(readings);
    size_t blen = (rl + NONCE_SIZE + TAG_SIZE + 2) / 3 * 4 + 1;
    char *b = malloc(blen);
    if (!b) return 0;
    size_t n = 0;
    if (env_seal_value(key, nonce, device_id, ts, NULL, readings, rl, b, blen)) {
        n = appendf(out, 0, cap, "{\"encrypted_data\":\"%s\",\"key_version\":\"%s\"", b, key_version);
        if (key_id) n = appendf(out, n, cap, ",\"key_id\":\"%s\"", key_id);
        n = appendf(out, n, cap, ",\"metadata\":{\"device_id\":\"%s\",\"timestamp\":%" PRIu64 "}}", device_id, ts);
    }
    free(b);
    return n == (size_t)-1 ? 0 : n;
}

size_t env_shape_b(const uint8_t key[DEK_SIZE], const char *device_id, uint64_t ts, const char *key_id,
                   const char *key_version, const env_field *f, int nf, char *out, size_t cap) {
    if (!valid_device_id(device_id) || !valid_key_version(key_version) || (key_id && !valid_key_id(key_id))) return 0;
    size_t n = appendf(out, 0, cap, "{\"device_id\":\"%s\",\"timestamp\":%" PRIu64 ",\"key_version\":\"%s\"", device_id,
                       ts, key_version);
    if (key_id) n = appendf(out, n, cap, ",\"key_id\":\"%s\"", key_id);
    for (int i = 0; i < nf && n != (size_t)-1; i++) {
        n = appendf(out, n, cap, ",");
        n = append_str(out, n, cap, f[i].name);
        n = appendf(out, n, cap, ":");
        if (n == (size_t)-1) break;
        if (!f[i].seal) { n = appendf(out, n, cap, "%s", f[i].json); continue; }
        char ptr[512] = "";
        size_t jl = strlen(f[i].json), blen = strlen(ENC_PREFIX) + (jl + 30) / 3 * 4 + 4;
        char *b = malloc(blen);
        if (!b || json_pointer_append(ptr, sizeof ptr, f[i].name) ||
            !env_seal_value(key, NULL, device_id, ts, ptr, f[i].json, jl, b, blen)) {
            free(b);
            return 0;
        }
        n = appendf(out, n, cap, "\"%s\"", b);
        free(b);
    }
    n = appendf(out, n, cap, "}");
    return n == (size_t)-1 ? 0 : n;
}
