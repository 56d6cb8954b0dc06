/*
 * wsproxy_plugin.c - wsproxy as a MariaDB daemon plugin.
 *
 * The plugin runs one ws_proxy (../../wsproxy.c, compiled in unchanged) in
 * front of the server's own TCP listener.  Its configuration is the plugin's
 * system variables (wsproxy_http_port, wsproxy_https_port, ...); it starts
 * at plugin init and is restarted by SET GLOBAL wsproxy_restart = ON, which
 * either fails with an SQL error (the proxy goes on exactly as before) or
 * leaves the proxy listening where the variables say.  Its real state is in
 * SHOW GLOBAL STATUS LIKE 'wsproxy%'.  See README.md next to this file.
 *
 * Engine.  The proxy relays to the server's own TCP listener on loopback
 * (port, bind_address) with a PROXY v2 header, so MariaDB sees each
 * client's address and its TCP connection: the account is matched by the
 * client's address, and no peer-credential authentication (unix_socket or
 * any other) can apply to a TCP connection.  proxy_protocol_networks must
 * cover the relay's loopback address.  A server with skip_networking, or
 * whose listener is not on loopback, is not served (FAILED, with the
 * setting to change), nor is one with skip_grant_tables.  Nothing of the
 * server is patched: its settings are read through exported variables.
 *
 * Shutdown.  The core's going_away flag is the server's abort_loop: when
 * the server ends its sessions at shutdown, each relayed WebSocket gets
 * Close 1001; deinit stops the proxy (1001 to the rest).
 *
 * Locking.  g_mu serialises every call on the proxy handle (start, restart,
 * status, stop), so ws_proxy_stop() never races another call.  g_cfg_mu
 * guards the string variables: their update callbacks (run by the server
 * under LOCK_global_system_variables) swap the pointer under it, and the
 * restart (wsproxy_restart's update, also under that lock, or plugin init)
 * copies them under it.  The order is always LOCK_global_system_variables,
 * g_mu, g_cfg_mu; SHOW STATUS takes g_mu alone.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mysql/plugin.h>
#include <mysqld_error.h>

#include "wsproxy.h"

#define PLUGIN_ERRLEN 512
#define PLUGIN_PATHLEN 512

/* Copies as much of src as fits, always terminated. */
static void str_copy(char *dst, size_t size, const char *src)
{
    size_t n = strlen(src);
    if (n >= size)
        n = size - 1;
    memcpy(dst, src, n);
    dst[n] = 0;
}

/* ==== Server globals ======================================================
 * mariadbd exports these; they are looked up at run time so that the .so
 * links with -z defs (no undefined symbol but the services).  The C++
 * functions are called by their mangled names; their bool is a char. */

static const char *srv_str_ptr(const char *name)
{
    char **p = dlsym(RTLD_DEFAULT, name);
    return p && *p ? *p : "";
}

static const char *srv_str_array(const char *name)
{
    const char *p = dlsym(RTLD_DEFAULT, name);
    return p ? p : "";
}

/* Whether the server has finished starting. */
static int srv_started(void)
{
    const int *p = dlsym(RTLD_DEFAULT, "mysqld_server_started");
    return p && *p;
}

static int srv_flag(const char *name)
{
    const char *p = dlsym(RTLD_DEFAULT, name); /* a C++ bool */
    return p && *p;
}

/* The next item of a list separated by commas or spaces, into item;
 * returns the rest, or NULL at the end. */
static const char *list_next(const char *s, char *item, size_t size)
{
    size_t n;
    s += strspn(s, ", \t");
    if (!*s)
        return NULL;
    n = strcspn(s, ", \t");
    str_copy(item, n < size ? n + 1 : size, s);
    return s + n;
}

/* Where the relay reaches the server's TCP listener on loopback, as
 * ws_proxy_config.socket_path spells it ("127.0.0.1:3306", "[::1]:3306"),
 * and the relay's own address (what proxy_protocol_networks must cover).
 * 0, or -1 with the reason naming the setting to change. */
static int srv_engine_address(char *dst, size_t size, char *relay, size_t rsize,
                              char *err, size_t errlen)
{
    const unsigned *port = dlsym(RTLD_DEFAULT, "mysqld_port");
    const char *bind = srv_str_ptr("my_bind_addr_str"), *s = bind;
    char item[64];
    if (srv_flag("opt_disable_networking")) {
        snprintf(err, errlen, "the server runs with skip_networking, and the plugin relays "
                 "over the server's TCP listener on loopback: remove skip-networking "
                 "(keep bind_address = 127.0.0.1 to listen on loopback only)");
        return -1;
    }
    if (!port || !*port) {
        snprintf(err, errlen, "the server has no TCP port (port = 0): set port");
        return -1;
    }
    if (!*bind)
        bind = s = "*";
    while ((s = list_next(s, item, sizeof item)) != NULL) {
        const char *a = !strcmp(item, "::1") ? "::1" : strncmp(item, "127.", 4) ? NULL : item;
        struct in_addr v4;
        if (!strcmp(item, "*") || !strcmp(item, "0.0.0.0") || !strcmp(item, "::") ||
            !strcasecmp(item, "localhost"))
            a = "127.0.0.1";
        if (a && strchr(a, ':'))
            snprintf(dst, size, "[%s]:%u", a, *port);
        else if (a && inet_pton(AF_INET, a, &v4) == 1)
            snprintf(dst, size, "%s:%u", a, *port);
        else
            continue;
        str_copy(relay, rsize, a);
        return 0;
    }
    snprintf(err, errlen, "the server's listener is not reachable on loopback "
             "(bind_address = %s): add 127.0.0.1 to bind_address "
             "(e.g. bind_address = 127.0.0.1,%s)", bind, bind);
    return -1;
}

