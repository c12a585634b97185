# The images the chart runs: `lanemesh/pilot` and `lanemesh/proxy` (DESIGN §7).
#
#   docker build --target pilot -t lanemesh/pilot:0.1.0 .
#   docker build --target proxy -t lanemesh/proxy:0.1.0 .
#
# The test suite runs the same binaries without images (the local cluster maps these image names
# to the built executables), so this file is not built by `make test`.
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p lanemesh-control-plane --bin lanemesh-pilot \
 && cargo build --release --locked -p lanemesh-sidecar --bin lanemesh-proxy

FROM gcr.io/distroless/cc-debian12:nonroot AS pilot
COPY --from=build /src/target/release/lanemesh-pilot /usr/local/bin/lanemesh-pilot
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/lanemesh-pilot"]

# The proxy image also runs the init container (`lanemesh-proxy init`), which needs iptables.
FROM debian:bookworm-slim AS proxy
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/lanemesh-proxy /usr/local/bin/lanemesh-proxy
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/lanemesh-proxy"]
