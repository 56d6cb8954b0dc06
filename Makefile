# wsproxy -- see README.md.  `make test` and `make run` install what they
# need on Debian 12 (test/deps.sh); elsewhere they print what to install.
#
#   make                 build/wsproxy (+ the ASan/UBSan and no-TLS builds)
#   make TLS=0           build without BearSSL (defines WS_PROXY_NO_TLS)
#   make BEARSSL_INC=/path/to/bearssl/inc BEARSSL_LIB=/path/to/libbearssl.a
#                        use a vendored BearSSL instead of Debian's
#   make test | run | bench | chaos | clean
#   make install | uninstall   PREFIX=/usr/local DESTDIR= SYSCONFDIR=/etc
#   make run TLS=1       the demo over https: and wss:// with a throwaway CA

CC      ?= cc
CFLAGS  ?= -O2 -g
WARN    := -std=c99 -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes
TLS     ?= 1
BEARSSL_INC ?=
# The compiler's own multiarch directory first: with other architectures'
# libbearssl-dev installed too, /usr/lib/*/ would pick the first by name.
MULTIARCH   := $(shell $(CC) -print-multiarch 2>/dev/null)
BEARSSL_LIB ?= $(firstword $(wildcard $(if $(MULTIARCH),/usr/lib/$(MULTIARCH)/libbearssl.a) /usr/lib/*/libbearssl.a /usr/lib/libbearssl.a /usr/local/lib/libbearssl.a) -lbearssl)

ifeq ($(TLS),0)
TLSFLAGS := -DWS_PROXY_NO_TLS
TLSLIBS  :=
else
TLSFLAGS := $(if $(BEARSSL_INC),-I$(BEARSSL_INC))
TLSLIBS  := $(BEARSSL_LIB)
endif

SAN     := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
ALL_CFLAGS = $(WARN) $(CFLAGS) $(TLSFLAGS) -pthread
SRC     := wsproxy.c wsproxy.h
PROG    := program/main.c

.PHONY: all test unit run bench clean deps check-symbols install uninstall FORCE

all: build/wsproxy build/wsproxy.o build/asan/wsproxy build/notls/wsproxy

# What build/ was built with.  Every compiled target depends on build/.vars,
# which is rewritten only when one of these changes, so `make TLS=0` or
# `make CC=clang` after `make` rebuilds instead of keeping the other build.
BUILD_VARS = $(CC) | $(CFLAGS) | $(LDFLAGS) | $(TLSFLAGS) | $(TLSLIBS) | $(MARIADB_INC) | $(MARIADB_SERVICES) \
    | $(HOST_CFLAGS) $(foreach h,$(HOSTS),| $(HOST_$(h)_CC) $(HOST_$(h)_BEARSSL))
build/.vars: FORCE
	@mkdir -p $(@D)
	@echo '$(subst ','\'',$(BUILD_VARS))' | cmp -s - $@ || echo '$(subst ','\'',$(BUILD_VARS))' > $@
FORCE:

build/wsproxy: $(PROG) $(SRC) build/.vars
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -o $@ $(PROG) wsproxy.c $(TLSLIBS) $(LDFLAGS)

build/wsproxy.o: $(SRC) build/.vars
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -c -o $@ wsproxy.c

build/asan/wsproxy: $(PROG) $(SRC) build/.vars
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(SAN) -o $@ $(PROG) wsproxy.c $(TLSLIBS) $(LDFLAGS)

build/notls/wsproxy: $(PROG) $(SRC) build/.vars
	@mkdir -p $(@D)
	$(CC) $(WARN) $(CFLAGS) -DWS_PROXY_NO_TLS -pthread -o $@ $(PROG) wsproxy.c $(LDFLAGS)

build/clang/wsproxy: $(PROG) $(SRC) build/.vars
	@mkdir -p $(@D)
	clang $(ALL_CFLAGS) -o $@ $(PROG) wsproxy.c $(TLSLIBS) $(LDFLAGS)

build/clang/notls.o: $(SRC) build/.vars
	@mkdir -p $(@D)
	clang $(WARN) $(CFLAGS) -DWS_PROXY_NO_TLS -pthread -c -o $@ wsproxy.c

# Unit tests include wsproxy.c to reach its static functions; the header
# test links wsproxy.o through wsproxy.h alone.
build/unit: test/unit.c $(SRC) build/.vars
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -o $@ test/unit.c $(TLSLIBS) $(LDFLAGS)

build/asan/unit: test/unit.c $(SRC) build/.vars
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(SAN) -o $@ test/unit.c $(TLSLIBS) $(LDFLAGS)

# ThreadSanitizer (clang): the API's thread-safety, with several proxies.
build/tsan/unit: test/unit.c $(SRC) build/.vars
	@mkdir -p $(@D)
	clang $(WARN) -g -O1 -fsanitize=thread $(TLSFLAGS) -pthread -o $@ test/unit.c $(TLSLIBS)

build/header_test: test/header_test.c build/wsproxy.o build/.vars
	$(CC) $(WARN) $(CFLAGS) -pthread -o $@ test/header_test.c build/wsproxy.o $(TLSLIBS) $(LDFLAGS)

# Coverage-guided fuzzing of the parsers (clang's libFuzzer).
build/fuzz: test/fuzz.c $(PROG) $(SRC) build/.vars
	@mkdir -p $(@D)
	clang $(WARN) -g -O1 -fsanitize=fuzzer,address,undefined $(TLSFLAGS) -pthread -o $@ test/fuzz.c $(TLSLIBS)

# Every exported symbol carries the ws_proxy_ prefix: the defined global and
# weak symbols of default or protected visibility (a hidden one, such as
# gcc's __x86.get_pc_thunk.* in i386 PIC code, is not exported).
# SYMBOLS_OBJ=build/hosts/i386/wsproxy-pic.o checks another build.
SYMBOLS_OBJ ?= build/wsproxy.o
check-symbols: $(SYMBOLS_OBJ)
	@bad=$$(readelf -Ws $(SYMBOLS_OBJ) | awk '($$5 == "GLOBAL" || $$5 == "WEAK") && \
	    ($$6 == "DEFAULT" || $$6 == "PROTECTED") && $$7 != "UND" {print $$8}' | \
	    grep -v '^ws_proxy_' || true); \
	if [ -n "$$bad" ]; then echo "unprefixed exported symbols in $(SYMBOLS_OBJ): $$bad"; exit 1; fi; \
	echo "check-symbols: every symbol $(SYMBOLS_OBJ) exports starts with ws_proxy_"

deps:
	@bash test/deps.sh

test: deps
	@bash test/run-tests.sh

# run-demo.sh installs the demo's own dependencies (test/deps.sh demo) and builds
# build/wsproxy itself; `make run TLS=1` serves the studio over https: and wss://.
# `make run ENGINE=postgres`: a throwaway PostgreSQL with the extension inside
# (test/run-postgres.sh) and a Node snippet with Neon's driver that queries it.
run:
	@if [ "$(ENGINE)" = postgres ]; then bash test/run-postgres.sh; \
	else bash test/run-demo.sh; fi

bench: deps build/wsproxy
	@bash test/bench/run.sh

# Misbehaving clients and engine against the ASan+UBSan build (test/chaos.py);
# CHAOS_SEED=N replays a run's plans.
CHAOS_SECS ?= 300
.PHONY: chaos
chaos: deps build/asan/wsproxy
	@/usr/bin/python3 test/chaos.py --secs $(CHAOS_SECS)

clean:
	rm -rf build

# LD_PRELOAD fault shim for test_faults.py (injected accept errors,
# descriptors created without close-on-exec).
build/shim/fault.so: test/shim/fault.c build/.vars
	@mkdir -p $(@D)
	$(CC) $(WARN) $(CFLAGS) -shared -fPIC -o $@ test/shim/fault.c -ldl

# Preloaded with the ASan runtime into postgres (test_postgres_extension.py):
# see the file for the glibc lock it keeps ASan's initialisation from breaking.
build/shim/swift_demangle.so: test/shim/swift_demangle.c
	@mkdir -p $(@D)
	$(CC) $(WARN) $(CFLAGS) -shared -fPIC -o $@ test/shim/swift_demangle.c

# Install the program, header, manual page, systemd unit, logrotate rules and
# an example configuration (never overwriting one that exists).  The unit
# and the manual page name the installed paths.
PREFIX     ?= /usr/local
SYSCONFDIR ?= /etc
BINDIR     ?= $(PREFIX)/bin
INCLUDEDIR ?= $(PREFIX)/include
MANDIR     ?= $(PREFIX)/share/man
UNITDIR    ?= $(PREFIX)/lib/systemd/system
PATHS_SED   = -e 's|/usr/local/bin/wsproxy|$(BINDIR)/wsproxy|g' \
              -e 's|/etc/wsproxy/|$(SYSCONFDIR)/wsproxy/|g' \
              -e 's|/etc/logrotate.d/|$(SYSCONFDIR)/logrotate.d/|g' \
              -e 's|/usr/local/lib/systemd/system/|$(UNITDIR)/|g'
CONF        = $(DESTDIR)$(SYSCONFDIR)/wsproxy/wsproxy.conf
# The installed program is stripped; build/wsproxy keeps its symbols for a
# debugger (STRIP=: installs it as built).
STRIP      ?= strip

install: build/wsproxy
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(MANDIR)/man1 \
	    $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/wsproxy $(DESTDIR)$(SYSCONFDIR)/logrotate.d
	install -m 755 build/wsproxy $(DESTDIR)$(BINDIR)/wsproxy
	$(STRIP) $(DESTDIR)$(BINDIR)/wsproxy
	install -m 644 wsproxy.h $(DESTDIR)$(INCLUDEDIR)/wsproxy.h
	sed $(PATHS_SED) dist/wsproxy.1 > $(DESTDIR)$(MANDIR)/man1/wsproxy.1
	sed $(PATHS_SED) dist/wsproxy.service > $(DESTDIR)$(UNITDIR)/wsproxy.service
	install -m 644 dist/wsproxy.logrotate $(DESTDIR)$(SYSCONFDIR)/logrotate.d/wsproxy
	chmod 644 $(DESTDIR)$(MANDIR)/man1/wsproxy.1 $(DESTDIR)$(UNITDIR)/wsproxy.service
	@if [ -e $(CONF) ]; then echo "install: keeping $(CONF) (the example is dist/wsproxy.conf)"; \
	else echo "install -m 644 dist/wsproxy.conf $(CONF)"; install -m 644 dist/wsproxy.conf $(CONF); fi

# Removes what install put there; the configuration only if unchanged.
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/wsproxy $(DESTDIR)$(INCLUDEDIR)/wsproxy.h \
	    $(DESTDIR)$(MANDIR)/man1/wsproxy.1 $(DESTDIR)$(UNITDIR)/wsproxy.service \
	    $(DESTDIR)$(SYSCONFDIR)/logrotate.d/wsproxy
	@if [ -e $(CONF) ] && ! cmp -s dist/wsproxy.conf $(CONF); then \
	    echo "uninstall: keeping $(CONF) (changed since install)"; \
	else rm -f $(CONF); rmdir $(DESTDIR)$(SYSCONFDIR)/wsproxy 2>/dev/null || true; fi

# MariaDB daemon plugin (engines/mariadb/README.md).  A daemon plugin's
# interface version is the exact server version, so it is built against the
# installed server's headers, and only when libmariadbd-dev matches
# mariadb-server.  -z defs: a missing service library fails here, not at load.
MARIADB_INC      ?= /usr/include/mariadb/server
MARIADB_SERVICES ?= $(firstword $(wildcard $(if $(MULTIARCH),/usr/lib/$(MULTIARCH)/libmysqlservices.a) /usr/lib/*/libmysqlservices.a) -lmysqlservices)

