/* FreeBSD's <sys/cdefs.h> visibility, on glibc (see ../README): defining
 * _POSIX_C_SOURCE or _XOPEN_SOURCE shows POSIX alone (__BSD_VISIBLE 0: no
 * pipe2, accept4, initgroups); defining neither shows everything.  FreeBSD
 * knows no _GNU_SOURCE or _DEFAULT_SOURCE. */
#ifndef WSPROXY_FREEBSD_FEATURES_H
#define WSPROXY_FREEBSD_FEATURES_H
#if defined(_POSIX_C_SOURCE) || defined(_XOPEN_SOURCE)
#undef _GNU_SOURCE
#undef _DEFAULT_SOURCE
#undef _BSD_SOURCE
#define __BSD_VISIBLE 0
#else
#define _GNU_SOURCE 1
#define __BSD_VISIBLE 1
#endif
#endif
#include_next <features.h>
