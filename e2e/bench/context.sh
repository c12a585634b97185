#!/usr/bin/env bash
# Context-forwarding benchmark: what injected W3C context propagation costs a demo app (e2e/apps), measured side by
# side with the plain app. Three pairs:
#   java   plain demo-java  vs  demo-java + the OpenTelemetry Java agent (JAVA_TOOL_OPTIONS=-javaagent:JAR)
#   python plain demo-python vs demo-python + opentelemetry-distro (through PYTHONPATH, see PYTHON_CONTEXT below)
#   go     demo-go          vs  demo-go-otel (built with -tags otel: otelhttp handler + transport, no SDK)
# The instrumented runs get OTEL_PROPAGATORS=tracecontext,baggage, OTEL_{TRACES,METRICS,LOGS}_EXPORTER=none,
# OTEL_TRACES_SAMPLER=parentbased_traceidratio with OTEL_TRACES_SAMPLER_ARG=0.01 (what the webhook sets with the
# default sampling), OTEL_SERVICE_NAME=b: propagation, nothing exported.
#
# Topology, all on loopback: load client -> B (the app under test, --next=C) -> C (demo-go, last hop, shared by
# every run). For each app: start B, start-up = exec until the first 200 from GET /healthz; then a warm-up and N
# sequential keep-alive GET /b requests, each with its own `traceparent` (flags 01, sampled, as the lanemesh gateway
# makes them: the Java and Python SDKs' parent-based sampler then records a span per request, exported nowhere) and
# `baggage: x-mse-tag=gray`; p50/p99 latency and req/s from the client; CPU (utime+stime) of B's process
# tree over the measured requests; RSS = VmRSS of B's process tree after them (the launchers exec, so the pid is the
# JVM / python; demo-python's tree is the gunicorn master + its one worker). B is stopped after each measurement.
# First, each variant is started once in front of an echo server instead of C and must forward the incoming
# traceparent (same trace id) and baggage if instrumented, neither if plain (else the script fails: a payload that
# did not load would be measured as "free"). Then every round runs plain then instrumented for each app (the order
# flips every other round); the table shows each metric's median over the rounds and, per app, the ratio
# instrumented / plain. No timing is asserted.
#
# Usage: context.sh [--java-agent=JAR] [--python-context=DIR]
#   JAVA_AGENT      opentelemetry-javaagent.jar (default $LANEMESH_CACHE/context/java/opentelemetry-javaagent.jar)
#   PYTHON_CONTEXT  opentelemetry-distro with the flask, wsgi and urllib3 instrumentations (default
#                   $LANEMESH_CACHE/context/python), either the payload of context/build.sh (DIR/boot/sitecustomize.py
#                   + DIR/lib: PYTHONPATH=DIR/boot, as the injector sets it) or a plain `pip install --target DIR`
#                   (PYTHONPATH=DIR/opentelemetry/instrumentation/auto_instrumentation:DIR)
#   CONTEXT_APPS (java python go), CONTEXT_ROUNDS (3), CONTEXT_REQUESTS (2000), CONTEXT_WARMUP (500),
#   CONTEXT_PORT (29300: C on it, the apps on the next six), CONTEXT_START_TIMEOUT (120 s).
# Needs bash >= 5 and python3; builds the demo apps with e2e/apps/build.sh when they are missing or stale.
set -euo pipefail

CACHE=${LANEMESH_CACHE:-$HOME/.cache/lanemesh}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
JAVA_AGENT=${JAVA_AGENT:-$CACHE/context/java/opentelemetry-javaagent.jar}
PYTHON_CONTEXT=${PYTHON_CONTEXT:-$CACHE/context/python}
for arg in "$@"; do
    case $arg in
        --java-agent=*) JAVA_AGENT=${arg#*=} ;;
        --python-context=*) PYTHON_CONTEXT=${arg#*=} ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench: error: unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done
APPS=" ${CONTEXT_APPS:-java python go} "
ROUNDS=${CONTEXT_ROUNDS:-3}
REQUESTS=${CONTEXT_REQUESTS:-2000}
WARMUP=${CONTEXT_WARMUP:-500}
PORT=${CONTEXT_PORT:-29300}
START_TIMEOUT=${CONTEXT_START_TIMEOUT:-120}

log() { echo "bench: $*" >&2; }
die() { log "error: $*"; exit 1; }

for v in ROUNDS REQUESTS WARMUP PORT START_TIMEOUT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "CONTEXT_$v must be a non-negative integer, not '${!v}'"
done
[ "$ROUNDS" -ge 1 ] && [ "$REQUESTS" -ge 1 ] || die "CONTEXT_ROUNDS and CONTEXT_REQUESTS must be at least 1"
for a in $APPS; do
    case $a in java | python | go) ;; *) die "CONTEXT_APPS: unknown app '$a' (java, python, go)" ;; esac