/* The server's own bind_address as one numeric address for the proxy
 * (wsproxy_bind_address's default): "0.0.0.0" for every address, the
 * first numeric item of a list, "127.0.0.1" for localhost or a name. */
static const char *srv_bind_default(void)
{
    static char buf[64];
    const char *s = srv_str_ptr("my_bind_addr_str");
    char item[64];
    uint8_t a[16];
    if (!*s || !strcmp(s, "*"))
        return "0.0.0.0";
    while ((s = list_next(s, item, sizeof item)) != NULL)
        if (inet_pton(AF_INET, item, a) == 1 || inet_pton(AF_INET6, item, a) == 1) {
            str_copy(buf, sizeof buf, item);
            return buf;
        }
    return "127.0.0.1";
}

/* Whether proxy_protocol_networks covers the relay's address (numeric
 * IPv4 or IPv6).  Once the server runs, its own is_proxy_protocol_allowed()
 * (C++, thread-safe) answers; while it starts, the setting's text is read
 * ("*", or addresses with optional /bits; "localhost" is the Unix socket). */
typedef char (*pp_allowed_fn)(const struct sockaddr *);

static int srv_proxy_header_allowed(const char *relay)
{
    union {
        struct sockaddr sa;
        struct sockaddr_in v4;
        struct sockaddr_in6 v6;
    } u;
    int v6 = strchr(relay, ':') != NULL, len = v6 ? 16 : 4;
    const uint8_t *want = v6 ? (const uint8_t *)&u.v6.sin6_addr : (const uint8_t *)&u.v4.sin_addr;
    pp_allowed_fn f = (pp_allowed_fn)(uintptr_t)dlsym(
        RTLD_DEFAULT, "_Z25is_proxy_protocol_allowedPK8sockaddr");
    const char *s = srv_str_ptr("my_proxy_protocol_networks");
    char item[64];
    memset(&u, 0, sizeof u);
    u.sa.sa_family = v6 ? AF_INET6 : AF_INET;
    if (inet_pton(u.sa.sa_family, relay, (void *)want) != 1)
        return 0;
    if (f && srv_started())
        return f(&u.sa) != 0;
    while ((s = list_next(s, item, sizeof item)) != NULL) {
        char *slash = strchr(item, '/');
        uint8_t net[16];
        int bits = slash ? atoi(slash + 1) : len * 8, i;
        if (!strcmp(item, "*"))
            return 1;
        if (slash)
            *slash = 0;
        if (inet_pton(u.sa.sa_family, item, net) != 1 || bits < 0 || bits > len * 8)
            continue;
        for (i = 0; i < len && bits > 0; i++, bits -= 8) {
            uint8_t m = (uint8_t)(bits >= 8 ? 0xFF : 0xFF << (8 - bits));
            if ((net[i] & m) != (want[i] & m))
                break;
        }
        if (i == len || bits <= 0)
            return 1;
    }
    return 0;
}

/* ==== Checks ============================================================= */

/* Whether relayed logins can work, and are the clients' own: 0, or -1 with
 * the reason naming the setting to change. */
static int relay_check(const char *relay, char *err, size_t errlen)
{
    if (srv_flag("opt_noacl")) {
        snprintf(err, errlen, "the server runs with skip_grant_tables: every WebSocket "
                 "client would get in without a password; start it without "
                 "skip-grant-tables");
        return -1;
    }
    if (!srv_proxy_header_allowed(relay)) {
        snprintf(err, errlen, "the server does not accept the PROXY header from the "
                 "relay's address %s: add it to proxy_protocol_networks "
                 "(e.g. proxy_protocol_networks = %s)", relay,
                 strchr(relay, ':') ? "::1/128" : "127.0.0.1/32");
        return -1;
    }
    return 0;
}

/* ==== System variables ==================================================== */

static pthread_mutex_t g_cfg_mu = PTHREAD_MUTEX_INITIALIZER;

static int opt_http_port, opt_https_port;
static char *opt_bind_address, *opt_ssl_cert, *opt_ssl_key, *opt_allowed_origins,
    *opt_log_dir;
static unsigned opt_max_connections, opt_max_connections_per_ip;
static unsigned long long opt_max_message;
static unsigned opt_handshake_timeout_ms, opt_idle_timeout_ms, opt_ping_interval_ms,
    opt_drain_timeout_ms;
static my_bool opt_restart;
static unsigned long opt_serve_on; /* 0 always, 1 primary */
static unsigned long long opt_log_size_limit;
static unsigned opt_log_rotations;

/* MariaDB's update of a PLUGIN_VAR_MEMALLOC string copies the new value
 * with the server's allocator and frees the old one; this does the same
 * (my_strdup/my_free of mysys, looked up in mariadbd) under g_cfg_mu. */
typedef char *(*my_strdup_fn)(unsigned key, const char *from, unsigned long flags);
typedef void (*my_free_fn)(void *ptr);

