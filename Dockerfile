# syntax=docker/dockerfile:1
# One image with every Ledgerline binary (ingest, processor, outbox-relay,
# ledgerctl); docker-compose.yml picks the one each service runs.
#
# Dependencies are built in a layer of their own, from the manifests only
# (with stub sources), so a change to Ledgerline's code rebuilds Ledgerline,
# not the ~300 crates under it. The runtime image is Debian slim with the
# binaries, CA certificates and curl (for the healthchecks), as a non-root
# user.

ARG RUST_VERSION=1.90
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /build
# librdkafka is built from source by rdkafka-sys: cmake is not needed, make,
# a C compiler and zlib are (the rust image has the first two). Versions
# are the release's own (the base image pins the release).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*

# 1. Dependencies only: the manifests, the lock file and empty crates.
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY schemas/Cargo.toml schemas/Cargo.toml
COPY platform/Cargo.toml platform/Cargo.toml
COPY ingest/Cargo.toml ingest/Cargo.toml
COPY processor/Cargo.toml processor/Cargo.toml
COPY outbox-relay/Cargo.toml outbox-relay/Cargo.toml
COPY ledgerctl/Cargo.toml ledgerctl/Cargo.toml
COPY tests/Cargo.toml tests/Cargo.toml
RUN for crate in schemas platform ingest processor outbox-relay ledgerctl tests; do \
        mkdir -p "$crate/src" && echo 'fn main() {}' > "$crate/src/main.rs" && touch "$crate/src/lib.rs"; \
    done \
    && mkdir -p tests/tests/e2e && echo 'fn main() {}' > tests/tests/e2e/main.rs && echo 'fn main() {}' > tests/tests/processes.rs \
    && cargo build --release --locked -p ingest -p processor -p outbox-relay -p ledgerctl \
    && rm -rf schemas platform ingest processor outbox-relay ledgerctl tests

# 2. Ledgerline itself (the checked queries compile against the committed
# .sqlx data: no database at build time).
COPY . .
RUN touch schemas/src/lib.rs platform/src/lib.rs ingest/src/lib.rs processor/src/lib.rs outbox-relay/src/lib.rs \
        ledgerctl/src/main.rs \
    && cargo build --release --locked -p ingest -p processor -p outbox-relay -p ledgerctl \
    && mkdir /out \
    && cp target/release/ingest target/release/processor target/release/outbox-relay target/release/ledgerctl /out/

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="Ledgerline" \
      org.opencontainers.image.description="A message-queue driven double-entry transaction processor: ingest, processor, outbox-relay, ledgerctl" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/ledgerline/ledgerline"
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ledgerline \
    && useradd --system --uid 10001 --gid ledgerline --no-create-home --shell /usr/sbin/nologin ledgerline
COPY --from=build /out/ /usr/local/bin/
USER 10001:10001
# Each service listens where its environment says; these are the defaults
# docker-compose.yml uses (API 8080; metrics and probes 9100).
EXPOSE 8080 9100
# The probe of the service the container runs: ingest answers on its API
# port, the processor and the relay on their metrics listener.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["sh", "-c", "curl -fsS \"${LEDGERLINE_HEALTH_URL:-http://127.0.0.1:9100/health/ready}\" >/dev/null"]
ENTRYPOINT []
CMD ["ledgerctl", "--help"]
