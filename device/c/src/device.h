/* decryptd reference device: sealing (docs/envelope-v1.md), rekeys with
 * anti-rollback (docs/rekey-v1.md, amendment 1), key state persisted
 * atomically. C99, OpenSSL libcrypto; the MQTT loop (telemdev.c) adds
 * libmosquitto. See ../README.md and docs/device-guide.md. */
#ifndef DEVICE_H
#define DEVICE_H

#include <stddef.h>
#include <stdint.h>

/* ---- limits of the format ---- */
#define DEV_ID_MAX 128      /* device_id: 1-128 of A-Z a-z 0-9 . _ : - */
#define KEY_ID_MAX 200      /* key_id: 1-200 of A-Z a-z 0-9 . _ : / - */
#define KEY_VERSION_MAX 32  /* key_version: 1-32 of A-Z a-z 0-9 . _ - */
#define DEK_SIZE 32
#define NONCE_SIZE 12
#define TAG_SIZE 16
#define GEN_MAX 9007199254740991ULL /* 2^53-1 */
#define REKEY_MAX 4096
#define DEV_MAX_KEYS 16

/* ---- JSON (json.c): a small strict RFC 8259 parser ---- */
typedef enum { J_NULL, J_FALSE, J_TRUE, J_NUM, J_STR, J_ARR, J_OBJ } jtype;
typedef struct jnode {
    jtype type;
    const char *raw;     /* the value's text in the input */
    size_t rawlen;
    char *str;           /* J_STR: decoded, NUL-terminated */
    size_t slen;
    char *name;          /* member name (decoded) inside an object */
    size_t nlen;
    struct jnode *child; /* J_ARR, J_OBJ: first element */
    struct jnode *next;
} jnode;
/* json_parse refuses a member name repeated in any object, nesting deeper
 * than 64, and trailing data. NULL on error (*err says why). */
jnode *json_parse(const char *s, size_t n, const char **err);
void json_free(jnode *j);
const jnode *json_get(const jnode *obj, const char *name);
/* json_uint: an integer written as digits only (no sign, fraction,
 * exponent or leading zero), at most max. 0 on success. */
int json_uint(const jnode *j, uint64_t max, uint64_t *out);
/* json_put_string appends s as a JSON string to buf (cap bytes); returns
 * the new length, or (size_t)-1 if it does not fit. */
size_t json_put_string(char *buf, size_t len, size_t cap, const char *s);

/* ---- names, base64, hex, AES-256-GCM (util.c) ---- */
int valid_device_id(const char *s);
int valid_key_id(const char *s);
int valid_key_version(const char *s);
/* b64_encode: standard alphabet, padded, NUL-terminated; returns length. */
size_t b64_encode(const uint8_t *in, size_t n, char *out);
/* b64_decode: standard or URL-safe, padded or not; -1 on error, else the
 * decoded length. */
long b64_decode(const char *in, size_t n, uint8_t *out, size_t cap);
int hex_decode(const char *hex, uint8_t *out, size_t n);
void hex_encode(const uint8_t *in, size_t n, char *out);
/* gcm_seal writes nonce ‖ ciphertext ‖ tag (n + 28 bytes) to out; a NULL
 * nonce takes 12 fresh random bytes. 0 on success. */
int gcm_seal(const uint8_t key[DEK_SIZE], const uint8_t *nonce, const uint8_t *aad, size_t aadlen,
             const uint8_t *pt, size_t n, uint8_t *out);
/* gcm_open opens SEALED (n >= 28 bytes) into out (n - 28 bytes); 0 when
 * the tag verifies. */
int gcm_open(const uint8_t key[DEK_SIZE], const uint8_t *aad, size_t aadlen, const uint8_t *sealed, size_t n,
             uint8_t *out);
void wipe(void *p, size_t n);

/* ---- sealing telemetry (envelope.c) ---- */
/* env_aad: device_id 0x00 timestamp [0x00 pointer]; returns the length. */
size_t env_aad(uint8_t *out, size_t cap, const char *device_id, uint64_t ts, const char *pointer);
/* env_seal_value seals one value's JSON text (shape B field: pointer is
 * its RFC 6901 pointer; shape A: pointer NULL and json the readings
 * object) and writes its text: base64 SEALED, after "ENC:AES256:" when
 * pointer is set. Returns the length written, 0 on error. */
size_t env_seal_value(const uint8_t key[DEK_SIZE], const uint8_t *nonce, const char *device_id, uint64_t ts,
                      const char *pointer, const char *json, size_t jlen, char *out, size_t cap);
