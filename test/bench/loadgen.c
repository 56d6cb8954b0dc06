/*
 * loadgen.c - load generator for wsproxy's benchmark.
 *
 * Speaks the client side of RFC 6455 over ws:// (and wss:// through
 * BearSSL's client engine when built with -DLOADGEN_TLS), or sends the very
 * same payload bytes with no framing and no handshake (--raw, or a tcp://,
 * tls:// or unix: URL) for the socat and direct-to-engine baselines.
 *
 * One thread, one poll() loop.  Every frame is built as header plus masked
 * payload in one contiguous buffer (the mask applied 8 bytes at a time), so
 * each frame leaves in one write.  Every payload byte follows the pattern of
 * pattern.h; everything the engine sends back (echo) or sends (source) is
 * checked against it, so a proxy that drops, duplicates or corrupts data
 * cannot look fast: the result line then says verify=bad and the exit
 * status is 1.
 *
 * Modes (--mode):
 *   upload    one connection streams --size messages for --secs, then closes
 *             (ws: Close frame; raw: shutdown) and waits until the engine
 *             (sink) has read everything: throughput = bytes / that time.
 *   download  one connection reads the engine's (source) stream for --secs.
 *   echo      one connection keeps --window bytes of --size messages in
 *             flight against an echo engine for --secs.
 *   latency   one connection, one --size message at a time (ping-pong);
 *             percentiles of the round trip.
 *   many      --conns connections (opened first), each doing ping-pong with
 *             --size messages; aggregate messages per second.
 *   connect   one connection at a time: connect (+ TLS) (+ WebSocket
 *             handshake) + a --size echo round trip, then close (RST);
 *             percentiles of that time.  --size 0 on a tcp:// URL: the
 *             TCP connect alone.  --resume (TLS): every connection after
 *             the first offers the first one's session; resumed= counts
 *             those the server resumed.
 *   burst     --conns connections started at once, each doing connect (+
 *             TLS) (+ handshake) + a --size echo round trip and staying
 *             open: secs= is the time until the last one has its echo,
 *             the percentiles are each connection's own time.
 *   hold      only open the --idle connections, print the result line,
 *             create --ready-file, and hold them for --secs (or SIGTERM).
 * --idle N opens N extra connections (handshake completed) before any mode
 * and holds them, outside the poll set, while the mode runs; at the end it
 * reports how many the far side closed (idle_dead).
 *
 * Output: one line of key=value pairs on stdout.
 */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#ifdef LOADGEN_TLS
#include <bearssl.h>
#endif

#include "pattern.h"

#define RBUF_SIZE (256u * 1024u)
#define MAX_SAMPLES 4000000u
#define SETUP_LIMIT_S 60.0      /* opening connections may take this long */
#define DRAIN_LIMIT_S 15.0      /* upload: wait this long for the engine to drain */

/* RFC 6455 section 1.3's example key, so the expected accept is a constant. */
#define WS_KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define WS_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

enum mode { M_UPLOAD, M_DOWNLOAD, M_ECHO, M_LATENCY, M_MANY, M_CONNECT, M_HOLD, M_BURST };
static const char *const mode_names[] = {
	"upload", "download", "echo", "latency", "many", "connect", "hold", "burst"
};

enum cstate { C_CONNECTING, C_HS, C_OPEN, C_DONE, C_FAILED };

enum phase { PH_IDLE_SETUP, PH_SETUP, PH_RUN, PH_DRAIN, PH_END };

#ifdef LOADGEN_TLS
struct tls {
	br_ssl_client_context sc;
	br_x509_minimal_context xc;
	unsigned char iobuf[BR_SSL_BUFSIZE_BIDI];
};
#endif

struct conn {
	int fd;
	enum cstate st;
	int idle;                 /* held open, outside the poll set */
	unsigned want;            /* TLS: events the engine waits for */
	unsigned char *ob;        /* pending output ob[ooff..olen) */
	size_t olen, ooff, ocap;
	int shut_after_flush;     /* raw upload: shutdown(SHUT_WR) once ob drained */
	char hs[1024];            /* handshake response so far */
	size_t hslen;
	unsigned char fh[14];     /* frame header being collected */
	unsigned fhlen;
	int inpl;                 /* inside a frame's payload */
	int fop;                  /* that frame's opcode */
	uint64_t frem;            /* payload bytes left in that frame */
	int got_close, eof;
	uint64_t sent, rcvd;      /* payload bytes queued / received */
	uint64_t target;          /* ping-pong: rcvd value that completes the ping */
	double t0;                /* start of the current ping or connect */
#ifdef LOADGEN_TLS
	struct tls *tls;
#endif
};

/* ---- options and target ---- */

static enum mode g_mode = M_ECHO;
static size_t g_size;
static int g_size_given;
static int g_resume;
static size_t g_window = 256u * 1024u;
static int g_nconns = 1000;
static int g_nidle;
static int g_conc = 64;
static double g_secs = 2.0;
static unsigned long g_count;
static const char *g_url;
static const char *g_ready_file;
static const char *g_ca_file;
static const char *g_servername = "localhost";
static int g_force_raw;

static struct {
	struct sockaddr_storage sa;
	socklen_t salen;
	int family;
	int ws, tls;
	char hostport[160];
	char path[256];
} T;

/* ---- run state ---- */

static enum phase g_phase;
static volatile sig_atomic_t g_sig;
static unsigned char *g_rbuf;
static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static unsigned long g_errors;
static int g_verify_bad;
static struct conn **g_act;     /* polled connections */
static size_t g_nact, g_capact;
static struct pollfd *g_pfd;
static struct conn **g_idle;    /* held connections */
static size_t g_nidle_open;
static unsigned long g_started; /* connections started in the current phase */
static unsigned long g_opened;  /* ... and opened */
static double g_t_start, g_t_end, g_deadline, g_idle_secs;
static double *g_samples;
static size_t g_nsamples;
static uint64_t g_msgs;
static uint64_t g_bytes;        /* download/echo: payload received while running */
static int g_upload_done;

