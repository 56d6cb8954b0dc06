#!/usr/bin/env bash
# test/bench/run.sh -- what `make bench` runs.
#
# Measures wsproxy against two baselines in the same run, on the same engine
# stand-in (test/bench/engine.c):
#   wsproxy  ws:// (and wss://) through $WSPROXY_BIN, default config
#            (PROXY v2 header on, which the engine skips), --max-connections 9000
#   socat    socat -b 131072 TCP-LISTEN:PORT,fork,reuseaddr UNIX-CONNECT:SOCK,
#            same payload bytes with no WebSocket framing (loadgen --raw)
#   direct   loadgen straight to the engine's Unix socket (no proxy at all)
# The proxy (and socat with all its forks) runs on core 0, loadgen and the
# engine on core 1.  Each figure is the median of $BENCH_RUNS runs (default 5)
# of $BENCH_SECS seconds (default 1), with min-max; every echo and download
# byte is checked against the test pattern, so a broken proxy cannot look fast.
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
RUNS=${BENCH_RUNS:-5}
SECS=${BENCH_SECS:-1}
IDLE_LOOP_N=${BENCH_IDLE:-8000}
IDLE_MEM_N=1000
TLS_IDLE_MEM_N=500
MANY_N=1000
CC=${CC:-cc}
OUT=build/bench
T_START=$(date +%s)

die() { echo "bench: $*" >&2; exit 1; }

for tool in socat taskset timeout strip awk; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool not found (test/deps.sh installs it)"
done
[ -x "$WSPROXY_BIN" ] || die "$WSPROXY_BIN not found: run make first (or set WSPROXY_BIN)"
WSPROXY_BIN=$(cd "$(dirname "$WSPROXY_BIN")" && pwd)/$(basename "$WSPROXY_BIN")

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

# start_proxy ws|wss SOCK  -> PROXY_PID PROXY_PORT PROXY_LOG
start_proxy() {
	local port args
	for _ in 1 2 3; do
		port=$(free_port) || die "no free port"
		PROXY_LOG=$TMP/wsproxy-$port
		mkdir -p "$PROXY_LOG"
		args=(--bind 127.0.0.1 --socket "$2" --max-connections 9000 --log-dir "$PROXY_LOG")
		# As root (CI): the bench's own engine trusts nobody by uid, so stay
		# root, with a binary that knows the option (an older one may not).
		if [ "$(id -u)" = 0 ] && "$WSPROXY_BIN" --help 2>&1 | grep -q -- --allow-root; then
			args+=(--allow-root)
		fi
		if [ "$1" = wss ]; then
			args+=(--https-port "$port" --cert "$TMP/pki/server.pem" --key "$TMP/pki/server.key")
		else
			args+=(--http-port "$port")
		fi
		taskset -c "$PROXY_CPU" "$WSPROXY_BIN" "${args[@]}" >>"$PROXY_LOG/stderr" 2>&1 &
		PROXY_PID=$!
		PIDS="$PIDS $PROXY_PID"
		PROXY_PORT=$port
		wait_listen "$port" "$PROXY_PID" && return 0
		stop_pid "$PROXY_PID"
	done
	die "wsproxy did not start: $(tail -n 3 "$PROXY_LOG/stderr")"
}

# start_socat tcp|tls SOCK -> SOCAT_PID SOCAT_PORT
# backlog=4096 (wsproxy's and the engine's) only speeds up opening the
# 1,000- and 8,000-connection sets; socat's default of 5 drops SYNs.
# nodelay on the TLS listener: without it OpenSSL's record-sized writes meet
# Nagle and delayed ACKs (40 ms stalls), which would flatter wsproxy.
start_socat() {
	local port addr
	for _ in 1 2 3; do
		port=$(free_port) || die "no free port"
		if [ "$1" = tls ]; then
			addr="OPENSSL-LISTEN:$port,fork,reuseaddr,backlog=4096,nodelay,bind=127.0.0.1"
			addr="$addr,cert=$TMP/pki/server.pem,key=$TMP/pki/server.key,verify=0"
		else
			addr="TCP-LISTEN:$port,fork,reuseaddr,backlog=4096,bind=127.0.0.1"
		fi
		taskset -c "$PROXY_CPU" socat -b 131072 "$addr" "UNIX-CONNECT:$2" 2>>"$TMP/socat.log" &
		SOCAT_PID=$!
		PIDS="$PIDS $SOCAT_PID"
		SOCAT_PORT=$port
		wait_listen "$port" "$SOCAT_PID" && return 0
		stop_pid "$SOCAT_PID"
	done
	die "socat did not start: $(tail -n 3 "$TMP/socat.log")"
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null; }

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