.PHONY: mariadb-plugin mariadb-version-check
mariadb-plugin: build/mariadb/wsproxy.so

mariadb-version-check:
	@dev=$$(dpkg-query -W -f='$${Version}' libmariadbd-dev 2>/dev/null); \
	srv=$$(dpkg-query -W -f='$${Version}' mariadb-server 2>/dev/null); \
	if [ -z "$$dev" ] || [ -z "$$srv" ]; then \
	    echo "mariadb-plugin: needs libmariadbd-dev, libmariadb-dev and mariadb-server (test/deps.sh installs them)"; exit 1; fi; \
	if [ "$$dev" != "$$srv" ]; then \
	    echo "mariadb-plugin: libmariadbd-dev $$dev does not match mariadb-server $$srv:"; \
	    echo "  a daemon plugin loads only into the exact server version it was built for;"; \
	    echo "  install the same version of both (apt-get install libmariadbd-dev=$$srv)"; exit 1; fi

PLUGIN_LINK = -pthread -fPIC -shared -fvisibility=hidden -DMYSQL_DYNAMIC_PLUGIN \
    -isystem $(MARIADB_INC) -I. -Wl,-z,defs -Wl,--exclude-libs,libbearssl.a

build/mariadb/wsproxy.so: engines/mariadb/wsproxy_plugin.c $(SRC) build/.vars | mariadb-version-check
	@mkdir -p $(@D)
	$(CC) $(WARN) $(CFLAGS) $(TLSFLAGS) $(PLUGIN_LINK) -o $@ \
	    engines/mariadb/wsproxy_plugin.c wsproxy.c $(TLSLIBS) $(MARIADB_SERVICES)

