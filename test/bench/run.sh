#!/usr/bin/env bash
# test/bench/run.sh -- what `make bench` runs.
#
# Measures wsproxy against two other relays in the same run, on the same
# engine stand-in (test/bench/engine.c):
#   wsproxy  ws:// (and wss://) through $WSPROXY_BIN, default config
#            (PROXY v2 header on, which the engine skips), --max-connections 9000
#   socat    socat -b 131072 TCP-LISTEN:PORT,fork,reuseaddr UNIX-CONNECT:SOCK,
#            the same payload bytes with no WebSocket framing (loadgen --raw);
#            OPENSSL-LISTEN for the TLS rows
#   node     test/bench/wsrelay.js: a WebSocket relay written with Node's `ws`
#            package (test/node_modules), the same frames as wsproxy; https
#            and Node's OpenSSL for the TLS rows
# Each relay runs on core 0, loadgen and the engine on core 1.  Each figure
# is the median of $BENCH_RUNS runs (default 3) of $BENCH_SECS seconds
# (default 1), with min-max; the ratios compare medians of the same run.
# Every echo and download byte is checked against the test pattern, so a
# broken relay cannot look fast.
#
# Environment: WSPROXY_BIN (default build/wsproxy), BENCH_RUNS, BENCH_SECS,
# BENCH_IDLE (idle connections for the loop-cost rows, default 8000), CC.
# Binaries go to build/bench/, every loadgen result line to
# build/bench/results.txt, failures to build/bench/failures.log.
# Only 127.0.0.1 and Unix sockets are used; only processes started here are
# stopped, by PID; every wait is bounded.

set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root" || exit 1

WSPROXY_BIN=${WSPROXY_BIN:-build/wsproxy}
RUNS=${BENCH_RUNS:-3}
SECS=${BENCH_SECS:-1}
IDLE_LOOP_N=${BENCH_IDLE:-8000}
IDLE_MEM_N=1000
TLS_IDLE_MEM_N=500
BURST_N=1000
CC=${CC:-cc}
OUT=build/bench
T_START=$(date +%s)

die() { echo "bench: $*" >&2; exit 1; }

for tool in socat taskset timeout strip awk node; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool not found (test/deps.sh installs it)"
done
[ -d test/node_modules/ws ] || die "test/node_modules/ws not found (test/deps.sh installs it)"
[ -x "$WSPROXY_BIN" ] || die "$WSPROXY_BIN not found: run make first (or set WSPROXY_BIN)"
WSPROXY_BIN=$(cd "$(dirname "$WSPROXY_BIN")" && pwd)/$(basename "$WSPROXY_BIN")
RELAY_JS=$root/test/bench/wsrelay.js

if [ "$(nproc)" -ge 2 ]; then
	PROXY_CPU=0
	LOAD_CPU=1
else
	PROXY_CPU=0
	LOAD_CPU=0
	echo "bench: only one CPU: proxy, client and engine share it" >&2
fi

ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null
NOFILE=$(ulimit -n)
if [ "$NOFILE" != unlimited ] && [ $((2 * IDLE_LOOP_N + 1000)) -gt "$NOFILE" ]; then
	IDLE_LOOP_N=$(((NOFILE - 1000) / 2))
	echo "bench: RLIMIT_NOFILE is $NOFILE: using $IDLE_LOOP_N idle connections" >&2
fi

# ---- build loadgen and engine ----

mkdir -p "$OUT"
BFLAGS="-std=c99 -O2 -Wall -Wextra -Werror"
$CC $BFLAGS -o "$OUT/engine" test/bench/engine.c || die "building engine failed"
$CC $BFLAGS -DWS_PROXY_NO_TLS -o "$OUT/decode" test/bench/decode.c || die "building decode failed"
HAVE_TLS=0
BEARSSL_LIB=$(ls /usr/lib/*/libbearssl.a /usr/lib/libbearssl.a /usr/local/lib/libbearssl.a 2>/dev/null | head -n 1)
if [ -n "$BEARSSL_LIB" ] && command -v openssl >/dev/null 2>&1 &&
	$CC $BFLAGS -DLOADGEN_TLS -o "$OUT/loadgen" test/bench/loadgen.c "$BEARSSL_LIB" 2>"$OUT/build-tls.err"; then
	HAVE_TLS=1
else
	$CC $BFLAGS -o "$OUT/loadgen" test/bench/loadgen.c || die "building loadgen failed"
	echo "bench: loadgen built without TLS (no BearSSL or openssl): wss rows skipped" >&2
fi
LOADGEN=$root/$OUT/loadgen
ENGINE=$root/$OUT/engine

TMP=$(mktemp -d "${TMPDIR:-/tmp}/wsbench.XXXXXX") || die "mktemp failed"
RESULTS=$OUT/results.txt
FAILLOG=$OUT/failures.log
: >"$RESULTS"
: >"$FAILLOG"

# ---- process control (only our own PIDs) ----

PIDS=""

# /proc only, so procps and iproute2 are not needed.
alive() {
	local st
	st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
	case $st in Z|X|"") return 1 ;; esac
	return 0
}

kids_of() {
	if [ -r "/proc/$1/task/$1/children" ]; then
		cat /proc/"$1"/task/*/children 2>/dev/null
	else
		awk -v p="$1" '{ sub(/.*\) /, ""); if ($2 == p) print FILENAME }' /proc/[0-9]*/stat 2>/dev/null |
			cut -d/ -f3
	fi
}

