/* FreeBSD's <netinet/tcp.h> (see ../../README): the keepalive options only
 * while BSD names are visible; no TCP_USER_TIMEOUT. */
#include_next <netinet/tcp.h>
#undef TCP_USER_TIMEOUT
#if !__BSD_VISIBLE
#undef TCP_KEEPIDLE
#undef TCP_KEEPINTVL
#undef TCP_KEEPCNT
#endif