#ifdef LOADGEN_TLS
static br_x509_trust_anchor g_tas[16];
static size_t g_ntas;
static br_ssl_session_parameters g_sess;   /* --resume: the first session */
static int g_have_sess;
#endif
static unsigned long g_resumed;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void on_signal(int sig)
{
	(void)sig;
	g_sig = 1;
}

static void vsay(const char *fmt, va_list ap)
{
	fputs("loadgen: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

static void fatal(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsay(fmt, ap);
	va_end(ap);
	exit(2);
}

static void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n);
	if (p == NULL)
		fatal("out of memory");
	return p;
}

static uint32_t rng32(void)
{
	g_rng ^= g_rng << 13;
	g_rng ^= g_rng >> 7;
	g_rng ^= g_rng << 17;
	return (uint32_t)(g_rng >> 32);
}

/* Only the first few errors are printed; all are counted. */
static void conn_fail(struct conn *c, const char *fmt, ...)
{
	struct linger lg;

	if (c->st == C_FAILED || c->st == C_DONE)
		return;
	if (g_errors < 5) {
		va_list ap;
		va_start(ap, fmt);
		vsay(fmt, ap);
		va_end(ap);
	}
	g_errors++;
	c->st = C_FAILED;
	lg.l_onoff = 1;
	lg.l_linger = 0;
	setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
	close(c->fd);
	c->fd = -1;
}

/* Close with RST: no TIME_WAIT, so thousands of runs never run out of ports. */
static void conn_finish(struct conn *c)
{
	struct linger lg;

	if (c->st == C_FAILED || c->st == C_DONE)
		return;
	lg.l_onoff = 1;
	lg.l_linger = 0;
	setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
	close(c->fd);
	c->fd = -1;
	c->st = C_DONE;
}

static void conn_free(struct conn *c)
{
	if (c->fd >= 0)
		conn_finish(c);
	free(c->ob);
#ifdef LOADGEN_TLS
	free(c->tls);
#endif
	free(c);
}

static void sample_add(double us)
{
	if (g_nsamples >= MAX_SAMPLES)
		return;
	if (g_samples == NULL)
		g_samples = xrealloc(NULL, MAX_SAMPLES * sizeof *g_samples);
	g_samples[g_nsamples++] = us;
}

/* ---- output: framing and masking ---- */

static void ob_reserve(struct conn *c, size_t n)
{
	if (c->ooff == c->olen)
		c->ooff = c->olen = 0;
	if (c->olen + n <= c->ocap)
		return;
	if (c->ooff > 0) {
		memmove(c->ob, c->ob + c->ooff, c->olen - c->ooff);
		c->olen -= c->ooff;
		c->ooff = 0;
		if (c->olen + n <= c->ocap)
			return;
	}
	c->ocap = c->olen + n < 2 * c->ocap ? 2 * c->ocap : c->olen + n;
	c->ob = xrealloc(c->ob, c->ocap);
}

/* dst = src ^ mask, 8 bytes per step (RFC 6455 section 5.3). */
static void mask_copy(unsigned char *dst, const unsigned char *src, size_t n,
                      const unsigned char key[4])
{
	unsigned char k8[8];
	uint64_t m, w;
	size_t i = 0;

	memcpy(k8, key, 4);
	memcpy(k8 + 4, key, 4);
	memcpy(&m, k8, 8);
	for (; i + 8 <= n; i += 8) {
		memcpy(&w, src + i, 8);
		w ^= m;
		memcpy(dst + i, &w, 8);
	}
	for (; i < n; i++)
		dst[i] = src[i] ^ key[i & 3];   /* i is a multiple of 8 here, then +1.. */
}

static size_t ws_header(unsigned char *d, unsigned opcode, size_t len, unsigned char key[4])
{
	size_t h = 0;
	uint32_t k = rng32();
	int i;

	d[h++] = (unsigned char)(0x80 | opcode);
	if (len < 126) {
		d[h++] = (unsigned char)(0x80 | len);
	} else if (len < 65536) {
		d[h++] = 0x80 | 126;
		d[h++] = (unsigned char)(len >> 8);
		d[h++] = (unsigned char)len;
	} else {
		d[h++] = 0x80 | 127;
		for (i = 7; i >= 0; i--)
			d[h++] = (unsigned char)((uint64_t)len >> (8 * i));
	}
	memcpy(key, &k, 4);
	memcpy(d + h, key, 4);
	return h + 4;
}

/* Queue one message of len pattern bytes (one binary frame over ws). */
static void queue_msg(struct conn *c, size_t len)
{
	const unsigned char *src = pattern_at(c->sent);
	unsigned char *d, key[4];

	ob_reserve(c, len + 14);
	d = c->ob + c->olen;
	if (T.ws) {
		size_t h = ws_header(d, 0x2, len, key);
		mask_copy(d + h, src, len, key);
		c->olen += h + len;
	} else {
		memcpy(d, src, len);
		c->olen += len;
	}
	c->sent += len;
}

static void queue_close(struct conn *c)
{
	static const unsigned char code[2] = { 0x03, 0xE8 };   /* 1000 */
	unsigned char *d, key[4];
	size_t h;

	ob_reserve(c, 16);
	d = c->ob + c->olen;
	h = ws_header(d, 0x8, 2, key);
	mask_copy(d + h, code, 2, key);
	c->olen += h + 2;
}

static void queue_handshake(struct conn *c)
{
	char req[512];
	int n = snprintf(req, sizeof req,
	                 "GET %s HTTP/1.1\r\n"
	                 "Host: %s\r\n"
	                 "Upgrade: websocket\r\n"
	                 "Connection: Upgrade\r\n"
	                 "Sec-WebSocket-Key: " WS_KEY "\r\n"
	                 "Sec-WebSocket-Version: 13\r\n"
	                 "\r\n", T.path, T.hostport);
	ob_reserve(c, (size_t)n);
	memcpy(c->ob + c->olen, req, (size_t)n);
	c->olen += (size_t)n;
}

/* ---- mode logic ---- */

static void conn_start(void);
static void tls_note_session(struct conn *c);

