#!/usr/bin/env bash
# The one test command (`make test`): installs what the suite needs,
# idempotently, then runs every tier. A fresh machine needs only Rust (with
# rustfmt and clippy), Go and the package registries.
#
# Heavy artefacts are cached outside the checkout under
# ${LANEMESH_CACHE:-$HOME/.cache/lanemesh}: the Cargo target dir, the Go
# module and build caches, and the kube-apiserver/etcd/kubectl binaries.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export LANEMESH_CACHE="${LANEMESH_CACHE:-$HOME/.cache/lanemesh}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LANEMESH_CACHE/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Incremental artifacts only help edit-compile loops; in CI they grow the shared target dir by gigabytes a run.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# Each step's duration is printed when the next one starts, and the total at the end, so a
# slow tier on a fresh machine shows in the log.
step_name=""
step_start=$SECONDS
step() {
  [ -z "$step_name" ] || printf '==> %s took %ds\n' "$step_name" $((SECONDS - step_start))
  step_name="$*"
  step_start=$SECONDS
  printf '\n==> %s\n' "$*"
}

step "toolchain"
for tool in cargo go; do
  command -v "$tool" >/dev/null || { echo "test.sh: '$tool' is required" >&2; exit 1; }
done
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
cargo --version
go version

step "system packages (iptables, iproute2, setpriv, python3 for the capture tests)"
bash scripts/system-packages.sh

step "local cluster binaries (Kubernetes components, etcd, helm, CoreDNS, lanemesh-node from Go modules; cached)"
bash e2e/cluster/build.sh

step "demo apps (Go, Java/Spring Boot, Python/Flask from their registries; cached)"
bash e2e/apps/build.sh

step "context payloads (OpenTelemetry Java agent from Maven Central, Python auto-instrumentation from PyPI; cached)"
bash context/build.sh

step "console browser check (Debian's chromium, playwright-core from npm; cached)"
bash e2e/console/install.sh

step "format"
cargo fmt --all --check

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "structure (layers as lib.rs lists them, no import cycles between sibling modules, no too_many_arguments)"
python3 scripts/check-structure.py sidecar/src control-plane/src api/src ctl/src e2e/src

step "CRDs in sync with the Rust types"
cargo run --quiet --locked -p lanemesh-api --bin crdgen -- --check

step "fuzz smoke (every fuzz target 15 s, instrumented build cached)"
bash scripts/fuzz.sh smoke

step "tests (unit, integration, local cluster)"
cargo test --workspace --locked --no-fail-fast
step "done"
printf '==> total %ds\n' "$SECONDS"
