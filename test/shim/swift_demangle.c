/*
 * Preloaded after the ASan runtime into Debian's postgres by
 * test/test_postgres_extension.py.  postgres links libldap -> gnutls ->
 * p11-kit, whose constructor calls newlocale(); its malloc() is the first
 * call ASan intercepts, so ASan initialises there, with glibc's
 * __libc_setlocale_lock held for writing.  ASan's initialisation looks up
 * swift_demangle with dlsym(); the miss makes dlerror() translate its
 * message, dcgettext() read-locks and then unlocks that same lock, and the
 * next locale call (bindtextdomain in postgres's main) waits forever.
 * Defining the symbol makes the lookup succeed.  ASan calls it only for
 * Swift names; NULL means "not demangled".
 */
#include <stddef.h>
#include <stdint.h>

char *swift_demangle(const char *name, size_t len, char *out, size_t *outlen,
                     uint32_t flags);

char *swift_demangle(const char *name, size_t len, char *out, size_t *outlen,
                     uint32_t flags)
{
    (void)name;
    (void)len;
    (void)out;
    (void)outlen;
    (void)flags;
    return NULL;
}
