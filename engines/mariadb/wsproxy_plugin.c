/*
 * wsproxy_plugin.c - wsproxy as a MariaDB daemon plugin.
 *
 * The plugin runs one ws_proxy (../../wsproxy.c, compiled in unchanged) in
 * front of the server's own Unix socket.  Its configuration is the plugin's
 * system variables (wsproxy_http_port, wsproxy_https_port, ...); it starts
 * at plugin init and is restarted by SET GLOBAL wsproxy_restart = ON, which
 * either fails with an SQL error (the proxy goes on exactly as before) or
 * leaves the proxy listening where the variables say.  Its real state is in
 * SHOW GLOBAL STATUS LIKE 'wsproxy%'.  See README.md next to this file.
 *
 * Identity.  Inside the server the relay is mariadbd itself, so on the
 * server's Unix socket every WebSocket would carry the server's own peer
 * credentials, and unix_socket authentication (Debian: root@localhost and
 * mysql@localhost) would let any browser in as that account.  The plugin
 * wraps the server's getsockopt so that a peer which is mariadbd itself
 * has no user name (see "The relay's identity").  The PROXY v2 header is
 * always on (MariaDB needs proxy_protocol_networks to include localhost),
 * and a server running with skip-grant-tables is refused.
 *
 * Shutdown.  The proxy is stopped (Close 1001) when the server starts
 * ending its sessions, not after (see "Shutdown").
 *
 * Locking.  g_mu serialises every call on the proxy handle (start, restart,
 * status, stop), so ws_proxy_stop() never races another call.  g_cfg_mu
 * guards the string variables: their update callbacks (run by the server
 * under LOCK_global_system_variables) swap the pointer under it, and the
 * restart's check callback (run without that lock) copies them under it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
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

/* plugin_is_ready(const LEX_CSTRING *, int) of sql_plugin.cc (C++). */
typedef char (*plugin_is_ready_fn)(const MYSQL_CONST_LEX_STRING *, int);

/* Whether the server has finished starting: before that, other plugins
 * (unix_socket among them) may not be ready yet. */
static int srv_started(void)
{
    const int *p = dlsym(RTLD_DEFAULT, "mysqld_server_started");
    return p && *p;
}

static int srv_unix_socket_auth_active(void)
{
    MYSQL_CONST_LEX_STRING name = {"unix_socket", 11};
    plugin_is_ready_fn f = (plugin_is_ready_fn)(uintptr_t)dlsym(
        RTLD_DEFAULT, "_Z15plugin_is_readyPK25st_mysql_const_lex_stringi");
    return f ? f(&name, MYSQL_AUTHENTICATION_PLUGIN) != 0 : 1;
}

/* Whether the server takes a PROXY header from a client on its Unix socket:
 * "localhost" (or "*") in proxy_protocol_networks.  Once the server has
 * parsed the setting, its own is_proxy_protocol_allowed() (C++) answers;
 * at plugin init it has not yet, and the setting's text is read instead. */
typedef char (*pp_allowed_fn)(const struct sockaddr *);

