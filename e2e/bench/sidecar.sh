#!/usr/bin/env bash
# Sidecar data-plane benchmark: one HTTP mesh hop through two lanemesh proxies, compared side by side with the
# same hop through two HAProxy and two nginx reverse proxies, and with no proxy at all (direct).
#
# Topology (built here, removed on exit): two network namespaces joined by a veth pair in 10.200.0.0/24.
#   client netns (10.200.0.1): load generator (oha) + client-side proxy
#   server netns (10.200.0.2): server-side proxy + upstream (nginx `return 200`, 0.0.0.0:8080)
# lanemesh captures with its own `lanemesh-proxy init` iptables rules (outbound -> 15001 in the client netns,
# inbound -> 15006 in the server netns) and runs as UID/GID 1337; HAProxy and nginx are explicit reverse proxies
# (client proxy on 127.0.0.1:<port> -> server proxy on 10.200.0.2:<port> -> 127.0.0.1:8080) with keep-alive pools.
#
# Two more lanemesh rows run the same hop with both proxies loading a --config-file: "lanemesh + mesh config" (the
# bench's pods and Service: governed routing, lanes, metrics, no policy) and "lanemesh + policy" (the same plus a
# permissive RateLimitPolicy and a DryRun OverloadProtectionPolicy for the server app and a CircuitBreakerPolicy that
# never trips for its callers); the script checks the proxies' /metrics that the policy was in force and prints the
# CPU-per-request cost of governance (policy row vs mesh-config row) below the table (issue 5: under +5%).
#
# Needs root (namespaces, iptables). Installs what is missing (Debian packages via apt-get, oha via cargo) and builds
# lanemesh-proxy in release. Env knobs: BENCH_RATE (1000), BENCH_DURATION (10s), BENCH_CONNECTIONS (50),
# BENCH_PROXY (a prebuilt lanemesh-proxy instead of the release build), BENCH_SETUPS (rows to run, default
# "direct haproxy nginx lanemesh lanemesh-mesh lanemesh-policy"; direct always runs, it is the baseline), BENCH_ROUNDS
# (3: every setup is measured once per round, rounds run one after another, and the table shows each metric's median
# over the rounds; a per-round lanemesh/HAProxy ratio table follows it. On a shared machine a neighbour's burst can
# move one run by 40%; the median and the per-round ratios show what holds).
# While optimising: BENCH_PROXY_B and BENCH_PROXY_B_ENV (a second lanemesh-proxy binary, with extra environment such
# as TOKIO_WORKER_THREADS=1, measured as an extra passthrough row in the same run: compare ratios within one run, the
# machine is shared), BENCH_PERF_DIR (needs perf: `perf record -g` of the proxies during each saturation run into
# this directory; BENCH_PERF_MODE=trace writes a `perf trace -s` syscall summary instead).
set -euo pipefail

RATE=${BENCH_RATE:-1000}
DURATION=${BENCH_DURATION:-10s}
CONNECTIONS=${BENCH_CONNECTIONS:-50}
ROUNDS=${BENCH_ROUNDS:-3}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "bench: error: BENCH_ROUNDS must be a positive integer" >&2; exit 1; }
ROUND=0
SETUPS=" ${BENCH_SETUPS:-direct haproxy nginx lanemesh lanemesh-mesh lanemesh-policy} "
PERF_DIR=${BENCH_PERF_DIR:-}
CACHE=${LANEMESH_CACHE:-$HOME/.cache/lanemesh}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

