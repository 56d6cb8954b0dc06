/*
 * program/main.c - the standalone wsproxy program, a client of wsproxy.h
 * like every engine.  MIT licence; see LICENSE.
 *
 * Options are collected once from argv; a configuration is built from the
 * --config file (if any) and then those options, so the command line wins
 * for every option, and a list given on the command line replaces the
 * file's.  SIGHUP builds it again (re-reading the file) and restarts;
 * SIGUSR1 reopens the log; SIGTERM/SIGINT stop.  Signals are taken with
 * sigwait() on the main thread, so no handler ever runs.
 *
 * The --config file is read the way MariaDB reads an option file
 * (mysys/my_default.c; `my_print_defaults --defaults-file=F wsproxy` shows
 * what MariaDB makes of one), with the differences docs/program.md lists:
 * lines of any length, lines before the first [section] taken as
 * [wsproxy], and every doubtful line an error naming the file and line,
 * never skipped.
 *
 * Started as root, the program needs --user NAME (or --allow-root).  It
 * takes NAME's groups, and on Linux its uid with only the capabilities to
 * bind a low port and read root's files, before the loop thread exists;
 * binds, opens its log and reads its key files; then drops root for good in
 * every thread (setresuid/setuid) and checks that it cannot get it back.
 *
 * Exit status: 0 after SIGTERM/SIGINT, 1 when the proxy cannot start, 2 for
 * a usage or configuration error.
 *
 * WSPROXY_NO_MAIN compiles only the configuration reader, without main()
 * (test/fuzz.c and test/config_dump.c include this file).
 */

/* Linux needs _GNU_SOURCE for setresuid.  The BSDs and macOS show their
 * extensions (initgroups) unless _POSIX_C_SOURCE asks for POSIX alone, so
 * nothing is defined there (see wsproxy.c's feature-test macros). */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE
#endif

#include "../wsproxy.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/syscall.h>

/* The kernel's capability ABI (linux/capability.h, which musl toolchains and
 * Alpine without linux-headers do not have): capset(2) takes a header and,
 * for version 3, two data words of which the first holds capabilities 0-31. */
struct cli_cap_header {
    uint32_t version;
    int pid;
};
struct cli_cap_data {
    uint32_t effective, permitted, inheritable;
};
#define CLI_CAP_VERSION_3 0x20080522u
#define CLI_CAP_DAC_OVERRIDE 1
#define CLI_CAP_DAC_READ_SEARCH 2
#define CLI_CAP_NET_BIND_SERVICE 10

#if defined(__GLIBC__) && !defined(__USE_GNU)
/* A unity build whose first system header came before _GNU_SOURCE: glibc
 * has setresuid() but declares it only under _GNU_SOURCE. */
int setresuid(uid_t ruid, uid_t euid, uid_t suid);
#endif
#endif

#define CLI_COUNT(a) (sizeof(a) / sizeof((a)[0]))

#ifdef MSG_NOSIGNAL
#define CLI_SEND_FLAGS MSG_NOSIGNAL
#else
#define CLI_SEND_FLAGS 0
#endif

/* Formats a one-line reason into err; returns code. */
static int cli_err(char *err, size_t errlen, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return code;
}

/* Largest configuration file read, bytes (each !include counts apart). */
#ifndef WS_PROXY_CONFIG_MAX
#define WS_PROXY_CONFIG_MAX (16u << 20)
#endif
#define CLI_INCLUDE_DEPTH 10 /* MariaDB's limit too */
#define CLI_MAX_OPTS 48      /* room in struct cli for cli_opts[] */

enum { T_PORT, T_UINT, T_U64, T_STR, T_LIST, T_PP, T_ADDR, T_BOOL, T_FILE, T_SECTION };

/* A configuration being built, and the strings it owns. */
struct cli {
    struct ws_proxy_config cfg;
    const char *user;    /* the account to run as when started as root */
    int allow_root;      /* run as root anyway (a warning at every start) */
    int allow_socket_owner; /* relay without a header as the socket's owner */
    const char *section; /* --config-section: read besides [wsproxy] */
    int no_include;      /* the fuzz target: !include opens nothing */
    const char *from[CLI_MAX_OPTS]; /* "FILE:LINE" that set cli_opts[i]; NULL:
                                     * not set, or by the command line */
    char **owned;
    size_t nowned, capowned;
};

struct cli_opt {
    const char *name;  /* long option; in --config files '-' or '_' */
    int type;
    size_t off;        /* field of struct cli */
    const char *alias; /* the configuration field's name, if different */
};

#define CFG_AT(f) (offsetof(struct cli, cfg) + offsetof(struct ws_proxy_config, f))
#define CLI_AT(f) offsetof(struct cli, f)
static const struct cli_opt cli_opts[] = {
    {"http-port", T_PORT, CFG_AT(http_port), NULL},
    {"https-port", T_PORT, CFG_AT(https_port), NULL},
    {"bind", T_ADDR, CFG_AT(bind_address), "bind-address"},
    {"socket", T_STR, CFG_AT(socket_path), "socket-path"},
    {"cert", T_STR, CFG_AT(cert_file), "cert-file"},
    {"key", T_STR, CFG_AT(key_file), "key-file"},
    {"log-dir", T_STR, CFG_AT(log_dir), NULL},
    {"allowed-origin", T_LIST, CFG_AT(allowed_origins), "allowed-origins"},
    {"subprotocol", T_LIST, CFG_AT(subprotocols), "subprotocols"},
    {"max-connections", T_UINT, CFG_AT(max_connections), NULL},
    {"max-connections-per-ip", T_UINT, CFG_AT(max_connections_per_ip), NULL},
    {"max-message", T_U64, CFG_AT(max_message), NULL},
    {"handshake-timeout", T_UINT, CFG_AT(handshake_timeout_ms), "handshake-timeout-ms"},
    {"idle-timeout", T_UINT, CFG_AT(idle_timeout_ms), "idle-timeout-ms"},
    {"ping-interval", T_UINT, CFG_AT(ping_interval_ms), "ping-interval-ms"},
    {"drain-timeout", T_UINT, CFG_AT(drain_timeout_ms), "drain-timeout-ms"},
    {"send-timeout", T_UINT, CFG_AT(send_timeout_ms), "send-timeout-ms"},
    {"proxy-protocol", T_PP, CFG_AT(proxy_protocol), NULL},
    {"metrics-path", T_STR, CFG_AT(metrics_path), NULL},
    {"metrics-allow", T_LIST, CFG_AT(metrics_allow), NULL},
    {"user", T_STR, CLI_AT(user), NULL},
    {"allow-root", T_BOOL, CLI_AT(allow_root), NULL},
    {"allow-socket-owner", T_BOOL, CLI_AT(allow_socket_owner), NULL},
    {"config", T_FILE, 0, NULL},
    {"config-section", T_SECTION, CLI_AT(section), NULL},
};
typedef char cli_opts_fit[CLI_COUNT(cli_opts) <= CLI_MAX_OPTS ? 1 : -1];

/* The largest number, or the longest string, an option takes; 0 = the
 * field's own range.  The library would refuse more, without a file:line. */
