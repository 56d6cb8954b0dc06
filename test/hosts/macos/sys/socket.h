/* macOS's <sys/socket.h> (see ../../README): no SOCK_CLOEXEC or
 * SOCK_NONBLOCK; SO_NOSIGPIPE instead of MSG_NOSIGNAL (which only recent
 * releases have), visible at the full level only. */
#include_next <sys/socket.h>
#undef SOCK_CLOEXEC
#undef SOCK_NONBLOCK
#undef MSG_NOSIGNAL
#if WSPROXY_DARWIN_FULL
#define SO_NOSIGPIPE 0x1022
#endif