# Wait (bounded) until the socat parent $1 has no forked children left.
wait_kids() {
	for _ in $(seq 1 300); do
		[ -z "$(kids_of "$1")" ] && return 0
		sleep 0.1
	done
	return 1
}

# Wait (bounded) until the socat parent $1 has forked $2 children: a raw
# connection counts as open once the kernel has accepted it, before socat has.
wait_kids_count() {
	local n
	for _ in $(seq 1 600); do
		n=$(kids_of "$1" | wc -w)
		[ "$n" -ge "$2" ] && return 0
		sleep 0.1
	done
	echo "== socat forked only $n of $2 children in 60 s" >>"$FAILLOG"
	return 1
}

stop_pid() {
	local pid=$1
	[ -n "$pid" ] || return 0
	# socat's forked children are ours too; TERM them with their parent.
	# shellcheck disable=SC2046
	kill "$pid" $(kids_of "$pid") 2>/dev/null
	for _ in $(seq 1 100); do
		alive "$pid" || break
		sleep 0.05
	done
	alive "$pid" && kill -9 "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	PIDS=$(echo "$PIDS" | tr ' ' '\n' | grep -vx "$pid" | tr '\n' ' ')
	return 0
}

cleanup() {
	local p
	for p in $PIDS; do stop_pid "$p"; done
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# port_used PORT [STATE]: a TCP socket (v4 or v6) on local port PORT, in any
# state or in STATE (0A = listening), per /proc/net/tcp*.
port_used() {
	awk -v h="$(printf ':%04X' "$1")" -v st="${2:-}" '
		FNR > 1 && substr($2, length($2) - 4) == h && (st == "" || $4 == st) { f = 1 }
		END { exit !f }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# A port nothing uses, in any state (so TIME_WAIT leftovers are avoided too),
# below the ephemeral range when there is room, so no client socket takes it.
EPH_LOW=$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null)
[ "${EPH_LOW:-0}" -gt 15000 ] && PORT_SPAN=$((EPH_LOW - 10000)) || PORT_SPAN=50000
free_port() {
	local p
	for _ in $(seq 1 200); do
		p=$((10000 + RANDOM % PORT_SPAN))
		if ! port_used "$p"; then
			echo "$p"
			return 0
		fi
	done
	return 1
}

wait_listen() { # port pid
	for _ in $(seq 1 100); do
		port_used "$1" 0A && return 0
		alive "$2" || return 1
		sleep 0.05
	done
	return 1
}

start_engine() { # mode: the engine on $TMP/engine-MODE.sock
	local sock=$TMP/engine-$1.sock
	taskset -c "$LOAD_CPU" "$ENGINE" --socket "$sock" --mode "$1" >>"$TMP/engine.log" 2>&1 &
	PIDS="$PIDS $!"
	for _ in $(seq 1 100); do
		[ -S "$sock" ] && return 0
		sleep 0.05
	done
	die "engine ($1) did not start: $(cat "$TMP/engine.log")"
}

# spawn LOG FN ARGS...: start the command FN PORT ARGS... puts in CMD, on the
# relay's CPU, on a free port, until it listens -> SPAWN_PID SPAWN_PORT
spawn() {
	local log=$1 fn=$2 port
	shift 2
	for _ in 1 2 3; do
		port=$(free_port) || die "no free port"
		"$fn" "$port" "$@"
		taskset -c "$PROXY_CPU" "${CMD[@]}" >>"${LOG_OVERRIDE:-$log}" 2>&1 &
		SPAWN_PID=$!
		PIDS="$PIDS $SPAWN_PID"
		SPAWN_PORT=$port
		wait_listen "$port" "$SPAWN_PID" && return 0
		stop_pid "$SPAWN_PID"
	done
	return 1
}

cmd_proxy() { # port ws|wss sock
	PROXY_LOG=$TMP/wsproxy-$1
	mkdir -p "$PROXY_LOG"
	LOG_OVERRIDE=$PROXY_LOG/stderr
	CMD=("$WSPROXY_BIN" --bind 127.0.0.1 --socket "$3" --max-connections 9000 --log-dir "$PROXY_LOG")
	# As root (CI): the bench's own engine trusts nobody by uid, so stay
	# root, with a binary that knows the option (an older one may not).
	if [ "$(id -u)" = 0 ] && "$WSPROXY_BIN" --help 2>&1 | grep -q -- --allow-root; then
		CMD+=(--allow-root)
	fi
	if [ "$2" = wss ]; then
		CMD+=(--https-port "$1" --cert "$TMP/pki/server.pem" --key "$TMP/pki/server.key")
	else
		CMD+=(--http-port "$1")
	fi
}

# backlog=4096 (wsproxy's and the engine's) only speeds up opening the
# 1,000- and 8,000-connection sets; socat's default of 5 drops SYNs.
# nodelay on the TLS listener: without it OpenSSL's record-sized writes meet
# Nagle and delayed ACKs (40 ms stalls), which would flatter wsproxy.
cmd_socat() { # port tcp|tls sock
	local addr
	if [ "$2" = tls ]; then
		addr="OPENSSL-LISTEN:$1,fork,reuseaddr,backlog=4096,nodelay,bind=127.0.0.1"
		addr="$addr,cert=$TMP/pki/server.pem,key=$TMP/pki/server.key,verify=0"
	else
		addr="TCP-LISTEN:$1,fork,reuseaddr,backlog=4096,bind=127.0.0.1"
	fi
	CMD=(socat -b 131072 "$addr" "UNIX-CONNECT:$3")
}

cmd_node() { # port ws|wss sock
	CMD=(node "$RELAY_JS" --port "$1" --socket "$3")
	[ "$2" = wss ] && CMD+=(--cert "$TMP/pki/server.pem" --key "$TMP/pki/server.key")
}

# start_proxy ws|wss SOCK -> PROXY_PID PROXY_PORT PROXY_LOG
start_proxy() {
	spawn /dev/null cmd_proxy "$@" || die "wsproxy did not start: $(tail -n 3 "$PROXY_LOG/stderr")"
	LOG_OVERRIDE=""
	PROXY_PID=$SPAWN_PID PROXY_PORT=$SPAWN_PORT
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null; }
# CPU of process $1 and of its children it has reaped (socat's forks)
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 + $14 + $15 }'; }