static unsigned long long cli_max(const struct cli_opt *o)
{
    if (o->off == CFG_AT(max_connections))
        return WS_PROXY_MAX_CONNECTIONS_LIMIT;
    if (o->off == CFG_AT(socket_path))
        return sizeof(((struct sockaddr_un *)0)->sun_path) - 1;
    return 0;
}

/* Takes ownership of str (NULL on failure, str freed). */
static char *cli_keep(struct cli *s, char *str)
{
    if (str && s->nowned == s->capowned) {
        size_t cap = s->capowned ? s->capowned * 2 : 16;
        char **o = realloc(s->owned, cap * sizeof *o);
        if (!o) {
            free(str);
            return NULL;
        }
        s->owned = o;
        s->capowned = cap;
    }
    if (str)
        s->owned[s->nowned++] = str;
    return str;
}

/* Frees old if s owns it: a setting given again leaves no garbage behind. */
static void cli_drop(struct cli *s, const char *old)
{
    size_t i = s->nowned;
    while (old && i--)
        if (s->owned[i] == old) {
            free(s->owned[i]);
            s->owned[i] = s->owned[--s->nowned];
            return;
        }
}

static void cli_free(struct cli *s)
{
    while (s->nowned)
        free(s->owned[--s->nowned]);
    free(s->owned);
    s->owned = NULL;
    s->capowned = 0;
}