/* connect mode: this connection is through; the next one starts. */
static void connect_done(struct conn *c)
{
	sample_add((now() - c->t0) * 1e6);
	g_msgs++;
	tls_note_session(c);
	conn_finish(c);
	if (g_count == 0 || g_msgs < g_count)
		conn_start();
	else
		g_deadline = 0;   /* count reached: stop now */
}

static void ping_send(struct conn *c)
{
	if (g_mode != M_CONNECT && g_mode != M_BURST)
		c->t0 = now();
	queue_msg(c, g_size);
	c->target = c->sent;
}

static void echo_fill(struct conn *c)
{
	while (c->sent - c->rcvd + g_size <= g_window)
		queue_msg(c, g_size);
}

static void upload_fill(struct conn *c)
{
	size_t lim = 4 * g_size > 262144 ? 4 * g_size : 262144;
	while (c->olen - c->ooff < lim)
		queue_msg(c, g_size);
}

static void run_begin(void)
{
	g_phase = PH_RUN;
	g_t_start = now();
	g_deadline = g_t_start + g_secs;
}

static void on_open(struct conn *c)
{
	size_t i;

	g_opened++;
	if (g_phase == PH_IDLE_SETUP) {
		c->idle = 1;
		free(c->ob);
		c->ob = NULL;
		c->ocap = c->olen = c->ooff = 0;
		return;
	}
	switch (g_mode) {
	case M_UPLOAD:
		run_begin();
		upload_fill(c);
		break;
	case M_DOWNLOAD:
		run_begin();
		break;
	case M_ECHO:
		run_begin();
		echo_fill(c);
		break;
	case M_LATENCY:
		run_begin();
		ping_send(c);
		break;
	case M_MANY:
		if (g_opened < (unsigned long)g_nconns)
			break;
		run_begin();
		for (i = 0; i < g_nact; i++)
			if (g_act[i]->st == C_OPEN)
				ping_send(g_act[i]);
		break;
	case M_CONNECT:
		if (g_size == 0)
			connect_done(c);
		else
			ping_send(c);
		break;
	case M_BURST:
		ping_send(c);
		break;
	case M_HOLD:
		break;
	}
}

/* Payload has arrived (c->rcvd advanced). */
static void on_data(struct conn *c)
{
	if (g_phase != PH_RUN)
		return;
	switch (g_mode) {
	case M_ECHO:
		echo_fill(c);
		break;
	case M_LATENCY:
	case M_MANY:
	case M_CONNECT:
	case M_BURST:
		if (c->rcvd < c->target)
			break;
		if (g_mode == M_CONNECT) {
			connect_done(c);
			break;
		}
		sample_add((now() - c->t0) * 1e6);
		g_msgs++;
		if (g_mode != M_BURST) {
			ping_send(c);
		} else if (g_msgs == (uint64_t)g_nconns) {
			g_t_end = now();
			g_phase = PH_END;
		}
		break;
	default:
		break;
	}
}

/* The peer closed (Close frame or EOF). */
static void on_peer_close(struct conn *c)
{
	if (g_mode == M_UPLOAD && g_phase == PH_DRAIN) {
		g_t_end = now();
		g_bytes = c->sent;
		g_upload_done = 1;
		conn_finish(c);
		return;
	}
	conn_fail(c, "peer closed the connection unexpectedly (phase %d, rcvd %llu)",
	          (int)g_phase, (unsigned long long)c->rcvd);
}

/* Payload bytes from the peer: check them against the pattern. */
static void on_payload(struct conn *c, const unsigned char *p, size_t n)
{
	while (n > 0) {
		size_t k = n < PATTERN_MAX_CHUNK ? n : PATTERN_MAX_CHUNK;
		if (memcmp(p, pattern_at(c->rcvd), k) != 0) {
			if (!g_verify_bad)
				fprintf(stderr, "loadgen: data mismatch at stream offset ~%llu\n",
				        (unsigned long long)c->rcvd);
			g_verify_bad = 1;
		}
		c->rcvd += k;
		if (g_phase == PH_RUN)
			g_bytes += k;
		p += k;
		n -= k;
	}
}

/* ---- input: handshake response and frame decoder ---- */

/* Server frames: FIN/opcode, unmasked length (RFC 6455 section 5.2). */
static void ws_feed(struct conn *c, const unsigned char *p, size_t n)
{
	while (n > 0 && c->st == C_OPEN) {
		if (!c->inpl) {
			unsigned need = 2;
			c->fh[c->fhlen++] = *p++;
			n--;
			if (c->fhlen >= 2) {
				unsigned l7 = c->fh[1] & 0x7f;
				need += l7 == 126 ? 2 : l7 == 127 ? 8 : 0;
				if (c->fh[1] & 0x80) {
					conn_fail(c, "server sent a masked frame");
					return;
				}
			}
			if (c->fhlen < need)
				continue;
			c->fop = c->fh[0] & 0x0f;
			if ((c->fh[1] & 0x7f) < 126) {
				c->frem = c->fh[1] & 0x7f;
			} else if ((c->fh[1] & 0x7f) == 126) {
				c->frem = (uint64_t)c->fh[2] << 8 | c->fh[3];
			} else {
				unsigned i;
				c->frem = 0;
				for (i = 2; i < 10; i++)
					c->frem = c->frem << 8 | c->fh[i];
			}
			c->fhlen = 0;
			c->inpl = 1;
		}
		if (c->frem > 0) {
			size_t k = n < c->frem ? n : (size_t)c->frem;
			if (c->fop <= 2)
				on_payload(c, p, k);
			p += k;
			n -= k;
			c->frem -= k;
		}
		if (c->frem == 0) {
			c->inpl = 0;
			if (c->fop == 0x8) {
				c->got_close = 1;
				on_peer_close(c);
				return;
			}
		}
	}
}

static void handshake_done(struct conn *c)
{
	c->st = C_OPEN;
	on_open(c);
}

