/*
 * LD_PRELOAD shim for test_faults.py (plain build only: ASan insists on
 * coming first).  It fakes what the kernel does rarely:
 *
 *   WSPROXY_SHIM_ACCEPT=ENETDOWN,EPERM,...   the next accept()/accept4()
 *       calls fail with these errno values, one each, before the real
 *       call runs (the pending connection stays queued, as when Linux
 *       reports a new connection's network error);
 *   every socket() without SOCK_CLOEXEC and every pipe() is reported on
 *       stderr ("shim: ..."), since a host thread that forks in between
 *       would leak the descriptor;
 *   WSPROXY_SHIM_THREAD_CLOCK=fail   clock_gettime(CLOCK_THREAD_CPUTIME_ID)
 *       fails with EINVAL, as where that optional POSIX clock is missing,
 *       and leaves in the timespec what an unset one might hold (0 and
 *       10^6 s in turn), so a caller that ignores the failure shows it;
 *   WSPROXY_SHIM_NODELAY=1: every TCP_NODELAY set on a socket not yet
 *       bound to a port (an engine socket before its connect; accepted
 *       client sockets have the listener's) is reported on stderr.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int queue[64], nqueue, next, loaded;

static int errno_named(const char *s, size_t n)
{
    static const struct { const char *name; int value; } t[] = {
        {"ENETDOWN", ENETDOWN}, {"ENOPROTOOPT", ENOPROTOOPT}, {"EHOSTDOWN", EHOSTDOWN},
        {"ENONET", ENONET}, {"EHOSTUNREACH", EHOSTUNREACH}, {"EOPNOTSUPP", EOPNOTSUPP},
        {"ENETUNREACH", ENETUNREACH}, {"EPERM", EPERM}, {"ECONNABORTED", ECONNABORTED},
        {"EPROTO", EPROTO}, {"EINTR", EINTR}, {"EACCES", EACCES}};
    size_t i;
    for (i = 0; i < sizeof t / sizeof t[0]; i++)
        if (strlen(t[i].name) == n && !memcmp(t[i].name, s, n))
            return t[i].value;
    return 0;
}

/* The next injected errno, or 0 to run the real call. */
static int injected(void)
{
    int e = 0;
    pthread_mutex_lock(&mu);
    if (!loaded) {
        const char *s = getenv("WSPROXY_SHIM_ACCEPT");
        loaded = 1;
        while (s && *s && nqueue < 64) {
            size_t n = strcspn(s, ",");
            if ((queue[nqueue] = errno_named(s, n)) != 0)
                nqueue++;
            s += n + (s[n] == ',');
        }
    }
    if (next < nqueue)
        e = queue[next++];
    pthread_mutex_unlock(&mu);
    return e;
}

int accept4(int fd, struct sockaddr *a, socklen_t *len, int flags)
{
    static int (*real)(int, struct sockaddr *, socklen_t *, int);
    int e = injected();
    if (e) {
        errno = e;
        return -1;
    }
    if (!real)
        *(void **)&real = dlsym(RTLD_NEXT, "accept4");
    return real(fd, a, len, flags);
}

int accept(int fd, struct sockaddr *a, socklen_t *len)
{
    return accept4(fd, a, len, 0);
}

static void report(const char *what)
{
    if (write(2, what, strlen(what)) < 0) {
    }
}

int socket(int domain, int type, int protocol)
{
    static int (*real)(int, int, int);
    if (!real)
        *(void **)&real = dlsym(RTLD_NEXT, "socket");
    if (!(type & SOCK_CLOEXEC))
        report("shim: socket() without SOCK_CLOEXEC\n");
    return real(domain, type, protocol);
}

int pipe(int fds[2])
{
    static int (*real)(int *);
    if (!real)
        *(void **)&real = dlsym(RTLD_NEXT, "pipe");
    report("shim: pipe() without O_CLOEXEC\n");
    return real(fds);
}

int clock_gettime(clockid_t id, struct timespec *ts)
{
    static int (*real)(clockid_t, struct timespec *);
    static int turn;
    const char *v = getenv("WSPROXY_SHIM_THREAD_CLOCK");
    if (id == CLOCK_THREAD_CPUTIME_ID && v && !strcmp(v, "fail")) {
        pthread_mutex_lock(&mu);
        ts->tv_sec = turn++ % 2 ? 1000000 : 0;
        pthread_mutex_unlock(&mu);
        ts->tv_nsec = 0;
        errno = EINVAL;
        return -1;
    }
    if (!real)
        *(void **)&real = dlsym(RTLD_NEXT, "clock_gettime");
    return real(id, ts);
}

int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
    static int (*real)(int, int, int, const void *, socklen_t);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (!real)
        *(void **)&real = dlsym(RTLD_NEXT, "setsockopt");
    if (getenv("WSPROXY_SHIM_NODELAY") && level == IPPROTO_TCP && name == TCP_NODELAY &&
        getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 &&
        ((ss.ss_family == AF_INET && !((struct sockaddr_in *)&ss)->sin_port) ||
         (ss.ss_family == AF_INET6 && !((struct sockaddr_in6 *)&ss)->sin6_port)))
        report("shim: TCP_NODELAY on an engine socket\n");
    return real(fd, level, name, val, len);
}
