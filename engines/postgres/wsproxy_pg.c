/*
 * wsproxy_pg.c - wsproxy as a PostgreSQL extension.
 *
 * With shared_preload_libraries = 'wsproxy' a background worker runs one
 * ws_proxy (../../wsproxy.c, compiled in unchanged) in front of the
 * server's own Unix socket.  Its configuration is the wsproxy.* GUCs; it
 * starts with the worker and is restarted only by wsproxy_restart(), which
 * either fails with an ERROR (the proxy goes on exactly as before) or leaves
 * it serving as the settings say.  wsproxy_status() gives its real state,
 * wsproxy_clients() the relayed sessions.  See README.md next to this file.
 *
 * Processes.  The worker owns the proxy handle; SQL functions run in other
 * backends and talk to it through shared memory (struct wsp_shared): a
 * backend posts a request (req_seq, and req_restart for a restart), sets the
 * worker's latch and waits until done_seq reaches its request; the worker
 * answers with the outcome and a status snapshot.  Concurrent requests are
 * answered together: each asks for "apply the settings in force now".
 *
 * Threads.  Inside the worker the proxy's loop thread calls conn_log() and
 * conn_told(); they touch only the spinlock-guarded client table in shared
 * memory and a process-local ring of log lines under a pthread mutex, never
 * PostgreSQL's memory or error machinery.  The worker's main thread drains
 * the ring into the server log.
 *
 * Identity.  The relay is the postgres OS user, so pg_hba.conf's
 * `local all postgres peer` (Debian's first line) would let any browser in
 * as the superuser, and a `trust` line would do the same for its role.  A
 * backend whose peer is the worker (SO_PEERCRED names the worker's pid: the
 * kernel records who connected, so this is exact) is a relayed session, and
 * ClientAuthentication_hook ends it unless it authenticated with a method
 * that proves a secret: trust, peer and ident are refused.
 */
#include "postgres.h"

#include <pthread.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fmgr.h"
#include "funcapi.h"
#include "libpq/auth.h"
#include "libpq/hba.h"
#include "libpq/libpq-be.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "postmaster/postmaster.h"
#include "postmaster/syslogger.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/elog.h"
#include "utils/guc.h"
#include "utils/inet.h"
#include "utils/wait_event.h"

#include "wsproxy.h"

PG_MODULE_MAGIC;

#define WSP_ERRLEN 512
#define WSP_PATHLEN 1024
#define WSP_ORIGINLEN 256

/* ==== GUCs ================================================================ */

static int opt_http_port, opt_https_port;
static char *opt_bind_address, *opt_ssl_cert_file, *opt_ssl_key_file,
    *opt_allowed_origins, *opt_log_directory;
static int opt_max_connections, opt_max_connections_per_ip, opt_max_message;
static int opt_handshake_timeout, opt_idle_timeout, opt_ping_interval, opt_drain_timeout;

