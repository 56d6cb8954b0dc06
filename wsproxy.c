/*
 * wsproxy.c - an embeddable WebSocket proxy in front of a Unix socket.
 * MIT licence; see LICENSE.
 *
 * ==== Overview ===========================================================
 *
 * Every accepted WebSocket (RFC 6455) becomes a new connection on the
 * engine's Unix socket.  Client data frames are unmasked and their payload is
 * written to the engine as a byte stream, as it arrives (messages are never
 * reassembled); bytes read from the engine go back as one binary frame per
 * read.  No extensions (permessage-deflate) are negotiated.
 *
 * Threading: one thread per proxy, created by ws_proxy_start(), owns every
 * socket and runs one poll() loop.  While some connections are busy, a turn
 * polls only those (and, on Linux, one epoll descriptor that rings when an
 * idle one has something), and all of them only for timers, so thousands
 * of idle WebSockets do not slow the busy ones.  API calls from other
 * threads post a command into a mailbox, wake the loop through a pipe, and
 * wait on a condition variable until the loop has acted; a process-wide
 * table of live handles lets a call that races ws_proxy_stop() return
 * WS_PROXY_ESTOPPED instead of touching a stopping proxy.
 *
 * Connections: an explicit phase and a state per direction, with the rules
 * that tie them to the buffers and to poll interest written at the top of
 * the section "Connections".  Every socket is watched for errors and
 * hang-ups in every state, so no engine session outlives its client.
 *
 * Memory: a connection costs sizeof(struct conn) (under 1 KiB) plus one
 * pollfd per socket while idle.  Data buffers (WS_PROXY_BUF_SIZE each, at
 * most two per connection: client input and client output) are taken from a
 * free list only while bytes are in flight and returned when drained.  There
 * is no allocation per message.
 *
 * This file is the library and nothing else: the standalone wsproxy
 * program (program/main.c) is a client of wsproxy.h, as every engine is.
 *
 * Portability: C99 and POSIX.1-2008 sockets, poll() and pthreads.  Linux
 * with glibc or musl, on any architecture (32-bit and big-endian included);
 * the BSDs and macOS for the library (docs/hosts.md says what is tested
 * where).  The next section asks each system for its extensions before the
 * first system header; a unit that included one earlier (a unity build)
 * gets fallbacks, or an #error naming the fix.
 *
 * Compile-time options: WS_PROXY_NO_TLS builds without BearSSL; the
 * WS_PROXY_* tunables below may be overridden with -D, and one set below
 * what the proxy needs stops the build with an #error naming the limit.
 */

/* ==== Includes, tunables, portability =================================== */

/* Feature-test macros: each system's switch for "POSIX.1-2008 and the
 * system's own extensions".  A bare _POSIX_C_SOURCE would be wrong: the BSDs
 * and macOS then hide everything outside POSIX (pipe2, initgroups,
 * SO_NOSIGPIPE, TCP_KEEPINTVL), and FreeBSD cannot be told to show it again.
 * A unit that included a system header before this file (a unity build) has
 * already fixed what its headers declare: the checks after the includes
 * adapt to that, or stop with the fix. */
#if defined(__linux__)
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4, pipe2 */
#endif
#elif defined(__APPLE__)
#ifndef _DARWIN_C_SOURCE
#define _DARWIN_C_SOURCE /* SO_NOSIGPIPE, TCP_KEEPALIVE/KEEPINTVL/KEEPCNT */
#endif
#elif defined(__NetBSD__)
#ifndef _NETBSD_SOURCE
#define _NETBSD_SOURCE
#endif
#elif defined(__OpenBSD__)
#ifndef _BSD_SOURCE
#define _BSD_SOURCE
#endif
#elif !defined(__FreeBSD__) && !defined(__DragonFly__) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L /* elsewhere: POSIX.1-2008 is what we need */
#endif

#include "wsproxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef WS_PROXY_NO_TLS
#include <bearssl.h>
#endif

#ifndef O_CLOEXEC
#error "wsproxy.c: POSIX.1-2008 is not visible here (no O_CLOEXEC): a system header was included before wsproxy.c with no feature-test macro, as under -std=c99.  Define _GNU_SOURCE (Linux) or _POSIX_C_SOURCE=200809L before the first #include of this unit, or with -D."
#endif

/* accept4() and pipe2() make a descriptor close-on-exec and non-blocking at
 * birth.  glibc declares them under _GNU_SOURCE only (__USE_GNU records what
 * its headers saw first), musl under _GNU_SOURCE or _BSD_SOURCE (its
 * default), the BSDs while their extensions are visible.  Where they are not
 * declared, the flags follow the call at once (fd_nonblock). */
#if defined(__GLIBC__) ? defined(__USE_GNU)                                  \
                       : defined(__linux__) && (defined(_GNU_SOURCE) || defined(_BSD_SOURCE))
#define HAVE_ACCEPT4 1
#define HAVE_PIPE2 1
#elif (defined(__FreeBSD__) || defined(__OpenBSD__) || defined(__DragonFly__)) &&      \
    defined(__BSD_VISIBLE) && __BSD_VISIBLE
#define HAVE_PIPE2 1
#elif defined(__NetBSD__) && defined(_NETBSD_SOURCE)
#define HAVE_PIPE2 1
#endif

/* macOS spells TCP_KEEPIDLE as TCP_KEEPALIVE (seconds, per socket too). */
#if !defined(TCP_KEEPIDLE) && defined(TCP_KEEPALIVE)
#define TCP_KEEPIDLE TCP_KEEPALIVE
#endif

/* Size of one data buffer: bounds what one connection holds in flight in
 * each direction, and the largest frame sent to clients.  128 KiB (socat's
 * -b 131072) against 64 KiB: 5-11% more bulk throughput and 5-10% less
 * proxy CPU per byte, from half the system calls. */
#ifndef WS_PROXY_BUF_SIZE
#define WS_PROXY_BUF_SIZE 131072
#endif
/* Largest HTTP request header block (SPEC: over 8 KiB gets 431). */
#ifndef WS_PROXY_MAX_HEADER
#define WS_PROXY_MAX_HEADER 8192
#endif
/* Most header lines in a request; more gets 431. */
#ifndef WS_PROXY_MAX_HEADERS
#define WS_PROXY_MAX_HEADERS 64
#endif
/* Drained buffers kept for reuse (4 MiB); the rest go back to malloc. */
#ifndef WS_PROXY_FREE_BUFS
#define WS_PROXY_FREE_BUFS 32
#endif
/* Reads/writes one connection may do per loop turn, so others are served. */
#ifndef WS_PROXY_TURN_BUDGET
#define WS_PROXY_TURN_BUDGET 8
#endif
/* A poll set at least this large is scanned without sleeping first, after
 * a turn that had events (see loop_poll). */
#ifndef WS_PROXY_SCAN_FIRST
#define WS_PROXY_SCAN_FIRST 128
#endif
/* A connection with poll events in the last WS_PROXY_HOT_MS is polled every
 * turn; while any are, the others are polled every WS_PROXY_COLD_MS or more,
 * or on Linux when the doorbell rings (see loop_sort). */
#ifndef WS_PROXY_HOT_MS
#define WS_PROXY_HOT_MS 1000
#endif
#ifndef WS_PROXY_COLD_MS
#define WS_PROXY_COLD_MS 10
#endif
/* Linux: between full turns the cold connections' sockets wait in an epoll
 * set whose one descriptor is polled instead (see loop_bell); 1 turns the
 * doorbell off, and full turns come every WS_PROXY_COLD_MS again. */
#if defined(__linux__) && !defined(WS_PROXY_NO_BELL)
#include <sys/epoll.h>
#define HAVE_BELL 1
#endif
/* Connections accepted per loop turn. */
#ifndef WS_PROXY_ACCEPT_BUDGET
#define WS_PROXY_ACCEPT_BUDGET 64
#endif
/* Connections the kernel may queue before accept (the kernel caps it at
 * net.core.somaxconn on Linux, kern.ipc.somaxconn on the BSDs and macOS).
 * Not SOMAXCONN: that is 4096 in glibc but 128 in musl, macOS and the BSDs,
 * where a burst of connects (as after a same-port restart) saw SYNs
 * dropped and a connect take over a second. */
#ifndef WS_PROXY_LISTEN_BACKLOG
#define WS_PROXY_LISTEN_BACKLOG 4096
#endif
/* Connections over max_connections accepted only to be answered 503;
 * beyond this the listening socket is not polled.  Answered refusals do
 * not count: at most this many linger (WS_PROXY_LINGER_MS) after their
 * answer, the rest are closed as soon as it is out, so a client refused in
 * bulk costs itself, not the listener. */
#ifndef WS_PROXY_REFUSE_SLACK
#define WS_PROXY_REFUSE_SLACK 64
#endif
/* An engine whose listen backlog is full (a non-blocking connect() to its
 * Unix socket gives EAGAIN where a blocking client would wait in the queue)
 * is tried again after this many ms, doubling up to 32 times that, until
 * the handshake timeout. */
#ifndef WS_PROXY_RETRY_MS
#define WS_PROXY_RETRY_MS 5
#endif
/* How long a refused HTTP client may keep sending before we close, ms. */
#ifndef WS_PROXY_LINGER_MS
#define WS_PROXY_LINGER_MS 2000
#endif

/* A client that sent FIN without a Close: how long the bytes it sent
 * before may still take to reach the engine, ms (SPEC: within 1 s). */
#ifndef WS_PROXY_FIN_GRACE_MS
#define WS_PROXY_FIN_GRACE_MS 500
#endif

/* A client that vanishes without FIN or RST (cable pulled, NAT state
 * dropped) is found within about this many seconds by TCP keepalive while
 * the connection is idle (0 turns it off); while our data goes
 * unacknowledged, send_timeout_ms finds it; ping_interval_ms sooner. */
#ifndef WS_PROXY_KEEPALIVE_S
#define WS_PROXY_KEEPALIVE_S 120
#endif

/* Certificates in a chain (leaf plus intermediates). */
#ifndef WS_PROXY_TLS_MAX_CHAIN
#define WS_PROXY_TLS_MAX_CHAIN 8
#endif
/* TLS session cache per configuration: 100 bytes a session. */
#ifndef WS_PROXY_TLS_CACHE_BYTES
#define WS_PROXY_TLS_CACHE_BYTES (100 * 1024)
#endif

/* The limits below which a tunable breaks the proxy rather than shrinks it. */
#if WS_PROXY_MAX_HEADER < 1024
#error "WS_PROXY_MAX_HEADER must be at least 1024: a browser's upgrade request alone is 500-1000 bytes"
#endif
#if WS_PROXY_BUF_SIZE <= WS_PROXY_MAX_HEADER
#error "WS_PROXY_BUF_SIZE must exceed WS_PROXY_MAX_HEADER: a request is read into one buffer (lower WS_PROXY_MAX_HEADER too)"
#endif
#if WS_PROXY_MAX_HEADERS < 8
#error "WS_PROXY_MAX_HEADERS must be at least 8: an upgrade request has 5 required headers and Origin"
#endif
#if WS_PROXY_FREE_BUFS < 0
#error "WS_PROXY_FREE_BUFS must be at least 0 (0: every drained buffer goes back to malloc)"
#endif
#if WS_PROXY_TURN_BUDGET < 1 || WS_PROXY_ACCEPT_BUDGET < 1 || WS_PROXY_LISTEN_BACKLOG < 1
#error "WS_PROXY_TURN_BUDGET, WS_PROXY_ACCEPT_BUDGET and WS_PROXY_LISTEN_BACKLOG must be at least 1"
#endif
#if WS_PROXY_SCAN_FIRST < 1 || WS_PROXY_HOT_MS < 1 || WS_PROXY_COLD_MS < 1
#error "WS_PROXY_SCAN_FIRST, WS_PROXY_HOT_MS and WS_PROXY_COLD_MS must be at least 1"
#endif
#if WS_PROXY_KEEPALIVE_S != 0 && (WS_PROXY_KEEPALIVE_S < 2 || WS_PROXY_KEEPALIVE_S > 65535)
#error "WS_PROXY_KEEPALIVE_S must be 0 (off) or 2 to 65535 (TCP_KEEPIDLE, half of it, stops at 32767)"
#endif
#if WS_PROXY_KEEPALIVE_S > 0 && !(defined(TCP_KEEPIDLE) && defined(TCP_KEEPINTVL) && defined(TCP_KEEPCNT))
#error "wsproxy.c: no per-socket TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT here, so a vanished client would go unnoticed.  On the BSDs and macOS, do not define _POSIX_C_SOURCE for this file (it hides them); where the system has none (OpenBSD), build with -DWS_PROXY_KEEPALIVE_S=0 (then ping_interval_ms alone finds such a client)"
#endif
#if WS_PROXY_TLS_MAX_CHAIN < 1
#error "WS_PROXY_TLS_MAX_CHAIN must be at least 1 (the leaf)"
#endif
#if WS_PROXY_TLS_CACHE_BYTES < 100
#error "WS_PROXY_TLS_CACHE_BYTES must be at least 100 (one session)"
#endif

#define DEFAULT_MAX_CONNECTIONS 1024u
#define DEFAULT_HANDSHAKE_MS 10000u
#define DEFAULT_DRAIN_MS 5000u
#define DEFAULT_SEND_MS 120000u
/* Room in front of an outgoing payload for the largest server header. */
#define FRAME_HEADROOM 10

#ifdef MSG_NOSIGNAL
#define SEND_FLAGS MSG_NOSIGNAL
#else
#define SEND_FLAGS 0 /* SO_NOSIGPIPE is set on each socket instead */
#endif

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

/* ==== Errors ============================================================= */

const char *ws_proxy_strerror(int code)
{
    switch (code) {
#define WS_PROXY_CASE_(name, num, msg)                                       \
    case num:                                                                \
        return msg;
        WS_PROXY_ERRORS(WS_PROXY_CASE_)
#undef WS_PROXY_CASE_
    }
    return "unknown error";
}

/* Formats a one-line reason into the caller's buffer; returns code. */
static int err_set(char *err, size_t errlen, int code, const char *fmt, ...)
{
    va_list ap;
    if (err && errlen) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* errno's message in buf.  Not strerror(): POSIX lets it share one buffer
 * between threads, and the loop thread and API callers (and the host's own
 * threads) all report system errors.  strerror_r() comes in two kinds: the
 * XSI one (POSIX; musl, the BSDs, macOS, glibc without _GNU_SOURCE) returns
 * 0 and fills buf; glibc's GNU one returns the message, perhaps not in buf. */
static const char *sys_err(int e, char *buf, size_t len)
{
#if defined(__GLIBC__) && defined(__USE_GNU)
    return strerror_r(e, buf, len);
#else
    if (strerror_r(e, buf, len))
        snprintf(buf, len, "error %d", e);
    return buf;
#endif
}

/* ==== Leaf code: SHA-1, base64, UTF-8 ==================================== */

struct sha1 {
    uint32_t h[5];
    uint64_t len;
    uint8_t blk[64];
    unsigned n;
};

static uint32_t sha1_rol(uint32_t x, unsigned k)
{
    return (x << k) | (x >> (32 - k));
}

static void sha1_block(struct sha1 *s, const uint8_t *p)
{
    uint32_t w[80], a, b, c, d, e, f, k, t;
    unsigned i;
    for (i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (; i < 80; i++)
        w[i] = sha1_rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4];
    for (i = 0; i < 80; i++) {
        if (i < 20)
            f = (b & c) | (~b & d), k = 0x5A827999;
        else if (i < 40)
            f = b ^ c ^ d, k = 0x6ED9EBA1;
        else if (i < 60)
            f = (b & c) | (b & d) | (c & d), k = 0x8F1BBCDC;
        else
            f = b ^ c ^ d, k = 0xCA62C1D6;
        t = sha1_rol(a, 5) + f + e + k + w[i];
        e = d, d = c, c = sha1_rol(b, 30), b = a, a = t;
    }
    s->h[0] += a, s->h[1] += b, s->h[2] += c, s->h[3] += d, s->h[4] += e;
}

static void sha1_init(struct sha1 *s)
{
    static const uint32_t iv[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE,
                                   0x10325476, 0xC3D2E1F0};
    memcpy(s->h, iv, sizeof iv);
    s->len = 0;
    s->n = 0;
}

static void sha1_update(struct sha1 *s, const void *data, size_t len)
{
    const uint8_t *p = data;
    s->len += len;
    while (len) {
        size_t k = 64 - s->n < len ? 64 - s->n : len;
        memcpy(s->blk + s->n, p, k);
        s->n += (unsigned)k, p += k, len -= k;
        if (s->n == 64) {
            sha1_block(s, s->blk);
            s->n = 0;
        }
    }
}

static void sha1_final(struct sha1 *s, uint8_t out[20])
{
    uint64_t bits = s->len * 8;
    uint8_t pad[72] = {0x80};
    size_t padlen = (s->n < 56 ? 56 : 120) - s->n;
    unsigned i;
    for (i = 0; i < 8; i++)
        pad[padlen + i] = (uint8_t)(bits >> (56 - 8 * i));
    sha1_update(s, pad, padlen + 8);
    for (i = 0; i < 20; i++)
        out[i] = (uint8_t)(s->h[i / 4] >> (24 - 8 * (i % 4)));
}

static const char b64_chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Writes the padded base64 of in[0..n) and a NUL; out needs 4*ceil(n/3)+1. */
static size_t b64_encode(const uint8_t *in, size_t n, char *out)
{
    size_t i, o = 0;
    for (i = 0; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64_chars[v >> 18];
        out[o++] = b64_chars[(v >> 12) & 63];
        out[o++] = b64_chars[(v >> 6) & 63];
        out[o++] = b64_chars[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0);
        out[o++] = b64_chars[v >> 18];
        out[o++] = b64_chars[(v >> 12) & 63];
        out[o++] = i + 1 < n ? b64_chars[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = 0;
    return o;
}

static int b64_value(int ch)
{
    const char *p = ch ? strchr(b64_chars, ch) : NULL;
    return p ? (int)(p - b64_chars) : -1;
}

/* Decodes canonical padded base64 (RFC 4648 section 4: padding required,
 * unused bits zero).  Returns the decoded length, or -1. */
static long b64_decode(const char *in, size_t n, uint8_t *out, size_t cap)
{
    size_t i, o = 0;
    if (n % 4)
        return -1;
    for (i = 0; i < n; i += 4) {
        int v[4], k, pad = 0;
        uint32_t w = 0;
        for (k = 0; k < 4; k++) {
            if (in[i + k] == '=' && i + 4 == n && k >= 2) {
                v[k] = 0, pad++;
            } else {
                if (pad || (v[k] = b64_value((unsigned char)in[i + k])) < 0)
                    return -1;
            }
            w = w << 6 | (uint32_t)v[k];
        }
        if (o + 3 - (size_t)pad > cap)
            return -1;
        if ((pad == 1 && (w & 0xFF)) || (pad == 2 && (w & 0xFFFF)))
            return -1;
        out[o++] = (uint8_t)(w >> 16);
        if (pad < 2)
            out[o++] = (uint8_t)(w >> 8);
        if (pad < 1)
            out[o++] = (uint8_t)w;
    }
    return (long)o;
}

/* Incremental UTF-8 validation (RFC 3629: no overlongs, no surrogates,
 * nothing above U+10FFFF).  State 0 is a character boundary; otherwise it
 * packs the bytes still expected (bits 0-7) and the range the next byte must
 * fall in (lo in bits 8-15, hi in bits 16-23). */
#define UTF8_BAD 0xFFFFFFFFu

static uint32_t utf8_state(unsigned need, unsigned lo, unsigned hi)
{
    return need | lo << 8 | hi << 16;
}

static uint32_t utf8_check(uint32_t s, const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned b = p[i];
        if (s == 0) {
            if (b < 0x80) {
                uint64_t w;
                /* Fast path: eight ASCII bytes at a time. */
                while (i + 8 <= n) {
                    memcpy(&w, p + i, 8);
                    if (w & 0x8080808080808080ull)
                        break;
                    i += 8;
                }
                if (i < n && p[i] < 0x80)
                    i++;
                continue;
            }
            if (b >= 0xC2 && b <= 0xDF)
                s = utf8_state(1, 0x80, 0xBF);
            else if (b == 0xE0)
                s = utf8_state(2, 0xA0, 0xBF);
            else if (b == 0xED)
                s = utf8_state(2, 0x80, 0x9F);
            else if (b >= 0xE1 && b <= 0xEF)
                s = utf8_state(2, 0x80, 0xBF);
            else if (b == 0xF0)
                s = utf8_state(3, 0x90, 0xBF);
            else if (b >= 0xF1 && b <= 0xF3)
                s = utf8_state(3, 0x80, 0xBF);
            else if (b == 0xF4)
                s = utf8_state(3, 0x80, 0x8F);
            else
                return UTF8_BAD;
        } else {
            if (b < ((s >> 8) & 0xFF) || b > ((s >> 16) & 0xFF))
                return UTF8_BAD;
            s = (s & 0xFF) == 1 ? 0 : utf8_state((s & 0xFF) - 1, 0x80, 0xBF);
        }
        i++;
    }
    return s;
}

/* ==== HTTP: the upgrade request and the handshake answers ================
 *
 * http_parse() is a pure function over (buf, len) in the manner of
 * picohttpparser: it returns the length of a complete request head, or
 * HTTP_PARTIAL, HTTP_BAD, HTTP_TOO_MANY; names and values are slices of buf.
 * http_handshake() turns a parsed request into the answer of SPEC section 3.
 */

#define HTTP_PARTIAL (-1)
#define HTTP_BAD (-2)
#define HTTP_TOO_MANY (-3)

struct http_hdr {
    const char *name, *value;
    size_t nlen, vlen;
};

struct http_req {
    const char *method, *target;
    size_t mlen, tlen;
    int major, minor;
    struct http_hdr *h; /* caller's array */
    size_t nh, maxh;
};

static int http_tchar(int c)
{
    /* RFC 7230 section 3.2.6 token characters. */
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || (c && strchr("!#$%&'*+-.^_`|~", c));
}

static int http_lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

static int http_ieq(const char *a, size_t alen, const char *b)
{
    size_t i;
    for (i = 0; i < alen; i++)
        if (!b[i] || http_lower((unsigned char)a[i]) != http_lower((unsigned char)b[i]))
            return 0;
    return b[alen] == 0;
}

/* Parses one request line "METHOD SP target SP HTTP/d.d". */
static int http_request_line(const char *s, size_t n, struct http_req *r)
{
    size_t i = 0;
    r->method = s;
    while (i < n && http_tchar((unsigned char)s[i]))
        i++;
    r->mlen = i;
    if (!i || i >= n || s[i++] != ' ')
        return HTTP_BAD;
    r->target = s + i;
    while (i < n && (unsigned char)s[i] > ' ' && s[i] != 0x7F)
        i++;
    r->tlen = (size_t)(s + i - r->target);
    if (!r->tlen || n - i != 9 || memcmp(s + i, " HTTP/", 6) ||
        s[i + 6] < '0' || s[i + 6] > '9' || s[i + 7] != '.' ||
        s[i + 8] < '0' || s[i + 8] > '9')
        return HTTP_BAD;
    r->major = s[i + 6] - '0';
    r->minor = s[i + 8] - '0';
    return 0;
}

/* Parses "name: value" into *h, trimming optional whitespace. */
static int http_header_line(const char *s, size_t n, struct http_hdr *h)
{
    size_t i = 0, end;
    while (i < n && http_tchar((unsigned char)s[i]))
        i++;
    /* RFC 7230 3.2.4: no whitespace between name and colon. */
    if (!i || i >= n || s[i] != ':')
        return HTTP_BAD;
    h->name = s, h->nlen = i++;
    while (i < n && (s[i] == ' ' || s[i] == '\t'))
        i++;
    end = n;
    while (end > i && (s[end - 1] == ' ' || s[end - 1] == '\t'))
        end--;
    h->value = s + i, h->vlen = end - i;
    for (; i < end; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < ' ' && c != '\t') || c == 0x7F)
            return HTTP_BAD;
    }
    return 0;
}

