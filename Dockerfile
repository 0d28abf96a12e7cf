# syntax=docker/dockerfile:1
# Emporium image: build with cargo in the official Rust image, run on debian:bookworm-slim
# as the non-root user 10001 (the uid the Helm chart's securityContext expects).
#
#   docker build -t emporium:0.1.0 .
#   docker run --rm -p 8080:8080 -v emporium-data:/var/lib/emporium emporium:0.1.0
#
# BuildKit is needed for the cache mounts (the default builder of current Docker).

# ---------------------------------------------------------------- build
FROM rust:1-bookworm AS builder
WORKDIR /src
# The bundled librdkafka (rdkafka's default features) builds with make, gcc, g++ and perl,
# which this image has; cmake is not needed.
COPY . .
# Cache mounts keep the crate registry and target/ between builds, so a source change does
# not rebuild every dependency. target/ is a cache mount, so copy the binary out of it.
# --locked: build exactly what Cargo.lock says.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin emporium \
    && install -D -m 0755 target/release/emporium /out/emporium

# ---------------------------------------------------------------- runtime
FROM debian:bookworm-slim AS runtime
# ca-certificates: TLS to MySQL/Kafka/MongoDB/Elasticsearch/OTLP endpoints.
# libssl3: in case a backend client links OpenSSL dynamically (harmless otherwise).
# Versions are not pinned: the packages follow bookworm's security updates whenever the
# image is rebuilt.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/*
# Fixed uid/gid 10001 (numeric USER below, so Kubernetes' runAsNonRoot can verify it).
RUN groupadd --system --gid 10001 emporium \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/emporium --shell /usr/sbin/nologin emporium \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/emporium
COPY --from=builder /out/emporium /usr/local/bin/emporium
# Fail the build here, not at deploy time, if a shared library the binary needs is missing.
# (Through a file, not a pipe: a pipe's status would hide grep's answer.)
RUN ldd /usr/local/bin/emporium > /tmp/ldd.txt || true; \
    if grep "not found" /tmp/ldd.txt; then exit 1; fi; rm -f /tmp/ldd.txt
# The production overlay at the path the chart mounts its ConfigMap on, so
# `emporium serve --config /etc/emporium/production.toml` also works without Kubernetes.
COPY config/production.toml /etc/emporium/production.toml

# The embedded defaults listen on 127.0.0.1 and keep data in ./data: inside a container
# the server must listen on all interfaces and keep its data on the volume.
ENV EMPORIUM__SERVER__LISTEN=0.0.0.0:8080 \
    EMPORIUM__SERVER__DATA_DIR=/var/lib/emporium
USER 10001:10001
WORKDIR /var/lib/emporium
EXPOSE 8080
# SIGTERM (docker stop, Kubernetes) makes the server drain within
# server.shutdown_grace_secs (25 s): give `docker stop` a longer timeout, e.g. -t 30.
STOPSIGNAL SIGTERM
ENTRYPOINT ["emporium"]
CMD ["serve"]
