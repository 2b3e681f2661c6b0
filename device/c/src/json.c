/* A small strict JSON parser (RFC 8259) that keeps each value's raw text,
 * so a number's exact spelling can be checked, and refuses repeated member
 * names, as docs/envelope-v1.md and docs/rekey-v1.md require. */
#include <stdlib.h>
#include <string.h>

#include "device.h"

#define MAX_DEPTH 64

typedef struct {
    const char *s, *end;
    const char *err;
} parser;

static void skip_ws(parser *p) {
    while (p->s < p->end && (*p->s == ' ' || *p->s == '\t' || *p->s == '\n' || *p->s == '\r')) p->s++;
}

static jnode *node(parser *p, jtype t) {
    jnode *j = calloc(1, sizeof *j);
    if (!j) p->err = "out of memory";
    else j->type = t;
    return j;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int hex4(const char *s, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(s[i]);
        if (h < 0) return -1;
        v = v << 4 | (unsigned)h;
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, unsigned cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | cp >> 6); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12); o[1] = (char)(0x80 | (cp >> 6 & 0x3F)); o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18); o[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* parse_string reads a string at p->s (on the quote) into a new buffer. */
static char *parse_string(parser *p, size_t *len) {
    const char *s = p->s + 1;
    /* decoded is never longer than the raw text */
    const char *q = s;
    while (q < p->end && *q != '"') {
        if (*q == '\\') q++;
        q++;
    }
    if (q >= p->end) { p->err = "unterminated string"; return NULL; }
    char *out = malloc((size_t)(q - s) + 1), *o = out;
    if (!out) { p->err = "out of memory"; return NULL; }
    while (s < p->end && *s != '"') {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20) { p->err = "control character in string"; free(out); return NULL; }
        if (c != '\\') { *o++ = (char)c; s++; continue; }
        s++;
        if (s >= p->end) break;
        switch (*s) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '/': *o++ = '/'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            if (p->end - s < 5 || hex4(s + 1, &cp)) { p->err = "bad \\u escape"; free(out); return NULL; }
            s += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && p->end - s >= 7 && s[1] == '\\' && s[2] == 'u' && !hex4(s + 3, &lo) &&
                lo >= 0xDC00 && lo < 0xE000) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                s += 6;
            } else if (cp >= 0xD800 && cp < 0xE000) {
                cp = 0xFFFD; /* a lone surrogate, as Go's encoding/json reads it */
            }
            o += put_utf8(o, cp);
            break;
        }
        default: p->err = "bad escape"; free(out); return NULL;
        }
        s++;
    }
    if (s >= p->end) { p->err = "unterminated string"; free(out); return NULL; }
    *o = 0;
    *len = (size_t)(o - out);
    p->s = s + 1;
    return out;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

static jnode *parse_value(parser *p, int depth);

static jnode *parse_container(parser *p, int depth, int obj) {
    jnode *j = node(p, obj ? J_OBJ : J_ARR), *last = NULL;
    if (!j) return NULL;
    j->raw = p->s++;
    skip_ws(p);
    if (p->s < p->end && *p->s == (obj ? '}' : ']')) { p->s++; j->rawlen = (size_t)(p->s - j->raw); return j; }
    for (;;) {
        char *name = NULL;
        size_t nlen = 0;
        skip_ws(p);
        if (obj) {
            if (p->s >= p->end || *p->s != '"') { p->err = "member name expected"; goto fail; }
            if (!(name = parse_string(p, &nlen))) goto fail;
            for (jnode *k = j->child; k; k = k->next) {
                if (k->nlen == nlen && !memcmp(k->name, name, nlen)) { p->err = "member name repeated"; free(name); goto fail; }
            }
            skip_ws(p);
            if (p->s >= p->end || *p->s != ':') { p->err = "':' expected"; free(name); goto fail; }
            p->s++;
        }
        jnode *v = parse_value(p, depth + 1);
        if (!v) { free(name); goto fail; }
        v->name = name;
        v->nlen = nlen;
        if (last) last->next = v; else j->child = v;
        last = v;
        skip_ws(p);
        if (p->s < p->end && *p->s == ',') { p->s++; continue; }
        if (p->s < p->end && *p->s == (obj ? '}' : ']')) { p->s++; break; }
        p->err = obj ? "',' or '}' expected" : "',' or ']' expected";
        goto fail;
    }
    j->rawlen = (size_t)(p->s - j->raw);
    return j;
fail:
    json_free(j);
    return NULL;
}

