/*
 * engine.c - the database-engine stand-in for wsproxy's benchmark.
 *
 * Listens on a Unix socket and serves every connection in one of three
 * modes, on one thread, from one event loop:
 *
 *   echo    writes back every byte it reads (read stops while the
 *           connection's buffer is full, so a slow reader is not buffered
 *           without bound);
 *   sink    reads and discards; closes on EOF;
 *   source  writes an endless test pattern (the same one loadgen checks)
 *           and discards whatever it reads.
 *
 * A PROXY protocol header (v2 binary or v1 text) at the start of a
 * connection is skipped, so the benchmark measures wsproxy with its default
 * configuration (proxy_protocol = v2) and the echo stream stays clean.
 *
 * The loop uses epoll on Linux so that thousands of idle connections cost
 * the engine nothing per turn: the benchmark measures what idle connections
 * cost the *proxy*.  Elsewhere, or with --poll, it uses poll().
 *
 * Usage: engine --socket PATH [--mode echo|sink|source] [--buf BYTES] [--poll]
 * Stops cleanly on SIGTERM/SIGINT (and unlinks the socket).
 */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/epoll.h>
#endif

#include "pattern.h"

enum { M_ECHO, M_SINK, M_SOURCE };

/* Detection of the PROXY header: still looking, or passing data through. */
enum { H_DETECT, H_PASS };

struct conn {
	int fd;
	int hdr;              /* H_DETECT / H_PASS */
	int eof;              /* the client half-closed (echo drains, then closes) */
	unsigned want;        /* events currently registered */
	unsigned char *buf;   /* echo: buf[start..end) still to be written back */
	size_t start, end;
	uint64_t off;         /* source: stream offset of the next byte */
};

static volatile sig_atomic_t g_stop;
static int g_mode = M_ECHO;
static size_t g_bufsz = 128 * 1024;
static int g_use_poll;
static struct conn **g_conns;   /* indexed by fd */
static int g_maxfd;             /* size of g_conns and g_pfd */
static struct pollfd *g_pfd;    /* poll mode: indexed by fd */
static int g_npfd;              /* poll mode: highest fd in use + 1 */
#ifdef __linux__
static int g_ep = -1;
#endif
static unsigned char *g_scratch; /* sink/source reads */

static void on_signal(int sig)
{
	(void)sig;
	g_stop = 1;
}

