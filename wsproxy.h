/*
 * wsproxy.h - an embeddable WebSocket (RFC 6455) proxy in front of a
 * database engine's Unix or TCP socket.  Each accepted WebSocket becomes a
 * new connection to the engine and is relayed as a byte stream: client
 * payloads are unmasked and written to the engine; engine bytes go back as
 * binary frames.
 *
 * Threading.  ws_proxy_start() creates one thread that owns every socket of
 * that proxy and runs one poll() loop.  All ws_proxy_* calls are thread-safe
 * and may come from any thread; calls that change or read state are handed to
 * the loop thread and return once it has acted.  Several proxies may run in
 * one process; they share nothing but one process-wide table of live handles
 * (see ws_proxy_stop()), locked only briefly.
 *
 * Ownership.  start() and restart() copy everything they need from the
 * configuration, strings included: the caller may free or reuse it as soon
 * as the call returns.
 *
 * Callbacks.  The log callback runs on the loop thread (for the "started"
 * line, on the thread calling ws_proxy_start()); the connection callback
 * (conn_fn) on the loop thread.  Neither may call any ws_proxy_* function,
 * on this proxy or on any other: each call waits for a loop thread to act,
 * so two proxies whose callbacks query each other deadlock.  Hand the event
 * to another thread if something must follow from it.  No callback runs
 * after ws_proxy_stop() returns.
 *
 * The library never installs signal handlers, never writes to stdout or
 * stderr, and never calls exit() or abort().  It blocks every signal in its
 * own thread and writes to sockets with MSG_NOSIGNAL, so SIGPIPE cannot reach
 * the host process from it.
 *
 * Errors.  Calls return 0 (or a handle) on success, or a negative
 * WS_PROXY_E* code (or NULL) with a one-line reason in the caller's err
 * buffer, e.g. "bind(0.0.0.0:8443): Address already in use".  err may be NULL
 * when errlen is 0.  Problems with single connections never reach the API:
 * they are answered on the wire, counted and logged.
 */
#ifndef WS_PROXY_H
#define WS_PROXY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define WS_PROXY_VERSION "0.1.0"

/* http_port/https_port value that binds an ephemeral port (the kernel picks
 * one; ws_proxy_status() reports it).  Meant for tests. */
#define WS_PROXY_PORT_ANY (-1)

/* Error codes.  ws_proxy_strerror() names them; it never returns NULL. */
#define WS_PROXY_ERRORS(X)                                                   \
    X(OK, 0, "success")                                                      \
    X(EINVAL, -1, "invalid configuration")                                   \
    X(EBIND, -2, "cannot listen on the configured address")                  \
    X(ETLS, -3, "cannot load the TLS certificate or key")                    \
    X(ENOTLS, -4, "built without TLS support")                               \
    X(ENOMEM, -5, "out of memory")                                           \
    X(ESYS, -6, "system call failed")                                        \
    X(ELOG, -7, "cannot open the log file")                                  \
    X(ESTOPPED, -8, "the proxy is stopped or stopping")

enum {
#define WS_PROXY_ENUM_(name, code, msg) WS_PROXY_##name = code,
    WS_PROXY_ERRORS(WS_PROXY_ENUM_)
#undef WS_PROXY_ENUM_
    WS_PROXY_ERR_MIN_ = -8
};

const char *ws_proxy_strerror(int code);

/* PROXY protocol header sent at the start of every engine connection so the
 * engine sees the client's address instead of the relay's uid (Unix socket)
 * or the relay's address (TCP).  Zero (the
 * default) is v2: secure by default.  OFF must be chosen explicitly, and
 * every start/restart with it logs a warning: an engine that authenticates
 * Unix-socket peers by uid (MariaDB's unix_socket plugin) would treat every
 * network client as the user the proxy runs as. */
enum ws_proxy_proxy_protocol {
    WS_PROXY_PP_V2 = 0,
    WS_PROXY_PP_V1 = 1,
    WS_PROXY_PP_OFF = 2
};

/* The largest max_connections accepted (ws_proxy_config). */
#define WS_PROXY_MAX_CONNECTIONS_LIMIT 1000000u

enum ws_proxy_log_level {
    WS_PROXY_LOG_ERROR = 1,
    WS_PROXY_LOG_WARN = 2,
    WS_PROXY_LOG_INFO = 3,
    WS_PROXY_LOG_DEBUG = 4
};