static void str_set(char **var, const char *value)
{
    my_strdup_fn dup = (my_strdup_fn)(uintptr_t)dlsym(RTLD_DEFAULT, "my_strdup");
    my_free_fn fre = (my_free_fn)(uintptr_t)dlsym(RTLD_DEFAULT, "my_free");
    char *old, *copy = NULL;
    if (!dup || !fre || (value && !(copy = dup(0, value, 0))))
        return; /* keeps the old value */
    pthread_mutex_lock(&g_cfg_mu);
    old = *var;
    *var = copy;
    pthread_mutex_unlock(&g_cfg_mu);
    fre(old);
}

static void str_update(MYSQL_THD thd, struct st_mysql_sys_var *var, void *var_ptr,
                       const void *save)
{
    (void)thd;
    (void)var;
    str_set(var_ptr, *(char *const *)save);
}

static int restart_check(MYSQL_THD thd, struct st_mysql_sys_var *var, void *save,
                         struct st_mysql_value *value);

/* SET GLOBAL wsproxy_bind_address = NULL, '' or DEFAULT: the server's own
 * bind_address, which the variable then reads back. */
static int bind_check(MYSQL_THD thd, struct st_mysql_sys_var *var, void *save,
                      struct st_mysql_value *value)
{
    char buf[64];
    int len = sizeof buf;
    const char *v = value->val_str(value, buf, &len);
    (void)var;
    if (!v || !*v)
        v = srv_bind_default(), len = (int)strlen(v);
    *(const char **)save = thd_strmake(thd, v, (size_t)len);
    return 0;
}

/* SET GLOBAL wsproxy_bind_address = DEFAULT skips the check: the same. */
static void bind_update(MYSQL_THD thd, struct st_mysql_sys_var *var, void *var_ptr,
                        const void *save)
{
    const char *v = *(char *const *)save;
    (void)thd;
    (void)var;
    str_set(var_ptr, v && *v ? v : srv_bind_default());
}
static void restart_update(MYSQL_THD thd, struct st_mysql_sys_var *var, void *var_ptr,
                           const void *save);

#define STR_FLAGS (PLUGIN_VAR_RQCMDARG | PLUGIN_VAR_MEMALLOC)

static MYSQL_SYSVAR_INT(http_port, opt_http_port, PLUGIN_VAR_RQCMDARG,
    "TCP port for ws:// (0 = not set); takes effect at start and at "
    "SET GLOBAL wsproxy_restart = ON", NULL, NULL, 0, 0, 65535, 0);
static MYSQL_SYSVAR_INT(https_port, opt_https_port, PLUGIN_VAR_RQCMDARG,
    "TCP port for wss:// (0 = not set); at most one of http_port and "
    "https_port may be set", NULL, NULL, 0, 0, 65535, 0);
static MYSQL_SYSVAR_STR(bind_address, opt_bind_address, STR_FLAGS,
    "Numeric IPv4 or IPv6 address to listen on; default (or NULL, '') = the "
    "server's bind_address", bind_check, bind_update, NULL);
static MYSQL_SYSVAR_STR(ssl_cert, opt_ssl_cert, STR_FLAGS,
    "PEM certificate chain for wss://; empty = the server's ssl_cert",
    NULL, str_update, "");
static MYSQL_SYSVAR_STR(ssl_key, opt_ssl_key, STR_FLAGS,
    "PEM private key for wss://; empty = the server's ssl_key", NULL, str_update, "");
static MYSQL_SYSVAR_STR(allowed_origins, opt_allowed_origins, STR_FLAGS,
    "Origins allowed to connect, comma or space separated; empty = any",
    NULL, str_update, "");
static MYSQL_SYSVAR_STR(log_dir, opt_log_dir, STR_FLAGS,
    "Directory of websocket_proxy.log; empty = the directory of the server's "
    "error log, else the data directory", NULL, str_update, "");
static const char *serve_on_names[] = {"always", "primary", NULL};
static TYPELIB serve_on_typelib = {2, "", serve_on_names, NULL};
static MYSQL_SYSVAR_ENUM(serve_on, opt_serve_on, PLUGIN_VAR_RQCMDARG,
    "always: serve whenever a port is set; primary: only while read_only is "
    "OFF (a replica's proxy is DORMANT, with no listening socket, and serves "
    "once promoted, without a restart)", NULL, NULL, 0, &serve_on_typelib);
static MYSQL_SYSVAR_ULONGLONG(log_size_limit, opt_log_size_limit, PLUGIN_VAR_RQCMDARG,
    "websocket_proxy.log is rotated when it reaches this size, bytes (as "
    "server_audit_file_rotate_size); read at start and restart", NULL, NULL,
    1000000, 100, ~0ULL, 0);
static MYSQL_SYSVAR_UINT(log_rotations, opt_log_rotations, PLUGIN_VAR_RQCMDARG,
    "Rotated websocket_proxy.log files kept (.1 ... .N), 1..999", NULL, NULL,
    9, 1, 999, 0);
static MYSQL_SYSVAR_UINT(max_connections, opt_max_connections, PLUGIN_VAR_RQCMDARG,
    "Open WebSocket connections at most", NULL, NULL, 1024, 1, WS_PROXY_MAX_CONNECTIONS_LIMIT, 0);
static MYSQL_SYSVAR_UINT(max_connections_per_ip, opt_max_connections_per_ip,
    PLUGIN_VAR_RQCMDARG, "Open WebSocket connections per client IP; 0 = unlimited",
    NULL, NULL, 0, 0, 1000000, 0);