done
want() { [[ $APPS == *" $1 "* ]]; }
command -v python3 >/dev/null || die "python3 not found (the load client is a Python script)"

# ---------------------------------------------------------------- payloads and apps
if want java; then
    [ -f "$JAVA_AGENT" ] || die "no Java agent at $JAVA_AGENT; build it with context/build.sh java, or download it, e.g.
  mkdir -p $CACHE/context/java && curl -fL -o $CACHE/context/java/opentelemetry-javaagent.jar \\
    https://github.com/open-telemetry/opentelemetry-java-instrumentation/releases/download/v2.33.1/opentelemetry-javaagent.jar
(or set JAVA_AGENT / --java-agent=JAR, or leave java out of CONTEXT_APPS)"
fi
if want python; then
    if [ -f "$PYTHON_CONTEXT/boot/sitecustomize.py" ] && [ -d "$PYTHON_CONTEXT/lib" ]; then
        PYTHON_PATH=$PYTHON_CONTEXT/boot
        PYTHON_LIB=$PYTHON_CONTEXT/lib
    elif [ -f "$PYTHON_CONTEXT/opentelemetry/instrumentation/auto_instrumentation/sitecustomize.py" ]; then
        PYTHON_PATH=$PYTHON_CONTEXT/opentelemetry/instrumentation/auto_instrumentation:$PYTHON_CONTEXT
        PYTHON_LIB=$PYTHON_CONTEXT
    else
        die "no opentelemetry-distro in $PYTHON_CONTEXT; build it with context/build.sh python, or install it with the apps' python3, e.g.
  python3 -m pip install --target $CACHE/context/python opentelemetry-distro==0.66b2 \\
    opentelemetry-instrumentation-flask==0.66b2 opentelemetry-instrumentation-urllib3==0.66b2 \\
    opentelemetry-instrumentation-wsgi==0.66b2
(or set PYTHON_CONTEXT / --python-context=DIR, or leave python out of CONTEXT_APPS)"
    fi
    log "python context: PYTHONPATH=$PYTHON_PATH"
fi

# demo-go is always needed: it is C. build.sh is idempotent (under a second when up to date).
build_langs=(go)
want java && build_langs+=(java)
want python && build_langs+=(python)
log "checking the demo apps (e2e/apps/build.sh ${build_langs[*]})"
built=$("$ROOT/e2e/apps/build.sh" "${build_langs[@]}" | grep -E '^demo-[a-z-]+=' ) || die "e2e/apps/build.sh failed"
app_path() { sed -n "s/^$1=//p" <<<"$built"; }
DEMO_GO=$(app_path demo-go)
DEMO_GO_OTEL=$(app_path demo-go-otel)
DEMO_JAVA=$(app_path demo-java)
DEMO_PYTHON=$(app_path demo-python)

# ---------------------------------------------------------------- processes and cleanup
WORK=$(mktemp -d /tmp/lanemesh-context-bench.XXXXXX)
PIDS=()

