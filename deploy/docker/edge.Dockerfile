# syntax=docker/dockerfile:1.7
# switchyard-edge image. Build from the repository root:
#   docker build -f deploy/docker/edge.Dockerfile -t switchyard-edge .
#
# Stage 1 builds the release binary (cmake for Pingora's C deps, protoc for
# the gRPC schema); stage 2 is distroless/cc (glibc, libgcc, CA certificates,
# no shell) running as the unprivileged `nonroot` user (65532).
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p switchyard-dataplane --bin switchyard-edge \
 && install -D -m 0755 target/release/switchyard-edge /out/switchyard-edge \
 && install -d -m 0750 /out/state

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/switchyard-edge /usr/local/bin/switchyard-edge
# Last-known-good config snapshot (mount a volume here).
COPY --from=build --chown=65532:65532 /out/state /var/lib/switchyard-edge
USER 65532:65532
ENV SWITCHYARD_SNAPSHOT_DIR=/var/lib/switchyard-edge \
    SWITCHYARD_LOG=info
EXPOSE 8080 9901
STOPSIGNAL SIGTERM
# Client listener on 8080, admin (metrics, /healthz, /readyz) on 9901. The
# grace period must stay below the orchestrator's stop timeout (compose
# stop_grace_period, Kubernetes terminationGracePeriodSeconds).
ENTRYPOINT ["/usr/local/bin/switchyard-edge"]
CMD ["--listen", "0.0.0.0:8080", "--admin-listen", "0.0.0.0:9901", "--grace-period", "20s"]
