# syntax=docker/dockerfile:1
# The Cairn server image: `cairn` on Debian bookworm-slim, run as uid 10001.
#   docker build -t cairn:dev .
#   docker run -e CAIRN_ID=1 -e CAIRN_ADVERTISE=HOST:7001 \
#     -e CAIRN_INITIAL_CLUSTER=1=HOST:7001,... -p 7001:7001 -p 8001:8001 cairn:dev
# docs/deployment.md has the compose and Kubernetes setups; scripts/check-deploy.sh checks
# this file.

# --- build -------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
# No protoc package needed: crates/cairn-proto/build.rs runs the vendored protoc
# (protoc-bin-vendored). The caches keep crates and build output between image builds, so
# the binary is copied out of target/ within the same step.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p cairn-cli --bin cairn \
    && install -D -m 0755 target/release/cairn /out/cairn

# --- runtime -----------------------------------------------------------------------------
FROM debian:bookworm-slim
# A fixed uid/gid, so volumes and Kubernetes' runAsUser/fsGroup can name it.
RUN groupadd --system --gid 10001 cairn \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/cairn --no-create-home \
        --shell /usr/sbin/nologin cairn \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/cairn
COPY --from=builder /out/cairn /usr/local/bin/cairn
# Every flag of `cairn server` also reads a CAIRN_… variable; these are the image's defaults.
# The data dir is a subdirectory of the volume, so a filesystem's lost+found stays outside it.
ENV CAIRN_DATA_DIR=/var/lib/cairn/data \
    CAIRN_LISTEN=0.0.0.0:7001 \
    CAIRN_HTTP=0.0.0.0:8001
VOLUME ["/var/lib/cairn"]
# 7001: gRPC (clients and peers); 8001: HTTP (JSON API, /health, /metrics, console).
EXPOSE 7001 8001
USER 10001:10001
WORKDIR /var/lib/cairn
# `cairn health` asks this node's GET /health (on the port of CAIRN_HTTP, over TLS when
# CAIRN_CERTS_DIR is set) and exits 0 only on 200: 503 means starting, cut off from the
# metadata group or drained. The slim image has no curl.
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/cairn", "health"]
ENTRYPOINT ["/usr/local/bin/cairn"]
CMD ["server"]