echo "wsproxy benchmark: $WSPROXY_BIN; $RUNS runs x ${SECS}s per figure;" \
	"proxy on CPU $PROXY_CPU, client+engine on CPU $LOAD_CPU" >&2

# ---- 1. throughput, latency, many connections, connect rate ----

start_engine echo
start_engine sink
start_engine source
declare -A PPORT PPID_ PLOG SPORT SPID
for m in echo sink source; do
	start_proxy ws "$TMP/engine-$m.sock"
	PPORT[$m]=$PROXY_PORT
	PPID_[$m]=$PROXY_PID
	PLOG[$m]=$PROXY_LOG
	start_socat tcp "$TMP/engine-$m.sock"
	SPORT[$m]=$SOCAT_PORT
	SPID[$m]=$SOCAT_PID
done

url_for() { # target engine-mode
	case $1 in
	ws) echo "ws://127.0.0.1:${PPORT[$2]}/" ;;
	socat) echo "tcp://127.0.0.1:${SPORT[$2]}" ;;
	direct) echo "unix:$TMP/engine-$2.sock" ;;
	esac
}

# workload id, engine mode, loadgen args, row:key pairs
WORKLOADS=(
	"up|sink|--mode upload --size 65536|up:mb_per_s"
	"down|source|--mode download|down:mb_per_s"
	"echo64k|echo|--mode echo --size 65536 --window 262144|echo64k:mb_per_s"
	"echo64|echo|--mode echo --size 64 --window 262144|echo64:msgs_per_s"
	"lat|echo|--mode latency --size 64|lat:p50_us lat99:p99_us lat999:p999_us"
	"many|echo|--mode many --conns $MANY_N --size 4096|many:msgs_per_s"
	"conn|echo|--mode connect --size 1 --count 5000|conn:p50_us connrate:msgs_per_s"
)

for w in "${WORKLOADS[@]}"; do
	IFS='|' read -r wid emode wargs wkeys <<<"$w"
	echo "bench: $wid" >&2
	for run in $(seq 1 "$RUNS"); do
		for tgt in ws socat direct; do
			# shellcheck disable=SC2086
			if lg "$wid" "$tgt" --url "$(url_for "$tgt" "$emode")" --secs "$SECS" $wargs; then
				record "$tgt" 1 $wkeys
			else
				record "$tgt" 0 $wkeys
			fi
			if [ "$tgt" = ws ] && ! check_proxy "${PPID_[$emode]}" "$wid run $run" "${PLOG[$emode]}"; then
				start_proxy ws "$TMP/engine-$emode.sock"
				PPORT[$emode]=$PROXY_PORT
				PPID_[$emode]=$PROXY_PID
				PLOG[$emode]=$PROXY_LOG
			fi
			[ "$tgt" = socat ] && wait_kids "${SPID[$emode]}"
		done
	done
done
for m in echo sink source; do
	stop_pid "${PPID_[$m]}"
	stop_pid "${SPID[$m]}"
done

# ---- 1b. 64 B ping-pong with proxy, client and engine on one core ----
# (the setting of the issue's latency target: every hop is a context switch)