static long http_parse(const char *buf, size_t len, struct http_req *r)
{
    size_t pos = 0;
    int first = 1;
    r->method = r->target = NULL;
    r->mlen = r->tlen = 0;
    r->major = r->minor = 0;
    r->nh = 0;
    for (;;) {
        const char *nl = memchr(buf + pos, '\n', len - pos);
        size_t n;
        if (!nl)
            return HTTP_PARTIAL;
        n = (size_t)(nl - (buf + pos));
        if (n && buf[pos + n - 1] == '\r')
            n--; /* CRLF; a bare LF is tolerated (RFC 7230 3.5) */
        if (memchr(buf + pos, '\r', n))
            return HTTP_BAD;
        if (first) {
            if (http_request_line(buf + pos, n, r))
                return HTTP_BAD;
            first = 0;
        } else if (n == 0) {
            return (long)(nl + 1 - buf);
        } else if (buf[pos] == ' ' || buf[pos] == '\t') {
            return HTTP_BAD; /* obsolete line folding, RFC 7230 3.2.4 */
        } else if (r->nh == r->maxh) {
            return HTTP_TOO_MANY;
        } else if (http_header_line(buf + pos, n, &r->h[r->nh++])) {
            return HTTP_BAD;
        }
        pos = (size_t)(nl + 1 - buf);
    }
}

/* Finds header `name`; *count receives how often it occurs. */
static const struct http_hdr *http_find(const struct http_req *r,
                                        const char *name, int *count)
{
    const struct http_hdr *found = NULL;
    size_t i;
    *count = 0;
    for (i = 0; i < r->nh; i++)
        if (http_ieq(r->h[i].name, r->h[i].nlen, name)) {
            if (!found)
                found = &r->h[i];
            ++*count;
        }
    return found;
}

/* Steps through a list separated by commas and/or whitespace: returns the
 * next element of s[*pos..n) and its length, or NULL at the end. */
static const char *list_next(const char *s, size_t n, size_t *pos, size_t *len)
{
    size_t i = *pos, start;
    while (i < n && (s[i] == ',' || s[i] == ' ' || s[i] == '\t'))
        i++;
    start = i;
    while (i < n && s[i] != ',' && s[i] != ' ' && s[i] != '\t')
        i++;
    *pos = i;
    *len = i - start;
    return i > start ? s + start : NULL;
}

static int list_has(const char *s, size_t n, const char *tok, size_t toklen,
                    int nocase)
{
    size_t pos = 0, len, i;
    const char *e;
    while ((e = list_next(s, n, &pos, &len)) != NULL) {
        if (len != toklen)
            continue;
        for (i = 0; i < len; i++)
            if (nocase ? http_lower((unsigned char)e[i]) != http_lower((unsigned char)tok[i])
                       : e[i] != tok[i])
                break;
        if (i == len)
            return 1;
    }
    return 0;
}

/* Does any occurrence of header `name` list token `tok`? */
static int http_has_token(const struct http_req *r, const char *name,
                          const char *tok, int nocase)
{
    size_t i;
    for (i = 0; i < r->nh; i++)
        if (http_ieq(r->h[i].name, r->h[i].nlen, name) &&
            list_has(r->h[i].value, r->h[i].vlen, tok, strlen(tok), nocase))
            return 1;
    return 0;
}

struct http_answer {
    int status;          /* 101 to upgrade, 200 for /health, else refusal */
    const char *why;     /* one line for the log and the response body */
    char accept[29];     /* Sec-WebSocket-Accept, with 101 */
    const char *proto;   /* selected subprotocol (slice of the config) */
    size_t proto_len;
};

static int http_answer(struct http_answer *a, int status, const char *why)
{
    a->status = status;
    a->why = why;
    return status;
}

/* The checks of RFC 6455 section 4.2.1 in the order SPEC section 3 lists
 * them; the Origin and subprotocol lists come from the configuration. */
static int http_handshake(const struct http_req *r, const char *origins,
                          const char *protos, struct http_answer *a)
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    const struct http_hdr *key, *ver, *host, *origin;
    int nkey, nver, nhost, norigin, n;
    uint8_t raw[18], digest[20];
    struct sha1 s;

    memset(a, 0, sizeof *a);
    if (r->mlen != 3 || memcmp(r->method, "GET", 3))
        return http_answer(a, 400, "method is not GET");
    if (r->major < 1 || (r->major == 1 && r->minor < 1))
        return http_answer(a, 400, "HTTP version before 1.1");
    if (!http_find(r, "upgrade", &n)) {
        if (r->tlen >= 7 && !memcmp(r->target, "/health", 7) &&
            (r->tlen == 7 || r->target[7] == '?'))
            return http_answer(a, 200, "health");
        return http_answer(a, 400, "not a WebSocket upgrade request");
    }
    if (!http_has_token(r, "upgrade", "websocket", 1))
        return http_answer(a, 400, "Upgrade does not list websocket");
    if (!http_has_token(r, "connection", "upgrade", 1))
        return http_answer(a, 400, "Connection does not list Upgrade");
    host = http_find(r, "host", &nhost);
    if (nhost != 1 || !host->vlen)
        return http_answer(a, 400, "Host missing or repeated");
    ver = http_find(r, "sec-websocket-version", &nver);
    if (nver > 1 || !ver)
        return http_answer(a, 400, "Sec-WebSocket-Version missing or repeated");
    if (ver->vlen != 2 || memcmp(ver->value, "13", 2))
        return http_answer(a, 426, "unsupported Sec-WebSocket-Version");
    key = http_find(r, "sec-websocket-key", &nkey);
    if (nkey != 1 || b64_decode(key->value, key->vlen, raw, sizeof raw) != 16)
        return http_answer(a, 400, "Sec-WebSocket-Key is not base64 of 16 bytes");
    origin = http_find(r, "origin", &norigin);
    if (norigin > 1)
        return http_answer(a, 400, "Origin repeated");
    if (origin && origins && *origins &&
        !list_has(origins, strlen(origins), origin->value, origin->vlen, 1))
        return http_answer(a, 403, "origin not allowed");

    if (protos) {
        size_t pos = 0, len, plen = strlen(protos);
        const char *e;
        while ((e = list_next(protos, plen, &pos, &len)) != NULL) {
            size_t i;
            for (i = 0; i < r->nh; i++)
                if (http_ieq(r->h[i].name, r->h[i].nlen, "sec-websocket-protocol") &&
                    list_has(r->h[i].value, r->h[i].vlen, e, len, 0))
                    break;
            if (i < r->nh) {
                a->proto = e, a->proto_len = len;
                break;
            }
        }
    }
    sha1_init(&s);
    sha1_update(&s, key->value, key->vlen);
    sha1_update(&s, guid, sizeof guid - 1);
    sha1_final(&s, digest);
    b64_encode(digest, 20, a->accept);
    return http_answer(a, 101, "upgrade");
}

static const char *http_reason(int status)
{
    switch (status) {
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 408: return "Request Timeout";
    case 426: return "Upgrade Required";
    case 431: return "Request Header Fields Too Large";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    }
    return "Error";
}