/* Receives each log event as one line without a trailing newline, and
 * without the timestamp and level that the log file's lines begin with (the
 * engine's logger adds its own; level is the enum ws_proxy_log_level):
 *     "[proxy] started: listening on ws://0.0.0.0:8080 -> unix:/run/db.sock; ..."
 *     "[conn 7 203.0.113.5:50212] refused 403: origin not allowed"
 * The same event in websocket_proxy.log reads
 *     "2026-11-23T21:48:18.121Z INFO [proxy] started: ...".
 * line is valid only during the call.  See "Callbacks" above. */
typedef void (*ws_proxy_log_fn)(void *user, int level, const char *line);

/*
 * What ws_proxy_config.conn_fn is told about the engine connection of each
 * WebSocket, so that an engine can tell a relayed session from a local
 * client and show who is really behind it (PostgreSQL has no PROXY
 * protocol: engines/postgres/ keys a table by engine_port).  Every pointer
 * is valid only during the call.
 */
struct ws_proxy_conn_info {
    uint64_t id;             /* the log lines' connection id ("[conn 7 ...]") */
    const char *client_addr; /* the client's numeric IP address */
    int client_port;
    int tls;                 /* 1 for wss:// */
    const char *origin;      /* the Origin header, "" if none (WS_PROXY_CONN_OPEN
                              * only; the first 255 bytes) */
    const char *engine_addr; /* local end of the engine connection,
                              * "127.0.0.1" or "::1"; "" on a Unix socket */
    int engine_port;         /* its local port; 0 on a Unix socket */
};

enum ws_proxy_conn_event {
    /* The engine connection of an accepted upgrade request was opened:
     * connect() was called (it may still be completing), no byte has been
     * written to it yet and the 101 has not gone out. */
    WS_PROXY_CONN_OPEN = 1,
    /* That engine connection is about to be closed, whatever the reason
     * (the connect failed, either side ended, ws_proxy_stop()).  Exactly
     * one CLOSE follows each OPEN, with the same id. */
    WS_PROXY_CONN_CLOSE = 2
};

/* Runs on the loop thread, from the configuration the connection began
 * with (a restart does not move a live connection to the new conn_fn).  It
 * must not block and must not call back into the same proxy; no call
 * happens after ws_proxy_stop() returns. */
typedef void (*ws_proxy_conn_fn)(void *user, int event,
                                 const struct ws_proxy_conn_info *ci);

/*
 * Configuration.  Zero in every field means "the default", so designated
 * initialisers work:
 *     struct ws_proxy_config c = { .http_port = 8080,
 *                                  .socket_path = "/run/db/db.sock" };
 */