cleanup() {
    local status=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    if [ "$status" = 0 ]; then rm -rf "$WORK"; else log "logs kept in $WORK"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# healthy PORT : GET /healthz answers 200. Plain bash (/dev/tcp), no process per probe, so the start-up time of a
# fast app is not the probe's.
healthy() {
    local fd line
    { exec {fd}<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
    printf 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&"$fd" 2>/dev/null || true
    IFS= read -r -t 5 -u "$fd" line 2>/dev/null || line=
    exec {fd}>&-
    [[ $line == "HTTP/1."?" 200"* ]]
}

now_us() { local t=${EPOCHREALTIME/[.,]/}; echo "$((10#$t))"; }

# start NAME PORT CMD... : starts CMD in the background (env VAR=... and the launchers exec, so $! stays the app's
# pid), waits for /healthz; sets LAST_PID and STARTUP_MS.
LAST_PID=
STARTUP_MS=
start() {
    local name=$1 port=$2 t0 deadline
    shift 2
    healthy "$port" && die "$name: something already answers on 127.0.0.1:$port (CONTEXT_PORT)"
    t0=$(now_us)
    "$@" >"$WORK/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    deadline=$((t0 + START_TIMEOUT * 1000000))
    until healthy "$port"; do
        kill -0 "$LAST_PID" 2>/dev/null || die "$name exited during start-up: $(tail -5 "$WORK/$name.log")"
        [ "$(now_us)" -lt "$deadline" ] || die "$name: no 200 from /healthz within ${START_TIMEOUT}s (log: $WORK/$name.log)"
        sleep 0.005
    done
    STARTUP_MS=$(awk -v a="$t0" -v b="$(now_us)" 'BEGIN { printf "%.0f", (b - a) / 1000 }')
}

stop() { # PID : SIGTERM, then SIGKILL after 10 s; forgets the pid
    local pid=$1 p rest=()
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || rest+=("$p"); done
    PIDS=("${rest[@]}")
}

# shellcheck source=procstat.sh
source "$(dirname "${BASH_SOURCE[0]}")/procstat.sh"

# ---------------------------------------------------------------- load client
# N sequential keep-alive GET requests on one connection (reopened if the server closes it); a fresh random trace id
# per request. Prints "p50_ms p99_ms req_per_s errors".
cat >"$WORK/client.py" <<'EOF'
import http.client, math, os, sys, time

port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
errors, first_error = 0, None

def one():
    global conn, errors, first_error
    headers = {
        "traceparent": "00-%s-%s-01" % (os.urandom(16).hex(), os.urandom(8).hex()),
        "baggage": "x-mse-tag=gray",
    }
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        ok = resp.status == 200 and body.startswith(b"B[") and b" -> C[" in body
        detail = "%d %r" % (resp.status, body[:200])
    except (OSError, http.client.HTTPException) as e:
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        ok, detail = False, repr(e)
    if not ok:
        errors += 1
        first_error = first_error or detail

lat = []
t_start = time.perf_counter_ns()
for _ in range(n):
    t0 = time.perf_counter_ns()
    one()
    lat.append(time.perf_counter_ns() - t0)
elapsed = (time.perf_counter_ns() - t_start) / 1e9
lat.sort()
pct = lambda p: lat[max(0, math.ceil(p * len(lat)) - 1)] / 1e6
print("%.3f %.3f %.1f %d" % (pct(0.50), pct(0.99), n / elapsed, errors))
if first_error:
    print("first error: " + first_error, file=sys.stderr)
EOF

# ---------------------------------------------------------------- runs
C_PORT=$PORT
start C "$C_PORT" env -u JAVA_TOOL_OPTIONS -u PYTHONPATH "$DEMO_GO" --name=C --port="$C_PORT"
NEXT=http://127.0.0.1:$C_PORT
OTEL_ENV=(OTEL_PROPAGATORS=tracecontext,baggage OTEL_TRACES_EXPORTER=none OTEL_METRICS_EXPORTER=none
    OTEL_LOGS_EXPORTER=none OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.01 OTEL_SERVICE_NAME=b)
# The plain runs (and C) get none of it, whatever the caller's environment holds.
PLAIN=(env -u JAVA_TOOL_OPTIONS -u PYTHONPATH)
for v in "${OTEL_ENV[@]}"; do PLAIN+=(-u "${v%%=*}"); done

RESULTS=$WORK/results.tsv
: >"$RESULTS"

# b_cmd VARIANT NEXT : sets B_PORT and B_CMD, the command line of B in VARIANT with --next=NEXT.
B_PORT=
B_CMD=()
b_cmd() {
    case $1 in
        java) B_PORT=$((PORT + 1)); B_CMD=("${PLAIN[@]}" "$DEMO_JAVA") ;;
        java+agent) B_PORT=$((PORT + 2)); B_CMD=(env "${OTEL_ENV[@]}" "JAVA_TOOL_OPTIONS=-javaagent:$JAVA_AGENT" "$DEMO_JAVA") ;;
        python) B_PORT=$((PORT + 3)); B_CMD=("${PLAIN[@]}" "$DEMO_PYTHON") ;;
        python+context) B_PORT=$((PORT + 4)); B_CMD=(env "${OTEL_ENV[@]}" "PYTHONPATH=$PYTHON_PATH" "$DEMO_PYTHON") ;;
        go) B_PORT=$((PORT + 5)); B_CMD=("${PLAIN[@]}" "$DEMO_GO") ;;
        go-otel) B_PORT=$((PORT + 6)); B_CMD=("${PLAIN[@]}" "$DEMO_GO_OTEL") ;;
        *) die "unknown variant $1" ;;
    esac
    B_CMD+=(--name=B "--port=$B_PORT" "--next=$2")
}
variants_of() { # APP -> its plain and its instrumented variant
    case $1 in java) echo java java+agent ;; python) echo python python+context ;; go) echo go go-otel ;; esac
}