echo "bench: latency, one core" >&2
sock1=$TMP/engine-echo-onecore.sock
taskset -c "$PROXY_CPU" "$ENGINE" --socket "$sock1" --mode echo >>"$TMP/engine.log" 2>&1 &
PIDS="$PIDS $!"
for _ in $(seq 1 100); do [ -S "$sock1" ] && break; sleep 0.05; done
[ -S "$sock1" ] || die "one-core engine did not start: $(cat "$TMP/engine.log")"
start_proxy ws "$sock1"
P1PORT=$PROXY_PORT P1PID=$PROXY_PID
start_socat tcp "$sock1"
S1PORT=$SOCAT_PORT S1PID=$SOCAT_PID
SAVED_LOAD_CPU=$LOAD_CPU
LOAD_CPU=$PROXY_CPU
for run in $(seq 1 "$RUNS"); do
	for tgt in ws socat direct; do
		case $tgt in
		ws) u="ws://127.0.0.1:$P1PORT/" ;;
		socat) u="tcp://127.0.0.1:$S1PORT" ;;
		direct) u="unix:$sock1" ;;
		esac
		# 3 s per run: a 1 s run of a ~25 us ping-pong on one core is noisy
		if lg lat1 "$tgt" --url "$u" --secs "$((SECS * 3))" --mode latency --size 64; then
			record "$tgt" 1 lat1:p50_us
		else
			record "$tgt" 0 lat1:p50_us
		fi
		[ "$tgt" = socat ] && wait_kids "$S1PID"
	done
done
LOAD_CPU=$SAVED_LOAD_CPU
stop_pid "$P1PID"
stop_pid "$S1PID"

# ---- 2. memory per idle connection (fresh proxy per run) ----

echo "bench: idle memory" >&2
# hold_open URL N -> HOLD_PID once N connections are open (1 if they are not)
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
	sleep 0.3   # let the proxy finish the last handshakes' bookkeeping
	return 0
}
hold_close() {
	[ -n "${HOLD_PID:-}" ] || return 0
	kill "$HOLD_PID" 2>/dev/null
	wait "$HOLD_PID" 2>/dev/null
	HOLD_PID=""
}

# mem_run ws|wss N -> adds bytes per connection to row mem_<scheme>
mem_run() {
	local scheme=$1 n=$2 before after ca=""
	[ "$scheme" = wss ] && ca=$TMP/pki/ca.pem
	start_proxy "$scheme" "$TMP/engine-echo.sock"
	# warm up: a few connections, so one-time allocations land in the baseline
	lg "mem_$scheme" warmup --url "$scheme://127.0.0.1:$PROXY_PORT/" --mode connect --count 5 --secs 5 \
		${ca:+--ca "$ca"} >/dev/null
	sleep 0.2
	before=$(rss_kb "$PROXY_PID")
	if hold_open "$scheme://127.0.0.1:$PROXY_PORT/" "$n" "$ca"; then
		after=$(rss_kb "$PROXY_PID")
		add "mem_$scheme" ws "$(awk -v a="$after" -v b="$before" -v n="$n" 'BEGIN { printf "%.0f", (a - b) * 1024 / n }')"
	else
		fail "mem_$scheme" ws
	fi
	hold_close
	stop_pid "$PROXY_PID"
}

# socat for comparison: private memory of its forked children per connection
mem_socat() {
	local n=$1 sum=0 k v
	start_socat tcp "$TMP/engine-echo.sock"
	if hold_open "tcp://127.0.0.1:$SOCAT_PORT" "$n" && wait_kids_count "$SOCAT_PID" "$n"; then
		for k in $(kids_of "$SOCAT_PID"); do
			v=$(awk '/^Private_(Clean|Dirty):/ { s += $2 } END { print s + 0 }' "/proc/$k/smaps_rollup" 2>/dev/null)
			sum=$((sum + ${v:-0}))
		done
		add mem_ws socat "$(awk -v s="$sum" -v n="$n" 'BEGIN { printf "%.0f", s * 1024 / n }')"
	else
		fail mem_ws socat
	fi
	hold_close
	wait_kids "$SOCAT_PID"
	stop_pid "$SOCAT_PID"
}

for run in $(seq 1 "$RUNS"); do
	mem_run ws "$IDLE_MEM_N"
	mem_socat "$IDLE_MEM_N"