/* Writes the complete response for a; returns its length (cap >= 512). */
static size_t http_write_answer(const struct http_answer *a, char *out,
                                size_t cap)
{
    int n;
    if (a->status == 101)
        n = snprintf(out, cap,
                     "HTTP/1.1 101 Switching Protocols\r\n"
                     "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n%s%.*s%s\r\n",
                     a->accept, a->proto ? "Sec-WebSocket-Protocol: " : "",
                     (int)a->proto_len, a->proto ? a->proto : "",
                     a->proto ? "\r\n" : "");
    else
        n = snprintf(out, cap,
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\n"
                     "Content-Length: %u\r\nConnection: close\r\n%s"
                     "Cache-Control: no-store\r\n\r\n%s\n",
                     a->status, http_reason(a->status),
                     (unsigned)strlen(a->why) + 1,
                     a->status == 426 ? "Sec-WebSocket-Version: 13\r\n" : "",
                     a->why);
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

/* ---- Metrics: a plain GET on metrics_path, answered with the status
 * counters in the Prometheus text exposition format, version 0.0.4. */

#define METRICS_LOOPBACK "127.0.0.0/8 ::1"

/* A GET on `path` (query string aside) without an Upgrade header. */
static int http_plain_get(const struct http_req *r, const char *path)
{
    size_t n = strlen(path), i;
    int nup;
    if (r->mlen != 3 || memcmp(r->method, "GET", 3) || r->major < 1 ||
        (r->major == 1 && r->minor < 1) || http_find(r, "upgrade", &nup))
        return 0;
    for (i = 0; i < r->tlen && r->target[i] != '?'; i++) {
    }
    return i == n && !memcmp(r->target, path, n);
}

/* Is the address ip (4 or 16 bytes, as family says) in the list of
 * addresses and CIDR blocks?  Returns 1 or 0, or -1 if an element is not
 * an address or block; with ip NULL it only checks the list. */
static int cidr_has(const char *list, int family, const uint8_t *ip)
{
    size_t pos = 0, len, n = strlen(list);
    const char *e;
    int found = 0;
    while ((e = list_next(list, n, &pos, &len)) != NULL) {
        char text[INET6_ADDRSTRLEN + 8], *slash, *end;
        uint8_t net[16];
        int fam, bits, max;
        long v;
        if (len >= sizeof text)
            return -1;
        memcpy(text, e, len);
        text[len] = 0;
        if ((slash = strchr(text, '/')) != NULL)
            *slash = 0;
        fam = strchr(text, ':') ? AF_INET6 : AF_INET;
        max = fam == AF_INET6 ? 128 : 32;
        if (inet_pton(fam, text, net) != 1)
            return -1;
        bits = max;
        if (slash) {
            errno = 0;
            v = strtol(slash + 1, &end, 10);
            if (!slash[1] || *end || errno || v < 0 || v > max)
                return -1;
            bits = (int)v;
        }
        if (ip && fam == family && !found) {
            int i;
            found = 1;
            for (i = 0; i < bits && found; i++)
                if ((ip[i / 8] ^ net[i / 8]) & (0x80 >> (i % 8)))
                    found = 0;
        }
    }
    return found;
}

/* Counts a WebSocket's end by its close code (as logged: 1005 for a Close
 * without a code, 1006 when no Close was exchanged). */
static void metrics_close(struct ws_proxy_status *st, unsigned code)
{
    st->closes[code >= 1000 && code < 1000 + WS_PROXY_CLOSE_OTHER ? code - 1000
               : WS_PROXY_CLOSE_OTHER]++;
}

static const unsigned metrics_bounds[] = WS_PROXY_HANDSHAKE_BUCKETS_MS;

/* Counts a handshake that took ms from accept to its 101. */
static void metrics_handshake(struct ws_proxy_status *st, int64_t ms)
{
    unsigned i = 0;
    if (ms < 0)
        ms = 0;
    while (i < WS_PROXY_HANDSHAKE_BUCKETS && (uint64_t)ms > metrics_bounds[i])
        i++;
    st->handshake_ms[i]++;
    st->handshake_ms_sum += (uint64_t)ms;
}

struct metrics_out {
    char *p;
    size_t len, cap;
};

static void metrics_put(struct metrics_out *m, const char *fmt, ...)
{
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(m->p + m->len, m->len < m->cap ? m->cap - m->len : 0, fmt, ap);
    va_end(ap);
    m->len += n > 0 ? (size_t)n : 0;
}

static void metrics_family(struct metrics_out *m, const char *name,
                           const char *type, const char *help)
{
    metrics_put(m, "# HELP wsproxy_%s %s\n# TYPE wsproxy_%s %s\n", name, help, name, type);
}

/* Writes the complete HTTP answer with the metrics of st; returns its
 * length, or 0 if it does not fit in cap bytes.  No floating point: the
 * seconds are integer ms printed with three decimals, so the host's locale
 * cannot change the decimal point. */
static size_t metrics_write(const struct ws_proxy_status *st, char *out, size_t cap)
{
    static const char *const states[] = {"stopped", "running", "failed"};
    static const char *const refusals[] = {"400", "403", "426", "431", "502", "503", "408"};
    /* Close codes always shown: those the proxy chooses itself. */
    static const unsigned shown[] = {1000, 1001, 1002, 1005, 1006, 1007, 1009, 1011};
    char head[160];
    struct metrics_out m;
    uint64_t n = 0;
    size_t hlen, i, j;
    int h;
    if (cap <= sizeof head)
        return 0;
    m.p = out + sizeof head; /* the body first; the head, once its length is known */
    m.len = 0;
    m.cap = cap - sizeof head;

    metrics_family(&m, "up", "gauge", "1 while the proxy listens (state running).");
    metrics_put(&m, "wsproxy_up %d\n", st->state == WS_PROXY_RUNNING);
    metrics_family(&m, "state", "gauge", "The proxy's state: 1 for the current one.");
    for (i = 0; i < COUNT_OF(states); i++)
        metrics_put(&m, "wsproxy_state{state=\"%s\"} %d\n", states[i], st->state == (int)i);
    metrics_family(&m, "info", "gauge", "Version, scheme and port of the proxy.");
    metrics_put(&m, "wsproxy_info{version=\"%s\",scheme=\"%s\",port=\"%d\"} 1\n",
                WS_PROXY_VERSION, st->tls ? "wss" : "ws", st->port);
    metrics_family(&m, "connections_open", "gauge",
                   "Client connections open now, handshaking ones included, "
                   "this scrape excluded.");
    metrics_put(&m, "wsproxy_connections_open %llu\n", (unsigned long long)st->conns_open);
    metrics_family(&m, "connections_total", "counter",
                   "Client connections accepted since start, scrapes included.");
    metrics_put(&m, "wsproxy_connections_total %llu\n", (unsigned long long)st->conns_total);
    metrics_family(&m, "bytes_total", "counter", "Payload bytes relayed, by direction.");
    metrics_put(&m, "wsproxy_bytes_total{direction=\"to_engine\"} %llu\n"
                    "wsproxy_bytes_total{direction=\"to_client\"} %llu\n",
                (unsigned long long)st->bytes_to_engine, (unsigned long long)st->bytes_to_client);
    metrics_family(&m, "refused_total", "counter",
                   "Requests answered with an HTTP error instead of 101, by status "
                   "(408: handshake timeout).");
    for (i = 0; i < WS_PROXY_REFUSED_COUNT_; i++)
        metrics_put(&m, "wsproxy_refused_total{status=\"%s\"} %llu\n", refusals[i],
                    (unsigned long long)st->refused[i]);
    metrics_family(&m, "closes_total", "counter",
                   "WebSockets ended, by the close code sent (1005: an empty Close, "
                   "1006: none).");
    for (i = 0; i <= WS_PROXY_CLOSE_OTHER; i++) {
        for (j = 0; j < COUNT_OF(shown) && shown[j] != 1000 + i; j++) {
        }
        if (i == WS_PROXY_CLOSE_OTHER)
            metrics_put(&m, "wsproxy_closes_total{code=\"other\"} %llu\n",
                        (unsigned long long)st->closes[i]);
        else if (j < COUNT_OF(shown) || st->closes[i])
            metrics_put(&m, "wsproxy_closes_total{code=\"%u\"} %llu\n", 1000 + (unsigned)i,
                        (unsigned long long)st->closes[i]);
    }
    metrics_family(&m, "tls_failures_total", "counter",
                   "TLS handshakes or records that failed.");
    metrics_put(&m, "wsproxy_tls_failures_total %llu\n", (unsigned long long)st->tls_failures);
    metrics_family(&m, "protocol_errors_total", "counter",
                   "WebSockets failed for a protocol violation (1002, 1007, 1009).");
    metrics_put(&m, "wsproxy_protocol_errors_total %llu\n",
                (unsigned long long)st->protocol_errors);
    metrics_family(&m, "handshake_duration_seconds", "histogram",
                   "Time from accept to the 101 answer.");
    for (i = 0; i <= WS_PROXY_HANDSHAKE_BUCKETS; i++) {
        n += st->handshake_ms[i];
        if (i < WS_PROXY_HANDSHAKE_BUCKETS)
            metrics_put(&m, "wsproxy_handshake_duration_seconds_bucket{le=\"%u.%03u\"} %llu\n",
                        metrics_bounds[i] / 1000, metrics_bounds[i] % 1000,
                        (unsigned long long)n);
    }
    metrics_put(&m, "wsproxy_handshake_duration_seconds_bucket{le=\"+Inf\"} %llu\n"
                    "wsproxy_handshake_duration_seconds_sum %llu.%03u\n"
                    "wsproxy_handshake_duration_seconds_count %llu\n",
                (unsigned long long)n, (unsigned long long)(st->handshake_ms_sum / 1000),
                (unsigned)(st->handshake_ms_sum % 1000), (unsigned long long)n);
    if (m.len >= m.cap)
        return 0;
    h = snprintf(head, sizeof head,
                 "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                 "Content-Length: %u\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n",
                 (unsigned)m.len);
    hlen = (size_t)h;
    memmove(out + hlen, m.p, m.len);
    memcpy(out, head, hlen);
    return hlen + m.len;
}

/* ==== Frames: the decoder and the encoder (RFC 6455 section 5) ===========
 *
 * The decoder does no I/O.  It consumes whatever raw client bytes arrived,
 * in any split: header bytes are collected in its state, data payload is
 * unmasked and moved down over the headers it follows, so the caller ends
 * up with the message bytes contiguous at the front of its own buffer,
 * ready for one write to the engine.  Control frame payloads (at most 125
 * bytes) are collected in the state and reported one frame at a time.
 * Each check sits where its byte is decoded, so a violation is reported as
 * soon as the offending byte arrives.
 */

enum { OP_CONT = 0, OP_TEXT = 1, OP_BINARY = 2, OP_CLOSE = 8, OP_PING = 9,
       OP_PONG = 10 };

enum { FRAME_MORE, FRAME_CONTROL, FRAME_ERROR };

struct frame_dec {
    uint64_t left;      /* payload bytes of the current frame still to come */
    uint64_t msg_len;   /* payload bytes of the open message so far */
    uint64_t max_msg;   /* limit on msg_len, 0 = none */
    uint32_t utf8;      /* validator state of the open text message */
    uint8_t hdr[14];    /* header bytes of the current frame */
    uint8_t hlen;       /* hdr bytes collected */
    uint8_t in_payload; /* header complete, payload (left bytes) follows */
    uint8_t op, fin;    /* opcode and FIN of the current frame */
    uint8_t msg_op;     /* OP_TEXT/OP_BINARY while a message is open */
    uint8_t mask[4];
    uint8_t moff;       /* mask offset of the next payload byte */
    uint8_t ctl_len;
    uint8_t ctl[125];   /* control payload, complete on FRAME_CONTROL */
    uint16_t err;       /* close code once FRAME_ERROR was returned */
    const char *why;    /* and the reason */
};

static int frame_fail(struct frame_dec *d, uint16_t code, const char *why)
{
    d->err = code;
    d->why = why;
    return FRAME_ERROR;
}

/* Unmasks n bytes from src to dst (dst <= src, overlap allowed), a machine
 * word at a time: each block is loaded before the store that may overlap
 * it, and stores never pass the next load.  The mask word is made with
 * shifts, not assembled in memory a byte at a time: a word loaded right
 * after byte stores to it waits for them (no store forwarding), which cost
 * more than the unmasking of a small frame. */
static void frame_unmask(uint8_t *dst, const uint8_t *src, size_t n,
                         const uint8_t mask[4], unsigned moff)
{
    static const union { uint16_t u; uint8_t b[2]; } order = {1};
    uint32_t m32;
    uint64_t m, w;
    size_t i = 0;
    memcpy(&m32, mask, 4);
    m = (uint64_t)m32 << 32 | m32; /* the mask twice: any byte order */
    if (moff & 3) { /* start at mask byte moff: rotate towards byte 0 */
        unsigned s = 8 * (moff & 3);
        m = order.b[0] ? m >> s | m << (64 - s) : m << s | m >> (64 - s);
    }
    for (; i + 32 <= n; i += 32) { /* four words per step: vector code */
        uint64_t v[4];
        memcpy(v, src + i, 32);
        v[0] ^= m, v[1] ^= m, v[2] ^= m, v[3] ^= m;
        memcpy(dst + i, v, 32);
    }
    for (; i + 8 <= n; i += 8) {
        memcpy(&w, src + i, 8);
        w ^= m;
        memcpy(dst + i, &w, 8);
    }
    for (; i < n; i++) { /* the tail: byte j of m, in memory order */
        unsigned j = (unsigned)(i & 7);
        dst[i] = src[i] ^ (uint8_t)(order.b[0] ? m >> 8 * j : m >> (56 - 8 * j));
    }
}

/* Bytes the header needs once its first two bytes are known. */
static unsigned frame_hdr_size(const uint8_t *h)
{
    unsigned len7 = h[1] & 0x7F;
    return 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + 4;
}

/* Checks one header byte as it arrives; returns FRAME_MORE or an error. */
static int frame_check_byte(struct frame_dec *d, unsigned i)
{
    const uint8_t *h = d->hdr;
    unsigned op = h[0] & 0x0F;
    if (i == 0) {
        /* 5.2: RSV1-3 MUST be 0 unless an extension was negotiated. */
        if (h[0] & 0x70)
            return frame_fail(d, 1002, "reserved bits set");
        /* 5.2: opcodes 3-7 and 11-15 are reserved. */
        if ((op > 2 && op < 8) || op > 10)
            return frame_fail(d, 1002, "reserved opcode");
        /* 5.5: control frames MUST NOT be fragmented. */
        if (op >= 8 && !(h[0] & 0x80))
            return frame_fail(d, 1002, "fragmented control frame");
        /* 5.4: a continuation needs an open message; a new data frame
         * may not start while one is open. */
        if (op == OP_CONT && !d->msg_op)
            return frame_fail(d, 1002, "continuation without a message");
        if ((op == OP_TEXT || op == OP_BINARY) && d->msg_op)
            return frame_fail(d, 1002, "new message inside a fragmented one");
    } else if (i == 1) {
        /* 5.1: a server MUST close on an unmasked client frame. */
        if (!(h[1] & 0x80))
            return frame_fail(d, 1002, "unmasked client frame");
        /* 5.5: control frame payloads are at most 125 bytes. */
        if (op >= 8 && (h[1] & 0x7F) > 125)
            return frame_fail(d, 1002, "control frame over 125 bytes");
    } else if (i == 2 && (h[1] & 0x7F) == 127 && (h[2] & 0x80)) {
        /* 5.2: the most significant bit of a 64-bit length MUST be 0. */
        return frame_fail(d, 1002, "64-bit length with the top bit set");
    }
    return FRAME_MORE;
}

/* The header is complete: start the frame. */
static int frame_begin(struct frame_dec *d)
{
    const uint8_t *h = d->hdr;
    unsigned len7 = h[1] & 0x7F, i, at = 2;
    uint64_t len = len7;
    if (len7 == 126) {
        len = (uint64_t)h[2] << 8 | h[3];
        at = 4;
    } else if (len7 == 127) {
        for (len = 0, i = 2; i < 10; i++)
            len = len << 8 | h[i];
        at = 10;
    }
    memcpy(d->mask, h + at, 4);
    d->moff = 0;
    d->op = h[0] & 0x0F;
    d->fin = h[0] >> 7;
    d->left = len;
    d->hlen = 0;
    if (d->op >= 8) {
        d->ctl_len = 0;
        return FRAME_MORE;
    }
    if (d->op != OP_CONT) {
        d->msg_op = d->op;
        d->msg_len = 0;
        d->utf8 = 0;
    }
    if (d->max_msg && len > d->max_msg - d->msg_len)
        return frame_fail(d, 1009, "message too big");
    d->msg_len += len;
    return FRAME_MORE;
}

/* Validates a complete Close payload (5.5.1, 7.4). */
static int frame_check_close(struct frame_dec *d)
{
    unsigned code;
    if (d->ctl_len == 0)
        return FRAME_CONTROL;
    if (d->ctl_len == 1)
        return frame_fail(d, 1002, "close payload of one byte");
    code = (unsigned)d->ctl[0] << 8 | d->ctl[1];
    /* 7.4.1 and the IANA registry: 1000-1003, 1007-1014 and 3000-4999 may
     * be sent; 1004-1006 and 1015 are reserved, the rest unassigned. */
    if (!((code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
          (code >= 3000 && code <= 4999)))
        return frame_fail(d, 1002, "invalid close code");
    if (utf8_check(0, d->ctl + 2, d->ctl_len - 2u) != 0)
        return frame_fail(d, 1007, "close reason is not UTF-8");
    return FRAME_CONTROL;
}

/* The common case, taken apart from the general path below: whole binary
 * messages of one frame each (FIN, no RSV bit, opcode 2, masked, payload
 * under 64 KiB and within max_msg) while no message is open and the
 * buffer holds each frame whole.  Each gives the bytes the general path
 * would, and leaves what outlives a frame (in_payload, hlen, msg_op) as
 * the general path leaves it between messages; the other fields are only
 * read after frame_begin() sets them.  At the first frame that is anything
 * else, or only partly here, the general path takes over.  A 64 B frame
 * costs less than half the general path's time here. */
static void frame_run(struct frame_dec *d, uint8_t *buf, size_t len, size_t *pos,
                      size_t *out)
{
    size_t p = *pos, o = *out;
    while (len - p >= 8) { /* the longest header taken here */
        const uint8_t *h = buf + p;
        unsigned len7 = h[1] & 0x7F, hs = len7 < 126 ? 6 : 8;
        size_t n = len7 < 126 ? len7 : (size_t)h[2] << 8 | h[3];
        if (h[0] != (0x80 | OP_BINARY) || !(h[1] & 0x80) || len7 == 127 ||
            len - p - hs < n || (d->max_msg && n > d->max_msg))
            break;
        frame_unmask(buf + o, h + hs, n, h + hs - 4, 0);
        p += hs + n;
        o += n;
    }
    *pos = p;
    *out = o;
}

/*
 * Consumes raw bytes buf[*pos..len).  Data payload is unmasked and written
 * at buf[*out..], and *out advances (*out <= *pos always holds).  Returns
 * FRAME_MORE when the input is used up, FRAME_CONTROL when a control frame
 * is complete (d->op, d->ctl, d->ctl_len; call again for the rest of the
 * input), or FRAME_ERROR (d->err, d->why; the decoder is then dead).
 */
static int frame_decode(struct frame_dec *d, uint8_t *buf, size_t len,
                        size_t *pos, size_t *out)
{
    size_t p = *pos, o = *out;
    int rc = FRAME_MORE;
    /* in_payload lives in a register here: the byte stored back each
     * frame, then loaded with hlen as one word, stalled every frame. */
    unsigned in_payload = d->in_payload;
    for (;;) {
        if (!in_payload && d->hlen == 0 && !d->msg_op)
            frame_run(d, buf, len, &p, &o);
        if (!in_payload && d->hlen == 0 && len - p >= sizeof d->hdr) {
            /* A whole header is here: check its bytes without the per-byte
             * path (small text messages, and each frame frame_run left). */
            memcpy(d->hdr, buf + p, sizeof d->hdr);
            if ((rc = frame_check_byte(d, 0)) != FRAME_MORE ||
                (rc = frame_check_byte(d, 1)) != FRAME_MORE ||
                (rc = frame_check_byte(d, 2)) != FRAME_MORE)
                break;
            p += frame_hdr_size(d->hdr);
            in_payload = 1;
            if ((rc = frame_begin(d)) != FRAME_MORE)
                break;
        } else if (!in_payload) {
            if (p == len)
                break;
            d->hdr[d->hlen] = buf[p++];
            if ((rc = frame_check_byte(d, d->hlen++)) != FRAME_MORE)
                break;
            if (d->hlen < 2 || d->hlen < frame_hdr_size(d->hdr))
                continue;
            in_payload = 1;
            if ((rc = frame_begin(d)) != FRAME_MORE)
                break;
        }
        if (d->left) {
            size_t n = len - p < d->left ? len - p : (size_t)d->left;
            if (n == 0)
                break;
            if (d->op >= 8) {
                frame_unmask(d->ctl + d->ctl_len, buf + p, n, d->mask, d->moff);
                d->ctl_len = (uint8_t)(d->ctl_len + n);
            } else {
                frame_unmask(buf + o, buf + p, n, d->mask, d->moff);
                if (d->msg_op == OP_TEXT) {
                    uint32_t u = utf8_check(d->utf8, buf + o, n);
                    if (u == UTF8_BAD) {
                        /* The bytes before the invalid one are delivered,
                         * as they would be from an earlier read; they are
                         * consumed too, so out <= pos still holds. */
                        size_t k = 0;
                        while ((u = utf8_check(d->utf8, buf + o + k, 1)) != UTF8_BAD)
                            d->utf8 = u, k++;
                        o += k, p += k;
                        rc = frame_fail(d, 1007, "invalid UTF-8 in text message");
                        break;
                    }
                    d->utf8 = u;
                }
                o += n;
            }
            p += n;
            d->left -= n;
            d->moff = (uint8_t)((d->moff + n) & 3);
            if (d->left)
                break;
        }
        /* The frame's payload is complete (possibly empty). */
        in_payload = 0;
        if (d->op >= 8) {
            rc = d->op == OP_CLOSE ? frame_check_close(d) : FRAME_CONTROL;
            break;
        }
        if (d->fin) {
            if (d->msg_op == OP_TEXT && d->utf8 != 0) {
                rc = frame_fail(d, 1007, "text message ends inside a character");
                break;
            }
            d->msg_op = 0;
        }
    }
    d->in_payload = (uint8_t)in_payload;
    *pos = p;
    *out = o;
    return rc;
}

/* Writes a server frame header (FIN set, unmasked) so that it ends at
 * `end`, right in front of the payload; returns its length. */
static size_t frame_header(uint8_t *end, unsigned op, uint64_t len)
{
    if (len < 126) {
        end[-2] = (uint8_t)(0x80 | op);
        end[-1] = (uint8_t)len;
        return 2;
    }
    if (len < 65536) {
        end[-4] = (uint8_t)(0x80 | op);
        end[-3] = 126;
        end[-2] = (uint8_t)(len >> 8);
        end[-1] = (uint8_t)len;
        return 4;
    }
    {
        unsigned i;
        end[-10] = (uint8_t)(0x80 | op);
        end[-9] = 127;
        for (i = 0; i < 8; i++)
            end[-1 - (int)i] = (uint8_t)(len >> (8 * i));
        return 10;
    }
}

/* ==== The proxy's state, its configuration and its log ===================
 *
 * A configuration is copied once into a reference-counted struct cfg (one
 * allocation holding the strings).  The proxy holds the current one; each
 * connection holds the one it began with, so a restart never pulls settings
 * or certificates from under a live connection.  Only the loop thread
 * touches reference counts once the proxy runs.
 */

struct tls_creds; /* section "Transport"; NULL without TLS */

/* Where the engine listens: socket_path parsed once (engine_parse()). */
union engine_addr {
    struct sockaddr sa;
    struct sockaddr_un un;
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
};

struct cfg {
    int refs;
    struct ws_proxy_config c; /* strings point into text[] */
    union engine_addr engine; /* c.socket_path's address */
    socklen_t engine_len;
    int port;                 /* http_port or https_port, 0 = none */
    int tls;                  /* serving wss:// */
    unsigned max_conns, handshake_ms, drain_ms, send_ms;
    int log_level;
    struct tls_creds *creds;
    char text[]; /* the strings of c, each NUL-terminated */
};

/* Connection state: see the section "Connections" for the rules. */
enum conn_phase {
    PH_TLS,     /* TLS handshake (wss:// only) */
    PH_HTTP,    /* reading the request */
    PH_CONNECT, /* engine connect in progress; the 101 waits in ob */
    PH_OPEN,    /* relaying; c->up and c->down say how far each way */
    PH_CLOSING, /* engine closed; our Close queued or sent */
    PH_REFUSED, /* an HTTP answer queued; then linger until EOF */
    PH_DEAD     /* torn down; freed at the end of the turn */
};

/* One direction of an OPEN connection.  "Paused because the sink is full"
 * is not stored: it is read off the buffers (up_paused, down_paused), so
 * it cannot disagree with them. */
enum dir_state {
    DIR_FLOW,  /* bytes move as fast as the sink takes them */
    DIR_DRAIN, /* the source has ended: deliver what it sent, then shut */
    DIR_SHUT   /* nothing more moves this way */
};

union conn_addr {
    struct sockaddr sa;
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
};

struct tls_conn;

/*
 * One client and its engine connection.  Buffer indices:
 *   ib: client input chunk.  [0, i_out) unmasked payload, of which
 *       [i_wr, i_out) is still to be written to the engine; [i_pos, i_len)
 *       raw bytes not decoded yet.  i_wr <= i_out <= i_pos <= i_len.
 *   ob: bytes composed but not yet taken by the transport, [o_pos, o_len):
 *       the HTTP answer, and (plain sockets only) each outgoing frame.
 *       Engine bytes are read to ob + FRAME_HEADROOM and the frame header
 *       is put in front.  Under TLS frames are composed in BearSSL's own
 *       record buffer instead, so ob stays NULL once the 101 is out.
 * Both are NULL while nothing is in flight.
 */
struct conn {
    struct cfg *cfg;
    int cfd, efd;
    int pi_c, pi_e;       /* indices in this turn's pollfd array, -1 = none */
    uint8_t phase;        /* enum conn_phase */
    uint8_t up, down;     /* enum dir_state: client->engine, engine->client */
    unsigned c_rd : 1, c_wr : 1, e_rd : 1, e_wr : 1; /* readiness */
    unsigned c_fin : 1;   /* the client sends nothing more (FIN seen) */
    unsigned e_fin : 1;   /* the engine sends nothing more (EOF seen) */
    unsigned e_hup : 1;   /* the engine hung up: no longer polled */
    unsigned close_rcvd : 1, close_sent : 1, drop : 1;
    unsigned ping_due : 1, pong_due : 1, over_limit : 1;
    unsigned i_borrowed : 1; /* ib is the transport's, not the free list's */
    unsigned again : 1;   /* the turn budget ran out with work left (rule 9) */
    unsigned took : 1;    /* the client socket took bytes this turn */
    unsigned ip_counted : 1; /* counted in the per-address table */
    unsigned told : 1;    /* conn_fn was told WS_PROXY_CONN_OPEN */
    uint32_t i_borrowed_len;
    int bell_c, bell_e; /* events in the doorbell's set + 1, 0 = not in it */
    uint16_t close_code; /* the code we send (0 = empty Close) */
    uint16_t status;     /* HTTP status answered */
    const char *why;     /* why it ended, for the log: the first reason sticks */
    uint64_t id;
    int64_t t_start, t_open, t_rx, t_data, t_ping; /* ms, monotonic */
    int64_t t_fin;   /* when the client's FIN was seen */
    int64_t t_retry; /* when the engine's backlog was last found full */
    int64_t t_moved; /* when output was last not stuck: none queued, or taken */
    int64_t t_look;  /* the last look at the client's progress (conn_look) */
    int64_t t_acked; /* the last look that found bytes acknowledged */
    int64_t t_clear; /* the last look that found nothing waiting for it */
    uint64_t wire_out; /* bytes written to the client socket */
    uint64_t acked;    /* of those, acknowledged at the last look */
    int64_t t_end; /* closing deadline, 0 = none; once set only moves earlier */
    int64_t t_io;  /* last poll event on either socket: hot or cold */
    uint64_t bytes_in, bytes_out;
    uint8_t *ib, *ob;
    uint32_t i_len, i_pos, i_out, i_wr, o_pos, o_len;
    union conn_addr peer;
    struct tls_conn *tls;
    struct frame_dec dec;
    uint8_t retries;  /* connects that found the engine's backlog full */
    uint8_t pong_len;
    uint8_t pong[125];
    char name[64]; /* "conn 12 192.0.2.1:51234", for the log */
};

/* Open connections per client address, from accept: open addressing with
 * linear probing, n == 0 marks a free slot. */
struct ip_count {
    uint8_t ip[16]; /* IPv6, or IPv4-mapped */
    uint32_t n;
};

enum { CMD_NONE, CMD_RESTART, CMD_STATUS, CMD_STOP, CMD_REOPEN };

struct ws_proxy {
    pthread_t thread;
    pthread_mutex_t api_mu; /* one API call at a time */
    pthread_mutex_t mu;     /* guards the mailbox below */
    pthread_cond_t cv;
    int cmd, cmd_rc, cmd_done;
    void *cmd_arg;
    char *cmd_err;
    size_t cmd_errlen;
    int wake_rd, wake_wr;

    /* Owned by the loop thread from here on. */
    struct cfg *cfg;
    int lfd, lport, quit;
    int busy;         /* the last full poll() found events */
    int64_t cold_due; /* when the next full turn is due, ms */
    int64_t bell_due; /* the earliest a ringing doorbell makes it due */
    int bell_fd;      /* epoll set of the cold sockets, -1 = none */
    int bell_rang;    /* it did: left out of poll() until the full turn */
    union conn_addr laddr;
    int state;
    char reason[256];
    int log_fd;
    int64_t accept_pause_until, accept_warned_at;
    struct conn **conns; /* [0, nhot) hot, then cold: see loop_sort */
    size_t nconns, nhot, capconns;
    size_t ndead; /* DEAD connections in conns[], for loop_reap */
    size_t nrefusing; /* REFUSED ones: answered, they hold no slot */
    struct pollfd *pfd;
    size_t cappfd;
    uint8_t *freebufs; /* free list, linked through the first bytes */
    unsigned nfree;
    uint64_t next_id;
    struct ws_proxy_status st;
    struct ip_count *ipt; /* per-address counts, ipcap slots (power of 2) */
    size_t ipcap, ipused;
    struct http_hdr hdrs[WS_PROXY_MAX_HEADERS]; /* parser scratch */
    char health[128];  /* the /health line */
    char why[192];     /* a refusal's reason, formatted */
    char origin[256];  /* the Origin header for conn_fn, NUL-terminated */
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* CPU time of the calling thread, us: what a loop turn cost, sleep
 * excluded; -1 where the system has no such clock (an optional POSIX one). */
static int64_t thread_cpu_us(void)
{
#ifdef CLOCK_THREAD_CPUTIME_ID
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0)
        return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
#endif
    return -1;
}

static const char *log_level_name(int level)
{
    static const char *const names[] = {"?", "ERROR", "WARN", "INFO", "DEBUG"};
    return level >= 1 && level <= 4 ? names[level] : "?";
}

/* One line: "<UTC time> <LEVEL> [<who>] <what>" to the file, and from
 * "[<who>]" on to the callback.  Payload bytes and keys are never passed
 * here. */
static void plog(ws_proxy *p, int level, const struct conn *c,
                 const char *fmt, ...)
{
    char line[1024];
    struct timespec ts;
    struct tm tm;
    time_t secs;
    va_list ap;
    int n, m, msg;
    if (!p->cfg || level > p->cfg->log_level || (p->log_fd < 0 && !p->cfg->c.log_fn))
        return;
    clock_gettime(CLOCK_REALTIME, &ts);
    secs = ts.tv_sec;
    gmtime_r(&secs, &tm);
    msg = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s ",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                   tm.tm_min, tm.tm_sec, (long)(ts.tv_nsec / 1000000),
                   log_level_name(level));
    n = msg + snprintf(line + msg, sizeof line - (size_t)msg, "[%s] ", c ? c->name : "proxy");
    va_start(ap, fmt);
    m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    n = m < 0 ? n : n + m > (int)sizeof line - 2 ? (int)sizeof line - 2 : n + m;
    line[n] = 0;
    if (p->cfg->c.log_fn) /* the engine's logger adds its own time and level */
        p->cfg->c.log_fn(p->cfg->c.log_user, level, line + msg);
    if (p->log_fd >= 0) {
        line[n++] = '\n';
        /* O_APPEND keeps lines whole; a full disk loses lines, not us. */
        if (write(p->log_fd, line, (size_t)n) < 0) {
        }
    }
}

static int log_open(const struct cfg *cf, int *fd, char *err, size_t errlen)
{
    char path[4096], eb[128];
    *fd = -1;
    if (!cf->c.log_dir || !*cf->c.log_dir)
        return 0;
    if (snprintf(path, sizeof path, "%s/websocket_proxy.log", cf->c.log_dir) >=
        (int)sizeof path)
        return err_set(err, errlen, WS_PROXY_ELOG, "log_dir too long");
    *fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (*fd < 0)
        return err_set(err, errlen, WS_PROXY_ELOG, "open(%s): %s", path,
                       sys_err(errno, eb, sizeof eb));
    return 0;
}

/* Parses a numeric address; port 0 for WS_PROXY_PORT_ANY. */
static int addr_parse(const char *s, int port, union conn_addr *a)
{
    memset(a, 0, sizeof *a);
    if (inet_pton(AF_INET, s, &a->v4.sin_addr) == 1) {
        a->v4.sin_family = AF_INET;
        a->v4.sin_port = htons((uint16_t)(port > 0 ? port : 0));
        return 0;
    }
    if (inet_pton(AF_INET6, s, &a->v6.sin6_addr) == 1) {
        a->v6.sin6_family = AF_INET6;
        a->v6.sin6_port = htons((uint16_t)(port > 0 ? port : 0));
        return 0;
    }
    return -1;
}

/* The engine's address, spelled as wsproxy.h's socket_path says: a Unix
 * socket path starting with '/' or '.', or a numeric "IPv4:PORT" or
 * "[IPv6]:PORT".  Returns 0, or -1 when s is neither. */
static int engine_parse(const char *s, union engine_addr *a, socklen_t *len)
{
    char host[INET6_ADDRSTRLEN];
    const char *colon = strrchr(s, ':');
    size_t n = colon ? (size_t)(colon - s) : 0;
    char *end;
    unsigned long port;
    int v6;
    memset(a, 0, sizeof *a);
    if (*s == '/' || *s == '.') {
        if (strlen(s) >= sizeof a->un.sun_path)
            return -1;
        a->un.sun_family = AF_UNIX;
        memcpy(a->un.sun_path, s, strlen(s));
        *len = sizeof a->un;
        return 0;
    }
    if (!colon || colon[1] < '0' || colon[1] > '9')
        return -1;
    port = strtoul(colon + 1, &end, 10);
    if (*end || port < 1 || port > 65535)
        return -1;
    v6 = *s == '[' && n >= 2 && s[n - 1] == ']'; /* "[IPv6]:PORT" */
    if (v6)
        s++, n -= 2;
    if (n >= sizeof host)
        return -1;
    memcpy(host, s, n);
    host[n] = '\0';
    if (!v6 && inet_pton(AF_INET, host, &a->v4.sin_addr) == 1) {
        a->v4.sin_family = AF_INET;
        a->v4.sin_port = htons((uint16_t)port);
        *len = sizeof a->v4;
        return 0;
    }
    if (v6 && inet_pton(AF_INET6, host, &a->v6.sin6_addr) == 1) {
        a->v6.sin6_family = AF_INET6;
        a->v6.sin6_port = htons((uint16_t)port);
        *len = sizeof a->v6;
        return 0;
    }
    return -1;
}

static socklen_t addr_len(const union conn_addr *a)
{
    return a->sa.sa_family == AF_INET6 ? sizeof a->v6 : sizeof a->v4;
}

/* Unwraps IPv4-mapped IPv6 addresses so that logs, per-IP limits and the
 * PROXY header see the IPv4 address. */
static void addr_unmap(union conn_addr *a)
{
    static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
    if (a->sa.sa_family == AF_INET6 && !memcmp(a->v6.sin6_addr.s6_addr, prefix, 12)) {
        struct sockaddr_in v4;
        memset(&v4, 0, sizeof v4);
        v4.sin_family = AF_INET;
        v4.sin_port = a->v6.sin6_port;
        memcpy(&v4.sin_addr, a->v6.sin6_addr.s6_addr + 12, 4);
        a->v4 = v4;
    }
}

static int addr_port(const union conn_addr *a)
{
    return ntohs(a->sa.sa_family == AF_INET6 ? a->v6.sin6_port : a->v4.sin_port);
}

static const char *addr_ip(const union conn_addr *a, char *buf, size_t len)
{
    const void *src = a->sa.sa_family == AF_INET6 ? (const void *)&a->v6.sin6_addr
                                                  : (const void *)&a->v4.sin_addr;
    if (!inet_ntop(a->sa.sa_family, src, buf, (socklen_t)len))
        snprintf(buf, len, "?");
    return buf;
}

static int addr_same_ip(const union conn_addr *a, const union conn_addr *b)
{
    if (a->sa.sa_family != b->sa.sa_family)
        return 0;
    return a->sa.sa_family == AF_INET6
               ? !memcmp(&a->v6.sin6_addr, &b->v6.sin6_addr, 16)
               : a->v4.sin_addr.s_addr == b->v4.sin_addr.s_addr;
}

static void fd_nosigpipe(int fd)
{
#ifdef SO_NOSIGPIPE
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one);
#endif
    (void)fd;
}

/* The portable fallback: flags set after the descriptor exists. */
static void fd_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    fd_nosigpipe(fd);
}

/* A non-blocking stream socket, close-on-exec from birth where the
 * platform allows, so a host thread that forks and execs cannot leak it. */
static int sock_open(int family)
{
    int fd;
#if defined(SOCK_CLOEXEC) && defined(SOCK_NONBLOCK)
    fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd >= 0 || errno != EINVAL) {
        if (fd >= 0)
            fd_nosigpipe(fd);
        return fd;
    }
#endif
    fd = socket(family, SOCK_STREAM, 0);
    if (fd >= 0)
        fd_nonblock(fd);
    return fd;
}

/* WS_PROXY_KEEPALIVE_S on a client socket: idle for half of it, then six
 * probes over the other half. */
static void sock_keepalive(int fd)
{
    int on = WS_PROXY_KEEPALIVE_S > 0;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
    if (!on)
        return;
#if WS_PROXY_KEEPALIVE_S > 0 /* the constants are there: see the tunable */
    {
        int idle = WS_PROXY_KEEPALIVE_S / 2, cnt = 6;
        int intvl = WS_PROXY_KEEPALIVE_S / 12 > 0 ? WS_PROXY_KEEPALIVE_S / 12 : 1;
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
    }
#endif
}

/* The loop's wake-up pipe, non-blocking and close-on-exec from birth
 * where pipe2() is declared (Linux, the BSDs). */
static int wake_pipe(int fds[2])
{
#ifdef HAVE_PIPE2
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) == 0)
        return 0;
    if (errno != ENOSYS)
        return -1;
#endif
    if (pipe(fds))
        return -1;
    fd_nonblock(fds[0]);
    fd_nonblock(fds[1]);
    return 0;
}

/* Binds and listens, in the manner of redis's anet: errors are reported
 * as "syscall(arg): strerror". */
static int listen_open(const char *host, int port, int *fd_out,
                       union conn_addr *bound, char *err, size_t errlen)
{
    union conn_addr a;
    socklen_t len;
    int fd, one = 1;
    char eb[128];
    if (addr_parse(host, port, &a))
        return err_set(err, errlen, WS_PROXY_EINVAL,
                       "bind_address: not a numeric IPv4 or IPv6 address: %s", host);
    fd = sock_open(a.sa.sa_family);
    if (fd < 0)
        return err_set(err, errlen, WS_PROXY_ESYS, "socket: %s",
                       sys_err(errno, eb, sizeof eb));
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, &a.sa, addr_len(&a)) || listen(fd, WS_PROXY_LISTEN_BACKLOG)) {
        int e = errno;
        close(fd);
        return err_set(err, errlen, WS_PROXY_EBIND,
                       a.sa.sa_family == AF_INET6 ? "bind([%s]:%d): %s" : "bind(%s:%d): %s",
                       host, port > 0 ? port : 0, sys_err(e, eb, sizeof eb));
    }
#ifdef __linux__
    /* Accepted sockets inherit these here: five system calls fewer for
     * every connection (loop_accept sets them elsewhere). */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sock_keepalive(fd);
#endif
    len = sizeof *bound;
    getsockname(fd, &bound->sa, &len);
    *fd_out = fd;
    return 0;
}

/* The buffer free list (no allocation per message, and idle connections
 * hold no buffers). */
static uint8_t *buf_get(ws_proxy *p)
{
    uint8_t *b = p->freebufs;
    if (b) {
        memcpy(&p->freebufs, b, sizeof(uint8_t *));
        p->nfree--;
        return b;
    }
    return malloc(WS_PROXY_BUF_SIZE);
}

static void buf_put(ws_proxy *p, uint8_t **bp)
{
    uint8_t *b = *bp;
    *bp = NULL;
    if (!b)
        return;
    if (p->nfree + 1 > WS_PROXY_FREE_BUFS) { /* not >=: the tunable may be 0 */
        free(b);
        return;
    }
    memcpy(b, &p->freebufs, sizeof(uint8_t *));
    p->freebufs = b;
    p->nfree++;
}

/* ==== Transport ==========================================================
 *
 * Every byte to or from a socket passes through io_recv()/io_send().  The
 * client's bytes pass through the tr_* verbs, the seam where BearSSL wraps
 * the plain socket:
 *   tr_read/tr_write   copy bytes in or out (the HTTP exchange);
 *   tr_in/tr_in_done   borrow the next chunk of client bytes in place (for
 *                      TLS, BearSSL's decrypted record), release it;
 *   tr_out_buf/_commit space to compose one frame in (for TLS, BearSSL's
 *                      outgoing record), then send it;
 *   tr_flush           push queued records to the socket.
 * IO_AGAIN means "would block": readiness flags are cleared and the loop
 * waits for poll.  With TLS, poll interest follows the engine's state, as
 * in BearSSL's tools/sslio.c.
 */