static void guc_define(void)
{
    DefineCustomIntVariable("wsproxy.http_port",
        "TCP port for ws:// (0 = off); applied by wsproxy_restart().",
        "At most one of wsproxy.http_port and wsproxy.https_port may be set.",
        &opt_http_port, 0, 0, 65535, PGC_SIGHUP, 0, NULL, NULL, NULL);
    DefineCustomIntVariable("wsproxy.https_port",
        "TCP port for wss:// (0 = off); applied by wsproxy_restart().",
        NULL, &opt_https_port, 0, 0, 65535, PGC_SIGHUP, 0, NULL, NULL, NULL);
    DefineCustomStringVariable("wsproxy.bind_address",
        "Numeric IPv4 or IPv6 address to listen on.",
        "Empty: the loopback address listen_addresses names (127.0.0.1 by default).",
        &opt_bind_address, "", PGC_SIGHUP, 0, NULL, NULL, NULL);
    DefineCustomStringVariable("wsproxy.ssl_cert_file",
        "PEM certificate chain for wss://; empty = the server's ssl_cert_file.",
        NULL, &opt_ssl_cert_file, "", PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
    DefineCustomStringVariable("wsproxy.ssl_key_file",
        "PEM private key for wss://; empty = the server's ssl_key_file.",
        NULL, &opt_ssl_key_file, "", PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
    DefineCustomStringVariable("wsproxy.allowed_origins",
        "Origins allowed to connect, comma or space separated; empty = any.",
        NULL, &opt_allowed_origins, "", PGC_SIGHUP, 0, NULL, NULL, NULL);
    DefineCustomStringVariable("wsproxy.log_directory",
        "Directory of websocket_proxy.log; empty = log_directory when "
        "logging_collector is on, else no file (lines go to the server log).",
        NULL, &opt_log_directory, "", PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
    DefineCustomIntVariable("wsproxy.max_connections",
        "Open WebSocket connections at most.", NULL,
        &opt_max_connections, 1024, 1, 1000000, PGC_SIGHUP, 0, NULL, NULL, NULL);
    DefineCustomIntVariable("wsproxy.max_connections_per_ip",
        "Open WebSocket connections per client IP address; 0 = unlimited.", NULL,
        &opt_max_connections_per_ip, 0, 0, 1000000, PGC_SIGHUP, 0, NULL, NULL, NULL);
    DefineCustomIntVariable("wsproxy.max_message",
        "Largest WebSocket message; 0 = no limit.", NULL,
        &opt_max_message, 0, 0, INT_MAX, PGC_SIGHUP, GUC_UNIT_BYTE, NULL, NULL, NULL);
    DefineCustomIntVariable("wsproxy.handshake_timeout",
        "Time from accept to a complete handshake.", NULL,
        &opt_handshake_timeout, 10000, 1, 3600000, PGC_SIGHUP, GUC_UNIT_MS,
        NULL, NULL, NULL);
    DefineCustomIntVariable("wsproxy.idle_timeout",
        "Close a WebSocket with no data either way for this long; 0 = never.", NULL,
        &opt_idle_timeout, 0, 0, INT_MAX, PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
    DefineCustomIntVariable("wsproxy.ping_interval",
        "Ping a client silent this long, close it if no answer; 0 = never.", NULL,
        &opt_ping_interval, 0, 0, INT_MAX, PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
    DefineCustomIntVariable("wsproxy.drain_timeout",
        "Bound of every closing exchange.", NULL,
        &opt_drain_timeout, 5000, 1, 3600000, PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
    MarkGUCPrefixReserved("wsproxy");
}

/* ==== Shared memory ======================================================= */

/* One relayed session: an engine connection the worker opened. */
struct wsp_client {
    uint64 id;            /* the proxy's connection id; 0 = free slot */
    int pid;              /* the backend's, once it has authenticated; 0 = not yet */
    int client_port, tls;
    int engine_port;      /* local port of the engine connection; 0 = Unix socket */
    char engine_addr[64]; /* its local address: what the backend sees as its peer */
    char client_addr[64], origin[WSP_ORIGINLEN];
};

struct wsp_shared {
    slock_t mu; /* guards everything below */
    int worker_pid;     /* 0 = no worker */
    Latch *worker_latch;
    /* The worker got SIGTERM: the server is stopping.  The proxy's
     * going_away flag: sessions that end now close with 1001. */
    volatile unsigned char stopping;
    uint64 req_seq, done_seq;
    int req_restart;    /* a restart is asked for (up to req_seq) */
    int done_rc;        /* outcome of the restart that answered done_seq */
    char done_err[WSP_ERRLEN];
    struct ws_proxy_status st; /* snapshot as of done_seq */
    char reason[WSP_ERRLEN];   /* st.reason, or why the worker holds no proxy */
    int nclients;              /* slots in clients[] */
    int unrecorded;            /* open sessions not in clients[]: it was full */
    struct wsp_client clients[FLEXIBLE_ARRAY_MEMBER];
};

static struct wsp_shared *g_sh;
static shmem_request_hook_type prev_shmem_request_hook;
static shmem_startup_hook_type prev_shmem_startup_hook;
static ClientAuthentication_hook_type prev_client_auth_hook;

/* Relayed sessions are backends: at most MaxConnections and a few more
 * that the postmaster refuses as "too many clients". */
static int table_slots(void)
{
    return MaxConnections * 2 + 64;
}

static Size shared_size(void)
{
    return add_size(offsetof(struct wsp_shared, clients),
                    mul_size(table_slots(), sizeof(struct wsp_client)));
}

static void shmem_request(void)
{
    if (prev_shmem_request_hook)
        prev_shmem_request_hook();
    RequestAddinShmemSpace(shared_size());
}

static void shmem_startup(void)
{
    bool found;
    if (prev_shmem_startup_hook)
        prev_shmem_startup_hook();
    LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
    g_sh = ShmemInitStruct("wsproxy", shared_size(), &found);
    if (!found) {
        memset(g_sh, 0, shared_size());
        SpinLockInit(&g_sh->mu);
        g_sh->nclients = table_slots();
    }
    LWLockRelease(AddinShmemInitLock);
}

/* ==== The worker's proxy =================================================
 * Everything here runs in the worker: its main thread, or (conn_log,
 * conn_told) the proxy's loop thread. */

static ws_proxy *g_proxy; /* NULL: none, g_state/g_reason say why */
static int g_state = WS_PROXY_STOPPED;
static char g_reason[WSP_ERRLEN];
static volatile sig_atomic_t got_sigterm;

/* Log lines from the loop thread, waiting for the main thread. */
#define LOG_RING 64
static pthread_mutex_t g_log_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    int level;
    char line[512];
} g_log[LOG_RING];
static unsigned g_log_head, g_log_tail, g_log_lost;
static int g_log_all; /* no websocket_proxy.log: every line goes to the server log */

static void conn_log(void *user, int level, const char *line)
{
    (void)user;
    if (level > WS_PROXY_LOG_WARN && !g_log_all)
        return;
    /* The library warns at every start that the PROXY header is off; here
     * client_auth stands in for it, and the worker says so instead. */
    if (!strncmp(line, "[proxy] proxy_protocol is off", 29))
        return;
    pthread_mutex_lock(&g_log_mu);
    if (g_log_head - g_log_tail < LOG_RING) {
        g_log[g_log_head % LOG_RING].level = level;
        strlcpy(g_log[g_log_head % LOG_RING].line, line, sizeof g_log[0].line);
        g_log_head++;
    } else {
        g_log_lost++;
    }
    pthread_mutex_unlock(&g_log_mu);
}

/* Main thread: the queued lines into the server log. */
static void log_drain(void)
{
    for (;;) {
        int level;
        char line[512];
        unsigned lost;
        pthread_mutex_lock(&g_log_mu);
        lost = g_log_lost;
        g_log_lost = 0;
        if (g_log_tail == g_log_head) {
            pthread_mutex_unlock(&g_log_mu);
            if (lost)
                ereport(LOG, (errmsg("wsproxy: %u log lines lost", lost)));
            return;
        }
        level = g_log[g_log_tail % LOG_RING].level;
        strlcpy(line, g_log[g_log_tail % LOG_RING].line, sizeof line);
        g_log_tail++;
        pthread_mutex_unlock(&g_log_mu);
        ereport(level == WS_PROXY_LOG_ERROR ? LOG : level == WS_PROXY_LOG_WARN ? WARNING : LOG,
                (errmsg("wsproxy: %s", line)));
    }
}

/* The proxy's loop thread: record and forget relayed sessions.  A session
 * that finds no free slot is counted in unrecorded, and while any is open a
 * loopback peer that is not in the table counts as relayed (client_auth):
 * a full table never lets a relayed session pass for a local client. */
static void conn_told(void *user, int event, const struct ws_proxy_conn_info *ci)
{
    struct wsp_client *slot = NULL;
    int i;
    (void)user;
    SpinLockAcquire(&g_sh->mu);
    for (i = 0; i < g_sh->nclients && !slot; i++)
        if (event == WS_PROXY_CONN_CLOSE ? g_sh->clients[i].id == ci->id
                                         : !g_sh->clients[i].id)
            slot = &g_sh->clients[i];
    if (event == WS_PROXY_CONN_CLOSE) {
        if (slot)
            slot->id = 0;
        else if (g_sh->unrecorded > 0)
            g_sh->unrecorded--;
    } else if (slot) {
        slot->id = ci->id;
        slot->pid = 0;
        slot->client_port = ci->client_port;
        slot->tls = ci->tls;
        slot->engine_port = ci->engine_port;
        strlcpy(slot->engine_addr, ci->engine_addr, sizeof slot->engine_addr);
        strlcpy(slot->client_addr, ci->client_addr, sizeof slot->client_addr);
        strlcpy(slot->origin, ci->origin, sizeof slot->origin);
    } else {
        g_sh->unrecorded++;
    }
    SpinLockRelease(&g_sh->mu);
}

/* A configuration with its strings, copied from the GUCs. */
struct wsp_cfg {
    struct ws_proxy_config c;
    char bind[64], cert[WSP_PATHLEN], key[WSP_PATHLEN], log_dir[WSP_PATHLEN],
        origins[4096], sock[WSP_PATHLEN];
};

static int copy_str(char *dst, size_t size, const char *src, const char *what,
                    char *err, size_t errlen)
{
    if (strlcpy(dst, src ? src : "", size) >= size) {
        snprintf(err, errlen, "%s is longer than %zu bytes", what, size - 1);
        return -1;
    }
    return 0;
}

/* The first loopback address listen_addresses names, else 127.0.0.1: never
 * every interface unless wsproxy.bind_address says so. */
static void default_bind(char *dst, size_t size)
{
    const char *s = ListenAddresses ? ListenAddresses : "";
    strlcpy(dst, "127.0.0.1", size);
    while (*s) {
        size_t n;
        s += strspn(s, ", \t");
        n = strcspn(s, ", \t");
        if (n == 3 && !strncmp(s, "::1", 3)) {
            strlcpy(dst, "::1", size);
            return;
        }
        if ((n == 9 && !strncmp(s, "localhost", 9)) || (n >= 4 && !strncmp(s, "127.", 4))) {
            if (n < size && n != 9) {
                memcpy(dst, s, n);
                dst[n] = 0;
            }
            return;
        }
        s += n;
    }
}

/* The engine address: the server's own TCP listener on loopback when
 * listen_addresses covers it (pg_hba.conf's host lines then apply, and the
 * backend finds its session by its peer's port), else its Unix socket (the
 * first of unix_socket_directories; relayed sessions are then known by the
 * worker's pid). */
static int engine_address(char *dst, size_t size, char *err, size_t errlen)
{
    const char *s = ListenAddresses ? ListenAddresses : "", *dir;
    size_t n;
    while (*s) {
        const char *host = NULL;
        s += strspn(s, ", \t");
        n = strcspn(s, ", \t");
        if ((n == 1 && *s == '*') || (n == 7 && !strncmp(s, "0.0.0.0", 7)) ||
            (n == 9 && !strncmp(s, "localhost", 9)) || (n == 9 && !strncmp(s, "127.0.0.1", 9)))
            host = "127.0.0.1";
        else if ((n == 2 && !strncmp(s, "::", 2)) || (n == 3 && !strncmp(s, "::1", 3)))
            host = "[::1]";
        if (host) {
            snprintf(dst, size, "%s:%d", host, PostPortNumber);
            return 0;
        }
        s += n;
    }
    dir = Unix_socket_directories ? Unix_socket_directories : "";
    dir += strspn(dir, ", \t");
    n = strcspn(dir, ",");
    while (n && (dir[n - 1] == ' ' || dir[n - 1] == '\t'))
        n--;
    if (!n || dir[0] == '@') {
        snprintf(err, errlen, "the server listens neither on loopback nor on a Unix socket "
                 "in a directory: add localhost to listen_addresses");
        return -1;
    }
    if ((size_t)snprintf(dst, size, "%.*s/.s.PGSQL.%d", (int)n, dir, PostPortNumber) >= size ||
        strlen(dst) > 107) {
        snprintf(err, errlen, "the server's socket path %.*s/.s.PGSQL.%d is longer "
                 "than 107 bytes: add localhost to listen_addresses", (int)n, dir,
                 PostPortNumber);
        return -1;
    }
    return 0;
}

/* Builds the proxy's configuration from the GUCs now in force. */
static int cfg_build(struct wsp_cfg *pc, char *err, size_t errlen)
{
    const char *cert = *opt_ssl_cert_file ? opt_ssl_cert_file
                       : GetConfigOption("ssl_cert_file", true, false);
    const char *key = *opt_ssl_key_file ? opt_ssl_key_file
                      : GetConfigOption("ssl_key_file", true, false);
    memset(pc, 0, sizeof *pc);
    if (*opt_bind_address)
        strlcpy(pc->bind, opt_bind_address, sizeof pc->bind);
    else
        default_bind(pc->bind, sizeof pc->bind);
    if (copy_str(pc->cert, sizeof pc->cert, cert, "the certificate path", err, errlen) ||
        copy_str(pc->key, sizeof pc->key, key, "the key path", err, errlen) ||
        copy_str(pc->origins, sizeof pc->origins, opt_allowed_origins,
                 "wsproxy.allowed_origins", err, errlen) ||
        copy_str(pc->log_dir, sizeof pc->log_dir, *opt_log_directory ? opt_log_directory
                 : Logging_collector ? Log_directory : "", "the log directory", err, errlen) ||
        engine_address(pc->sock, sizeof pc->sock, err, errlen))
        return -1;
    if (opt_http_port && opt_https_port) {
        snprintf(err, errlen, "http_port and https_port are mutually exclusive "
                 "(wsproxy.http_port = %d, wsproxy.https_port = %d)",
                 opt_http_port, opt_https_port);
        return -1;
    }
    if (opt_https_port && (!pc->cert[0] || !pc->key[0])) {
        snprintf(err, errlen, "wsproxy.https_port requires SSL: set ssl_cert_file and "
                 "ssl_key_file (or wsproxy.ssl_cert_file and wsproxy.ssl_key_file)");
        return -1;
    }
    pc->c.http_port = opt_http_port;
    pc->c.https_port = opt_https_port;
    pc->c.bind_address = pc->bind;
    pc->c.socket_path = pc->sock;
    pc->c.cert_file = opt_https_port ? pc->cert : NULL;
    pc->c.key_file = opt_https_port ? pc->key : NULL;
    pc->c.log_dir = pc->log_dir[0] ? pc->log_dir : NULL;
    pc->c.log_fn = conn_log;
    pc->c.allowed_origins = pc->origins;
    pc->c.max_connections = (unsigned)opt_max_connections;
    pc->c.max_connections_per_ip = (unsigned)opt_max_connections_per_ip;
    pc->c.max_message = (uint64_t)opt_max_message;
    pc->c.handshake_timeout_ms = (unsigned)opt_handshake_timeout;
    pc->c.idle_timeout_ms = (unsigned)opt_idle_timeout;
    pc->c.ping_interval_ms = (unsigned)opt_ping_interval;
    pc->c.drain_timeout_ms = (unsigned)opt_drain_timeout;
    /* PostgreSQL has no PROXY protocol: a header would break the startup
     * packet.  Relayed sessions are identified by conn_told's table or the
     * worker's pid instead (see "Identity" above). */
    pc->c.proxy_protocol = WS_PROXY_PP_OFF;
    pc->c.conn_fn = conn_told;
    pc->c.going_away = &g_sh->stopping;
    return 0;
}

/* Applies the settings in force: 0, or -1 with the reason and nothing
 * changed.  The configuration files are read first, as pg_reload_conf()
 * makes every process do, so that a restart right after ALTER SYSTEM and
 * pg_reload_conf() never races the reload's signal. */
static int proxy_apply(char *err, size_t errlen)
{
    static struct wsp_cfg pc;
    ConfigReloadPending = false;
    ProcessConfigFile(PGC_SIGHUP);
    if (cfg_build(&pc, err, errlen))
        return -1;
    g_log_all = pc.c.log_dir == NULL;
    if (g_proxy)
        return ws_proxy_restart(g_proxy, &pc.c, err, errlen) ? -1 : 0;
    if (!pc.c.http_port && !pc.c.https_port) {
        g_state = WS_PROXY_STOPPED;
        g_reason[0] = 0;
        return 0;
    }
    if (!(g_proxy = ws_proxy_start(&pc.c, err, errlen)))
        return -1;
    g_reason[0] = 0;
    ereport(LOG, (errmsg("wsproxy: relaying to %s; WebSocket sessions must prove a "
                         "secret (trust, peer and ident are refused for them)", pc.sock)));
    return 0;
}

/* Publishes the proxy's real state with the answer to requests up to seq. */
static void publish(uint64 seq, int rc, const char *err)
{
    struct ws_proxy_status st;
    const char *reason;
    memset(&st, 0, sizeof st);
    if (!g_proxy || ws_proxy_status(g_proxy, &st)) {
        st.state = g_proxy ? WS_PROXY_FAILED : g_state;
        reason = g_proxy ? "ws_proxy_status failed" : g_reason;
    } else {
        reason = st.reason;
    }
    SpinLockAcquire(&g_sh->mu);
    g_sh->st = st;
    strlcpy(g_sh->reason, reason, sizeof g_sh->reason);
    g_sh->done_rc = rc;
    strlcpy(g_sh->done_err, err, sizeof g_sh->done_err);
    if (seq > g_sh->done_seq)
        g_sh->done_seq = seq;
    SpinLockRelease(&g_sh->mu);
}

static void worker_sigterm(SIGNAL_ARGS)
{
    int save_errno = errno;
    (void)postgres_signal_arg;
    got_sigterm = 1;
    if (g_sh)
        g_sh->stopping = 1; /* read by relayed backends on their way out */
    SetLatch(MyLatch);
    errno = save_errno;
}

/* Stops the proxy for good: every client gets Close 1001. */
static void worker_exit(int code, Datum arg)
{
    (void)code;
    (void)arg;
    ws_proxy_stop(g_proxy);
    g_proxy = NULL;
    log_drain();
    SpinLockAcquire(&g_sh->mu);
    g_sh->worker_pid = 0;
    g_sh->worker_latch = NULL;
    g_sh->done_seq = g_sh->req_seq; /* nobody waits for an answer */
    g_sh->done_rc = -1;
    strlcpy(g_sh->done_err, "the server is shutting down", sizeof g_sh->done_err);
    g_sh->st.state = WS_PROXY_STOPPED;
    strlcpy(g_sh->reason, "the wsproxy worker is not running", sizeof g_sh->reason);
    SpinLockRelease(&g_sh->mu);
}

PGDLLEXPORT void wsproxy_worker_main(Datum arg);

void wsproxy_worker_main(Datum arg)
{
    char err[WSP_ERRLEN];
    (void)arg;
    pqsignal(SIGTERM, worker_sigterm);
    pqsignal(SIGHUP, SignalHandlerForConfigReload);
    BackgroundWorkerUnblockSignals();
    SpinLockAcquire(&g_sh->mu);
    g_sh->worker_pid = MyProcPid;
    g_sh->worker_latch = MyLatch;
    g_sh->stopping = 0;
    g_sh->unrecorded = 0;
    memset(g_sh->clients, 0, sizeof g_sh->clients[0] * (Size)g_sh->nclients);
    SpinLockRelease(&g_sh->mu);
    before_shmem_exit(worker_exit, 0);
    if (proxy_apply(err, sizeof err)) {
        /* never fails the server: FAILED until wsproxy_restart() */
        g_state = WS_PROXY_FAILED;
        strlcpy(g_reason, err, sizeof g_reason);
        ereport(LOG, (errmsg("wsproxy: not serving: %s", err),
                      errhint("Fix the wsproxy.* settings and run SELECT wsproxy_restart().")));
    }
    publish(0, 0, "");
    while (!got_sigterm) {
        uint64 seq;
        int restart, rc = 0;
        int ev = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_POSTMASTER_DEATH, 200,
                           PG_WAIT_EXTENSION);
        ResetLatch(MyLatch);
        log_drain();
        if (ev & WL_POSTMASTER_DEATH)
            break;
        if (got_sigterm)
            break;
        if (ConfigReloadPending) { /* nothing moves until wsproxy_restart() */
            ConfigReloadPending = false;
            ProcessConfigFile(PGC_SIGHUP);
        }
        SpinLockAcquire(&g_sh->mu);
        seq = g_sh->req_seq;
        restart = g_sh->req_restart;
        g_sh->req_restart = 0;
        SpinLockRelease(&g_sh->mu);
        if (seq <= g_sh->done_seq)
            continue;
        err[0] = 0;
        if (restart && (rc = proxy_apply(err, sizeof err)) != 0)
            ereport(LOG, (errmsg("wsproxy: restart failed, nothing changed: %s", err)));
        else if (restart)
            ereport(LOG, (errmsg("wsproxy: restarted")));
        log_drain();
        publish(seq, rc, err);
    }
    proc_exit(0); /* worker_exit stops the proxy; exit 0: not restarted */
}

/* ==== Relayed sessions (every backend) ==================================== */

/* Is this backend's client the wsproxy worker?  Over TCP: its peer address
 * and port are those of an engine connection the worker recorded (and the
 * backend's pid goes into that entry); over the Unix socket: the peer's pid
 * (SO_PEERCRED, recorded by the kernel at connect) is the worker's. */
static int is_relayed(const Port *port)
{
    const struct sockaddr *sa = (const struct sockaddr *)&port->raddr.addr;
    char addr[64];
    int i, rport, relayed = 0;
    if (!g_sh)
        return 0;
    if (sa->sa_family == AF_UNIX) {
        struct ucred u;
        socklen_t len = sizeof u;
        if (getsockopt(port->sock, SOL_SOCKET, SO_PEERCRED, &u, &len))
            return 1; /* cannot tell: refuse rather than trust */
        SpinLockAcquire(&g_sh->mu);
        relayed = g_sh->worker_pid && u.pid == g_sh->worker_pid;
        SpinLockRelease(&g_sh->mu);
        return relayed;
    }
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &v4->sin_addr, addr, sizeof addr);
        rport = ntohs(v4->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &v6->sin6_addr, addr, sizeof addr);
        rport = ntohs(v6->sin6_port);
    } else {
        return 0;
    }
    SpinLockAcquire(&g_sh->mu);
    for (i = 0; i < g_sh->nclients && !relayed; i++) {
        struct wsp_client *c = &g_sh->clients[i];
        if (c->id && c->engine_port == rport && !strcmp(c->engine_addr, addr)) {
            c->pid = MyProcPid;
            relayed = 1;
        }
    }
    if (!relayed && g_sh->unrecorded > 0)
        relayed = !strncmp(addr, "127.", 4) || !strcmp(addr, "::1") ||
                  !strncmp(addr, "::ffff:127.", 11);
    SpinLockRelease(&g_sh->mu);
    return relayed;
}

/* Shutdown.  At a fast shutdown the postmaster signals the backends and the
 * worker together, and on a busy machine a relayed backend can end before
 * the worker has run its SIGTERM handler: its client would hear the engine
 * hang up (Close 1000).  So a relayed backend that ends for SIGTERM (the
 * FATAL "terminating connection due to administrator command", seen by
 * emit_log_hook) waits up to WSP_SHUTDOWN_WAIT_MS for the worker's stopping
 * flag; once it is set, the library closes the session with 1001.  After
 * pg_terminate_backend() the flag never comes and the wait is the cost. */
#define WSP_SHUTDOWN_WAIT_MS 1000

static emit_log_hook_type prev_emit_log_hook;
static bool g_admin_shutdown; /* this backend got its SIGTERM FATAL */

static void relayed_emit_log(ErrorData *e)
{
    if (e->elevel == FATAL && e->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
        g_admin_shutdown = true;
    if (prev_emit_log_hook)
        prev_emit_log_hook(e);
}

static void relayed_exit(int code, Datum arg)
{
    int i, stopping = 0;
    (void)code;
    (void)arg;
    for (i = 0; g_admin_shutdown && !stopping && i < WSP_SHUTDOWN_WAIT_MS / 10; i++) {
        SpinLockAcquire(&g_sh->mu);
        stopping = g_sh->stopping || !g_sh->worker_pid;
        SpinLockRelease(&g_sh->mu);
        if (!stopping)
            pg_usleep(10000);
    }
}

static void client_auth(Port *port, int status)
{
    if (prev_client_auth_hook)
        prev_client_auth_hook(port, status);
    if (status != STATUS_OK || !is_relayed(port))
        return;
    switch (port->hba->auth_method) {
    case uaTrust:
    case uaPeer:
    case uaIdent:
        ereport(FATAL, (errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
                        errmsg("password authentication is required for WebSocket "
                               "sessions"),
                        errdetail_log("pg_hba.conf line %d says \"%s\"; wsproxy relays "
                                      "WebSocket clients from inside the server, so trust, "
                                      "peer and ident would let them in without a "
                                      "secret.", port->hba->linenumber,
                                      port->hba->auth_method == uaTrust ? "trust" :
                                      port->hba->auth_method == uaPeer ? "peer" : "ident")));
        break;
    default:
        break;
    }
    prev_emit_log_hook = emit_log_hook;
    emit_log_hook = relayed_emit_log;
    before_shmem_exit(relayed_exit, 0);
}

/* ==== SQL functions ======================================================= */

static void require_worker(void)
{
    if (!g_sh)
        ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                        errmsg("wsproxy is not loaded"),
                        errhint("Add wsproxy to shared_preload_libraries and restart "
                                "the server.")));
}

/* Posts a request and waits for the worker's answer; returns its outcome
 * (0 or -1) with the reason in err, and the status snapshot in *st. */
static int worker_request(int restart, struct ws_proxy_status *st, char *reason,
                          char *err)
{
    uint64 seq;
    Latch *latch;
    int rc;
    require_worker();
    SpinLockAcquire(&g_sh->mu);
    latch = g_sh->worker_latch;
    if (!g_sh->worker_pid || g_sh->stopping) {
        SpinLockRelease(&g_sh->mu);
        ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                        errmsg("the wsproxy worker is not running")));
    }
    seq = ++g_sh->req_seq;
    g_sh->req_restart |= restart;
    SpinLockRelease(&g_sh->mu);
    SetLatch(latch);
    for (;;) {
        int done;
        CHECK_FOR_INTERRUPTS();
        SpinLockAcquire(&g_sh->mu);
        done = g_sh->done_seq >= seq;
        if (done) {
            *st = g_sh->st;
            strlcpy(reason, g_sh->reason, WSP_ERRLEN);
            strlcpy(err, g_sh->done_err, WSP_ERRLEN);
            rc = g_sh->done_rc;
        }
        SpinLockRelease(&g_sh->mu);
        if (done)
            return rc;
        (void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 10,
                        PG_WAIT_EXTENSION);
        ResetLatch(MyLatch);
    }
}