static int cli_space(int c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* ASCII case-insensitive equality (section names, boolean words). */
static int cli_ieq(const char *a, const char *b)
{
    for (; *a && *b; a++, b++)
        if (*a != *b && !((*a | 0x20) == (*b | 0x20) && (*a | 0x20) >= 'a' &&
                          (*a | 0x20) <= 'z'))
            return 0;
    return *a == *b;
}

/* A decimal number with MariaDB's optional suffix K, M, G, T, P or E
 * (times 1024 each) when suffix is set. */
static int cli_number(const char *v, unsigned long long max, int suffix,
                      unsigned long long *out)
{
    static const char units[] = "kmgtpe";
    const char *u;
    char *end;
    if (*v < '0' || *v > '9')
        return -1;
    errno = 0;
    *out = strtoull(v, &end, 10);
    if (errno)
        return -1;
    if (suffix && *end && !end[1] && (u = strchr(units, *end | 0x20)) != NULL) {
        int k = (int)(u - units) + 1;
        while (k--) {
            if (*out > ~0ull / 1024)
                return -1;
            *out *= 1024;
        }
        end++;
    }
    return *end || *out > max ? -1 : 0;
}

/* 1, 0, or 2 for a word that is not a boolean (MariaDB's words, plus
 * yes/no). */
static int cli_bool(const char *v)
{
    if (cli_ieq(v, "1") || cli_ieq(v, "on") || cli_ieq(v, "true") || cli_ieq(v, "yes"))
        return 1;
    if (cli_ieq(v, "0") || cli_ieq(v, "off") || cli_ieq(v, "false") || cli_ieq(v, "no"))
        return 0;
    return 2;
}

/* Is an element of a metrics_allow list not an address or CIDR block?
 * Then 1, with it in word.  (The library refuses the same at start, but
 * without a file:line and with the status of a failed start.) */
static int cli_cidr_bad(const char *v, char *word, size_t wordlen)
{
    unsigned char addr[16];
    size_t n;
    for (; *(v += strspn(v, ", \t")); v += n) {
        char *slash, *end;
        long bits = 0;
        int v6;
        n = strcspn(v, ", \t");
        snprintf(word, wordlen, "%.*s", (int)n, v);
        if (n >= wordlen)
            return 1;
        v6 = strchr(word, ':') != NULL;
        if ((slash = strchr(word, '/')) != NULL) {
            *slash = 0;
            errno = 0;
            bits = strtol(slash + 1, &end, 10);
            if (!slash[1] || *end || errno || bits < 0 || bits > (v6 ? 128 : 32))
                bits = -1;
        }
        if (bits < 0 || inet_pton(v6 ? AF_INET6 : AF_INET, word, addr) != 1) {
            snprintf(word, wordlen, "%.*s", (int)n, v);
            return 1;
        }
    }
    return 0;
}

/* Sets one option; key is how the file spelled it (NULL: the command line).
 * A list value is appended unless replace is set.  Returns 0, or -1 with a
 * reason in err. */
static int cli_set(struct cli *s, const struct cli_opt *o, const char *v,
                   const char *key, int replace, char *err, size_t errlen)
{
    char *field = (char *)s + o->off, name[64];
    unsigned long long n, max = cli_max(o);
    unsigned char addr[16];
    char word[64];
    if (!key) {
        snprintf(name, sizeof name, "--%s", o->name);
        key = name;
    }
    if (o->off == CFG_AT(metrics_path) && *v && *v != '/')
        return cli_err(err, errlen, -1, "%s: must start with '/': %s", key, v);
    if (o->off == CFG_AT(metrics_allow) && cli_cidr_bad(v, word, sizeof word))
        return cli_err(err, errlen, -1, "%s: not an IPv4 or IPv6 address or CIDR block: %s",
                       key, word);
    switch (o->type) {
    case T_PORT:
        if (cli_number(v, 65535, 0, &n))
            return cli_err(err, errlen, -1, "%s: not a port number (1-65535): %s", key, v);
        *(int *)(void *)field = (int)n;
        return 0;
    case T_UINT:
        max = max ? max : 0xFFFFFFFFull;
        if (cli_number(v, max, 1, &n))
            return cli_err(err, errlen, -1, "%s: not a number from 0 to %llu: %s", key, max, v);
        *(unsigned *)(void *)field = (unsigned)n;
        return 0;
    case T_U64:
        if (cli_number(v, ~0ull, 1, &n))
            return cli_err(err, errlen, -1, "%s: not a number: %s", key, v);
        *(uint64_t *)(void *)field = n;
        return 0;
    case T_BOOL:
        if ((n = (unsigned)cli_bool(v)) > 1)
            return cli_err(err, errlen, -1,
                           "%s: not a boolean (1/0, on/off, true/false, yes/no): %s", key, v);
        *(int *)(void *)field = (int)n;
        return 0;
    case T_PP:
        if (!strcmp(v, "v2"))
            s->cfg.proxy_protocol = WS_PROXY_PP_V2;
        else if (!strcmp(v, "v1"))
            s->cfg.proxy_protocol = WS_PROXY_PP_V1;
        else if (!strcmp(v, "off"))
            s->cfg.proxy_protocol = WS_PROXY_PP_OFF;
        else
            return cli_err(err, errlen, -1, "%s: expected v2, v1 or off: %s", key, v);
        return 0;
    case T_ADDR:
        if (inet_pton(AF_INET, v, addr) != 1 && inet_pton(AF_INET6, v, addr) != 1)
            return cli_err(err, errlen, -1,
                           "%s: not a numeric IPv4 or IPv6 address: %s", key, v);
        break;
    default:
        if (max && strlen(v) > max)
            return cli_err(err, errlen, -1, "%s: longer than %llu bytes: %s", key, max, v);
        break;
    }
    {
        const char **dst = (const char **)(void *)field;
        const char *old = *dst;
        int append = o->type == T_LIST && !replace && old && *old && *v;
        size_t len = strlen(v) + (append ? strlen(old) + 1 : 0) + 1;
        char *copy = cli_keep(s, malloc(len));
        if (!copy)
            return cli_err(err, errlen, -1, "out of memory");
        if (append)
            snprintf(copy, len, "%s,%s", old, v);
        else
            memcpy(copy, v, len);
        cli_drop(s, old);
        *dst = copy;
    }
    return 0;
}

static const struct cli_opt *cli_find(const char *key, size_t len)
{
    size_t i, k;
    for (i = 0; i < CLI_COUNT(cli_opts); i++) {
        const char *names[2] = {cli_opts[i].name, cli_opts[i].alias};
        int j;
        for (j = 0; j < 2; j++) {
            if (!names[j] || strlen(names[j]) != len)
                continue;
            for (k = 0; k < len; k++)
                if (key[k] != names[j][k] && !(key[k] == '_' && names[j][k] == '-'))
                    break;
            if (k == len)
                return &cli_opts[i];
        }
    }
    return NULL;
}

/* Edit distance between a (len na) and b: insertions, deletions,
 * substitutions and swaps of two neighbours, with '_' and '-' alike; 3 for
 * anything over 2 (or for names over 60 bytes). */
static int cli_distance(const char *a, size_t na, const char *b)
{
    int row[3][62], i, j, d;
    int nb = (int)strlen(b);
    if (na > 60 || nb > 60)
        return 3;
    for (j = 0; j <= nb; j++)
        row[0][j] = j;
    for (i = 1; i <= (int)na; i++) {
        int *r = row[i % 3], *up = row[(i - 1) % 3], *up2 = row[(i + 1) % 3];
        r[0] = i;
        for (j = 1; j <= nb; j++) {
            int ca = a[i - 1] == '_' ? '-' : a[i - 1], cb = b[j - 1];
            d = up[j - 1] + (ca != cb);
            if (up[j] + 1 < d)
                d = up[j] + 1;
            if (r[j - 1] + 1 < d)
                d = r[j - 1] + 1;
            if (i > 1 && j > 1 && ca == b[j - 2] &&
                (a[i - 2] == '_' ? '-' : a[i - 2]) == cb && up2[j - 2] + 1 < d)
                d = up2[j - 2] + 1;
            r[j] = d;
        }
    }
    d = row[na % 3][nb];
    return d > 2 ? 3 : d;
}

/* " (did you mean NAME?)" for the option nearest to a misspelt key (within
 * two edits and under a third of its length), or "".  On the command line
 * "--name"; in a file the key's own spelling, '_' or '-'. */
static const char *cli_guess(const char *key, size_t len, int cmdline, char *buf,
                             size_t buflen)
{
    const char *best = NULL;
    int bestd = 3, d, j;
    size_t i;
    for (i = 0; i < CLI_COUNT(cli_opts); i++) {
        const char *names[2] = {cli_opts[i].name, cmdline ? NULL : cli_opts[i].alias};
        for (j = 0; j < 2; j++)
            if (names[j] && (d = cli_distance(key, len, names[j])) < bestd &&
                (size_t)d * 3 < len)
                best = names[j], bestd = d;
    }
    if (!best)
        return "";
    snprintf(buf, buflen, " (did you mean %s%s?)", cmdline ? "--" : "", best);
    for (i = 0; !cmdline && memchr(key, '_', len) && buf[i]; i++)
        if (buf[i] == '-')
            buf[i] = '_';
    return buf;
}

/* "FILE:LINE: " before the reason already in err. */
static int cli_at(const char *path, int line, char *err, size_t errlen)
{
    char why[512];
    snprintf(why, sizeof why, "%s", err);
    return cli_err(err, errlen, -1, "%s:%d: %s", path, line, why);
}

static int cli_fail(const char *path, int line, char *err, size_t errlen,
                    const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return cli_at(path, line, err, errlen);
}

/* MariaDB's remove_end_comment(): the line ends at a '#' outside quotes
 * (inside quotes a backslash escapes a quote). */
static void cli_cut_comment(char *p)
{
    char quote = 0, esc = 0;
    for (; *p; p++) {
        if ((*p == '\'' || *p == '"') && !esc) {
            if (!quote)
                quote = *p;
            else if (quote == *p)
                quote = 0;
        }
        if (!quote && *p == '#') {
            *p = 0;
            return;
        }
        esc = quote && *p == '\\' && !esc;
    }
}

/* MariaDB's value rules, in place: blanks trimmed, one pair of matching
 * quotes around the whole value removed, then \n \t \r \b \s (space) \" \'
 * and \\ unescaped; any other backslash is kept. */
static char *cli_value(char *v)
{
    static const char from[] = "ntrbs\"'\\", to[] = "\n\t\r\b \"'\\";
    char *e, *out, *r;
    while (cli_space(*v))
        v++;
    e = v + strlen(v);
    while (e > v && cli_space(e[-1]))
        e--;
    if ((*v == '"' || *v == '\'') && v + 1 < e && e[-1] == *v) {
        v++;
        e--;
    }
    for (r = out = v; r < e; r++) {
        const char *k;
        if (*r == '\\' && r + 1 < e) {
            if ((k = strchr(from, r[1])) != NULL) {
                *out++ = to[k - from];
                r++;
                continue;
            }
            *out++ = *r++;
        }
        *out++ = *r;
    }
    *out = 0;
    return v;
}

/* "key = value", "key=value" or a bare "key" (a boolean set to 1).  Like
 * MariaDB: a "loose-" prefix makes an unknown key harmless, and "skip-",
 * "disable-" and "enable-" set a boolean. */
static int cli_option(struct cli *s, const char *path, int line, char *p,
                      char *err, size_t errlen)
{
    static const char *const flips[] = {"skip", "disable", "enable"};
    const struct cli_opt *o;
    char *eq, *end, *v = NULL, *name;
    int loose = 0, flip = -1;
    size_t i, n;
    cli_cut_comment(p);
    eq = strchr(p, '=');
    end = eq ? eq : p + strlen(p);
    while (end > p && cli_space(end[-1]))
        end--;
    if (eq)
        v = cli_value(eq + 1);
    *end = 0;
    if (!*p)
        return cli_fail(path, line, err, errlen, "a value without a setting name");
    if (!strncmp(p, "loose", 5) && (p[5] == '-' || p[5] == '_')) {
        loose = 1;
        p += 6;
    }
    name = p;
    if (!(o = cli_find(p, strlen(p))))
        for (i = 0; i < CLI_COUNT(flips); i++) {
            n = strlen(flips[i]);
            if (!strncmp(p, flips[i], n) && (p[n] == '-' || p[n] == '_') &&
                (o = cli_find(p + n + 1, strlen(p + n + 1))) != NULL && o->type == T_BOOL) {
                flip = i == 2;
                break;
            }
            o = NULL;
        }
    if (!o) {
        char guess[80];
        return loose ? 0 : cli_fail(path, line, err, errlen, "unknown setting: %s%s", name,
                                    cli_guess(name, strlen(name), 0, guess, sizeof guess));
    }
    if (o->type == T_FILE || o->type == T_SECTION)
        return cli_fail(path, line, err, errlen, "%s: only on the command line", name);
    if (flip >= 0) {
        if (v)
            return cli_fail(path, line, err, errlen, "%s: takes no value", name);
        v = flip ? "1" : "0";
    } else if (!v) {
        if (o->type != T_BOOL)
            return cli_fail(path, line, err, errlen, "%s: needs a value (%s = VALUE)",
                            name, name);
        v = "1";
    }
    if (cli_set(s, o, v, name, 0, err, errlen))
        return cli_at(path, line, err, errlen);
    cli_drop(s, s->from[o - cli_opts]);
    s->from[o - cli_opts] = NULL;
    n = strlen(path) + 24;
    if ((p = cli_keep(s, malloc(n))) != NULL) {
        snprintf(p, n, "%s:%d", path, line);
        s->from[o - cli_opts] = p;
    }
    return 0;
}

/* The whole file in one NUL-terminated buffer; NULL with the reason. */
static char *cli_slurp(const char *path, size_t *len, char *err, size_t errlen)
{
    char *buf = NULL, *nb;
    size_t cap = 0, n = 0;
    ssize_t r;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        cli_err(err, errlen, -1, "%s: %s", path, strerror(errno));
        return NULL;
    }
    for (;;) {
        if (n + 1 >= cap) {
            cap = cap ? cap * 2 : 4096;
            if (cap > (size_t)WS_PROXY_CONFIG_MAX + 2)
                cap = (size_t)WS_PROXY_CONFIG_MAX + 2;
            if (n + 1 >= cap) {
                cli_err(err, errlen, -1, "%s: larger than %u bytes", path,
                        (unsigned)WS_PROXY_CONFIG_MAX);
                break;
            }
            if (!(nb = realloc(buf, cap))) {
                cli_err(err, errlen, -1, "%s: out of memory", path);
                break;
            }
            buf = nb;
        }
        r = read(fd, buf + n, cap - 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            cli_err(err, errlen, -1, "%s: %s", path, strerror(errno));
            break;
        }
        if (r == 0) {
            close(fd);
            buf[n] = 0;
            *len = n;
            return buf;
        }
        n += (size_t)r;
    }
    close(fd);
    free(buf);
    return NULL;
}