static MYSQL_SYSVAR_ULONGLONG(max_message, opt_max_message, PLUGIN_VAR_RQCMDARG,
    "Largest WebSocket message in bytes; 0 = no limit", NULL, NULL, 0, 0,
    ~0ULL, 0);
static MYSQL_SYSVAR_UINT(handshake_timeout_ms, opt_handshake_timeout_ms,
    PLUGIN_VAR_RQCMDARG, "Time from accept to a complete handshake, ms",
    NULL, NULL, 10000, 1, 3600000, 0);
static MYSQL_SYSVAR_UINT(idle_timeout_ms, opt_idle_timeout_ms, PLUGIN_VAR_RQCMDARG,
    "Close a connection idle this long, ms; 0 = never", NULL, NULL, 0, 0,
    4000000000U, 0);
static MYSQL_SYSVAR_UINT(ping_interval_ms, opt_ping_interval_ms, PLUGIN_VAR_RQCMDARG,
    "Ping a client silent this long, ms; 0 = never", NULL, NULL, 0, 0,
    4000000000U, 0);
static MYSQL_SYSVAR_UINT(drain_timeout_ms, opt_drain_timeout_ms, PLUGIN_VAR_RQCMDARG,
    "Bound of every closing exchange, ms", NULL, NULL, 5000, 1, 3600000, 0);
static MYSQL_SYSVAR_BOOL(restart, opt_restart, PLUGIN_VAR_OPCMDARG | PLUGIN_VAR_NOCMDOPT,
    "SET GLOBAL wsproxy_restart = ON applies the wsproxy_* variables: it fails "
    "with the reason and changes nothing, or the proxy serves as they say. "
    "Always reads OFF", restart_check, restart_update, 0);

static struct st_mysql_sys_var *wsproxy_sysvars[] = {
    MYSQL_SYSVAR(http_port), MYSQL_SYSVAR(https_port), MYSQL_SYSVAR(bind_address),
    MYSQL_SYSVAR(ssl_cert), MYSQL_SYSVAR(ssl_key), MYSQL_SYSVAR(allowed_origins),
    MYSQL_SYSVAR(log_dir), MYSQL_SYSVAR(log_size_limit), MYSQL_SYSVAR(log_rotations),
    MYSQL_SYSVAR(max_connections), MYSQL_SYSVAR(serve_on),
    MYSQL_SYSVAR(max_connections_per_ip), MYSQL_SYSVAR(max_message),
    MYSQL_SYSVAR(handshake_timeout_ms), MYSQL_SYSVAR(idle_timeout_ms),
    MYSQL_SYSVAR(ping_interval_ms), MYSQL_SYSVAR(drain_timeout_ms),
    MYSQL_SYSVAR(restart), NULL};

/* ==== Configuration ======================================================= */

/* A configuration with its strings, copied from the variables. */
struct plugin_cfg {
    struct ws_proxy_config c;
    char bind[64], cert[PLUGIN_PATHLEN], key[PLUGIN_PATHLEN], log_dir[PLUGIN_PATHLEN],
        origins[4096], engine[80], relay[64];
};

static int copy_str(char *dst, size_t size, const char *src, const char *what,
                    char *err, size_t errlen)
{
    size_t n = src ? strlen(src) : 0;
    if (n >= size) {
        snprintf(err, errlen, "%s is longer than %u bytes", what, (unsigned)size - 1);
        return -1;
    }
    memcpy(dst, src ? src : "", n + 1);
    return 0;
}

/* Empty wsproxy_log_dir: the directory of the server's error log (relative
 * to the data directory, where mariadbd runs), else the data directory. */
static int default_log_dir(char *dst, size_t size, char *err, size_t errlen)
{
    const char *elog = srv_str_array("log_error_file");
    const char *home = srv_str_array("mysql_real_data_home");
    const char *slash = strrchr(elog, '/');
    int n;
    if (!*elog)
        n = snprintf(dst, size, "%s", *home ? home : ".");
    else if (!slash)
        n = snprintf(dst, size, "%s", *home ? home : ".");
    else if (elog[0] == '/')
        n = snprintf(dst, size, "%.*s", slash == elog ? 1 : (int)(slash - elog), elog);
    else
        n = snprintf(dst, size, "%s/%.*s", *home ? home : ".", (int)(slash - elog), elog);
    if (n < 0 || (size_t)n >= size) {
        snprintf(err, errlen, "the default log directory is longer than %u bytes",
                 (unsigned)size - 1);
        return -1;
    }
    return 0;
}

static void log_to_server(void *user, int level, const char *line);