PG_FUNCTION_INFO_V1(wsproxy_restart);
Datum wsproxy_restart(PG_FUNCTION_ARGS)
{
    struct ws_proxy_status st;
    char reason[WSP_ERRLEN], err[WSP_ERRLEN];
    (void)fcinfo;
    if (worker_request(1, &st, reason, err))
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("wsproxy_restart failed: %s", err),
                        errdetail("Nothing changed: the proxy serves as before.")));
    PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(wsproxy_status);
Datum wsproxy_status(PG_FUNCTION_ARGS)
{
    struct ws_proxy_status st;
    char reason[WSP_ERRLEN], err[WSP_ERRLEN];
    TupleDesc td;
    Datum v[10 + WS_PROXY_REFUSED_COUNT_];
    bool nulls[10 + WS_PROXY_REFUSED_COUNT_] = {0};
    int i, k = 0;
    if (get_call_result_type(fcinfo, NULL, &td) != TYPEFUNC_COMPOSITE ||
        td->natts != lengthof(v))
        elog(ERROR, "wsproxy_status: the SQL declaration does not match the library");
    worker_request(0, &st, reason, err);
    v[k++] = CStringGetTextDatum(ws_proxy_state_name(st.state));
    v[k++] = CStringGetTextDatum(reason);
    v[k] = Int32GetDatum(st.port);
    nulls[k++] = st.state != WS_PROXY_RUNNING;
    v[k] = CStringGetTextDatum(st.tls ? "wss" : "ws");
    nulls[k++] = st.state != WS_PROXY_RUNNING;
    v[k++] = Int64GetDatum((int64)st.conns_open);
    v[k++] = Int64GetDatum((int64)st.conns_total);
    v[k++] = Int64GetDatum((int64)st.bytes_to_engine);
    v[k++] = Int64GetDatum((int64)st.bytes_to_client);
    for (i = 0; i < WS_PROXY_REFUSED_COUNT_; i++)
        v[k++] = Int64GetDatum((int64)st.refused[i]);
    v[k++] = Int64GetDatum((int64)st.tls_failures);
    v[k++] = Int64GetDatum((int64)st.protocol_errors);
    PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(td, v, nulls)));
}