static int srv_proxy_header_allowed(void)
{
    struct sockaddr_un un;
    const size_t *count = dlsym(RTLD_DEFAULT, "proxy_protocol_subnet_count");
    pp_allowed_fn f = (pp_allowed_fn)(uintptr_t)dlsym(
        RTLD_DEFAULT, "_Z25is_proxy_protocol_allowedPK8sockaddr");
    const char *s, *e;
    if (f && count && *count) {
        memset(&un, 0, sizeof un);
        un.sun_family = AF_UNIX;
        return f((const struct sockaddr *)&un) != 0;
    }
    s = srv_str_ptr("my_proxy_protocol_networks");
    if (!strcmp(s, "*"))
        return 1;
    for (; *s; s = e) {
        s += strspn(s, ", ");
        e = s + strcspn(s, ", ");
        if (e - s == 9 && !strncmp(s, "localhost", 9))
            return 1;
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

/* MariaDB's update of a PLUGIN_VAR_MEMALLOC string copies the new value
 * with the server's allocator and frees the old one; this does the same
 * (my_strdup/my_free of mysys, looked up in mariadbd) under g_cfg_mu. */
typedef char *(*my_strdup_fn)(unsigned key, const char *from, unsigned long flags);
typedef void (*my_free_fn)(void *ptr);

static void str_update(MYSQL_THD thd, struct st_mysql_sys_var *var, void *var_ptr,
                       const void *save)
{
    my_strdup_fn dup = (my_strdup_fn)(uintptr_t)dlsym(RTLD_DEFAULT, "my_strdup");
    my_free_fn fre = (my_free_fn)(uintptr_t)dlsym(RTLD_DEFAULT, "my_free");
    const char *value = *(char *const *)save;
    char *old, *copy = NULL;
    (void)thd;
    (void)var;
    if (!dup || !fre || (value && !(copy = dup(0, value, 0))))
        return; /* keeps the old value */
    pthread_mutex_lock(&g_cfg_mu);
    old = *(char **)var_ptr;
    *(char **)var_ptr = copy;
    pthread_mutex_unlock(&g_cfg_mu);
    fre(old);
}

static int restart_check(MYSQL_THD thd, struct st_mysql_sys_var *var, void *save,
                         struct st_mysql_value *value);
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
    "Numeric IPv4 or IPv6 address to listen on", NULL, str_update, "0.0.0.0");
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
    MYSQL_SYSVAR(log_dir), MYSQL_SYSVAR(max_connections),
    MYSQL_SYSVAR(max_connections_per_ip), MYSQL_SYSVAR(max_message),
    MYSQL_SYSVAR(handshake_timeout_ms), MYSQL_SYSVAR(idle_timeout_ms),
    MYSQL_SYSVAR(ping_interval_ms), MYSQL_SYSVAR(drain_timeout_ms),
    MYSQL_SYSVAR(restart), NULL};

/* ==== Configuration ======================================================= */

/* A configuration with its strings, copied from the variables. */
struct plugin_cfg {
    struct ws_proxy_config c;
    char bind[64], cert[PLUGIN_PATHLEN], key[PLUGIN_PATHLEN], log_dir[PLUGIN_PATHLEN],
        origins[4096], sock[PLUGIN_PATHLEN];
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
                  ? opt_bind_address : "0.0.0.0", "wsproxy_bind_address", err, errlen) ||
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
    if (copy_str(pc->sock, sizeof pc->sock, srv_str_ptr("mysqld_unix_port"),
                 "the server's socket path", err, errlen))
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
    if (!pc->sock[0]) {
        snprintf(err, errlen, "the server has no Unix socket (socket is not set)");
        return -1;
    }
    pc->c.http_port = opt_http_port;
    pc->c.https_port = opt_https_port;
    pc->c.bind_address = pc->bind;
    pc->c.socket_path = pc->sock;
    pc->c.cert_file = opt_https_port ? pc->cert : NULL;
    pc->c.key_file = opt_https_port ? pc->key : NULL;
    pc->c.log_dir = pc->log_dir;
    pc->c.log_fn = log_to_server;
    pc->c.allowed_origins = pc->origins;
    pc->c.max_connections = opt_max_connections;
    pc->c.max_connections_per_ip = opt_max_connections_per_ip;
    pc->c.max_message = opt_max_message;
    pc->c.handshake_timeout_ms = opt_handshake_timeout_ms;
    pc->c.idle_timeout_ms = opt_idle_timeout_ms;
    pc->c.ping_interval_ms = opt_ping_interval_ms;
    pc->c.drain_timeout_ms = opt_drain_timeout_ms;
    pc->c.proxy_protocol = WS_PROXY_PP_V2; /* always: see "Identity" above */
    return 0;
}

/* ==== Logging ============================================================= */