#define IO_AGAIN (-1)
#define IO_ERROR (-2)

static long io_recv(int fd, uint8_t *buf, size_t cap)
{
    ssize_t n;
    do
        n = recv(fd, buf, cap, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK ? IO_AGAIN : IO_ERROR;
    return (long)n;
}

static long io_send(int fd, const uint8_t *buf, size_t len)
{
    ssize_t n;
    do
        n = send(fd, buf, len, SEND_FLAGS);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK ? IO_AGAIN : IO_ERROR;
    return (long)n;
}

/* Plain socket reads; a short read means the socket is drained. */
static long sock_read(struct conn *c, uint8_t *buf, size_t cap)
{
    long n;
    if (!c->c_rd)
        return IO_AGAIN;
    n = io_recv(c->cfd, buf, cap);
    if (n == IO_AGAIN || (n >= 0 && (size_t)n < cap))
        c->c_rd = 0;
    return n;
}

static long sock_write(struct conn *c, const uint8_t *buf, size_t len)
{
    long n;
    if (!c->c_wr)
        return IO_AGAIN;
    n = io_send(c->cfd, buf, len);
    if (n == IO_AGAIN || (n >= 0 && (size_t)n < len))
        c->c_wr = 0;
    if (n > 0) {
        c->took = 1;
        c->wire_out += (uint64_t)n;
    }
    return n;
}

#ifndef WS_PROXY_NO_TLS
/* Certificates and key, shared by the connections of one configuration
 * (BearSSL keeps pointers to them), with the session cache. */
struct tls_creds {
    br_x509_certificate chain[WS_PROXY_TLS_MAX_CHAIN];
    size_t chain_len;
    unsigned key_type;        /* BR_KEYTYPE_RSA or BR_KEYTYPE_EC */
    unsigned issuer_key_type; /* of the CA that signed the leaf */
    br_rsa_private_key rsa;
    br_ec_private_key ec;
    br_ssl_session_cache_lru cache;
    uint8_t *der;             /* the certificates' DER */
    uint8_t *keymem;          /* the private key's numbers */
    long days_left;           /* until the leaf expires */
    char info[384];           /* subject, expiry, fingerprint, for the log */
    uint8_t cache_store[WS_PROXY_TLS_CACHE_BYTES];
};

/* A growing byte vector, fed by BearSSL's decoders. */
struct bvec {
    uint8_t *p;
    size_t n, cap;
    int oom;
};

static void bvec_add(void *ctx, const void *src, size_t len)
{
    struct bvec *v = ctx;
    /* An empty PEM block hands over no bytes and maybe a NULL src:
     * memcpy(NULL, NULL, 0) is undefined. */
    if (v->oom || !len)
        return;
    if (v->n + len > v->cap) {
        size_t cap = (v->n + len) * 2;
        uint8_t *np = realloc(v->p, cap);
        if (!np) {
            v->oom = 1;
            return;
        }
        v->p = np, v->cap = cap;
    }
    memcpy(v->p + v->n, src, len);
    v->n += len;
}

/* Reads a whole (small) file, plus a final newline for the PEM decoder. */
static int tls_read_file(const char *what, const char *path, struct bvec *v,
                         char *err, size_t errlen)
{
    uint8_t chunk[4096];
    char eb[128];
    ssize_t n;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    memset(v, 0, sizeof *v);
    if (fd < 0)
        return err_set(err, errlen, WS_PROXY_ETLS, "%s %s: %s", what, path,
                       sys_err(errno, eb, sizeof eb));
    while ((n = read(fd, chunk, sizeof chunk)) > 0 && v->n < (1u << 20))
        bvec_add(v, chunk, (size_t)n);
    close(fd);
    if (n < 0 || v->oom || v->n >= (1u << 20)) {
        free(v->p);
        return err_set(err, errlen, WS_PROXY_ETLS, "%s %s: %s", what, path,
                       n < 0 ? sys_err(errno, eb, sizeof eb) : "unreadable or over 1 MiB");
    }
    bvec_add(v, "\n", 1);
    return 0;
}

/* Splits PEM text into objects: calls fn(ctx, name, der, len) for each.
 * Returns the number of objects, -1 if fn failed, -2 if not PEM. */
static int tls_pem_each(const struct bvec *in,
                        int (*fn)(void *, const char *, const uint8_t *, size_t),
                        void *ctx)
{
    br_pem_decoder_context pc;
    struct bvec obj;
    const uint8_t *buf = in->p;
    size_t len = in->n;
    char name[128] = "";
    int count = 0, rc = 0, inside = 0;
    memset(&obj, 0, sizeof obj);
    br_pem_decoder_init(&pc);
    while (len && rc == 0) {
        size_t k = br_pem_decoder_push(&pc, buf, len);
        buf += k, len -= k;
        switch (br_pem_decoder_event(&pc)) {
        case BR_PEM_BEGIN_OBJ:
            snprintf(name, sizeof name, "%s", br_pem_decoder_name(&pc));
            obj.n = 0;
            br_pem_decoder_setdest(&pc, bvec_add, &obj);
            inside = 1;
            break;
        case BR_PEM_END_OBJ:
            inside = 0;
            count++;
            if (obj.oom || fn(ctx, name, obj.p, obj.n))
                rc = -1;
            break;
        case BR_PEM_ERROR:
            rc = -2;
            break;
        default:
            if (!k)
                len = 0;
        }
    }
    free(obj.p);
    return rc ? rc : inside ? -2 : count;
}

/* Does the text hold s? */
static int tls_text_has(const struct bvec *v, const char *s)
{
    size_t i, n = strlen(s);
    for (i = 0; v->p && i + n <= v->n; i++)
        if (!memcmp(v->p + i, s, n))
            return 1;
    return 0;
}

struct tls_load {
    struct tls_creds *cr;
    struct bvec certs;
    size_t off[WS_PROXY_TLS_MAX_CHAIN];
    br_skey_decoder_context sk;
    int have_key, key_err, too_many, encrypted;
    int empty; /* a CERTIFICATE or key block with nothing inside */
};

static int tls_take_cert(void *ctx, const char *name, const uint8_t *der, size_t n)
{
    struct tls_load *l = ctx;
    if (strcmp(name, "CERTIFICATE") && strcmp(name, "X509 CERTIFICATE"))
        return 0;
    if (!n) {
        l->empty = 1;
        return -1;
    }
    if (l->cr->chain_len == WS_PROXY_TLS_MAX_CHAIN) {
        l->too_many = 1;
        return -1;
    }
    l->off[l->cr->chain_len] = l->certs.n;
    l->cr->chain[l->cr->chain_len++].data_len = n;
    bvec_add(&l->certs, der, n);
    return l->certs.oom ? -1 : 0;
}

static int tls_take_key(void *ctx, const char *name, const uint8_t *der, size_t n)
{
    struct tls_load *l = ctx;
    if (!strcmp(name, "ENCRYPTED PRIVATE KEY")) {
        l->encrypted = 1;
        return -1;
    }
    if (l->have_key || (strcmp(name, "RSA PRIVATE KEY") && strcmp(name, "EC PRIVATE KEY") &&
                        strcmp(name, "PRIVATE KEY")))
        return 0;
    if (!n) {
        l->empty = 1;
        return -1;
    }
    br_skey_decoder_init(&l->sk);
    br_skey_decoder_push(&l->sk, der, n);
    l->key_err = br_skey_decoder_last_error(&l->sk);
    l->have_key = 1;
    return l->key_err ? -1 : 0;
}

/* Collects the subject DN's common name. */
static void tls_dn(void *ctx, const void *buf, size_t len)
{
    bvec_add(ctx, buf, len);
}

static void tls_describe(struct tls_creds *cr, const br_x509_decoder_context *dc,
                         const struct bvec *dn)
{
    static const uint8_t cn_oid[5] = {0x06, 0x03, 0x55, 0x04, 0x03};
    char cn[128] = "(no CN)", fp[96];
    uint8_t digest[32];
    br_sha256_context h;
    int64_t z, y, era, doe, yoe, doy, mp;
    size_t i, k;
    for (i = 0; dn->p && i + 7 < dn->n; i++)
        if (!memcmp(dn->p + i, cn_oid, 5) && dn->p[i + 6] < 128 &&
            i + 7 + dn->p[i + 6] <= dn->n) {
            snprintf(cn, sizeof cn, "%.*s", (int)dn->p[i + 6], (const char *)dn->p + i + 7);
            break;
        }
    /* In 64 bits from BearSSL's day count, never through time_t: a 32-bit
     * time_t (i386, armhf) ends in 2038.  notafter_days counts from
     * 1 January of year 0 (1970-01-01 is day 719528); the civil date is
     * Howard Hinnant's days_from_civil inverted, on eras of 400 years from
     * 1 March of year 0 (day 60). */
    z = (int64_t)dc->notafter_days - 60;
    cr->days_left = (long)(((z + 60) * 86400 + dc->notafter_seconds -
                            (719528 * (int64_t)86400 + (int64_t)time(NULL))) / 86400);
    era = (z >= 0 ? z : z - 146096) / 146097;
    doe = z - era * 146097;                                        /* [0, 146096] */
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;  /* [0, 399] */
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);                  /* [0, 365] */
    mp = (5 * doy + 2) / 153;                                       /* March = 0 */
    y = yoe + era * 400 + (mp >= 10);
    br_sha256_init(&h);
    br_sha256_update(&h, cr->chain[0].data, cr->chain[0].data_len);
    br_sha256_out(&h, digest);
    for (i = k = 0; i < 32; i++)
        k += (size_t)snprintf(fp + k, sizeof fp - k, i ? ":%02X" : "%02X", digest[i]);
    snprintf(cr->info, sizeof cr->info,
             "certificate CN=%s, %u in chain, expires %04d-%02d-%02d %02d:%02d:%02d UTC, "
             "SHA-256 %s",
             cn, (unsigned)cr->chain_len, (int)y, (int)(mp < 10 ? mp + 3 : mp - 9),
             (int)(doy - (153 * mp + 2) / 5 + 1), (int)(dc->notafter_seconds / 3600),
             (int)(dc->notafter_seconds / 60 % 60), (int)(dc->notafter_seconds % 60), fp);
}

static void tls_creds_free(struct tls_creds *cr)
{
    if (cr) {
        free(cr->der);
        free(cr->keymem);
        free(cr);
    }
}

/* Does the private key belong to the leaf certificate's public key? */
static int tls_key_matches(const struct tls_creds *cr, const br_x509_pkey *pk)
{
    if (pk->key_type != cr->key_type)
        return 0;
    if (cr->key_type == BR_KEYTYPE_RSA) {
        /* A private-key operation undone by the certificate's public key
         * gives back the input only if the two belong together.  (BearSSL
         * 0.6 cannot compute a 4096-bit modulus from the private key.) */
        size_t n = (cr->rsa.n_bitlen + 7) / 8, i;
        uint8_t *x = malloc(2 * n);
        int same;
        if (!x)
            return 0;
        for (i = 0; i < n; i++)
            x[i] = x[n + i] = (uint8_t)(i ? i * 13 + 1 : 0); /* below n */
        same = br_rsa_private_get_default()(x, &cr->rsa) &&
               br_rsa_public_get_default()(x, n, &pk->key.rsa) && !memcmp(x, x + n, n);
        free(x);
        return same;
    } else {
        uint8_t kbuf[BR_EC_KBUF_PUB_MAX_SIZE];
        br_ec_public_key pub;
        return br_ec_compute_pub(br_ec_get_default(), &pub, kbuf, &cr->ec) &&
               pub.curve == pk->key.ec.curve && pub.qlen == pk->key.ec.qlen &&
               !memcmp(pub.q, pk->key.ec.q, pub.qlen);
    }
}

/* Builds the certificate chain and key from the PEM text of cert_file
 * (cert_text) and of key_file (key_text; NULL: read key_file once the
 * certificates are good); checks them; each failure names the file and the
 * problem.  Takes no ownership of the texts. */
static int tls_creds_parse(const struct bvec *cert_text, const struct bvec *key_text,
                           const char *cert_file, const char *key_file,
                           struct tls_creds **out, char *err, size_t errlen)
{
    struct tls_load l;
    struct bvec text, dn;
    br_x509_decoder_context dc;
    const br_x509_pkey *pk;
    struct tls_creds *cr;
    size_t i;
    int n, rc = 0;
    *out = NULL;
    memset(&l, 0, sizeof l);
    if (!(cr = l.cr = calloc(1, sizeof *cr)))
        return err_set(err, errlen, WS_PROXY_ENOMEM, "out of memory");
    n = tls_pem_each(cert_text, tls_take_cert, &l);
    if (n == -2 || (n >= 0 && n == 0))
        rc = err_set(err, errlen, WS_PROXY_ETLS, "cert_file %s: not a PEM file", cert_file);
    else if (l.empty)
        rc = err_set(err, errlen, WS_PROXY_ETLS,
                     "cert_file %s: an empty CERTIFICATE block", cert_file);
    else if (l.too_many)
        rc = err_set(err, errlen, WS_PROXY_ETLS, "cert_file %s: more than %d certificates",
                     cert_file, WS_PROXY_TLS_MAX_CHAIN);
    else if (n < 0 || l.certs.oom)
        rc = err_set(err, errlen, WS_PROXY_ENOMEM, "out of memory");
    else if (!cr->chain_len)
        rc = err_set(err, errlen, WS_PROXY_ETLS, "cert_file %s: holds no CERTIFICATE", cert_file);
    cr->der = l.certs.p;
    for (i = 0; cr->der && i < cr->chain_len; i++)
        cr->chain[i].data = cr->der + l.off[i];
    text.p = NULL;
    if (!rc && !key_text && !(rc = tls_read_file("key_file", key_file, &text, err, errlen)))
        key_text = &text;
    if (!rc) {
        n = tls_pem_each(key_text, tls_take_key, &l);
        /* The traditional form's RFC 1421 headers are bad base64 to BearSSL. */
        l.encrypted |= n == -2 && tls_text_has(key_text, "Proc-Type: 4,ENCRYPTED");
        free(text.p);
        if (l.encrypted)
            rc = err_set(err, errlen, WS_PROXY_ETLS,
                         "key_file %s: encrypted private keys are not supported "
                         "(openssl pkey -in KEY -out PLAIN writes it decrypted)", key_file);
        else if (n == -2 || n == 0)
            rc = err_set(err, errlen, WS_PROXY_ETLS, "key_file %s: not a PEM file", key_file);
        else if (l.empty)
            rc = err_set(err, errlen, WS_PROXY_ETLS,
                         "key_file %s: an empty private key block", key_file);
        else if (l.key_err)
            rc = err_set(err, errlen, WS_PROXY_ETLS,
                         "key_file %s: unsupported or malformed private key (BearSSL error %d)",
                         key_file, l.key_err);
        else if (!l.have_key)
            rc = err_set(err, errlen, WS_PROXY_ETLS,
                         "key_file %s: holds no RSA or EC PRIVATE KEY", key_file);
    }
    if (!rc) {
        /* Copy the key's numbers out of the decoder. */
        cr->key_type = (unsigned)br_skey_decoder_key_type(&l.sk);
        if (cr->key_type == BR_KEYTYPE_RSA) {
            const br_rsa_private_key *k = br_skey_decoder_get_rsa(&l.sk);
            uint8_t *m = cr->keymem = malloc(k->plen + k->qlen + k->dplen + k->dqlen + k->iqlen);
            if (!m) {
                rc = err_set(err, errlen, WS_PROXY_ENOMEM, "out of memory");
            } else {
                cr->rsa = *k;
                memcpy(m, k->p, k->plen), cr->rsa.p = m, m += k->plen;
                memcpy(m, k->q, k->qlen), cr->rsa.q = m, m += k->qlen;
                memcpy(m, k->dp, k->dplen), cr->rsa.dp = m, m += k->dplen;
                memcpy(m, k->dq, k->dqlen), cr->rsa.dq = m, m += k->dqlen;
                memcpy(m, k->iq, k->iqlen), cr->rsa.iq = m;
            }
        } else {
            const br_ec_private_key *k = br_skey_decoder_get_ec(&l.sk);
            if (!(br_ec_get_default()->supported_curves >> k->curve & 1) ||
                k->curve == BR_EC_curve25519)
                rc = err_set(err, errlen, WS_PROXY_ETLS, "key_file %s: unsupported EC curve %d",
                             key_file, k->curve);
            else if (!(cr->keymem = malloc(k->xlen)))
                rc = err_set(err, errlen, WS_PROXY_ENOMEM, "out of memory");
            else {
                cr->ec = *k;
                memcpy(cr->keymem, k->x, k->xlen);
                cr->ec.x = cr->keymem;
            }
        }
    }
    if (!rc) {
        memset(&dn, 0, sizeof dn);
        br_x509_decoder_init(&dc, tls_dn, &dn);
        br_x509_decoder_push(&dc, cr->chain[0].data, cr->chain[0].data_len);
        pk = br_x509_decoder_get_pkey(&dc);
        if (!pk || br_x509_decoder_last_error(&dc))
            rc = err_set(err, errlen, WS_PROXY_ETLS,
                         "cert_file %s: cannot decode the first certificate (BearSSL error %d)",
                         cert_file, br_x509_decoder_last_error(&dc));
        else if (!tls_key_matches(cr, pk))
            rc = err_set(err, errlen, WS_PROXY_ETLS,
                         "key_file %s does not match the certificate in %s", key_file, cert_file);
        if (!rc) {
            cr->issuer_key_type = (unsigned)br_x509_decoder_get_signer_key_type(&dc);
            tls_describe(cr, &dc, &dn);
        }
        free(dn.p);
    }
    if (rc) {
        tls_creds_free(cr);
        return rc;
    }
    br_ssl_session_cache_lru_init(&cr->cache, cr->cache_store, sizeof cr->cache_store);
    *out = cr;
    return 0;
}

/* Loads and checks a certificate chain and its key from their files. */
static int tls_creds_load(const char *cert_file, const char *key_file,
                          struct tls_creds **out, char *err, size_t errlen)
{
    struct bvec text;
    int rc;
    *out = NULL;
    if ((rc = tls_read_file("cert_file", cert_file, &text, err, errlen)) != 0)
        return rc;
    rc = tls_creds_parse(&text, NULL, cert_file, key_file, out, err, errlen);
    free(text.p);
    return rc;
}

struct tls_conn {
    br_ssl_server_context sc;
    unsigned up : 1;    /* handshake complete (application data flowed) */
    unsigned eof : 1;   /* the peer closed TCP */
    unsigned ioerr : 1; /* the socket failed */
    unsigned notified : 1; /* close_notify queued */
    unsigned char buf[BR_SSL_BUFSIZE_BIDI];
};

/* TLS 1.2 only, ECDHE with AEAD only, in the server's order. */
static const uint16_t tls_suites_ec[] = {
    BR_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    BR_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    BR_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384};
static const uint16_t tls_suites_rsa[] = {
    BR_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    BR_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    BR_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384};

static struct tls_conn *tls_conn_new(const struct tls_creds *cr)
{
    struct tls_conn *t = malloc(sizeof *t);
    br_ssl_engine_context *e;
    if (!t)
        return NULL;
    t->up = t->eof = t->ioerr = t->notified = 0;
    if (cr->key_type == BR_KEYTYPE_RSA)
        br_ssl_server_init_full_rsa(&t->sc, cr->chain, cr->chain_len, &cr->rsa);
    else
        br_ssl_server_init_full_ec(&t->sc, cr->chain, cr->chain_len,
                                   cr->issuer_key_type, &cr->ec);
    e = &t->sc.eng;
    br_ssl_engine_set_versions(e, BR_TLS12, BR_TLS12);
    if (cr->key_type == BR_KEYTYPE_RSA)
        br_ssl_engine_set_suites(e, tls_suites_rsa, COUNT_OF(tls_suites_rsa));
    else
        br_ssl_engine_set_suites(e, tls_suites_ec, COUNT_OF(tls_suites_ec));
    br_ssl_engine_add_flags(e, BR_OPT_ENFORCE_SERVER_PREFERENCES | BR_OPT_NO_RENEGOTIATION);
    br_ssl_engine_set_buffer(e, t->buf, sizeof t->buf, 1);
    br_ssl_server_set_cache(&t->sc, &((struct tls_creds *)cr)->cache.vtable);
    if (!br_ssl_server_reset(&t->sc)) {
        free(t);
        return NULL;
    }
    return t;
}

/* The client sent close_notify.  BearSSL reports CLOSED only once its own
 * close_notify in reply has gone out, which a client that does not read
 * never allows; but from the peer's close_notify on it takes no more record
 * bytes (RECVREC) and, once the bytes decrypted before it are taken, has no
 * more to give (RECVAPP).  Before the handshake is done, and once our own
 * close_notify is queued, the engine may also refuse input while it
 * writes, so this is read only in between (then CLOSED tells). */
static int tls_peer_closed(const struct conn *c)
{
    unsigned st = br_ssl_engine_current_state(&c->tls->sc.eng);
    return c->tls->up && !c->tls->notified && !(st & (BR_SSL_RECVREC | BR_SSL_RECVAPP));
}

/* Moves records between the socket and the engine while it can.
 * Returns 1 if bytes moved, 0 if not, -1 once the engine is closed or
 * the client sent close_notify. */
static int tls_pump(struct conn *c)
{
    br_ssl_engine_context *e = &c->tls->sc.eng;
    int moved = 0;
    if (c->tls->eof || c->tls->ioerr)
        return -1;
    for (;;) {
        unsigned st = br_ssl_engine_current_state(e);
        unsigned char *b;
        size_t len;
        long n;
        if (st & BR_SSL_CLOSED)
            return -1;
        if (st & (BR_SSL_SENDAPP | BR_SSL_RECVAPP))
            c->tls->up = 1;
        if ((st & BR_SSL_SENDREC) && c->c_wr) {
            b = br_ssl_engine_sendrec_buf(e, &len);
            if ((n = sock_write(c, b, len)) > 0) {
                br_ssl_engine_sendrec_ack(e, (size_t)n);
                moved = 1;
                continue;
            }
            if (n == IO_ERROR) {
                c->tls->ioerr = 1;
                return -1;
            }
        }
        if ((st & BR_SSL_RECVREC) && c->c_rd) {
            b = br_ssl_engine_recvrec_buf(e, &len);
            if ((n = sock_read(c, b, len)) > 0) {
                br_ssl_engine_recvrec_ack(e, (size_t)n);
                moved = 1;
                continue;
            }
            if (n == 0 || n == IO_ERROR) {
                c->tls->eof = n == 0;
                c->tls->ioerr = n != 0;
                return -1;
            }
        }
        return tls_peer_closed(c) ? -1 : moved;
    }
}

/* The peer closed (close_notify or TCP EOF) without a TLS error. */
static int tls_clean_end(const struct conn *c)
{
    return !c->tls->ioerr && br_ssl_engine_last_error(&c->tls->sc.eng) == BR_ERR_OK;
}

static const char *tls_alert(int alert)
{
    switch (alert) {
    case 10: return "unexpected message";
    case 20: return "bad record MAC";
    case 40: return "handshake failure: no common cipher suite or curve; TLS 1.2 is required "
                    "(a client that offers only TLS 1.3 has none)";
    case 42: case 43: case 44: case 45: case 46: case 48:
        return "certificate refused";
    case 47: return "illegal parameter";
    case 50: return "decode error";
    case 70: return "unsupported protocol version";
    case 80: return "internal error";
    case 86: return "inappropriate fallback";
    case 112: return "unrecognized name";
    }
    return "alert";
}

static const char *tls_error(int err, char *buf, size_t len)
{
    switch (err) {
    case BR_ERR_BAD_VERSION:
    case BR_ERR_UNSUPPORTED_VERSION: return "unsupported TLS version";
    case BR_ERR_BAD_CIPHER_SUITE: return "no common cipher suite";
    case BR_ERR_BAD_MAC: return "bad record MAC";
    case BR_ERR_UNKNOWN_TYPE:
    case BR_ERR_BAD_LENGTH:
    case BR_ERR_TOO_LARGE:
    case BR_ERR_BAD_FRAGLEN: return "malformed TLS record";
    case BR_ERR_BAD_HANDSHAKE:
    case BR_ERR_UNEXPECTED: return "malformed TLS handshake";
    case BR_ERR_IO: return "connection error";
    }
    if (err >= BR_ERR_RECV_FATAL_ALERT && err < BR_ERR_SEND_FATAL_ALERT)
        snprintf(buf, len, "client sent alert %d (%s)", err - BR_ERR_RECV_FATAL_ALERT,
                 tls_alert(err - BR_ERR_RECV_FATAL_ALERT));
    else if (err >= BR_ERR_SEND_FATAL_ALERT)
        snprintf(buf, len, "sent alert %d (%s)", err - BR_ERR_SEND_FATAL_ALERT,
                 tls_alert(err - BR_ERR_SEND_FATAL_ALERT));
    else
        snprintf(buf, len, "BearSSL error %d", err);
    return buf;
}
#endif