/* env_shape_a writes a whole shape A message sealing readings (a JSON
 * object's text). key_id may be NULL (then device/<device_id>). */
size_t env_shape_a(const uint8_t key[DEK_SIZE], const uint8_t *nonce, const char *device_id, uint64_t ts,
                   const char *key_id, const char *key_version, const char *readings, char *out, size_t cap);
/* A shape B member: name, its value's JSON text, and whether to seal it. */
typedef struct { const char *name; const char *json; int seal; } env_field;
/* env_shape_b writes a shape B message: device_id, timestamp, key_version,
 * key_id, then the fields in order, each sealed one under pointer
 * "/<name>" (escaped per RFC 6901). */
size_t env_shape_b(const uint8_t key[DEK_SIZE], const char *device_id, uint64_t ts, const char *key_id,
                   const char *key_version, const env_field *f, int nf, char *out, size_t cap);
/* json_pointer_append appends "/" + escaped name to ptr (cap bytes). */
int json_pointer_append(char *ptr, size_t cap, const char *name);

/* ---- device key state (state.c) ---- */
typedef struct {
    char key_id[KEY_ID_MAX + 1];
    char version[KEY_VERSION_MAX + 1];
    uint64_t generation; /* 0: installed without one (provisioned, v1 rekey) */
    uint8_t dek[DEK_SIZE];
} dev_key;
typedef struct {
    char key_id[KEY_ID_MAX + 1];
    uint64_t floor; /* highest generation accepted */
} dev_floor;
typedef struct {
    char device_id[DEV_ID_MAX + 1];
    char seal_key_id[KEY_ID_MAX + 1];      /* the key it seals under */
    char seal_version[KEY_VERSION_MAX + 1];
    dev_key keys[DEV_MAX_KEYS];
    int nkeys;
    dev_floor floors[DEV_MAX_KEYS];
    int nfloors;
} dev_state;

const dev_key *state_key(const dev_state *s, const char *key_id, const char *version);
int state_uses_key(const dev_state *s, const char *key_id);
uint64_t state_floor(const dev_state *s, const char *key_id);
/* state_from_credential reads dekctl's credential file (JSON: device_id,
 * key_id, key_version, dek_b64). 0 on success. */
int state_from_credential(dev_state *s, const char *path);
/* state_save writes the keys to path and the floors to path.floor, each
 * atomically (temporary file, fsync, rename, fsync of the directory),
 * keys first. 0 on success. */
int state_save(const dev_state *s, const char *path);
/* state_load reads both files. Returns 0, -1 on error, or STATE_ROLLED_BACK
 * when a floor is above every generation the device holds for that key:
 * the key file was restored from an older copy; re-provision. */
#define STATE_ROLLED_BACK 3
int state_load(dev_state *s, const char *path);
void state_wipe(dev_state *s);

/* ---- rekeys (rekey.c) ---- */
typedef enum {
    RK_INSTALLED, RK_REPEAT, RK_MALFORMED, RK_NOT_FOR_DEVICE, RK_ROLLBACK, RK_UNKNOWN_WRAP_KEY, RK_AUTH_FAILED
} rk_outcome;
const char *rk_outcome_name(rk_outcome o);
typedef struct {
    char device_id[DEV_ID_MAX + 1];
    char key_id[KEY_ID_MAX + 1];
    char new_version[KEY_VERSION_MAX + 1];
    char wrap_key_id[KEY_ID_MAX + 1];
    char wrap_key_version[KEY_VERSION_MAX + 1];
    uint64_t issued_at;
    uint64_t generation; /* 0: none (an original v1 message) */
    uint8_t sealed[60], sealed_gen[60];
    uint8_t new_dek[DEK_SIZE]; /* RK_INSTALLED only; the caller wipes it */
} rk_msg;
/* rekey_take runs every check of docs/device-guide.md in order: form,
 * addressee, repeat, anti-rollback, wrapping key, authenticity. It
 * changes nothing; on RK_INSTALLED the caller stores m->new_dek with
 * m->generation (rekey_install). */
rk_outcome rekey_take(const dev_state *s, const char *msg, size_t n, rk_msg *m);
/* rekey_aad / rekey_gen_aad build the associated data; return the length. */
size_t rekey_aad(const rk_msg *m, uint8_t *out, size_t cap);
size_t rekey_gen_aad(const rk_msg *m, uint8_t *out, size_t cap);
/* rekey_install adds the new version to s, raises the floor, seals under
 * it from now on if it is of the key the device seals under, and forgets
 * all but the two newest versions of that key. Then persist (state_save)
 * before sealing anything. 0 on success. */
int rekey_install(dev_state *s, const rk_msg *m);

#endif