static int cfg_build(struct plugin_cfg *pc, char *err, size_t errlen)
{
    const char *cert, *key;
    int rc;
    memset(pc, 0, sizeof *pc);
    pthread_mutex_lock(&g_cfg_mu);
    cert = opt_ssl_cert && *opt_ssl_cert ? opt_ssl_cert : srv_str_ptr("opt_ssl_cert");
    key = opt_ssl_key && *opt_ssl_key ? opt_ssl_key : srv_str_ptr("opt_ssl_key");
    rc = copy_str(pc->bind, sizeof pc->bind, opt_bind_address && *opt_bind_address
                  ? opt_bind_address : srv_bind_default(), "wsproxy_bind_address",
                  err, errlen) ||
         copy_str(pc->cert, sizeof pc->cert, cert, "ssl_cert", err, errlen) ||
         copy_str(pc->key, sizeof pc->key, key, "ssl_key", err, errlen) ||
         copy_str(pc->origins, sizeof pc->origins, opt_allowed_origins,
                  "wsproxy_allowed_origins", err, errlen) ||
         copy_str(pc->log_dir, sizeof pc->log_dir, opt_log_dir, "wsproxy_log_dir",
                  err, errlen);
    pthread_mutex_unlock(&g_cfg_mu);
    if (rc)
        return -1;
    if (!pc->log_dir[0] && default_log_dir(pc->log_dir, sizeof pc->log_dir, err, errlen))
        return -1;
    if (srv_engine_address(pc->engine, sizeof pc->engine, pc->relay, sizeof pc->relay,
                           err, errlen) || relay_check(pc->relay, err, errlen))
        return -1;
    if (opt_http_port && opt_https_port) {
        snprintf(err, errlen, "http_port and https_port are mutually exclusive "
                 "(wsproxy_http_port = %d, wsproxy_https_port = %d)",
                 opt_http_port, opt_https_port);
        return -1;
    }
    if (opt_https_port && (!pc->cert[0] || !pc->key[0])) {
        snprintf(err, errlen, "https_proxy_port requires SSL to be enabled: set the "
                 "server's ssl_cert and ssl_key (or wsproxy_ssl_cert and wsproxy_ssl_key)");
        return -1;
    }
    pc->c.http_port = opt_http_port;
    pc->c.https_port = opt_https_port;
    pc->c.bind_address = pc->bind;
    pc->c.socket_path = pc->engine;
    pc->c.going_away = (const volatile unsigned char *)dlsym(RTLD_DEFAULT, "abort_loop");
    pc->c.cert_file = opt_https_port ? pc->cert : NULL;
    pc->c.key_file = opt_https_port ? pc->key : NULL;
    pc->c.log_fn = log_to_server; /* and to websocket_proxy.log: see "Logging" */
    pc->c.allowed_origins = pc->origins;
    pc->c.max_connections = opt_max_connections;
    pc->c.max_connections_per_ip = opt_max_connections_per_ip;
    pc->c.max_message = opt_max_message;
    pc->c.handshake_timeout_ms = opt_handshake_timeout_ms;
    pc->c.idle_timeout_ms = opt_idle_timeout_ms;
    pc->c.ping_interval_ms = opt_ping_interval_ms;
    pc->c.drain_timeout_ms = opt_drain_timeout_ms;
    pc->c.proxy_protocol = WS_PROXY_PP_V2; /* always: see "Engine" above */
    return 0;
}

/* ==== Logging =============================================================
 * websocket_proxy.log is rotated by size, as server_audit rotates its log
 * (server_audit_file_rotate_size, _file_rotations): a line that finds the
 * file at wsproxy_log_size_limit or over first renames it .1 (.1 to .2,
 * ...; the last, .N with N = wsproxy_log_rotations, is replaced), so it never
 * grows without bound.  Done here rather than by the server's logger
 * service, which needs a thread the server knows, and the lines come from
 * the proxy's own.  The core gets no log_dir: every line comes here, with
 * the time and level the core would have written.  g_log is replaced only by
 * a start or restart that succeeds, under g_log_mu. */

struct log_file {
    int fd;
    unsigned rotations;
    unsigned long long limit;
    char path[PLUGIN_PATHLEN + 32];
};

static pthread_mutex_t g_log_mu = PTHREAD_MUTEX_INITIALIZER;
static struct log_file *g_log;

static struct log_file *log_open(const char *dir, char *err, size_t errlen)
{
    struct log_file *l = calloc(1, sizeof *l);
    if (!l) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    snprintf(l->path, sizeof l->path, "%s/websocket_proxy.log", dir);
    l->limit = opt_log_size_limit;
    l->rotations = opt_log_rotations;
    if ((l->fd = open(l->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640)) < 0) {
        snprintf(err, errlen, "open(%.400s): %s", l->path, strerror(errno));
        free(l);
        return NULL;
    }
    return l;
}

static void log_close(struct log_file *l)
{
    if (l) {
        close(l->fd);
        free(l);
    }
}

/* Caller holds g_log_mu. */
static void log_rotate(struct log_file *l)
{
    char from[sizeof l->path + 16], to[sizeof l->path + 16];
    unsigned i;
    int fd;
    for (i = l->rotations; i > 1; i--) {
        snprintf(from, sizeof from, "%s.%u", l->path, i - 1);
        snprintf(to, sizeof to, "%s.%u", l->path, i);
        rename(from, to);
    }
    snprintf(to, sizeof to, "%s.1", l->path);
    if (rename(l->path, to) == 0 &&
        (fd = open(l->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640)) >= 0) {
        close(l->fd);
        l->fd = fd;
    }
}

