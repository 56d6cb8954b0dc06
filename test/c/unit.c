/*
 * Unit tests: include wsproxy.c to reach its static functions.
 *   build/unit            run every case
 *   build/unit NAME...    run the named cases
 *   build/unit --list     print the case names
 * Needs only cc and make: the restart cases use a Unix-socket echo engine
 * and a minimal WebSocket client written below.
 */
#include "../../wsproxy.c"

#include <dirent.h>
#include <sys/wait.h>

static int failures;
static const char *current;

#define FAIL(...)                                                            \
    do {                                                                     \
        fprintf(stderr, "%s:%d: [%s] ", __FILE__, __LINE__, current);        \
        fprintf(stderr, __VA_ARGS__);                                        \
        fputc('\n', stderr);                                                 \
        failures++;                                                          \
    } while (0)
#define CHECK(c)                                                             \
    do {                                                                     \
        if (!(c))                                                            \
            FAIL("check failed: %s", #c);                                    \
    } while (0)
#define EQ_INT(a, b)                                                         \
    do {                                                                     \
        long long a_ = (long long)(a), b_ = (long long)(b);                  \
        if (a_ != b_)                                                        \
            FAIL("%s == %lld, expected %s == %lld", #a, a_, #b, b_);         \
    } while (0)
#define EQ_STR(a, b)                                                         \
    do {                                                                     \
        const char *a_ = (a), *b_ = (b);                                     \
        if (strcmp(a_, b_))                                                  \
            FAIL("%s == \"%s\", expected \"%s\"", #a, a_, b_);               \
    } while (0)

/* ---- SHA-1 (FIPS 180 examples) and base64 (RFC 4648 section 10) ---- */

static void hex(const uint8_t *d, size_t n, char *out)
{
    size_t i;
    for (i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

static void sha1_hex(const void *data, size_t len, size_t chunk, char out[41])
{
    struct sha1 s;
    uint8_t d[20];
    size_t i;
    sha1_init(&s);
    for (i = 0; i < len; i += chunk)
        sha1_update(&s, (const uint8_t *)data + i, len - i < chunk ? len - i : chunk);
    sha1_final(&s, d);
    hex(d, 20, out);
}

static void test_sha1_fips(void)
{
    static const struct {
        const char *in, *out;
    } v[] = {
        {"abc", "a9993e364706816aba3e25717850c26c9cd0d89d"},
        {"", "da39a3ee5e6b4b0d3255bfef95601890afd80709"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "84983e441c3bd26ebaae4aa1f95129e5e54670f1"},
    };
    char out[41];
    size_t i, chunk;
    char *million = malloc(1000000);
    for (i = 0; i < COUNT_OF(v); i++)
        for (chunk = 1; chunk <= 64; chunk++) {
            sha1_hex(v[i].in, strlen(v[i].in), chunk, out);
            EQ_STR(out, v[i].out);
        }
    memset(million, 'a', 1000000);
    sha1_hex(million, 1000000, 1000000, out);
    EQ_STR(out, "34aa973cd4c4daa4f61eeb2bdbad27316534016f");
    sha1_hex(million, 1000000, 997, out);
    EQ_STR(out, "34aa973cd4c4daa4f61eeb2bdbad27316534016f");
    free(million);
}

static void test_base64_rfc4648(void)
{
    static const char *const v[][2] = {{"", ""},         {"f", "Zg=="},
                                       {"fo", "Zm8="},   {"foo", "Zm9v"},
                                       {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="},
                                       {"foobar", "Zm9vYmFy"}};
    static const char *const bad[] = {"Zg=", "Zh==", "Zm9=", "Z===", "Zg==Zg==",
                                      "Zm9v!A==", "=Zm9", "Zm=v", "Zg\n=", "Zm9vY"};
    char out[32];
    uint8_t dec[32];
    size_t i;
    for (i = 0; i < COUNT_OF(v); i++) {
        size_t n = strlen(v[i][0]);
        b64_encode((const uint8_t *)v[i][0], n, out);
        EQ_STR(out, v[i][1]);
        EQ_INT(b64_decode(v[i][1], strlen(v[i][1]), dec, sizeof dec), n);
        CHECK(!memcmp(dec, v[i][0], n));
    }
    for (i = 0; i < COUNT_OF(bad); i++)
        if (b64_decode(bad[i], strlen(bad[i]), dec, sizeof dec) >= 0)
            FAIL("decoded non-canonical base64 \"%s\"", bad[i]);
}

/* ---- UTF-8 ---- */

static void test_utf8(void)
{
    static const char *const good[] = {
        "", "plain ascii text, long enough for the word path", "\xc2\x80",
        "\xdf\xbf", "\xe0\xa0\x80", "\xed\x9f\xbf", "\xee\x80\x80",
        "\xef\xbf\xbf", "\xf0\x90\x80\x80", "\xf4\x8f\xbf\xbf",
        "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", "Hello-\xc2\xb5@\xc3\x9f\xc3\xb6\xc3\xa4\xc3\xbc"};
    static const char *const bad[] = {
        "\x80", "\xbf", "\xc0\x80", "\xc1\xbf", "\xe0\x80\x80", "\xe0\x9f\xbf",
        "\xed\xa0\x80", "\xed\xbf\xbf", "\xf0\x80\x80\x80", "\xf0\x8f\xbf\xbf",
        "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\xff", "\xfe",
        "abc\xc2""d", "12345678\xe0\xa0", "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80" "edited"};
    size_t i, k, n;
    for (i = 0; i < COUNT_OF(good); i++) {
        n = strlen(good[i]);
        /* Every split point: the state carries across. */
        for (k = 0; k <= n; k++) {
            uint32_t s = utf8_check(0, (const uint8_t *)good[i], k);
            s = s == UTF8_BAD ? s : utf8_check(s, (const uint8_t *)good[i] + k, n - k);
            if (s != 0)
                FAIL("valid UTF-8 #%u rejected when split at %u", (unsigned)i, (unsigned)k);
        }
    }
    for (i = 0; i < COUNT_OF(bad); i++) {
        n = strlen(bad[i]);
        for (k = 0; k <= n; k++) {
            uint32_t s = utf8_check(0, (const uint8_t *)bad[i], k);
            s = s == UTF8_BAD ? s : utf8_check(s, (const uint8_t *)bad[i] + k, n - k);
            if (s == 0)
                FAIL("invalid UTF-8 #%u accepted when split at %u", (unsigned)i, (unsigned)k);
        }
    }
    /* Truncated sequences are incomplete, not bad: the frame end decides. */
    CHECK(utf8_check(0, (const uint8_t *)"\xf0\x90\x80", 3) != 0);
    CHECK(utf8_check(0, (const uint8_t *)"\xf0\x90\x80", 3) != UTF8_BAD);
}

/* ---- HTTP ---- */

#define KEY_REQ                                                              \
    "GET /chat?x=1 HTTP/1.1\r\nHost: server.example.com\r\n"                 \
    "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"              \
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"                        \
    "Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n" \
    "Sec-WebSocket-Version: 13\r\n\r\n"

static int handshake_of(const char *req, const char *origins, const char *protos,
                        struct http_answer *a)
{
    struct http_hdr h[WS_PROXY_MAX_HEADERS];
    struct http_req r;
    long n;
    r.h = h;
    r.maxh = WS_PROXY_MAX_HEADERS;
    n = http_parse(req, strlen(req), &r);
    if (n < 0)
        return (int)n;
    EQ_INT(n, strlen(req));
    return http_handshake(&r, origins, protos, a);
}

static void test_rfc6455_key(void)
{
    struct http_answer a;
    EQ_INT(handshake_of(KEY_REQ, NULL, NULL, &a), 101);
    EQ_STR(a.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    CHECK(a.proto == NULL);
}

static void test_http_partial_every_prefix(void)
{
    struct http_hdr h[WS_PROXY_MAX_HEADERS];
    struct http_req r;
    size_t k, n = strlen(KEY_REQ);
    r.h = h;
    r.maxh = WS_PROXY_MAX_HEADERS;
    for (k = 0; k < n; k++) {
        /* Each prefix lies at the end of its own allocation, so ASan
         * catches any read past it. */
        char *buf = malloc(k ? k : 1);
        memcpy(buf, KEY_REQ, k);
        if (http_parse(buf, k, &r) != HTTP_PARTIAL)
            FAIL("prefix of %u bytes not partial", (unsigned)k);
        free(buf);
    }
    EQ_INT(http_parse(KEY_REQ "\x81\x85", n + 2, &r), n);
    /* Bare LF line ends are tolerated. */
    EQ_INT(http_parse("GET / HTTP/1.1\nHost: a\n\n", 24, &r), 24);
}

static void test_http_answers(void)
{
    static const struct {
        int status;
        const char *req;
    } v[] = {
        {101, "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nConnection: upgrade\r\n"
              "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\n\r\n"},
        {101, "GET /any/path HTTP/1.2\r\nhost: a\r\nupgrade: foo, websocket\r\nCONNECTION: x,UPGRADE\r\n"
              "sec-websocket-key:AAAAAAAAAAAAAAAAAAAAAA==  \r\nsec-websocket-version: 13\r\n\r\n"},
        {426, "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 8\r\n\r\n"},
        {400, "POST / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\n\r\n"},
        {400, "GET / HTTP/1.0\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\n\r\n"},
        {400, "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\n\r\n"},
        {400, "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\n\r\n"},
        {400, "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: close\r\n"
              "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\n\r\n"},
        {400, "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA\r\nSec-WebSocket-Version: 13\r\n\r\n"},
        {400, "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Version: 13\r\n\r\n"},
        {400, "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n"},
        {400, "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\n\r\n"},
        {400, "GET / HTTP/1.1\r\nHost: a\r\n\r\n"},
        {200, "GET /health HTTP/1.1\r\nHost: a\r\n\r\n"},
        {200, "GET /health?verbose HTTP/1.1\r\nHost: a\r\n\r\n"},
    };
    static const char *const malformed[] = {
        "GET / HTTP/1.1\r\nHost : a\r\n\r\n", "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        "GET  / HTTP/1.1\r\n\r\n", "GET / HTTP/1.1 \r\n\r\n", "GET / XTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHo\rst: a\r\n\r\n", "GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n",
        "\r\n\r\n", "GET / HTTP/1.1\r\n: empty\r\n\r\n"};
    struct http_answer a;
    size_t i;
    for (i = 0; i < COUNT_OF(v); i++) {
        int got = handshake_of(v[i].req, NULL, NULL, &a);
        if (got != v[i].status)
            FAIL("request #%u answered %d, expected %d (%s)", (unsigned)i, got,
                 v[i].status, a.why ? a.why : "-");
    }
    for (i = 0; i < COUNT_OF(malformed); i++)
        if (handshake_of(malformed[i], NULL, NULL, &a) != HTTP_BAD)
            FAIL("malformed request #%u parsed", (unsigned)i);
    /* Origin allowlist: exact, case-insensitive; absent Origin allowed. */
    EQ_INT(handshake_of(KEY_REQ, "https://studio.example.com, http://EXAMPLE.com", NULL, &a), 101);
    EQ_INT(handshake_of(KEY_REQ, "https://studio.example.com", NULL, &a), 403);
    EQ_INT(handshake_of(KEY_REQ, "http://example.com:80", NULL, &a), 403);
    /* Subprotocol: only one the client offered, in the server's order. */
    EQ_INT(handshake_of(KEY_REQ, NULL, "mysql,superchat,chat", &a), 101);
    CHECK(a.proto && a.proto_len == 9 && !memcmp(a.proto, "superchat", 9));
    EQ_INT(handshake_of(KEY_REQ, NULL, "mysql", &a), 101);
    CHECK(a.proto == NULL);
    EQ_INT(handshake_of(KEY_REQ, NULL, "Chat", &a), 101);
    CHECK(a.proto == NULL);
}

static void test_http_too_many_headers(void)
{
    char req[8192];
    struct http_hdr h[WS_PROXY_MAX_HEADERS];
    struct http_req r;
    int i, n = snprintf(req, sizeof req, "GET / HTTP/1.1\r\n");
    for (i = 0; i <= WS_PROXY_MAX_HEADERS; i++)
        n += snprintf(req + n, sizeof req - (size_t)n, "X-%d: y\r\n", i);
    n += snprintf(req + n, sizeof req - (size_t)n, "\r\n");
    r.h = h;
    r.maxh = WS_PROXY_MAX_HEADERS;
    EQ_INT(http_parse(req, (size_t)n, &r), HTTP_TOO_MANY);
}

static void test_http_responses_complete(void)
{
    static const int codes[] = {400, 403, 426, 431, 502, 503, 408, 200};
    char out[512];
    size_t i;
    for (i = 0; i < COUNT_OF(codes); i++) {
        struct http_answer a;
        const char *body;
        unsigned clen = 0;
        size_t n;
        memset(&a, 0, sizeof a);
        http_answer(&a, codes[i], "some reason");
        n = http_write_answer(&a, out, sizeof out);
        body = strstr(out, "\r\n\r\n");
        CHECK(body != NULL);
        CHECK(sscanf(strstr(out, "Content-Length: ") + 16, "%u", &clen) == 1);
        EQ_INT(clen, n - (size_t)(body + 4 - out));
        CHECK((codes[i] == 426) == (strstr(out, "Sec-WebSocket-Version: 13\r\n") != NULL));
    }
}

/* ---- Frames ---- */

/* Runs the decoder over `in` fed in chunks of `chunk` bytes, each chunk
 * copied to the start of its own buffer as a socket read would leave it.
 * Collects payload, control frames ("P<payload>" "C<code>" ";" separated)
 * and the error code. */
struct decoded {
    uint8_t data[140000];
    size_t len;
    char ctl[512];
    int err;
};

static void decode_chunks(const uint8_t *in, size_t n, size_t chunk,
                          uint64_t max_msg, struct decoded *out)
{
    struct frame_dec d;
    size_t at = 0;
    memset(&d, 0, sizeof d);
    d.max_msg = max_msg;
    memset(out, 0, sizeof *out);
    while (at < n && !out->err) {
        size_t len = n - at < chunk ? n - at : chunk, pos = 0, o = 0;
        uint8_t *buf = malloc(len);
        memcpy(buf, in + at, len);
        for (;;) {
            int rc = frame_decode(&d, buf, len, &pos, &o);
            if (rc == FRAME_ERROR) {
                out->err = d.err;
                break;
            }
            if (rc == FRAME_MORE)
                break;
            snprintf(out->ctl + strlen(out->ctl), sizeof out->ctl - strlen(out->ctl),
                     "%c%.*s;", d.op == OP_PING ? 'P' : d.op == OP_PONG ? 'O' : 'C',
                     (int)d.ctl_len, (const char *)d.ctl);
        }
        memcpy(out->data + out->len, buf, o);
        out->len += o;
        free(buf);
        at += len;
    }
}

/* Builds a masked client frame. */
static size_t mkframe(uint8_t *out, unsigned b0, const void *payload, size_t len,
                      const uint8_t mask[4])
{
    size_t h = 2, i;
    out[0] = (uint8_t)b0;
    if (len < 126) {
        out[1] = (uint8_t)(0x80 | len);
    } else if (len < 65536) {
        out[1] = 0x80 | 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        h = 4;
    } else {
        out[1] = 0x80 | 127;
        for (i = 0; i < 8; i++)
            out[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
        h = 10;
    }
    memcpy(out + h, mask, 4);
    for (i = 0; i < len; i++)
        out[h + 4 + i] = ((const uint8_t *)payload)[i] ^ mask[i & 3];
    return h + 4 + len;
}

static void test_frame_rfc_examples(void)
{
    /* RFC 6455 5.7: a single-frame masked text message "Hello". */
    static const uint8_t hello[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f,
                                    0x9f, 0x4d, 0x51, 0x58};
    /* 5.7 unmasked examples are server frames: our encoder must match. */
    static const uint8_t bin256[] = {0x82, 0x7E, 0x01, 0x00};
    static const uint8_t bin64k[] = {0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0};
    static const uint8_t hello_srv[] = {0x81, 0x05};
    static struct decoded out;
    uint8_t hdr[16];
    size_t chunk;
    for (chunk = 1; chunk <= sizeof hello; chunk++) {
        decode_chunks(hello, sizeof hello, chunk, 0, &out);
        EQ_INT(out.err, 0);
        EQ_INT(out.len, 5);
        CHECK(!memcmp(out.data, "Hello", 5));
    }
    EQ_INT(frame_header(hdr + 16, OP_TEXT, 5), 2);
    CHECK(!memcmp(hdr + 14, hello_srv, 2));
    EQ_INT(frame_header(hdr + 16, OP_BINARY, 256), 4);
    CHECK(!memcmp(hdr + 12, bin256, 4));
    EQ_INT(frame_header(hdr + 16, OP_BINARY, 65536), 10);
    CHECK(!memcmp(hdr + 6, bin64k, 10));
}

/* A stream of several messages, fed at every split point. */
static void test_frame_every_split(void)
{
    static const uint8_t m1[4] = {1, 2, 3, 4}, m2[4] = {0xff, 0, 0x80, 0x7f};
    static uint8_t in[140000], expect[140000];
    static struct decoded out;
    size_t n = 0, e = 0, i, chunk;
    uint8_t big[70000];
    for (i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)(i * 7 + 3);
    n += mkframe(in + n, 0x81, "Hello", 5, m1);
    memcpy(expect + e, "Hello", 5), e += 5;
    n += mkframe(in + n, 0x01, "Hel", 3, m2);          /* fragmented text */
    n += mkframe(in + n, 0x89, "ping!", 5, m1);        /* ping in between */
    n += mkframe(in + n, 0x80, "lo \xc3\xa9", 5, m2);  /* final, UTF-8 */
    memcpy(expect + e, "Hello \xc3\xa9", 8), e += 8;
    n += mkframe(in + n, 0x8A, "", 0, m1);             /* unsolicited pong */
    n += mkframe(in + n, 0x82, big, 300, m2);
    memcpy(expect + e, big, 300), e += 300;
    n += mkframe(in + n, 0x82, "", 0, m1);             /* empty binary */
    n += mkframe(in + n, 0x02, big, 7, m1);            /* fragmented binary */
    n += mkframe(in + n, 0x00, big + 7, 0, m2);        /* empty middle */
    n += mkframe(in + n, 0x80, big + 7, sizeof big - 7, m2);
    memcpy(expect + e, big, sizeof big), e += sizeof big;
    n += mkframe(in + n, 0x88, "\x03\xe8" "bye", 5, m1);
    for (chunk = 1; chunk <= n; chunk = chunk < 64 ? chunk + 1 : chunk * 3) {
        decode_chunks(in, n, chunk, 0, &out);
        if (out.err || out.len != e || memcmp(out.data, expect, e) ||
            strcmp(out.ctl, "Pping!;O;C\x03\xe8" "bye;")) {
            FAIL("chunk %u: err %d, %u bytes (expected %u), controls \"%s\"",
                 (unsigned)chunk, out.err, (unsigned)out.len, (unsigned)e, out.ctl);
            break;
        }
    }
}

/* Runs of small whole binary messages take the decoder's fast path
 * (frame_run); every size around its limits, with text, fragments and
 * controls between the runs, must come out as the general path makes it,
 * at every split; a frame over max_msg is refused by the general path. */
static void test_frame_runs(void)
{
    static const uint8_t m1[4] = {0x5a, 0xc3, 0x01, 0xfe}, m2[4] = {9, 8, 7, 6};
    static uint8_t in[140000], expect[140000], big[66000];
    static struct decoded out;
    static const size_t sizes[] = {0, 1, 5, 7, 8, 9, 31, 32, 33, 64, 125, 126, 127,
                                   300, 4096, 65535};
    size_t n = 0, e = 0, i, k, chunk;
    for (i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)(i * 13 + 1);
    for (k = 0; k < 2; k++) {
        for (i = 0; i < COUNT_OF(sizes) - k; i++) { /* the largest once */
            n += mkframe(in + n, 0x82, big + i, sizes[i], i & 1 ? m1 : m2);
            memcpy(expect + e, big + i, sizes[i]), e += sizes[i];
        }
        n += mkframe(in + n, 0x81, "t\xc3\xa9", 3, m1);   /* text: general path */
        memcpy(expect + e, "t\xc3\xa9", 3), e += 3;
        n += mkframe(in + n, 0x02, big, 10, m2);          /* a fragment opens one */
        n += mkframe(in + n, 0x89, "p", 1, m1);
        n += mkframe(in + n, 0x80, big + 10, 20, m1);     /* and it ends */
        memcpy(expect + e, big, 30), e += 30;
    }
    for (chunk = 1; chunk <= n; chunk = chunk < 40 ? chunk + 1 : chunk * 2 + 1) {
        decode_chunks(in, n, chunk, 0, &out);
        if (out.err || out.len != e || memcmp(out.data, expect, e) ||
            strcmp(out.ctl, "Pp;Pp;")) {
            FAIL("chunk %u: err %d, %u bytes (expected %u), controls \"%s\"",
                 (unsigned)chunk, out.err, (unsigned)out.len, (unsigned)e, out.ctl);
            break;
        }
    }
    /* max_msg: 64 passes, 65 is refused with 1009 after what came before. */
    n = mkframe(in, 0x82, big, 64, m1);
    n += mkframe(in + n, 0x82, big, 65, m2);
    decode_chunks(in, n, n, 64, &out);
    EQ_INT(out.err, 1009);
    EQ_INT(out.len, 64);
    CHECK(!memcmp(out.data, big, 64));
}

static void test_frame_rejections(void)
{
    static const struct {
        const char *name;
        uint8_t bytes[16];
        size_t len;
        int code;
    } v[] = {
        {"RSV1", {0xC1, 0x80, 0, 0, 0, 0}, 6, 1002},
        {"RSV2", {0xA1, 0x80, 0, 0, 0, 0}, 6, 1002},
        {"RSV3", {0x91, 0x80, 0, 0, 0, 0}, 6, 1002},
        {"opcode 3", {0x83, 0x80, 0, 0, 0, 0}, 6, 1002},
        {"opcode 7", {0x87, 0x80, 0, 0, 0, 0}, 6, 1002},
        {"opcode 11", {0x8B, 0x80, 0, 0, 0, 0}, 6, 1002},
        {"opcode 15", {0x8F, 0x80, 0, 0, 0, 0}, 6, 1002},
        {"unmasked", {0x82, 0x00}, 2, 1002},
        {"ping 126", {0x89, 0xFE, 0, 126}, 4, 1002},
        {"fragmented ping", {0x09, 0x80, 0, 0, 0, 0}, 6, 1002},
        {"continuation first", {0x80, 0x80, 0, 0, 0, 0}, 6, 1002},
        {"64-bit top bit", {0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0}, 10, 1002},
        {"close 1 byte", {0x88, 0x81, 0, 0, 0, 0, 0x03}, 7, 1002},
        {"close code 999", {0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE7}, 8, 1002},
        {"close code 1005", {0x88, 0x82, 0, 0, 0, 0, 0x03, 0xED}, 8, 1002},
        {"close code 5000", {0x88, 0x82, 0, 0, 0, 0, 0x13, 0x88}, 8, 1002},
        {"close bad reason", {0x88, 0x83, 0, 0, 0, 0, 0x03, 0xE8, 0xFF}, 9, 1007},
        {"text bad UTF-8", {0x81, 0x81, 0, 0, 0, 0, 0xC0}, 7, 1007},
        {"text ends mid char", {0x81, 0x81, 0, 0, 0, 0, 0xC3}, 7, 1007},
        {"data inside fragmented", {0x01, 0x80, 0, 0, 0, 0, 0x82, 0x80, 0, 0, 0, 0}, 12, 1002},
        {"text over limit", {0x81, 0x85, 0, 0, 0, 0, 'a', 'b', 'c', 'd', 'e'}, 11, 1009},
    };
    static struct decoded out;
    size_t i, chunk;
    for (i = 0; i < COUNT_OF(v); i++)
        for (chunk = 1; chunk <= v[i].len; chunk++) {
            decode_chunks(v[i].bytes, v[i].len, chunk, 4, &out);
            if (out.err != v[i].code) {
                FAIL("%s (chunk %u): got %d, expected %d", v[i].name,
                     (unsigned)chunk, out.err, v[i].code);
                break;
            }
        }
}

static void test_frame_close_codes(void)
{
    static const unsigned ok[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009,
                                  1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999};
    static const unsigned bad[] = {0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535};
    static struct decoded out;
    uint8_t f[16], pl[2];
    const uint8_t mask[4] = {9, 8, 7, 6};
    size_t i, n;
    for (i = 0; i < COUNT_OF(ok); i++) {
        pl[0] = (uint8_t)(ok[i] >> 8), pl[1] = (uint8_t)ok[i];
        n = mkframe(f, 0x88, pl, 2, mask);
        decode_chunks(f, n, n, 0, &out);
        if (out.err)
            FAIL("close code %u refused", ok[i]);
    }
    for (i = 0; i < COUNT_OF(bad); i++) {
        pl[0] = (uint8_t)(bad[i] >> 8), pl[1] = (uint8_t)bad[i];
        n = mkframe(f, 0x88, pl, 2, mask);
        decode_chunks(f, n, n, 0, &out);
        if (out.err != 1002)
            FAIL("close code %u gave %d, expected 1002", bad[i], out.err);
    }
}

/* Unmasking a word at a time equals the byte-wise definition, at every
 * length, mask offset and (overlapping) displacement. */
static void test_frame_unmask(void)
{
    uint8_t src[160], buf[160], ref[160];
    const uint8_t mask[4] = {0xA5, 0x3C, 0x0F, 0xF0};
    size_t len, gap, i;
    unsigned moff;
    for (i = 0; i < sizeof src; i++)
        src[i] = (uint8_t)(i * 31);
    for (len = 0; len <= 130; len++)
        for (moff = 0; moff < 4; moff++)
            for (gap = 0; gap <= 14; gap++) {
                for (i = 0; i < len; i++)
                    ref[i] = src[20 + i] ^ mask[(moff + i) & 3];
                memcpy(buf, src, sizeof buf);
                frame_unmask(buf + 20 - gap, buf + 20, len, mask, moff);
                if (memcmp(buf + 20 - gap, ref, len)) {
                    FAIL("unmask len %u moff %u gap %u", (unsigned)len, moff, (unsigned)gap);
                    return;
                }
            }
}

/* ---- Configuration ---- */

static void expect_start_error(const struct ws_proxy_config *c, int code, const char *text)
{
    char err[256];
    ws_proxy *p = ws_proxy_start(c, err, sizeof err);
    if (p) {
        FAIL("start succeeded, expected \"%s\"", text);
        ws_proxy_stop(p);
        return;
    }
    if (!strstr(err, text))
        FAIL("error \"%s\", expected \"%s\"", err, text);
    (void)code;
}

static void test_config_validation(void)
{
    struct ws_proxy_config c;
    char err[256];
    memset(&c, 0, sizeof c);
    c.http_port = 1, c.https_port = 2, c.socket_path = "/x";
    expect_start_error(&c, WS_PROXY_EINVAL, "http_port and https_port are mutually exclusive");
    EQ_INT(ws_proxy_restart(NULL, &c, err, sizeof err), WS_PROXY_EINVAL);
    memset(&c, 0, sizeof c);
    c.https_port = 2, c.socket_path = "/x";
    expect_start_error(&c, WS_PROXY_EINVAL, "https_port requires SSL: set cert_file and key_file");
    c.cert_file = "/c";
    expect_start_error(&c, WS_PROXY_EINVAL, "https_port requires SSL: set cert_file and key_file");
    memset(&c, 0, sizeof c);
    c.http_port = WS_PROXY_PORT_ANY;
    expect_start_error(&c, WS_PROXY_EINVAL, "socket_path is not set");
    c.socket_path = "localhost:3306";
    expect_start_error(&c, WS_PROXY_EINVAL, "socket_path: neither a Unix socket path");
    c.socket_path = "/x", c.bind_address = "localhost";
    expect_start_error(&c, WS_PROXY_EINVAL, "bind_address: not a numeric");
    c.bind_address = NULL, c.http_port = 70000;
    expect_start_error(&c, WS_PROXY_EINVAL, "out of range");
    c.http_port = WS_PROXY_PORT_ANY, c.proxy_protocol = 7;
    expect_start_error(&c, WS_PROXY_EINVAL, "proxy_protocol");
    c.proxy_protocol = 0, c.log_dir = "/nonexistent/dir";
    expect_start_error(&c, WS_PROXY_ELOG, "websocket_proxy.log");
    EQ_STR(ws_proxy_strerror(WS_PROXY_EBIND), "cannot listen on the configured address");
    EQ_STR(ws_proxy_strerror(12345), "unknown error");
    ws_proxy_stop(NULL);
}

/* ---- Restart semantics, with live proxies ---- */

/* A Unix-socket echo engine on its own thread that skips PROXY headers. */
struct engine {
    char path[108];
    int lfd, stop;
    pthread_t th;
};

static void *engine_main(void *arg)
{
    struct engine *e = arg;
    struct pollfd pf[64];
    int n = 1, i;
    pf[0].fd = e->lfd, pf[0].events = POLLIN;
    while (!e->stop) {
        if (poll(pf, (nfds_t)n, 50) <= 0)
            continue;
        if (pf[0].revents && n < 64) {
            int fd = accept(e->lfd, NULL, NULL);
            if (fd >= 0)
                pf[n].fd = fd, pf[n].events = POLLIN, pf[n++].revents = 0;
        }
        for (i = 1; i < n; i++) {
            uint8_t b[4096];
            ssize_t r;
            if (!pf[i].revents)
                continue;
            r = read(pf[i].fd, b, sizeof b);
            if (r <= 0) {
                close(pf[i].fd);
                pf[i--] = pf[--n];
                continue;
            }
            if (r >= 16 && !memcmp(b, "\r\n\r\n\0\r\nQUIT\n", 12)) {
                size_t h = 16u + (size_t)(b[14] << 8 | b[15]);
                memmove(b, b + h, (size_t)r - h);
                r -= (ssize_t)h;
            }
            if (r > 0 && write(pf[i].fd, b, (size_t)r) != r) {
            }
        }
    }
    for (i = 0; i < n; i++)
        close(pf[i].fd);
    return NULL;
}

static void engine_start(struct engine *e)
{
    struct sockaddr_un sun;
    memset(e, 0, sizeof *e);
    snprintf(e->path, sizeof e->path, "/tmp/wsproxy-unit-%d.sock", (int)getpid());
    unlink(e->path);
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    strcpy(sun.sun_path, e->path);
    e->lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (bind(e->lfd, (struct sockaddr *)&sun, sizeof sun) || listen(e->lfd, 64))
        FAIL("engine bind: %s", strerror(errno));
    pthread_create(&e->th, NULL, engine_main, e);
}

/* The same echo engine on a TCP port of 127.0.0.1; e->path is its address. */
static void engine_start_tcp(struct engine *e)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    memset(e, 0, sizeof *e);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    e->lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (bind(e->lfd, (struct sockaddr *)&a, sizeof a) || listen(e->lfd, 64) ||
        getsockname(e->lfd, (struct sockaddr *)&a, &len))
        FAIL("engine bind: %s", strerror(errno));
    snprintf(e->path, sizeof e->path, "127.0.0.1:%d", ntohs(a.sin_port));
    pthread_create(&e->th, NULL, engine_main, e);
}

static void engine_stop(struct engine *e)
{
    e->stop = 1;
    pthread_join(e->th, NULL);
    unlink(e->path);
}

/* A configuration on an ephemeral 127.0.0.1 port in front of e. */
static void local_config(struct ws_proxy_config *c, const struct engine *e)
{
    memset(c, 0, sizeof *c);
    c->http_port = WS_PROXY_PORT_ANY;
    c->bind_address = "127.0.0.1";
    c->socket_path = e->path;
}

static int port_of(ws_proxy *p)
{
    struct ws_proxy_status st;
    if (ws_proxy_status(p, &st))
        return -1;
    return st.state == WS_PROXY_RUNNING ? st.port : 0;
}

/* The descriptor listening on 127.0.0.1:port, found without reading the
 * loop thread's fields (ThreadSanitizer cannot see that a shutdown() orders
 * a read of p->lfd before the loop's reaction to it). */
static int listener_fd(int port)
{
    int fd;
    for (fd = 3; fd < 4096; fd++) {
        struct sockaddr_in a;
        socklen_t len = sizeof a;
        int on = 0;
        socklen_t olen = sizeof on;
        if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &olen) || !on)
            continue;
        if (!getsockname(fd, (struct sockaddr *)&a, &len) && a.sin_family == AF_INET &&
            ntohs(a.sin_port) == port)
            return fd;
    }
    return -1;
}

static int tcp_connect(int port)
{
    struct sockaddr_in a;
    struct timeval tv = {5, 0};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Opens a WebSocket; returns the fd after a 101, else -1. */
static int ws_open(int port)
{
    static const char req[] =
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n";
    char resp[1024];
    size_t got = 0;
    int fd = tcp_connect(port);
    if (fd < 0)
        return -1;
    if (write(fd, req, sizeof req - 1) != (ssize_t)sizeof req - 1) {
        close(fd);
        return -1;
    }
    while (got < sizeof resp - 1) {
        ssize_t r = read(fd, resp + got, 1); /* stop exactly at the head's end */
        if (r <= 0)
            break;
        got += (size_t)r;
        resp[got] = 0;
        if (strstr(resp, "\r\n\r\n"))
            break;
    }
    if (strncmp(resp, "HTTP/1.1 101", 12) || !strstr(resp, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Sends one masked binary message and reads back the echo. */
static int ws_echo(int fd, const char *msg)
{
    static const uint8_t mask[4] = {0x11, 0x22, 0x33, 0x44};
    uint8_t f[256], in[256];
    size_t n = mkframe(f, 0x82, msg, strlen(msg), mask), got = 0, want = strlen(msg);
    if (write(fd, f, n) != (ssize_t)n)
        return -1;
    /* The echo may come back as several frames; collect their payload. */
    while (got < want) {
        uint8_t h[2];
        ssize_t r;
        if (read(fd, h, 2) != 2 || h[0] != 0x82 || (h[1] & 0x80) || (h[1] & 0x7F) > 125)
            return -1;
        r = read(fd, in + got, h[1] & 0x7F);
        if (r != (h[1] & 0x7F))
            return -1;
        got += (size_t)r;
    }
    return got == want && !memcmp(in, msg, want) ? 0 : -1;
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    if (!d)
        return -1;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

static void test_restart_semantics(void)
{
    struct engine e;
    struct ws_proxy_config c;
    struct ws_proxy_status st;
    char err[256];
    ws_proxy *a, *b;
    int pa, pb, pa2, ca, cb, blocker;
    engine_start(&e);
    local_config(&c, &e);
    /* Two proxies in one process. */
    a = ws_proxy_start(&c, err, sizeof err);
    b = ws_proxy_start(&c, err, sizeof err);
    CHECK(a && b);
    if (!a || !b)
        return;
    pa = port_of(a), pb = port_of(b);
    CHECK(pa > 0 && pb > 0 && pa != pb);
    ca = ws_open(pa), cb = ws_open(pb);
    CHECK(ca >= 0 && cb >= 0);
    EQ_INT(ws_echo(ca, "to a"), 0);
    EQ_INT(ws_echo(cb, "to b"), 0);

    /* Same port: the listening socket is kept, the connection lives. */
    c.http_port = pa;
    EQ_INT(ws_proxy_restart(a, &c, err, sizeof err), 0);
    EQ_INT(port_of(a), pa);
    EQ_INT(ws_echo(ca, "same port"), 0);

    /* A port in use: the restart fails and nothing changes. */
    c.http_port = pb;
    EQ_INT(ws_proxy_restart(a, &c, err, sizeof err), WS_PROXY_EBIND);
    CHECK(strstr(err, strerror(EADDRINUSE)) != NULL); /* each libc words it its own way */
    EQ_INT(port_of(a), pa);
    EQ_INT(ws_echo(ca, "after failed restart"), 0);
    blocker = ws_open(pa);
    CHECK(blocker >= 0);
    if (blocker >= 0)
        close(blocker);

    /* Both ports set: refused, nothing changes. */
    c.http_port = pa, c.https_port = pb;
    EQ_INT(ws_proxy_restart(a, &c, err, sizeof err), WS_PROXY_EINVAL);
    EQ_STR(err, "http_port and https_port are mutually exclusive");
    EQ_INT(port_of(a), pa);
    c.https_port = 0;

    /* A new port: bound before the old one closes; the old connection
     * survives; the old port no longer answers. */
    c.http_port = WS_PROXY_PORT_ANY;
    EQ_INT(ws_proxy_restart(a, &c, err, sizeof err), 0);
    pa2 = port_of(a);
    CHECK(pa2 > 0 && pa2 != pa);
    EQ_INT(ws_echo(ca, "new port"), 0);
    CHECK(tcp_connect(pa) < 0);
    blocker = ws_open(pa2);
    CHECK(blocker >= 0);
    if (blocker >= 0)
        close(blocker);

    /* No port: STOPPED, connections go on. */
    c.http_port = 0;
    EQ_INT(ws_proxy_restart(a, &c, err, sizeof err), 0);
    EQ_INT(ws_proxy_status(a, &st), 0);
    EQ_INT(st.state, WS_PROXY_STOPPED);
    EQ_INT(ws_echo(ca, "stopped listening"), 0);

    /* The other proxy was never touched. */
    EQ_INT(port_of(b), pb);
    EQ_INT(ws_echo(cb, "b still fine"), 0);
    EQ_INT(ws_proxy_status(b, &st), 0);
    EQ_INT(st.conns_open, 1);
    CHECK(st.bytes_to_engine >= 4 + 12);

    close(ca);
    close(cb);
    ws_proxy_stop(a);
    ws_proxy_stop(b);
    engine_stop(&e);
}

/* ---- The connection callback (conn_fn) ---- */

struct told {
    pthread_mutex_t mu;
    int n;
    struct {
        int event, client_port, tls, engine_port;
        uint64_t id;
        char client[64], origin[64], engine[64];
    } ev[8];
};

static void told_fn(void *user, int event, const struct ws_proxy_conn_info *ci)
{
    struct told *t = user;
    pthread_mutex_lock(&t->mu);
    if (t->n < 8) {
        t->ev[t->n].event = event;
        t->ev[t->n].id = ci->id;
        t->ev[t->n].client_port = ci->client_port;
        t->ev[t->n].tls = ci->tls;
        t->ev[t->n].engine_port = ci->engine_port;
        snprintf(t->ev[t->n].client, 64, "%s", ci->client_addr);
        snprintf(t->ev[t->n].origin, 64, "%s", ci->origin);
        snprintf(t->ev[t->n].engine, 64, "%s", ci->engine_addr);
    }
    t->n++;
    pthread_mutex_unlock(&t->mu);
}

static int told_count(struct told *t)
{
    int n;
    pthread_mutex_lock(&t->mu);
    n = t->n;
    pthread_mutex_unlock(&t->mu);
    return n;
}

/* Waits up to 3 s for n events. */
static int told_wait(struct told *t, int n)
{
    int i;
    for (i = 0; i < 300 && told_count(t) < n; i++)
        usleep(10000);
    return told_count(t);
}

static int local_port(int fd)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    return getsockname(fd, (struct sockaddr *)&a, &len) ? -1 : ntohs(a.sin_port);
}

static void test_conn_callback(void)
{
    static const char req[] =
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Origin: https://app.example\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    static struct told t = {PTHREAD_MUTEX_INITIALIZER, 0, {{0}}};
    struct engine e;
    struct ws_proxy_config c;
    char err[256], resp[256];
    ws_proxy *p;
    int fd, fd2, port;
    ssize_t r;
    engine_start(&e);
    local_config(&c, &e);
    c.conn_fn = told_fn;
    c.conn_user = &t;
    p = ws_proxy_start(&c, err, sizeof err);
    CHECK(p != NULL);
    if (!p)
        return;
    port = port_of(p);
    /* A request with an Origin: OPEN before the 101, with the client's
     * address; a Unix engine socket has no local address. */
    fd = tcp_connect(port);
    CHECK(fd >= 0 && write(fd, req, sizeof req - 1) == (ssize_t)sizeof req - 1);
    r = read(fd, resp, sizeof resp - 1);
    CHECK(r > 12 && !strncmp(resp, "HTTP/1.1 101", 12));
    EQ_INT(told_count(&t), 1);
    EQ_INT(t.ev[0].event, WS_PROXY_CONN_OPEN);
    EQ_STR(t.ev[0].client, "127.0.0.1");
    EQ_INT(t.ev[0].client_port, local_port(fd));
    EQ_STR(t.ev[0].origin, "https://app.example");
    EQ_INT(t.ev[0].tls, 0);
    EQ_STR(t.ev[0].engine, "");
    EQ_INT(t.ev[0].engine_port, 0);
    EQ_INT(ws_echo(fd, "told"), 0);
    /* The client goes: CLOSE with the same id, origin "". */
    close(fd);
    EQ_INT(told_wait(&t, 2), 2);
    EQ_INT(t.ev[1].event, WS_PROXY_CONN_CLOSE);
    EQ_INT(t.ev[1].id, t.ev[0].id);
    EQ_STR(t.ev[1].origin, "");
    /* No Origin: "". */
    fd2 = ws_open(port);
    CHECK(fd2 >= 0);
    EQ_INT(told_count(&t), 3);
    EQ_STR(t.ev[2].origin, "");
    /* An engine that cannot be reached: 502, nothing told. */
    c.socket_path = "/nonexistent/engine.sock";
    c.http_port = port;
    EQ_INT(ws_proxy_restart(p, &c, err, sizeof err), 0);
    CHECK(ws_open(port) < 0);
    EQ_INT(told_count(&t), 3);
    /* The engine goes away under a WebSocket: CLOSE. */
    engine_stop(&e);
    EQ_INT(told_wait(&t, 4), 4);
    EQ_INT(t.ev[3].event, WS_PROXY_CONN_CLOSE);
    EQ_INT(t.ev[3].id, t.ev[2].id);
    /* A TCP engine: the local address and port of the engine connection,
     * which the engine sees as its peer; stop tells CLOSE before it
     * returns. */
    engine_start_tcp(&e);
    c.socket_path = e.path;
    EQ_INT(ws_proxy_restart(p, &c, err, sizeof err), 0);
    fd = ws_open(port);
    CHECK(fd >= 0);
    EQ_INT(told_count(&t), 5);
    EQ_INT(t.ev[4].event, WS_PROXY_CONN_OPEN);
    EQ_STR(t.ev[4].engine, "127.0.0.1");
    CHECK(t.ev[4].engine_port > 0 && t.ev[4].engine_port != atoi(strchr(e.path, ':') + 1));
    EQ_INT(ws_echo(fd, "over tcp"), 0);
    ws_proxy_stop(p);
    EQ_INT(told_count(&t), 6);
    EQ_INT(t.ev[5].event, WS_PROXY_CONN_CLOSE);
    EQ_INT(t.ev[5].id, t.ev[4].id);
    EQ_INT(t.ev[5].engine_port, t.ev[4].engine_port);
    if (fd2 >= 0)
        close(fd2);
    if (fd >= 0)
        close(fd);
    engine_stop(&e);
}

/* A restart onto another address with the same port: the addresses
 * overlap, so the new listener cannot be bound while the old one lives.
 * The restart fails, changes nothing, and names the conflict and the way
 * out; following it works.  (127.0.0.1 and ::ffff:127.0.0.1 overlap as
 * 0.0.0.0 and 127.0.0.1 do, and keep the test on loopback.) */
static void test_restart_same_port_other_address(void)
{
    static const char *const addrs[][2] = {{"127.0.0.1", "::ffff:127.0.0.1"},
                                           {"::ffff:127.0.0.1", "127.0.0.1"}};
    struct engine e;
    struct ws_proxy_config c;
    struct ws_proxy_status st;
    char err[256], want[256];
    size_t i;
    engine_start(&e);
    for (i = 0; i < COUNT_OF(addrs); i++) {
        ws_proxy *p;
        int port, fd, fd2;
        const char *from = addrs[i][0], *to = addrs[i][1];
        local_config(&c, &e);
        c.bind_address = from;
        if (!(p = ws_proxy_start(&c, err, sizeof err))) {
            FAIL("start on %s: %s", from, err);
            continue;
        }
        port = port_of(p);
        fd = ws_open(port);
        CHECK(fd >= 0);
        c.http_port = port, c.bind_address = to;
        EQ_INT(ws_proxy_restart(p, &c, err, sizeof err), WS_PROXY_EBIND);
        snprintf(want, sizeof want,
                 "%s%s%s:%d): %s (by this proxy, on %s%s%s:%d: one port "
                 "cannot be held on two overlapping addresses; restart with no port first, "
                 "then with the new address)",
                 strchr(to, ':') ? "bind([" : "bind(", to, strchr(to, ':') ? "]" : "", port,
                 strerror(EADDRINUSE),
                 strchr(from, ':') ? "[" : "", from, strchr(from, ':') ? "]" : "", port);
        EQ_STR(err, want);
        /* Nothing changed. */
        EQ_INT(port_of(p), port);
        EQ_INT(ws_echo(fd, "still here"), 0);
        fd2 = ws_open(port);
        CHECK(fd2 >= 0);
        if (fd2 >= 0)
            close(fd2);
        /* The way out: no port, then the new address; connections go on. */
        c.http_port = 0;
        EQ_INT(ws_proxy_restart(p, &c, err, sizeof err), 0);
        EQ_INT(ws_proxy_status(p, &st), 0);
        EQ_INT(st.state, WS_PROXY_STOPPED);
        c.http_port = port;
        EQ_INT(ws_proxy_restart(p, &c, err, sizeof err), 0);
        EQ_INT(port_of(p), port);
        EQ_INT(ws_echo(fd, "moved"), 0);
        fd2 = ws_open(port);
        CHECK(fd2 >= 0);
        if (fd2 >= 0)
            close(fd2);
        if (fd >= 0)
            close(fd);
        ws_proxy_stop(p);
    }
    engine_stop(&e);
}

/* A fatal loop error leaves the proxy FAILED until a restart. */
/* An engine that hangs up while the host's going_away flag is set closes
 * its WebSocket with 1001. */
static void test_going_away(void)
{
    static volatile unsigned char flag;
    struct engine e;
    struct ws_proxy_config c;
    ws_proxy *p;
    uint8_t h[4];
    int fd;
    engine_start(&e);
    local_config(&c, &e);
    c.going_away = &flag;
    p = ws_proxy_start(&c, NULL, 0);
    CHECK(p != NULL);
    fd = ws_open(port_of(p));
    CHECK(fd >= 0 && ws_echo(fd, "before") == 0);
    flag = 1;
    engine_stop(&e); /* closes every engine connection */
    CHECK(read(fd, h, 4) == 4);
    EQ_INT(h[0], 0x88);
    EQ_INT(h[2] << 8 | h[3], 1001);
    close(fd);
    ws_proxy_stop(p);
}

static void test_failed_stays_failed(void)
{
    struct engine e;
    struct ws_proxy_config c;
    struct ws_proxy_status st;
    char err[256];
    ws_proxy *p;
    int port, i;
    engine_start(&e);
    local_config(&c, &e);
    p = ws_proxy_start(&c, err, sizeof err);
    CHECK(p != NULL);
    if (!p)
        return;
    port = port_of(p);
    /* Break the listening socket under the loop (as a stray close or a
     * kernel error would). */
    i = listener_fd(port);
    CHECK(i >= 0);
    shutdown(i, SHUT_RDWR);
    for (i = 0; i < 100; i++) {
        ws_proxy_status(p, &st);
        if (st.state == WS_PROXY_FAILED)
            break;
        usleep(10000);
    }
    EQ_INT(st.state, WS_PROXY_FAILED);
    CHECK(st.reason[0] != 0);
    usleep(300000);
    ws_proxy_status(p, &st);
    EQ_INT(st.state, WS_PROXY_FAILED); /* it did not restart itself */
    c.http_port = port;
    EQ_INT(ws_proxy_restart(p, &c, err, sizeof err), 0);
    EQ_INT(port_of(p), port);
    i = ws_open(port);
    CHECK(i >= 0);
    if (i >= 0) {
        EQ_INT(ws_echo(i, "back"), 0);
        close(i);
    }
    ws_proxy_stop(p);
    engine_stop(&e);
}

/* Start/restart/stop many times: no descriptor is left behind (run
 * under ASan, no memory either). */
static void test_cycles_leave_nothing(void)
{
    struct engine e;
    struct ws_proxy_config c;
    char err[256];
    int before, i, cycles = getenv("WSPROXY_CYCLES") ? atoi(getenv("WSPROXY_CYCLES")) : 1000;
    engine_start(&e);
    local_config(&c, &e);
    before = count_fds();
    for (i = 0; i < cycles; i++) {
        ws_proxy *p;
        c.http_port = WS_PROXY_PORT_ANY;
        p = ws_proxy_start(&c, err, sizeof err);
        if (!p) {
            FAIL("cycle %d: start: %s", i, err);
            break;
        }
        if (i % 100 == 0) { /* now and then with a live connection */
            int fd = ws_open(port_of(p));
            CHECK(fd >= 0);
            if (fd >= 0) {
                EQ_INT(ws_echo(fd, "cycle"), 0);
                close(fd);
            }
        }
        c.http_port = i % 2 ? WS_PROXY_PORT_ANY : 0;
        if (ws_proxy_restart(p, &c, err, sizeof err))
            FAIL("cycle %d: restart: %s", i, err);
        ws_proxy_stop(p);
    }
    EQ_INT(count_fds(), before);
    engine_stop(&e);
}

/* ---- Metrics: the allow list and the exposition ---- */

static void test_metrics_cidr(void)
{
    static const struct {
        const char *list, *addr;
        int want;
    } t[] = {
        {"127.0.0.0/8 ::1", "127.0.0.1", 1},
        {"127.0.0.0/8 ::1", "127.255.0.9", 1},
        {"127.0.0.0/8 ::1", "128.0.0.1", 0},
        {"127.0.0.0/8 ::1", "::1", 1},
        {"127.0.0.0/8 ::1", "::2", 0},
        {"10.0.0.0/8,192.0.2.7", "192.0.2.7", 1},
        {"10.0.0.0/8,192.0.2.7", "192.0.2.6", 0},
        {"192.0.2.0/25", "192.0.2.127", 1},
        {"192.0.2.0/25", "192.0.2.128", 0},
        {"0.0.0.0/0", "203.0.113.9", 1},
        {"0.0.0.0/0", "2001:db8::1", 0}, /* families never mix */
        {"::/0", "2001:db8::1", 1},
        {"2001:db8::/33", "2001:db8:7fff::1", 1},
        {"2001:db8::/33", "2001:db8:8000::1", 0},
        {"10.0.0.0/33", "10.0.0.1", -1},
        {"::1/129", "::1", -1},
        {"localhost", "127.0.0.1", -1},
        {"10.0.0.0/", "10.0.0.1", -1},
        {"10.0.0.0/8x", "10.0.0.1", -1},
        {"10.0.0.0/-1", "10.0.0.1", -1},
        {"", "10.0.0.1", 0},
    };
    size_t i;
    for (i = 0; i < COUNT_OF(t); i++) {
        uint8_t ip[16];
        int fam = strchr(t[i].addr, ':') ? AF_INET6 : AF_INET;
        CHECK(inet_pton(fam, t[i].addr, ip) == 1);
        if (cidr_has(t[i].list, fam, ip) != t[i].want)
            FAIL("cidr_has(\"%s\", %s) == %d, expected %d", t[i].list, t[i].addr,
                 cidr_has(t[i].list, fam, ip), t[i].want);
        EQ_INT(cidr_has(t[i].list, 0, NULL), t[i].want < 0 ? -1 : 0);
    }
}

/* ---- The engine address: a Unix path or a numeric TCP address ---- */

static void test_engine_address(void)
{
    static const struct {
        const char *s;
        int family, port; /* family 0: refused */
    } t[] = {
        {"/run/mysqld/mysqld.sock", AF_UNIX, 0},
        {"./db.sock", AF_UNIX, 0},
        {"../db.sock", AF_UNIX, 0},
        {"127.0.0.1:3306", AF_INET, 3306},
        {"10.1.2.3:1", AF_INET, 1},
        {"[::1]:5432", AF_INET6, 5432},
        {"[::ffff:127.0.0.1]:65535", AF_INET6, 65535},
        {"db.sock", 0, 0},              /* relative: must start with ./ */
        {"localhost:3306", 0, 0},       /* numeric only */
        {"::1:5432", 0, 0},             /* IPv6 needs its brackets */
        {"[127.0.0.1]:3306", 0, 0},
        {"127.0.0.1", 0, 0},
        {"127.0.0.1:", 0, 0},
        {"127.0.0.1:0", 0, 0},
        {"127.0.0.1:65536", 0, 0},
        {"127.0.0.1:+80", 0, 0},
        {"127.0.0.1: 80", 0, 0},
        {"127.0.0.1:80x", 0, 0},
        {"127.0.0.1:99999999999999999999999", 0, 0},
        {"[::1]", 0, 0},
        {"[]:80", 0, 0},
        {":80", 0, 0},
    };
    size_t i;
    for (i = 0; i < COUNT_OF(t); i++) {
        union engine_addr a;
        socklen_t len = 0;
        int rc = engine_parse(t[i].s, &a, &len);
        if (rc != (t[i].family ? 0 : -1))
            FAIL("engine_parse(\"%s\") == %d", t[i].s, rc);
        if (rc)
            continue;
        EQ_INT(a.sa.sa_family, t[i].family);
        if (t[i].family == AF_UNIX)
            CHECK(!strcmp(a.un.sun_path, t[i].s) && len == sizeof a.un);
        else
            EQ_INT(ntohs(t[i].family == AF_INET ? a.v4.sin_port : a.v6.sin6_port),
                   t[i].port);
    }
}

static void test_metrics_exposition(void)
{
    static char out[8192];
    struct ws_proxy_status st;
    const char *body;
    unsigned clen = 0;
    size_t n;
    memset(&st, 0, sizeof st);
    st.state = WS_PROXY_RUNNING;
    metrics_handshake(&st, 0);    /* <= 1 ms */
    metrics_handshake(&st, 1);
    metrics_handshake(&st, 2);    /* <= 5 ms */
    metrics_handshake(&st, 60000); /* over the last bound */
    metrics_close(&st, 1000);
    metrics_close(&st, 1005);    /* an empty Close */
    metrics_close(&st, 1006);    /* no Close exchanged */
    metrics_close(&st, 4000);
    EQ_INT(st.closes[0], 1);
    EQ_INT(st.closes[5], 1);
    EQ_INT(st.closes[6], 1);
    EQ_INT(st.closes[WS_PROXY_CLOSE_OTHER], 1);
    n = metrics_write(&st, out, sizeof out);
    CHECK(n > 0 && n < sizeof out);
    out[n < sizeof out ? n : sizeof out - 1] = 0;
    body = strstr(out, "\r\n\r\n");
    CHECK(body != NULL);
    CHECK(sscanf(strstr(out, "Content-Length: ") + 16, "%u", &clen) == 1);
    EQ_INT(clen, n - (size_t)(body + 4 - out));
    CHECK(strstr(out, "\nwsproxy_handshake_duration_seconds_bucket{le=\"0.001\"} 2\n"));
    CHECK(strstr(out, "\nwsproxy_handshake_duration_seconds_bucket{le=\"0.005\"} 3\n"));
    CHECK(strstr(out, "\nwsproxy_handshake_duration_seconds_bucket{le=\"10.000\"} 3\n"));
    CHECK(strstr(out, "\nwsproxy_handshake_duration_seconds_bucket{le=\"+Inf\"} 4\n"));
    CHECK(strstr(out, "\nwsproxy_handshake_duration_seconds_sum 60.003\n"));
    CHECK(strstr(out, "\nwsproxy_closes_total{code=\"1005\"} 1\n"));
    CHECK(strstr(out, "\nwsproxy_closes_total{code=\"other\"} 1\n"));
    CHECK(strstr(out, "\nwsproxy_up 1\n"));
    /* Too small a buffer: nothing, never a cut answer. */
    EQ_INT(metrics_write(&st, out, 1024), 0);
    EQ_INT(metrics_write(&st, out, 100), 0);
}

/* ---- Certificate and key files (the PEM and key parsing is ours) ---- */

#ifndef WS_PROXY_NO_TLS
/* A self-signed P-256 certificate (CN=fuzz.example, until 2126) and its
 * PKCS#8 key: test data only. */
static const char unit_cert_pem[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBhDCCASugAwIBAgIUJO28DPKurhTa9S2jX5hn83zNsQ0wCgYIKoZIzj0EAwIw\n"
    "FzEVMBMGA1UEAwwMZnV6ei5leGFtcGxlMCAXDTI2MTIwMzA2NTg0MFoYDzIxMjYx\n"
    "MTA5MDY1ODQwWjAXMRUwEwYDVQQDDAxmdXp6LmV4YW1wbGUwWTATBgcqhkjOPQIB\n"
    "BggqhkjOPQMBBwNCAATe9yOxAUFSls+tphGMOyM/zGu1h9BF3ygIq1osEo+yGc2Q\n"
    "iA+UbrtFscWcG2PdSuZd/QlHQVQQMt0ewEaZTTo4o1MwUTAdBgNVHQ4EFgQUWcg3\n"
    "I0Ykcv1fO4iyXv3cDYK4r+QwHwYDVR0jBBgwFoAUWcg3I0Ykcv1fO4iyXv3cDYK4\n"
    "r+QwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNHADBEAiBmvguTUPxH/7Xd\n"
    "pRPNdWYsB77QR4qX6e2YNQ0jyVcXcgIgRulUlJ9NYOTGe5Kq3C6CG5VWy5mz9Yme\n"
    "f1ywd8HqSOw=\n"
    "-----END CERTIFICATE-----\n";
static const char unit_key_pem[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg4kR/TefTAe4JUWrg\n"
    "1uxvXN5jLDDrJK8uGwrseZBGgq+hRANCAATe9yOxAUFSls+tphGMOyM/zGu1h9BF\n"
    "3ygIq1osEo+yGc2QiA+UbrtFscWcG2PdSuZd/QlHQVQQMt0ewEaZTTo4\n"
    "-----END PRIVATE KEY-----\n";

static int tls_parse_text(const char *cert, const char *key, char *err, size_t errlen)
{
    struct bvec c, k;
    struct tls_creds *cr = NULL;
    int rc;
    memset(&c, 0, sizeof c), memset(&k, 0, sizeof k);
    c.p = (uint8_t *)cert, c.n = strlen(cert);
    k.p = (uint8_t *)key, k.n = strlen(key);
    err[0] = 0;
    rc = tls_creds_parse(&c, &k, "c.pem", "k.pem", &cr, err, errlen);
    CHECK(rc ? cr == NULL : cr != NULL);
    tls_creds_free(cr);
    return rc;
}

/* openssl genrsa -aes128 -traditional 512 and openssl pkcs8 -topk8 -v2 aes128,
 * cut short: only the headers matter. */
static const char encrypted_traditional[] =
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "Proc-Type: 4,ENCRYPTED\n"
    "DEK-Info: AES-128-CBC,3F17F5316E2BAC89B3A8F3F6D11FB5C6\n"
    "\n"
    "jVq2Wc1+9Xq6a6vXq7kF8P0QmZ5ZkzWl0Ai5v1xQ0zWyq2yJ8mW1gYtJm0hTq2bB\n"
    "-----END RSA PRIVATE KEY-----\n";
static const char encrypted_pkcs8[] =
    "-----BEGIN ENCRYPTED PRIVATE KEY-----\n"
    "MIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQIq4vN3c5Qk3ACAggA\n"
    "-----END ENCRYPTED PRIVATE KEY-----\n";

/* An empty PEM block is refused by name (it once made bvec_add call
 * memcpy(NULL, NULL, 0): UBSan in build/asan/unit). */
static void test_tls_pem_blocks(void)
{
    static const char empty_cert[] = "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n";
    static const char empty_key[] = "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n";
    char err[256], both[4096];
    EQ_INT(tls_parse_text(unit_cert_pem, unit_key_pem, err, sizeof err), 0);
    EQ_INT(tls_parse_text(empty_cert, unit_key_pem, err, sizeof err), WS_PROXY_ETLS);
    EQ_STR(err, "cert_file c.pem: an empty CERTIFICATE block");
    snprintf(both, sizeof both, "%s%s", unit_cert_pem, empty_cert);
    EQ_INT(tls_parse_text(both, unit_key_pem, err, sizeof err), WS_PROXY_ETLS);
    EQ_STR(err, "cert_file c.pem: an empty CERTIFICATE block");
    EQ_INT(tls_parse_text(unit_cert_pem, empty_key, err, sizeof err), WS_PROXY_ETLS);
    EQ_STR(err, "key_file k.pem: an empty private key block");
    EQ_INT(tls_parse_text("", unit_key_pem, err, sizeof err), WS_PROXY_ETLS);
    EQ_STR(err, "cert_file c.pem: not a PEM file");
    EQ_INT(tls_parse_text(unit_cert_pem, "", err, sizeof err), WS_PROXY_ETLS);
    EQ_STR(err, "key_file k.pem: not a PEM file");
    /* One file holding both, as operators often write it. */
    snprintf(both, sizeof both, "%s%s", unit_key_pem, unit_cert_pem);
    EQ_INT(tls_parse_text(both, both, err, sizeof err), 0);
    /* Encrypted keys, PKCS#8 and the traditional form with RFC 1421 headers
     * (which BearSSL's PEM decoder takes for bad base64: "not a PEM file"). */
    EQ_INT(tls_parse_text(unit_cert_pem, encrypted_pkcs8, err, sizeof err), WS_PROXY_ETLS);
    EQ_STR(err, "key_file k.pem: encrypted private keys are not supported "
                "(openssl pkey -in KEY -out PLAIN writes it decrypted)");
    EQ_INT(tls_parse_text(unit_cert_pem, encrypted_traditional, err, sizeof err),
           WS_PROXY_ETLS);
    EQ_STR(err, "key_file k.pem: encrypted private keys are not supported "
                "(openssl pkey -in KEY -out PLAIN writes it decrypted)");
}

/* The expiry is computed in 64 bits from the certificate's day count: with
 * a 32-bit time_t (i386, armhf) this certificate, valid until 2126, was
 * logged as expiring in 1990 and UBSan saw days_left overflow. */
static void test_tls_expiry_after_2038(void)
{
    struct bvec c, k;
    struct tls_creds *cr = NULL;
    char err[256];
    /* 2126-11-09 06:58:40 UTC is day 57290 after 1970-01-01. */
    int64_t left = (57290 * (int64_t)86400 + 6 * 3600 + 58 * 60 + 40 - (int64_t)time(NULL)) /
                   86400;
    memset(&c, 0, sizeof c), memset(&k, 0, sizeof k);
    c.p = (uint8_t *)unit_cert_pem, c.n = strlen(unit_cert_pem);
    k.p = (uint8_t *)unit_key_pem, k.n = strlen(unit_key_pem);
    EQ_INT(tls_creds_parse(&c, &k, "c.pem", "k.pem", &cr, err, sizeof err), 0);
    if (!cr)
        return;
    if (!strstr(cr->info, "expires 2126-11-09 06:58:40 UTC"))
        FAIL("info: %s", cr->info);
    CHECK(cr->days_left >= left - 1 && cr->days_left <= left);
    tls_creds_free(cr);
}
#endif

/* ---- The listen backlog ---- */

/* A burst of connects that the loop has not accepted yet must all complete
 * at once: the backlog is WS_PROXY_LISTEN_BACKLOG, not SOMAXCONN (128 in
 * musl, macOS and the BSDs), beyond which the kernel drops SYNs and a
 * client waits a second for its retransmit. */
static void test_listen_backlog(void)
{
    enum { BURST = 300 };
    static int fds[BURST];
    struct pollfd pf[BURST];
    union conn_addr bound;
    char err[256];
    int lfd = -1, want = BURST, i, done = 0, somaxconn = 0;
    int64_t deadline;
    FILE *f = fopen("/proc/sys/net/core/somaxconn", "r");
    if (f) { /* the kernel's cap, below which no backlog helps */
        if (fscanf(f, "%d", &somaxconn) != 1)
            somaxconn = 0;
        fclose(f);
    }
    if (somaxconn > 0 && somaxconn <= want)
        want = somaxconn - 1;
    EQ_INT(listen_open("127.0.0.1", WS_PROXY_PORT_ANY, &lfd, &bound, err, sizeof err), 0);
    if (lfd < 0)
        return;
    for (i = 0; i < want; i++) {
        fds[i] = sock_open(AF_INET);
        CHECK(fds[i] >= 0);
        if (fds[i] >= 0 && connect(fds[i], &bound.sa, addr_len(&bound)) && errno != EINPROGRESS)
            FAIL("connect %d: %s", i, strerror(errno));
        pf[i].fd = fds[i], pf[i].events = POLLOUT, pf[i].revents = 0;
    }
    /* Well under the 1 s of a first SYN retransmit. */
    deadline = mono_ms() + 900;
    while (done < want && mono_ms() < deadline) {
        if (poll(pf, (nfds_t)want, 50) < 0 && errno != EINTR)
            break;
        for (i = 0; i < want; i++)
            if (pf[i].fd >= 0 && pf[i].revents) {
                int so = 0;
                socklen_t len = sizeof so;
                getsockopt(pf[i].fd, SOL_SOCKET, SO_ERROR, &so, &len);
                if (so)
                    FAIL("connect %d: %s", i, strerror(so));
                pf[i].fd = -1, done++;
            }
    }
    if (done < want)
        FAIL("%d of %d connects done within 900 ms (the listen backlog is too short; "
             "somaxconn %d)", done, want, somaxconn);
    for (i = 0; i < want; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    close(lfd);
}

/* ---- ws_proxy_stop racing every other call ---- */

/* A stop race that deadlocks must fail the case, not hang the run. */
static void watchdog_fired(int sig)
{
    static const char msg[] = "unit: watchdog: the case did not finish "
                              "(a call racing ws_proxy_stop hangs)\n";
    (void)sig;
    if (write(2, msg, sizeof msg - 1) < 0) {
    }
    _exit(3);
}

struct hammer {
    ws_proxy *p;
    const struct ws_proxy_config *c;
    int which;       /* 0 status, 1 restart, 2 reopen_log, 3 a second stop */
    int calls, bad;  /* calls that returned 0; calls with another code */
    char bad_err[320]; /* room for a whole err[256] and a prefix */
};

static void *hammer_main(void *arg)
{
    struct hammer *h = arg;
    unsigned seed = (unsigned)(uintptr_t)h;
    int i;
    if (h->which == 3) {
        usleep((useconds_t)(rand_r(&seed) % 500));
        ws_proxy_stop(h->p);
        return NULL;
    }
    /* Bounded: the stop comes within a few ms. */
    for (i = 0; i < 1000000; i++) {
        struct ws_proxy_status st;
        char err[256] = "";
        int rc = h->which == 0   ? ws_proxy_status(h->p, &st)
                 : h->which == 1 ? ws_proxy_restart(h->p, h->c, err, sizeof err)
                                 : ws_proxy_reopen_log(h->p, err, sizeof err);
        if (rc == WS_PROXY_ESTOPPED) {
            if (h->which && strcmp(err, "the proxy is stopped or stopping")) {
                snprintf(h->bad_err, sizeof h->bad_err, "ESTOPPED with \"%s\"", err);
                h->bad++;
            }
            return NULL;
        }
        if (rc) {
            snprintf(h->bad_err, sizeof h->bad_err, "%s: %s", ws_proxy_strerror(rc), err);
            h->bad++;
        } else
            h->calls++;
    }
    return NULL;
}

/* Threads hammer status, restart and reopen_log (two of each) while the
 * main thread stops the proxy, in some rounds together with a second stop:
 * every call returns 0 or WS_PROXY_ESTOPPED, stop returns, nothing hangs
 * (watchdog), nothing leaks (ASan) and nothing races (TSan). */
static void test_stop_races_every_call(void)
{
    enum { NH = 7 };
    struct engine e;
    struct ws_proxy_config c;
    struct ws_proxy_status st;
    char err[256], dir[] = "/tmp/wsproxy-unit-XXXXXX", path[300];
    int round, i, rounds = getenv("WSPROXY_STOP_ROUNDS") ? atoi(getenv("WSPROXY_STOP_ROUNDS")) : 300;
    long total = 0;
    unsigned seed = 12345;
    int before;
    signal(SIGALRM, watchdog_fired);
    alarm(120);
    engine_start(&e);
    CHECK(mkdtemp(dir) != NULL);
    before = count_fds();
    for (round = 0; round < rounds && !failures; round++) {
        struct hammer h[NH];
        pthread_t th[NH];
        int n = round % 4 == 3 ? NH : NH - 1; /* every 4th round: a second stop */
        ws_proxy *p;
        local_config(&c, &e);
        c.log_dir = dir;
        if (!(p = ws_proxy_start(&c, err, sizeof err))) {
            FAIL("round %d: start: %s", round, err);
            break;
        }
        c.http_port = port_of(p); /* restarts keep the listener */
        for (i = 0; i < n; i++) {
            memset(&h[i], 0, sizeof h[i]);
            h[i].p = p, h[i].c = &c, h[i].which = i < 6 ? i % 3 : 3;
            pthread_create(&th[i], NULL, hammer_main, &h[i]);
        }
        /* From "before any call ran" to "after many": every interleaving. */
        usleep((useconds_t)(rand_r(&seed) % 3000));
        ws_proxy_stop(p);
        /* A late call on the stopped handle (the caller's error, but
         * defined while the address is not reused; nothing started since). */
        EQ_INT(ws_proxy_status(p, &st), WS_PROXY_ESTOPPED);
        EQ_INT(ws_proxy_reopen_log(p, err, sizeof err), WS_PROXY_ESTOPPED);
        EQ_INT(ws_proxy_restart(p, &c, err, sizeof err), WS_PROXY_ESTOPPED);
        EQ_STR(err, "the proxy is stopped or stopping");
        ws_proxy_stop(p); /* harmless */
        for (i = 0; i < n; i++) {
            pthread_join(th[i], NULL);
            if (h[i].bad)
                FAIL("round %d: thread %d (call %d): %s", round, i, h[i].which, h[i].bad_err);
            total += h[i].calls;
        }
    }
    alarm(0);
    EQ_INT(count_fds(), before);
    printf("stop_races_every_call: %d rounds, %ld calls completed before a stop\n", round,
           total);
    snprintf(path, sizeof path, "%s/websocket_proxy.log", dir);
    unlink(path);
    rmdir(dir);
    engine_stop(&e);
}

/* ---- Runner ---- */

static const struct {
    const char *name;
    void (*fn)(void);
} cases[] = {
    {"sha1_fips", test_sha1_fips},
    {"base64_rfc4648", test_base64_rfc4648},
    {"utf8", test_utf8},
    {"rfc6455_key", test_rfc6455_key},
    {"http_partial_every_prefix", test_http_partial_every_prefix},
    {"http_answers", test_http_answers},
    {"http_too_many_headers", test_http_too_many_headers},
    {"http_responses_complete", test_http_responses_complete},
    {"frame_rfc_examples", test_frame_rfc_examples},
    {"frame_every_split", test_frame_every_split},
    {"frame_runs", test_frame_runs},
    {"frame_rejections", test_frame_rejections},
    {"frame_close_codes", test_frame_close_codes},
    {"frame_unmask", test_frame_unmask},
    {"config_validation", test_config_validation},
    {"restart_semantics", test_restart_semantics},
    {"restart_same_port_other_address", test_restart_same_port_other_address},
    {"conn_callback", test_conn_callback},
    {"going_away", test_going_away},
    {"failed_stays_failed", test_failed_stays_failed},
    {"cycles_leave_nothing", test_cycles_leave_nothing},
    {"metrics_cidr", test_metrics_cidr},
    {"engine_address", test_engine_address},
    {"metrics_exposition", test_metrics_exposition},
    {"stop_races_every_call", test_stop_races_every_call},
    {"listen_backlog", test_listen_backlog},
#ifndef WS_PROXY_NO_TLS
    {"tls_pem_blocks", test_tls_pem_blocks},
    {"tls_expiry_after_2038", test_tls_expiry_after_2038},
#endif
};

int main(int argc, char **argv)
{
    size_t i;
    int passed = 0, failed = 0, a;
    signal(SIGPIPE, SIG_IGN);
    if (argc == 2 && !strcmp(argv[1], "--list")) {
        for (i = 0; i < COUNT_OF(cases); i++)
            puts(cases[i].name);
        return 0;
    }
    for (a = 1; a < argc; a++) { /* a misspelt case would pass by running nothing */
        for (i = 0; i < COUNT_OF(cases) && strcmp(argv[a], cases[i].name); i++)
            ;
        if (i == COUNT_OF(cases)) {
            fprintf(stderr, "unit: no case named %s (%s --list names them)\n", argv[a], argv[0]);
            return 2;
        }
    }
    for (i = 0; i < COUNT_OF(cases); i++) {
        int before = failures, wanted = argc == 1;
        for (a = 1; a < argc; a++)
            wanted |= !strcmp(argv[a], cases[i].name);
        if (!wanted)
            continue;
        current = cases[i].name;
        cases[i].fn();
        printf("%s %s\n", failures == before ? "ok  " : "FAIL", cases[i].name);
        fflush(stdout);
        if (failures == before)
            passed++;
        else
            failed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
