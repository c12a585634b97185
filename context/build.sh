#!/usr/bin/env bash
# Builds the payloads of the context images (what lanemesh-context copies into a pod):
#   java:   opentelemetry-javaagent.jar (Maven Central, version in java/VERSION)
#   python: boot/sitecustomize.py + lib/ (python/requirements.txt from PyPI, pip --target,
#           for the host's python3: the local cluster's apps run on it)
#
# Usage: build.sh [--force] [java|python]...   (default: both)
# Output: ${LANEMESH_CACHE:-$HOME/.cache/lanemesh}/context/{java,python}/; last lines
#   `context-<lang>=<absolute path>`. Idempotent: skipped when the stamp matches the inputs.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${LANEMESH_CACHE:-$HOME/.cache/lanemesh}"
out="$cache/context"

force=0
want=()
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    java | python) want+=("$arg") ;;
    -h | --help)
      sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "context/build.sh: unknown argument: $arg (try --help)" >&2
      exit 2
      ;;
  esac
done
[[ ${#want[@]} -gt 0 ]] || want=(java python)

die() {
  echo "context/build.sh: $*" >&2
  exit 1
}

mkdir -p "$out"
exec 9>"$out/.lock"
flock 9

self_hash="$(sha256sum <"${BASH_SOURCE[0]}" | cut -d' ' -f1)"

# fresh NAME STAMP: true when the payload NAME was built from the same inputs.
fresh() {
  [[ $force == 0 && -f "$out/.stamp-$1" && "$(cat "$out/.stamp-$1")" == "$2" && -d "$out/$1" ]]
}

build_java() {
  command -v mvn >/dev/null || die "'mvn' not found (apt-get install maven)"
  local version stamp tmp start
  version="$(tr -d '[:space:]' <"$here/java/VERSION")"
  stamp="$(echo "javaagent=$version build.sh=$self_hash" | sha256sum | cut -d' ' -f1)"
  if fresh java "$stamp" && [[ -s "$out/java/opentelemetry-javaagent.jar" ]]; then
    echo "context/build.sh: java payload up to date (agent $version)"
    return
  fi
  start=$(date +%s)
  tmp="$(mktemp -d "$out/.java.XXXXXX")"
  mvn -B -q -Dmaven.repo.local="$cache/m2" dependency:copy \
    -Dartifact="io.opentelemetry.javaagent:opentelemetry-javaagent:$version" \
    -DoutputDirectory="$tmp" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' ||
    die "downloading opentelemetry-javaagent $version from Maven Central failed"
  mv "$tmp/opentelemetry-javaagent-$version.jar" "$tmp/opentelemetry-javaagent.jar"
  chmod -R a+rX "$tmp"
  rm -rf "$out/java"
  mv "$tmp" "$out/java"
  echo "$stamp" >"$out/.stamp-java"
  echo "context/build.sh: java payload built in $(($(date +%s) - start))s (agent $version)"
}

build_python() {
  command -v python3 >/dev/null || die "'python3' not found"
  local py stamp tmp start
  py="$(python3 -c 'import sys; print(sys.executable, sys.version.split()[0])')"
  stamp="$(cat "$here/python/requirements.txt" "$here/python/sitecustomize.py" |
    sha256sum | cut -d' ' -f1)-$(echo "$py build.sh=$self_hash" | sha256sum | cut -c1-16)"
  if fresh python "$stamp" && [[ -f "$out/python/boot/sitecustomize.py" ]]; then
    echo "context/build.sh: python payload up to date"
    return
  fi
  start=$(date +%s)
  tmp="$(mktemp -d "$out/.python.XXXXXX")"
  python3 -m pip install -q --no-input --disable-pip-version-check --no-deps \
    --no-compile --target "$tmp/lib" -r "$here/python/requirements.txt" ||
    die "pip install of python/requirements.txt failed"
  # The payload is read-only in the pod: precompile, so no app start tries to write bytecode.
  python3 -m compileall -q "$tmp/lib" >/dev/null || true
  mkdir -p "$tmp/boot"
  cp "$here/python/sitecustomize.py" "$tmp/boot/sitecustomize.py"
  chmod -R a+rX "$tmp"
  rm -rf "$out/python"
  mv "$tmp" "$out/python"
  echo "$stamp" >"$out/.stamp-python"
  echo "context/build.sh: python payload built in $(($(date +%s) - start))s ($py)"
}

for lang in "${want[@]}"; do
  "build_$lang"
done
for lang in "${want[@]}"; do
  echo "context-$lang=$out/$lang"
done