done

# ---- 3. the loop's cost with many idle connections ----

echo "bench: $IDLE_LOOP_N idle connections" >&2
HAVE_PERF=0
if command -v perf >/dev/null 2>&1 &&
	perf stat -e syscalls:sys_enter_poll -- true >/dev/null 2>&1; then
	HAVE_PERF=1
fi
LOOP_CPU0="" LOOP_CPU8="" LOOP_TURNS8="" LOOP_TURNS0="" MEM8=""

# latency runs against URL, appended to row ROW; LAT_TOTAL = messages in all
lat_runs() { # row tgt url
	local run
	LAT_TOTAL=0
	for run in $(seq 1 "$RUNS"); do
		if lg "$1" "$2" --url "$3" --mode latency --size 64 --secs "$SECS"; then
			record "$2" 1 "$1:p50_us" "${1}p99:p99_us"
			LAT_TOTAL=$((LAT_TOTAL + $(field "$LAST" msgs)))
		else
			record "$2" 0 "$1:p50_us" "${1}p99:p99_us"
		fi
	done
}

# proxy_measure row url pid -> MEAS_CPU (ms per 1000 msgs = us per msg), MEAS_TURNS
proxy_measure() {
	local t0 t1 msgs perfpid="" polls=""
	t0=$(cpu_ticks "$3")
	if [ "$HAVE_PERF" = 1 ]; then
		perf stat -x, -o "$TMP/perf.out" -e syscalls:sys_enter_poll,syscalls:sys_enter_ppoll \
			-p "$3" >/dev/null 2>&1 &
		perfpid=$!
		sleep 0.2
	fi
	lat_runs "$1" ws "$2"
	msgs=$LAT_TOTAL
	t1=$(cpu_ticks "$3")
	if [ -n "$perfpid" ]; then
		kill -INT "$perfpid" 2>/dev/null
		wait "$perfpid" 2>/dev/null
		polls=$(awk -F, '/sys_enter_p?poll/ { s += $1 } END { print s + 0 }' "$TMP/perf.out" 2>/dev/null)
	fi
	MEAS_CPU="" MEAS_TURNS=""
	if [ "${msgs:-0}" -gt 0 ]; then
		MEAS_CPU=$(awk -v d=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v m="$msgs" \
			'BEGIN { printf "%.1f", d / hz * 1e6 / m }')
		[ -n "$polls" ] && MEAS_TURNS=$(awk -v p="$polls" -v m="$msgs" 'BEGIN { printf "%.2f", p / m }')
	fi
}

# wsproxy: 0 idle first, then with the idle set held open
start_proxy ws "$TMP/engine-echo.sock"
proxy_measure lat0 "ws://127.0.0.1:$PROXY_PORT/" "$PROXY_PID"
LOOP_CPU0=$MEAS_CPU LOOP_TURNS0=$MEAS_TURNS
rss0=$(rss_kb "$PROXY_PID")
# Idle means quiet for a while: wsproxy treats a connection as busy for
# 1 s after its last event (WS_PROXY_HOT_MS), so each target gets 1.5 s of
# quiet after its idle set is open before the latency runs.
IDLE_SETTLE=1.5
if hold_open "ws://127.0.0.1:$PROXY_PORT/" "$IDLE_LOOP_N"; then
	sleep "$IDLE_SETTLE"
	MEM8=$(awk -v a="$(rss_kb "$PROXY_PID")" -v b="$rss0" -v n="$IDLE_LOOP_N" \
		'BEGIN { printf "%.0f", (a - b) * 1024 / n }')
	proxy_measure lat8k "ws://127.0.0.1:$PROXY_PORT/" "$PROXY_PID"
	LOOP_CPU8=$MEAS_CPU LOOP_TURNS8=$MEAS_TURNS
else
	fail lat8k ws
fi
hold_close
check_proxy "$PROXY_PID" "the idle-connection runs"
stop_pid "$PROXY_PID"