static void process_in(struct conn *c, const unsigned char *p, size_t n)
{
	if (c->st == C_HS) {
		size_t old = c->hslen, k = sizeof c->hs - 1 - old;
		char *e;
		if (k > n)
			k = n;
		memcpy(c->hs + old, p, k);
		c->hslen += k;
		c->hs[c->hslen] = '\0';
		e = strstr(c->hs, "\r\n\r\n");
		if (e == NULL) {
			if (c->hslen == sizeof c->hs - 1)
				conn_fail(c, "handshake response too long");
			return;
		}
		if (strncmp(c->hs, "HTTP/1.1 101", 12) != 0 || strstr(c->hs, WS_ACCEPT) == NULL) {
			char *eol = strstr(c->hs, "\r\n");
			if (eol)
				*eol = '\0';
			conn_fail(c, "handshake refused: %s", c->hs);
			return;
		}
		k = (size_t)(e + 4 - c->hs) - old;
		p += k;
		n -= k;
		handshake_done(c);
	}
	if (c->st != C_OPEN || n == 0)
		return;
	if (T.ws)
		ws_feed(c, p, n);
	else
		on_payload(c, p, n);
}

/* ---- TLS (BearSSL client) ---- */

#ifdef LOADGEN_TLS
struct bytes {
	unsigned char *p;
	size_t len, cap;
};

static void bytes_append(void *ctx, const void *buf, size_t len)
{
	struct bytes *b = ctx;
	if (b->len + len > b->cap) {
		b->cap = (b->len + len) * 2;
		b->p = xrealloc(b->p, b->cap);
	}
	memcpy(b->p + b->len, buf, len);
	b->len += len;
}

static unsigned char *dup_bytes(const void *p, size_t n)
{
	unsigned char *d = xrealloc(NULL, n ? n : 1);
	memcpy(d, p, n);
	return d;
}

static void add_ta(const unsigned char *der, size_t len)
{
	br_x509_decoder_context dc;
	struct bytes dn = { NULL, 0, 0 };
	br_x509_pkey *pk;
	br_x509_trust_anchor *ta;

	if (g_ntas == sizeof g_tas / sizeof g_tas[0])
		fatal("too many CA certificates");
	br_x509_decoder_init(&dc, bytes_append, &dn);
	br_x509_decoder_push(&dc, der, len);
	pk = br_x509_decoder_get_pkey(&dc);
	if (pk == NULL)
		fatal("cannot decode CA certificate (error %d)", br_x509_decoder_last_error(&dc));
	ta = &g_tas[g_ntas++];
	ta->dn.data = dn.p;
	ta->dn.len = dn.len;
	ta->flags = br_x509_decoder_isCA(&dc) ? BR_X509_TA_CA : 0;
	ta->pkey.key_type = pk->key_type;
	if (pk->key_type == BR_KEYTYPE_RSA) {
		ta->pkey.key.rsa.n = dup_bytes(pk->key.rsa.n, pk->key.rsa.nlen);
		ta->pkey.key.rsa.nlen = pk->key.rsa.nlen;
		ta->pkey.key.rsa.e = dup_bytes(pk->key.rsa.e, pk->key.rsa.elen);
		ta->pkey.key.rsa.elen = pk->key.rsa.elen;
	} else if (pk->key_type == BR_KEYTYPE_EC) {
		ta->pkey.key.ec.curve = pk->key.ec.curve;
		ta->pkey.key.ec.q = dup_bytes(pk->key.ec.q, pk->key.ec.qlen);
		ta->pkey.key.ec.qlen = pk->key.ec.qlen;
	} else {
		fatal("unsupported CA key type");
	}
}

static void load_ca(const char *path)
{
	br_pem_decoder_context pc;
	struct bytes der = { NULL, 0, 0 };
	unsigned char buf[4096];
	int incert = 0;
	FILE *f = fopen(path, "rb");
	size_t n;

	if (f == NULL)
		fatal("%s: %s", path, strerror(errno));
	br_pem_decoder_init(&pc);
	for (;;) {
		const unsigned char *p = buf;
		n = fread(buf, 1, sizeof buf - 1, f);
		if (n == 0) {
			buf[0] = '\n';   /* the decoder needs an end of line after the last object */
			n = 1;
		}
		while (n > 0) {
			size_t k = br_pem_decoder_push(&pc, p, n);
			p += k;
			n -= k;
			switch (br_pem_decoder_event(&pc)) {
			case BR_PEM_BEGIN_OBJ:
				incert = strcmp(br_pem_decoder_name(&pc), "CERTIFICATE") == 0;
				der.len = 0;
				br_pem_decoder_setdest(&pc, incert ? bytes_append : NULL, incert ? &der : NULL);
				break;
			case BR_PEM_END_OBJ:
				if (incert)
					add_ta(der.p, der.len);
				incert = 0;
				break;
			case BR_PEM_ERROR:
				fatal("%s: PEM decoding error", path);
				break;
			default:
				break;
			}
		}
		if (feof(f) || ferror(f))
			break;
	}
	/* one final end of line, in case the file lacks it */
	br_pem_decoder_push(&pc, "\n", 1);
	if (br_pem_decoder_event(&pc) == BR_PEM_END_OBJ && incert)
		add_ta(der.p, der.len);
	fclose(f);
	free(der.p);
	if (g_ntas == 0)
		fatal("%s: no certificate found", path);
}

/* The BearSSL errors a benchmark run is likely to meet (bearssl_ssl.h). */
static const char *tls_error_name(int err)
{
	switch (err) {
	case BR_ERR_UNSUPPORTED_VERSION:
		return "unsupported version: is the server speaking TLS?";
	case BR_ERR_BAD_VERSION:
		return "bad version";
	case BR_ERR_BAD_LENGTH:
		return "bad record length";
	case BR_ERR_BAD_MAC:
		return "bad record MAC";
	case BR_ERR_NO_RANDOM:
		return "no random source";
	case BR_ERR_BAD_CIPHER_SUITE:
		return "server chose a suite not offered";
	case BR_ERR_BAD_SIGNATURE:
		return "bad ServerKeyExchange signature";
	case BR_ERR_IO:
		return "I/O error";
	case BR_ERR_X509_NOT_TRUSTED:
		return "certificate not trusted by --ca";
	case BR_ERR_X509_BAD_SERVER_NAME:
		return "certificate does not match --servername";
	case BR_ERR_X509_EXPIRED:
		return "certificate expired or not yet valid";
	default:
		if (err >= BR_ERR_RECV_FATAL_ALERT && err < BR_ERR_RECV_FATAL_ALERT + 256)
			return "fatal alert received from the server";
		if (err >= BR_ERR_SEND_FATAL_ALERT && err < BR_ERR_SEND_FATAL_ALERT + 256)
			return "fatal alert sent to the server";
		if (err >= 32 && err < 64)
			return "certificate validation failed";
		return "see bearssl_ssl.h";
	}
}

