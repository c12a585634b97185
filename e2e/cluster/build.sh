#!/usr/bin/env bash
# Builds the local cluster's components from Go modules (no prebuilt downloads,
# no Docker): kube-apiserver, kube-controller-manager, kube-scheduler,
# kube-proxy, kubectl and etcd from the versions pinned in e2e/cluster/go, helm
# from e2e/cluster/helm, CoreDNS from e2e/cluster/coredns, and lanemesh-node
# (e2e/cluster/node/build.sh).
#
# Output: ${LANEMESH_CACHE:-$HOME/.cache/lanemesh}/bin/
# Idempotent: skips a build when its binaries exist and the stamp file says
# they were built from the same go.mod/go.sum and recipe. --force rebuilds.
#
# The first build compiles most of Kubernetes: about 15 minutes on 2 cores
# plus ~2 minutes of module downloads, and ~4 GiB of module and build cache.
# Later runs take a second.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mod_dir="$here/go"
cache="${LANEMESH_CACHE:-$HOME/.cache/lanemesh}"
bin_dir="$cache/bin"
stamp="$bin_dir/.stamp"
binaries=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy etcd kubectl)

force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h | --help)
      sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "build.sh: unknown argument: $arg" >&2
      exit 2
      ;;
  esac
done

command -v go >/dev/null || {
  echo "build.sh: 'go' not found; install Go >= 1.25 (the module proxy must be reachable)" >&2
  exit 1
}

# Own caches under the lanemesh cache so the checkout stays clean and one
# `rm -rf ~/.cache/lanemesh` removes everything this tier downloaded.
export GOMODCACHE="$cache/gomod"
export GOCACHE="$cache/gobuild"
# The wrapper module sits inside the lanemesh git checkout; VCS stamping would
# make the binaries depend on the checkout's state.
export GOFLAGS="-buildvcs=false -mod=readonly"
export CGO_ENABLED=0

mkdir -p "$bin_dir"

# Serialise concurrent callers (e.g. parallel CI jobs sharing the cache).
if command -v flock >/dev/null; then
  exec 9>"$bin_dir/.lock"
  flock 9
fi

cd "$mod_dir"
k8s_version="$(go list -m -f '{{.Version}}' k8s.io/kubernetes)"
etcd_version="$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)"
k8s_major="${k8s_version#v}"
k8s_major="${k8s_major%%.*}"
k8s_minor="${k8s_version#v*.}"
k8s_minor="${k8s_minor%%.*}"

# Same variables upstream's hack/lib/version.sh sets, so `kubectl version` and
# /version report the real release instead of v0.0.0-master.
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$k8s_version"
  ldflags+=" -X $pkg.gitMajor=$k8s_major"
  ldflags+=" -X $pkg.gitMinor=$k8s_minor"
  ldflags+=" -X $pkg.gitTreeState=clean"
done

recipe="trimpath cgo=0 ldflags=$ldflags"
want_stamp="$(cat go.mod go.sum <(echo "$recipe") | sha256sum | cut -d' ' -f1)"

up_to_date=1
for b in "${binaries[@]}"; do
  [[ -x "$bin_dir/$b" ]] || up_to_date=0
done
[[ -f "$stamp" && "$(cat "$stamp")" == "$want_stamp" ]] || up_to_date=0

if [[ $force == 0 && $up_to_date == 1 ]]; then
  echo "build.sh: up to date (kubernetes $k8s_version, etcd $etcd_version)"
else
  echo "build.sh: building kubernetes $k8s_version and etcd $etcd_version into $bin_dir"
  echo "build.sh: GOMODCACHE=$GOMODCACHE GOCACHE=$GOCACHE"
  start=$(date +%s)
  out="$(mktemp -d "$bin_dir/.build.XXXXXX")"
  trap 'rm -rf "$out"' EXIT
  # One `go build` for all of them so shared packages compile once and both
  # cores stay busy.
  go build -trimpath -ldflags="$ldflags" -o "$out/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kube-proxy \
    k8s.io/kubernetes/cmd/kubectl \
    go.etcd.io/etcd/server/v3
  # The etcd main package is the root of go.etcd.io/etcd/server/v3, so go
  # names the binary after the path element before the major-version suffix.
  mv "$out/server" "$out/etcd"
  rm -f "$stamp"
  for b in "${binaries[@]}"; do
    mv -f "$out/$b" "$bin_dir/$b"
  done
  echo "$want_stamp" >"$stamp"
  echo "build.sh: built in $(($(date +%s) - start))s"
fi

# A component in a wrapper module of its own (it brings other k8s.io versions
# than the cluster's), with its own stamp: module dir, binary, package, ldflags.
build_module() {
  local dir="$1" name="$2" pkg="$3" flags="$4"
  cd "$here/$dir"
  local version
  version="$(go list -m -f '{{.Version}}' "${pkg%%/cmd/*}")"
  local stamp_file="$bin_dir/.stamp-$name"
  local want
  want="$(cat go.mod go.sum <(echo "trimpath cgo=0 ldflags=$flags") | sha256sum | cut -d' ' -f1)"
  if [[ $force == 0 && -x "$bin_dir/$name" && -f "$stamp_file" && "$(cat "$stamp_file")" == "$want" ]]; then
    echo "build.sh: up to date ($name $version)"
    return
  fi
  echo "build.sh: building $name $version into $bin_dir"
  local began
  began=$(date +%s)
  # Global, so the EXIT trap removes it if the build fails.
  out="$(mktemp -d "$bin_dir/.build.XXXXXX")"
  trap 'rm -rf "$out"' EXIT
  go build -trimpath -ldflags="$flags" -o "$out/$name" "$pkg"
  rm -f "$stamp_file"
  mv -f "$out/$name" "$bin_dir/$name"
  rm -rf "$out"
  echo "$want" >"$stamp_file"
  echo "build.sh: built $name in $(($(date +%s) - began))s"
}

helm_version="$(cd "$here/helm" && go list -m -f '{{.Version}}' helm.sh/helm/v4)"
build_module helm helm helm.sh/helm/v4/cmd/helm \
  "-s -w -X helm.sh/helm/v4/internal/version.version=$helm_version"
coredns_version="$(cd "$here/coredns" && go list -m -f '{{.Version}}' github.com/coredns/coredns)"
build_module coredns coredns github.com/coredns/coredns \
  "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$coredns_version"

# The node that runs pods (our virtual-kubelet provider): its own module and script.
bash "$here/node/build.sh"

for b in "${binaries[@]}" helm coredns lanemesh-node; do
  printf '  %-24s %s (%s)\n' "$b" "$bin_dir/$b" "$(du -h "$bin_dir/$b" | cut -f1)"
done
echo "LANEMESH_CLUSTER_BIN=$bin_dir"