# probe VARIANT : B in VARIANT, in front of an echo server instead of C, must forward the incoming traceparent
# (same trace id) and baggage when instrumented, and neither when plain; otherwise the table would compare nothing.
cat >"$WORK/probe.py" <<'EOF'
import sys, urllib.request

req = urllib.request.Request("http://127.0.0.1:%s/b" % sys.argv[1], headers={
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "baggage": "x-mse-tag=gray"})
body = urllib.request.urlopen(req, timeout=20).read().decode()
tp, _, bg = body.partition(" -> tp=")[2].partition(" bg=")
if tp.split("-")[1:2] == ["0af7651916cd43dd8448eb211c80319c"] and "x-mse-tag=gray" in bg:
    print("yes")
elif tp == "" and bg == "":
    print("no")
else:
    print("partly: " + body)
EOF
probe() {
    local variant=$1 want_ctx=yes got
    [[ $variant == *[+-]* ]] || want_ctx=no
    b_cmd "$variant" "http://127.0.0.1:$ECHO_PORT"
    start "$variant.probe" "$B_PORT" "${B_CMD[@]}"
    got=$(timeout 30 python3 "$WORK/probe.py" "$B_PORT" 2>&1) || got="probe failed: $got"
    stop "$LAST_PID"
    [ "$got" = "$want_ctx" ] ||
        die "$variant: forwards traceparent and baggage: '$got', expected '$want_ctx' (log: $WORK/$variant.probe.log)"
    log "$variant: forwards traceparent and baggage: $got, as expected (start-up $STARTUP_MS ms)"
}

# run VARIANT : one measurement of B in VARIANT in front of C; appends a line to RESULTS.
run() {
    local variant=$1 pid procs=() t0 t1 out p50 p99 rps errors rss
    b_cmd "$variant" "$NEXT"
    log "round $ROUND: $variant: starting"
    start "$variant.$ROUND" "$B_PORT" "${B_CMD[@]}"
    pid=$LAST_PID
    log "round $ROUND: $variant: healthy after $STARTUP_MS ms; $WARMUP + $REQUESTS requests"
    # Warm-up and measured requests are two client runs, so that the CPU window holds the measured ones only.
    if [ "$WARMUP" -gt 0 ]; then
        out=$(timeout 900 python3 "$WORK/client.py" "$B_PORT" /b "$WARMUP" 2>>"$WORK/$variant.$ROUND.client.err") ||
            die "$variant: warm-up failed ($(cat "$WORK/$variant.$ROUND.client.err"))"
        [ "${out##* }" = 0 ] || log "round $ROUND: $variant: ${out##* } errors in the warm-up"
    fi
    mapfile -t procs < <(proc_tree "$pid")
    t0=$(cpu_ticks "${procs[@]}")
    out=$(timeout 900 python3 "$WORK/client.py" "$B_PORT" /b "$REQUESTS" 2>>"$WORK/$variant.$ROUND.client.err") ||
        die "$variant: load client failed ($(cat "$WORK/$variant.$ROUND.client.err"))"
    t1=$(cpu_ticks "${procs[@]}")
    read -r p50 p99 rps errors <<<"$out"
    [ "$errors" = 0 ] || log "round $ROUND: $variant: $errors errors, e.g. $(cat "$WORK/$variant.$ROUND.client.err")"
    mapfile -t procs < <(proc_tree "$pid")
    rss=$(status_kb VmRSS "${procs[@]}")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$variant" "$ROUND" "$STARTUP_MS" "$p50" "$p99" "$rps" \
        "$(awk -v t="$((t1 - t0))" -v k="$TICKS" -v n="$REQUESTS" 'BEGIN { printf "%.1f", t * 1000 / k / n * 1000 }')" \
        "$rss" "$errors" >>"$RESULTS"
    stop "$pid"
}

