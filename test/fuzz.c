/*
 * libFuzzer target over the code that reads untrusted bytes: the HTTP
 * request parser and handshake, the frame decoder (its input split into
 * chunks as a socket would deliver them), UTF-8 and base64, and the
 * operator's certificate and key files (PEM, the chain, the key, their
 * match), and the program's --config file reader (program/main.c with
 * WSPROXY_NO_MAIN, without main(); !include opens nothing here).  Both
 * files in one translation unit, the unity build an engine may do.  The
 * first input byte picks the target (0 http, 1 frames, 2 leaf, 3 tls, 4 config, modulo 5), the
 * second shapes it.
 *   make build/fuzz && build/fuzz -max_total_time=60 CORPUS_DIR
 * WSPROXY_FUZZ_TARGET=http|frames|leaf|tls|config runs every input through that
 * target alone (the first byte is then ignored), to fuzz one at a time.
 * test/test_fuzz.py runs it for a bounded time in `make test`.
 */
#define WSPROXY_NO_MAIN
#include "../wsproxy.c"
#include "../program/main.c"

#define FUZZ_ASSERT(c)                                                       \
    do {                                                                     \
        if (!(c))                                                            \
            __builtin_trap();                                                \
    } while (0)

static void fuzz_http(const uint8_t *data, size_t size)
{
    static struct http_hdr h[WS_PROXY_MAX_HEADERS];
    struct http_req r;
    struct http_answer a;
    char out[512];
    char *buf = malloc(size ? size : 1); /* exact size: ASan sees over-reads */
    long n;
    memcpy(buf, data, size);
    r.h = h;
    r.maxh = WS_PROXY_MAX_HEADERS;
    n = http_parse(buf, size, &r);
    FUZZ_ASSERT(n == HTTP_PARTIAL || n == HTTP_BAD || n == HTTP_TOO_MANY ||
                (n > 0 && (size_t)n <= size));
    if (n > 0) {
        http_handshake(&r, "https://a.example, http://b.example:8080", "mysql chat", &a);
        FUZZ_ASSERT(a.status == 101 || a.status == 200 || a.status == 400 ||
                    a.status == 403 || a.status == 426);
        FUZZ_ASSERT(http_write_answer(&a, out, sizeof out) < sizeof out);
    }
    free(buf);
}

static void fuzz_frames(uint8_t arg, const uint8_t *data, size_t size)
{
    struct frame_dec d;
    size_t at = 0, chunk = arg >= 128 ? size + 1 : (size_t)(arg % 23) + 1;
    memset(&d, 0, sizeof d);
    d.max_msg = arg & 64 ? 1000 : 0;
    while (at < size) {
        size_t len = size - at < chunk ? size - at : chunk, pos = 0, out = 0;
        uint8_t *buf = malloc(len);
        int rc = FRAME_CONTROL;
        memcpy(buf, data + at, len);
        while (rc == FRAME_CONTROL) {
            rc = frame_decode(&d, buf, len, &pos, &out);
            FUZZ_ASSERT(out <= pos && pos <= len);
            FUZZ_ASSERT(d.ctl_len <= 125 && d.hlen <= sizeof d.hdr);
            if (rc == FRAME_CONTROL)
                FUZZ_ASSERT(d.op == OP_PING || d.op == OP_PONG || d.op == OP_CLOSE);
        }
        free(buf);
        if (rc == FRAME_ERROR) {
            FUZZ_ASSERT(d.err == 1002 || d.err == 1007 || d.err == 1009);
            return;
        }
        at += len;
    }
}

static void fuzz_leaf(const uint8_t *data, size_t size)
{
    uint8_t out[64];
    uint32_t s = utf8_check(0, data, size);
    FUZZ_ASSERT(s == UTF8_BAD || (s & 0xFF) <= 3);
    if (size <= 88) {
        long n = b64_decode((const char *)data, size, out, sizeof out);
        FUZZ_ASSERT(n < 0 || (size_t)n <= sizeof out);
    }
}

#ifndef WS_PROXY_NO_TLS
/* A file's text as tls_read_file() leaves it, in a buffer of exactly its
 * size (ASan sees over-reads); nl adds the newline that function adds. */
static struct bvec fuzz_text(const uint8_t *data, size_t size, int nl)
{
    struct bvec v;
    memset(&v, 0, sizeof v);
    if (size + (nl != 0)) {
        v.p = malloc(size + (nl != 0));
        if (size)
            memcpy(v.p, data, size);
        if (nl)
            v.p[size] = '\n';
        v.n = v.cap = size + (nl != 0);
    }
    return v;
}

/* One PEM block of the given DER, in 64-column lines, as text. */
static struct bvec fuzz_pem(const char *label, const uint8_t *der, size_t n)
{
    struct bvec v;
    char *b64 = malloc(4 * (n / 3 + 1) + 1), line[80];
    size_t len = b64_encode(der, n, b64), i;
    memset(&v, 0, sizeof v);
    snprintf(line, sizeof line, "-----BEGIN %s-----\n", label);
    bvec_add(&v, line, strlen(line));
    for (i = 0; i < len; i += 64) {
        bvec_add(&v, b64 + i, len - i < 64 ? len - i : 64);
        bvec_add(&v, "\n", 1);
    }
    snprintf(line, sizeof line, "-----END %s-----\n", label);
    bvec_add(&v, line, strlen(line));
    free(b64);
    return v;
}