static void log_to_server(void *user, int level, const char *line)
{
    static const char *const names[] = {"", "ERROR", "WARN", "INFO", "DEBUG"};
    struct timespec ts;
    struct tm tm;
    char stamp[32];
    (void)user;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    pthread_mutex_lock(&g_log_mu);
    if (g_log) {
        struct stat st;
        if (fstat(g_log->fd, &st) == 0 && (unsigned long long)st.st_size >= g_log->limit)
            log_rotate(g_log);
        dprintf(g_log->fd, "%s.%03ldZ %s %s\n", stamp, ts.tv_nsec / 1000000L,
                names[level >= 1 && level <= 4 ? level : 0], line);
    }
    pthread_mutex_unlock(&g_log_mu);
    if (level > WS_PROXY_LOG_WARN)
        return;
    my_printf_error(ER_UNKNOWN_ERROR, "wsproxy: %s",
                    ME_ERROR_LOG_ONLY | (level == WS_PROXY_LOG_WARN ? ME_WARNING : 0),
                    line);
}

static void log_plugin(int level, const char *what)
{
    my_printf_error(ER_UNKNOWN_ERROR, "wsproxy: %s",
                    ME_ERROR_LOG_ONLY | (level == WS_PROXY_LOG_ERROR ? 0 :
                                         level == WS_PROXY_LOG_WARN ? ME_WARNING : ME_NOTE),
                    what);
}

/* ==== The proxy =========================================================== */

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static ws_proxy *g_proxy;     /* NULL: not started, g_state/g_reason say why */
static int g_state = WS_PROXY_STOPPED;
static int g_shutdown; /* deinit has begun: nothing starts any more */
/* The configuration applied (g_cfgs[g_cur]; a start or restart builds the
 * other one and flips on success), and whether the proxy is
 * DORMANT: wsproxy_serve_on = primary on a read_only server, so it runs
 * with no port.  See "Primary only". */
static struct plugin_cfg g_cfgs[2];
static int g_cur, g_primary_only, g_dormant;
static char g_reason[PLUGIN_ERRLEN];

struct spawn {
    const struct ws_proxy_config *cfg;
    ws_proxy *p;
    char err[PLUGIN_ERRLEN];
};

static void *spawn_main(void *arg)
{
    struct spawn *s = arg;
    /* the loop thread inherits the name: "wsproxy" in top -H, ps -L */
    pthread_setname_np(pthread_self(), "wsproxy");
    s->p = ws_proxy_start(s->cfg, s->err, sizeof s->err);
    return NULL;
}

/* Starts the proxy from a thread of its own, whose name its loop thread
 * inherits. */
static ws_proxy *proxy_spawn(const struct ws_proxy_config *cfg, char *err, size_t errlen)
{
    struct spawn s;
    pthread_t t;
    memset(&s, 0, sizeof s);
    s.cfg = cfg;
    if (pthread_create(&t, NULL, spawn_main, &s)) {
        snprintf(err, errlen, "pthread_create failed");
        return NULL;
    }
    pthread_join(t, NULL);
    if (!s.p)
        str_copy(err, errlen, s.err);
    return s.p;
}

/* Applies the variables; 0, or -1 with the reason and nothing changed.
 * Caller holds g_mu. */
/* Starts or restarts the proxy with pc, listening on its port or, if
 * !listen, on none.  Caller holds g_mu. */
static int proxy_serve(struct plugin_cfg *pc, int listen, char *err, size_t errlen)
{
    int http = pc->c.http_port, https = pc->c.https_port, rc;
    if (!listen)
        pc->c.http_port = pc->c.https_port = 0;
    if (g_proxy)
        rc = ws_proxy_restart(g_proxy, &pc->c, err, errlen) ? -1 : 0;
    else
        rc = (g_proxy = proxy_spawn(&pc->c, err, errlen)) != NULL ? 0 : -1;
    pc->c.http_port = http, pc->c.https_port = https;
    return rc;
}

static int proxy_apply(char *err, size_t errlen)
{
    struct plugin_cfg *pc = &g_cfgs[!g_cur];
    struct log_file *log, *unused;
    int rc, dormant;
    if (g_shutdown) {
        snprintf(err, errlen, "the server is shutting down");
        return -1;
    }
    if (cfg_build(pc, err, errlen))
        return -1;
    if (!g_proxy && !pc->c.http_port && !pc->c.https_port) {
        g_state = WS_PROXY_STOPPED;
        g_reason[0] = 0;
        return 0;
    }
    /* the new log takes the start's or restart's own lines; it replaces the
     * old one only if that succeeds */
    if (!(log = log_open(pc->log_dir, err, errlen)))
        return -1;
    pthread_mutex_lock(&g_log_mu);
    unused = g_log;
    g_log = log;
    pthread_mutex_unlock(&g_log_mu);
    dormant = opt_serve_on == 1 && srv_flag("opt_readonly");
    rc = proxy_serve(pc, !dormant, err, errlen);
    if (rc) {
        pthread_mutex_lock(&g_log_mu);
        g_log = unused;
        pthread_mutex_unlock(&g_log_mu);
        unused = log;
    } else {
        g_cur = !g_cur;
        g_primary_only = opt_serve_on == 1;
        g_dormant = dormant;
        g_reason[0] = 0;
    }
    log_close(unused);
    return rc;
}

/* ==== Primary only ========================================================
 * With wsproxy_serve_on = primary the proxy listens only while the server's
 * read_only is OFF.  A thread of the plugin's own looks every
 * ROLE_CHECK_MS: a promotion (SET GLOBAL read_only = OFF) restarts the proxy
 * with the applied configuration's port, a demotion with none (DORMANT:
 * no listening socket; open connections go on, as at any restart without
 * a port).  No server thread runs any of this. */

#define ROLE_CHECK_MS 200