# The same with ASan+UBSan, for the tests (mariadbd gets the runtime preloaded).
.PHONY: mariadb-plugin-asan
mariadb-plugin-asan: build/mariadb-asan/wsproxy.so
build/mariadb-asan/wsproxy.so: engines/mariadb/wsproxy_plugin.c $(SRC) build/.vars | mariadb-version-check
	@mkdir -p $(@D)
	$(CC) $(WARN) -g -O1 $(SAN) $(TLSFLAGS) $(PLUGIN_LINK) -o $@ \
	    engines/mariadb/wsproxy_plugin.c wsproxy.c $(TLSLIBS) $(MARIADB_SERVICES)

# PostgreSQL extension (engines/postgres/README.md): PGXS from
# postgresql-server-dev-*; PG_CONFIG= picks the server (default: pg_config on
# PATH).  Built in build/postgres, installed by postgres-install.
PG_CONFIG ?= pg_config
PG_MAKE = $(MAKE) --no-print-directory -f $(CURDIR)/engines/postgres/Makefile \
    VPATH=$(CURDIR)/engines/postgres ROOT=$(CURDIR) PG_CONFIG=$(PG_CONFIG) \
    TLSFLAGS="$(TLSFLAGS)" TLSLIBS="$(TLSLIBS)" with_llvm=no
