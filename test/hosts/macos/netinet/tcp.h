/* macOS's <netinet/tcp.h> (see ../../README): TCP_KEEPALIVE is its name for
 * TCP_KEEPIDLE; it, TCP_KEEPINTVL and TCP_KEEPCNT are visible at the full
 * level only; no TCP_USER_TIMEOUT. */
#include_next <netinet/tcp.h>
#undef TCP_KEEPIDLE
#undef TCP_USER_TIMEOUT
#if WSPROXY_DARWIN_FULL
#define TCP_KEEPALIVE 0x10
#else
#undef TCP_KEEPINTVL
#undef TCP_KEEPCNT
#endif