static void die(const char *what)
{
	fprintf(stderr, "engine: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* Register interest `ev` (POLLIN/POLLOUT bits) for fd; 0 removes it. */
static void ev_set(int fd, unsigned ev, unsigned *cur, int is_new)
{
	if (!is_new && *cur == ev)
		return;
#ifdef __linux__
	if (!g_use_poll) {
		struct epoll_event e;
		memset(&e, 0, sizeof e);
		e.data.fd = fd;
		if (ev & POLLIN)
			e.events |= EPOLLIN;
		if (ev & POLLOUT)
			e.events |= EPOLLOUT;
		if (epoll_ctl(g_ep, is_new ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &e) < 0)
			die("epoll_ctl");
		*cur = ev;
		return;
	}
#endif
	g_pfd[fd].fd = fd;
	g_pfd[fd].events = (short)ev;
	if (fd + 1 > g_npfd)
		g_npfd = fd + 1;
	*cur = ev;
}

static void conn_close(struct conn *c)
{
	int fd = c->fd;
#ifdef __linux__
	if (!g_use_poll)
		epoll_ctl(g_ep, EPOLL_CTL_DEL, fd, NULL);
#endif
	if (g_use_poll) {
		g_pfd[fd].fd = -1;
		g_pfd[fd].events = 0;
		while (g_npfd > 0 && g_pfd[g_npfd - 1].fd < 0)
			g_npfd--;
	}
	close(fd);
	g_conns[fd] = NULL;
	free(c->buf);
	free(c);
}

/*
 * Look at the first bytes of an echo connection for a PROXY header.
 * Returns 1 when decided (c->start moved past any header), 0 when more
 * bytes are needed, -1 for a malformed header.
 */
static int hdr_detect(struct conn *c)
{
	static const unsigned char sig2[12] = {
		0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A
	};
	const unsigned char *p = c->buf + c->start;
	size_t n = c->end - c->start, i, k;

	if (n == 0)
		return 0;
	k = n < 12 ? n : 12;
	if (memcmp(p, sig2, k) == 0) {
		size_t total;
		if (n < 16)
			return 0;
		total = 16 + ((size_t)p[14] << 8 | p[15]);
		if (total > g_bufsz)
			return -1;
		if (n < total)
			return 0;
		c->start += total;
		return 1;
	}
	k = n < 6 ? n : 6;
	if (memcmp(p, "PROXY ", k) == 0) {
		/* v1: one line of at most 107 bytes including CRLF */
		for (i = 0; i + 1 < n && i + 1 < 107; i++) {
			if (p[i] == '\r' && p[i + 1] == '\n') {
				c->start += i + 2;
				return 1;
			}
		}
		return n >= 107 ? -1 : 0;
	}
	return 1;
}

/* Derive the interest of a connection from its state. */
static void conn_interest(struct conn *c, int is_new)
{
	unsigned ev = 0;

	switch (g_mode) {
	case M_ECHO:
		if (!c->eof && (c->buf == NULL || c->end < g_bufsz))
			ev |= POLLIN;
		if (c->hdr == H_PASS && c->end > c->start)
			ev |= POLLOUT;
		break;
	case M_SINK:
		ev = POLLIN;
		break;
	case M_SOURCE:
		ev = POLLIN | POLLOUT;
		break;
	}
	ev_set(c->fd, ev, &c->want, is_new);
}

/* Returns -1 when the connection must be closed. */
static int echo_event(struct conn *c, unsigned rev)
{
	ssize_t r;

	if (c->buf == NULL) {
		c->buf = malloc(g_bufsz);
		if (c->buf == NULL)
			return -1;
		c->start = c->end = 0;
	}
	if ((rev & (POLLIN | POLLHUP | POLLERR)) && !c->eof && c->end < g_bufsz) {
		r = read(c->fd, c->buf + c->end, g_bufsz - c->end);
		if (r > 0) {
			c->end += (size_t)r;
		} else if (r == 0) {
			c->eof = 1;
		} else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
			return -1;
		}
		if (c->hdr == H_DETECT) {
			int d = hdr_detect(c);
			if (d < 0)
				return -1;
			if (d > 0 || c->eof)
				c->hdr = H_PASS;
		}
	}
	/* Write back at once: the common case needs no extra poll turn. */
	if (c->hdr == H_PASS && c->end > c->start) {
		r = write(c->fd, c->buf + c->start, c->end - c->start);
		if (r > 0) {
			c->start += (size_t)r;
		} else if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
			return -1;
		}
	}
	if (c->start == c->end) {
		c->start = c->end = 0;
		if (c->eof)
			return -1;
	} else if (c->end == g_bufsz && c->start > 0) {
		memmove(c->buf, c->buf + c->start, c->end - c->start);
		c->end -= c->start;
		c->start = 0;
	}
	return 0;
}

static int discard_read(struct conn *c)
{
	ssize_t r = read(c->fd, g_scratch, g_bufsz);
	if (r > 0)
		return 0;
	if (r == 0)
		return -1;
	return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -1;
}

static int conn_event(struct conn *c, unsigned rev)
{
	ssize_t r;

	switch (g_mode) {
	case M_ECHO:
		return echo_event(c, rev);
	case M_SINK:
		return discard_read(c);
	case M_SOURCE:
		if ((rev & (POLLIN | POLLHUP | POLLERR)) && discard_read(c) < 0)
			return -1;
		if (rev & POLLOUT) {
			r = write(c->fd, pattern_at(c->off), g_bufsz);
			if (r > 0)
				c->off += (uint64_t)r;
			else if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
				return -1;
		}
		return 0;
	}
	return -1;
}

static void accept_some(int lfd)
{
	int i;

	/* A bounded batch per turn, so established connections are served too. */
	for (i = 0; i < 256; i++) {
		struct conn *c;
		int fd = accept(lfd, NULL, NULL);
		if (fd < 0)
			return;
		if (fd >= g_maxfd || set_nonblock(fd) < 0) {
			close(fd);
			continue;
		}
		c = calloc(1, sizeof *c);
		if (c == NULL) {
			close(fd);
			continue;
		}
		c->fd = fd;
		c->hdr = g_mode == M_ECHO ? H_DETECT : H_PASS;
		g_conns[fd] = c;
		conn_interest(c, 1);
	}
}

static void handle(int fd, unsigned rev, int lfd)
{
	struct conn *c;

	if (fd == lfd) {
		accept_some(lfd);
		return;
	}
	c = g_conns[fd];
	if (c == NULL)
		return;
	if (conn_event(c, rev) < 0)
		conn_close(c);
	else
		conn_interest(c, 0);
}