# The echo server answers "tp=<traceparent> bg=<baggage>" (empty when absent); only the probes use it.
ECHO_PORT=$((PORT + 7))
cat >"$WORK/echo.py" <<'EOF'
import http.server, sys


class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = ("tp=%s bg=%s" % (self.headers.get("traceparent", ""), self.headers.get("baggage", ""))).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
EOF
start echo "$ECHO_PORT" python3 "$WORK/echo.py" "$ECHO_PORT"
ECHO_PID=$LAST_PID
for app in java python go; do
    if want "$app"; then
        for v in $(variants_of "$app"); do probe "$v"; done
    fi
done
stop "$ECHO_PID"

# Every round: plain and instrumented B of each app, one after the other, the order flipped every other round.
for ROUND in $(seq "$ROUNDS"); do
    for app in java python go; do
        if want "$app"; then
            read -r plain ctx <<<"$(variants_of "$app")"
            if ((ROUND % 2)); then
                run "$plain"
                run "$ctx"
            else
                run "$ctx"
                run "$plain"
            fi
        fi
    done
done

# ---------------------------------------------------------------- report
median() { # numbers on stdin -> their median
    sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
col_median() { awk -F'\t' -v n="$1" -v c="$2" '$1 == n { print $c }' "$RESULTS" | median; }
errors_of() { awk -F'\t' -v n="$1" '$1 == n { e += $9 } END { print e + 0 }' "$RESULTS"; }
# Columns: start-up ms, p50 ms, p99 ms, req/s, CPU ms/1k req, RSS kB.
COLS=(3 4 5 6 7 8)
FORMATS=(%.0f %.3f %.3f %.0f %.0f %.1f)
row() { # VARIANT LABEL
    local m=() i c cells=""
    for i in "${!COLS[@]}"; do
        c=$(col_median "$1" "${COLS[$i]}")
        [ "${COLS[$i]}" != 8 ] || c=$(awk -v k="$c" 'BEGIN { print k / 1024 }')
        cells+=" $(printf "${FORMATS[$i]}" "$c") |"
    done
    echo "| $2 |$cells $(errors_of "$1") |"
}
ratio_row() { # PLAIN CTX LABEL
    local i a b cells=""
    for i in "${!COLS[@]}"; do
        a=$(col_median "$1" "${COLS[$i]}")
        b=$(col_median "$2" "${COLS[$i]}")
        cells+=" $(awk -v a="$a" -v b="$b" 'BEGIN { if (a > 0) printf "%.2f", b / a; else print "-" }') |"
    done
    echo "| *$3* |$cells |"
}

echo
echo "## Context-forwarding cost ($(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), median of $ROUNDS round(s))"
echo
echo "B = the app under test, on loopback, --next to C (demo-go). Per run: start-up = exec to the first 200 from"
echo "/healthz; $WARMUP warm-up then $REQUESTS sequential keep-alive GET /b from one Python http.client connection, each"
echo "with its own \`traceparent\` (flags 01) and \`baggage: x-mse-tag=gray\`. CPU = utime+stime of B's processes over"
echo "the measured requests; RSS = VmRSS of B's processes after them (python: gunicorn master + worker). Ratios ="
echo "instrumented / plain (of the medians). The client's own time is in every latency. Checked before the runs:"
echo "each instrumented B forwards the incoming traceparent (same trace id) and baggage, each plain B neither."
echo
echo "| app | start-up ms | p50 ms | p99 ms | req/s | CPU ms/1k req | RSS MB | errors |"
echo "|---|---|---|---|---|---|---|---|"
if want java; then
    row java "java (demo-java)"
    row java+agent "java + OTel Java agent $(python3 -c '
import sys, zipfile
m = zipfile.ZipFile(sys.argv[1]).read("META-INF/MANIFEST.MF").decode()
print(next((l.split(":", 1)[1].strip() for l in m.splitlines() if l.startswith("Implementation-Version:")), ""))
' "$JAVA_AGENT" 2>/dev/null || true)"
    ratio_row java java+agent "java ratio"
fi
if want python; then
    row python "python (demo-python)"
    row python+context "python + opentelemetry-distro $(ls "$PYTHON_LIB" | sed -n 's/^opentelemetry_distro-\(.*\)\.dist-info$/\1/p')"
    ratio_row python python+context "python ratio"
fi
if want go; then
    row go "go (demo-go)"
    row go-otel "go-otel (demo-go-otel, otelhttp)"
    ratio_row go go-otel "go ratio"
fi