static void log_to_server(void *user, int level, const char *line)
{
    (void)user;
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

/* ==== Hooks in mariadbd ===================================================
 * Two things the plugin needs are not in MariaDB's plugin API, so it wraps
 * two functions mariadbd imports from libc, by their entries in its GOT:
 * getsockopt (see "The relay's identity") and poll (see "Shutdown").
 *
 * An entry is found through the main program's relocations and must hold
 * the function's address, or it is left alone: a server laid out
 * otherwise is never written.  Relocation made the GOT read-only (RELRO),
 * so its page is made writable for the one store and restored.  A wrapper
 * reads the original from h->orig, which is set before the entry and kept
 * after it is restored, so a call already past the entry finishes right.
 *
 * The wrappers' code must outlive every call into it, also after UNINSTALL
 * SONAME: the library is made RTLD_NODELETE, so deinit puts the entries
 * back but the code stays mapped (and INSTALL SONAME finds it again, with
 * its statics as deinit left them). */

struct hook {
    const char *name;
    void *wrapper;
    void *orig;  /* the server's function, once found */
    void **slot; /* its GOT entry while wrapped, else NULL */
};

/* The protection of the page holding addr, from /proc/self/maps; -1 if
 * not found. */
static int page_prot(const void *addr)
{
    FILE *f = fopen("/proc/self/maps", "re");
    char line[512], perms[8];
    unsigned long lo, hi, a = (unsigned long)(uintptr_t)addr;
    int prot = -1;
    if (!f)
        return -1;
    while (prot < 0 && fgets(line, sizeof line, f))
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) == 3 && a >= lo && a < hi)
            prot = (perms[0] == 'r' ? PROT_READ : 0) | (perms[1] == 'w' ? PROT_WRITE : 0) |
                   (perms[2] == 'x' ? PROT_EXEC : 0);
    fclose(f);
    return prot;
}

/* Replaces *slot by value if it holds expect.  0, or -1 with the reason. */
static int slot_swap(void **slot, void *expect, void *value, char *err, size_t errlen)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    void *page = (void *)((uintptr_t)slot & ~(uintptr_t)(pg - 1));
    int prot = page_prot(slot);
    err[0] = 0;
    if (prot < 0)
        snprintf(err, errlen, "the GOT is not in /proc/self/maps");
    else if (!(prot & PROT_WRITE) && mprotect(page, pg, prot | PROT_WRITE))
        snprintf(err, errlen, "mprotect: %s", strerror(errno));
    else {
        if (!__atomic_compare_exchange_n(slot, &expect, value, 0, __ATOMIC_SEQ_CST,
                                         __ATOMIC_SEQ_CST))
            snprintf(err, errlen, "the GOT entry changed meanwhile");
        if (!(prot & PROT_WRITE))
            mprotect(page, pg, prot);
    }
    return err[0] ? -1 : 0;
}

static int keep_loaded(char *err, size_t errlen)
{
    static int kept;
    Dl_info di;
    if (kept)
        return 0;
    if (!dladdr((void *)(uintptr_t)keep_loaded, &di) || !di.dli_fname ||
        !dlopen(di.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE)) {
        snprintf(err, errlen, "cannot keep the plugin's library loaded: %s", dlerror());
        return -1;
    }
    kept = 1;
    return 0;
}

#if __ELF_NATIVE_CLASS == 64
#define REL_SYM ELF64_R_SYM
#else
#define REL_SYM ELF32_R_SYM
#endif

/* dl_iterate_phdr() callback: the GOT entry of h->name in the main program
 * (the first object reported), into h->slot if it holds h->orig. */
static int got_search_main(struct dl_phdr_info *info, size_t size, void *arg)
{
    struct hook *h = arg;
    const ElfW(Dyn) *d = NULL;
    const ElfW(Sym) *sym = NULL;
    const char *str = NULL;
    const ElfW(Rela) *rel[2] = {NULL, NULL};
    size_t relsz[2] = {0, 0}, i, k;
    int pltrela = 0;
    ElfW(Addr) base = info->dlpi_addr;
    (void)size;
    for (i = 0; i < info->dlpi_phnum; i++)
        if (info->dlpi_phdr[i].p_type == PT_DYNAMIC)
            d = (const ElfW(Dyn) *)(base + info->dlpi_phdr[i].p_vaddr);
    /* glibc rewrites these addresses in place, other loaders may not */
#define DYN_PTR(v) ((v) >= base ? (v) : base + (v))
    for (; d && d->d_tag != DT_NULL; d++) {
        switch (d->d_tag) {
        case DT_SYMTAB: sym = (const ElfW(Sym) *)DYN_PTR(d->d_un.d_ptr); break;
        case DT_STRTAB: str = (const char *)DYN_PTR(d->d_un.d_ptr); break;
        case DT_JMPREL: rel[0] = (const ElfW(Rela) *)DYN_PTR(d->d_un.d_ptr); break;
        case DT_PLTRELSZ: relsz[0] = d->d_un.d_val; break;
        case DT_PLTREL: pltrela = d->d_un.d_val == DT_RELA; break;
        case DT_RELA: rel[1] = (const ElfW(Rela) *)DYN_PTR(d->d_un.d_ptr); break;
        case DT_RELASZ: relsz[1] = d->d_un.d_val; break;
        default: break;
        }
    }
#undef DYN_PTR
    if (!pltrela)
        rel[0] = NULL;
    for (k = 0; k < 2 && sym && str && !h->slot; k++)
        for (i = 0; rel[k] && i < relsz[k] / sizeof(ElfW(Rela)); i++) {
            void **slot = (void **)(base + rel[k][i].r_offset);
            size_t si = REL_SYM(rel[k][i].r_info);
            if (si && !strcmp(str + sym[si].st_name, h->name) && *slot == h->orig) {
                h->slot = slot;
                break;
            }
        }
    return 1; /* the main program only */
}