static pthread_t g_role_thread;
static pthread_cond_t g_role_cv = PTHREAD_COND_INITIALIZER;
static int g_role_stop, g_role_running;

static void *role_main(void *arg)
{
    struct timespec t;
    (void)arg;
    pthread_mutex_lock(&g_mu);
    while (!g_role_stop) {
        clock_gettime(CLOCK_REALTIME, &t);
        t.tv_nsec += ROLE_CHECK_MS * 1000000L;
        t.tv_sec += t.tv_nsec / 1000000000L;
        t.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&g_role_cv, &g_mu, &t);
        if (!g_role_stop && !g_shutdown && g_proxy && g_primary_only &&
            srv_flag("opt_readonly") != g_dormant) {
            char err[PLUGIN_ERRLEN], line[PLUGIN_ERRLEN + 64];
            if (proxy_serve(&g_cfgs[g_cur], g_dormant, err, sizeof err) == 0) {
                g_dormant = !g_dormant;
            } else {
                snprintf(line, sizeof line, "cannot serve as primary: %s", err);
                log_plugin(WS_PROXY_LOG_ERROR, line);
            }
        }
    }
    pthread_mutex_unlock(&g_mu);
    return NULL;
}

/* Stops the proxy for good: every client gets Close 1001. */
static void proxy_shutdown(void)
{
    pthread_mutex_lock(&g_mu);
    ws_proxy_stop(g_proxy); /* Close 1001 to every client, joins the loop */
    g_proxy = NULL;
    g_state = WS_PROXY_STOPPED;
    g_reason[0] = 0;
    __atomic_store_n(&g_shutdown, 1, __ATOMIC_RELEASE);
    pthread_mutex_lock(&g_log_mu); /* no callback runs any more */
    log_close(g_log);
    g_log = NULL;
    pthread_mutex_unlock(&g_log_mu);
    pthread_mutex_unlock(&g_mu);
}

/* SET GLOBAL wsproxy_restart = ON: the check only reads the value; the
 * update applies it, since MariaDB runs the updates of a SET statement only
 * once every variable in it has passed its check: a statement that fails
 * (SET GLOBAL wsproxy_restart = ON, max_connections = 'abc') moves nothing. */
static int restart_check(MYSQL_THD thd, struct st_mysql_sys_var *var, void *save,
                         struct st_mysql_value *value)
{
    char buf[16];
    int len = sizeof buf;
    long long v;
    (void)thd;
    (void)var;
    if (value->value_type(value) == MYSQL_VALUE_TYPE_STRING) {
        const char *s = value->val_str(value, buf, &len);
        if (s && (!strcasecmp(s, "ON") || !strcasecmp(s, "TRUE") || !strcmp(s, "1")))
            v = 1;
        else if (s && (!strcasecmp(s, "OFF") || !strcasecmp(s, "FALSE") || !strcmp(s, "0")))
            v = 0;
        else
            return 1;
    } else if (value->val_int(value, &v), v != 0 && v != 1) {
        return 1;
    }
    *(my_bool *)save = (my_bool)v;
    return 0;
}

static void restart_update(MYSQL_THD thd, struct st_mysql_sys_var *var, void *var_ptr,
                           const void *save)
{
    char err[PLUGIN_ERRLEN];
    int rc = 0;
    (void)thd;
    (void)var;
    *(my_bool *)var_ptr = 0; /* reads back OFF */
    if (!*(const my_bool *)save)
        return;
    pthread_mutex_lock(&g_mu);
    rc = proxy_apply(err, sizeof err);
    pthread_mutex_unlock(&g_mu);
    if (rc) /* the statement fails with this error */
        my_printf_error(ER_UNKNOWN_ERROR, "wsproxy_restart failed: %s", 0, err);
}

/* ==== Status variables ==================================================== */

struct show_buf {
    struct st_mysql_show_var vars[20];
    unsigned long long n[16];
    int port;
    char state[16], scheme[8], reason[PLUGIN_ERRLEN];
};