static const uint16_t tls_suites[] = {
	BR_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	BR_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	BR_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	BR_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	BR_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	BR_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
};

static void tls_init(struct conn *c)
{
	c->tls = xrealloc(NULL, sizeof *c->tls);
	br_ssl_client_init_full(&c->tls->sc, &c->tls->xc, g_tas, g_ntas);
	/* AES-GCM first, as browsers on CPUs with AES-NI offer it. */
	br_ssl_engine_set_suites(&c->tls->sc.eng, tls_suites, sizeof tls_suites / sizeof tls_suites[0]);
	br_ssl_engine_set_buffer(&c->tls->sc.eng, c->tls->iobuf, sizeof c->tls->iobuf, 1);
	if (g_have_sess)
		br_ssl_engine_set_session_parameters(&c->tls->sc.eng, &g_sess);
	if (!br_ssl_client_reset(&c->tls->sc, g_servername, g_have_sess))
		conn_fail(c, "br_ssl_client_reset failed");
}

/*
 * Move bytes between the socket, the TLS engine and the connection as far
 * as possible without blocking (the relay loop of BearSSL's tools/sslio.c).
 * Returns 1 if application data arrived.
 */
static int tls_pump(struct conn *c, unsigned rev)
{
	br_ssl_engine_context *e = &c->tls->sc.eng;
	int can_read = (rev & (POLLIN | POLLHUP | POLLERR)) != 0;
	int can_write = 1, got = 0, iter;
	unsigned st;

	for (iter = 0; iter < 1000 && c->st != C_FAILED && c->st != C_DONE; iter++) {
		int progress = 0;
		unsigned char *buf;
		size_t len;
		ssize_t r;

		st = br_ssl_engine_current_state(e);
		if (st == BR_SSL_CLOSED) {
			int err = br_ssl_engine_last_error(e);
			if (err == BR_ERR_OK)
				on_peer_close(c);
			else
				conn_fail(c, "TLS error %d (%s)", err, tls_error_name(err));
			return got;
		}
		if ((st & BR_SSL_SENDREC) && can_write) {
			buf = br_ssl_engine_sendrec_buf(e, &len);
			r = write(c->fd, buf, len);
			if (r > 0) {
				br_ssl_engine_sendrec_ack(e, (size_t)r);
				progress = 1;
			} else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
				can_write = 0;
			} else {
				conn_fail(c, "write: %s", strerror(errno));
				return got;
			}
		}
		if (st & BR_SSL_RECVAPP) {
			buf = br_ssl_engine_recvapp_buf(e, &len);
			process_in(c, buf, len);
			if (c->st == C_FAILED || c->st == C_DONE)
				return got;
			br_ssl_engine_recvapp_ack(e, len);
			got = 1;
			progress = 1;
		}
		if ((st & BR_SSL_SENDAPP) && c->olen > c->ooff) {
			size_t k;
			buf = br_ssl_engine_sendapp_buf(e, &len);
			k = c->olen - c->ooff < len ? c->olen - c->ooff : len;
			memcpy(buf, c->ob + c->ooff, k);
			br_ssl_engine_sendapp_ack(e, k);
			c->ooff += k;
			if (c->ooff == c->olen) {
				c->ooff = c->olen = 0;
				br_ssl_engine_flush(e, 0);
			}
			progress = 1;
		}
		if (c->shut_after_flush && c->olen == c->ooff) {
			c->shut_after_flush = 0;
			br_ssl_engine_close(e);
			progress = 1;
		}
		if ((st & BR_SSL_RECVREC) && can_read) {
			buf = br_ssl_engine_recvrec_buf(e, &len);
			r = read(c->fd, buf, len);
			if (r > 0) {
				br_ssl_engine_recvrec_ack(e, (size_t)r);
				progress = 1;
			} else if (r == 0) {
				on_peer_close(c);
				return got;
			} else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
				can_read = 0;
			} else {
				conn_fail(c, "read: %s", strerror(errno));
				return got;
			}
		}
		if (!progress)
			break;
	}
	st = br_ssl_engine_current_state(e);
	c->want = 0;
	if (st & BR_SSL_SENDREC)
		c->want |= POLLOUT;
	if (st & BR_SSL_RECVREC)
		c->want |= POLLIN;
	return got;
}
#endif /* LOADGEN_TLS */

/* --resume: keep the first session; count the later ones the server resumed
 * (it echoes the offered session id only when it resumes). */
static void tls_note_session(struct conn *c)
{
#ifdef LOADGEN_TLS
	br_ssl_session_parameters p;

	if (!T.tls || !g_resume || c->tls == NULL)
		return;
	br_ssl_engine_get_session_parameters(&c->tls->sc.eng, &p);
	if (!g_have_sess) {
		g_sess = p;
		g_have_sess = p.session_id_len > 0;
	} else if (p.session_id_len == g_sess.session_id_len &&
	           memcmp(p.session_id, g_sess.session_id, p.session_id_len) == 0) {
		g_resumed++;
	}
#else
	(void)c;
#endif
}

/* ---- plain transport and the per-connection step ---- */

static void plain_flush(struct conn *c)
{
	int i;

	for (i = 0; i < 16 && c->olen > c->ooff; i++) {
		ssize_t w = write(c->fd, c->ob + c->ooff, c->olen - c->ooff);
		if (w > 0) {
			c->ooff += (size_t)w;
		} else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			return;
		} else if (w < 0 && errno == EINTR) {
			continue;
		} else {
			conn_fail(c, "write: %s", strerror(errno));
			return;
		}
	}
	if (c->olen == c->ooff) {
		c->olen = c->ooff = 0;
		if (c->shut_after_flush) {
			c->shut_after_flush = 0;
			shutdown(c->fd, SHUT_WR);
		}
	}
}