# The same with every turn a full one (-DWS_PROXY_HOT_MS=0: no connection
# is ever hot, so every turn takes them all): what one loop
# turn over the whole idle set costs, which the hot/cold split avoids.
LOOP_CPUF=""
if $CC -std=c99 -O2 -pthread -DWS_PROXY_NO_TLS -DWS_PROXY_HOT_MS=0 \
	-o "$OUT/wsproxy-fullturns" program/main.c wsproxy.c 2>>"$FAILLOG"; then
	main_bin=$WSPROXY_BIN
	WSPROXY_BIN=$root/$OUT/wsproxy-fullturns
	start_proxy ws "$TMP/engine-echo.sock"
	WSPROXY_BIN=$main_bin
	if hold_open "ws://127.0.0.1:$PROXY_PORT/" "$IDLE_LOOP_N"; then
		sleep "$IDLE_SETTLE"
		proxy_measure lat8kfull "ws://127.0.0.1:$PROXY_PORT/" "$PROXY_PID"
		LOOP_CPUF=$MEAS_CPU
	else
		fail lat8kfull ws
	fi
	hold_close
	check_proxy "$PROXY_PID" "the idle-connection runs (full turns)"
	stop_pid "$PROXY_PID"
else
	fail lat8kfull ws
fi

start_socat tcp "$TMP/engine-echo.sock"
if hold_open "tcp://127.0.0.1:$SOCAT_PORT" "$IDLE_LOOP_N" && wait_kids_count "$SOCAT_PID" "$IDLE_LOOP_N"; then
	sleep "$IDLE_SETTLE"
	lat_runs lat8k socat "tcp://127.0.0.1:$SOCAT_PORT"
else
	fail lat8k socat
fi
hold_close
wait_kids "$SOCAT_PID"
stop_pid "$SOCAT_PID"

if hold_open "unix:$TMP/engine-echo.sock" "$IDLE_LOOP_N"; then
	sleep "$IDLE_SETTLE"
	lat_runs lat8k direct "unix:$TMP/engine-echo.sock"
else
	fail lat8k direct
fi
hold_close

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
	start_proxy wss "$TMP/engine-echo.sock"
	WSS_PID=$PROXY_PID WSS_PORT=$PROXY_PORT
	start_socat tls "$TMP/engine-echo.sock"
	if ! lg tlsprobe ws --url "wss://127.0.0.1:$WSS_PORT/" --ca "$CA" --mode connect --count 1 --secs 5; then
		TLS_NOTE="wsproxy wss:// failed a single connection (see $FAILLOG)"
	fi
	for run in $(seq 1 "$RUNS"); do
		for tgt in ws socat; do
			if [ "$tgt" = ws ]; then u="wss://127.0.0.1:$WSS_PORT/"; else u="tls://127.0.0.1:$SOCAT_PORT"; fi
			if [ -n "$TLS_NOTE" ] && [ "$tgt" = ws ]; then
				fail tlsecho ws
				fail tlsconn ws
				continue
			fi
			lg tlsecho "$tgt" --url "$u" --ca "$CA" --mode echo --size 65536 --window 262144 --secs "$SECS"
			record "$tgt" $(($? == 0)) tlsecho:mb_per_s
			lg tlsconn "$tgt" --url "$u" --ca "$CA" --mode connect --size 1 --count 2000 --secs "$SECS"
			record "$tgt" $(($? == 0)) tlsconn:p50_us
			[ "$tgt" = socat ] && wait_kids "$SOCAT_PID"
		done
	done
	check_proxy "$WSS_PID" "the TLS runs"
	stop_pid "$WSS_PID"
	wait_kids "$SOCAT_PID"
	stop_pid "$SOCAT_PID"
	if [ -z "$TLS_NOTE" ]; then
		for run in $(seq 1 "$RUNS"); do mem_run wss "$TLS_IDLE_MEM_N"; done
	else
		fail mem_wss ws
	fi
fi

# ---- the table ----

