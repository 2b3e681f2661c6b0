/* telemdev: the reference device on MQTT (libmosquitto). It publishes
 * sealed telemetry on its own event topic at QoS 1 with a persistent
 * session (client id = device id), takes rekeys on its own command topic
 * (every check of docs/device-guide.md, anti-rollback included), saves
 * its key state atomically before sealing under a new key, and can hold
 * one message sealed under its first key to send it after a rekey (a
 * message buffered offline, inside the grace period).
 *
 * Output, one line each on stdout: "connected", "sent <version> <seq>",
 * "rekey <outcome> <key_id>@<version> generation <g>".
 * Exit: 0 done, 1 error or timeout, 2 usage, 3 key state rolled back
 * (restored from a backup: re-provision the device). */
#include <inttypes.h>
#include <mosquitto.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "device.h"

typedef struct {
    const char *state_path, *cred, *host, *cafile, *cert, *key, *type, *event, *shape;
    int port, interval_ms, count, after_rekey, buffer_first, timeout_s, keepalive, init_only;
} options;

typedef struct {
    options o;
    dev_state s;
    int connected, rekeyed, after;
    long published, acked; /* QoS 1 publishes and their PUBACKs */
    char evt_topic[512], cmd_topic[512];
    char *held; /* a message sealed under the first key, sent after a rekey */
    size_t held_len;
} device;

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static int usage(void) {
    fprintf(stderr,
            "usage: telemdev --state FILE [--credential FILE] --host H --port P\n"
            "                [--cafile F --cert F --key F] [--type monitor] [--event telemetry]\n"
            "                [--shape A|B|AB] [--interval-ms 1000] [--count N] [--after-rekey N]\n"
            "                [--buffer-first] [--timeout S] [--keepalive 60]\n"
            "       telemdev --state FILE --credential FILE --init-only\n"
            "                (load the credential into the key state, replacing keys and\n"
            "                floors: provisioning and re-provisioning; then exit)\n");
    return 2;
}

static void on_connect(struct mosquitto *m, void *arg, int rc) {
    device *d = arg;
    if (rc) return;
    d->connected = 1;
    /* its own command topic only (the broker's ACL allows nothing else) */
    mosquitto_subscribe(m, NULL, d->cmd_topic, 1);
    printf("connected\n");
    fflush(stdout);
}

static void on_disconnect(struct mosquitto *m, void *arg, int rc) {
    (void)m; (void)rc;
    ((device *)arg)->connected = 0;
}

static void on_publish(struct mosquitto *m, void *arg, int mid) {
    (void)m; (void)mid;
    ((device *)arg)->acked++;
}

static void on_message(struct mosquitto *m, void *arg, const struct mosquitto_message *msg) {
    (void)m;
    device *d = arg;
    if (strcmp(msg->topic, d->cmd_topic)) return;
    rk_msg r;
    rk_outcome o = rekey_take(&d->s, msg->payload, (size_t)msg->payloadlen, &r);
    if (o == RK_INSTALLED) {
        dev_state next = d->s;
        /* persist before use: a crash leaves the old state or the new */
        if (rekey_install(&next, &r) || state_save(&next, d->o.state_path)) {
            fprintf(stderr, "telemdev: saving the new key failed; not installed (the backend sends it again)\n");
            state_wipe(&next);
            wipe(r.new_dek, sizeof r.new_dek);
            return;
        }
        state_wipe(&d->s);
        d->s = next;
        d->rekeyed++;
    }
    wipe(r.new_dek, sizeof r.new_dek);
    printf("rekey %s %s@%s generation %" PRIu64 "\n", rk_outcome_name(o), r.key_id, r.new_version, r.generation);
    fflush(stdout);
}