static int show_wsproxy(MYSQL_THD thd, struct st_mysql_show_var *var, void *buff,
                        struct system_status_var *sv, enum enum_var_type scope)
{
    static const char *refused[] = {"refused_400", "refused_403", "refused_426",
                                    "refused_431", "refused_502", "refused_503",
                                    "refused_timeout"};
    struct show_buf *b = buff;
    struct ws_proxy_status st;
    const char *reason;
    struct st_mysql_show_var *v;
    int i, k = 0;
    (void)thd;
    (void)sv;
    (void)scope;
    typedef char buf_fits[sizeof(struct show_buf) <= SHOW_VAR_FUNC_BUFF_SIZE ? 1 : -1];
    (void)sizeof(buf_fits);
    memset(&st, 0, sizeof st);
    memset(b, 0, sizeof *b);
    pthread_mutex_lock(&g_mu);
    if (!g_proxy || ws_proxy_status(g_proxy, &st) != 0) {
        st.state = g_proxy ? WS_PROXY_FAILED : g_state;
        reason = g_proxy ? "ws_proxy_status failed" : g_reason;
    } else {
        reason = st.reason;
    }
    str_copy(b->reason, sizeof b->reason, reason);
    pthread_mutex_unlock(&g_mu);
    if (st.state == WS_PROXY_RUNNING) {
        /* a setting changed since the start may stop every relayed login */
        char engine[80], relay[64], err[PLUGIN_ERRLEN];
        if (srv_engine_address(engine, sizeof engine, relay, sizeof relay, err, sizeof err) ||
            relay_check(relay, err, sizeof err)) {
            st.state = WS_PROXY_FAILED;
            snprintf(b->reason, sizeof b->reason, "%.400s, then SET GLOBAL wsproxy_restart = ON",
                     err);
        }
    }
    pthread_mutex_lock(&g_mu);
    if (g_proxy && g_dormant && st.state == WS_PROXY_STOPPED) {
        st.state = -1;
        snprintf(b->reason, sizeof b->reason, "read_only = ON: a replica, and "
                 "wsproxy_serve_on = primary; serves once read_only = OFF");
    }
    pthread_mutex_unlock(&g_mu);
    snprintf(b->state, sizeof b->state, "%s", st.state == WS_PROXY_RUNNING ? "RUNNING" :
             st.state == WS_PROXY_FAILED ? "FAILED" : st.state < 0 ? "DORMANT" : "STOPPED");
    snprintf(b->scheme, sizeof b->scheme, "%s",
             st.state != WS_PROXY_RUNNING ? "" : st.tls ? "wss" : "ws");
    b->port = st.port;
    v = b->vars;
#define SV(nm, val, ty) (v->name = (nm), v->value = (void *)(val), v->type = (ty), v++)
    SV("state", b->state, SHOW_CHAR);
    SV("reason", b->reason, SHOW_CHAR);
    SV("port", &b->port, SHOW_INT);
    SV("scheme", b->scheme, SHOW_CHAR);
    b->n[k] = st.conns_open;
    SV("connections_open", &b->n[k++], SHOW_ULONGLONG);
    b->n[k] = st.conns_total;
    SV("connections_total", &b->n[k++], SHOW_ULONGLONG);
    b->n[k] = st.bytes_to_engine;
    SV("bytes_to_engine", &b->n[k++], SHOW_ULONGLONG);
    b->n[k] = st.bytes_to_client;
    SV("bytes_to_client", &b->n[k++], SHOW_ULONGLONG);
    for (i = 0; i < WS_PROXY_REFUSED_COUNT_; i++) {
        b->n[k] = st.refused[i];
        SV(refused[i], &b->n[k++], SHOW_ULONGLONG);
    }
    b->n[k] = st.tls_failures;
    SV("tls_failures", &b->n[k++], SHOW_ULONGLONG);
    b->n[k] = st.protocol_errors;
    SV("protocol_errors", &b->n[k++], SHOW_ULONGLONG);
    SV(NULL, NULL, SHOW_UNDEF);
#undef SV
    var->type = SHOW_ARRAY;
    var->value = (void *)b->vars;
    return 0;
}

static struct st_mysql_show_var wsproxy_status[] = {
    {"wsproxy", (void *)show_wsproxy, SHOW_FUNC},
    {NULL, NULL, SHOW_UNDEF}};

/* ==== Plugin init and deinit ============================================== */

static int wsproxy_init(void *p)
{
    char err[PLUGIN_ERRLEN], line[PLUGIN_ERRLEN + 64];
    int rc;
    (void)p;
    pthread_mutex_lock(&g_mu);
    g_proxy = NULL;
    g_state = WS_PROXY_STOPPED;
    g_reason[0] = 0;
    __atomic_store_n(&g_shutdown, 0, __ATOMIC_RELEASE);
    if (!opt_bind_address || !*opt_bind_address) /* reads back what is bound */
        str_set(&opt_bind_address, srv_bind_default());
    if ((rc = proxy_apply(err, sizeof err)) != 0) {
        /* never fail the server's start: the proxy stays FAILED until
         * SET GLOBAL wsproxy_restart = ON */
        g_state = WS_PROXY_FAILED;
        str_copy(g_reason, sizeof g_reason, err);
        snprintf(line, sizeof line, "not serving: %s", err);
        log_plugin(WS_PROXY_LOG_ERROR, line);
    }
    g_role_stop = 0;
    g_role_running = pthread_create(&g_role_thread, NULL, role_main, NULL) == 0;
    pthread_mutex_unlock(&g_mu);
    return 0;
}

static int wsproxy_deinit(void *p)
{
    (void)p;
    pthread_mutex_lock(&g_mu);
    g_role_stop = 1;
    pthread_cond_signal(&g_role_cv);
    pthread_mutex_unlock(&g_mu);
    if (g_role_running)
        pthread_join(g_role_thread, NULL);
    g_role_running = 0;
    proxy_shutdown();
    return 0;
}

static struct st_mysql_daemon wsproxy_info = {MYSQL_DAEMON_INTERFACE_VERSION};

/* plugin.h's export macro is empty on gcc; the .so is built with
 * -fvisibility=hidden, so the declaration is made visible here. */
#pragma GCC visibility push(default)
maria_declare_plugin(wsproxy){
    MYSQL_DAEMON_PLUGIN,
    &wsproxy_info,
    "wsproxy",
    "The wsproxy authors",
    "WebSocket (ws:// and wss://) proxy in front of the server's own TCP listener",
    PLUGIN_LICENSE_BSD,
    wsproxy_init,
    wsproxy_deinit,
    0x0100,
    wsproxy_status,
    wsproxy_sysvars,
    WS_PROXY_VERSION,
    MariaDB_PLUGIN_MATURITY_GAMMA} maria_declare_plugin_end;
#pragma GCC visibility pop