/* Wraps h; 0, or -1 with the reason.  Caller holds g_mu. */
static int hook_set(struct hook *h, char *err, size_t errlen)
{
    void **slot;
    char why[96];
    if (h->slot)
        return 0;
    __atomic_store_n(&h->orig, dlsym(RTLD_DEFAULT, h->name), __ATOMIC_RELEASE);
    if (h->orig)
        dl_iterate_phdr(got_search_main, h);
    if (!h->slot) {
        snprintf(err, errlen, "mariadbd has no GOT entry for %s", h->name);
        return -1;
    }
    slot = h->slot;
    h->slot = NULL;
    if (keep_loaded(why, sizeof why) || slot_swap(slot, h->orig, h->wrapper, why, sizeof why)) {
        snprintf(err, errlen, "cannot wrap mariadbd's %s: %s", h->name, why);
        return -1;
    }
    h->slot = slot;
    return 0;
}

static void hook_unset(struct hook *h)
{
    char why[96];
    if (h->slot)
        slot_swap(h->slot, h->wrapper, h->orig, why, sizeof why);
    h->slot = NULL;
}

/* ==== The relay's identity ================================================
 * Every engine connection the proxy makes is a connection of mariadbd to
 * its own socket, so SO_PEERCRED on the server's end of it names the
 * server's own uid, and unix_socket authentication would let a WebSocket
 * client in as the account of that name (Debian: root@localhost and
 * mysql@localhost, all privileges).  No uid change can help a server that
 * is not root, so the plugin changes what the server is told instead:
 * while it is loaded, a peer that is mariadbd itself is reported to the
 * server (whose built-in unix_socket plugin asks getsockopt(SO_PEERCRED))
 * with uid and gid -1, which no passwd entry has: unix_socket refuses it
 * ("Access denied"), at login and at COM_CHANGE_USER alike, whatever the
 * client's address and whoever the server runs as.  Every other peer (a
 * local client, another process's proxy), and every other option, passes
 * through untouched.
 *
 * Where the hook cannot be set (a server built otherwise, a policy that
 * forbids mprotect), the plugin serves only while unix_socket is off. */

typedef int (*getsockopt_fn)(int, int, int, void *, socklen_t *);

static int peer_getsockopt(int fd, int level, int name, void *val, socklen_t *len);

static struct hook g_peer_hook = {"getsockopt", (void *)(uintptr_t)peer_getsockopt,
                                  NULL, NULL};
static char g_peer_err[160]; /* why g_peer_hook is not set */

static int peer_getsockopt(int fd, int level, int name, void *val, socklen_t *len)
{
    getsockopt_fn real =
        (getsockopt_fn)(uintptr_t)__atomic_load_n(&g_peer_hook.orig, __ATOMIC_ACQUIRE);
    int rc = real(fd, level, name, val, len);
    if (rc == 0 && level == SOL_SOCKET && name == SO_PEERCRED && val && len &&
        *len >= sizeof(struct ucred)) {
        struct ucred *u = val;
        if (u->pid == getpid()) {
            u->uid = (uid_t)-1;
            u->gid = (gid_t)-1;
        }
    }
    return rc;
}