log() { echo "bench: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (network namespaces and iptables)"

# ---------------------------------------------------------------- install (idempotent)
need_apt=()
command -v haproxy >/dev/null || need_apt+=(haproxy)
command -v nginx >/dev/null || need_apt+=(nginx-light)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v iptables >/dev/null || need_apt+=(iptables)
command -v jq >/dev/null || need_apt+=(jq)
command -v setpriv >/dev/null || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
    log "installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# Debian's nginx package may start a system nginx on :80; it is not used here and does not collide with our ports.

OHA=$CACHE/cargo-bin/oha
if [ ! -x "$OHA" ]; then
    if command -v oha >/dev/null; then
        OHA=$(command -v oha)
    else
        log "installing oha (cargo install, once; a few minutes on 2 cores)"
        CARGO_TARGET_DIR=$CACHE/oha-target cargo install oha --locked --root "$CACHE/cargo-install" >&2
        mkdir -p "$CACHE/cargo-bin"
        cp "$CACHE/cargo-install/bin/oha" "$OHA"
    fi
fi

if [ -n "${BENCH_PROXY:-}" ]; then
    PROXY=$BENCH_PROXY # a prebuilt binary (e.g. a debug build while iterating on this script)
else
    log "building lanemesh-proxy (release)"
    (cd "$ROOT" && cargo build --quiet --release --locked -p lanemesh-sidecar)
    PROXY=$CARGO_TARGET_DIR/release/lanemesh-proxy
fi
[ -x "$PROXY" ] || die "no $PROXY after the build"

# ---------------------------------------------------------------- topology + cleanup
TAG=$$
NS_C=lmb-c-$TAG
NS_S=lmb-s-$TAG
VETH_C=lmbc$TAG
VETH_S=lmbs$TAG
C_IP=10.200.0.1
S_IP=10.200.0.2
UP_PORT=8080
WORK=$(mktemp -d /tmp/lanemesh-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    ip netns del "$NS_C" 2>/dev/null || true
    ip netns del "$NS_S" 2>/dev/null || true
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ip netns add "$NS_C"
ip netns add "$NS_S"
ip link add "$VETH_C" type veth peer name "$VETH_S"
ip link set "$VETH_C" netns "$NS_C"
ip link set "$VETH_S" netns "$NS_S"
ip -n "$NS_C" addr add "$C_IP/24" dev "$VETH_C"
ip -n "$NS_S" addr add "$S_IP/24" dev "$VETH_S"
for ns in "$NS_C" "$NS_S"; do ip -n "$ns" link set lo up; done
ip -n "$NS_C" link set "$VETH_C" up
ip -n "$NS_S" link set "$VETH_S" up

# start NS LOGNAME CMD... : runs CMD in netns NS in the background, records its pid (ip netns exec and setpriv exec,
# so $! is the command's own pid).
LAST_PID=
start() {
    local ns=$1 name=$2
    shift 2
    ip netns exec "$ns" "$@" >"$WORK/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

stop() {
    local pid=$1
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

# Looks at the listening sockets rather than connecting: a probe connection to a capture port would itself be proxied.
wait_port() { # NS IP PORT
    for _ in $(seq 100); do
        if ip netns exec "$1" ss -Hltn "sport = :$3" | grep -q .; then return 0; fi
        sleep 0.1
    done
    die "nothing listens on $2:$3 in $1 (logs in $WORK)"
}

nginx_conf() { # FILE LISTEN WORKERS LOCATION-BODY [UPSTREAM-BLOCK]
    local dir
    dir=$(dirname "$1")
    mkdir -p "$dir/tmp"
    cat >"$1" <<EOF
worker_processes $3;
daemon off;
master_process on;
user root;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    ${5:-}
    server {
        listen $2 reuseport;
        location / { $4 }
    }
}
EOF
}

# Upstream: one nginx worker answering a fixed 3-byte body, the same for every setup.
mkdir -p "$WORK/upstream"
nginx_conf "$WORK/upstream/nginx.conf" "0.0.0.0:$UP_PORT" 1 'return 200 "ok\n";'
start "$NS_S" upstream nginx -p "$WORK/upstream" -c "$WORK/upstream/nginx.conf"
wait_port "$NS_S" "$S_IP" "$UP_PORT"

# ---------------------------------------------------------------- measurement helpers
# Proxy processes of the setup under test: nginx = master + workers; others = one process.
# shellcheck source=procstat.sh
source "$(dirname "${BASH_SOURCE[0]}")/procstat.sh"

oha_run() { # OUT-JSON URL ARGS...
    local out=$1 url=$2
    shift 2
    ip netns exec "$NS_C" "$OHA" --no-tui --output-format json "$@" "$url" >"$out" 2>"$out.err" ||
        ip netns exec "$NS_C" "$OHA" --no-tui -j "$@" "$url" >"$out" 2>"$out.err" ||
        die "oha failed: $(cat "$out.err")"
}

want() { [[ $SETUPS == *" $1 "* ]]; }

RESULTS=$WORK/results.tsv
: >"$RESULTS"

# measure NAME URL CLIENT_PID SERVER_PID : warm-up, fixed-rate run (latency, CPU, RSS), saturation run (max RPS, CPU).
measure() {
    local name=$1 url=$2 cpid=$3 spid=$4 procs=() t0 t1 t2 n fixed sat
    if [ -n "$cpid" ]; then mapfile -t procs < <(proc_tree "$cpid"; proc_tree "$spid"); fi
    log "$name: warm-up"
    oha_run "$WORK/$name.warm.json" "$url" -z 2s -q 500 -c "$CONNECTIONS"
    fixed=$WORK/$name.fixed.json
    sat=$WORK/$name.sat.json
    log "$name: $RATE RPS for $DURATION"
    t0=$([ ${#procs[@]} -gt 0 ] && cpu_ticks "${procs[@]}" || echo 0)
    oha_run "$fixed" "$url" -z "$DURATION" -q "$RATE" -c "$CONNECTIONS" --latency-correction
    t1=$([ ${#procs[@]} -gt 0 ] && cpu_ticks "${procs[@]}" || echo 0)
    local rss_c=- rss_s=-
    if [ -n "$cpid" ]; then
        rss_c=$(status_kb VmHWM $(proc_tree "$cpid"))
        rss_s=$(status_kb VmHWM $(proc_tree "$spid"))
    fi
    log "$name: saturation, $CONNECTIONS connections for $DURATION"
    local perf_pid=
    if [ -n "$PERF_DIR" ] && [ ${#procs[@]} -gt 0 ]; then
        mkdir -p "$PERF_DIR"
        if [ "${BENCH_PERF_MODE:-record}" = trace ]; then
            perf trace -s -o "$PERF_DIR/$name.trace.txt" -p "$(IFS=,; echo "${procs[*]}")" >/dev/null 2>&1 &
        else
            perf record -q -g -F 999 -o "$PERF_DIR/$name.perf.data" -p "$(IFS=,; echo "${procs[*]}")" \
                >"$WORK/$name.perf.log" 2>&1 &
        fi
        perf_pid=$!
    fi
    oha_run "$sat" "$url" -z "$DURATION" -c "$CONNECTIONS"
    if [ -n "$perf_pid" ]; then kill -INT "$perf_pid" 2>/dev/null || true; wait "$perf_pid" || true; fi
    t2=$([ ${#procs[@]} -gt 0 ] && cpu_ticks "${procs[@]}" || echo 0)
    local nfixed nsat ok_fixed ok_sat
    nfixed=$(jq '[.statusCodeDistribution[]] | add // 0' "$fixed")
    nsat=$(jq '[.statusCodeDistribution[]] | add // 0' "$sat")
    ok_fixed=$(jq '.statusCodeDistribution["200"] // 0' "$fixed")
    ok_sat=$(jq '.statusCodeDistribution["200"] // 0' "$sat")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$name" \
        "$(jq '.latencyPercentiles.p50 * 1000' "$fixed")" \
        "$(jq '.latencyPercentiles.p99 * 1000' "$fixed")" \
        "$(jq '.latencyPercentiles["p99.9"] * 1000' "$fixed")" \
        "$(jq '.summary.requestsPerSec' "$fixed")" \
        "$(jq '.summary.requestsPerSec' "$sat")" \
        "$((t1 - t0))" "$nfixed" "$((t2 - t1))" "$nsat" "$rss_c" "$rss_s" \
        "$((nfixed - ok_fixed))" "$((nsat - ok_sat))" "$ROUND" >>"$RESULTS"
}


# ---------------------------------------------------------------- 3. HAProxy x2
bench_haproxy() {
HA_C_PORT=9101
HA_S_PORT=9102
haproxy_conf() { # FILE BIND SERVER
    cat >"$1" <<EOF
global
    nbthread 2
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend in
    bind $2
    default_backend out
backend out
    server s1 $3
EOF
}
haproxy_conf "$WORK/haproxy-s.cfg" "$S_IP:$HA_S_PORT" "127.0.0.1:$UP_PORT"
haproxy_conf "$WORK/haproxy-c.cfg" "127.0.0.1:$HA_C_PORT" "$S_IP:$HA_S_PORT"
start "$NS_S" haproxy-s haproxy -db -f "$WORK/haproxy-s.cfg"
HA_S=$LAST_PID
start "$NS_C" haproxy-c haproxy -db -f "$WORK/haproxy-c.cfg"
HA_C=$LAST_PID
wait_port "$NS_S" "$S_IP" "$HA_S_PORT"
wait_port "$NS_C" 127.0.0.1 "$HA_C_PORT"
measure haproxy "http://127.0.0.1:$HA_C_PORT/" "$HA_C" "$HA_S"
stop "$HA_C"
stop "$HA_S"
} # bench_haproxy

# ---------------------------------------------------------------- 4. nginx x2
bench_nginx() {
NG_C_PORT=9201
NG_S_PORT=9202
PROXY_LOC='proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";'
mkdir -p "$WORK/nginx-s" "$WORK/nginx-c"
nginx_conf "$WORK/nginx-s/nginx.conf" "$S_IP:$NG_S_PORT" 2 "$PROXY_LOC" \
    "upstream up { server 127.0.0.1:$UP_PORT; keepalive 128; keepalive_requests 10000000; }"
nginx_conf "$WORK/nginx-c/nginx.conf" "127.0.0.1:$NG_C_PORT" 2 "$PROXY_LOC" \
    "upstream up { server $S_IP:$NG_S_PORT; keepalive 128; keepalive_requests 10000000; }"
start "$NS_S" nginx-s nginx -p "$WORK/nginx-s" -c "$WORK/nginx-s/nginx.conf"
NG_S=$LAST_PID
start "$NS_C" nginx-c nginx -p "$WORK/nginx-c" -c "$WORK/nginx-c/nginx.conf"
NG_C=$LAST_PID
wait_port "$NS_S" "$S_IP" "$NG_S_PORT"
wait_port "$NS_C" 127.0.0.1 "$NG_C_PORT"
measure nginx "http://127.0.0.1:$NG_C_PORT/" "$NG_C" "$NG_S"
stop "$NG_C"
stop "$NG_S"
} # bench_nginx

# ---------------------------------------------------------------- 2. lanemesh x2 (last: its capture rules stay)
# lanemesh_run NAME BINARY SERVER-ARGS CLIENT-ARGS : starts the two proxies (as UID/GID 1337, so their own connections
# are not captured again) with extra `run` flags, measures the captured hop and stops them again.
lanemesh_run() {
    local name=$1 bin=$2 sargs=$3 cargs=$4 lm_s lm_c extra_env=()
    if [ "$name" = lanemesh-b ]; then read -ra extra_env <<<"${BENCH_PROXY_B_ENV:-}"; fi
    local as_proxy=(env LANEMESH_LOG=warn "${extra_env[@]}" setpriv --reuid 1337 --regid 1337 --clear-groups "$bin" run)
    # shellcheck disable=SC2086 # the args are word lists
    start "$NS_S" "$name-s" "${as_proxy[@]}" $sargs
    lm_s=$LAST_PID
    # shellcheck disable=SC2086
    start "$NS_C" "$name-c" "${as_proxy[@]}" $cargs
    lm_c=$LAST_PID
    # env execs setpriv, which execs the proxy: the recorded pid is the proxy's.
    wait_port "$NS_S" 127.0.0.1 15006
    wait_port "$NS_C" 127.0.0.1 15001
    wait_port "$NS_S" 127.0.0.1 15020
    wait_port "$NS_C" 127.0.0.1 15020
    measure "$name" "http://$S_IP:$UP_PORT/" "$lm_c" "$lm_s"
    if [ "$name" = lanemesh-policy ]; then check_policy_metrics; fi
    # The requests must really have crossed both proxies: a proxy that was bypassed would have used no CPU.
    [ "$(cpu_ticks "$lm_c")" -gt 0 ] && [ "$(cpu_ticks "$lm_s")" -gt 0 ] || die "$name proxies used no CPU: capture bypassed"
    stop "$lm_c"
    stop "$lm_s"
}

# capture install|uninstall : lanemesh's capture rules in both namespaces. They would capture HAProxy's and nginx's hop
# too, so they exist only while the lanemesh rows run.
capture() {
    local flags=() ns
    if [ "$1" = uninstall ]; then flags=(--uninstall); fi
    for ns in "$NS_C" "$NS_S"; do
        ip netns exec "$ns" "$PROXY" init "${flags[@]}" >"$WORK/init.log" 2>&1 || die "init $1 in $ns: $(cat "$WORK/init.log")"
    done
}

# lanemesh + policy: the same hop with governance in force (issue 5: under 5% more CPU per request than without).
# Both proxies load one --config-file describing the two pods (their bench IPs) and the server's Service, so the
# server proxy applies bench-server's inbound rules (a permissive rate limit with QPS, concurrency and a hot
# parameter on a header; overload protection in DryRun) and the client proxy its outbound breaker (never trips) to
# 10.200.0.2:8080, the server pod's IP and target port.
POLICY_PROBE=bench-probe-blocked
# mesh_config : the two pods and the server's Service: governed routing, no policy (the "lanemesh + mesh config" row,
# the baseline of the policy cost).
mesh_config() {
    cat <<EOF
apiVersion: v1
kind: Service
metadata: {name: bench-server, namespace: bench}
spec: {clusterIP: 10.96.0.10, selector: {app: bench-server}, ports: [{name: http, port: $UP_PORT, targetPort: $UP_PORT}]}
---
apiVersion: v1
kind: Pod
metadata: {name: bench-server-1, namespace: bench, labels: {app: bench-server, msePilotAutoEnable: "on"}}
spec: {containers: [{name: app, image: nginx}]}
status: {podIP: $S_IP, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: bench-client-1, namespace: bench, labels: {app: bench-client, msePilotAutoEnable: "on"}}
spec: {containers: [{name: app, image: oha}]}
status: {podIP: $C_IP, conditions: [{type: Ready, status: "True"}]}
EOF
}

# policy_objects : the permissive policies the "lanemesh + policy" row adds to mesh_config.
policy_objects() {
    cat <<EOF
---
apiVersion: lanemesh.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: bench-server-limits, namespace: bench}
spec:
  app: bench-server
  rules:
  - name: permissive
    match: {paths: [{prefix: /}]}
    qps: {threshold: 1000000, behavior: Reject}
    concurrency: {max: 100000}
    hotParams:
    - {source: Header, name: x-user-id, threshold: 1000000, overrides: [{value: $POLICY_PROBE, threshold: 0}]}
---
apiVersion: lanemesh.io/v1alpha1
kind: CircuitBreakerPolicy
metadata: {name: bench-server-breaker, namespace: bench}
spec:
  app: bench-server
  rules:
  - {name: errors, match: {paths: [{prefix: /}]}, strategy: ErrorRatio, threshold: 1.0, window: 10s, minRequests: 1000000000, openDuration: 1s}
---
apiVersion: lanemesh.io/v1alpha1
kind: OverloadProtectionPolicy
metadata: {name: bench-server-overload, namespace: bench}
spec: {app: bench-server, mode: DryRun, cpuThreshold: 0.8, strategy: BBR}
EOF
}

# check_policy_metrics : the policy row measured governed traffic, not a passthrough. After the runs: the client's
# breaker for bench-server exists and stayed closed, nothing was rejected; then one probe request with the hot
# parameter value the rule blocks (override 0) must be refused by the server proxy (429, counted in its metrics),
# which shows that the inbound rules apply to the traffic that crosses both proxies.
check_policy_metrics() {
    local c s code
    c=$(ip netns exec "$NS_C" curl -sf "http://127.0.0.1:15020/metrics") || die "no metrics from the client proxy"
    s=$(ip netns exec "$NS_S" curl -sf "http://127.0.0.1:15020/metrics") || die "no metrics from the server proxy"
    grep -q '^lanemesh_breaker_state{app="bench-server",rule="bench-server-breaker/errors"} 0$' <<<"$c" ||
        die "client proxy: no closed breaker for bench-server in /metrics: $(grep breaker <<<"$c")"
    if grep '^lanemesh_rejections_total' <<<"$s$c" | grep -qv ' 0$'; then
        die "the permissive policy rejected requests: $(grep rejections_total <<<"$s$c")"
    fi
    code=$(ip netns exec "$NS_C" curl -s -o /dev/null -w '%{http_code}' -H "x-user-id: $POLICY_PROBE" \
        "http://$S_IP:$UP_PORT/") || true
    [ "$code" = 429 ] || die "probe with the blocked hot parameter got $code, not 429: inbound rules not applied"
    s=$(ip netns exec "$NS_S" curl -sf "http://127.0.0.1:15020/metrics") || die "no metrics from the server proxy"
    grep -q '^lanemesh_rejections_total{.*rule="bench-server-limits/permissive"} 1$' <<<"$s" ||
        die "server proxy did not count the probe's rejection: $(grep rejections_total <<<"$s")"
    log "lanemesh-policy: policy in force (client breaker closed, no rejections, blocked probe refused by the server)"
}

# lanemesh_governed NAME CONFIG-FILE : the lanemesh hop with both proxies loading CONFIG-FILE as their pods.
lanemesh_governed() {
    local name=$1 node="--config-file $2 --pod-namespace bench"
    chmod 644 "$2"
    lanemesh_run "$name" "$PROXY" \
        "$node --pod-name bench-server-1 --app-name bench-server --pod-ip $S_IP" \
        "$node --pod-name bench-client-1 --app-name bench-client --pod-ip $C_IP"
}
mesh_config >"$WORK/mesh.yaml"
{ mesh_config; policy_objects; } >"$WORK/policy.yaml"

# ---------------------------------------------------------------- the rounds
for ROUND in $(seq "$ROUNDS"); do
    log "round $ROUND of $ROUNDS"
    measure direct "http://$S_IP:$UP_PORT/" "" ""
    if want haproxy; then bench_haproxy; fi
    if want nginx; then bench_nginx; fi
    if want lanemesh || want lanemesh-mesh || want lanemesh-policy || [ -n "${BENCH_PROXY_B:-}" ]; then
        capture install
        if want lanemesh; then lanemesh_run lanemesh "$PROXY" "" ""; fi
        if want lanemesh-mesh; then lanemesh_governed lanemesh-mesh "$WORK/mesh.yaml"; fi
        if want lanemesh-policy; then lanemesh_governed lanemesh-policy "$WORK/policy.yaml"; fi
        # A/B comparison while optimising: a second binary measured in the same run.
        if [ -n "${BENCH_PROXY_B:-}" ]; then lanemesh_run lanemesh-b "$BENCH_PROXY_B" "" ""; fi
        capture uninstall
    fi
done

# ---------------------------------------------------------------- report
# One line per measured row: name, round, p50, p99, p99.9, RPS @fixed, max RPS, CPU ms/1k @fixed, CPU ms/1k @max,
# RSS client kB, RSS server kB, errors ("-" where a value does not apply).
DERIVED=$WORK/derived.tsv
awk -F'\t' -v OFS='\t' -v tck="$TICKS" '
    function cpu(t, n) { return ($1 != "direct" && n > 0) ? t * 1000 / tck / n * 1000 : "-" }
    { print $1, $15, $2, $3, $4, $5, $6, cpu($7, $8), cpu($9, $10), $11, $12, $13 + $14 }' "$RESULTS" >"$DERIVED"

median() { # numbers on stdin -> their median, or "-"
    { grep -v '^-$' || true; } | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
col_median() { awk -F'\t' -v n="$1" -v c="$2" '$1 == n { print $c }' "$DERIVED" | median; }
label() {
    case $1 in
        direct) echo "direct (no proxy)" ;;
        lanemesh) echo "lanemesh (2 x lanemesh-proxy, passthrough)" ;;
        lanemesh-mesh) echo "lanemesh + mesh config (governed routing, no policy)" ;;
        lanemesh-policy) echo "lanemesh + policy (permissive limits, breaker, overload dry run)" ;;
        lanemesh-b) echo "lanemesh B (BENCH_PROXY_B, passthrough)" ;;
        *) echo "2 x $1" ;;
    esac
}
fmt() { # FORMAT VALUE -> printf'd value, "-" stays "-"
    if [ "$2" = - ]; then echo -; else printf "$1" "$2"; fi
}
diff_or_dash() { # A B -> A - B to 3 decimals, or "-"
    if [ "$1" = - ] || [ "$2" = - ]; then echo -; else awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; fi
}

report() {
    local d50 d99 d999 name m=()
    d50=$(col_median direct 3)
    d99=$(col_median direct 4)
    d999=$(col_median direct 5)
    echo
    echo "## Sidecar benchmark ($(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), median of $ROUNDS round(s))"
    echo
    echo "Latency at a fixed $RATE RPS for $DURATION ($CONNECTIONS connections, oha --latency-correction); max RPS with"
    echo "$CONNECTIONS connections for $DURATION. CPU = utime+stime of both proxies' processes per 1000 requests."
    echo "RSS = VmHWM after the fixed-rate run, summed over a proxy's processes (nginx: master + workers)."
    echo "Each cell is the median over the rounds; added latency = the setup's median minus direct's median."
    echo
    echo "| setup | p50 ms | p99 ms | p99.9 ms | added p50 ms | added p99 ms | added p99.9 ms | RPS @fixed | max RPS | CPU ms/1k req @fixed | CPU ms/1k req @max | RSS client proxy MB | RSS server proxy MB | errors |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    for name in $(cut -f1 "$DERIVED" | awk '!seen[$0]++'); do
        m=()
        for c in 3 4 5 6 7 8 9 10 11; do m+=("$(col_median "$name" "$c")"); done
        local errors added=(- - -)
        errors=$(awk -F'\t' -v n="$name" '$1 == n { e += $12 } END { print e + 0 }' "$DERIVED")
        if [ "$name" != direct ]; then
            added=("$(diff_or_dash "${m[0]}" "$d50")" "$(diff_or_dash "${m[1]}" "$d99")" "$(diff_or_dash "${m[2]}" "$d999")")
        fi
        echo "| $(label "$name") | $(fmt %.3f "${m[0]}") | $(fmt %.3f "${m[1]}") | $(fmt %.3f "${m[2]}") |" \
            "${added[0]} | ${added[1]} | ${added[2]} | $(fmt %.0f "${m[3]}") | $(fmt %.0f "${m[4]}") |" \
            "$(fmt %.1f "${m[5]}") | $(fmt %.1f "${m[6]}") |" \
            "$(awk -v k="${m[7]}" 'BEGIN { if (k == "-") print "-"; else printf "%.1f", k / 1024 }') |" \
            "$(awk -v k="${m[8]}" 'BEGIN { if (k == "-") print "-"; else printf "%.1f", k / 1024 }') | $errors |"
    done
    echo
    echo "Targets (reported, not asserted): lanemesh added p99 and CPU per request no worse than HAProxy's;"
    echo "lanemesh max RPS at least HAProxy's; RSS under 20 MB per proxy at $RATE RPS."
    echo "All processes share $(nproc) cores with the load generator and the upstream: max RPS is a relative number."
    if awk -F'\t' '$1 == "haproxy" { h = 1 } $1 == "lanemesh" { l = 1 } END { exit !(h && l) }' "$DERIVED"; then
        echo
        echo "Per round, lanemesh passthrough / HAProxy (the two measured a minute or two apart within each round):"
        echo
        echo "| round | max RPS ratio | CPU/req ratio @fixed | CPU/req ratio @max | added p99 lanemesh ms | added p99 haproxy ms |"
        echo "|---|---|---|---|---|---|"
        awk -F'\t' '
            $1 == "direct" { d99[$2] = $4 }
            $1 == "haproxy" { hr[$2] = $7; hf[$2] = $8; hm[$2] = $9; h99[$2] = $4 }
            $1 == "lanemesh" { lr[$2] = $7; lf[$2] = $8; lm[$2] = $9; l99[$2] = $4; rounds[$2] = 1 }
            END {
                for (r = 1; r in rounds || r in hr; r++) {
                    if (!(r in rounds) || !(r in hr) || hr[r] == 0 || hf[r] == 0 || hm[r] == 0) continue
                    printf "| %d | %.2f | %.2f | %.2f | %.3f | %.3f |\n", r, lr[r] / hr[r], lf[r] / hf[r], lm[r] / hm[r],
                        l99[r] - d99[r], h99[r] - d99[r]
                }
            }' "$DERIVED"
    fi
    awk -F'\t' '
        $1 == "lanemesh-mesh" && $8 != "-" { bf[$2] = $8; bm[$2] = $9 }
        $1 == "lanemesh-policy" && $8 != "-" { pf[$2] = $8; pm[$2] = $9 }
        END {
            n = 0
            for (r in pf) if (r in bf && bf[r] > 0 && bm[r] > 0) {
                line = line sprintf("%s round %s: %+.1f%% / %+.1f%%", n ? ";" : "", r, (pf[r] / bf[r] - 1) * 100, (pm[r] / bm[r] - 1) * 100)
                n++
            }
            if (n) {
                printf "\nPolicy cost (issue 5 target: under +5%% CPU per request), lanemesh + policy vs lanemesh + mesh config,\n"
                printf "CPU per request at the fixed rate / at max RPS:%s.\n", line
            }
        }' "$DERIVED"
}
report