/* The certificate and key files, through what tls_creds_load() runs on
 * their text.  arg bit 2 clear: the input is text; bit 0 adds the final
 * newline; bit 1: one file holds both (cert_file == key_file), otherwise
 * the key file's text is what follows the first NUL byte.  Bit 2 set: the
 * input is DER, wrapped here in PEM so that mutations reach the DER
 * decoders and our use of their output: a 2-byte big-endian length, the
 * certificate's DER, then the key's, labelled by arg / 8 % 3 as PKCS#8,
 * PKCS#1 or SEC1. */
static void fuzz_tls(uint8_t arg, const uint8_t *data, size_t size)
{
    static const char *const labels[] = {"PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"};
    const uint8_t *nul = arg & 2 ? NULL : memchr(data, 0, size);
    size_t ncert = nul ? (size_t)(nul - data) : size;
    struct bvec cert, key;
    struct tls_creds *cr = NULL;
    char err[256] = "";
    int rc;
    if (arg & 4) {
        if (size < 2)
            return;
        ncert = (size_t)data[0] << 8 | data[1];
        data += 2, size -= 2;
        if (ncert > size)
            ncert = size;
        cert = fuzz_pem("CERTIFICATE", data, ncert);
        key = fuzz_pem(labels[arg / 8 % 3], data + ncert, size - ncert);
        arg &= (uint8_t)~2;
    } else {
        cert = fuzz_text(data, ncert, arg & 1);
        key = arg & 2 ? cert
                      : fuzz_text(nul ? nul + 1 : data, nul ? size - ncert - 1 : 0, arg & 1);
    }
    rc = tls_creds_parse(&cert, &key, "c.pem", "k.pem", &cr, err, sizeof err);
    FUZZ_ASSERT(rc == 0 || rc == WS_PROXY_ETLS || rc == WS_PROXY_ENOMEM);
    if (rc == 0) {
        FUZZ_ASSERT(cr && cr->chain_len >= 1 && cr->chain_len <= WS_PROXY_TLS_MAX_CHAIN);
        FUZZ_ASSERT(cr->key_type == BR_KEYTYPE_RSA || cr->key_type == BR_KEYTYPE_EC);
        FUZZ_ASSERT(!strncmp(cr->info, "certificate CN=", 15));
    } else
        FUZZ_ASSERT(!cr && err[0] && strlen(err) < sizeof err);
    tls_creds_free(cr);
    if (!(arg & 2))
        free(key.p);
    free(cert.p);
}
#endif

/* Any text: 0, or an error that names the file and line. */
static void fuzz_config(uint8_t arg, const uint8_t *data, size_t size)
{
    struct cli s;
    char err[256];
    char *text = malloc(size + 1); /* exact size: ASan sees over-reads */
    int rc;
    memcpy(text, data, size);
    text[size] = 0;
    memset(&s, 0, sizeof s);
    s.no_include = 1;
    s.section = arg & 1 ? "engine" : NULL;
    err[0] = 0;
    rc = cli_text(&s, "f.cnf", text, size, 0, err, sizeof err);
    FUZZ_ASSERT(rc == 0 || (rc == -1 && !strncmp(err, "f.cnf:", 6)));
    if (rc == 0 && s.cfg.socket_path)
        FUZZ_ASSERT(strlen(s.cfg.socket_path) < sizeof(((struct sockaddr_un *)0)->sun_path));
    cli_free(&s);
    free(text);
}

static int fuzz_only = -1; /* WSPROXY_FUZZ_TARGET, or -1 for "by byte" */

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static const char *const names[] = {"http", "frames", "leaf", "tls", "config"};
    const char *t = getenv("WSPROXY_FUZZ_TARGET");
    int i;
    (void)argc, (void)argv;
    for (i = 0; t && i < 5; i++)
        if (!strcmp(t, names[i]))
            fuzz_only = i;
    if (t && fuzz_only < 0) {
        fprintf(stderr, "WSPROXY_FUZZ_TARGET=%s: not http, frames, leaf, tls or config\n", t);
        __builtin_trap();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    switch (fuzz_only >= 0 ? fuzz_only : data[0] % 5) {
    case 0:
        fuzz_http(data + 2, size - 2);
        break;
    case 1:
        fuzz_frames(data[1], data + 2, size - 2);
        break;
#ifndef WS_PROXY_NO_TLS
    case 3:
        fuzz_tls(data[1], data + 2, size - 2);
        break;
#endif
    case 4:
        fuzz_config(data[1], data + 2, size - 2);
        break;
    default:
        fuzz_leaf(data + 2, size - 2);
    }
    return 0;
}
