# wsproxy -- see README.md.  `make test` and `make run` install what they
# need on Debian 12 (test/deps.sh); elsewhere they print what to install.
#
#   make                 build/wsproxy (+ the ASan/UBSan and no-TLS builds)
#   make TLS=0           build without BearSSL (defines WS_PROXY_NO_TLS)
#   make BEARSSL_INC=/path/to/bearssl/inc BEARSSL_LIB=/path/to/libbearssl.a
#                        use a vendored BearSSL instead of Debian's
#   make test | run | bench | clean
#   make run TLS=1       the demo over https: and wss:// with a throwaway CA

CC      ?= cc
CFLAGS  ?= -O2 -g
WARN    := -std=c99 -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes
TLS     ?= 1
BEARSSL_INC ?=
BEARSSL_LIB ?= $(firstword $(wildcard /usr/lib/*/libbearssl.a /usr/lib/libbearssl.a /usr/local/lib/libbearssl.a) -lbearssl)

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

.PHONY: all test unit run bench clean deps check-symbols

all: build/wsproxy build/wsproxy.o build/asan/wsproxy build/notls/wsproxy

build/wsproxy: $(SRC)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -DWSPROXY_MAIN -o $@ wsproxy.c $(TLSLIBS) $(LDFLAGS)

build/wsproxy.o: $(SRC)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -c -o $@ wsproxy.c

build/asan/wsproxy: $(SRC)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(SAN) -DWSPROXY_MAIN -o $@ wsproxy.c $(TLSLIBS) $(LDFLAGS)

build/notls/wsproxy: $(SRC)
	@mkdir -p $(@D)
	$(CC) $(WARN) $(CFLAGS) -DWS_PROXY_NO_TLS -pthread -DWSPROXY_MAIN -o $@ wsproxy.c $(LDFLAGS)

build/clang/wsproxy: $(SRC)
	@mkdir -p $(@D)
	clang $(ALL_CFLAGS) -DWSPROXY_MAIN -o $@ wsproxy.c $(TLSLIBS) $(LDFLAGS)

build/clang/notls.o: $(SRC)
	@mkdir -p $(@D)
	clang $(WARN) $(CFLAGS) -DWS_PROXY_NO_TLS -pthread -c -o $@ wsproxy.c

# Unit tests include wsproxy.c to reach its static functions; the header
# test links wsproxy.o through wsproxy.h alone.
build/unit: test/unit.c $(SRC)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -o $@ test/unit.c $(TLSLIBS) $(LDFLAGS)

build/asan/unit: test/unit.c $(SRC)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(SAN) -o $@ test/unit.c $(TLSLIBS) $(LDFLAGS)

# ThreadSanitizer (clang): the API's thread-safety, with several proxies.
build/tsan/unit: test/unit.c $(SRC)
	@mkdir -p $(@D)
	clang $(WARN) -g -O1 -fsanitize=thread $(TLSFLAGS) -pthread -o $@ test/unit.c $(TLSLIBS)

build/header_test: test/header_test.c build/wsproxy.o
	$(CC) $(WARN) $(CFLAGS) -pthread -o $@ test/header_test.c build/wsproxy.o $(TLSLIBS) $(LDFLAGS)

# Coverage-guided fuzzing of the parsers (clang's libFuzzer).
build/fuzz: test/fuzz.c $(SRC)
	@mkdir -p $(@D)
	clang $(WARN) -g -O1 -fsanitize=fuzzer,address,undefined $(TLSFLAGS) -pthread -o $@ test/fuzz.c $(TLSLIBS)

# Every exported symbol carries the ws_proxy_ prefix.
check-symbols: build/wsproxy.o
	@bad=$$(nm -g --defined-only build/wsproxy.o | awk '{print $$3}' | grep -v '^ws_proxy_' || true); \
	if [ -n "$$bad" ]; then echo "unprefixed exported symbols: $$bad"; exit 1; fi; \
	echo "check-symbols: every exported symbol starts with ws_proxy_"

deps:
	@bash test/deps.sh

test: deps
	@bash test/run-tests.sh

# run-demo.sh installs the demo's own dependencies (test/deps.sh demo) and builds
# build/wsproxy itself; `make run TLS=1` serves the studio over https: and wss://.
run:
	@bash test/run-demo.sh

bench: deps build/wsproxy
	@bash test/bench/run.sh

clean:
	rm -rf build