/* Sets the hook and checks it through the server's GOT entry: the peer of
 * a socketpair is this process.  Caller holds g_mu. */
static void identity_hook_set(void)
{
    int sv[2], ok;
    struct ucred u;
    socklen_t len = sizeof u;
    if (g_peer_hook.slot || hook_set(&g_peer_hook, g_peer_err, sizeof g_peer_err))
        return;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) {
        snprintf(g_peer_err, sizeof g_peer_err, "socketpair: %s", strerror(errno));
        hook_unset(&g_peer_hook);
        return;
    }
    ok = ((getsockopt_fn)(uintptr_t)*g_peer_hook.slot)(sv[0], SOL_SOCKET, SO_PEERCRED,
                                                       &u, &len) == 0 && u.uid == (uid_t)-1;
    close(sv[0]);
    close(sv[1]);
    if (!ok) {
        snprintf(g_peer_err, sizeof g_peer_err, "the getsockopt hook does not answer");
        hook_unset(&g_peer_hook);
    }
}

/* Checks that no WebSocket client can authenticate by the server's peer
 * credentials, nor without any. */
static int identity_check(char *err, size_t errlen)
{
    const char *noacl = dlsym(RTLD_DEFAULT, "opt_noacl");
    if (noacl && *noacl) {
        snprintf(err, errlen, "the server runs with skip_grant_tables: every WebSocket "
                 "client would get in without a password; start it without "
                 "skip-grant-tables");
        return -1;
    }
    if (!srv_proxy_header_allowed()) {
        snprintf(err, errlen, "the server does not accept the PROXY header on its "
                 "Unix socket: add localhost to proxy_protocol_networks "
                 "(e.g. proxy_protocol_networks = localhost)");
        return -1;
    }
    /* While the server starts, unix_socket is not ready yet: count it */
    if (g_peer_hook.slot || (srv_started() && !srv_unix_socket_auth_active()))
        return 0;
    {
        char buf[4096];
        struct passwd pwb, *pw = NULL;
        const char *name = getpwuid_r(geteuid(), &pwb, buf, sizeof buf, &pw) == 0 && pw
                           ? pw->pw_name : "?";
        snprintf(err, errlen, "unix_socket authentication would let WebSocket clients in "
                 "as '%s', the server's own user, since the plugin cannot hide the "
                 "server's peer credentials (%s): turn unix_socket authentication off "
                 "(unix_socket = OFF) and SET GLOBAL wsproxy_restart = ON",
                 name, g_peer_err);
    }
    return -1;
}

/* ==== Shutdown ============================================================
 * At shutdown MariaDB ends its client sessions first, which would close
 * each relayed WebSocket with 1000, as an engine that hangs up does, and
 * deinitialises plugins later.  The proxy is to stop first, with Close 1001
 * ("going away").  MariaDB tells no plugin that it is shutting down, but
 * its main thread leaves the poll() of its accept loop for that (with
 * abort_loop set), before it ends any session.  So mariadbd's poll is
 * wrapped, and the first call to return after abort_loop is set stops the
 * proxy.  Without the hook, deinit stops it (clients then mostly see 1000). */

typedef int (*poll_fn)(struct pollfd *, nfds_t, int);

static int shutdown_poll(struct pollfd *fds, nfds_t n, int timeout);

static struct hook g_poll_hook = {"poll", (void *)(uintptr_t)shutdown_poll, NULL, NULL};
static const volatile char *g_abort_loop; /* mariadbd's abort_loop */
static int g_shutdown;                    /* the server is shutting down */

static void proxy_shutdown(void);

static int shutdown_poll(struct pollfd *fds, nfds_t n, int timeout)
{
    poll_fn real = (poll_fn)(uintptr_t)__atomic_load_n(&g_poll_hook.orig, __ATOMIC_ACQUIRE);
    int rc = real(fds, n, timeout), e = errno;
    if (g_abort_loop && *g_abort_loop && !__atomic_load_n(&g_shutdown, __ATOMIC_ACQUIRE)) {
        proxy_shutdown();
        errno = e; /* the server looks at EINTR */
    }
    return rc;
}