cell() { # row tgt fmt-scale
	local s
	s=$(stats ${VALS[$1|$2]:-})
	if [ -n "${FAILS[$1|$2]:-}" ]; then
		echo "FAIL(${FAILS[$1|$2]}/$RUNS)"
		return
	fi
	[ -z "$s" ] && { echo "-"; return; }
	echo "$s" | awk -v sc="$3" '{
		f = (sc == "k") ? 1e-3 : 1
		fmt = ($1 * f >= 100) ? "%.0f" : "%.1f"
		printf fmt " (" fmt "-" fmt ")", $1 * f, $2 * f, $3 * f
	}'
}

median_of() { stats ${VALS[$1|$2]:-} | awk '{ print $1 }'; }

# row label scale target-op target-value [ratio-against]
LINES=()
row() {
	local id=$1 label=$2 sc=$3 op=$4 tv=$5 base=${6:-socat} w s d ratio="-" verdict=""
	w=$(cell "$id" ws "$sc")
	s=$(cell "$id" socat "$sc")
	d=$(cell "$id" direct "$sc")
	local mw ms
	mw=$(median_of "$id" ws)
	ms=$(median_of "$id" "$base")
	if [ -z "${FAILS[$id|ws]:-}" ] && [ -n "$mw" ] && [ -n "$ms" ] && [ -z "${FAILS[$id|$base]:-}" ]; then
		ratio=$(awk -v a="$mw" -v b="$ms" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }')
		if [ "$op" != "-" ]; then
			verdict=$(awk -v a="$mw" -v b="$ms" -v op="$op" -v t="$tv" 'BEGIN {
				r = a / b; ok = (op == ">=") ? (r >= t) : (r <= t); print ok ? "ok" : "MISS" }')
		fi
	elif [ -n "${FAILS[$id|ws]:-}" ]; then
		verdict="FAIL"
	fi
	local tgt="-"
	[ "$op" != "-" ] && tgt="$op ${tv}x"
	LINES+=("$(printf '%-46s | %-22s | %-22s | %-22s | %-7s | %-8s %s' "$label" "$w" "$s" "$d" "$ratio" "$tgt" "$verdict")")
}

row up "upload, 64 KiB messages (MB/s)" 1 ">=" 1.0
row down "download (MB/s)" 1 ">=" 0.9
row echo64k "echo, 64 KiB messages (MB/s)" 1 ">=" 1.0
row echo64 "echo, 64 B pipelined (k msgs/s)" k ">=" 0.5
row many "$MANY_N conns, 4 KiB ping-pong (msgs/s)" 1 ">=" 2.0
row lat1 "64 B ping-pong p50, all on one core (us)" 1 "<=" 1.0
row lat "64 B ping-pong p50, 2 cores (us)" 1 - -
row lat99 "64 B ping-pong p99, 2 cores (us)" 1 - -
row lat999 "64 B ping-pong p99.9, 2 cores (us)" 1 - -
row conn "connect+handshake+1 B echo p50 (us) [1]" 1 "<=" 5.0
row connrate "sequential connects per second" 1 - -
row lat8k "64 B p50 with $IDLE_LOOP_N idle conns (us)" 1 - -
row lat8kp99 "64 B p99 with $IDLE_LOOP_N idle conns (us)" 1 - -
row lat8kfull "  p50, every turn a full one (us) [3]" 1 - -
row lat8kfullp99 "  p99, every turn a full one (us) [3]" 1 - -
if [ "$HAVE_TLS" = 1 ] || [ -n "$TLS_NOTE" ]; then
	row tlsecho "wss: echo, 64 KiB messages (MB/s) [2]" 1 ">=" 1.0
	row tlsconn "wss: TLS connect+handshake+echo p50 (us)" 1 "<=" 0.5
fi

echo
printf '%-46s | %-22s | %-22s | %-22s | %-7s | %s\n' "workload (median of $RUNS, min-max)" \
	"wsproxy" "socat" "direct" "ws/socat" "target"
printf '%s\n' "$(printf '%.0s-' $(seq 1 150))"
printf '%s\n' "${LINES[@]}"
echo