/* Queues close_notify (RFC 5246 7.2.1) once; 1 if it was queued now. */
static int tr_close_notify(struct conn *c)
{
#ifndef WS_PROXY_NO_TLS
    if (c->tls && c->tls->up && !c->tls->notified && !c->tls->eof && !c->tls->ioerr) {
        c->tls->notified = 1;
        br_ssl_engine_close(&c->tls->sc.eng);
        tls_pump(c);
        return 1;
    }
#endif
    (void)c;
    return 0;
}

static long tr_read(struct conn *c, uint8_t *buf, size_t cap)
{
#ifndef WS_PROXY_NO_TLS
    if (c->tls) {
        br_ssl_engine_context *e = &c->tls->sc.eng;
        int rc = tls_pump(c);
        size_t len;
        unsigned char *b = br_ssl_engine_recvapp_buf(e, &len);
        if (b) {
            len = len < cap ? len : cap;
            memcpy(buf, b, len);
            br_ssl_engine_recvapp_ack(e, len);
            return (long)len;
        }
        if (rc < 0)
            return tls_clean_end(c) ? 0 : IO_ERROR;
        return IO_AGAIN;
    }
#endif
    return sock_read(c, buf, cap);
}

static long tr_write(struct conn *c, const uint8_t *buf, size_t len)
{
#ifndef WS_PROXY_NO_TLS
    if (c->tls) {
        br_ssl_engine_context *e = &c->tls->sc.eng;
        size_t cap;
        unsigned char *b;
        if (tls_pump(c) < 0)
            return IO_ERROR;
        if (!(b = br_ssl_engine_sendapp_buf(e, &cap)))
            return IO_AGAIN;
        len = len < cap ? len : cap;
        memcpy(b, buf, len);
        br_ssl_engine_sendapp_ack(e, len);
        br_ssl_engine_flush(e, 0);
        tls_pump(c);
        return (long)len;
    }
#endif
    return sock_write(c, buf, len);
}

/* Can tr_read/tr_in give bytes without waiting for poll? */
/* The TLS engine's state bits (BR_SSL_*), 0 for a plain socket. */
#ifndef WS_PROXY_NO_TLS
#define TLS_RECVAPP BR_SSL_RECVAPP
#define TLS_SENDREC BR_SSL_SENDREC
#else
#define TLS_RECVAPP 0
#define TLS_SENDREC 0
#endif
static unsigned tls_state(const struct conn *c)
{
#ifndef WS_PROXY_NO_TLS
    if (c->tls)
        return br_ssl_engine_current_state(&c->tls->sc.eng);
#endif
    (void)c;
    return 0;
}

/* Does the transport hold decrypted bytes the socket will not signal? */
static int tr_buffered(const struct conn *c)
{
    return (tls_state(c) & TLS_RECVAPP) != 0;
}

static int tr_readable(const struct conn *c)
{
    return c->c_rd || tr_buffered(c);
}

/* Borrows the next chunk of client bytes as c->ib[0..i_len). */
static long tr_in(ws_proxy *p, struct conn *c)
{
    long n;
#ifndef WS_PROXY_NO_TLS
    if (c->tls) {
        size_t len;
        int rc = tls_pump(c);
        c->ib = br_ssl_engine_recvapp_buf(&c->tls->sc.eng, &len);
        if (c->ib) {
            c->i_borrowed = 1;
            c->i_borrowed_len = (uint32_t)len;
            n = (long)len;
        } else {
            n = rc < 0 ? (tls_clean_end(c) ? 0 : IO_ERROR) : IO_AGAIN;
        }
    } else
#endif
    {
        if (!(c->ib = buf_get(p)))
            return IO_ERROR;
        if ((n = sock_read(c, c->ib, WS_PROXY_BUF_SIZE)) <= 0)
            buf_put(p, &c->ib);
    }
    if (n > 0) {
        c->i_len = (uint32_t)n;
        c->i_pos = c->i_out = c->i_wr = 0;
    }
    return n;
}

/* Releases the input chunk (its whole length, whatever was used). */
static void tr_in_done(ws_proxy *p, struct conn *c)
{
#ifndef WS_PROXY_NO_TLS
    if (c->i_borrowed) {
        if (c->tls)
            br_ssl_engine_recvapp_ack(&c->tls->sc.eng, c->i_borrowed_len);
        c->ib = NULL;
        c->i_borrowed = 0;
    }
#endif
    buf_put(p, &c->ib);
    c->i_len = c->i_pos = c->i_out = c->i_wr = 0;
}

/* Space for the next outgoing frame, or NULL while output is queued. */
static uint8_t *tr_out_buf(ws_proxy *p, struct conn *c, size_t *cap)
{
    if (c->ob)
        return NULL;
#ifndef WS_PROXY_NO_TLS
    if (c->tls) {
        if (tls_pump(c) < 0)
            return NULL;
        return br_ssl_engine_sendapp_buf(&c->tls->sc.eng, cap);
    }
#endif
    *cap = WS_PROXY_BUF_SIZE;
    return c->ob = buf_get(p);
}

/* The frame is buf[off, off + len): send it. */
static void tr_out_commit(struct conn *c, uint8_t *buf, size_t off, size_t len)
{
#ifndef WS_PROXY_NO_TLS
    if (c->tls) {
        br_ssl_engine_context *e = &c->tls->sc.eng;
        if (off) /* only small frames start late: see conn_downstream */
            memmove(buf, buf + off, len);
        br_ssl_engine_sendapp_ack(e, len);
        br_ssl_engine_flush(e, 0);
        return;
    }
#endif
    (void)buf;
    c->o_pos = (uint32_t)off;
    c->o_len = (uint32_t)(off + len);
}

static void tr_out_cancel(ws_proxy *p, struct conn *c)
{
    if (!c->tls)
        buf_put(p, &c->ob);
}

/* Pushes queued records; 1 if bytes moved, -1 on error. */
static int tr_flush(struct conn *c)
{
#ifndef WS_PROXY_NO_TLS
    if (c->tls) {
        int rc = tls_pump(c);
        return rc < 0 && (c->tls->ioerr || br_ssl_engine_last_error(&c->tls->sc.eng)) ? -1
               : rc > 0;
    }
#endif
    (void)c;
    return 0;
}

/* Moves queued TLS records both ways; -1 once the client's TLS session is
 * closed (close_notify, EOF or error: nothing more can reach it). */
static int tr_pump(struct conn *c)
{
#ifndef WS_PROXY_NO_TLS
    if (c->tls)
        return tls_pump(c) < 0 ? -1 : 0;
#endif
    (void)c;
    return 0;
}

/* Is the TLS handshake done (always, for a plain socket)? */
static int tr_up(const struct conn *c)
{
#ifndef WS_PROXY_NO_TLS
    if (c->tls)
        return c->tls->up;
#endif
    (void)c;
    return 1;
}

/* Bytes accepted by the transport but not yet on the wire? */
static int tr_unsent(const struct conn *c)
{
    return (tls_state(c) & TLS_SENDREC) != 0;
}

/* Poll events for the client socket, given what the connection wants. */
static short tr_events(const struct conn *c, short want)
{
#ifndef WS_PROXY_NO_TLS
    if (c->tls) {
        unsigned st = br_ssl_engine_current_state(&c->tls->sc.eng);
        short ev = 0;
        /* Records are read whenever BearSSL takes one, whatever the
         * WebSocket layer wants: it holds at most one record of decrypted
         * bytes, so this costs no backpressure, and a close_notify is seen
         * in every state. */
        if (st & BR_SSL_SENDREC)
            ev |= POLLOUT;
        if (st & BR_SSL_RECVREC)
            ev |= POLLIN;
        (void)want;
        return ev;
    }
#endif
    (void)c;
    return want;
}

static void tr_free(struct conn *c)
{
#ifndef WS_PROXY_NO_TLS
    free(c->tls);
    c->tls = NULL;
#endif
    (void)c;
}

/* ==== Connections: handshake, relay, close ===============================
 *
 * IMPLEMENTATION NOTES
 *
 * A connection moves through phases:
 *
 *   TLS -> HTTP -> CONNECT -> OPEN -> CLOSING -> DEAD
 *                 \-> REFUSED -> DEAD   (any phase before OPEN)
 *
 * and, while OPEN, each direction has a state of its own (enum dir_state):
 *
 *   up (client -> engine)     FLOW: frames are read, decoded, and their
 *                             payload written to the engine.
 *                             DRAIN: the client sent Close, or broke the
 *                             protocol: the payload decoded before it is
 *                             still written (RFC 6455 7.1.7), then the
 *                             engine's write side is shut.
 *                             SHUT: nothing more goes to the engine.
 *   down (engine -> client)   FLOW: engine bytes are read into free output
 *                             space and sent as binary frames.
 *                             DRAIN: the engine ended (EOF, hang-up or
 *                             error seen); what it sent before is still
 *                             delivered, then our Close.
 *                             SHUT: the engine is done; when up is not
 *                             DRAIN the connection goes CLOSING.
 *
 * Rules, each enforced in one place:
 *
 *  1. efd >= 0 exactly in CONNECT and OPEN (conn_close closes it), but
 *     for a CONNECT that waits to retry an engine whose backlog was full.
 *  2. Paused is derived: up_paused() while payload waits for the engine,
 *     down_paused() while output waits for the client.  A paused side is
 *     not read; nothing else stops reading.
 *  3. Poll interest is derived from the state on every turn by
 *     conn_client_events() and conn_engine_events().  Every socket is in
 *     the poll set in every phase, whatever its interest, so POLLERR and
 *     POLLHUP (and, on Linux, POLLRDHUP: the peer's FIN) are always seen.
 *     The one exception is an engine that hung up: its readiness is then
 *     permanent (reads return data, then EOF or the error), so it leaves
 *     the set instead of waking every poll.
 *  4. The client gone (reset, error, TLS closed) ends the connection at
 *     once: nothing can reach it any more.  A client FIN without Close
 *     ends it as soon as the bytes sent before it are relayed, and at most
 *     WS_PROXY_FIN_GRACE_MS after it was seen or the connection opened,
 *     whichever is later.
 *  5. Events record facts (c_fin and t_fin, close_rcvd, drop, e_fin, the
 *     times bytes moved); every deadline and timer is derived from them
 *     by conn_deadline() on every turn, never armed when an event is seen.
 *     Once the client's Close is decoded (or the client broke the
 *     protocol) only the drain runs: no Ping, no idle timeout, and the
 *     close code is fixed.  t_end is that drain's deadline and the
 *     CLOSING phase's: set once, it only moves earlier.
 *     The engine's end is noticed even while its output is paused on a
 *     slow client: its data is still delivered while the client takes
 *     it, and the connection ends after drain_ms without progress.
 *  6. The first reason to end sticks (why, close_code); conn_end() is the
 *     one place that tears down, logs the end and releases the slot.
 *  7. Readiness flags (c_rd, c_wr, e_rd, e_wr) are set by poll events and
 *     cleared when a call would block; no I/O call is made without one.
 *  8. A connection paused by its engine is never pinged out: while
 *     up_paused() the client's frames cannot be read, so its silence
 *     says nothing (conn_timers).
 *  9. Work a connection holds is never left waiting for a poll event that
 *     will not come: when conn_step() stops on WS_PROXY_TURN_BUDGET with
 *     bytes still to move (undecoded frames in ib after a burst of Pings,
 *     a consumed chunk not yet released), it sets `again` and the loop
 *     does not sleep; likewise for decrypted bytes BearSSL holds.
 * 10. Liveness is progress, never a clock that ignores it: a client that
 *     takes our bytes (its TCP acknowledges them, conn_look) is alive,
 *     however slowly it reads.  The Ping's answer, the drain after the
 *     engine's end and send_ms (a client that stopped reading) all count
 *     from the last progress seen.
 */

/* Is the proxy holding client payload the engine has not taken yet? */
static int up_paused(const struct conn *c)
{
    return c->ib && c->i_wr < c->i_out;
}

static int conn_out_queued(const struct conn *c)
{
    return (c->ob && c->o_pos < c->o_len) || tr_unsent(c);
}

static int down_paused(const struct conn *c)
{
    return conn_out_queued(c);
}

/* Moves t_end earlier (rule 5). */
static void conn_end_by(struct conn *c, int64_t t)
{
    if (!c->t_end || t < c->t_end)
        c->t_end = t;
}

/* The first reason sticks (rule 6). */
static void conn_why(struct conn *c, const char *why)
{
    if (!c->why)
        c->why = why;
}

/* Key for per-address counting: IPv4 as IPv4-mapped IPv6. */
static void ip_key(const union conn_addr *a, uint8_t k[16])
{
    if (a->sa.sa_family == AF_INET6) {
        memcpy(k, &a->v6.sin6_addr, 16);
    } else {
        memset(k, 0, 10);
        k[10] = k[11] = 0xFF;
        memcpy(k + 12, &a->v4.sin_addr, 4);
    }
}

static size_t ip_hash(const uint8_t k[16])
{
    uint32_t h = 2166136261u; /* FNV-1a */
    unsigned i;
    for (i = 0; i < 16; i++)
        h = (h ^ k[i]) * 16777619u;
    return h;
}

static int ip_grow(ws_proxy *p)
{
    size_t cap = p->ipcap ? p->ipcap * 2 : 64, i, j;
    struct ip_count *t = calloc(cap, sizeof *t);
    if (!t)
        return -1;
    for (i = 0; i < p->ipcap; i++) {
        if (!p->ipt[i].n)
            continue;
        for (j = ip_hash(p->ipt[i].ip) & (cap - 1); t[j].n; j = (j + 1) & (cap - 1)) {
        }
        t[j] = p->ipt[i];
    }
    free(p->ipt);
    p->ipt = t;
    p->ipcap = cap;
    return 0;
}

/* Adds delta (+1 or -1) to the count of a's address; returns the new
 * count, or UINT32_MAX if the table cannot grow (the caller refuses). */
static uint32_t ip_count(ws_proxy *p, const union conn_addr *a, int delta)
{
    struct ip_count *t;
    uint8_t k[16];
    size_t i, j, mask;
    uint32_t n;
    if (delta > 0 && (p->ipused + 1) * 2 > p->ipcap && ip_grow(p))
        return UINT32_MAX;
    if (!p->ipcap)
        return 0;
    ip_key(a, k);
    t = p->ipt;
    mask = p->ipcap - 1;
    for (i = ip_hash(k) & mask; t[i].n; i = (i + 1) & mask)
        if (!memcmp(t[i].ip, k, 16))
            break;
    if (!t[i].n) {
        if (delta < 0)
            return 0;
        memcpy(t[i].ip, k, 16);
        p->ipused++;
    }
    n = t[i].n = (uint32_t)((int64_t)t[i].n + delta);
    if (n)
        return n;
    /* Emptied: shift later entries of the run back (no tombstones). */
    p->ipused--;
    for (j = i;;) {
        size_t h;
        j = (j + 1) & mask;
        if (!t[j].n)
            break;
        h = ip_hash(t[j].ip) & mask;
        if (i <= j ? (h <= i || h > j) : (h <= i && h > j)) {
            t[i] = t[j];
            t[j].n = 0;
            i = j;
        }
    }
    return 0;
}

/* Tells the connection's conn_fn about its engine connection; origin is
 * "" on CLOSE. */
static void conn_tell(struct conn *c, int event, const char *origin)
{
    struct ws_proxy_conn_info ci;
    union conn_addr local;
    socklen_t len = sizeof local;
    char client[INET6_ADDRSTRLEN], engine[INET6_ADDRSTRLEN] = "";
    memset(&ci, 0, sizeof ci);
    memset(&local, 0, sizeof local);
    if (!getsockname(c->efd, &local.sa, &len) &&
        (local.sa.sa_family == AF_INET || local.sa.sa_family == AF_INET6)) {
        addr_ip(&local, engine, sizeof engine);
        ci.engine_port = addr_port(&local);
    }
    ci.id = c->id;
    ci.client_addr = addr_ip(&c->peer, client, sizeof client);
    ci.client_port = addr_port(&c->peer);
    ci.tls = c->cfg->tls;
    ci.origin = origin;
    ci.engine_addr = engine;
    c->told = event == WS_PROXY_CONN_OPEN;
    c->cfg->c.conn_fn(c->cfg->c.conn_user, event, &ci);
}

/* Closes the engine connection (rule 1), telling conn_fn first. */
static void conn_engine_close(struct conn *c)
{
    if (c->efd < 0)
        return;
    if (c->told)
        conn_tell(c, WS_PROXY_CONN_CLOSE, "");
    close(c->efd);
    c->efd = -1;
}

static void conn_end(ws_proxy *p, struct conn *c, int64_t now)
{
    int logged = c->status && c->status != 101;
    if (c->phase == PH_DEAD)
        return;
#ifndef WS_PROXY_NO_TLS
    if (c->tls) {
        int e = br_ssl_engine_last_error(&c->tls->sc.eng);
        if (!c->tls->up || e != BR_ERR_OK) {
            p->st.tls_failures++;
            plog(p, WS_PROXY_LOG_INFO, c, "TLS %s: %s", c->tls->up ? "error" : "handshake failed",
                 e != BR_ERR_OK ? tls_error(e, p->why, sizeof p->why)
                 : c->tls->ioerr ? "connection error"
                 : c->tls->eof ? "client closed the connection"
                 : c->why ? c->why : "timed out");
            logged |= !c->tls->up;
        }
    }
#endif
    if (c->status == 101) {
        /* The code of the Close exchanged: 1005 if it had none, 1006 if
         * there was none (RFC 6455 7.1.5). */
        unsigned code = !c->close_sent && !c->close_rcvd ? 1006
                        : c->close_code ? c->close_code : 1005;
        metrics_close(&p->st, code);
        plog(p, WS_PROXY_LOG_INFO, c,
             "closed %u (%s) after %.3f s, %llu bytes to engine, %llu bytes to client",
             code, c->why ? c->why : "client gone", (double)(now - c->t_start) / 1000.0,
             (unsigned long long)c->bytes_in, (unsigned long long)c->bytes_out);
    } else if (c->status == 200) /* /health, metrics: probes, often one a second */
        plog(p, WS_PROXY_LOG_DEBUG, c, "answered a plain GET (200) in %.3f s",
             (double)(now - c->t_start) / 1000.0);
    else if (!logged) /* SPEC 6: every connection's end is logged */
        plog(p, WS_PROXY_LOG_INFO, c, "ended before a WebSocket (%s) after %.3f s",
             c->why ? c->why : "client closed", (double)(now - c->t_start) / 1000.0);
    c->c_wr = 1; /* close_notify: best effort, without waiting */
    c->c_rd = 0;
    tr_close_notify(c);
    conn_engine_close(c);
    close(c->cfd);
    c->cfd = -1;
    tr_in_done(p, c);
    buf_put(p, &c->ob);
    tr_free(c);
    if (c->ip_counted) /* never another connection's count */
        ip_count(p, &c->peer, -1);
    p->nrefusing -= c->phase == PH_REFUSED;
    c->phase = PH_DEAD;
    p->st.conns_open--;
    p->ndead++;
}

/* Starts the closing handshake with `code` (0 = empty Close): the engine
 * is closed at once (rule 1); with `drop` the TCP connection is closed as
 * soon as the Close is out, as RFC 6455 7.1.7 asks of a failure. */
static void conn_close(ws_proxy *p, struct conn *c, uint16_t code,
                       const char *why, int drop, int64_t now)
{
    conn_engine_close(c);
    if (!c->close_rcvd && !c->drop) /* rule 5: an echo or failure code stays */
        c->close_code = code;
    conn_why(c, why);
    c->drop |= drop;
    c->ping_due = c->pong_due = 0;
    c->i_wr = c->i_out; /* payload not yet written has nowhere to go */
    c->up = c->down = DIR_SHUT;
    c->phase = PH_CLOSING;
    conn_end_by(c, now + c->cfg->drain_ms);
    (void)p;
}

/* A protocol violation: what was decoded before it still goes to the
 * engine (up DRAIN), then Close with the decoder's code, then drop. */
static void conn_fail(ws_proxy *p, struct conn *c, uint16_t code,
                      const char *why, int64_t now)
{
    p->st.protocol_errors++;
    plog(p, WS_PROXY_LOG_INFO, c, "protocol error: %s, closing %u", why, code);
    c->close_code = code;
    conn_why(c, why);
    c->drop = 1;
    c->i_pos = c->i_len; /* nothing more is decoded */
    c->up = DIR_DRAIN;
    c->down = DIR_SHUT;
    conn_end_by(c, now + c->cfg->drain_ms);
}

/* Queues a complete HTTP answer, after which the connection lingers.
 * `detail` (may be NULL) goes to the log only: bodies never tell a client
 * about the server's insides (socket paths, errno). */
static void conn_refuse(ws_proxy *p, struct conn *c, struct http_answer *a,
                        const char *detail, int64_t now)
{
    static const int codes[] = {400, 403, 426, 431, 502, 503, 408};
    unsigned i;
    conn_engine_close(c);
    tr_in_done(p, c);
    if (!c->ob && !(c->ob = buf_get(p))) {
        conn_end(p, c, now);
        return;
    }
    c->o_pos = 0;
    c->o_len = (uint32_t)http_write_answer(a, (char *)c->ob, WS_PROXY_BUF_SIZE);
    c->status = (uint16_t)a->status;
    p->nrefusing += c->phase != PH_REFUSED;
    c->phase = PH_REFUSED;
    c->t_end = now + WS_PROXY_LINGER_MS;
    for (i = 0; i < COUNT_OF(codes); i++)
        if (codes[i] == a->status)
            p->st.refused[i]++;
    if (a->status != 200)
        plog(p, WS_PROXY_LOG_INFO, c, "refused %d: %s", a->status, detail ? detail : a->why);
}

static void conn_refuse_with(ws_proxy *p, struct conn *c, int status,
                             const char *why, const char *detail, int64_t now)
{
    struct http_answer a;
    memset(&a, 0, sizeof a);
    http_answer(&a, status, why);
    conn_refuse(p, c, &a, detail, now);
}

/* The engine cannot be reached: the client hears only that; the log says
 * what failed ("connect to", "send PROXY header to") on which path. */
static void conn_engine_down(ws_proxy *p, struct conn *c, const char *what, int e,
                             int64_t now)
{
    char eb[128];
    snprintf(p->why, sizeof p->why, "engine unavailable: %s %s: %s", what,
             c->cfg->c.socket_path, sys_err(e, eb, sizeof eb));
    conn_refuse_with(p, c, 502, "engine unavailable", p->why, now);
}

/* The PROXY protocol header (v1 text or v2 binary) for this client. */
static size_t pp_header(const struct conn *c, int version, uint8_t *out)
{
    static const uint8_t sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                    0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
    union conn_addr src = c->peer, dst;
    socklen_t len = sizeof dst;
    memset(&dst, 0, sizeof dst);
    if (getsockname(c->cfd, &dst.sa, &len))
        dst = src;
    addr_unmap(&dst);
    if (src.sa.sa_family != dst.sa.sa_family)
        dst = src; /* cannot happen on one socket; keep the header valid */
    if (version == WS_PROXY_PP_V1) {
        char s[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN];
        int n = snprintf((char *)out, 108, "PROXY %s %s %s %d %d\r\n",
                         src.sa.sa_family == AF_INET6 ? "TCP6" : "TCP4",
                         addr_ip(&src, s, sizeof s), addr_ip(&dst, d, sizeof d),
                         addr_port(&src), addr_port(&dst));
        return n > 0 ? (size_t)n : 0;
    }
    memcpy(out, sig, 12);
    out[12] = 0x21; /* version 2, PROXY command */
    if (src.sa.sa_family == AF_INET6) {
        out[13] = 0x21; /* TCP over IPv6 */
        out[14] = 0, out[15] = 36;
        memcpy(out + 16, &src.v6.sin6_addr, 16);
        memcpy(out + 32, &dst.v6.sin6_addr, 16);
        memcpy(out + 48, &src.v6.sin6_port, 2);
        memcpy(out + 50, &dst.v6.sin6_port, 2);
        return 52;
    }
    out[13] = 0x11; /* TCP over IPv4 */
    out[14] = 0, out[15] = 12;
    memcpy(out + 16, &src.v4.sin_addr, 4);
    memcpy(out + 20, &dst.v4.sin_addr, 4);
    memcpy(out + 24, &src.v4.sin_port, 2);
    memcpy(out + 26, &dst.v4.sin_port, 2);
    return 28;
}