static int cli_text(struct cli *s, const char *path, char *text, size_t len,
                    int depth, char *err, size_t errlen);

static int cli_file(struct cli *s, const char *path, int depth, char *err,
                    size_t errlen)
{
    size_t len;
    char *text = cli_slurp(path, &len, err, errlen);
    int rc;
    if (!text)
        return -2;
    rc = cli_text(s, path, text, len, depth, err, errlen);
    free(text);
    return rc;
}

static int cli_name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Like MariaDB: the directory's files whose names end in ".cnf", in the
 * order of their names. */
static int cli_dir(struct cli *s, const char *dir, int depth, char *err,
                   size_t errlen)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char **names = NULL, **nn, *full;
    size_t n = 0, cap = 0, i, len;
    int rc = 0;
    if (!d)
        return cli_err(err, errlen, -2, "%s: %s", dir, strerror(errno));
    while (!rc && (de = readdir(d)) != NULL) {
        len = strlen(de->d_name);
        if (len < 4 || strcmp(de->d_name + len - 4, ".cnf"))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            if (!(nn = realloc(names, cap * sizeof *nn))) {
                rc = cli_err(err, errlen, -1, "%s: out of memory", dir);
                break;
            }
            names = nn;
        }
        if (!(names[n] = malloc(strlen(dir) + len + 2)))
            rc = cli_err(err, errlen, -1, "%s: out of memory", dir);
        else
            sprintf(names[n++], "%s/%s", dir, de->d_name);
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof *names, cli_name_cmp);
    for (i = 0; i < n; i++) {
        full = names[i];
        if (!rc)
            rc = cli_file(s, full, depth, err, errlen);
        free(full);
    }
    free(names);
    return rc < 0 ? -1 : 0;
}

/* "!include FILE" and "!includedir DIR"; a relative name is taken from the
 * including file's directory. */
static int cli_directive(struct cli *s, const char *path, int line, char *p,
                         int depth, char *err, size_t errlen)
{
    const char *slash;
    char *arg, *e, *full;
    int dir, rc;
    size_t n;
    while (cli_space(*p))
        p++;
    if (!strncmp(p, "includedir", 10) && (!p[10] || cli_space(p[10])))
        dir = 1, arg = p + 10;
    else if (!strncmp(p, "include", 7) && (!p[7] || cli_space(p[7])))
        dir = 0, arg = p + 7;
    else
        return cli_fail(path, line, err, errlen,
                        "unknown directive !%s (want !include FILE or !includedir DIR)", p);
    while (cli_space(*arg))
        arg++;
    for (e = arg + strlen(arg); e > arg && cli_space(e[-1]); e--)
        e[-1] = 0;
    if (!*arg)
        return cli_fail(path, line, err, errlen, "!%s needs a %s name",
                        dir ? "includedir" : "include", dir ? "directory" : "file");
    if (s->no_include)
        return 0;
    if (depth >= CLI_INCLUDE_DEPTH)
        return cli_fail(path, line, err, errlen,
                        "!include nested more than %d deep (does a file include itself?)",
                        CLI_INCLUDE_DEPTH);
    slash = *arg == '/' ? NULL : strrchr(path, '/');
    n = slash ? (size_t)(slash - path) + 1 : 0;
    if (!(full = malloc(n + strlen(arg) + 1)))
        return cli_fail(path, line, err, errlen, "out of memory");
    memcpy(full, path, n);
    strcpy(full + n, arg);
    rc = dir ? cli_dir(s, full, depth + 1, err, errlen)
             : cli_file(s, full, depth + 1, err, errlen);
    free(full);
    if (rc == -2) { /* it could not be opened: say which line asked for it */
        char why[512];
        snprintf(why, sizeof why, "%s", err);
        return cli_fail(path, line, err, errlen, "!%s %s", dir ? "includedir" : "include", why);
    }
    return rc ? -1 : 0;
}

/* One line.  *active: whether options here apply, i.e. the line is in
 * [wsproxy], in the --config-section, or before any section header. */
static int cli_line(struct cli *s, const char *path, int line, char *p,
                    int *active, int depth, char *err, size_t errlen)
{
    char *e;
    while (cli_space(*p))
        p++;
    if (!*p || *p == '#' || *p == ';')
        return 0;
    if (*p == '!')
        return cli_directive(s, path, line, p + 1, depth, err, errlen);
    if (*p == '[') {
        if (!(e = strchr(++p, ']')))
            return cli_fail(path, line, err, errlen, "a section header without ']'");
        while (e > p && cli_space(e[-1]))
            e--;
        *e = 0;
        while (cli_space(*p))
            p++;
        *active = cli_ieq(p, "wsproxy") || (s->section && cli_ieq(p, s->section));
        return 0;
    }
    return *active ? cli_option(s, path, line, p, err, errlen) : 0;
}

/* Reads a configuration text; text[len] must be 0.  Returns 0, or -1 with
 * "FILE:LINE: reason" in err. */