/* seal makes message number seq under the current key. */
static size_t seal(device *d, int seq, char *out, size_t cap) {
    const dev_key *k = state_key(&d->s, d->s.seal_key_id, d->s.seal_version);
    uint64_t ts = (uint64_t)time(NULL);
    char own[KEY_ID_MAX + 8];
    snprintf(own, sizeof own, "device/%s", d->s.device_id);
    const char *kid = strcmp(own, k->key_id) ? k->key_id : NULL;
    int b = !strcmp(d->o.shape, "B") || (!strcmp(d->o.shape, "AB") && seq % 2);
    char seqs[32], readings[256];
    snprintf(seqs, sizeof seqs, "%d", seq);
    if (!b) {
        snprintf(readings, sizeof readings, "{\"seq\":%d,\"heart_rate\":72,\"spo2\":97,\"patient_id\":\"P-0012345\"}", seq);
        return env_shape_a(k->dek, NULL, d->s.device_id, ts, kid, k->version, readings, out, cap);
    }
    env_field f[] = {{"seq", seqs, 0}, {"heart_rate", "72", 0}, {"patient_id", "\"P-0012345\"", 1},
                     {"location", "{\"lat\":37.7749,\"lon\":-122.4194}", 1}};
    return env_shape_b(k->dek, d->s.device_id, ts, kid, k->version, f, 4, out, cap);
}

static int publish(struct mosquitto *m, device *d, const char *msg, size_t n, const char *version, int seq) {
    int rc = mosquitto_publish(m, NULL, d->evt_topic, (int)n, msg, 1, false);
    if (rc != MOSQ_ERR_SUCCESS) return -1;
    d->published++;
    printf("sent %s %d\n", version, seq);
    fflush(stdout);
    return 0;
}