/* The engine accepted: send the PROXY header, let the 101 go out. */
static void conn_engine_ready(ws_proxy *p, struct conn *c, int64_t now)
{
    int pp = c->cfg->c.proxy_protocol;
    if (pp != WS_PROXY_PP_OFF) {
        uint8_t hdr[128];
        size_t n = pp_header(c, pp, hdr);
        /* A new engine socket's send buffer is empty and far larger than
         * the header, so one write either takes it all or the engine is
         * broken. */
        long w = io_send(c->efd, hdr, n);
        if (w != (long)n) {
            conn_engine_down(p, c, "send PROXY header to", w < 0 ? errno : EPIPE, now);
            return;
        }
    }
    c->phase = PH_OPEN;
    c->up = c->down = DIR_FLOW;
    c->status = 101;
    metrics_handshake(&p->st, now - c->t_start);
    c->t_open = c->t_rx = c->t_data = c->t_moved = now;
    c->t_look = c->t_acked = c->t_clear = now;
    c->e_wr = 1;
    plog(p, WS_PROXY_LOG_DEBUG, c, "open");
}

/* The engine's listen backlog is full: wait in CONNECT without a socket
 * and try again (WS_PROXY_RETRY_MS, rule 1), as a blocking client would
 * wait in the queue. */
static void conn_engine_wait(struct conn *c, int64_t now)
{
    conn_engine_close(c);
    c->e_wr = 0;
    c->phase = PH_CONNECT;
    c->t_retry = now;
    c->retries += c->retries < 255;
}

static int64_t conn_retry_time(const struct conn *c)
{
    return c->t_retry + ((int64_t)WS_PROXY_RETRY_MS << (c->retries < 6 ? c->retries - 1 : 5));
}

static void conn_engine_connect(ws_proxy *p, struct conn *c, int64_t now)
{
    const struct cfg *cf = c->cfg;
    int fd = sock_open(cf->engine.sa.sa_family), on = 1;
    if (fd < 0) {
        conn_engine_down(p, c, "no socket for", errno, now);
        return;
    }
    c->efd = fd;
    /* A relayed query is one small write: it must not wait for an ACK. */
    if (cf->engine.sa.sa_family != AF_UNIX)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    if (connect(fd, &cf->engine.sa, cf->engine_len) == 0)
        conn_engine_ready(p, c, now);
    else if (errno == EINPROGRESS || errno == EINTR)
        c->phase = PH_CONNECT;
    else if (errno == EAGAIN)
        conn_engine_wait(c, now);
    else
        conn_engine_down(p, c, "connect to", errno, now);
}

/* A plain GET on metrics_path: the figures of ws_proxy_status(), or 403
 * for a client metrics_allow does not list. */
static void conn_metrics(ws_proxy *p, struct conn *c, int64_t now)
{
    const char *allow = c->cfg->c.metrics_allow;
    const union conn_addr *a = &c->peer;
    struct ws_proxy_status st = p->st;
    size_t n;
    if (cidr_has(allow && *allow ? allow : METRICS_LOOPBACK, a->sa.sa_family,
                 a->sa.sa_family == AF_INET6 ? (const uint8_t *)&a->v6.sin6_addr
                 : (const uint8_t *)&a->v4.sin_addr) != 1) {
        conn_refuse_with(p, c, 403, "metrics: client address not in metrics_allow", NULL, now);
        return;
    }
    conn_refuse_with(p, c, 200, "metrics", NULL, now); /* queues an answer, then lingers */
    if (c->phase != PH_REFUSED)
        return;
    st.state = p->state;
    st.port = p->state == WS_PROXY_RUNNING ? p->lport : 0;
    st.tls = p->state == WS_PROXY_RUNNING && p->cfg->tls;
    st.conns_open--; /* not this scrape */
    if ((n = metrics_write(&st, (char *)c->ob, WS_PROXY_BUF_SIZE)) != 0)
        c->o_len = (uint32_t)n;
    else
        conn_refuse_with(p, c, 503, "metrics: larger than WS_PROXY_BUF_SIZE", NULL, now);
}

/* A complete request head of hlen bytes is in ib. */
static void conn_handshake(ws_proxy *p, struct conn *c, struct http_req *r,
                           size_t hlen, int64_t now)
{
    struct http_answer a;
    const struct cfg *cf = c->cfg;
    if (cf->c.metrics_path && *cf->c.metrics_path && http_plain_get(r, cf->c.metrics_path)) {
        conn_metrics(p, c, now);
        return;
    }
    http_handshake(r, cf->c.allowed_origins, cf->c.subprotocols, &a);
    if (a.status == 200) {
        snprintf(p->health, sizeof p->health, "wsproxy %s running, %llu connections open",
                 WS_PROXY_VERSION, (unsigned long long)p->st.conns_open - 1); /* not this probe */
        a.why = p->health;
    }
    if (a.status == 101 && c->over_limit)
        http_answer(&a, 503, "too many connections");
    if (a.status != 101) {
        conn_refuse(p, c, &a, NULL, now);
        return;
    }
    /* Bytes behind the request head are the first frames. */
    c->i_pos = c->i_out = c->i_wr = (uint32_t)hlen;
    if (!(c->ob = buf_get(p))) {
        conn_end(p, c, now);
        return;
    }
    c->o_pos = 0;
    c->o_len = (uint32_t)http_write_answer(&a, (char *)c->ob, WS_PROXY_BUF_SIZE);
    conn_engine_connect(p, c, now);
    if (c->efd >= 0 && cf->c.conn_fn) {
        int n;
        const struct http_hdr *o = http_find(r, "origin", &n);
        size_t len = o ? o->vlen : 0;
        if (len >= sizeof p->origin)
            len = sizeof p->origin - 1;
        memcpy(p->origin, o ? o->value : "", len);
        p->origin[len] = 0;
        conn_tell(c, WS_PROXY_CONN_OPEN, p->origin);
    }
}

static void conn_http(ws_proxy *p, struct conn *c, int64_t now)
{
    while (tr_readable(c) && c->phase == PH_HTTP) {
        struct http_req r;
        long n, h;
        if (!c->ib && !(c->ib = buf_get(p))) {
            conn_end(p, c, now);
            return;
        }
        n = tr_read(c, c->ib + c->i_len, WS_PROXY_BUF_SIZE - c->i_len);
        if (n == IO_AGAIN) {
            if (!c->i_len)
                buf_put(p, &c->ib);
            return;
        }
        if (n <= 0) { /* the client gave up before asking */
            conn_why(c, n == 0 ? "client closed before its request" : "client connection error");
            conn_end(p, c, now);
            return;
        }
        /* Parse only once a line is complete: a request sent one byte at
         * a time costs one scan per line, not per byte. */
        c->i_len += (uint32_t)n;
        if (!memchr(c->ib + c->i_len - n, '\n', (size_t)n) && c->i_len <= WS_PROXY_MAX_HEADER)
            continue;
        r.h = p->hdrs;
        r.maxh = WS_PROXY_MAX_HEADERS;
        h = http_parse((const char *)c->ib, c->i_len, &r);
        if (h == HTTP_PARTIAL && c->i_len <= WS_PROXY_MAX_HEADER)
            continue;
        if (h == HTTP_BAD)
            conn_refuse_with(p, c, 400, "malformed HTTP request", NULL, now);
        else if (h == HTTP_PARTIAL || h == HTTP_TOO_MANY || h > WS_PROXY_MAX_HEADER)
            conn_refuse_with(p, c, 431, "request header block too large", NULL, now);
        else
            conn_handshake(p, c, &r, (size_t)h, now);
    }
}

/* Decodes the raw client bytes in ib and acts on control frames. */
static void conn_decode(ws_proxy *p, struct conn *c, int64_t now)
{
    while (c->i_pos < c->i_len) {
        size_t pos = c->i_pos, out = c->i_out;
        int rc = frame_decode(&c->dec, c->ib, c->i_len, &pos, &out);
        c->i_pos = (uint32_t)pos;
        c->i_out = (uint32_t)out;
        c->t_rx = now;
        c->t_ping = 0;
        if (c->up == DIR_SHUT)
            c->i_wr = c->i_out; /* after our Close, data is dropped */
        if (rc == FRAME_MORE)
            break;
        if (rc == FRAME_ERROR) {
            if (c->phase == PH_CLOSING) {
                conn_why(c, c->dec.why);
                conn_end(p, c, now);
            } else {
                conn_fail(p, c, c->dec.err, c->dec.why, now);
            }
            return;
        }
        if (c->dec.op == OP_PING && c->phase == PH_OPEN) {
            /* 5.5.3: a Pong with the same payload.  Decoding, and reading,
             * pause until it is composed, so every Ping gets its own. */
            memcpy(c->pong, c->dec.ctl, c->dec.ctl_len);
            c->pong_len = c->dec.ctl_len;
            c->pong_due = 1;
            return;
        } else if (c->dec.op == OP_CLOSE) {
            c->close_rcvd = 1;
            c->i_len = c->i_pos; /* 5.5.1: nothing after a Close counts */
            if (c->phase == PH_CLOSING)
                return; /* conn_downstream ends it once our Close is out */
            c->close_code = c->dec.ctl_len >= 2
                                ? (uint16_t)(c->dec.ctl[0] << 8 | c->dec.ctl[1])
                                : 0;
            conn_why(c, "client closed");
            c->up = DIR_DRAIN;
            conn_end_by(c, now + c->cfg->drain_ms);
            return;
        }
    }
}

/* Does the connection's state take client input now? */
static int conn_reads_client(const struct conn *c)
{
    switch (c->phase) {
    case PH_HTTP:
        return 1;
    case PH_REFUSED:
        return !c->ob && !c->o_len;
    case PH_OPEN:
        return c->up == DIR_FLOW && !c->ib && !c->pong_due;
    case PH_CLOSING:
        return !c->close_rcvd && !c->drop && !c->ib;
    }
    return 0;
}

/* Client -> engine: write pending payload, then read and decode more. */
static int conn_upstream(ws_proxy *p, struct conn *c, int64_t now)
{
    int moved = 0;
    long n;
    if (up_paused(c)) {
        if (c->up == DIR_SHUT || c->efd < 0) {
            c->i_wr = c->i_out;
        } else if (!c->e_wr) {
            return 0;
        } else if ((n = io_send(c->efd, c->ib + c->i_wr, c->i_out - c->i_wr)) > 0) {
            c->i_wr += (uint32_t)n;
            c->bytes_in += (uint64_t)n;
            p->st.bytes_to_engine += (uint64_t)n;
            c->t_data = now;
            moved = 1;
            if (c->i_wr < c->i_out)
                c->e_wr = 0;
        } else if (n == IO_AGAIN) {
            c->e_wr = 0;
            return 0;
        } else {
            /* The engine stopped reading; what it still sends, or its
             * EOF, decides how the connection ends. */
            c->up = DIR_SHUT;
            c->i_wr = c->i_out;
        }
        if (up_paused(c))
            return moved;
    }
    if (c->ib && c->i_pos == c->i_len)
        tr_in_done(p, c);
    if (c->up == DIR_DRAIN && !c->ib) {
        /* Everything the client sent before its Close is out: tell the
         * engine (after a violation the engine is simply closed). */
        if (!c->drop && c->efd >= 0)
            shutdown(c->efd, SHUT_WR);
        c->up = DIR_SHUT;
        return 1;
    }
    if (c->ib) {
        /* Undecoded bytes remain: behind the request, or after a Ping
         * whose Pong is not composed yet. */
        if (c->pong_due || c->close_rcvd || c->drop ||
            (c->phase != PH_OPEN && c->phase != PH_CLOSING))
            return moved;
        conn_decode(p, c, now);
        return 1;
    }
    if (!conn_reads_client(c) || c->phase == PH_REFUSED || !tr_readable(c))
        return moved;
    n = tr_in(p, c);
    if (n == IO_AGAIN)
        return moved;
    if (n <= 0) { /* client TCP gone: free the engine session */
        conn_why(c, n == 0 ? "client disconnected" : "client connection error");
        conn_end(p, c, now);
        return 1;
    }
    conn_decode(p, c, now);
    return 1;
}

/* Composes one control frame; 0 if there is no room yet. */
static int conn_frame(ws_proxy *p, struct conn *c, unsigned op,
                      const uint8_t *payload, size_t len)
{
    size_t h, cap;
    uint8_t *b = tr_out_buf(p, c, &cap);
    if (!b || cap < FRAME_HEADROOM + len) {
        if (b)
            tr_out_cancel(p, c);
        return 0;
    }
    if (len)
        memcpy(b + FRAME_HEADROOM, payload, len);
    h = frame_header(b + FRAME_HEADROOM, op, len);
    tr_out_commit(c, b, FRAME_HEADROOM - h, h + len);
    return 1;
}

static void conn_close_frame(ws_proxy *p, struct conn *c)
{
    uint8_t pl[125];
    size_t n = 0;
    if (c->close_code) {
        pl[0] = (uint8_t)(c->close_code >> 8);
        pl[1] = (uint8_t)c->close_code;
        n = 2;
        /* Our own reasons are short ASCII; an echoed Close carries none. */
        if (c->why && !c->close_rcvd) {
            size_t k = strlen(c->why);
            k = k > 123 ? 123 : k;
            memcpy(pl + 2, c->why, k);
            n += k;
        }
    }
    if (conn_frame(p, c, OP_CLOSE, pl, n))
        c->close_sent = 1;
}

/* Pushes queued output: the HTTP answer in ob, then transport records.
 * Returns 1 if bytes moved, 0 if not, -1 if the client is gone. */
static int conn_flush(ws_proxy *p, struct conn *c)
{
    int moved = 0;
    if (c->ob && c->o_pos < c->o_len && c->phase != PH_CONNECT) {
        long n = tr_write(c, c->ob + c->o_pos, c->o_len - c->o_pos);
        if (n == IO_ERROR)
            return -1;
        if (n > 0) {
            c->o_pos += (uint32_t)n;
            moved = 1;
        }
        if (c->o_pos == c->o_len)
            buf_put(p, &c->ob);
    }
    switch (tr_flush(c)) {
    case -1:
        return -1;
    case 1:
        moved = 1;
    }
    return moved;
}

/* After a failure close (RFC 6455 7.1.7) the client may still be sending:
 * closing with its bytes unread would reset the connection and throw away
 * our Close, still in the kernel behind what the client has not read.  So
 * it lingers as a refusal does: our side shuts once everything is out, and
 * what arrives is discarded until the client closes, for at most
 * WS_PROXY_LINGER_MS. */
static void conn_linger_failed(ws_proxy *p, struct conn *c, int64_t now)
{
    tr_in_done(p, c);
    c->o_pos = c->o_len = 1; /* "answered": see conn_downstream */
    p->nrefusing++;
    c->phase = PH_REFUSED;
    conn_end_by(c, now + WS_PROXY_LINGER_MS);
}

/* Engine -> client: flush, then compose the next frame. */
static int conn_downstream(ws_proxy *p, struct conn *c, int64_t now)
{
    size_t cap, hr, h;
    uint8_t *b;
    long n;
    int moved = conn_flush(p, c);
    if (moved < 0) {
        conn_why(c, "client connection error");
        conn_end(p, c, now);
        return 1;
    }
    if (down_paused(c) || c->phase < PH_OPEN)
        return moved;
    if (c->phase == PH_REFUSED) {
        if (c->o_len && tr_close_notify(c))
            return 1; /* shut down once close_notify is out too */
        if (c->o_len && p->nrefusing > WS_PROXY_REFUSE_SLACK) {
            conn_end(p, c, now); /* too many linger already */
            return 1;
        }
        if (c->o_len) {
            /* Answered: stop sending, read until the client closes, so
             * unread request bytes do not turn our close into a reset. */
            shutdown(c->cfd, SHUT_WR);
            c->o_len = c->o_pos = 0;
            c->c_rd = 1;
        }
        return moved;
    }
    if (c->close_sent) {
        /* Our Close is on the wire: done unless the client's is due. */
        if (c->close_rcvd || c->c_fin)
            conn_end(p, c, now);
        else if (c->drop)
            conn_linger_failed(p, c, now);
        return moved;
    }
    if (c->pong_due) {
        c->pong_due = !conn_frame(p, c, OP_PONG, c->pong, c->pong_len);
        return !c->pong_due;
    }
    if (c->ping_due) {
        c->ping_due = !conn_frame(p, c, OP_PING, NULL, 0);
        return !c->ping_due;
    }
    if (c->phase == PH_CLOSING) {
        conn_close_frame(p, c);
        return c->close_sent;
    }
    if (c->down == DIR_SHUT || !c->e_rd || c->efd < 0 || !(b = tr_out_buf(p, c, &cap)))
        return moved;
    /* Read behind room for the header.  When the space fits a 16-bit
     * length the header takes 4 bytes, or 2 for a payload under 126: then
     * the frame starts 2 bytes in (TLS moves those few bytes down). */
    hr = cap - 4 <= 65535 ? 4 : FRAME_HEADROOM;
    n = io_recv(c->efd, b + hr, cap - hr);
    if (n > 0) {
        h = frame_header(b + hr, OP_BINARY, (uint64_t)n);
        tr_out_commit(c, b, hr - h, h + (size_t)n);
        c->bytes_out += (uint64_t)n;
        p->st.bytes_to_client += (uint64_t)n;
        c->t_data = now;
        if ((size_t)n < cap - hr && !c->e_hup)
            c->e_rd = 0;
        return 1;
    }
    tr_out_cancel(p, c);
    if (n == IO_AGAIN && !c->e_hup) {
        c->e_rd = 0;
        return moved;
    }
    /* The engine is done: after the client's Close its code is echoed. */
    c->e_fin = 1;
    c->down = DIR_SHUT;
    if (!c->close_rcvd && c->cfg->c.going_away && *c->cfg->c.going_away) {
        c->close_code = 1001;
        conn_why(c, "engine going away");
    } else if (!c->close_rcvd) {
        c->close_code = n == 0 ? 1000 : 1011;
        conn_why(c, n == 0 ? "engine closed" : "engine connection error");
    }
    return 1;
}

/* Lingering after an HTTP answer: discard what the client still sends. */
static void conn_linger(ws_proxy *p, struct conn *c, int64_t now)
{
    uint8_t sink[512];
    int budget = WS_PROXY_TURN_BUDGET;
    while (tr_readable(c) && budget--) {
        long n = tr_read(c, sink, sizeof sink);
        if (n == IO_AGAIN)
            return;
        if (n <= 0) {
            conn_end(p, c, now);
            return;
        }
    }
}

static void conn_step(ws_proxy *p, struct conn *c, int64_t now)
{
    int budget = WS_PROXY_TURN_BUDGET;
    c->again = 0;
    /* Before the relay, TLS records move here whatever else is wanted: a
     * first flight larger than the socket buffer goes out on POLLOUT. */
    if (c->phase <= PH_CONNECT && tr_pump(c) < 0) {
        conn_why(c, "client closed the connection");
        conn_end(p, c, now);
        return;
    }
    if (c->phase == PH_TLS && tr_up(c))
        c->phase = PH_HTTP;
    if (c->phase == PH_HTTP)
        conn_http(p, c, now);
    if (c->phase == PH_CONNECT && c->e_wr) {
        int e = 0;
        socklen_t len = sizeof e;
        if (getsockopt(c->efd, SOL_SOCKET, SO_ERROR, &e, &len) || e)
            conn_engine_down(p, c, "connect to", e ? e : errno, now);
        else
            conn_engine_ready(p, c, now);
    }
    if (c->phase == PH_REFUSED && !c->ob && !c->o_len) {
        conn_linger(p, c, now);
        return;
    }
    while (budget-- > 0 && c->phase >= PH_CONNECT && c->phase != PH_DEAD) {
        int moved = conn_upstream(p, c, now);
        if (c->phase == PH_DEAD)
            break;
        if (c->phase == PH_OPEN && c->down == DIR_SHUT && c->up != DIR_DRAIN) {
            conn_close(p, c, c->close_code, NULL, 0, now);
            moved = 1;
        }
        moved |= conn_downstream(p, c, now);
        if (!moved)
            break;
    }
    c->again = budget < 0 && c->phase != PH_DEAD; /* rule 9 */
    /* Progress, for the timers (rule 5). */
    if (c->took || !conn_out_queued(c))
        c->t_moved = now;
    c->took = 0;
    /* Rule 4: a closed TLS session can carry nothing more either way. */
    if (c->phase != PH_DEAD && c->phase != PH_TLS && tr_pump(c) < 0) {
        conn_why(c, "client closed the connection");
        conn_end(p, c, now);
    }
}

