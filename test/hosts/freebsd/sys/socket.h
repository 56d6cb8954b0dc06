/* FreeBSD's <sys/socket.h> (see ../../README): SOCK_CLOEXEC, SOCK_NONBLOCK
 * and MSG_NOSIGNAL as on Linux, and SO_NOSIGPIPE with the BSD names. */
#include_next <sys/socket.h>
#if __BSD_VISIBLE && !defined(SO_NOSIGPIPE)
#define SO_NOSIGPIPE 0x00000800
#endif