static void shutdown_hook_set(void)
{
    char err[160];
    if ((g_abort_loop = dlsym(RTLD_DEFAULT, "abort_loop")) != NULL)
        hook_set(&g_poll_hook, err, sizeof err);
}

/* ==== The proxy =========================================================== */

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static ws_proxy *g_proxy;     /* NULL: not started, g_state/g_reason say why */
static int g_state = WS_PROXY_STOPPED;
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
static int proxy_apply(char *err, size_t errlen)
{
    static struct plugin_cfg pc; /* under g_mu */
    if (g_shutdown) {
        snprintf(err, errlen, "the server is shutting down");
        return -1;
    }
    if (cfg_build(&pc, err, errlen) || identity_check(err, errlen))
        return -1;
    if (g_proxy)
        return ws_proxy_restart(g_proxy, &pc.c, err, errlen) ? -1 : 0;
    if (!pc.c.http_port && !pc.c.https_port) {
        g_state = WS_PROXY_STOPPED;
        g_reason[0] = 0;
        return 0;
    }
    if (!(g_proxy = proxy_spawn(&pc.c, err, errlen)))
        return -1;
    g_reason[0] = 0;
    return 0;
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
    pthread_mutex_unlock(&g_mu);
}

static int restart_check(MYSQL_THD thd, struct st_mysql_sys_var *var, void *save,
                         struct st_mysql_value *value)
{
    char err[PLUGIN_ERRLEN], buf[16];
    int len = sizeof buf, on, rc;
    long long v;
    (void)thd;
    (void)var;
    if (value->value_type(value) == MYSQL_VALUE_TYPE_STRING) {
        const char *s = value->val_str(value, buf, &len);
        if (s && (!strcasecmp(s, "ON") || !strcasecmp(s, "TRUE") || !strcmp(s, "1")))
            on = 1;
        else if (s && (!strcasecmp(s, "OFF") || !strcasecmp(s, "FALSE") || !strcmp(s, "0")))
            on = 0;
        else
            return 1;
    } else {
        value->val_int(value, &v);
        if (v != 0 && v != 1)
            return 1;
        on = (int)v;
    }
    *(my_bool *)save = 0;
    if (!on)
        return 0;
    pthread_mutex_lock(&g_mu);
    rc = proxy_apply(err, sizeof err);
    pthread_mutex_unlock(&g_mu);
    if (rc) {
        my_printf_error(ER_UNKNOWN_ERROR, "wsproxy_restart failed: %s", 0, err);
        return 1;
    }
    return 0;
}

static void restart_update(MYSQL_THD thd, struct st_mysql_sys_var *var, void *var_ptr,
                           const void *save)
{
    (void)thd;
    (void)var;
    (void)save;
    *(my_bool *)var_ptr = 0; /* reads back OFF */
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
    snprintf(b->state, sizeof b->state, "%s", st.state == WS_PROXY_RUNNING ? "RUNNING" :
             st.state == WS_PROXY_FAILED ? "FAILED" : "STOPPED");
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
    identity_hook_set();
    shutdown_hook_set();
    if ((rc = proxy_apply(err, sizeof err)) != 0) {
        /* never fail the server's start: the proxy stays FAILED until
         * SET GLOBAL wsproxy_restart = ON */
        g_state = WS_PROXY_FAILED;
        str_copy(g_reason, sizeof g_reason, err);
        snprintf(line, sizeof line, "not serving: %s", err);
        log_plugin(WS_PROXY_LOG_ERROR, line);
    }
    pthread_mutex_unlock(&g_mu);
    return 0;
}

static int wsproxy_deinit(void *p)
{
    (void)p;
    proxy_shutdown();
    pthread_mutex_lock(&g_mu);
    hook_unset(&g_poll_hook);
    hook_unset(&g_peer_hook);
    pthread_mutex_unlock(&g_mu);
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
    "WebSocket (ws:// and wss://) proxy in front of the server's Unix socket",
    PLUGIN_LICENSE_BSD,
    wsproxy_init,
    wsproxy_deinit,
    0x0100,
    wsproxy_status,
    wsproxy_sysvars,
    WS_PROXY_VERSION,
    MariaDB_PLUGIN_MATURITY_GAMMA} maria_declare_plugin_end;
#pragma GCC visibility pop
