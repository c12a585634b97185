#!/usr/bin/env bash
# Builds lanemesh-node (a virtual-kubelet node that runs pods as processes in
# network namespaces, see README.md beside this script) from this Go module.
#
# Output: ${LANEMESH_CACHE:-$HOME/.cache/lanemesh}/bin/lanemesh-node
# Idempotent: skips the build when the binary exists and the stamp file says
# it was built from the same go.mod/go.sum, sources and recipe. --force rebuilds.
#
# The first build compiles client-go and virtual-kubelet: about 5 minutes on
# 2 cores plus module downloads (shared with e2e/cluster/build.sh's module
# cache). Later runs take a second, a source change ~30 s.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${LANEMESH_CACHE:-$HOME/.cache/lanemesh}"
bin_dir="$cache/bin"
stamp="$bin_dir/.stamp-node"
binary="$bin_dir/lanemesh-node"

force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h | --help)
      sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "build.sh: unknown argument: $arg" >&2
      exit 2
      ;;
  esac
done

command -v go >/dev/null || {
  echo "build.sh: 'go' not found; install Go >= 1.26 (the module proxy must be reachable)" >&2
  exit 1
}

# Same caches as e2e/cluster/build.sh: one `rm -rf ~/.cache/lanemesh` removes everything.
export GOMODCACHE="$cache/gomod"
export GOCACHE="$cache/gobuild"
# The module sits inside the lanemesh git checkout; VCS stamping would make
# the binary depend on the checkout's state.
export GOFLAGS="-buildvcs=false -mod=readonly"
export CGO_ENABLED=0

mkdir -p "$bin_dir"

# Serialise concurrent callers (e.g. parallel CI jobs sharing the cache). Its
# own lock file: e2e/cluster/build.sh runs this script while holding
# "$bin_dir/.lock", and a second flock on that file from here would wait forever.
if command -v flock >/dev/null; then
  exec 8>"$bin_dir/.lock-node"
  flock 8
fi

cd "$here"
ldflags="-s -w"
recipe="trimpath cgo=0 ldflags=$ldflags"
# go.mod, go.sum and every non-test Go source, in a stable order.
want_stamp="$(
  {
    cat go.mod go.sum
    find . -maxdepth 1 -name '*.go' ! -name '*_test.go' | LC_ALL=C sort | while read -r f; do
      echo "== $f"
      cat "$f"
    done
    echo "$recipe"
  } | sha256sum | cut -d' ' -f1
)"

if [[ $force == 0 && -x "$binary" && -f "$stamp" && "$(cat "$stamp")" == "$want_stamp" ]]; then
  echo "build.sh: lanemesh-node up to date"
else
  echo "build.sh: building lanemesh-node into $bin_dir"
  start=$(date +%s)
  out="$(mktemp -d "$bin_dir/.build.XXXXXX")"
  trap 'rm -rf "$out"' EXIT
  go build -trimpath -ldflags="$ldflags" -o "$out/lanemesh-node" .
  rm -f "$stamp"
  mv -f "$out/lanemesh-node" "$binary"
  echo "$want_stamp" >"$stamp"
  echo "build.sh: built lanemesh-node in $(($(date +%s) - start))s"
fi

printf '  %-15s %s (%s)\n' lanemesh-node "$binary" "$(du -h "$binary" | cut -f1)"