static int cli_text(struct cli *s, const char *path, char *text, size_t len,
                    int depth, char *err, size_t errlen)
{
    char *p = text, *end = text + len, *nl;
    int line = 0, active = 1, rc;
    while (p < end) {
        if (!(nl = memchr(p, '\n', (size_t)(end - p))))
            nl = end;
        *nl = 0;
        line++;
        if (strlen(p) != (size_t)(nl - p))
            return cli_fail(path, line, err, errlen, "a NUL byte (not a text file?)");
        if ((rc = cli_line(s, path, line, p, &active, depth, err, errlen)) != 0)
            return rc;
        p = nl + 1;
    }
    return 0;
}

#ifndef WSPROXY_NO_MAIN
static const char cli_synopsis[] =
    "usage: wsproxy --socket PATH|IP:PORT (--http-port N | --https-port N --cert FILE --key FILE)\n"
    "               [--user NAME] [--config FILE] [options]\n";

static const char cli_help[] =
    "Relays each WebSocket to a new connection on the engine's socket.\n"
    "  --http-port N              serve ws:// on port N\n"
    "  --https-port N             serve wss:// on port N (needs --cert and --key)\n"
    "  --bind ADDR                address to listen on (default 0.0.0.0)\n"
    "  --socket PATH|IP:PORT      the engine: a Unix socket path (starting with / or .)\n"
    "                             or a numeric IPv4:PORT or [IPv6]:PORT\n"
    "  --cert FILE, --key FILE    PEM certificate chain and private key\n"
    "  --log-dir DIR              log to DIR/websocket_proxy.log (default: stderr)\n"
    "  --allowed-origin ORIGIN    allow browsers from ORIGIN (repeatable; default any)\n"
    "  --subprotocol NAME         subprotocol to select if offered (repeatable)\n"
    "  --max-connections N        default 1024\n"
    "  --max-connections-per-ip N default unlimited\n"
    "  --max-message BYTES        default unlimited (K, M, G suffixes)\n"
    "  --handshake-timeout MS     default 10000\n"
    "  --idle-timeout MS          default off\n"
    "  --ping-interval MS         default off\n"
    "  --drain-timeout MS         default 5000\n"
    "  --send-timeout MS          close a client that reads none of our bytes for MS\n"
    "                             (default 120000)\n"
    "  --proxy-protocol v2|v1|off PROXY header to the engine (default v2)\n"
    "  --metrics-path PATH        Prometheus metrics on a plain GET of PATH (default off)\n"
    "  --metrics-allow CIDR       clients allowed to read them (repeatable; default loopback)\n"
    "  --user NAME                started as root: run as NAME once the port is bound\n"
    "  --allow-root               started as root: stay root (a warning at every start);\n"
    "                             --skip-allow-root undoes allow_root from the file\n"
    "  --allow-socket-owner       relay with --proxy-protocol off as the account that\n"
    "                             owns the engine's socket (refused otherwise)\n"
    "  --config FILE              the same settings as 'key = value' lines, read the\n"
    "                             way MariaDB reads option files ([wsproxy] section)\n"
    "  --config-section NAME      read [NAME] of the --config file too\n"
    "  --help, --version\n"
    "The command line overrides the file; a list given there replaces the file's,\n"
    "and an empty value (--log-dir '') unsets the file's.\n"
    "Signals: SIGHUP re-reads --config and restarts; SIGUSR1 reopens the log;\n"
    "SIGTERM/SIGINT stop.  Exit status: 0 stopped by a signal, 1 could not start,\n"
    "2 usage or configuration error.\n";

struct cli_arg {
    const struct cli_opt *o;
    const char *v;
};

/* cli.from[] for what the command line set (never freed: not owned). */
static const char cli_argv[] = "the command line";

/* The file, then the command line: the first time a list option appears on
 * the command line it replaces the file's list. */
static int cli_build(struct cli *s, const char *file, const char *section,
                     const struct cli_arg *args, int nargs, char *err, size_t errlen)
{
    unsigned char seen[CLI_COUNT(cli_opts)];
    int i;
    memset(s, 0, sizeof *s);
    memset(seen, 0, sizeof seen);
    s->section = section;
    if (file && cli_file(s, file, 0, err, errlen))
        return -1;
    for (i = 0; i < nargs; i++) {
        size_t k = (size_t)(args[i].o - cli_opts);
        if (cli_set(s, args[i].o, args[i].v, NULL, !seen[k], err, errlen))
            return -1;
        seen[k] = 1;
        cli_drop(s, s->from[k]);
        s->from[k] = cli_argv;
    }
    /* "" unsets (--log-dir "" logs to stderr after all) */
    if (s->user && !*s->user)
        s->user = NULL;
    if (s->cfg.log_dir && !*s->cfg.log_dir)
        s->cfg.log_dir = NULL;
    return 0;
}

/* An option as it was given: "--cert" on the command line, else by the
 * configuration's name for it, "cert_file". */
static const char *cli_said(const struct cli *s, const char *name, char *buf, size_t len)
{
    const struct cli_opt *o = cli_find(name, strlen(name));
    size_t i;
    if (s->from[o - cli_opts] == cli_argv) {
        snprintf(buf, len, "--%s", o->name);
        return buf;
    }
    snprintf(buf, len, "%s", o->alias ? o->alias : o->name);
    for (i = 0; buf[i]; i++)
        if (buf[i] == '-')
            buf[i] = '_';
    return buf;
}

/* A library message about a setting ("cert_file F: not a PEM file") names
 * the flag when the command line gave it ("--cert F: not a PEM file"). */
static void cli_flagged(const struct cli *s, char *err, size_t errlen)
{
    size_t n = strspn(err, "abcdefghijklmnopqrstuvwxyz_"), name, tail;
    const struct cli_opt *o;
    if (!n || (err[n] != ' ' && err[n] != ':') || !(o = cli_find(err, n)) ||
        s->from[o - cli_opts] != cli_argv)
        return;
    name = strlen(o->name), tail = strlen(err + n) + 1;
    if (2 + name + tail > errlen)
        return;
    memmove(err + 2 + name, err + n, tail);
    memcpy(err, "--", 2);
    memcpy(err + 2, o->name, name);
}

/* Where an option was set last, for messages about two of them. */
static const char *cli_from(const struct cli *s, const char *name)
{
    const struct cli_opt *o = cli_find(name, strlen(name));
    return o && s->from[o - cli_opts] ? s->from[o - cli_opts] : "the command line";
}

/* The library refuses these too; here the message says where each came
 * from.  Returns 0 or 2 (a configuration error) with the reason in err. */
static int cli_conflict(const struct cli *s, char *err, size_t errlen)
{
    const struct ws_proxy_config *c = &s->cfg;
    char a[40], b[40];
    if (c->http_port && c->https_port) {
        cli_said(s, "http-port", a, sizeof a);
        cli_said(s, "https-port", b, sizeof b);
        if (*a == '-' && *b == '-')
            return cli_err(err, errlen, 2, "%s and %s are mutually exclusive", a, b);
        return cli_err(err, errlen, 2, "%s and %s are mutually exclusive (%s from %s, %s from %s)",
                       a, b, a, cli_from(s, "http-port"), b, cli_from(s, "https-port"));
    }
    if (c->https_port && (!c->cert_file || !*c->cert_file || !c->key_file || !*c->key_file)) {
        if (*cli_said(s, "https-port", a, sizeof a) == '-')
            return cli_err(err, errlen, 2, "--https-port requires SSL: give --cert FILE and "
                           "--key FILE");
        return cli_err(err, errlen, 2, "https_port requires SSL: set cert_file and key_file "
                       "(https_port from %s)", cli_from(s, "https-port"));
    }
    return 0;
}