static void conn_connected(struct conn *c)
{
#ifdef LOADGEN_TLS
	if (T.tls)
		tls_init(c);
#endif
	if (T.ws) {
		c->st = C_HS;
		queue_handshake(c);
	} else {
		c->st = C_OPEN;
		on_open(c);
	}
	/* Send at once (a Unix connect completes inside connect()). */
#ifdef LOADGEN_TLS
	if (T.tls) {
		if (c->st != C_FAILED && c->st != C_DONE)
			tls_pump(c, 0);
		return;
	}
#endif
	if ((c->st == C_OPEN || c->st == C_HS) && c->olen > c->ooff)
		plain_flush(c);
}

static void act_add(struct conn *c)
{
	if (g_nact == g_capact) {
		g_capact = g_capact ? 2 * g_capact : 64;
		g_act = xrealloc(g_act, g_capact * sizeof *g_act);
		g_pfd = xrealloc(g_pfd, g_capact * sizeof *g_pfd);
	}
	g_act[g_nact++] = c;
}

static void conn_start(void)
{
	struct conn *c = xrealloc(NULL, sizeof *c);
	int one = 1, r;

	memset(c, 0, sizeof *c);
	c->t0 = now();
	g_started++;
	act_add(c);
	c->fd = socket(T.family, SOCK_STREAM, 0);
	if (c->fd < 0) {
		conn_fail(c, "socket: %s", strerror(errno));
		return;
	}
	fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
	if (T.family != AF_UNIX)
		setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	r = connect(c->fd, (struct sockaddr *)&T.sa, T.salen);
	if (r == 0) {
		conn_connected(c);
	} else if (errno == EINPROGRESS) {
		c->st = C_CONNECTING;
	} else {
		conn_fail(c, "connect: %s", strerror(errno));
	}
}

/* Interest is derived from the connection's state on every turn. */
static short conn_events(struct conn *c)
{
	/* upload keeps writing while it runs, even when its buffer is empty */
	short more = g_mode == M_UPLOAD && g_phase == PH_RUN && c->st == C_OPEN ? POLLOUT : 0;

	if (c->st == C_CONNECTING)
		return POLLOUT;
#ifdef LOADGEN_TLS
	if (T.tls)
		return (short)(c->want | more);
#endif
	return (short)(POLLIN | more | (c->olen > c->ooff ? POLLOUT : 0));
}

static void conn_io(struct conn *c, unsigned rev)
{
	int got = 0;

	if (c->st == C_CONNECTING) {
		int e = 0;
		socklen_t l = sizeof e;
		if (!(rev & (POLLOUT | POLLERR | POLLHUP)))
			return;
		getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &l);
		if (e != 0) {
			conn_fail(c, "connect: %s", strerror(e));
			return;
		}
		conn_connected(c);
		rev = 0;
	}
#ifdef LOADGEN_TLS
	if (T.tls) {
		got = tls_pump(c, rev);
		if (got && c->st == C_OPEN)
			on_data(c);
		if (c->st == C_OPEN && g_mode == M_UPLOAD && g_phase == PH_RUN)
			upload_fill(c);
		if (c->st != C_FAILED && c->st != C_DONE)
			tls_pump(c, 0);
		return;
	}
#endif
	if (rev & (POLLIN | POLLHUP | POLLERR)) {
		ssize_t r = read(c->fd, g_rbuf, RBUF_SIZE);
		if (r > 0) {
			process_in(c, g_rbuf, (size_t)r);
			got = 1;
		} else if (r == 0) {
			c->eof = 1;
			on_peer_close(c);
		} else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
			conn_fail(c, "read: %s", strerror(errno));
		}
	}
	if (got && c->st == C_OPEN)
		on_data(c);
	if (c->st == C_OPEN && g_mode == M_UPLOAD && g_phase == PH_RUN)
		upload_fill(c);
	if ((c->st == C_OPEN || c->st == C_HS) && (c->olen > c->ooff || c->shut_after_flush))
		plain_flush(c);
}

/* One poll turn over the active set; finished connections leave it. */
static void loop_once(int timeout_ms)
{
	size_t i, n = g_nact, j;
	int r;

	for (i = 0; i < n; i++) {
		g_pfd[i].fd = g_act[i]->fd;
		g_pfd[i].events = conn_events(g_act[i]);
		g_pfd[i].revents = 0;
	}
	r = poll(g_pfd, (nfds_t)n, timeout_ms);
	if (r < 0 && errno != EINTR)
		fatal("poll: %s", strerror(errno));
	for (i = 0; r > 0 && i < n; i++) {
		struct conn *c = g_act[i];
		if (g_pfd[i].revents == 0 || c->st == C_DONE || c->st == C_FAILED)
			continue;
		conn_io(c, (unsigned)g_pfd[i].revents);
	}
	/* conn_start() may have appended during dispatch: keep those too. */
	for (i = 0, j = 0; i < g_nact; i++) {
		struct conn *c = g_act[i];
		if (c->st == C_DONE || c->st == C_FAILED) {
			conn_free(c);
		} else if (c->idle) {
			g_idle = xrealloc(g_idle, (g_nidle_open + 1) * sizeof *g_idle);
			g_idle[g_nidle_open++] = c;
		} else {
			g_act[j++] = c;
		}
	}
	g_nact = j;
}

static int ms_until(double t)
{
	double d = (t - now()) * 1000.0;
	if (d <= 0)
		return 0;
	return d > 100 ? 100 : (int)d + 1;
}

/* Open n connections, at most g_conc handshakes at a time; stop at the first failure. */
static void open_conns(unsigned long n)
{
	double limit = now() + SETUP_LIMIT_S;
	unsigned long err0 = g_errors;

	g_started = g_opened = 0;
	while (!g_sig && g_opened < n) {
		if (g_errors > err0) {
			fprintf(stderr, "loadgen: a connection failed after %lu of %lu were open\n",
			        g_opened, n);
			return;
		}
		while (g_started < n && g_started - g_opened < (unsigned long)g_conc)
			conn_start();
		if (now() > limit) {
			fprintf(stderr, "loadgen: opened only %lu of %lu connections in %.0f s\n",
			        g_opened, n, SETUP_LIMIT_S);
			g_errors++;
			return;
		}
		loop_once(100);
	}
}