static int64_t earlier(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

static int64_t later(int64_t a, int64_t b)
{
    return a > b ? a : b;
}

/* The FIN grace (rule 4): from the FIN or from opening, whichever is
 * later, so the bytes before a FIN seen during the handshake get it too. */
static int64_t conn_fin_deadline(const struct conn *c)
{
    return later(c->t_fin, c->t_open) + WS_PROXY_FIN_GRACE_MS;
}

/* Looks at the client's progress: did it take bytes since the last look
 * (its TCP acknowledged them: what we wrote minus what the kernel still
 * holds)?  Where the kernel cannot tell, output that moved at all counts.
 * Also notes when nothing of ours waits for it (t_clear).  Called when a
 * Ping goes out and when a deadline that depends on progress is reached
 * (rule 10); 1 if it took bytes. */
static int conn_look(struct conn *c, int64_t now)
{
    int moved = c->t_moved > c->t_look, clear = !conn_out_queued(c);
#if defined(__linux__) && defined(TIOCOUTQ)
    int q; /* SIOCOUTQ: bytes sent but not acknowledged, or not sent */
    if (ioctl(c->cfd, TIOCOUTQ, &q) == 0 && q >= 0) {
        uint64_t acked = c->wire_out - (uint64_t)q;
        moved = acked > c->acked;
        clear &= !q;
        c->acked = acked;
    }
#endif
    c->t_look = now;
    if (moved)
        c->t_acked = now;
    if (clear)
        c->t_clear = now;
    return moved;
}

/* A Ping goes to a client silent for ping_interval_ms; with one out, the
 * connection ends when neither an answer nor progress came for as long:
 * the Ping may wait behind megabytes the client is still reading. */
static int64_t conn_ping_deadline(const struct conn *c)
{
    return c->t_ping ? later(c->t_ping, c->t_acked) + c->cfg->c.ping_interval_ms
                     : c->t_rx + c->cfg->c.ping_interval_ms;
}

/* The client took none of our bytes for send_ms (rule 10); it is looked at
 * every quarter of that, so the bound holds within a quarter. */
static int64_t conn_send_deadline(const struct conn *c)
{
    return earlier(later(c->t_acked, c->t_clear) + c->cfg->send_ms,
                   c->t_look + c->cfg->send_ms / 4);
}

/* The engine ended and its last bytes wait for a client that takes none
 * of them: released drain_ms after the last progress. */
static int64_t conn_drain_deadline(const struct conn *c)
{
    return later(c->t_moved, c->t_acked) + c->cfg->drain_ms;
}

/* The earliest time this connection's timers need the loop, derived from
 * its state (rule 5). */
static int64_t conn_deadline(const struct conn *c)
{
    const struct cfg *cf = c->cfg;
    int64_t t = INT64_MAX;
    switch (c->phase) {
    case PH_TLS:
    case PH_HTTP:
        return c->t_start + cf->handshake_ms;
    case PH_CONNECT:
        t = c->t_start + cf->handshake_ms;
        return c->efd < 0 ? earlier(t, conn_retry_time(c)) : t;
    case PH_OPEN:
        if (c->t_end)
            t = c->t_end;
        if (c->c_fin && !c->close_rcvd)
            t = earlier(t, conn_fin_deadline(c));
        if (c->down == DIR_DRAIN)
            t = earlier(t, conn_drain_deadline(c));
        t = earlier(t, conn_send_deadline(c));
        if (c->close_rcvd || c->drop)
            return t; /* drain only */
        if (cf->c.ping_interval_ms && !up_paused(c))
            t = earlier(t, conn_ping_deadline(c));
        if (cf->c.idle_timeout_ms)
            t = earlier(t, c->t_data + cf->c.idle_timeout_ms);
        return t;
    case PH_CLOSING:
    case PH_REFUSED:
        return c->t_end;
    }
    return t;
}

/* The timers of an OPEN connection, most final first. */
static void conn_open_timers(ws_proxy *p, struct conn *c, int64_t now)
{
    const struct cfg *cf = c->cfg;
    if (c->c_fin && !c->close_rcvd && now >= conn_fin_deadline(c)) {
        conn_why(c, "client disconnected");
        conn_end(p, c, now);
        return;
    }
    if (c->t_end && now >= c->t_end) {
        if (c->close_rcvd)
            c->why = "client closed, engine drain timed out";
        conn_close(p, c, c->close_code, NULL, c->drop, now);
        return;
    }
    if (c->down == DIR_DRAIN && now >= conn_drain_deadline(c) && !conn_look(c, now)) {
        conn_why(c, "engine closed, client not reading");
        conn_end(p, c, now);
        return;
    }
    if (now >= conn_send_deadline(c) && !conn_look(c, now) &&
        now >= later(c->t_acked, c->t_clear) + cf->send_ms) {
        snprintf(p->why, sizeof p->why, "client stopped reading: took none of our bytes "
                 "for %lld s", (long long)(now - later(c->t_acked, c->t_clear)) / 1000);
        plog(p, WS_PROXY_LOG_INFO, c, "%s", p->why);
        conn_why(c, "client stopped reading");
        conn_end(p, c, now);
        return;
    }
    if (c->close_rcvd || c->drop)
        return; /* rule 5: only the drain runs */
    if (cf->c.idle_timeout_ms && now >= c->t_data + cf->c.idle_timeout_ms) {
        conn_close(p, c, 1001, "idle timeout", 0, now);
    } else if (!cf->c.ping_interval_ms || up_paused(c) || now < conn_ping_deadline(c)) {
        return;
    } else if (!c->t_ping) {
        c->ping_due = 1;
        c->t_ping = now;
        conn_look(c, now); /* what the client has taken so far */
    } else if (!conn_look(c, now)) {
        conn_close(p, c, 1001, "no answer to ping", 1, now);
    }
}

static void conn_timers(ws_proxy *p, struct conn *c, int64_t now)
{
    if (c->phase == PH_OPEN && up_paused(c)) {
        c->t_rx = now; /* rule 8: its frames wait behind ours */
        c->t_ping = 0;
    }
    if (now < conn_deadline(c))
        return;
    switch (c->phase) {
    case PH_TLS:
        conn_why(c, "handshake timeout");
        conn_end(p, c, now);
        break;
    case PH_HTTP:
        conn_refuse_with(p, c, 408, "handshake timeout", NULL, now);
        break;
    case PH_CONNECT:
        if (now < c->t_start + c->cfg->handshake_ms)
            conn_engine_connect(p, c, now); /* a retry is due */
        else if (c->efd < 0)
            conn_engine_down(p, c, "connect to", EAGAIN, now);
        else
            conn_refuse_with(p, c, 502, "engine unavailable",
                             "engine unavailable: connect timed out", now);
        break;
    case PH_OPEN:
        conn_open_timers(p, c, now);
        break;
    default:
        conn_end(p, c, now);
    }
}

/* ==== The loop ===========================================================
 *
 * Each turn: derive every socket's poll interest from its connection's
 * state, sleep in poll() until I/O, a command or the earliest timer, then
 * run commands, accept, and step every connection.  A socket with no
 * interest is left out of the poll set.  Dead connections are freed at the
 * end of the turn.
 */

static void cfg_unref(struct cfg *cf);

#ifdef POLLRDHUP
#define POLL_FIN POLLRDHUP /* Linux: the peer's FIN, whatever else is asked */
#else
#define POLL_FIN 0
#endif

static int conn_client_events(const struct conn *c)
{
    short ev = conn_reads_client(c) ? POLLIN : 0;
    if (c->ob && c->o_pos < c->o_len && c->phase != PH_CONNECT)
        ev |= POLLOUT;
    ev = tr_events(c, ev);
    return c->c_fin ? ev : ev | POLL_FIN;
}

/* -1: not polled (rule 3). */
static int conn_engine_events(const struct conn *c)
{
    short ev = 0;
    if (c->efd < 0 || c->e_hup)
        return -1;
    if (c->phase == PH_CONNECT)
        return POLLOUT;
    if (up_paused(c) && c->up != DIR_SHUT)
        ev |= POLLOUT;
    /* Engine bytes are read only into free output space: a client that
     * does not drain stops the engine side (backpressure). */
    if (c->phase == PH_OPEN && c->down != DIR_SHUT && !down_paused(c))
        ev |= POLLIN;
    return c->e_fin ? ev : ev | POLL_FIN;
}

/* What poll said of the client socket. */
static void conn_client_revents(ws_proxy *p, struct conn *c, short ev, int64_t now)
{
    if (ev & (POLLERR | POLLHUP | POLLNVAL)) { /* rule 4 */
        int e = 0;
        socklen_t len = sizeof e;
        if (ev & POLLERR)
            getsockopt(c->cfd, SOL_SOCKET, SO_ERROR, &e, &len);
        /* Say what happened: a reset is not a timeout (TCP keepalive). */
        conn_why(c, e == ETIMEDOUT ? "client vanished: TCP keepalive unanswered"
                    : ev & POLLERR ? "client connection reset" : "client disconnected");
        conn_end(p, c, now);
        return;
    }
    if (ev & POLLIN)
        c->c_rd = 1;
    if (ev & POLLOUT)
        c->c_wr = 1;
    if ((ev & POLL_FIN) && !c->c_fin) {
        /* The grace is derived (rule 4), also for a FIN that arrives while
         * the engine connect is in progress: the request and the bytes
         * behind it are still relayed once the connection opens. */
        c->c_fin = c->c_rd = 1;
        c->t_fin = now;
    }
}

/* What poll said of the engine socket (rules 3 and 5). */
static void conn_engine_revents(struct conn *c, short ev)
{
    if (ev & (POLLIN | POLLERR | POLLHUP))
        c->e_rd = 1;
    if (ev & (POLLOUT | POLLERR | POLLHUP))
        c->e_wr = 1;
    if (ev & (POLLERR | POLLHUP | POLLNVAL))
        c->e_hup = c->e_rd = c->e_wr = 1;
    if (ev & (POLL_FIN | POLLERR | POLLHUP)) {
        c->e_fin = 1;
        if (c->phase == PH_OPEN && c->down == DIR_FLOW)
            c->down = DIR_DRAIN; /* its deadline counts from progress */
    }
}

/* Best effort on the way out: finish the frame in flight, send a Close. */
static void conn_goodbye(ws_proxy *p, struct conn *c, uint16_t code, int64_t now)
{
    if (c->phase == PH_OPEN || c->phase == PH_CLOSING) {
        c->c_wr = 1;
        if (conn_flush(p, c) >= 0 && !conn_out_queued(c) && !c->close_sent) {
            c->close_code = code;
            c->why = code == 1001 ? "proxy stopping" : "proxy failed";
            conn_close_frame(p, c);
            conn_flush(p, c);
        }
    }
    conn_end(p, c, now);
}

static void conn_free(struct conn *c)
{
    cfg_unref(c->cfg);
    free(c);
}

/* Frees the connections torn down this turn.  After a turn that stepped
 * only the hot ones, only those can have died: the hot range is compacted
 * and the gap filled from the end of the cold range, so a hot turn never
 * walks the cold connections. */
static void loop_reap(ws_proxy *p, int full)
{
    size_t i, j, h = 0, k, ncold = p->nconns - p->nhot;
    if (!p->ndead)
        return;
    if (!full) {
        for (i = j = 0; i < p->nhot; i++) {
            if (p->conns[i]->phase == PH_DEAD)
                conn_free(p->conns[i]);
            else
                p->conns[j++] = p->conns[i];
        }
        k = p->nhot - j; /* freed slots in [j, nhot) */
        memmove(p->conns + j, p->conns + p->nconns - (ncold < k ? ncold : k),
                (ncold < k ? ncold : k) * sizeof *p->conns);
        p->nconns -= k;
        p->nhot = j;
        p->ndead -= k;
        if (!p->ndead)
            return;
    }
    for (i = j = 0; i < p->nconns; i++) {
        struct conn *c = p->conns[i];
        if (c->phase == PH_DEAD) {
            conn_free(c);
        } else {
            h += i < p->nhot;
            p->conns[j++] = c;
        }
    }
    p->nconns = j;
    p->nhot = h;
    p->ndead = 0;
}

static void loop_close_all(ws_proxy *p, uint16_t code)
{
    int64_t now = mono_ms();
    size_t i;
    for (i = 0; i < p->nconns; i++)
        conn_goodbye(p, p->conns[i], code, now);
}

/* A fatal error: log it, close everything, and stay FAILED until
 * ws_proxy_restart(); the proxy never restarts itself. */
static void loop_fail(ws_proxy *p, const char *what)
{
    char eb[128];
    snprintf(p->reason, sizeof p->reason, "%s: %s", what, sys_err(errno, eb, sizeof eb));
    plog(p, WS_PROXY_LOG_ERROR, NULL, "failed: %s; closing every connection",
         p->reason);
    loop_close_all(p, 1011);
    loop_reap(p, 1);
    if (p->lfd >= 0)
        close(p->lfd);
    p->lfd = -1;
    p->state = WS_PROXY_FAILED;
}

static void loop_accept(ws_proxy *p, int64_t now)
{
    int budget = WS_PROXY_ACCEPT_BUDGET;
    while (budget-- > 0 && p->lfd >= 0) {
        union conn_addr a;
        socklen_t len = sizeof a;
        struct conn *c;
        char ip[INET6_ADDRSTRLEN], eb[128];
        uint32_t per_ip;
        int fd;
#ifdef HAVE_ACCEPT4
        fd = accept4(p->lfd, &a.sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
#else
        fd = accept(p->lfd, &a.sa, &len);
        if (fd >= 0)
            fd_nonblock(fd);
#endif
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Out of descriptors: back off instead of spinning, and say
                 * so once every 10 s, not at every retry. */
                if (!p->accept_warned_at || now - p->accept_warned_at >= 10000) {
                    plog(p, WS_PROXY_LOG_WARN, NULL,
                         "accept: %s; new connections wait (retrying every 100 ms)",
                         sys_err(errno, eb, sizeof eb));
                    p->accept_warned_at = now;
                }
                p->accept_pause_until = now + 100;
                return;
            }
            /* Only a broken listener is fatal.  Everything else concerns
             * one connection and is skipped: EINTR, ECONNABORTED, EPROTO,
             * and on Linux a new connection's pending network error
             * (ENETDOWN, EHOSTUNREACH, ENONET, ...) or EPERM from a
             * firewall. */
            if (errno == EBADF || errno == ENOTSOCK || errno == EINVAL || errno == EFAULT) {
                loop_fail(p, "accept");
                return;
            }
            plog(p, WS_PROXY_LOG_DEBUG, NULL, "accept: %s (skipped)",
                 sys_err(errno, eb, sizeof eb));
            continue;
        }
        if (p->nconns == p->capconns) {
            size_t cap = p->capconns ? p->capconns * 2 : 64;
            struct conn **nc = realloc(p->conns, cap * sizeof *nc);
            if (!nc) {
                close(fd);
                continue;
            }
            p->conns = nc;
            p->capconns = cap;
        }
        if (!(c = calloc(1, sizeof *c))) {
            close(fd);
            continue;
        }
#ifndef __linux__ /* Linux: inherited from the listener (listen_open) */
        {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            sock_keepalive(fd);
        }
#endif
        addr_unmap(&a);
        c->cfd = fd;
        c->efd = -1;
        c->peer = a;
        c->cfg = p->cfg;
        p->cfg->refs++;
        c->id = ++p->next_id;
        c->t_start = c->t_io = now;
        c->c_rd = c->c_wr = 1; /* the request is likely there already */
        c->pi_c = c->pi_e = -1;
        c->dec.max_msg = c->cfg->c.max_message;
#ifndef WS_PROXY_NO_TLS
        if (c->cfg->tls && !(c->tls = tls_conn_new(c->cfg->creds))) {
            close(fd);
            cfg_unref(c->cfg);
            free(c);
            p->st.tls_failures++;
            continue;
        }
#endif
        c->over_limit = p->st.conns_open - p->nrefusing >= c->cfg->max_conns;
        c->phase = c->tls ? PH_TLS : PH_HTTP;
        snprintf(c->name, sizeof c->name,
                 a.sa.sa_family == AF_INET6 ? "conn %llu [%s]:%d" : "conn %llu %s:%d",
                 (unsigned long long)c->id, addr_ip(&a, ip, sizeof ip), addr_port(&a));
        p->conns[p->nconns++] = c; /* then to the end of the hot ones */
        p->conns[p->nconns - 1] = p->conns[p->nhot];
        p->conns[p->nhot++] = c;
        p->st.conns_open++;
        p->st.conns_total++;
        /* Counted from accept, so unfinished handshakes from one address
         * cannot fill max_connections; the excess is refused at once
         * (over TLS, which cannot answer before its handshake, by closing). */
        per_ip = ip_count(p, &a, 1);
        c->ip_counted = per_ip != UINT32_MAX;
        if (c->cfg->c.max_connections_per_ip && per_ip > c->cfg->c.max_connections_per_ip) {
            if (!c->tls) {
                conn_refuse_with(p, c, 503, "too many connections from this address", NULL, now);
                continue;
            }
            tr_free(c);
            c->status = 503;
            p->st.refused[WS_PROXY_REFUSED_503]++;
            plog(p, WS_PROXY_LOG_INFO, c, "refused 503: too many connections from this address");
            conn_end(p, c, now);
        }
    }
}

static void log_config(ws_proxy *p, const char *verb)
{
    const struct cfg *cf = p->cfg;
    static const char *const pp[] = {"v2", "v1", "off"};
    char ip[INET6_ADDRSTRLEN];
    if (p->lfd >= 0)
        plog(p, WS_PROXY_LOG_INFO, NULL,
             "%s: listening on %s://%s%s%s:%d -> %s:%s; max_connections=%u "
             "max_connections_per_ip=%u max_message=%llu handshake_timeout_ms=%u "
             "idle_timeout_ms=%u ping_interval_ms=%u drain_timeout_ms=%u send_timeout_ms=%u "
             "proxy_protocol=%s allowed_origins=%s subprotocols=%s metrics_path=%s%s%s",
             verb, cf->tls ? "wss" : "ws", p->laddr.sa.sa_family == AF_INET6 ? "[" : "",
             addr_ip(&p->laddr, ip, sizeof ip), p->laddr.sa.sa_family == AF_INET6 ? "]" : "",
             p->lport, cf->engine.sa.sa_family == AF_UNIX ? "unix" : "tcp",
             cf->c.socket_path, cf->max_conns, cf->c.max_connections_per_ip,
             (unsigned long long)cf->c.max_message, cf->handshake_ms,
             cf->c.idle_timeout_ms, cf->c.ping_interval_ms, cf->drain_ms, cf->send_ms,
             pp[cf->c.proxy_protocol],
             cf->c.allowed_origins && *cf->c.allowed_origins ? cf->c.allowed_origins : "(any)",
             cf->c.subprotocols ? cf->c.subprotocols : "(none)",
             cf->c.metrics_path && *cf->c.metrics_path ? cf->c.metrics_path : "(off)",
             cf->c.metrics_path && *cf->c.metrics_path ? " metrics_allow=" : "",
             !cf->c.metrics_path || !*cf->c.metrics_path ? ""
             : cf->c.metrics_allow && *cf->c.metrics_allow ? cf->c.metrics_allow
             : METRICS_LOOPBACK);
    else
        plog(p, WS_PROXY_LOG_INFO, NULL, "%s: no port configured, not listening", verb);
#ifndef WS_PROXY_NO_TLS
    if (cf->creds) {
        plog(p, WS_PROXY_LOG_INFO, NULL, "%s", cf->creds->info);
        if (cf->creds->days_left < 30)
            plog(p, WS_PROXY_LOG_WARN, NULL, "the certificate %s in %ld days",
                 cf->creds->days_left < 0 ? "expired" : "expires",
                 cf->creds->days_left < 0 ? -cf->creds->days_left : cf->creds->days_left);
    }
#endif
    if (cf->c.proxy_protocol == WS_PROXY_PP_OFF)
        plog(p, WS_PROXY_LOG_WARN, NULL,
             "proxy_protocol is off: the engine sees every client as this "
             "process's user; an engine that trusts Unix-socket peers by uid "
             "(e.g. MariaDB unix_socket auth) will let network clients in as that user");
}

static int loop_restart(ws_proxy *p, struct cfg *cf, char *err, size_t errlen)
{
    union conn_addr want, bound;
    int lfd = -1, log_fd, rc, keep = 0;
    if (cf->port && p->lfd >= 0 && cf->port != WS_PROXY_PORT_ANY &&
        cf->port == p->lport &&
        !addr_parse(cf->c.bind_address, cf->port, &want) &&
        addr_same_ip(&want, &p->laddr))
        keep = 1;
    if ((rc = log_open(cf, &log_fd, err, errlen)) != 0)
        return rc;
    if (cf->port && !keep &&
        (rc = listen_open(cf->c.bind_address, cf->port, &lfd, &bound, err, errlen)) != 0) {
        if (log_fd >= 0)
            close(log_fd);
        return rc;
    }
    /* Nothing can fail from here: commit.  The new port is already bound,
     * so closing the old one leaves no moment without a listener. */
    if (!keep) {
        if (p->lfd >= 0)
            close(p->lfd);
        p->lfd = lfd;
        if (lfd >= 0) {
            p->laddr = bound;
            p->lport = addr_port(&bound);
        }
    }
    if (p->log_fd >= 0)
        close(p->log_fd);
    p->log_fd = log_fd;
    cfg_unref(p->cfg);
    p->cfg = cf;
    p->state = p->lfd >= 0 ? WS_PROXY_RUNNING : WS_PROXY_STOPPED;
    p->reason[0] = 0;
    p->accept_pause_until = 0;
    log_config(p, "restarted");
    return 0;
}

static int loop_reopen_log(ws_proxy *p, char *err, size_t errlen)
{
    int fd, rc = log_open(p->cfg, &fd, err, errlen);
    if (rc)
        return rc;
    if (p->log_fd >= 0)
        close(p->log_fd);
    p->log_fd = fd;
    plog(p, WS_PROXY_LOG_INFO, NULL, "log reopened");
    return 0;
}

