/*
 * libFuzzer target over the code that reads network bytes: the HTTP
 * request parser and handshake, the frame decoder (its input split into
 * chunks as a socket would deliver them), UTF-8 and base64, and the
 * program's --config file reader (WSPROXY_CLI compiles it without main();
 * !include opens nothing here).  The first input byte picks the target, the
 * second shapes it.
 *   make build/fuzz && build/fuzz -max_total_time=60 CORPUS_DIR
 * test/test_fuzz.py runs it for a bounded time in `make test`.
 */
#define WSPROXY_CLI
#include "../wsproxy.c"

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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    switch (data[0] % 4) {
    case 0:
        fuzz_http(data + 2, size - 2);
        break;
    case 1:
        fuzz_frames(data[1], data + 2, size - 2);
        break;
    case 3:
        fuzz_config(data[1], data + 2, size - 2);
        break;
    default:
        fuzz_leaf(data + 2, size - 2);
    }
    return 0;
}