static void run(void)
{
	double hard;

	if (g_nidle > 0) {
		double t = now();
		g_phase = PH_IDLE_SETUP;
		open_conns((unsigned long)g_nidle);
		g_idle_secs = now() - t;
	}
	if (g_mode == M_HOLD || g_errors > 0)
		return;
	g_phase = PH_SETUP;
	g_deadline = now() + SETUP_LIMIT_S;   /* until the mode starts running */
	if (g_mode == M_MANY) {
		open_conns((unsigned long)g_nconns);
		if (g_errors > 0)
			return;
	} else if (g_mode == M_CONNECT) {
		run_begin();
		conn_start();
	} else if (g_mode == M_BURST) {
		int i;
		run_begin();
		for (i = 0; i < g_nconns; i++)
			conn_start();
	} else {
		conn_start();
	}
	hard = now() + SETUP_LIMIT_S + g_secs + DRAIN_LIMIT_S;
	while (!g_sig) {
		double t = now();
		if (t > hard) {
			fprintf(stderr, "loadgen: run did not finish in time (phase %d)\n", (int)g_phase);
			g_errors++;
			break;
		}
		if (g_phase == PH_END)
			break;
		if (g_phase == PH_RUN && t >= g_deadline) {
			if (g_mode == M_BURST) {
				fprintf(stderr, "loadgen: only %llu of %d connections through in %.1f s\n",
				        (unsigned long long)g_msgs, g_nconns, g_secs);
				g_errors++;
			}
			g_t_end = t;
			if (g_mode != M_UPLOAD) {
				g_phase = PH_END;
				break;
			}
			g_phase = PH_DRAIN;
			if (g_nact == 1) {
				struct conn *c = g_act[0];
				if (T.ws)
					queue_close(c);
				else
					c->shut_after_flush = 1;
				conn_io(c, 0);
			}
		}
		if (g_phase == PH_DRAIN && g_upload_done)
			break;
		if (g_nact == 0) {
			if (g_phase != PH_END && g_phase != PH_DRAIN)
				fprintf(stderr, "loadgen: all connections ended (phase %d)\n", (int)g_phase);
			if (g_errors == 0 && !(g_phase == PH_DRAIN && g_upload_done))
				g_errors++;
			break;
		}
		loop_once(ms_until(g_phase == PH_RUN ? g_deadline : hard));
	}
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double pct(double p)
{
	size_t i;
	if (g_nsamples == 0)
		return 0;
	i = (size_t)(p * (double)(g_nsamples - 1) + 0.5);
	return g_samples[i];
}

/* Count held connections the far side has closed (or sent anything on). */
static size_t idle_dead(void)
{
	size_t i, dead = 0;
	struct pollfd p;

	for (i = 0; i < g_nidle_open; i++) {
		p.fd = g_idle[i]->fd;
		p.events = POLLIN;
		p.revents = 0;
		if (poll(&p, 1, 0) != 0)
			dead++;
	}
	return dead;
}

static void report(void)
{
	double el;
	unsigned long long bytes = 0;

	if (g_t_end < g_t_start)
		g_t_end = now();   /* the run failed before its end */
	el = g_t_end - g_t_start;

	if (el <= 0)
		el = 1e-9;
	printf("mode=%s url=%s raw=%d tls=%d size=%lu", mode_names[g_mode], g_url, !T.ws, T.tls,
	       (unsigned long)g_size);
	if (g_mode == M_MANY || g_mode == M_BURST)
		printf(" conns=%d", g_nconns);
	if (g_resume)
		printf(" resumed=%lu", g_resumed);
	if (g_mode == M_ECHO)
		printf(" window=%lu", (unsigned long)g_window);
	if (g_mode != M_HOLD)
		printf(" secs=%.3f", el);
	switch (g_mode) {
	case M_UPLOAD:
	case M_DOWNLOAD:
	case M_ECHO:
		bytes = g_bytes;
		printf(" bytes=%llu mb_per_s=%.1f msgs_per_s=%.0f", bytes, (double)bytes / el / 1e6,
		       (double)bytes / (double)g_size / el);
		break;
	case M_LATENCY:
	case M_MANY:
	case M_CONNECT:
	case M_BURST:
		qsort(g_samples, g_nsamples, sizeof *g_samples, cmp_double);
		printf(" msgs=%llu msgs_per_s=%.0f p50_us=%.1f p99_us=%.1f p999_us=%.1f",
		       (unsigned long long)g_msgs, (double)g_msgs / el, pct(0.5), pct(0.99), pct(0.999));
		break;
	case M_HOLD:
		break;
	}
	if (g_nidle > 0)
		printf(" idle=%d idle_open=%lu idle_secs=%.2f idle_dead=%lu", g_nidle,
		       (unsigned long)g_nidle_open, g_idle_secs, (unsigned long)idle_dead());
	printf(" errors=%lu verify=%s\n", g_errors, g_verify_bad ? "bad" : "ok");
	fflush(stdout);
}

/* Close everything with RST, so no TIME_WAIT is left behind. */
static void close_all(void)
{
	size_t i;

	for (i = 0; i < g_nidle_open; i++)
		conn_free(g_idle[i]);
	for (i = 0; i < g_nact; i++)
		conn_free(g_act[i]);
	g_nidle_open = g_nact = 0;
}

/* ---- command line ---- */

static void parse_url(const char *u)
{
	const char *hp, *slash, *colon;
	char host[128];
	struct sockaddr_in *sin = (struct sockaddr_in *)&T.sa;
	size_t hl;
	long port;

	memset(&T, 0, sizeof T);
	if (strncmp(u, "unix:", 5) == 0) {
		struct sockaddr_un *sun = (struct sockaddr_un *)&T.sa;
		if (strlen(u + 5) >= sizeof sun->sun_path)
			fatal("unix path too long");
		sun->sun_family = AF_UNIX;
		strcpy(sun->sun_path, u + 5);
		T.family = AF_UNIX;
		T.salen = sizeof *sun;
		return;
	}
	if (strncmp(u, "ws://", 5) == 0) {
		T.ws = 1;
		hp = u + 5;
	} else if (strncmp(u, "wss://", 6) == 0) {
		T.ws = T.tls = 1;
		hp = u + 6;
	} else if (strncmp(u, "tcp://", 6) == 0) {
		hp = u + 6;
	} else if (strncmp(u, "tls://", 6) == 0) {
		T.tls = 1;
		hp = u + 6;
	} else {
		fatal("unsupported URL %s (ws://, wss://, tcp://, tls://, unix:PATH)", u);
		return;
	}
	slash = strchr(hp, '/');
	hl = slash ? (size_t)(slash - hp) : strlen(hp);
	if (hl >= sizeof T.hostport)
		fatal("host too long");
	memcpy(T.hostport, hp, hl);
	T.hostport[hl] = '\0';
	snprintf(T.path, sizeof T.path, "%s", slash ? slash : "/");
	colon = strrchr(T.hostport, ':');
	if (colon == NULL)
		fatal("URL needs a port: %s", u);
	if ((size_t)(colon - T.hostport) >= sizeof host)
		fatal("host too long");
	memcpy(host, T.hostport, (size_t)(colon - T.hostport));
	host[colon - T.hostport] = '\0';
	port = strtol(colon + 1, NULL, 10);
	if (port <= 0 || port > 65535)
		fatal("bad port in %s", u);
	if (strcmp(host, "localhost") == 0)
		strcpy(host, "127.0.0.1");
	sin->sin_family = AF_INET;
	sin->sin_port = htons((uint16_t)port);
	if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
		fatal("only IPv4 literals are supported: %s", host);
	T.family = AF_INET;
	T.salen = sizeof *sin;
}

static void usage(void)
{
	fprintf(stderr,
	        "usage: loadgen --url URL --mode upload|download|echo|latency|many|connect|hold|burst\n"
	        "               [--raw] [--resume] [--size BYTES] [--window BYTES] [--conns N] [--idle N]\n"
	        "               [--secs S] [--count N] [--concurrency N] [--ca PEM]\n"
	        "               [--servername NAME] [--ready-file PATH]\n"
	        "URL: ws://127.0.0.1:PORT/ wss://... tcp://127.0.0.1:PORT tls://... unix:PATH\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct sigaction sa;
	struct rlimit rl;
	int i;

	for (i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--raw") == 0) {
			g_force_raw = 1;
			continue;
		}
		if (strcmp(a, "--resume") == 0) {
			g_resume = 1;
			continue;
		}
		if (v == NULL)
			usage();
		i++;
		if (strcmp(a, "--url") == 0) {
			g_url = v;
		} else if (strcmp(a, "--mode") == 0) {
			size_t m;
			for (m = 0; m < sizeof mode_names / sizeof mode_names[0]; m++)
				if (strcmp(v, mode_names[m]) == 0)
					break;
			if (m == sizeof mode_names / sizeof mode_names[0])
				usage();
			g_mode = (enum mode)m;
		} else if (strcmp(a, "--size") == 0) {
			g_size = (size_t)strtoul(v, NULL, 10);
			g_size_given = 1;
		} else if (strcmp(a, "--window") == 0) {
			g_window = (size_t)strtoul(v, NULL, 10);
		} else if (strcmp(a, "--conns") == 0) {
			g_nconns = atoi(v);
		} else if (strcmp(a, "--idle") == 0) {
			g_nidle = atoi(v);
		} else if (strcmp(a, "--concurrency") == 0) {
			g_conc = atoi(v);
		} else if (strcmp(a, "--secs") == 0) {
			g_secs = atof(v);
		} else if (strcmp(a, "--count") == 0) {
			g_count = strtoul(v, NULL, 10);
		} else if (strcmp(a, "--ca") == 0) {
			g_ca_file = v;
		} else if (strcmp(a, "--servername") == 0) {
			g_servername = v;
		} else if (strcmp(a, "--ready-file") == 0) {
			g_ready_file = v;
		} else {
			usage();
		}
	}
	if (g_url == NULL)
		usage();
	parse_url(g_url);
	if (g_force_raw)
		T.ws = 0;
	if (g_size == 0 && !(g_size_given && g_mode == M_CONNECT && !T.ws && !T.tls))
		g_size = g_mode == M_LATENCY ? 64 : g_mode == M_MANY ? 4096 : g_mode == M_CONNECT ? 1 : 65536;
	if (g_size > PATTERN_MAX_CHUNK || g_nconns < 1 || g_nidle < 0 || g_conc < 1 ||
	    g_secs <= 0 || g_secs > 600 || g_window < g_size)
		usage();
	if (T.tls) {
#ifdef LOADGEN_TLS
		if (g_ca_file == NULL)
			fatal("TLS needs --ca FILE");
		load_ca(g_ca_file);
#else
		fatal("built without TLS (compile with -DLOADGEN_TLS and BearSSL)");
#endif
	}

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);

	pattern_init();
	g_rbuf = xrealloc(NULL, RBUF_SIZE);
	g_rng ^= (uint64_t)getpid() << 20 ^ (uint64_t)(now() * 1e6);

	run();
	if (g_mode == M_HOLD) {
		double end = now() + g_secs;
		report();
		if (g_ready_file != NULL) {
			FILE *f = fopen(g_ready_file, "w");
			if (f)
				fclose(f);
		}
		while (!g_sig && now() < end) {
			struct timespec ts = { 0, 50 * 1000 * 1000 };
			nanosleep(&ts, NULL);
		}
		close_all();
		return g_errors ? 1 : 0;
	}
	if (g_errors == 0 && g_mode != M_CONNECT && g_bytes == 0 && g_msgs == 0) {
		fprintf(stderr, "loadgen: no data moved during the run\n");
		g_errors++;
	}
	report();
	close_all();
	return g_errors || g_verify_bad ? 1 : 0;
}