/* "<UTC time> <LEVEL> ", the way the library's own log lines begin. */
static void cli_stamp(char *buf, size_t len, int level)
{
    static const char *const names[] = {"?", "ERROR", "WARN", "INFO", "DEBUG"};
    struct timespec ts;
    struct tm tm;
    time_t secs;
    clock_gettime(CLOCK_REALTIME, &ts);
    secs = ts.tv_sec;
    gmtime_r(&secs, &tm);
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (long)(ts.tv_nsec / 1000000),
             names[level >= WS_PROXY_LOG_ERROR && level <= WS_PROXY_LOG_DEBUG ? level : 0]);
}

/* Without --log-dir the log goes to stderr, in the log file's format. */
static void cli_log(void *user, int level, const char *msg)
{
    char stamp[64];
    (void)user;
    cli_stamp(stamp, sizeof stamp, level);
    fprintf(stderr, "%s%s\n", stamp, msg);
}

/* A line of the program's own in the proxy's log: websocket_proxy.log
 * (then also "wsproxy: ..." on stderr) or, without --log-dir, stderr. */
static void cli_note(const struct cli *s, int level, const char *fmt, ...)
{
    char msg[1024], stamp[64], *path;
    va_list ap;
    int fd;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!s->cfg.log_dir || !*s->cfg.log_dir) {
        cli_stamp(stamp, sizeof stamp, level);
        fprintf(stderr, "%s[proxy] %s\n", stamp, msg);
        return;
    }
    fprintf(stderr, "wsproxy: %s\n", msg);
    if (!(path = malloc(strlen(s->cfg.log_dir) + sizeof "/websocket_proxy.log")))
        return;
    sprintf(path, "%s/websocket_proxy.log", s->cfg.log_dir);
    fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    free(path);
    if (fd >= 0) {
        cli_stamp(stamp, sizeof stamp, level);
        dprintf(fd, "%s[proxy] %s\n", stamp, msg);
        close(fd);
    }
}

static int cli_usage(const char *fmt, ...)
{
    va_list ap;
    fputs("wsproxy: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n%sTry 'wsproxy --help' for the options.\n", cli_synopsis);
    return 2;
}

/* The engine may start after the proxy: a warning, not an error.  A TCP
 * engine (not starting with / or .) is not looked at. */
static void cli_check_socket(const struct cli *s)
{
    struct stat st;
    if (s->cfg.socket_path[0] != '/' && s->cfg.socket_path[0] != '.')
        return;
    if (stat(s->cfg.socket_path, &st))
        cli_note(s, WS_PROXY_LOG_WARN, "engine socket %s: %s (clients get 502 until the "
                 "engine listens there)", s->cfg.socket_path, strerror(errno));
    else if (!S_ISSOCK(st.st_mode))
        cli_note(s, WS_PROXY_LOG_WARN, "engine socket %s is not a socket (clients get "
                 "502 until the engine listens there)", s->cfg.socket_path);
}

/* Warnings at every start and restart. */
static void cli_started(const struct cli *s, int as_root)
{
    const char *o = s->cfg.allowed_origins;
    struct passwd *pw;
    size_t n, k;
    if (geteuid() == 0)
        cli_note(s, WS_PROXY_LOG_WARN, "running as root (--allow-root): an engine that "
                 "trusts its socket peer's uid (MariaDB's unix_socket) may let clients in "
                 "as root; use --user NAME");
    else if (!as_root && s->user && (!(pw = getpwnam(s->user)) || pw->pw_uid != geteuid()))
        cli_note(s, WS_PROXY_LOG_WARN, "user %s ignored: not started as root (running "
                 "as uid %ld)", s->user, (long)geteuid());
    /* A browser's Origin is scheme://host[:port] (or "null"): it is compared
     * whole, so an entry without a scheme never matches. */
    for (; o && *(o += strspn(o, ", \t")); o += n) {
        n = strcspn(o, ", \t");
        for (k = 0; k + 3 <= n && memcmp(o + k, "://", 3); k++)
            ;
        if (k + 3 > n && !(n == 4 && !memcmp(o, "null", 4)))
            cli_note(s, WS_PROXY_LOG_WARN, "allowed origin %.*s has no scheme, so no "
                     "browser's Origin matches it: write https://%.*s (or http://)",
                     (int)n, o, (int)n, o);
    }
    cli_check_socket(s);
}

/* Started as root with a user to run as: takes that account's groups and
 * gid now (root keeps its privileges until its uid goes).  On Linux its uid
 * too, keeping (saved uid 0) only the capabilities that binding a port
 * below 1024, opening the log and reading root's key files need: the loop
 * thread that ws_proxy_start() creates never connects to the engine as
 * root, not even in the moment before cli_root_off().  Returns 0, 1 (a
 * system call failed) or 2 (a bad account), with the reason in err. */
/* With no PROXY header an engine that trusts Unix-socket peers by uid
 * (PostgreSQL's peer, MariaDB's unix_socket) takes every client for the
 * proxy's own account; when that account owns the engine's socket it is the
 * engine's own (postgres, mysql), often a superuser.  The account is the
 * one the proxy runs as: --user's when started as root.  Checked before
 * cli_become() changes anything; a socket that does not exist yet is not
 * checked. */
static int cli_socket_owner(const struct cli *s, int as_root, char *err, size_t errlen)
{
    const char *path = s->cfg.socket_path;
    struct passwd *pw = NULL;
    struct stat st;
    uid_t uid = geteuid();
    if (s->allow_socket_owner || s->cfg.proxy_protocol != WS_PROXY_PP_OFF ||
        (path[0] != '/' && path[0] != '.') || stat(path, &st))
        return 0;
    if (as_root && s->user && (pw = getpwnam(s->user)) != NULL)
        uid = pw->pw_uid;
    if (st.st_uid != uid)
        return 0;
    snprintf(err, errlen, "refusing to relay with --proxy-protocol off as uid %ld, which "
             "owns %s: the engine would take every client for its own account "
             "(PostgreSQL's peer, MariaDB's unix_socket); run as another account "
             "(--user NAME), relay to the engine's TCP port, or give --allow-socket-owner",
             (long)uid, path);
    return 1;
}

