# syntax=docker/dockerfile:1
# hookfleet image: one binary, every role (`worker` by default; `relay`, `migrate`, `hook`, ...).
#
#   docker build -t hookfleet \
#     --build-arg HOOKFLEET_GIT_SHA=$(git rev-parse --short=12 HEAD) \
#     --build-arg SOURCE_DATE_EPOCH=$(git log -1 --format=%ct) .
#
# .git is not in the build context, so the SHA (shown by --version, /info and
# hookfleet_build_info) comes from the build argument; without it the image says "unknown".
# The config defaults target local services: set HOOKFLEET_AMQP__URL, HOOKFLEET_DATABASE__URL
# and HOOKFLEET_ADMIN__LISTEN=0.0.0.0:9090 (the Helm chart does this) or pass --config.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
# The workspace's other members (the test kit, the benches): their manifests only, so that
# cargo can load the workspace; only the product's `hookfleet` binary is built.
COPY testkit/Cargo.toml ./testkit/
COPY bench/Cargo.toml ./bench/
COPY src ./src
COPY config ./config
COPY migrations ./migrations
# The checked statements' offline data, and the cargo config that makes the build use it
# (no database at build time).
COPY .sqlx ./.sqlx
COPY .cargo ./.cargo
ARG HOOKFLEET_GIT_SHA=""
ARG SOURCE_DATE_EPOCH=""
# The cache mounts keep the registry and incremental artefacts between builds; the binary is
# copied out because cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin hookfleet \
    && install -m 0755 target/release/hookfleet /usr/local/bin/hookfleet

FROM debian:bookworm-slim
# ca-certificates: amqps:// and sslmode=require. No git: the push handler reads
# repositories in process.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 hookfleet \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin hookfleet \
    && mkdir -p /etc/hookfleet /var/lib/hookfleet/spool \
    && chown 10001:10001 /var/lib/hookfleet/spool
COPY --from=build /usr/local/bin/hookfleet /usr/local/bin/hookfleet
USER 10001:10001
ENV HOME=/tmp
# Admin HTTP (/metrics, /healthz, /readyz, /info, /jobs) when admin.listen is 0.0.0.0:9090.
EXPOSE 9090
# No HEALTHCHECK, on purpose:
#  - Kubernetes ignores it (and OCI-format images drop it); the Helm chart's livenessProbe
#    (GET /healthz) and readinessProbe (GET /readyz) on the admin port do that job, and
#    readiness is the signal that matters (consuming, database answering, not draining).
#  - One image runs every role: `migrate`, `hook post-receive`, `dlq`, `config check` serve
#    no admin HTTP, so an image-wide check would call them unhealthy.
#  - The admin address is configuration (admin.listen, loopback by default outside the
#    chart), so no fixed URL is right, and the image carries no curl or wget to call it.
# Under plain Docker or Compose, declare the check where the role and address are known;
# README.md ("Deploying") shows one that needs only the image's bash.
ENTRYPOINT ["/usr/local/bin/hookfleet"]
CMD ["worker"]