static jnode *parse_value(parser *p, int depth) {
    if (depth > MAX_DEPTH) { p->err = "nested too deep"; return NULL; }
    skip_ws(p);
    if (p->s >= p->end) { p->err = "value expected"; return NULL; }
    const char *start = p->s;
    jnode *j;
    switch (*p->s) {
    case '{': return parse_container(p, depth, 1);
    case '[': return parse_container(p, depth, 0);
    case '"':
        if (!(j = node(p, J_STR))) return NULL;
        if (!(j->str = parse_string(p, &j->slen))) { free(j); return NULL; }
        break;
    case 't': case 'f': case 'n': {
        static const struct { const char *w; jtype t; } lit[] = {{"true", J_TRUE}, {"false", J_FALSE}, {"null", J_NULL}};
        for (int i = 0; i < 3; i++) {
            size_t l = strlen(lit[i].w);
            if ((size_t)(p->end - p->s) >= l && !memcmp(p->s, lit[i].w, l)) {
                if (!(j = node(p, lit[i].t))) return NULL;
                p->s += l;
                goto done;
            }
        }
        p->err = "bad literal";
        return NULL;
    }
    default: {
        const char *s = p->s;
        if (s < p->end && *s == '-') s++;
        if (s < p->end && *s == '0') s++;
        else if (s < p->end && is_digit(*s)) while (s < p->end && is_digit(*s)) s++;
        else { p->err = "bad value"; return NULL; }
        if (s < p->end && *s == '.') {
            s++;
            if (s >= p->end || !is_digit(*s)) { p->err = "bad number"; return NULL; }
            while (s < p->end && is_digit(*s)) s++;
        }
        if (s < p->end && (*s == 'e' || *s == 'E')) {
            s++;
            if (s < p->end && (*s == '+' || *s == '-')) s++;
            if (s >= p->end || !is_digit(*s)) { p->err = "bad number"; return NULL; }
            while (s < p->end && is_digit(*s)) s++;
        }
        if (!(j = node(p, J_NUM))) return NULL;
        p->s = s;
    }
    }
done:
    j->raw = start;
    j->rawlen = (size_t)(p->s - start);
    return j;
}

jnode *json_parse(const char *s, size_t n, const char **err) {
    parser p = {s, s + n, NULL};
    jnode *j = parse_value(&p, 0);
    if (j) {
        skip_ws(&p);
        if (p.s != p.end) { p.err = "trailing data"; json_free(j); j = NULL; }
    }
    if (err) *err = p.err;
    return j;
}

void json_free(jnode *j) {
    while (j) {
        jnode *next = j->next;
        json_free(j->child);
        free(j->str);
        free(j->name);
        free(j);
        j = next;
    }
}

const jnode *json_get(const jnode *obj, const char *name) {
    if (!obj || obj->type != J_OBJ) return NULL;
    size_t l = strlen(name);
    for (const jnode *k = obj->child; k; k = k->next)
        if (k->nlen == l && !memcmp(k->name, name, l)) return k;
    return NULL;
}

int json_uint(const jnode *j, uint64_t max, uint64_t *out) {
    if (!j || j->type != J_NUM || j->rawlen == 0 || j->rawlen > 20) return -1;
    if (j->rawlen > 1 && j->raw[0] == '0') return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < j->rawlen; i++) {
        if (!is_digit(j->raw[i])) return -1;
        unsigned d = (unsigned)(j->raw[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    if (v > max) return -1;
    *out = v;
    return 0;
}

size_t json_put_string(char *buf, size_t len, size_t cap, const char *s) {
    static const char hex[] = "0123456789abcdef";
#define PUTC(c) do { if (len + 1 >= cap) return (size_t)-1; buf[len++] = (c); } while (0)
    PUTC('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') { PUTC('\\'); PUTC((char)c); }
        else if (c < 0x20) { PUTC('\\'); PUTC('u'); PUTC('0'); PUTC('0'); PUTC(hex[c >> 4]); PUTC(hex[c & 15]); }
        else PUTC((char)c);
    }
    PUTC('"');
    buf[len] = 0;
    return len;
#undef PUTC
}