/* Runs the command in the mailbox; returns 1 if there was one. */
static int loop_command(ws_proxy *p)
{
    char drain[64];
    int had;
    while (read(p->wake_rd, drain, sizeof drain) > 0) {
    }
    pthread_mutex_lock(&p->mu);
    had = p->cmd != CMD_NONE && !p->cmd_done;
    if (had) {
        switch (p->cmd) {
        case CMD_RESTART:
            p->cmd_rc = loop_restart(p, p->cmd_arg, p->cmd_err, p->cmd_errlen);
            break;
        case CMD_STATUS: {
            struct ws_proxy_status *st = p->cmd_arg;
            *st = p->st;
            st->state = p->state;
            st->port = p->state == WS_PROXY_RUNNING ? p->lport : 0;
            st->tls = p->state == WS_PROXY_RUNNING && p->cfg->tls;
            snprintf(st->reason, sizeof st->reason, "%s", p->reason);
            p->cmd_rc = 0;
            break;
        }
        case CMD_STOP:
            p->quit = 1;
            p->cmd_rc = 0;
            break;
        case CMD_REOPEN:
            p->cmd_rc = loop_reopen_log(p, p->cmd_err, p->cmd_errlen);
            break;
        }
        p->cmd_done = 1;
        pthread_cond_broadcast(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    return had;
}

static int loop_grow_pfd(ws_proxy *p, size_t need)
{
    struct pollfd *n;
    size_t cap = p->cappfd ? p->cappfd : 64;
    if (need <= p->cappfd)
        return 0;
    while (cap < need)
        cap *= 2;
    if (!(n = realloc(p->pfd, cap * sizeof *n)))
        return -1;
    p->pfd = n;
    p->cappfd = cap;
    return 0;
}

/* Adds fd to the poll set, even with no interest (events 0 still reports
 * POLLERR and POLLHUP); ev < 0 leaves it out.  Returns its index or -1.
 * Only open sockets are listed, so the set never holds more entries than
 * open descriptors (poll() refuses more than RLIMIT_NOFILE). */
static int loop_add(ws_proxy *p, size_t *n, int fd, int ev)
{
    if (ev < 0 || fd < 0)
        return -1;
    p->pfd[*n].fd = fd;
    p->pfd[*n].events = (short)ev;
    p->pfd[*n].revents = 0;
    return (int)(*n)++;
}

/* Hot and cold connections.
 *
 * poll() visits every socket it is given, and 16,000 idle sockets (8,000
 * WebSockets) cost 0.5-2.5 ms a visit here, mostly cache misses in the
 * kernel's socket structures; walking 8,000 connections of our own adds
 * more.  So conns[0, nhot) are the connections with poll
 * events in the last WS_PROXY_HOT_MS (and any not yet OPEN), and while
 * there are some, a turn polls and steps only those.  A full turn takes
 * all connections, runs their timers and sorts the hot ones to the front
 * again (loop_sort).  It comes every WS_PROXY_COLD_MS where there is no
 * doorbell; with one (Linux, see loop_bell), when the doorbell rings, when
 * a cold connection's timer is due, and at least every WS_PROXY_HOT_MS.
 * Either way at most every four times its CPU cost, so busy connections
 * keep four fifths of the loop.  A cold connection that wakes up thus
 * waits at most WS_PROXY_COLD_MS or that long, and only while others are
 * busy; with none hot, every turn is a full one.  A new connection is hot. */
static int conn_hot(const struct conn *c, int64_t now)
{
    return c->phase != PH_OPEN || c->again || now - c->t_io < WS_PROXY_HOT_MS;
}

/* The doorbell (Linux).  Between full turns the cold sockets are not in
 * poll()'s set: an epoll set holds them, each with the interest its
 * connection's state gave at the last full turn (a cold connection is not
 * stepped, so that state stands), and its one descriptor is polled
 * instead.  When it rings, a cold connection has something, and a full
 * turn comes as soon as the spacing allows; while it is quiet, full turns
 * come only for the cold connections' timers and to sort, at least every
 * WS_PROXY_HOT_MS.  So a quiet cold set costs a turn nothing.  Where epoll
 * is missing or fails, full turns come every WS_PROXY_COLD_MS. */
#ifdef HAVE_BELL
static void bell_set(ws_proxy *p, int fd, int ev, int *reg)
{
    struct epoll_event e;
    int want = fd >= 0 && ev >= 0 ? ev + 1 : 0;
    if (want == *reg || p->bell_fd < 0)
        return;
    memset(&e, 0, sizeof e);
    e.events = (ev & POLLIN ? EPOLLIN : 0) | (ev & POLLOUT ? EPOLLOUT : 0) |
               (ev & POLL_FIN ? EPOLLRDHUP : 0);
    if (epoll_ctl(p->bell_fd, !*reg ? EPOLL_CTL_ADD : want ? EPOLL_CTL_MOD : EPOLL_CTL_DEL,
                  fd, &e) && want) {
        close(p->bell_fd); /* for good: the registrations are unknown now */
        p->bell_fd = -2;
        return;
    }
    *reg = want; /* a DEL fails only for a socket closed, so gone from the set */
}
#endif

/* Puts the cold connection c's sockets in the doorbell's set, or a hot
 * one's out of it. */
static void loop_bell(ws_proxy *p, struct conn *c, int hot)
{
#ifdef HAVE_BELL
    bell_set(p, c->cfd, hot ? -1 : conn_client_events(c), &c->bell_c);
    bell_set(p, c->efd, hot ? -1 : conn_engine_events(c), &c->bell_e);
#else
    (void)p;
    (void)c;
    (void)hot;
#endif
}

/* After a full turn that began with CPU time cpu0 (-1: not measured):
 * sorts the hot connections to the front, fills the doorbell's set, and
 * says when the next full turn is due. */
static void loop_sort(ws_proxy *p, int64_t now, int64_t cpu0)
{
    size_t i, h = 0;
    int64_t gap = 0, next = now + WS_PROXY_HOT_MS;
    for (i = 0; i < p->nconns; i++) {
        struct conn *c = p->conns[i];
        int hot = conn_hot(c, now);
        if (hot) {
            p->conns[i] = p->conns[h];
            p->conns[h++] = c;
        } else {
            next = earlier(next, conn_deadline(c));
        }
        loop_bell(p, c, hot);
    }
    p->nhot = h;
    if (cpu0 >= 0)
        gap = (thread_cpu_us() - cpu0) * 4 / 1000;
    p->bell_rang = 0;
    p->bell_due = now + (gap > WS_PROXY_COLD_MS ? gap : WS_PROXY_COLD_MS);
    p->cold_due = p->bell_fd >= 0 ? later(p->bell_due, next) : p->bell_due;
}

/* A poll() that may sleep hooks a wait-queue entry onto every socket and
 * unhooks it again, several times the cost of a plain scan (8 ms against
 * 1.3-2.4 ms for 9,000 sockets here).  After a turn with events the next
 * one usually has some too, so a large full set is scanned first, and
 * slept on only if nothing is ready. */
static int loop_poll(ws_proxy *p, size_t n, int timeout, int full)
{
    int rc = 0;
    if (!full) {
        int64_t left = p->cold_due - mono_ms();
        left = left > 0 ? left : 0;
        return poll(p->pfd, (nfds_t)n, timeout >= 0 && timeout < left ? timeout : (int)left);
    }
    if (p->busy && timeout != 0 && n >= WS_PROXY_SCAN_FIRST)
        rc = poll(p->pfd, (nfds_t)n, 0);
    if (rc == 0)
        rc = poll(p->pfd, (nfds_t)n, timeout);
    p->busy = rc > 0;
    return rc;
}

static void loop_turn(ws_proxy *p)
{
    size_t i, n = 0;
    int64_t now = mono_ms(), next = INT64_MAX;
    long lidx = -1, bidx = -1;
    int rc, timeout, full = now >= p->cold_due || !p->nhot || p->nhot == p->nconns;
    /* Full turns are spaced by their cost only when there are both kinds;
     * the CPU clock is a system call, not worth a turn otherwise. */
    int64_t cpu0 = full && p->nhot && p->nhot < p->nconns ? thread_cpu_us() : -1;
    if (loop_grow_pfd(p, 3 + 2 * p->nconns)) {
        errno = ENOMEM;
        loop_fail(p, "poll set");
        return;
    }
    loop_add(p, &n, p->wake_rd, POLLIN);
    if (!full && p->bell_fd >= 0 && !p->bell_rang)
        bidx = loop_add(p, &n, p->bell_fd, POLLIN);
    if (p->lfd >= 0 &&
        p->st.conns_open - p->nrefusing < (uint64_t)p->cfg->max_conns + WS_PROXY_REFUSE_SLACK) {
        if (now >= p->accept_pause_until)
            lidx = loop_add(p, &n, p->lfd, POLLIN);
        else
            next = p->accept_pause_until;
    }
    for (i = 0; i < (full ? p->nconns : p->nhot); i++) {
        struct conn *c = p->conns[i];
        int64_t d = conn_deadline(c);
        c->pi_c = loop_add(p, &n, c->cfd, conn_client_events(c));
        c->pi_e = loop_add(p, &n, c->efd, conn_engine_events(c));
        if (c->again || (tr_buffered(c) && conn_reads_client(c)))
            d = now; /* work or decrypted bytes wait: do not sleep (rule 9) */
        next = d < next ? d : next;
    }
    timeout = next == INT64_MAX ? -1 : next <= now ? 0 : next - now > 86400000 ? 86400000 : (int)(next - now);
    rc = loop_poll(p, n, timeout, full);
    if (rc < 0) {
        if (errno != EINTR)
            loop_fail(p, "poll");
        return;
    }
    now = mono_ms();
    if (p->pfd[0].revents && loop_command(p))
        lidx = -1; /* the listener may have changed under lidx */
    if (p->quit)
        return;
    if (bidx >= 0 && p->pfd[bidx].revents) {
        p->bell_rang = 1; /* a full turn, once the spacing allows */
        p->cold_due = p->bell_due;
    }
    if (lidx >= 0 && p->pfd[lidx].revents) {
        if (p->pfd[lidx].revents & (POLLERR | POLLNVAL)) {
            errno = EBADF;
            loop_fail(p, "listening socket");
        } else {
            loop_accept(p, now);
        }
    }
    /* The bound is read each time: loop_accept put new connections at the
     * end of the hot ones. */
    for (i = 0; i < (full ? p->nconns : p->nhot); i++) {
        struct conn *c = p->conns[i];
        short rc_ev = c->pi_c >= 0 ? p->pfd[c->pi_c].revents : 0;
        short re_ev = c->pi_e >= 0 ? p->pfd[c->pi_e].revents : 0;
        if (c->phase == PH_DEAD)
            continue;
        if (rc_ev | re_ev)
            c->t_io = now;
        if (re_ev)
            conn_engine_revents(c, re_ev);
        if (rc_ev)
            conn_client_revents(p, c, rc_ev, now);
        if (c->phase != PH_DEAD)
            conn_timers(p, c, now);
        if (c->phase != PH_DEAD)
            conn_step(p, c, now);
    }
    loop_reap(p, full);
    if (full)
        loop_sort(p, now, cpu0);
}

static void *loop_main(void *arg)
{
    ws_proxy *p = arg;
    sigset_t all;
    /* Signals are the host's business, never this thread's. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    while (!p->quit)
        loop_turn(p);
    log_config(p, "stopping");
    loop_close_all(p, 1001);
    plog(p, WS_PROXY_LOG_INFO, NULL, "stopped after %llu connections",
         (unsigned long long)p->st.conns_total);
    return NULL;
}

/* ==== Public API ========================================================= */

static void cfg_unref(struct cfg *cf)
{
    if (cf && --cf->refs == 0) {
#ifndef WS_PROXY_NO_TLS
        tls_creds_free(cf->creds);
#endif
        free(cf);
    }
}

static size_t cfg_strlen(const char *s)
{
    return s ? strlen(s) + 1 : 0;
}

static const char *cfg_strcpy(char **dst, const char *s)
{
    char *d = *dst;
    size_t n = cfg_strlen(s);
    if (!s)
        return NULL;
    memcpy(d, s, n);
    *dst += n;
    return d;
}

/* Validates *in and copies it into a new struct cfg. */
static int cfg_new(const struct ws_proxy_config *in, struct cfg **out,
                   char *err, size_t errlen)
{
    union conn_addr a;
    union engine_addr engine;
    socklen_t engine_len = 0;
    struct cfg *cf;
    char *t;
    size_t len;
    int port;
    *out = NULL;
    if (!in)
        return err_set(err, errlen, WS_PROXY_EINVAL, "no configuration given");
    if (in->http_port && in->https_port)
        return err_set(err, errlen, WS_PROXY_EINVAL,
                       "http_port and https_port are mutually exclusive");
    port = in->http_port ? in->http_port : in->https_port;
    if (port != WS_PROXY_PORT_ANY && (port < 0 || port > 65535))
        return err_set(err, errlen, WS_PROXY_EINVAL,
                       "%s %d is out of range (1-65535)",
                       in->http_port ? "http_port" : "https_port", port);
    if (in->https_port && (!in->cert_file || !*in->cert_file || !in->key_file || !*in->key_file))
        return err_set(err, errlen, WS_PROXY_EINVAL,
                       "https_port requires SSL: set cert_file and key_file");
    if (!in->socket_path || !*in->socket_path)
        return err_set(err, errlen, WS_PROXY_EINVAL, "socket_path is not set");
    if (strlen(in->socket_path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return err_set(err, errlen, WS_PROXY_EINVAL,
                       "socket_path is longer than %u bytes",
                       (unsigned)sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
    if (engine_parse(in->socket_path, &engine, &engine_len))
        return err_set(err, errlen, WS_PROXY_EINVAL,
                       "socket_path: neither a Unix socket path (starting with / or .) "
                       "nor a numeric IPv4:PORT or [IPv6]:PORT: %s", in->socket_path);
    if (in->bind_address && addr_parse(in->bind_address, 0, &a))
        return err_set(err, errlen, WS_PROXY_EINVAL,
                       "bind_address: not a numeric IPv4 or IPv6 address: %s",
                       in->bind_address);
    if (in->max_connections > WS_PROXY_MAX_CONNECTIONS_LIMIT)
        return err_set(err, errlen, WS_PROXY_EINVAL, "max_connections over %u",
                       WS_PROXY_MAX_CONNECTIONS_LIMIT);
    if (in->proxy_protocol < 0 || in->proxy_protocol > WS_PROXY_PP_OFF)
        return err_set(err, errlen, WS_PROXY_EINVAL,
                       "proxy_protocol must be v2, v1 or off");
    if (in->log_level < 0 || in->log_level > WS_PROXY_LOG_DEBUG)
        return err_set(err, errlen, WS_PROXY_EINVAL, "log_level out of range");
    if (in->metrics_path && *in->metrics_path && in->metrics_path[0] != '/')
        return err_set(err, errlen, WS_PROXY_EINVAL, "metrics_path must start with '/': %s",
                       in->metrics_path);
    if (in->metrics_allow && cidr_has(in->metrics_allow, 0, NULL) < 0)
        return err_set(err, errlen, WS_PROXY_EINVAL,
                       "metrics_allow: not a list of addresses or CIDR blocks: %s",
                       in->metrics_allow);
#ifdef WS_PROXY_NO_TLS
    if (in->https_port)
        return err_set(err, errlen, WS_PROXY_ENOTLS,
                       "https_port: this build has no TLS (built with WS_PROXY_NO_TLS)");
#endif
    len = cfg_strlen(in->bind_address) + cfg_strlen(in->socket_path) +
          cfg_strlen(in->cert_file) + cfg_strlen(in->key_file) +
          cfg_strlen(in->log_dir) + cfg_strlen(in->allowed_origins) +
          cfg_strlen(in->subprotocols) + sizeof "0.0.0.0" +
          cfg_strlen(in->metrics_path) + cfg_strlen(in->metrics_allow);
    if (!(cf = calloc(1, sizeof *cf + len)))
        return err_set(err, errlen, WS_PROXY_ENOMEM, "out of memory");
    cf->refs = 1;
    cf->c = *in;
    cf->engine = engine;
    cf->engine_len = engine_len;
    t = cf->text;
    cf->c.bind_address = cfg_strcpy(&t, in->bind_address ? in->bind_address : "0.0.0.0");
    cf->c.socket_path = cfg_strcpy(&t, in->socket_path);
    cf->c.cert_file = cfg_strcpy(&t, in->cert_file);
    cf->c.key_file = cfg_strcpy(&t, in->key_file);
    cf->c.log_dir = cfg_strcpy(&t, in->log_dir);
    cf->c.allowed_origins = cfg_strcpy(&t, in->allowed_origins);
    cf->c.subprotocols = cfg_strcpy(&t, in->subprotocols);
    cf->c.metrics_path = cfg_strcpy(&t, in->metrics_path);
    cf->c.metrics_allow = cfg_strcpy(&t, in->metrics_allow);
    cf->port = port;
    cf->tls = in->https_port != 0;
    cf->max_conns = in->max_connections ? in->max_connections : DEFAULT_MAX_CONNECTIONS;
    cf->handshake_ms = in->handshake_timeout_ms ? in->handshake_timeout_ms : DEFAULT_HANDSHAKE_MS;
    cf->drain_ms = in->drain_timeout_ms ? in->drain_timeout_ms : DEFAULT_DRAIN_MS;
    cf->send_ms = in->send_timeout_ms ? in->send_timeout_ms : DEFAULT_SEND_MS;
    cf->log_level = in->log_level ? in->log_level : WS_PROXY_LOG_INFO;
#ifndef WS_PROXY_NO_TLS
    if (cf->tls) {
        int rc = tls_creds_load(cf->c.cert_file, cf->c.key_file, &cf->creds, err, errlen);
        if (rc) {
            free(cf);
            return rc;
        }
    }
#endif
    *out = cf;
    return 0;
}

/*
 * The registry of live handles.  Every call looks its handle up here first,
 * so a call that races ws_proxy_stop(), or comes after it, finds the handle
 * missing or stopping and returns WS_PROXY_ESTOPPED instead of posting to a
 * loop that has exited (it would wait forever).  Each entry counts the calls
 * in flight; stop marks the entry stopping, waits for that count to reach
 * zero, and only then stops the loop and frees; the entry goes last, so a
 * second stop of the same handle waits for the first and returns.  The
 * table is process-wide, but proxies still share nothing else: its lock is
 * held only for lookups and the final free, never across a call.  A handle
 * is in the table at most once (stop frees it and drops its entry under the
 * lock); serial tells it from a later one that malloc placed at the same
 * address.
 */
struct api_entry {
    ws_proxy *p;
    uint64_t serial;
    unsigned inflight;
    int stopping;
};

static pthread_mutex_t api_reg_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t api_reg_cv = PTHREAD_COND_INITIALIZER;
static struct api_entry *api_reg;
static size_t api_nreg, api_capreg;
static uint64_t api_serial;

/* The entry of p, or NULL; api_reg_mu held. */
static struct api_entry *api_find(const ws_proxy *p)
{
    size_t i;
    for (i = 0; i < api_nreg; i++)
        if (api_reg[i].p == p)
            return &api_reg[i];
    return NULL;
}

/* The entry with this serial, or NULL; api_reg_mu held.  Used once p may
 * have been freed, so that p's value is never used after free. */
static struct api_entry *api_find_serial(uint64_t serial)
{
    size_t i;
    for (i = 0; i < api_nreg; i++)
        if (api_reg[i].serial == serial)
            return &api_reg[i];
    return NULL;
}

static int api_register(ws_proxy *p, uint64_t *serial)
{
    int rc = 0;
    pthread_mutex_lock(&api_reg_mu);
    if (api_nreg == api_capreg) {
        size_t cap = api_capreg ? 2 * api_capreg : 8;
        struct api_entry *n = realloc(api_reg, cap * sizeof *n);
        if (n)
            api_reg = n, api_capreg = cap;
        else
            rc = WS_PROXY_ENOMEM;
    }
    if (!rc) {
        struct api_entry *e = &api_reg[api_nreg++];
        e->p = p;
        e->serial = *serial = ++api_serial;
        e->inflight = 0;
        e->stopping = 0;
    }
    pthread_mutex_unlock(&api_reg_mu);
    return rc;
}

/* Drops an entry and wakes whoever waits for it to go; api_reg_mu held. */
static void api_unregister_locked(uint64_t serial)
{
    struct api_entry *e = api_find_serial(serial);
    if (e)
        *e = api_reg[--api_nreg];
    if (!api_nreg) { /* the last proxy is gone: keep nothing allocated */
        free(api_reg);
        api_reg = NULL;
        api_capreg = 0;
    }
    pthread_cond_broadcast(&api_reg_cv);
}

/* Admits one call on p: 0, or WS_PROXY_ESTOPPED if p is not a live handle
 * (never started, stopped, or being stopped). */
static int api_enter(ws_proxy *p)
{
    struct api_entry *e;
    int rc = WS_PROXY_ESTOPPED;
    pthread_mutex_lock(&api_reg_mu);
    if ((e = api_find(p)) != NULL && !e->stopping) {
        e->inflight++;
        rc = 0;
    }
    pthread_mutex_unlock(&api_reg_mu);
    return rc;
}

static void api_leave(ws_proxy *p)
{
    struct api_entry *e;
    pthread_mutex_lock(&api_reg_mu);
    /* The entry is there: stop waits for inflight == 0 before removing it. */
    if ((e = api_find(p)) != NULL && --e->inflight == 0 && e->stopping)
        pthread_cond_broadcast(&api_reg_cv);
    pthread_mutex_unlock(&api_reg_mu);
}

static int api_stopped(char *err, size_t errlen)
{
    return err_set(err, errlen, WS_PROXY_ESTOPPED, "the proxy is stopped or stopping");
}

/* Hands a command to the loop thread and waits until it has run. */
static int api_call(ws_proxy *p, int cmd, void *arg, char *err, size_t errlen)
{
    int rc;
    pthread_mutex_lock(&p->api_mu);
    pthread_mutex_lock(&p->mu);
    p->cmd = cmd;
    p->cmd_arg = arg;
    p->cmd_err = err;
    p->cmd_errlen = errlen;
    p->cmd_done = 0;
    pthread_mutex_unlock(&p->mu);
    while (write(p->wake_wr, "", 1) < 0 && errno == EINTR) {
    }
    pthread_mutex_lock(&p->mu);
    while (!p->cmd_done)
        pthread_cond_wait(&p->cv, &p->mu);
    rc = p->cmd_rc;
    p->cmd = CMD_NONE;
    pthread_mutex_unlock(&p->mu);
    pthread_mutex_unlock(&p->api_mu);
    return rc;
}

static void proxy_free(ws_proxy *p)
{
    size_t i;
    for (i = 0; i < p->nconns; i++) {
        cfg_unref(p->conns[i]->cfg);
        free(p->conns[i]);
    }
    while (p->freebufs)
        free(buf_get(p));
    if (p->lfd >= 0)
        close(p->lfd);
    if (p->log_fd >= 0)
        close(p->log_fd);
    if (p->wake_rd >= 0)
        close(p->wake_rd);
    if (p->wake_wr >= 0)
        close(p->wake_wr);
    if (p->bell_fd >= 0)
        close(p->bell_fd);
    cfg_unref(p->cfg);
    free(p->conns);
    free(p->pfd);
    free(p->ipt);
    free(p);
}

ws_proxy *ws_proxy_start(const struct ws_proxy_config *config, char *err,
                         size_t errlen)
{
    ws_proxy *p;
    struct cfg *cf;
    uint64_t serial;
    int fds[2];
    char eb[128];
    if (err && errlen)
        err[0] = 0;
    if (cfg_new(config, &cf, err, errlen))
        return NULL;
    if (!(p = calloc(1, sizeof *p))) {
        cfg_unref(cf);
        err_set(err, errlen, WS_PROXY_ENOMEM, "out of memory");
        return NULL;
    }
    p->lfd = p->log_fd = p->wake_rd = p->wake_wr = p->bell_fd = -1;
    p->cfg = cf;
    if (log_open(cf, &p->log_fd, err, errlen) ||
        (cf->port && listen_open(cf->c.bind_address, cf->port, &p->lfd, &p->laddr, err, errlen))) {
        proxy_free(p);
        return NULL;
    }
    if (wake_pipe(fds)) {
        err_set(err, errlen, WS_PROXY_ESYS, "pipe: %s", sys_err(errno, eb, sizeof eb));
        proxy_free(p);
        return NULL;
    }
#ifdef HAVE_BELL
    /* Made with the proxy, not at the first cold connection, so that the
     * proxy's descriptors are the same whenever it is idle. */
    if ((p->bell_fd = epoll_create1(EPOLL_CLOEXEC)) < 0)
        p->bell_fd = -2;
#endif
    p->wake_rd = fds[0];
    p->wake_wr = fds[1];
    p->lport = p->lfd >= 0 ? addr_port(&p->laddr) : 0;
    p->state = p->lfd >= 0 ? WS_PROXY_RUNNING : WS_PROXY_STOPPED;
    pthread_mutex_init(&p->api_mu, NULL);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    log_config(p, "started");
    /* Registered before the thread exists: no other thread knows p yet, so
     * undoing either step below races nothing. */
    if (api_register(p, &serial)) {
        err_set(err, errlen, WS_PROXY_ENOMEM, "out of memory");
        pthread_mutex_destroy(&p->api_mu);
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->cv);
        proxy_free(p);
        return NULL;
    }
    if (pthread_create(&p->thread, NULL, loop_main, p)) {
        err_set(err, errlen, WS_PROXY_ESYS, "pthread_create failed");
        pthread_mutex_lock(&api_reg_mu);
        api_unregister_locked(serial);
        pthread_mutex_unlock(&api_reg_mu);
        pthread_mutex_destroy(&p->api_mu);
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->cv);
        proxy_free(p);
        return NULL;
    }
    return p;
}

/*
 * A restart onto another address with the same port (0.0.0.0:P to
 * 127.0.0.1:P, or back) fails with EADDRINUSE: the kernel refuses to bind an
 * address overlapping our own listener, and the new listener must be bound
 * before the old one closes.  SO_REUSEPORT would allow the overlap, but it
 * would also let any process of the same user bind that address and port
 * and silently take a share of the connections, for as long as the listener
 * lives (Linux's bind fast path keeps allowing it even after the option is
 * cleared).  So the restart fails, changes nothing, and says whose the
 * address is and how to move: this appends that to the bind error.
 */
static void api_explain_overlap(ws_proxy *p, const struct cfg *cf, char *err, size_t errlen)
{
    struct ws_proxy_status st;
    union conn_addr want, have;
    char old[INET6_ADDRSTRLEN + 1], eb[128];
    size_t n;
    if (!err || !errlen || !cf->port || !strstr(err, sys_err(EADDRINUSE, eb, sizeof eb)) ||
        api_call(p, CMD_STATUS, &st, NULL, 0) || st.state != WS_PROXY_RUNNING ||
        st.port != cf->port)
        return;
    /* p->cfg changes only inside a command, and commands need api_mu. */
    pthread_mutex_lock(&p->api_mu);
    snprintf(old, sizeof old, "%s", p->cfg->c.bind_address);
    pthread_mutex_unlock(&p->api_mu);
    if (addr_parse(old, st.port, &have) || addr_parse(cf->c.bind_address, st.port, &want) ||
        addr_same_ip(&have, &want))
        return;
    n = strlen(err);
    snprintf(err + n, errlen - n,
             " (by this proxy, on %s%s%s:%d: one port cannot be held on two overlapping "
             "addresses; restart with no port first, then with the new address)",
             strchr(old, ':') ? "[" : "", old, strchr(old, ':') ? "]" : "", st.port);
}

int ws_proxy_restart(ws_proxy *p, const struct ws_proxy_config *config,
                     char *err, size_t errlen)
{
    struct cfg *cf;
    int rc;
    if (err && errlen)
        err[0] = 0;
    if (!p)
        return err_set(err, errlen, WS_PROXY_EINVAL, "no proxy");
    if (api_enter(p))
        return api_stopped(err, errlen);
    if ((rc = cfg_new(config, &cf, err, errlen)) == 0 &&
        (rc = api_call(p, CMD_RESTART, cf, err, errlen)) != 0) {
        if (rc == WS_PROXY_EBIND)
            api_explain_overlap(p, cf, err, errlen);
        cfg_unref(cf); /* the loop did not take it */
    }
    api_leave(p);
    return rc;
}

int ws_proxy_reopen_log(ws_proxy *p, char *err, size_t errlen)
{
    int rc;
    if (err && errlen)
        err[0] = 0;
    if (!p)
        return err_set(err, errlen, WS_PROXY_EINVAL, "no proxy");
    if (api_enter(p))
        return api_stopped(err, errlen);
    rc = api_call(p, CMD_REOPEN, NULL, err, errlen);
    api_leave(p);
    return rc;
}

int ws_proxy_status(ws_proxy *p, struct ws_proxy_status *st)
{
    int rc;
    if (!p || !st)
        return WS_PROXY_EINVAL;
    if (api_enter(p))
        return WS_PROXY_ESTOPPED;
    rc = api_call(p, CMD_STATUS, st, NULL, 0);
    api_leave(p);
    return rc;
}

const char *ws_proxy_state_name(int state)
{
    switch (state) {
    case WS_PROXY_STOPPED:
        return "STOPPED";
    case WS_PROXY_RUNNING:
        return "RUNNING";
    case WS_PROXY_FAILED:
        return "FAILED";
    }
    return "UNKNOWN";
}

void ws_proxy_stop(ws_proxy *p)
{
    struct api_entry *e;
    uint64_t serial;
    if (!p)
        return;
    pthread_mutex_lock(&api_reg_mu);
    if (!(e = api_find(p))) { /* not a live handle: nothing to do */
        pthread_mutex_unlock(&api_reg_mu);
        return;
    }
    serial = e->serial;
    if (e->stopping) {
        /* Another thread is stopping p: return once it has finished, as a
         * stop returns only when no callback can run any more.  (The
         * address may meanwhile belong to a newer handle: the serial tells
         * them apart.) */
        while (api_find_serial(serial))
            pthread_cond_wait(&api_reg_cv, &api_reg_mu);
        pthread_mutex_unlock(&api_reg_mu);
        return;
    }
    /* Admit no new call, and wait for those in flight: each is answered by
     * the loop, which is still running. */
    e->stopping = 1;
    while (e->inflight) {
        pthread_cond_wait(&api_reg_cv, &api_reg_mu);
        e = api_find_serial(serial); /* the table may have moved */
    }
    pthread_mutex_unlock(&api_reg_mu);
    /* No other thread can be in api_call now: the mutexes are unlocked and
     * nobody waits on cv when they are destroyed. */
    api_call(p, CMD_STOP, NULL, NULL, 0);
    pthread_join(p->thread, NULL);
    pthread_mutex_destroy(&p->api_mu);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    /* Freed under the registry lock: until the entry is gone, no start can
     * register a new handle that malloc placed at the same address. */
    pthread_mutex_lock(&api_reg_mu);
    proxy_free(p);
    api_unregister_locked(serial);
    pthread_mutex_unlock(&api_reg_mu);
}