struct ws_proxy_config {
    /* TCP port for ws://, 1..65535, or WS_PROXY_PORT_ANY; 0 = not set.
     * At most one of http_port and https_port may be set.  With neither set
     * the proxy is valid but does not listen (state STOPPED). */
    int http_port;
    /* TCP port for wss:// (needs cert_file and key_file); 0 = not set. */
    int https_port;
    /* Numeric IPv4 or IPv6 address to listen on; NULL = "0.0.0.0". */
    const char *bind_address;
    /* The engine's socket; required, at most 107 bytes.  Either a Unix
     * socket path, which must start with '/' or '.' ("/run/db.sock",
     * "./db.sock"), or a TCP address with a numeric host and a port,
     * "IPv4:PORT" or "[IPv6]:PORT" ("127.0.0.1:3306", "[::1]:5432").
     * Anything else is WS_PROXY_EINVAL.  Both kinds behave the same: the
     * PROXY header, every limit and timeout, backpressure, and each side
     * closed when the other ends.  A TCP engine socket has TCP_NODELAY set.
     * Over TCP the engine sees the relay's own address; it must trust the
     * PROXY header from that address only (e.g. loopback). */
    const char *socket_path;
    /* PEM certificate chain (leaf first) and private key (RSA or EC;
     * PKCS#1, PKCS#8 or SEC1).  Read at start and at every restart. */
    const char *cert_file;
    const char *key_file;
    /* Directory of the log file websocket_proxy.log; NULL = no file. */
    const char *log_dir;
    /* Optional log sink, in addition to the file; NULL = none. */
    ws_proxy_log_fn log_fn;
    void *log_user;
    /* Most verbose level logged; 0 = WS_PROXY_LOG_INFO. */
    int log_level;
    /* Origins allowed to connect, separated by commas or spaces, compared
     * exactly (ASCII case-insensitive), e.g. "https://studio.example.com".
     * NULL or "" = any origin.  A request without an Origin header (not a
     * browser) is allowed: only browsers are bound by Origin. */
    const char *allowed_origins;
    /* Subprotocols the proxy may select, comma/space separated, in order of
     * preference; NULL = never select one. */
    const char *subprotocols;
    /* Open client connections (handshaking ones included); 0 = 1024, limit
     * WS_PROXY_MAX_CONNECTIONS_LIMIT.  Over the limit a handshake gets 503. */
    unsigned max_connections;
    /* Open connections per client IP address; 0 = unlimited. */
    unsigned max_connections_per_ip;
    /* Largest message (sum of its fragments) in bytes; 0 = no limit.
     * A larger one closes the connection with 1009. */
    uint64_t max_message;
    /* Time from accept to a complete handshake, ms; 0 = 10000. */
    unsigned handshake_timeout_ms;
    /* Close (1001) a connection with no data either way for this long, ms;
     * 0 = never. */
    unsigned idle_timeout_ms;
    /* Ping a client silent for this long and close (1001) it if nothing
     * arrives within the same interval, ms; 0 = never. */
    unsigned ping_interval_ms;
    /* After a client's Close: how long to keep relaying what the engine
     * still sends before answering the Close; also bounds the wait for the
     * client's Close after ours, and how long a client may take none of the
     * engine's last bytes after its end, ms; 0 = 5000. */
    unsigned drain_timeout_ms;
    /* A client that takes none of our bytes for this long while some wait
     * for it (it stopped reading, or vanished) is closed and the log says
     * so, ms; 0 = 120000.  Checked every quarter of it. */
    unsigned send_timeout_ms;
    /* enum ws_proxy_proxy_protocol; 0 = v2. */
    int proxy_protocol;
    /* Path, starting with '/', on which a plain GET (no Upgrade header)
     * answers ws_proxy_status()'s figures in the Prometheus text format
     * (version 0.0.4), e.g. "/metrics"; NULL or "" = no metrics. */
    const char *metrics_path;
    /* Clients that may read metrics_path: IPv4/IPv6 addresses or CIDR
     * blocks separated by commas or spaces ("10.0.0.0/8, ::1"); others get
     * 403.  NULL or "" = loopback only (127.0.0.0/8 and ::1). */
    const char *metrics_allow;
    /* Optional: told when each WebSocket's engine connection opens and
     * closes (see ws_proxy_conn_fn); NULL = none. */
    ws_proxy_conn_fn conn_fn;
    void *conn_user;
    /* Optional flag owned by the host, e.g. the engine's own "shutting
     * down" variable; the loop only reads it.  While *going_away is
     * nonzero, a WebSocket whose engine connection ends (EOF or error) is
     * closed with 1001 ("going away") instead of 1000 or 1011, so an
     * engine that hangs up on its clients as it shuts down tells them so.
     * The byte must stay readable until ws_proxy_stop() returns.
     * NULL = not used. */
    const volatile unsigned char *going_away;
};

typedef struct ws_proxy ws_proxy;

/*
 * Validates cfg, opens the log, binds the port, and starts the loop thread.
 * Returns the handle, or NULL with the reason in err (the handle is not
 * created, nothing is left open).  Both ports set is an error ("http_port
 * and https_port are mutually exclusive"), as is https_port without a
 * certificate ("https_port requires SSL: set cert_file and key_file").
 */
ws_proxy *ws_proxy_start(const struct ws_proxy_config *cfg, char *err,
                         size_t errlen);

/*
 * Applies a new configuration atomically and returns once the loop has
 * applied it.  On failure (negative code, reason in err) the proxy goes on
 * exactly as before: same port, same certificate, same connections.  On
 * success it listens where cfg says:
 *  - same address and port: the listening socket is kept, so no connection
 *    is refused during the restart;
 *  - a new port: it is bound before the old one is closed;
 *  - the same port on another address that overlaps the old one (0.0.0.0:P
 *    and 127.0.0.1:P, or the reverse; :: overlaps every address): the new
 *    listener cannot be bound while the old one lives, so the restart fails
 *    with WS_PROXY_EBIND, changes nothing, and err names the conflict and
 *    the way out: restart with no port, then with the new address (a short
 *    time without a listener; connections survive both).  The library does
 *    not use SO_REUSEPORT to overlap them, because it would let any process
 *    of the same user bind that address and port too and take a share of
 *    the connections;
 *  - no port set: listening stops (state STOPPED), connections go on.
 * Established connections always survive and keep the settings they began
 * with; the certificate and key files are re-read and the new ones serve
 * new connections; the log file is reopened.  This is also the only way out
 * of the FAILED state: the proxy never restarts itself.  Returns
 * WS_PROXY_ESTOPPED if p is being stopped (see ws_proxy_stop()).
 */