static int parse_args(int argc, char **argv, options *o) {
    *o = (options){.host = "127.0.0.1", .port = 1883, .type = "monitor", .event = "telemetry", .shape = "AB",
                   .interval_ms = 1000, .keepalive = 60};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define STR(flag, dst) if (!strcmp(a, flag)) { if (!v) return -1; dst = v; i++; continue; }
#define INT(flag, dst) if (!strcmp(a, flag)) { if (!v) return -1; dst = atoi(v); i++; continue; }
        STR("--state", o->state_path) STR("--credential", o->cred) STR("--host", o->host) STR("--cafile", o->cafile)
        STR("--cert", o->cert) STR("--key", o->key) STR("--type", o->type) STR("--event", o->event) STR("--shape", o->shape)
        INT("--port", o->port) INT("--interval-ms", o->interval_ms) INT("--count", o->count)
        INT("--after-rekey", o->after_rekey) INT("--timeout", o->timeout_s) INT("--keepalive", o->keepalive)
        if (!strcmp(a, "--buffer-first")) { o->buffer_first = 1; continue; }
        if (!strcmp(a, "--init-only")) { o->init_only = 1; continue; }
        return -1;
    }
    if (!o->state_path || (!!o->cafile + !!o->cert + !!o->key) % 3 || strspn(o->shape, "AB") != strlen(o->shape) || !o->shape[0])
        return -1;
    return 0;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    device d;
    memset(&d, 0, sizeof d);
    if (parse_args(argc, argv, &d.o)) return usage();
    if (d.o.init_only) { /* loading a credential (re)provisions: keys and floors replaced */
        if (!d.o.cred || state_from_credential(&d.s, d.o.cred) || state_save(&d.s, d.o.state_path)) {
            fprintf(stderr, "telemdev: cannot load the credential into %s\n", d.o.state_path);
            return 1;
        }
        state_wipe(&d.s);
        return 0;
    }
    int rc = state_load(&d.s, d.o.state_path);
    if (rc == STATE_ROLLED_BACK) {
        fprintf(stderr, "telemdev: key state is older than its anti-rollback floor (restored from a backup?): re-provision this device\n");
        return 3;
    }
    if (rc) {
        if (!d.o.cred || state_from_credential(&d.s, d.o.cred) || state_save(&d.s, d.o.state_path)) {
            fprintf(stderr, "telemdev: no key state in %s and no readable --credential\n", d.o.state_path);
            return 1;
        }
    }
    snprintf(d.evt_topic, sizeof d.evt_topic, "iot-2/type/%s/id/%s/evt/%s/fmt/json", d.o.type, d.s.device_id, d.o.event);
    snprintf(d.cmd_topic, sizeof d.cmd_topic, "iot-2/type/%s/id/%s/cmd/rekey/fmt/json", d.o.type, d.s.device_id);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    mosquitto_lib_init();
    /* client id = device id, clean session off: the broker keeps the
     * subscription and queues rekeys while the device is away */
    struct mosquitto *m = mosquitto_new(d.s.device_id, false, &d);
    if (!m) return 1;
    mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
    mosquitto_connect_callback_set(m, on_connect);
    mosquitto_disconnect_callback_set(m, on_disconnect);
    mosquitto_message_callback_set(m, on_message);
    mosquitto_publish_callback_set(m, on_publish);
    mosquitto_reconnect_delay_set(m, 1, 30, true);
    if (d.o.cafile && (mosquitto_tls_set(m, d.o.cafile, NULL, d.o.cert, d.o.key, NULL) ||
                       mosquitto_tls_opts_set(m, 1, "tlsv1.2", NULL))) {
        fprintf(stderr, "telemdev: TLS setup failed\n");
        return 1;
    }
    if (mosquitto_connect(m, d.o.host, d.o.port, d.o.keepalive) != MOSQ_ERR_SUCCESS)
        fprintf(stderr, "telemdev: first connect failed; retrying\n");

    double start = now_s(), next = start;
    int seq = 0, code = 0;
    char *buf = malloc(16384);
    if (d.o.buffer_first) {
        d.held = malloc(16384);
        d.held_len = seal(&d, seq++, d.held, 16384);
    }
    char first_version[KEY_VERSION_MAX + 1];
    strcpy(first_version, d.s.seal_version);
    while (!stop) {
        int lrc = mosquitto_loop(m, 50, 1);
        if (lrc == MOSQ_ERR_NO_CONN || lrc == MOSQ_ERR_CONN_LOST || lrc == MOSQ_ERR_ERRNO || lrc == MOSQ_ERR_TLS) {
            struct timespec ts = {0, 200000000};
            nanosleep(&ts, NULL);
            mosquitto_reconnect(m);
        }
        if (d.o.timeout_s && now_s() - start > d.o.timeout_s) { fprintf(stderr, "telemdev: timed out\n"); code = 1; break; }
        if (!d.connected || now_s() < next) continue;
        next += d.o.interval_ms / 1000.0;
        if (d.held && d.rekeyed) { /* the buffered message, still under the old key */
            if (!publish(m, &d, d.held, d.held_len, first_version, 0)) { free(d.held); d.held = NULL; }
            continue;
        }
        size_t n = seal(&d, seq, buf, 16384);
        if (!n || publish(m, &d, buf, n, d.s.seal_version, seq)) { fprintf(stderr, "telemdev: seal/publish failed\n"); continue; }
        seq++;
        if (d.rekeyed && strcmp(d.s.seal_version, first_version)) d.after++;
        if ((d.o.count && seq >= d.o.count) || (d.o.after_rekey && d.after >= d.o.after_rekey && !d.held)) break;
    }
    /* leave once every QoS 1 publish has its PUBACK (at most 10 s) */
    for (int i = 0; i < 200 && d.acked < d.published; i++) {
        if (mosquitto_loop(m, 50, 1) != MOSQ_ERR_SUCCESS) mosquitto_reconnect(m);
    }
    if (d.acked < d.published) { fprintf(stderr, "telemdev: %ld publishes not acknowledged\n", d.published - d.acked); code = 1; }
    mosquitto_disconnect(m);
    mosquitto_loop(m, 50, 1);
    mosquitto_destroy(m);
    mosquitto_lib_cleanup();
    free(buf);
    free(d.held);
    state_wipe(&d.s);
    return code;
}
