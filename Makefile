# The two commands the README gives a new user, plus helpers.
.PHONY: demo cluster-demo test crds fmt lint cluster-bins bench bench-policy bench-control-plane bench-context fuzz fuzz-smoke

export LANEMESH_CACHE ?= $(HOME)/.cache/lanemesh
export CARGO_TARGET_DIR ?= $(LANEMESH_CACHE)/target

## demo: (root) the product live without Kubernetes: the pilot on a local directory, the gateway
## and the seed's apps in network namespaces behind real capture rules, each step of seed 002/003
## printed; cleaned up at the end or on Ctrl-C (ARGS=--keep: keep it running until Ctrl-C)
demo:
	bash scripts/system-packages.sh
	bash e2e/apps/build.sh go
	cargo run --quiet --release --locked -p lanemesh-e2e --bin lanemesh-demo -- $(ARGS)

## cluster-demo: (root) the local cluster, `helm install` of the chart, the seed's Go/Java/Python apps,
## then each lane and policy of examples/ with what requests show; torn down at the end
## (ARGS=--keep: keep it running until Ctrl-C)
cluster-demo:
	bash e2e/cluster/build.sh
	bash e2e/apps/build.sh
	bash context/build.sh
	cargo run --quiet --locked -p lanemesh-e2e --bin lanemesh-cluster-demo -- $(ARGS)

## test: install what the suite needs (idempotent) and run every test tier
test:
	bash scripts/test.sh

## crds: regenerate charts/lanemesh/crds from the Rust types
crds:
	cargo run --quiet -p lanemesh-api --bin crdgen

fmt:
	cargo fmt --all

lint:
	cargo clippy --workspace --all-targets -- -D warnings

## cluster-bins: build kube-apiserver, etcd and kubectl into the cache
cluster-bins:
	bash e2e/cluster/build.sh

## bench: sidecar data-plane benchmark (root; netns + iptables): direct vs lanemesh vs HAProxy vs nginx, one hop
bench:
	bash e2e/bench/sidecar.sh

## bench-context: what injected context propagation costs an app: demo-java with and without the
## OpenTelemetry Java agent, demo-python with and without the auto-instrumentation, demo-go and
## demo-go-otel, side by side on loopback (start-up, p50/p99, req/s, CPU, RSS; table with ratios)
bench-context:
	bash context/build.sh
	bash e2e/bench/context.sh

## bench-policy: criterion benchmark of the per-request governance decision (route match, QPS, concurrency, breaker)
bench-policy:
	CARGO_TARGET_DIR=$${CARGO_TARGET_DIR:-$$HOME/.cache/lanemesh/target} cargo bench -p lanemesh-sidecar --bench decision

## bench-control-plane: control-plane scale benchmark: real lanemesh-pilot, 5,000 pods, 2,000 simulated
## sidecar streams, 5 Lane changes; markdown table on stdout, exit 1 on a missed target (BENCH_ARGS=--help)
bench-control-plane:
	cargo build --release --locked -p lanemesh-control-plane --bin lanemesh-pilot
	ulimit -n 8192 2>/dev/null || true; \
	cargo run --release --locked -p lanemesh-e2e --bin lanemesh-scale-bench -- $(BENCH_ARGS)

## fuzz: coverage-guided fuzzing (cargo-afl, AFL++) of every parser of hostile input, FUZZ_SECONDS (600)
## per target, FUZZ_JOBS (1) at a time; exit 1 on a crash, findings in ~/.cache/lanemesh/fuzz-out
FUZZ_SECONDS ?= 600
FUZZ_JOBS ?= 1
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_JOBS=$(FUZZ_JOBS) bash scripts/fuzz.sh

## fuzz-smoke: every fuzz target for 15 s (part of `make test`)
fuzz-smoke:
	bash scripts/fuzz.sh smoke
