/* The library as another system sees it (test/test_hosts.py compiles this
 * with a personality from this directory first on the include path): it
 * must compile, and keep what the README promises there. */
#include "../../wsproxy.c"

#if WS_PROXY_KEEPALIVE_S > 0 && !(defined(TCP_KEEPIDLE) && defined(TCP_KEEPINTVL) && defined(TCP_KEEPCNT))
#error "probe: keepalive timing is off: a vanished client would not be found in about 2 minutes"
#endif
#if !defined(MSG_NOSIGNAL) && !defined(SO_NOSIGPIPE)
#error "probe: neither MSG_NOSIGNAL nor SO_NOSIGPIPE: a write to a gone client raises SIGPIPE"
#endif
