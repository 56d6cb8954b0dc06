/* macOS's <sys/cdefs.h> visibility, on glibc (see ../README): with
 * _POSIX_C_SOURCE and no _DARWIN_C_SOURCE, __DARWIN_C_LEVEL is POSIX alone;
 * otherwise it is __DARWIN_C_FULL.  macOS has neither pipe2 nor accept4, so
 * the full level is glibc's default set, not _GNU_SOURCE. */
#ifndef WSPROXY_MACOS_FEATURES_H
#define WSPROXY_MACOS_FEATURES_H
#undef _GNU_SOURCE
#if defined(_POSIX_C_SOURCE) && !defined(_DARWIN_C_SOURCE)
#undef _DEFAULT_SOURCE
#define WSPROXY_DARWIN_FULL 0
#else
#define _DEFAULT_SOURCE 1
#define WSPROXY_DARWIN_FULL 1
#endif
#endif
#include_next <features.h>