memline() { # row label target-bytes
	local m s
	m=$(stats ${VALS[$1|ws]:-})
	if [ -n "${FAILS[$1|ws]:-}" ] || [ -z "$m" ]; then
		printf '%-46s   FAIL\n' "$2"
		return
	fi
	echo "$m" | awk -v l="$2" -v t="$3" '{
		printf "%-46s   %.2f KiB (%.2f-%.2f), target <= %d KiB: %s\n", l, $1 / 1024, $2 / 1024, $3 / 1024,
			t / 1024, ($1 <= t) ? "ok" : "MISS" }'
}
memline mem_ws "memory per idle ws:// conn (N=$IDLE_MEM_N)" 4096
s=$(stats ${VALS[mem_ws|socat]:-})
[ -n "$s" ] && echo "$s" | awk -v l="  socat, private memory per connection" \
	'{ printf "%-46s   %.0f KiB (%.0f-%.0f) (one forked process each)\n", l, $1 / 1024, $2 / 1024, $3 / 1024 }'
[ -n "$MEM8" ] && printf '%-46s   %.2f KiB\n' "  wsproxy, same with N=$IDLE_LOOP_N" "$(awk -v b="$MEM8" 'BEGIN { print b / 1024 }')"
if [ "$HAVE_TLS" = 1 ] || [ -n "$TLS_NOTE" ]; then
	memline mem_wss "memory per idle wss:// conn (N=$TLS_IDLE_MEM_N)" 40960
fi

cp "$WSPROXY_BIN" "$TMP/wsproxy.stripped" && strip "$TMP/wsproxy.stripped" &&
	printf '%-46s   %s bytes (%s)\n' "stripped wsproxy binary" "$(stat -c %s "$TMP/wsproxy.stripped")" \
		"$(if ldd "$WSPROXY_BIN" 2>/dev/null | grep -q bearssl; then echo "BearSSL dynamic"; else echo "BearSSL static or none; libc dynamic"; fi)"

if [ -n "$LOOP_CPU0" ] && [ -n "$LOOP_CPU8" ]; then
	printf '%-46s   %s us with 0 idle, %s us with %s idle\n' "wsproxy CPU per 64 B round trip" \
		"$LOOP_CPU0" "$LOOP_CPU8" "$IDLE_LOOP_N"
	[ -n "$LOOP_TURNS8" ] && printf '%-46s   %s (0 idle: %s)\n' "  poll() calls per round trip" \
		"$LOOP_TURNS8" "$LOOP_TURNS0"
fi
if [ -n "$LOOP_CPUF" ]; then
	# A ping-pong round trip is two turns: client to engine, engine back.
	printf '%-46s   %s us per round trip: one full turn over %s idle conns ~%s us [3]\n' \
		"  every turn a full one" "$LOOP_CPUF" "$IDLE_LOOP_N" \
		"$(awk -v c="$LOOP_CPUF" 'BEGIN { printf "%.0f", c / 2 }')"
fi
echo
echo "[1] wsproxy: TCP connect + WebSocket handshake + a 1-byte message echoed by the engine;"
echo "    socat/direct: connect + the same byte echoed (socat forks per connection)."
echo "    Each connection is closed with RST (no TIME_WAIT); connects are sequential."
if [ "$HAVE_TLS" = 1 ] || [ -n "$TLS_NOTE" ]; then
	echo "[2] wss:// vs socat OPENSSL-LISTEN (nodelay); EC P-256 certificate; client offers AES-GCM first."
	[ -n "$TLS_NOTE" ] && echo "    TLS: $TLS_NOTE"
fi
echo "[3] wsproxy built with -DWS_PROXY_HOT_MS=0, so every loop turn polls and steps every"
echo "    connection; the default polls busy connections alone between full turns every 10 ms."
if [ -s "$FAILLOG" ]; then
	echo "Some runs failed: see $FAILLOG"
fi
echo "Raw results: $RESULTS; bench took $(($(date +%s) - T_START)) s."
[ -s "$FAILLOG" ] && exit 1
exit 0
