#!/usr/bin/env bash
# Builds and tests the e2e demo apps (Go, Java/Spring Boot, Python/Flask) from
# e2e/apps/{go,java,python}. Needs go >= 1.26, java >= 17 + mvn, python3 >= 3.10
# (with venv); downloads from the Go module proxy, Maven Central and PyPI only.
#
# Usage: build.sh [--force] [go|java|python]...   (default: all three)
# Output: ${LANEMESH_CACHE:-$HOME/.cache/lanemesh}/apps/{demo-go,demo-go-otel,
#   demo-java.jar,demo-java,python/,demo-python}; last lines `key=<absolute path>`.
# Idempotent: an app is skipped when its stamp matches its sources, toolchain
# and recipe. --force rebuilds. Each build runs the app's own tests first.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${LANEMESH_CACHE:-$HOME/.cache/lanemesh}"
apps="$cache/apps"

force=0
want=()
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    go | java | python) want+=("$arg") ;;
    -h | --help)
      sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "build.sh: unknown argument: $arg (try --help)" >&2
      exit 2
      ;;
  esac
done
[[ ${#want[@]} -gt 0 ]] || want=(go java python)

die() {
  echo "build.sh: $*" >&2
  exit 1
}

# Every stamp covers this script too: a changed recipe rebuilds.
self_hash="$(sha256sum <"${BASH_SOURCE[0]}" | cut -d' ' -f1)"

mkdir -p "$apps"
# Serialise concurrent callers sharing the cache.
if command -v flock >/dev/null; then
  exec 9>"$apps/.lock"
  flock 9
fi

# stamp_of DIR RECIPE: hash of the sources under DIR (build output excluded),
# their relative paths, and RECIPE (toolchain versions, flags).
stamp_of() {
  local dir="$1" recipe="$2"
  (
    cd "$dir"
    find . \( -name target -o -name __pycache__ -o -name .pytest_cache \) -prune -o -type f -print0 |
      LC_ALL=C sort -z | xargs -0 sha256sum
    echo "$recipe build.sh=$self_hash"
  ) | sha256sum | cut -d' ' -f1
}

# fresh NAME STAMP OUTPUT...: true when NAME need not be rebuilt.
fresh() {
  local name="$1" stamp="$2"
  shift 2
  [[ $force == 0 && -f "$apps/.stamp-$name" && "$(cat "$apps/.stamp-$name")" == "$stamp" ]] || return 1
  local out
  for out in "$@"; do
    [[ -e "$out" ]] || return 1
  done
}

build_go() {
  command -v go >/dev/null || die "'go' not found; install Go >= 1.26 (the Go module proxy must be reachable)"
  export GOMODCACHE="$cache/gomod" GOCACHE="$cache/gobuild"
  export GOFLAGS="-buildvcs=false -mod=readonly" CGO_ENABLED=0 GOTOOLCHAIN=local
  local recipe stamp start tmp
  recipe="$(go env GOVERSION GOOS GOARCH) trimpath ldflags=-s -w; demo-go-otel: tags=otel"
  stamp="$(stamp_of "$here/go" "$recipe")"
  if fresh go "$stamp" "$apps/demo-go" "$apps/demo-go-otel"; then
    echo "build.sh: demo-go and demo-go-otel up to date"
    return
  fi
  echo "build.sh: building demo-go and demo-go-otel ($(go env GOVERSION))"
  start=$(date +%s)
  rm -f "$apps/.stamp-go"
  # (&&: set -e does not apply left of ||)
  (cd "$here/go" && go vet ./... && go test -count=1 ./...) || die "demo-go: tests failed"
  # With -tags otel the app forwards traceparent and baggage, which is exactly
  # what TestForwardsNoIncomingHeader rules out for the plain build; otel_test.go
  # checks the otel variant's forwarding instead.
  (cd "$here/go" && go vet -tags otel ./... &&
    go test -tags otel -count=1 -skip '^TestForwardsNoIncomingHeader$' ./...) || die "demo-go-otel: tests failed"
  local out tags
  for out in demo-go demo-go-otel; do
    tags=""
    [[ $out != demo-go-otel ]] || tags=otel
    tmp="$(mktemp "$apps/.$out.XXXXXX")"
    (cd "$here/go" && go build -tags="$tags" -trimpath -ldflags="-s -w" -o "$tmp" .) || {
      rm -f "$tmp"
      die "$out: go build failed"
    }
    mv -f "$tmp" "$apps/$out"
  done
  echo "$stamp" >"$apps/.stamp-go"
  echo "build.sh: demo-go and demo-go-otel built in $(($(date +%s) - start))s"
}

build_java() {
  local java_bin
  if [[ -n "${JAVA_HOME:-}" ]]; then
    java_bin="$JAVA_HOME/bin/java"
  else
    java_bin="$(command -v java || true)"
  fi
  [[ -x "$java_bin" ]] || die "'java' not found; install a JDK >= 17 (e.g. apt-get install openjdk-17-jdk-headless)"
  command -v mvn >/dev/null || die "'mvn' not found; install Maven >= 3.6.3 (e.g. apt-get install maven)"
  java_bin="$(readlink -f "$java_bin")"
  local java_version major
  java_version="$("$java_bin" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.version = //p')"
  major="${java_version%%.*}"
  [[ "$major" =~ ^[0-9]+$ && "$major" -ge 17 ]] || die "Java >= 17 needed, $java_bin is '$java_version'"

  local recipe stamp start build_dir
  recipe="java=$java_bin $java_version $(mvn -v 2>/dev/null | sed -n 1p)"
  stamp="$(stamp_of "$here/java" "$recipe")"
  if fresh java "$stamp" "$apps/demo-java.jar" "$apps/demo-java"; then
    echo "build.sh: demo-java up to date"
    return
  fi
  echo "build.sh: building demo-java.jar (Java $java_version; Maven repository $cache/m2)"
  start=$(date +%s)
  rm -f "$apps/.stamp-java"
  # Maven's output directory lives in the cache, not in the checkout.
  build_dir="$apps/.java-target"
  rm -rf "$build_dir"
  # (Debian's Maven 3.8 prints ANSI resets even with -B: sed drops them;
  # pipefail keeps mvn's status.)
  (
    cd "$here/java" &&
      JAVA_HOME="$(dirname "$(dirname "$java_bin")")" mvn -B -q \
        -Dmaven.repo.local="$cache/m2" \
        -Ddemo.build.dir="$build_dir" \
        -Dmaven.test.redirectTestOutputToFile=true \
        package 2>&1 | sed 's/\x1b\[[0-9;]*m//g'
  ) || die "demo-java: mvn package failed (test logs: $build_dir/surefire-reports)"
  mv -f "$build_dir/demo-java.jar" "$apps/demo-java.jar"
  rm -rf "$build_dir"
  cat >"$apps/demo-java.tmp" <<EOF
#!/bin/sh
# Generated by lanemesh e2e/apps/build.sh: runs demo-java.jar with the JVM it was built with.
# JAVA_OPTS replaces the default JVM options (small heap, quick start-up).
exec "$java_bin" \${JAVA_OPTS:--XX:+UseSerialGC -Xmx256m -XX:TieredStopAtLevel=1} -jar "$apps/demo-java.jar" "\$@"
EOF
  chmod +x "$apps/demo-java.tmp"
  mv -f "$apps/demo-java.tmp" "$apps/demo-java"
  echo "$stamp" >"$apps/.stamp-java"
  echo "build.sh: demo-java built in $(($(date +%s) - start))s"
}

build_python() {
  command -v python3 >/dev/null || die "'python3' not found; install Python >= 3.10"
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    die "Python >= 3.10 needed, python3 is $(python3 --version 2>&1)"
  local py_bin recipe stamp start venv="$apps/python"
  py_bin="$(python3 -c 'import sys; print(sys.executable)')"
  recipe="python=$py_bin $(python3 --version 2>&1)"
  stamp="$(stamp_of "$here/python" "$recipe")"
  if fresh python "$stamp" "$venv/bin/python" "$venv/app/demo_app.py" "$apps/demo-python"; then
    echo "build.sh: demo-python up to date"
    return
  fi
  echo "build.sh: building demo-python ($(python3 --version 2>&1), venv $venv)"
  start=$(date +%s)
  rm -f "$apps/.stamp-python"
  # A venv holds its own absolute path, so it is made in place.
  rm -rf "$venv"
  python3 -m venv "$venv" ||
    die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
  "$venv/bin/python" -m pip install -q --no-input --disable-pip-version-check \
    -r "$here/python/requirements.txt" -r "$here/python/requirements-test.txt" ||
    die "demo-python: pip install failed"
  # Leave no __pycache__ or .pytest_cache in the checkout.
  (
    cd "$here/python" &&
      PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider \
        --rootdir="$here/python" test_demo_app.py
  ) || die "demo-python: tests failed"
  mkdir -p "$venv/app"
  cp "$here/python/demo_app.py" "$venv/app/demo_app.py"
  cat >"$apps/demo-python.tmp" <<EOF
#!/bin/sh
# Generated by lanemesh e2e/apps/build.sh: runs the Flask demo app in its venv.
exec "$venv/bin/python" -u "$venv/app/demo_app.py" "\$@"
EOF
  chmod +x "$apps/demo-python.tmp"
  mv -f "$apps/demo-python.tmp" "$apps/demo-python"
  echo "$stamp" >"$apps/.stamp-python"
  echo "build.sh: demo-python built in $(($(date +%s) - start))s"
}

for lang in "${want[@]}"; do
  "build_$lang"
done

# Entry commands, one `key=absolute path` a line, for other scripts to parse.
for lang in "${want[@]}"; do
  echo "demo-$lang=$apps/demo-$lang"
  [[ $lang != go ]] || echo "demo-go-otel=$apps/demo-go-otel"
  [[ $lang != java ]] || echo "demo-java-jar=$apps/demo-java.jar"
done