PG_SRC = engines/postgres/wsproxy_pg.c engines/postgres/wsproxy.control \
    engines/postgres/wsproxy--0.1.sql engines/postgres/Makefile $(SRC)

.PHONY: postgres-extension postgres-extension-asan postgres-install postgres-check
postgres-extension: build/postgres/wsproxy.so
postgres-extension-asan: build/postgres-asan/wsproxy.so

postgres-check:
	@$(PG_CONFIG) --pgxs >/dev/null 2>&1 && [ -f "$$($(PG_CONFIG) --pgxs)" ] && \
	    [ -f "$$($(PG_CONFIG) --includedir-server)/postgres.h" ] || { \
	    echo "postgres-extension: needs PGXS and the server headers of $(PG_CONFIG):"; \
	    echo "  install postgresql-server-dev-<major> (test/deps.sh does), or give PG_CONFIG=/path/to/pg_config"; \
	    exit 1; }

build/postgres/wsproxy.so: $(PG_SRC) | postgres-check
	@mkdir -p $(@D)
	$(PG_MAKE) -C $(@D) WS_CFLAGS="$(WARN) $(CFLAGS)"

# The same with ASan+UBSan, for the tests (postgres gets the runtime preloaded).
build/postgres-asan/wsproxy.so: $(PG_SRC) build/shim/swift_demangle.so | postgres-check
	@mkdir -p $(@D)
	$(PG_MAKE) -C $(@D) WS_CFLAGS="$(WARN) -g -O1" SAN="$(SAN)"