PG_FUNCTION_INFO_V1(wsproxy_clients);
Datum wsproxy_clients(PG_FUNCTION_ARGS)
{
    ReturnSetInfo *rsinfo = (ReturnSetInfo *)fcinfo->resultinfo;
    struct wsp_client *copy;
    int i, n;
    require_worker();
    InitMaterializedSRF(fcinfo, 0);
    n = g_sh->nclients;
    copy = palloc(sizeof *copy * (Size)n);
    SpinLockAcquire(&g_sh->mu);
    memcpy(copy, g_sh->clients, sizeof *copy * (Size)n);
    SpinLockRelease(&g_sh->mu);
    for (i = 0; i < n; i++) {
        Datum v[5];
        bool nulls[5] = {0};
        if (!copy[i].id)
            continue;
        v[0] = Int32GetDatum(copy[i].pid);
        nulls[0] = copy[i].pid == 0;
        v[1] = DirectFunctionCall1(inet_in, CStringGetDatum(copy[i].client_addr));
        v[2] = Int32GetDatum(copy[i].client_port);
        v[3] = CStringGetTextDatum(copy[i].tls ? "wss" : "ws");
        v[4] = CStringGetTextDatum(copy[i].origin);
        nulls[4] = !copy[i].origin[0];
        tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nulls);
    }
    return (Datum)0;
}