int main(int argc, char **argv)
{
	const char *path = NULL;
	struct sockaddr_un sa;
	struct sigaction sact;
	struct rlimit rl;
	unsigned lwant = 0;
	int lfd, i;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--socket") == 0 && i + 1 < argc) {
			path = argv[++i];
		} else if (strcmp(argv[i], "--mode") == 0 && i + 1 < argc) {
			const char *m = argv[++i];
			if (strcmp(m, "echo") == 0)
				g_mode = M_ECHO;
			else if (strcmp(m, "sink") == 0)
				g_mode = M_SINK;
			else if (strcmp(m, "source") == 0)
				g_mode = M_SOURCE;
			else
				goto usage;
		} else if (strcmp(argv[i], "--buf") == 0 && i + 1 < argc) {
			g_bufsz = (size_t)strtoul(argv[++i], NULL, 10);
			if (g_bufsz < 4096 || g_bufsz > PATTERN_MAX_CHUNK)
				goto usage;
		} else if (strcmp(argv[i], "--poll") == 0) {
			g_use_poll = 1;
		} else {
			goto usage;
		}
	}
	if (path == NULL || strlen(path) >= sizeof sa.sun_path)
		goto usage;
#ifndef __linux__
	g_use_poll = 1;
#endif

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		die("getrlimit");
	g_maxfd = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > 1048576 ? 1048576 : (int)rl.rlim_cur;

	memset(&sact, 0, sizeof sact);
	sact.sa_handler = on_signal;
	sigaction(SIGTERM, &sact, NULL);
	sigaction(SIGINT, &sact, NULL);
	sact.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sact, NULL);

	pattern_init();
	g_conns = calloc((size_t)g_maxfd, sizeof *g_conns);
	g_scratch = malloc(g_bufsz);
	if (g_conns == NULL || g_scratch == NULL)
		die("malloc");
	if (g_use_poll) {
		g_pfd = calloc((size_t)g_maxfd, sizeof *g_pfd);
		if (g_pfd == NULL)
			die("malloc");
		for (i = 0; i < g_maxfd; i++)
			g_pfd[i].fd = -1;
	}
#ifdef __linux__
	else {
		g_ep = epoll_create1(0);
		if (g_ep < 0)
			die("epoll_create1");
	}
#endif

	lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (lfd < 0)
		die("socket");
	memset(&sa, 0, sizeof sa);
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	unlink(path);
	if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0)
		die("bind");
	if (listen(lfd, 4096) < 0)
		die("listen");
	if (set_nonblock(lfd) < 0)
		die("fcntl");
	ev_set(lfd, POLLIN, &lwant, 1);

	while (!g_stop) {
#ifdef __linux__
		if (!g_use_poll) {
			struct epoll_event evs[256];
			int n = epoll_wait(g_ep, evs, 256, 200), k;
			if (n < 0) {
				if (errno == EINTR)
					continue;
				die("epoll_wait");
			}
			for (k = 0; k < n; k++) {
				unsigned rev = 0;
				if (evs[k].events & EPOLLIN)
					rev |= POLLIN;
				if (evs[k].events & EPOLLOUT)
					rev |= POLLOUT;
				/* Errors and hangups surface through the next read/write. */
				if (evs[k].events & (EPOLLERR | EPOLLHUP))
					rev |= POLLIN | POLLOUT;
				handle(evs[k].data.fd, rev, lfd);
			}
			continue;
		}
#endif
		{
			int n = poll(g_pfd, (nfds_t)g_npfd, 200), fd;
			if (n < 0) {
				if (errno == EINTR)
					continue;
				die("poll");
			}
			for (fd = 0; fd < g_npfd && n > 0; fd++) {
				unsigned rev = (unsigned)g_pfd[fd].revents;
				if (g_pfd[fd].fd < 0 || rev == 0)
					continue;
				n--;
				g_pfd[fd].revents = 0;
				if (rev & (POLLERR | POLLHUP))
					rev |= POLLIN | POLLOUT;
				handle(fd, rev, lfd);
			}
		}
	}

	for (i = 0; i < g_maxfd; i++)
		if (g_conns[i] != NULL)
			conn_close(g_conns[i]);
	close(lfd);
	unlink(path);
	return 0;

usage:
	fprintf(stderr, "usage: engine --socket PATH [--mode echo|sink|source] [--buf BYTES] [--poll]\n");
	return 2;
}