# Into the server's directories (pkglibdir, sharedir/extension); DESTDIR works.
postgres-install: build/postgres/wsproxy.so
	$(PG_MAKE) -C build/postgres install

# ---- Hosts built and tested on every change (test/test_hosts.py; README
# "Building").  Each row is a Debian cross toolchain (test/deps.sh installs
# them): the unit tests and a static program, run natively or under
# qemu-user.  A row's BearSSL is Debian's libbearssl-dev for that
# architecture, unpacked by test/deps.sh under HOST_DEPS (never installed:
# a foreign libbearssl.a in /usr/lib would be found by BEARSSL_LIB above).
# musl has no BearSSL package, so that row builds without TLS unless
# HOST_musl_BEARSSL names a libbearssl.a built with musl-gcc.
HOSTS              := musl i386 s390x
HOST_DEPS          ?= /opt/wsproxy-hosts
HOST_musl_CC       ?= musl-gcc
HOST_musl_BEARSSL  ?=
HOST_i386_CC       ?= i686-linux-gnu-gcc
HOST_i386_BEARSSL  ?= $(HOST_DEPS)/i386/usr/lib/i386-linux-gnu/libbearssl.a
HOST_s390x_CC      ?= s390x-linux-gnu-gcc
HOST_s390x_BEARSSL ?= $(HOST_DEPS)/s390x/usr/lib/s390x-linux-gnu/libbearssl.a
HOST_CFLAGS        ?= -O2
# A row's flags: TLS where it has a BearSSL (its headers beside the
# library, as Debian lays them out), else WS_PROXY_NO_TLS.
host_tls = $(if $(HOST_$(1)_BEARSSL),-I$(abspath $(dir $(HOST_$(1)_BEARSSL))../../include/bearssl),-DWS_PROXY_NO_TLS)
host_cc  = $(HOST_$(1)_CC) $(WARN) $(HOST_CFLAGS) $(call host_tls,$(1)) -pthread

.PHONY: hosts
hosts: $(foreach h,$(HOSTS),build/hosts/$(h)/wsproxy build/hosts/$(h)/unit build/hosts/$(h)/wsproxy.o) \
    build/hosts/i386/wsproxy-pic.o

build/hosts/%/wsproxy.o: $(SRC) build/.vars
	@mkdir -p $(@D)
	$(call host_cc,$*) -c -o $@ wsproxy.c

build/hosts/%/wsproxy-pic.o: $(SRC) build/.vars
	@mkdir -p $(@D)
	$(call host_cc,$*) -fPIC -c -o $@ wsproxy.c

build/hosts/%/wsproxy: $(PROG) $(SRC) build/.vars
	@mkdir -p $(@D)
	$(call host_cc,$*) -static -o $@ $(PROG) wsproxy.c $(HOST_$*_BEARSSL)

build/hosts/%/unit: test/unit.c $(SRC) build/.vars
	@mkdir -p $(@D)
	$(call host_cc,$*) -static -o $@ test/unit.c $(HOST_$*_BEARSSL)