# ---- running loadgen and keeping figures ----

declare -A VALS FAILS

field() { # line key
	echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1
}

LAST=""
# lg ROWTAG TARGET ARGS... : one loadgen run; LAST = its result line; 1 on failure
lg() {
	local tag=$1 tgt=$2 rc
	shift 2
	LAST=$(taskset -c "$LOAD_CPU" timeout 150 "$LOADGEN" "$@" 2>"$TMP/lg.err")
	rc=$?
	echo "row=$tag target=$tgt $LAST" >>"$RESULTS"
	if [ $rc -ne 0 ] || [ -z "$LAST" ] || ! echo "$LAST" | grep -q 'errors=0 verify=ok'; then
		{
			echo "== $tag / $tgt (exit $rc): loadgen $*"
			echo "$LAST"
			head -n 5 "$TMP/lg.err"
		} >>"$FAILLOG"
		return 1
	fi
	return 0
}

add() { VALS[$1|$2]="${VALS[$1|$2]:-} $3"; }
fail() { FAILS[$1|$2]=$((${FAILS[$1|$2]:-0} + 1)); }

# record ROW TARGET KEY... : store the keys of LAST (after lg) under ROW, ROW2...
record() { # record tgt ok row:key [row:key...]
	local tgt=$1 ok=$2 rk
	shift 2
	for rk in "$@"; do
		if [ "$ok" = 1 ]; then
			add "${rk%%:*}" "$tgt" "$(field "$LAST" "${rk#*:}")"
		else
			fail "${rk%%:*}" "$tgt"
		fi
	done
}

check_proxy() { # pid label [logdir]: note a dead proxy
	if ! alive "$1"; then
		echo "== wsproxy (pid $1) died during $2; last log lines:" >>"$FAILLOG"
		tail -n 5 "${3:-$PROXY_LOG}"/* >>"$FAILLOG" 2>/dev/null
		return 1
	fi
	return 0
}

# median min max of the numbers given
stats() {
	printf '%s\n' "$@" | grep -E '^[0-9.]+$' | sort -g | awk '
		{ a[NR] = $1 }
		END {
			if (NR == 0) exit
			m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
			print m, a[1], a[NR]
		}'
}

# start_target ws|socat|node tcp|tls SOCK -> TPID TPORT TURL (ws:// or wss://,
# tcp:// or tls:// for socat)
start_target() {
	case $1 in
	ws)
		if [ "$2" = tls ]; then start_proxy wss "$3"; TURL="wss://127.0.0.1:$PROXY_PORT/"
		else start_proxy ws "$3"; TURL="ws://127.0.0.1:$PROXY_PORT/"; fi
		TPID=$PROXY_PID TPORT=$PROXY_PORT ;;
	socat)
		spawn "$TMP/socat.log" cmd_socat "$2" "$3" || die "socat did not start: $(tail -n 3 "$TMP/socat.log")"
		TPID=$SPAWN_PID TPORT=$SPAWN_PORT TURL="$2://127.0.0.1:$SPAWN_PORT" ;;
	node)
		local s=ws
		[ "$2" = tls ] && s=wss
		spawn "$TMP/node.log" cmd_node "$s" "$3" || die "the node relay did not start: $(tail -n 3 "$TMP/node.log")"
		TPID=$SPAWN_PID TPORT=$SPAWN_PORT TURL="$s://127.0.0.1:$SPAWN_PORT/" ;;
	esac
}

# after a socat run, wait until its forks are gone
settle() { [ "$1" = socat ] && wait_kids "$2"; return 0; }

TARGETS="ws socat node"

echo "wsproxy benchmark: $WSPROXY_BIN; $RUNS runs x ${SECS}s per figure;" \
	"relay on CPU $PROXY_CPU, client+engine on CPU $LOAD_CPU; load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- 1. throughput, latency, many connections, connects ----

start_engine echo
start_engine sink
start_engine source
declare -A URL TPIDS PLOG_
for m in echo sink source; do
	for tgt in $TARGETS; do
		start_target "$tgt" tcp "$TMP/engine-$m.sock"
		URL[$tgt|$m]=$TURL
		TPIDS[$tgt|$m]=$TPID
		[ "$tgt" = ws ] && PLOG_[$m]=$PROXY_LOG
	done
done

# workload id, engine mode, loadgen args, row:key pairs
WORKLOADS=(
	"echo64|echo|--mode echo --size 64 --window 262144|echo64:mb_per_s"
	"echo4k|echo|--mode echo --size 4096 --window 262144|echo4k:mb_per_s"
	"echo64k|echo|--mode echo --size 65536 --window 262144|echo64k:mb_per_s"
	"echo1m|echo|--mode echo --size 1048576 --window 4194304|echo1m:mb_per_s"
	"up64|sink|--mode upload --size 64|up64:mb_per_s"
	"up4k|sink|--mode upload --size 4096|up4k:mb_per_s"
	"up64k|sink|--mode upload --size 65536|up64k:mb_per_s"
	"up1m|sink|--mode upload --size 1048576 --window 4194304|up1m:mb_per_s"
	"down|source|--mode download|down:mb_per_s"
	"many100|echo|--mode many --conns 100 --size 4096|many100:msgs_per_s"
	"many1000|echo|--mode many --conns 1000 --size 4096|many1000:msgs_per_s"
	"lat|echo|--mode latency --size 64|lat:p50_us lat99:p99_us"
	"conn|echo|--mode connect --size 1 --count 5000|conn:p50_us"
	"burst|echo|--mode burst --conns $BURST_N --size 1|burst:secs burst99:p99_us"
)

for w in "${WORKLOADS[@]}"; do
	IFS='|' read -r wid emode wargs wkeys <<<"$w"
	echo "bench: $wid" >&2
	for run in $(seq 1 "$RUNS"); do
		for tgt in $TARGETS; do
			secs=$SECS
			[ "$wid" = burst ] && secs=30   # a limit: the figure is the time taken
			# shellcheck disable=SC2086
			if lg "$wid" "$tgt" --url "${URL[$tgt|$emode]}" --secs "$secs" $wargs; then
				record "$tgt" 1 $wkeys
			else
				record "$tgt" 0 $wkeys
			fi
			if [ "$tgt" = ws ] && ! check_proxy "${TPIDS[ws|$emode]}" "$wid run $run" "${PLOG_[$emode]}"; then
				start_target ws tcp "$TMP/engine-$emode.sock"
				URL[ws|$emode]=$TURL
				TPIDS[ws|$emode]=$TPID
				PLOG_[$emode]=$PROXY_LOG
			fi
			settle "$tgt" "${TPIDS[$tgt|$emode]}"
			# the burst's connections close with RST; let the relays reap them
			[ "$wid" = burst ] && sleep 0.5
		done
		# the baseline of the connect row: a bare TCP connect (to wsproxy's
		# listener, which accepts and drops it)
		if [ "$wid" = conn ]; then
			u=${URL[ws|echo]#ws://}
			lg bare ws --url "tcp://${u%/}" --mode connect --size 0 --count 5000 --secs "$SECS"
			record ws $(($? == 0)) bare:p50_us
		fi
	done
done
for m in echo sink source; do
	for tgt in $TARGETS; do stop_pid "${TPIDS[$tgt|$m]}"; done
done

# ---- 1b. 64 B ping-pong with relay, client and engine on one core ----
# (every hop is a context switch)

echo "bench: latency, one core" >&2
sock1=$TMP/engine-echo-onecore.sock
taskset -c "$PROXY_CPU" "$ENGINE" --socket "$sock1" --mode echo >>"$TMP/engine.log" 2>&1 &
PIDS="$PIDS $!"
for _ in $(seq 1 100); do [ -S "$sock1" ] && break; sleep 0.05; done
[ -S "$sock1" ] || die "one-core engine did not start: $(cat "$TMP/engine.log")"
SAVED_LOAD_CPU=$LOAD_CPU
LOAD_CPU=$PROXY_CPU
for tgt in $TARGETS; do
	start_target "$tgt" tcp "$sock1"
	URL[$tgt|one]=$TURL TPIDS[$tgt|one]=$TPID
done
for run in $(seq 1 "$RUNS"); do
	for tgt in $TARGETS; do
		# 2 s per run: a 1 s run of a ~25 us ping-pong on one core is noisy
		lg lat1 "$tgt" --url "${URL[$tgt|one]}" --secs "$((SECS * 2))" --mode latency --size 64
		record "$tgt" $(($? == 0)) lat1:p50_us
		settle "$tgt" "${TPIDS[$tgt|one]}"
	done
done
LOAD_CPU=$SAVED_LOAD_CPU
for tgt in $TARGETS; do stop_pid "${TPIDS[$tgt|one]}"; done

# ---- 2. memory per idle connection (a fresh relay per run) ----

echo "bench: idle memory" >&2
# hold_open URL N [CA] -> HOLD_PID once N connections are open (1 if they are
# not).  The idle connections live in this separate loadgen process, not in
# the measuring client's loop.
hold_open() {
	local ready=$TMP/ready.$RANDOM
	rm -f "$ready"
	taskset -c "$LOAD_CPU" timeout 300 "$LOADGEN" --url "$1" --mode hold --idle "$2" --secs 240 \
		--ready-file "$ready" ${3:+--ca "$3"} >"$TMP/hold.out" 2>"$TMP/hold.err" &
	HOLD_PID=$!
	for _ in $(seq 1 1200); do
		[ -e "$ready" ] && break
		alive "$HOLD_PID" || break
		sleep 0.1
	done
	LAST=$(cat "$TMP/hold.out")
	echo "row=hold $LAST" >>"$RESULTS"
	if [ ! -e "$ready" ] || ! echo "$LAST" | grep -q 'errors=0'; then
		{ echo "== hold $1 x $2"; echo "$LAST"; head -n 5 "$TMP/hold.err"; } >>"$FAILLOG"
		return 1
	fi
	sleep 0.3   # let the relay finish the last handshakes' bookkeeping
	return 0
}
hold_close() {
	[ -n "${HOLD_PID:-}" ] || return 0
	kill "$HOLD_PID" 2>/dev/null
	wait "$HOLD_PID" 2>/dev/null
	HOLD_PID=""
}

# Memory the relay needs per held connection: the growth of its VmRSS (socat:
# the private memory of its forked children), divided by N.
relay_mem_kb() { # tgt pid
	local k v sum=0
	if [ "$1" != socat ]; then
		rss_kb "$2"
		return
	fi
	for k in $(kids_of "$2"); do
		v=$(awk '/^Private_(Clean|Dirty):/ { s += $2 } END { print s + 0 }' "/proc/$k/smaps_rollup" 2>/dev/null)
		sum=$((sum + ${v:-0}))
	done
	echo "$sum"
}

# mem_run tgt tcp|tls N -> adds bytes per connection to row mem_<tcp|tls>
mem_run() {
	local tgt=$1 n=$3 before after ca=""
	[ "$2" = tls ] && ca=$TMP/pki/ca.pem
	start_target "$tgt" "$2" "$TMP/engine-echo.sock"
	# warm up: a few connections, so one-time allocations land in the baseline
	lg "mem_$2" warmup --url "$TURL" --mode connect --count 5 --secs 5 ${ca:+--ca "$ca"} >/dev/null
	settle "$tgt" "$TPID"
	sleep 0.2
	before=$(relay_mem_kb "$tgt" "$TPID")
	if hold_open "$TURL" "$n" "$ca" && { [ "$tgt" != socat ] || wait_kids_count "$TPID" "$n"; }; then
		after=$(relay_mem_kb "$tgt" "$TPID")
		add "mem_$2" "$tgt" "$(awk -v a="$after" -v b="$before" -v n="$n" 'BEGIN { printf "%.0f", (a - b) * 1024 / n }')"
	else
		fail "mem_$2" "$tgt"
	fi
	hold_close
	settle "$tgt" "$TPID"
	stop_pid "$TPID"
}

for run in $(seq 1 "$RUNS"); do
	for tgt in $TARGETS; do mem_run "$tgt" tcp "$IDLE_MEM_N"; done
done

# ---- 3. one active connection with many idle WebSockets held elsewhere ----

echo "bench: $IDLE_LOOP_N idle connections" >&2
HAVE_PERF=0
if command -v perf >/dev/null 2>&1 &&
	perf stat -e syscalls:sys_enter_poll -- true >/dev/null 2>&1; then
	HAVE_PERF=1
fi

# lat_runs row tgt url -> rows ROW (rate), ROWp50, ROWp99; LAT_TOTAL = messages
lat_runs() {
	local run
	LAT_TOTAL=0
	for run in $(seq 1 "$RUNS"); do
		if lg "$1" "$2" --url "$3" --mode latency --size 64 --secs "$SECS"; then
			record "$2" 1 "$1:msgs_per_s" "${1}p50:p50_us" "${1}p99:p99_us"
			LAT_TOTAL=$((LAT_TOTAL + $(field "$LAST" msgs)))
		else
			record "$2" 0 "$1:msgs_per_s" "${1}p50:p50_us" "${1}p99:p99_us"
		fi
	done
}

# relay_measure row tgt url pid -> MEAS_CPU (us of relay CPU per round trip),
# MEAS_TURNS (wsproxy: poll() calls per round trip, with perf)
relay_measure() {
	local t0 t1 perfpid="" polls=""
	t0=$(cpu_ticks "$4")
	if [ "$HAVE_PERF" = 1 ] && [ "$2" = ws ]; then
		perf stat -x, -o "$TMP/perf.out" -e syscalls:sys_enter_poll,syscalls:sys_enter_ppoll \
			-p "$4" >/dev/null 2>&1 &
		perfpid=$!
		sleep 0.2
	fi
	lat_runs "$1" "$2" "$3"
	t1=$(cpu_ticks "$4")
	if [ -n "$perfpid" ]; then
		kill -INT "$perfpid" 2>/dev/null
		wait "$perfpid" 2>/dev/null
		polls=$(awk -F, '/sys_enter_p?poll/ { s += $1 } END { print s + 0 }' "$TMP/perf.out" 2>/dev/null)
	fi
	MEAS_CPU="" MEAS_TURNS=""
	if [ "${LAT_TOTAL:-0}" -gt 0 ]; then
		MEAS_CPU=$(awk -v d=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v m="$LAT_TOTAL" \
			'BEGIN { printf "%.1f", d / hz * 1e6 / m }')
		[ -n "$polls" ] && MEAS_TURNS=$(awk -v p="$polls" -v m="$LAT_TOTAL" 'BEGIN { printf "%.2f", p / m }')
	fi
}

# Idle means quiet for a while: wsproxy treats a connection as busy for a
# while after its last event, so the latency runs start 1.5 s after the idle
# set is open.
IDLE_SETTLE=1.5
declare -A CPU0 CPU8 TURNS0 TURNS8 MEM8
for tgt in $TARGETS; do
	start_target "$tgt" tcp "$TMP/engine-echo.sock"
	relay_measure lat0 "$tgt" "$TURL" "$TPID"
	CPU0[$tgt]=$MEAS_CPU TURNS0[$tgt]=$MEAS_TURNS
	settle "$tgt" "$TPID"
	rss0=$(rss_kb "$TPID")
	if hold_open "$TURL" "$IDLE_LOOP_N" && { [ "$tgt" != socat ] || wait_kids_count "$TPID" "$IDLE_LOOP_N"; }; then
		sleep "$IDLE_SETTLE"
		[ "$tgt" = ws ] && MEM8[ws]=$(awk -v a="$(rss_kb "$TPID")" -v b="$rss0" -v n="$IDLE_LOOP_N" \
			'BEGIN { printf "%.0f", (a - b) * 1024 / n }')
		relay_measure lat8k "$tgt" "$TURL" "$TPID"
		CPU8[$tgt]=$MEAS_CPU TURNS8[$tgt]=$MEAS_TURNS
	else
		fail lat8k "$tgt"
	fi
	hold_close
	[ "$tgt" = ws ] && check_proxy "$TPID" "the idle-connection runs"
	settle "$tgt" "$TPID"
	stop_pid "$TPID"
done

# ---- 4. TLS ----

TLS_NOTE=""
if [ "$HAVE_TLS" = 1 ]; then
	echo "bench: TLS" >&2
	mkdir -p "$TMP/pki"
	(
		cd "$TMP/pki" || exit 1
		openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
			-keyout ca.key -out ca.pem -days 90 -subj "/CN=wsproxy bench CA" \
			-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" &&
			openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
				-keyout server.key -out server.csr -subj "/CN=localhost" &&
			printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
				"keyUsage=digitalSignature" "extendedKeyUsage=serverAuth" >ext.cnf &&
			openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
				-out server.pem -days 90 -extfile ext.cnf
	) >"$TMP/pki.log" 2>&1 || { HAVE_TLS=0; TLS_NOTE="openssl could not create test certificates"; }
fi
if [ "$HAVE_TLS" = 1 ]; then
	CA=$TMP/pki/ca.pem
	for tgt in $TARGETS; do
		start_target "$tgt" tls "$TMP/engine-echo.sock"
		URL[$tgt|tls]=$TURL TPIDS[$tgt|tls]=$TPID
		start_target "$tgt" tls "$TMP/engine-sink.sock"
		URL[$tgt|tlssink]=$TURL TPIDS[$tgt|tlssink]=$TPID
	done
	if ! lg tlsprobe ws --url "${URL[ws|tls]}" --ca "$CA" --mode connect --count 1 --secs 5; then
		TLS_NOTE="wsproxy wss:// failed a single connection (see $FAILLOG)"
	fi
	for run in $(seq 1 "$RUNS"); do
		for tgt in $TARGETS; do
			u=${URL[$tgt|tls]}
			lg tlsecho "$tgt" --url "$u" --ca "$CA" --mode echo --size 65536 --window 262144 --secs "$SECS"
			record "$tgt" $(($? == 0)) tlsecho:mb_per_s
			lg tlsup "$tgt" --url "${URL[$tgt|tlssink]}" --ca "$CA" --mode upload --size 1048576 \
				--window 4194304 --secs "$SECS"
			record "$tgt" $(($? == 0)) tlsup:mb_per_s
			settle "$tgt" "${TPIDS[$tgt|tlssink]}"
			lg tlsconn "$tgt" --url "$u" --ca "$CA" --mode connect --size 1 --count 300 --secs "$SECS"
			record "$tgt" $(($? == 0)) tlsconn:p50_us
			settle "$tgt" "${TPIDS[$tgt|tls]}"
			if lg tlsres "$tgt" --url "$u" --ca "$CA" --mode connect --size 1 --count 1000 --secs "$SECS" --resume; then
				record "$tgt" 1 tlsres:p50_us
				add tlsresn "$tgt" "$(awk -v r="$(field "$LAST" resumed)" -v m="$(field "$LAST" msgs)" \
					'BEGIN { printf "%.0f", (m > 1) ? 100 * r / (m - 1) : 0 }')"
			else
				record "$tgt" 0 tlsres:p50_us
			fi
			settle "$tgt" "${TPIDS[$tgt|tls]}"
		done
	done
	check_proxy "${TPIDS[ws|tls]}" "the TLS runs"
	for tgt in $TARGETS; do
		stop_pid "${TPIDS[$tgt|tls]}"
		stop_pid "${TPIDS[$tgt|tlssink]}"
	done
	if [ -z "$TLS_NOTE" ]; then
		for run in $(seq 1 "$RUNS"); do mem_run ws tls "$TLS_IDLE_MEM_N"; done
	else
		fail mem_tls ws
	fi
fi

# ---- the table ----

cell() { # row tgt scale
	local s
	if [ -n "${FAILS[$1|$2]:-}" ]; then
		echo "FAIL(${FAILS[$1|$2]}/$RUNS)"
		return
	fi
	s=$(stats ${VALS[$1|$2]:-})
	[ -z "$s" ] && { echo "-"; return; }
	echo "$s" | awk -v sc="$3" '{
		f = (sc == "k") ? 1e-3 : (sc == "ms") ? 1e3 : 1
		fmt = ($1 * f >= 100) ? "%.0f" : "%.1f"
		printf fmt " (" fmt "-" fmt ")", $1 * f, $2 * f, $3 * f
	}'
}

median_of() { [ -z "${FAILS[$1|$2]:-}" ] && stats ${VALS[$1|$2]:-} | awk '{ print $1 }'; }

# ratio A B [OP TARGET]: "0.93x" and, with a target, " ok" or " MISS"
ratio() {
	[ -n "$1" ] && [ -n "$2" ] || { echo "-"; return; }
	awk -v a="$1" -v b="$2" -v op="${3:-}" -v t="${4:-}" 'BEGIN {
		if (b <= 0) { print "-"; exit }
		r = a / b; v = ""
		if (op == ">=") v = (r >= t) ? " ok" : " MISS"
		if (op == "<=") v = (r <= t) ? " ok" : " MISS"
		printf "%.2fx%s\n", r, v }'
}

# row ID LABEL SCALE [SOCAT-OP SOCAT-TARGET [NODE-OP NODE-TARGET]]
LINES=()
row() {
	local id=$1 label=$2 sc=$3 mw tgt="" rs rn
	mw=$(median_of "$id" ws)
	rs=$(ratio "$mw" "$(median_of "$id" socat)" "${4:-}" "${5:-}")
	rn=$(ratio "$mw" "$(median_of "$id" node)" "${6:-}" "${7:-}")
	[ -n "${4:-}" ] && tgt="$4 $5x socat"
	[ -n "${6:-}" ] && tgt="$tgt, $6 $7x node"
	LINES+=("$(printf '%-42s | %-20s | %-20s | %-20s | %-10s | %-10s | %s' "$label" \
		"$(cell "$id" ws "$sc")" "$(cell "$id" socat "$sc")" "$(cell "$id" node "$sc")" "$rs" "$rn" "$tgt")")
}

row echo64 "echo 64 B messages (MB/s)" 1 ">=" 1.2
row echo4k "echo 4 KiB messages (MB/s)" 1 ">=" 1.2
row echo64k "echo 64 KiB messages (MB/s)" 1 ">=" 1.2
row echo1m "echo 1 MiB messages (MB/s)" 1 ">=" 1.2
row up64 "upload 64 B messages (MB/s)" 1 ">=" 1.2
row up4k "upload 4 KiB messages (MB/s)" 1 ">=" 1.2
row up64k "upload 64 KiB messages (MB/s)" 1 ">=" 1.2
row up1m "upload 1 MiB messages (MB/s)" 1 ">=" 1.2
row down "download, engine streams (MB/s)" 1 ">=" 1.2 ">=" 1.2
row many100 "100 conns, 4 KiB ping-pong (msgs/s)" 1 ">=" 4
row many1000 "1000 conns, 4 KiB ping-pong (msgs/s)" 1 ">=" 4
row lat1 "64 B round trip p50, one core (us)" 1 "<=" 0.9
row lat "64 B round trip p50, 2 cores (us)" 1
row lat99 "64 B round trip p99, 2 cores (us)" 1
row conn "connect+upgrade+1 B echo p50 (us) [1]" 1
row bare "  bare TCP connect p50 (us) [1]" 1
row burst "$BURST_N connects at once, all open (ms) [2]" ms "<=" 1.0
row burst99 "  p99 of one connect (ms) [2]" k
row lat0 "64 B round-trip rate, 0 idle (msgs/s)" 1
row lat8k "  same, $IDLE_LOOP_N idle held elsewhere [3]" 1
row lat8kp99 "  p99 with $IDLE_LOOP_N idle (us) [3]" 1
if [ "$HAVE_TLS" = 1 ] || [ -n "$TLS_NOTE" ]; then
	row tlsecho "wss: echo 64 KiB messages (MB/s) [4]" 1 ">=" 1.3
	row tlsup "wss: upload 1 MiB messages (MB/s) [4]" 1 ">=" 1.2
	row tlsconn "wss: full TLS handshake+echo p50 (us) [4]" 1 "<=" 0.6
	row tlsres "wss: resumed handshake+echo p50 (us) [4]" 1
	row tlsresn "  connections resumed (%) [4]" 1
fi

echo
echo "load average before: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-42s | %-20s | %-20s | %-20s | %-10s | %-10s | %s\n' "median of $RUNS (min-max)" \
	"wsproxy" "socat" "node ws" "ws/socat" "ws/node" "target"
printf '%s\n' "$(printf '%.0s-' $(seq 1 150))"
printf '%s\n' "${LINES[@]}"
echo

# derived rows: one line each, "name: wsproxy | socat | node"
derived() { # label fn-per-target [target-op target-value]
	local label=$1 fn=$2 t out="" v
	for t in $TARGETS; do
		v=$($fn "$t")
		out="$out$(printf '%s %-16s' "$t" "${v:--}")"
	done
	v=$($fn ws)
	if [ -n "${3:-}" ] && [ -n "$v" ]; then
		out="$out target $3 $4: $(awk -v r="${v%x}" -v op="$3" -v t="${4%x}" \
			'BEGIN { print ((op == ">=") ? (r >= t) : (r <= t)) ? "ok" : "MISS" }')"
	fi
	printf '%-42s   %s\n' "$label" "$out"
}
conn_over_bare() { ratio "$(median_of conn "$1")" "$(median_of bare ws)" | sed 's/ .*//'; }
idle_rate() { ratio "$(median_of lat8k "$1")" "$(median_of lat0 "$1")"; }
res_over_full() { ratio "$(median_of tlsres "$1")" "$(median_of tlsconn "$1")"; }
mem_kib() { median_of mem_tcp "$1" | awk '{ printf "%.2f KiB", $1 / 1024 }'; }
cpu_rt() { [ -n "${CPU0[$1]:-}" ] && echo "${CPU0[$1]} -> ${CPU8[$1]:-?}"; }
derived "connect+upgrade / bare TCP connect [1]" conn_over_bare "<=" 4x
derived "round-trip rate, $IDLE_LOOP_N idle / none [3]" idle_rate ">=" 0.9x
derived "relay CPU per round trip, 0 -> $IDLE_LOOP_N idle (us)" cpu_rt
if [ -n "${TURNS0[ws]:-}" ]; then
	printf '%-42s   %s -> %s\n' "  wsproxy poll() calls per round trip" "${TURNS0[ws]}" "${TURNS8[ws]:-?}"
fi
derived "memory per idle conn (N=$IDLE_MEM_N)" mem_kib
[ -n "${MEM8[ws]:-}" ] && printf '%-42s   %.2f KiB\n' "  wsproxy, same with N=$IDLE_LOOP_N" \
	"$(awk -v b="${MEM8[ws]}" 'BEGIN { print b / 1024 }')"
if [ "$HAVE_TLS" = 1 ] || [ -n "$TLS_NOTE" ]; then
	derived "resumed / full TLS handshake [4]" res_over_full "<=" 0.3x
	m=$(stats ${VALS[mem_tls|ws]:-})
	[ -n "$m" ] && printf '%-42s   %s\n' "memory per idle wss:// conn (N=$TLS_IDLE_MEM_N)" \
		"$(echo "$m" | awk '{ printf "%.2f KiB (%.2f-%.2f)", $1 / 1024, $2 / 1024, $3 / 1024 }')"
fi
# The decoder alone, from this tree's wsproxy.c (not WSPROXY_BIN), against
# memcpy of the same bytes: ns per frame for 64 B, 4 KiB and 64 KiB frames.
dec="" cpy=""
for sz in 64 4096 65536; do
	l=$(taskset -c "$PROXY_CPU" "$OUT/decode" "$sz") || { echo "$l" >>"$FAILLOG"; l=""; }
	echo "$l" >>"$RESULTS"
	dec="$dec${dec:+ / }$(echo "$l" | sed -n 's/.* ns_per_frame=\([0-9.]*\).*/\1/p')"
	cpy="$cpy${cpy:+ / }$(echo "$l" | sed -n 's/.*memcpy_ns_per_frame=\([0-9.]*\).*/\1/p')"
done
printf '%-42s   %s ns   (memcpy of the same bytes: %s ns)\n' \
	"frame decoder, 64 B / 4 KiB / 64 KiB [5]" "$dec" "$cpy"
cp "$WSPROXY_BIN" "$TMP/wsproxy.stripped" && strip "$TMP/wsproxy.stripped" &&
	printf '%-42s   %s bytes\n' "stripped wsproxy binary" "$(stat -c %s "$TMP/wsproxy.stripped")"
echo
echo "[1] connect + WebSocket upgrade (socat: none) + a 1-byte message echoed, one connection at a"
echo "    time, closed with RST; socat forks per connection. The bare TCP connect goes to wsproxy's"
echo "    listener and is closed at once."
echo "[2] $BURST_N connections started at once, each connect + upgrade + a 1-byte echo: the time until"
echo "    the last one has its echo, and the p99 of each connection's own time."
echo "[3] one connection's 64 B ping-pong while another loadgen process holds $IDLE_LOOP_N idle"
echo "    connections through the same relay (socat: $IDLE_LOOP_N forked processes)."
if [ "$HAVE_TLS" = 1 ] || [ -n "$TLS_NOTE" ]; then
	echo "[4] EC P-256 certificate; the client (BearSSL) offers AES-GCM first and, resumed, the first"
	echo "    connection's session id. socat: OPENSSL-LISTEN,nodelay, one process per connection, so no"
	echo "    session cache; node: https + ws with a session cache (newSession/resumeSession)."
	[ -n "$TLS_NOTE" ] && echo "    TLS: $TLS_NOTE"
fi
echo "[5] test/bench/decode.c: frame_decode() of this tree's wsproxy.c over 256 KiB of masked"
echo "    client frames, per frame (unmasking the payload and moving it over the headers)."
if [ -s "$FAILLOG" ]; then
	echo "Some runs failed: see $FAILLOG"
fi
echo "Raw results: $RESULTS; bench took $(($(date +%s) - T_START)) s."
[ -s "$FAILLOG" ] && exit 1
exit 0
