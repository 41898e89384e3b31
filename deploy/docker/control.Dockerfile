# syntax=docker/dockerfile:1.7
# switchyard-control image (also ships switchyard-ctl). Build from the
# repository root:
#   docker build -f deploy/docker/control.Dockerfile -t switchyard-control .
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
    cargo build --release --locked -p switchyard-controlplane --bins \
 && install -D -m 0755 target/release/switchyard-control /out/switchyard-control \
 && install -D -m 0755 target/release/switchyard-ctl /out/switchyard-ctl \
 && install -d -m 0700 /out/data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/switchyard-control /out/switchyard-ctl /usr/local/bin/
# Embedded store (single replica); with SWITCHYARD_ETCD_ENDPOINTS it is unused.
COPY --from=build --chown=65532:65532 /out/data /var/lib/switchyard-control
USER 65532:65532
ENV SWITCHYARD_CONTROL_LISTEN=0.0.0.0:7400 \
    SWITCHYARD_DATA_DIR=/var/lib/switchyard-control \
    SWITCHYARD_LOG=info
EXPOSE 7400
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/switchyard-control"]
CMD ["--log-format", "json"]
