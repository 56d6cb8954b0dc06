/* gcc's own <stddef.h> includes this on FreeBSD and, while BSD names are
 * visible, types rune_t from it (see ../../README). */
typedef int __rune_t;