/* ==== Loading ============================================================= */

PGDLLEXPORT void _PG_init(void);

void _PG_init(void)
{
    BackgroundWorker w;
    if (!process_shared_preload_libraries_in_progress) {
        guc_define(); /* SHOW wsproxy.* works; the functions say what is missing */
        return;
    }
    guc_define();
    prev_shmem_request_hook = shmem_request_hook;
    shmem_request_hook = shmem_request;
    prev_shmem_startup_hook = shmem_startup_hook;
    shmem_startup_hook = shmem_startup;
    prev_client_auth_hook = ClientAuthentication_hook;
    ClientAuthentication_hook = client_auth;
    memset(&w, 0, sizeof w);
    w.bgw_flags = BGWORKER_SHMEM_ACCESS;
    /* Relays once sessions can be served: read-only ones on a standby too. */
    w.bgw_start_time = BgWorkerStart_ConsistentState;
    /* Exits 0 at shutdown (not restarted); after a crash of any backend the
     * postmaster restarts every process, and the proxy starts again with
     * the server. */
    w.bgw_restart_time = 5;
    strlcpy(w.bgw_library_name, "wsproxy", BGW_MAXLEN);
    strlcpy(w.bgw_function_name, "wsproxy_worker_main", BGW_MAXLEN);
    strlcpy(w.bgw_name, "wsproxy", BGW_MAXLEN);
    strlcpy(w.bgw_type, "wsproxy", BGW_MAXLEN);
    RegisterBackgroundWorker(&w);
}
