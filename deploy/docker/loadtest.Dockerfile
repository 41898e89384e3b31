# syntax=docker/dockerfile:1.7
# switchyard-loadtest image: the mock provider (`mock`) and the load
# generator (`run SCENARIO`), with the scenarios under /scenarios. Used by
# docker-compose.yml for the mock regions and the smoke run. Build from the
# repository root:
#   docker build -f deploy/docker/loadtest.Dockerfile -t switchyard-loadtest .
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
    cargo build --release --locked -p switchyard-loadtest --bin switchyard-loadtest \
 && install -D -m 0755 target/release/switchyard-loadtest /out/switchyard-loadtest

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/switchyard-loadtest /usr/local/bin/switchyard-loadtest
COPY loadtest/scenarios /scenarios
USER 65532:65532
EXPOSE 9000 9001
ENTRYPOINT ["/usr/local/bin/switchyard-loadtest"]
CMD ["mock", "--listen", "0.0.0.0:9000", "--control-listen", "0.0.0.0:9001"]
