/* Names, base64, hex and AES-256-GCM (OpenSSL EVP). */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <string.h>

#include "device.h"

static int name_ok(const char *s, size_t max, const char *extra) {
    size_t n = strlen(s);
    if (n == 0 || n > max) return 0;
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr(extra, c)))
            return 0;
    }
    return 1;
}
int valid_device_id(const char *s) { return name_ok(s, DEV_ID_MAX, "._:-"); }
int valid_key_id(const char *s) { return name_ok(s, KEY_ID_MAX, "._:/-"); }
int valid_key_version(const char *s) { return name_ok(s, KEY_VERSION_MAX, "._-"); }

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t b64_encode(const uint8_t *in, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
        out[o++] = B64[v >> 18 & 63];
        out[o++] = B64[v >> 12 & 63];
        out[o++] = i + 1 < n ? B64[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? B64[v & 63] : '=';
    }
    out[o] = 0;
    return o;
}

/* One alphabet per value: the standard one, or the URL-safe one if the
 * text has - or _ (as the Go reader decides). Non-zero padding bits are
 * refused, as Go's strict decoder does. */
long b64_decode(const char *in, size_t n, uint8_t *out, size_t cap) {
    while (n > 0 && in[n - 1] == '=') n--;
    int url = memchr(in, '-', n) || memchr(in, '_', n);
    if (n % 4 == 1) return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        char c = in[i];
        int v;
        if (c >= 'A' && c <= 'Z') v = c - 'A';
        else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
        else if (c >= '0' && c <= '9') v = c - '0' + 52;
        else if (c == (url ? '-' : '+')) v = 62;
        else if (c == (url ? '_' : '/')) v = 63;
        else return -1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= cap) return -1;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    if (bits > 0 && (acc & ((1u << bits) - 1))) return -1;
    return (long)o;
}

int hex_decode(const char *hex, uint8_t *out, size_t n) {
    if (strlen(hex) != 2 * n) return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned v = 0;
        for (int k = 0; k < 2; k++) {
            char c = hex[2 * i + k];
            v <<= 4;
            if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
            else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
            else return -1;
        }
        out[i] = (uint8_t)v;
    }
    return 0;
}

void hex_encode(const uint8_t *in, size_t n, char *out) {
    static const char h[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) { out[2 * i] = h[in[i] >> 4]; out[2 * i + 1] = h[in[i] & 15]; }
    out[2 * n] = 0;
}

void wipe(void *p, size_t n) { OPENSSL_cleanse(p, n); }

int gcm_seal(const uint8_t key[DEK_SIZE], const uint8_t *nonce, const uint8_t *aad, size_t aadlen,
             const uint8_t *pt, size_t n, uint8_t *out) {
    int ok = 0, l;
    if (nonce) memcpy(out, nonce, NONCE_SIZE);
    else if (RAND_bytes(out, NONCE_SIZE) != 1) return -1;
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    if (!c) return -1;
    if (EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, out) == 1 &&
        (aadlen == 0 || EVP_EncryptUpdate(c, NULL, &l, aad, (int)aadlen) == 1) &&
        (n == 0 || EVP_EncryptUpdate(c, out + NONCE_SIZE, &l, pt, (int)n) == 1) &&
        EVP_EncryptFinal_ex(c, out + NONCE_SIZE + n, &l) == 1 &&
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, TAG_SIZE, out + NONCE_SIZE + n) == 1)
        ok = 1;
    EVP_CIPHER_CTX_free(c);
    return ok ? 0 : -1;
}

int gcm_open(const uint8_t key[DEK_SIZE], const uint8_t *aad, size_t aadlen, const uint8_t *sealed, size_t n,
             uint8_t *out) {
    int ok = 0, l;
    if (n < NONCE_SIZE + TAG_SIZE) return -1;
    size_t ct = n - NONCE_SIZE - TAG_SIZE;
    uint8_t tag[TAG_SIZE];
    memcpy(tag, sealed + n - TAG_SIZE, TAG_SIZE);
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    if (!c) return -1;
    if (EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, sealed) == 1 &&
        (aadlen == 0 || EVP_DecryptUpdate(c, NULL, &l, aad, (int)aadlen) == 1) &&
        (ct == 0 || EVP_DecryptUpdate(c, out, &l, sealed + NONCE_SIZE, (int)ct) == 1) &&
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, TAG_SIZE, tag) == 1 &&
        EVP_DecryptFinal_ex(c, out + ct, &l) == 1)
        ok = 1;
    EVP_CIPHER_CTX_free(c);
    if (!ok) wipe(out, ct);
    return ok ? 0 : -1;
}