static int cli_become(const struct cli *s, uid_t *uid, char *err, size_t errlen)
{
    struct passwd *pw;
    char *path;
    int fd;
    errno = 0;
    if (!(pw = getpwnam(s->user)))
        return cli_err(err, errlen, 2, "user %s: %s", s->user,
                       errno ? strerror(errno) : "no such user");
    if (pw->pw_uid == 0)
        return cli_err(err, errlen, 2, "user %s is root (uid 0): name an unprivileged "
                       "account", s->user);
    *uid = pw->pw_uid;
    /* A log file root created earlier must stay writable for SIGUSR1. */
    if (s->cfg.log_dir && *s->cfg.log_dir &&
        (path = malloc(strlen(s->cfg.log_dir) + sizeof "/websocket_proxy.log")) != NULL) {
        sprintf(path, "%s/websocket_proxy.log", s->cfg.log_dir);
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0640);
        free(path);
        if (fd >= 0) {
            if (fchown(fd, pw->pw_uid, pw->pw_gid)) {
            }
            close(fd);
        }
    }
    if (initgroups(pw->pw_name, pw->pw_gid) || setgid(pw->pw_gid))
        return cli_err(err, errlen, 1, "user %s: cannot take its groups: %s", s->user,
                       strerror(errno));
#ifdef __linux__
    {
        struct cli_cap_header h;
        struct cli_cap_data d[2];
        if (setresuid(*uid, *uid, 0))
            return cli_err(err, errlen, 1, "setresuid(%ld): %s", (long)*uid, strerror(errno));
        memset(&h, 0, sizeof h);
        memset(d, 0, sizeof d);
        h.version = CLI_CAP_VERSION_3;
        d[0].permitted = d[0].effective = 1u << CLI_CAP_NET_BIND_SERVICE |
                                          1u << CLI_CAP_DAC_OVERRIDE |
                                          1u << CLI_CAP_DAC_READ_SEARCH;
        if (syscall(SYS_capset, &h, d))
            return cli_err(err, errlen, 1, "capset: %s", strerror(errno));
    }
#endif
    return 0;
}

/* Gives up root for good, in every thread (glibc applies set*uid to all of
 * them), and checks that it cannot come back. */
static int cli_root_off(uid_t uid, char *err, size_t errlen)
{
#ifdef __linux__
    int rc = setresuid(uid, uid, uid);
#else
    int rc = setuid(uid);
#endif
    if (rc)
        return cli_err(err, errlen, 1, "setuid(%ld): %s", (long)uid, strerror(errno));
    if (getuid() != uid || geteuid() != uid || !setuid(0) || !seteuid(0))
        return cli_err(err, errlen, 1, "switching to uid %ld did not drop root", (long)uid);
    return 0;
}

/* ---- systemd's notify protocol (sd_notify(3)), spoken without libsystemd.
 * With NOTIFY_SOCKET set (a path, or an abstract name written with a leading
 * '@'), each state change is one datagram of "KEY=value" lines: READY=1 once
 * listening; RELOADING=1 and MONOTONIC_USEC before a SIGHUP restart, READY=1
 * after it (whether it worked or not: the old configuration still serves);
 * STOPPING=1; and STATUS= with the state and open connections, refreshed
 * every second while it changes.  Without the variable nothing is sent. */
struct notify {
    int fd;
    socklen_t len;
    int reloading;
    char status[160];
    struct sockaddr_un sun;
};

static void notify_open(struct notify *n)
{
    const char *path = getenv("NOTIFY_SOCKET");
    size_t len = path ? strlen(path) : 0;
    memset(n, 0, sizeof *n);
    n->fd = -1;
    if (len < 2 || len >= sizeof n->sun.sun_path || (path[0] != '/' && path[0] != '@'))
        return;
    n->sun.sun_family = AF_UNIX;
    memcpy(n->sun.sun_path, path, len);
    if (path[0] == '@')
        n->sun.sun_path[0] = 0; /* abstract: the name is exactly len bytes */
    n->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    if ((n->fd = socket(AF_UNIX, SOCK_DGRAM, 0)) >= 0)
        fcntl(n->fd, F_SETFD, FD_CLOEXEC);
}

static void notify_send(struct notify *n, const char *msg)
{
    if (n->fd >= 0 && sendto(n->fd, msg, strlen(msg), CLI_SEND_FLAGS,
                             (struct sockaddr *)&n->sun, n->len) < 0)
        fprintf(stderr, "wsproxy: NOTIFY_SOCKET: sendto: %s\n", strerror(errno));
}

/* Sends `what` (may be "") and STATUS= when `what` is set or the status
 * line changed since the last datagram. */
static void notify_state(struct notify *n, ws_proxy *p, const char *what)
{
    struct ws_proxy_status st;
    char status[sizeof n->status], msg[sizeof status + 64];
    if (n->fd < 0 || ws_proxy_status(p, &st))
        return;
    if (st.state == WS_PROXY_FAILED)
        snprintf(status, sizeof status, "FAILED: %.100s", st.reason);
    else if (st.state == WS_PROXY_RUNNING)
        snprintf(status, sizeof status, "RUNNING %s on port %d, %llu connections open",
                 st.tls ? "wss://" : "ws://", st.port, (unsigned long long)st.conns_open);
    else
        snprintf(status, sizeof status, "STOPPED (no port set), %llu connections open",
                 (unsigned long long)st.conns_open);
    if (!*what && !strcmp(status, n->status))
        return;
    snprintf(n->status, sizeof n->status, "%s", status);
    snprintf(msg, sizeof msg, "%s%sSTATUS=%s", what, *what ? "\n" : "", status);
    notify_send(n, msg);
}

/* sigwait() that also speaks for the service manager: READY=1 after a
 * reload, RELOADING=1 before one, STOPPING=1, STATUS= once a second. */
static int notify_wait(struct notify *n, ws_proxy *p, const sigset_t *set, int *sig)
{
    if (n->reloading)
        notify_state(n, p, "READY=1");
    n->reloading = 0;
#ifdef __linux__
    while (n->fd >= 0) {
        struct timespec ts = {1, 0};
        if ((*sig = sigtimedwait(set, NULL, &ts)) < 0) {
            notify_state(n, p, "");
            continue;
        }
        break;
    }
    if (n->fd < 0 && sigwait(set, sig))
        return -1;
#else
    if (sigwait(set, sig))
        return -1;
#endif
    if (*sig == SIGHUP && n->fd >= 0) {
        struct timespec ts;
        char msg[64];
        clock_gettime(CLOCK_MONOTONIC, &ts);
        snprintf(msg, sizeof msg, "RELOADING=1\nMONOTONIC_USEC=%llu",
                 (unsigned long long)ts.tv_sec * 1000000ull +
                     (unsigned long long)ts.tv_nsec / 1000);
        notify_send(n, msg);
        n->reloading = 1;
    }
    if (*sig == SIGINT || *sig == SIGTERM)
        notify_send(n, "STOPPING=1\nSTATUS=stopping");
    return 0;
}