int ws_proxy_restart(ws_proxy *p, const struct ws_proxy_config *cfg,
                     char *err, size_t errlen);

/*
 * Sends Close 1001 to every client (best effort, bounded), closes every
 * socket, joins the thread and frees everything.  It always returns, also
 * while other threads call into p:
 *  - a call on p that is already running when stop begins completes
 *    normally (stop waits for it; each takes at most as long as a restart);
 *  - a call on p that begins after stop began returns WS_PROXY_ESTOPPED
 *    ("the proxy is stopped or stopping") and touches nothing; status()
 *    then leaves *st unchanged;
 *  - another ws_proxy_stop(p) at the same time waits until the first one
 *    has finished, then returns; ws_proxy_stop(NULL) does nothing.
 * No callback runs after stop returns.  Using p after stop has returned is
 * the caller's error; as long as no later ws_proxy_start() returned the same
 * address, such a call returns WS_PROXY_ESTOPPED (or does nothing, for
 * stop) rather than touching freed memory.
 */
void ws_proxy_stop(ws_proxy *p);

/* Reopens the log file (for rotation) without touching connections.
 * Returns 0, or a negative code: WS_PROXY_ELOG, or WS_PROXY_ESTOPPED (see
 * ws_proxy_stop()). */
int ws_proxy_reopen_log(ws_proxy *p, char *err, size_t errlen);

enum ws_proxy_state {
    WS_PROXY_STOPPED = 0, /* valid configuration without a port */
    WS_PROXY_RUNNING = 1, /* listening on st.port */
    WS_PROXY_FAILED = 2   /* a fatal error; st.reason says which */
};

/* "STOPPED", "RUNNING" or "FAILED" (for a status variable); "UNKNOWN" for
 * any other value.  Never NULL; the string is static. */
const char *ws_proxy_state_name(int state);

/* Why handshakes were refused, by the HTTP status sent. */
enum ws_proxy_refusal {
    WS_PROXY_REFUSED_400 = 0,
    WS_PROXY_REFUSED_403,
    WS_PROXY_REFUSED_426,
    WS_PROXY_REFUSED_431,
    WS_PROXY_REFUSED_502,
    WS_PROXY_REFUSED_503,
    WS_PROXY_REFUSED_TIMEOUT, /* handshake_timeout_ms passed */
    WS_PROXY_REFUSED_COUNT_
};

/* ws_proxy_status().closes[] has a counter for each close code from 1000 to
 * 1014 (closes[code - 1000]) and one for any other (3000-4999). */
#define WS_PROXY_CLOSE_OTHER 15
/* Upper bounds, in ms, of ws_proxy_status().handshake_ms[] buckets; one more
 * bucket takes the longer handshakes. */
#define WS_PROXY_HANDSHAKE_BUCKETS_MS {1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000}
#define WS_PROXY_HANDSHAKE_BUCKETS 12

struct ws_proxy_status {
    int state;              /* enum ws_proxy_state */
    int port;               /* bound port while RUNNING, else 0 */
    int tls;                /* 1 when serving wss:// */
    char reason[256];       /* why FAILED; "" otherwise */
    uint64_t conns_open;    /* client connections open now */
    uint64_t conns_total;   /* accepted since start */
    uint64_t bytes_to_engine; /* payload bytes written to the engine */
    uint64_t bytes_to_client; /* engine bytes sent to clients */
    uint64_t refused[WS_PROXY_REFUSED_COUNT_];
    uint64_t tls_failures;  /* TLS handshakes or records that failed */
    uint64_t protocol_errors; /* connections closed with 1002/1007/1009 */
    /* WebSockets (connections answered 101) that ended, by the close code
     * sent: 1005 for an empty Close, 1006 when none was sent. */
    uint64_t closes[WS_PROXY_CLOSE_OTHER + 1];
    /* Handshakes that got their 101, by time from accept to the 101 (not
     * cumulative: [i] counts those over bound i-1 and up to bound i). */
    uint64_t handshake_ms[WS_PROXY_HANDSHAKE_BUCKETS + 1];
    uint64_t handshake_ms_sum; /* sum of those times, ms */
};

/* Fills *st with the loop's real state.  Returns 0, WS_PROXY_EINVAL (p or
 * st NULL), or WS_PROXY_ESTOPPED (see ws_proxy_stop()). */
int ws_proxy_status(ws_proxy *p, struct ws_proxy_status *st);

#ifdef __cplusplus
}
#endif
#endif /* WS_PROXY_H */