int main(int argc, char **argv)
{
    struct option lopts[2 * CLI_COUNT(cli_opts) + 3];
    char skip[CLI_COUNT(cli_opts)][40]; /* --skip-NAME for each boolean */
    struct cli_arg *args = calloc((size_t)argc + 1, sizeof *args);
    const char *file = NULL, *section = NULL;
    struct cli cur, next;
    struct notify nt;
    struct rlimit rl;
    sigset_t set;
    ws_proxy *p;
    char err[1024];
    uid_t uid = 0;
    int nargs = 0, ch, idx, sig, rc, as_root = geteuid() == 0;
    size_t i, n = 0;

    if (!args) {
        fputs("wsproxy: out of memory\n", stderr);
        return 1;
    }
    memset(&cur, 0, sizeof cur);
    for (i = 0; i < CLI_COUNT(cli_opts); i++) {
        lopts[n].name = cli_opts[i].name;
        lopts[n].has_arg = cli_opts[i].type == T_BOOL ? no_argument : required_argument;
        lopts[n].flag = NULL;
        lopts[n++].val = 1000 + (int)i;
        if (cli_opts[i].type != T_BOOL)
            continue;
        /* so that the command line can also turn off what the file set */
        snprintf(skip[i], sizeof skip[i], "skip-%s", cli_opts[i].name);
        lopts[n].name = skip[i];
        lopts[n].has_arg = no_argument;
        lopts[n].flag = NULL;
        lopts[n++].val = 2000 + (int)i;
    }
    i = n;
    lopts[i].name = "help", lopts[i].has_arg = no_argument, lopts[i].flag = NULL, lopts[i].val = 'h';
    i++;
    lopts[i].name = "version", lopts[i].has_arg = no_argument, lopts[i].flag = NULL, lopts[i].val = 'V';
    i++;
    memset(&lopts[i], 0, sizeof lopts[i]);
    opterr = 0; /* our messages start "wsproxy:", not with argv[0] */
    while ((ch = getopt_long(argc, argv, ":hV", lopts, &idx)) != -1) {
        const struct cli_opt *o;
        if (ch == 'h') {
            fputs(cli_synopsis, stdout);
            fputs(cli_help, stdout);
            free(args);
            return 0;
        }
        if (ch == 'V') {
            printf("wsproxy %s (%s)\n", WS_PROXY_VERSION,
#ifdef WS_PROXY_NO_TLS
                   "no TLS"
#else
                   "TLS: BearSSL"
#endif
            );
            free(args);
            return 0;
        }
        if (ch == ':' || ch == '?') {
            if (optopt >= 2000)
                rc = cli_usage("--skip-%s takes no value", cli_opts[optopt - 2000].name);
            else if (optopt >= 1000)
                rc = cli_usage(ch == ':' ? "--%s needs a value" : "--%s takes no value",
                               cli_opts[optopt - 1000].name);
            else if (optopt)
                rc = cli_usage("unknown option: -%c", optopt);
            else {
                const char *arg = argv[optind - 1], *key = arg + strspn(arg, "-");
                char guess[80];
                rc = cli_usage("unknown or ambiguous option: %s%s", arg,
                               cli_guess(key, strcspn(key, "="), 1, guess, sizeof guess));
            }
            free(args);
            return rc;
        }
        o = &cli_opts[ch >= 2000 ? ch - 2000 : ch - 1000];
        if (ch >= 2000)
            args[nargs].o = o, args[nargs++].v = "0";
        else if (o->type == T_FILE)
            file = optarg;
        else if (o->type == T_SECTION)
            section = optarg;
        else
            args[nargs].o = o, args[nargs++].v = o->type == T_BOOL ? "1" : optarg;
    }
    rc = 2;
    if (optind < argc)
        cli_usage("unexpected argument: %s", argv[optind]);
    else if (cli_build(&cur, file, section, args, nargs, err, sizeof err))
        cli_usage("%s", err);
    else if (!cur.cfg.socket_path || !*cur.cfg.socket_path)
        cli_usage("no engine socket: give --socket PATH (or socket = PATH in the --config file)");
    else if (!cur.cfg.http_port && !cur.cfg.https_port)
        cli_usage("no port to listen on: give --http-port N or --https-port N (1-65535)");
    else if ((rc = cli_conflict(&cur, err, sizeof err)) != 0)
        fprintf(stderr, "wsproxy: %s\n", err);
    else if (as_root && !cur.user && !cur.allow_root)
        fputs("wsproxy: refusing to run as root, which would let clients reach the engine "
              "as root (MariaDB's unix_socket trusts the proxy's uid): give --user NAME "
              "(or user = NAME in the --config file) to run as that account once the port "
              "is bound, or --allow-root to stay root anyway\n", stderr), rc = 1;
    else if ((rc = cli_socket_owner(&cur, as_root, err, sizeof err)) != 0)
        fprintf(stderr, "wsproxy: %s\n", err);
    else if (as_root && cur.user && (rc = cli_become(&cur, &uid, err, sizeof err)) != 0)
        fprintf(stderr, "wsproxy: %s\n", err);
    else
        rc = 0;
    if (rc) {
        cli_free(&cur);
        free(args);
        return rc;
    }
    /* Two descriptors per connection: take what the system allows. */
    if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    if (!cur.cfg.log_dir)
        cur.cfg.log_fn = cli_log;
    if (!(p = ws_proxy_start(&cur.cfg, err, sizeof err))) {
        cli_flagged(&cur, err, sizeof err);
        fprintf(stderr, "wsproxy: %s\n", err);
        cli_free(&cur);
        free(args);
        return 1;
    }
    if (as_root && cur.user) {
        if (cli_root_off(uid, err, sizeof err)) {
            fprintf(stderr, "wsproxy: %s\n", err);
            ws_proxy_stop(p);
            cli_free(&cur);
            free(args);
            return 1;
        }
        cli_note(&cur, WS_PROXY_LOG_INFO, "running as user %s (uid %ld, gid %ld)", cur.user,
                 (long)getuid(), (long)getgid());
    }
    cli_started(&cur, as_root);
    notify_open(&nt);
    notify_state(&nt, p, "READY=1");
    for (;;) {
        if (notify_wait(&nt, p, &set, &sig))
            continue;
        if (sig == SIGINT || sig == SIGTERM)
            break;
        if (sig == SIGUSR1 && ws_proxy_reopen_log(p, err, sizeof err))
            cli_note(&cur, WS_PROXY_LOG_ERROR, "reopening the log: %s", err);
        if (sig != SIGHUP)
            continue;
        if (cli_build(&next, file, section, args, nargs, err, sizeof err) ||
            cli_conflict(&next, err, sizeof err) ||
            cli_socket_owner(&next, 0, err, sizeof err)) {
            cli_note(&cur, WS_PROXY_LOG_ERROR, "reload failed, configuration unchanged: %s",
                     err);
            cli_free(&next);
            continue;
        }
        if (!next.cfg.log_dir)
            next.cfg.log_fn = cli_log;
        if (ws_proxy_restart(p, &next.cfg, err, sizeof err)) {
            cli_flagged(&next, err, sizeof err);
            cli_note(&cur, WS_PROXY_LOG_ERROR, "restart failed, still serving as before: %s",
                     err);
            cli_free(&next);
            continue;
        }
        if (as_root && (next.user || cur.user) &&
            (!next.user || !cur.user || strcmp(next.user, cur.user)))
            cli_note(&next, WS_PROXY_LOG_WARN, "user: a change takes a full restart; "
                     "still running as %s%s%s(uid %ld)", cur.user ? "user " : "",
                     cur.user ? cur.user : "", cur.user ? " " : "", (long)geteuid());
        cli_free(&cur);
        cur = next;
        cli_started(&cur, as_root);
    }
    ws_proxy_stop(p);
    if (nt.fd >= 0)
        close(nt.fd);
    cli_free(&cur);
    free(args);
    return 0;
}
#endif /* WSPROXY_NO_MAIN */
