# syntax=docker/dockerfile:1
#
# jit container image.
#
#   docker build -t jit .
#   docker run --rm jit --help
#
# Two stages:
#   builder  the official Rust image on Debian 12 (bookworm) compiles the release binary.
#   runtime  gcr.io/distroless/cc-debian12:nonroot: glibc, libgcc_s, CA certificates, tzdata and a
#            `nonroot` user (uid 65532), and nothing else: no shell, no package manager.
#
# Why distroless/cc and not a static musl binary on scratch:
#   - The binary links glibc dynamically, and the builder is the same Debian release as the runtime,
#     so the glibc it was linked against is exactly the one it runs with.
#   - musl's allocator is markedly slower under multi-threaded load, which would cost the request
#     throughput bar (design §8) unless a second allocator were added; glibc needs nothing extra.
#   - TLS is rustls everywhere (ring backend; no OpenSSL, no aws-lc), but rustls-native-certs still
#     reads the system CA bundle, and distroless ships /etc/ssl/certs (scratch would need one copied).
#   A musl build on scratch has not been verified for this crate; distroless/cc needs no such check.
#
# Note on the `exec` provider: the runtime has no shell. Grant/revoke commands must be programs that
# run without one (static binaries copied into a derived image), or use a fuller base image.

ARG RUST_VERSION=1.95

# ---------------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src

# 1. Dependencies only, cached while the manifests and Cargo.lock are unchanged: build the real
#    dependency graph against placeholder crates (the workspace's members must all exist).
COPY Cargo.toml Cargo.lock ./
COPY crates/jit-core/Cargo.toml crates/jit-core/
COPY crates/slack-sim/Cargo.toml crates/slack-sim/
RUN mkdir -p src crates/jit-core/src crates/slack-sim/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs crates/jit-core/src/lib.rs crates/slack-sim/src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src crates/jit-core/src crates/slack-sim/src

# 2. The application. sqlx::migrate! embeds migrations/ at compile time, and build.rs hands the
#    linker link/startup-symbols.txt (the start-up code laid out together; README, Performance).
#    Touch the sources so cargo rebuilds the workspace's crates even if their mtimes are older
#    than the placeholders above.
COPY build.rs ./
COPY link ./link
COPY migrations ./migrations
COPY crates ./crates
COPY src ./src
RUN touch src/main.rs src/lib.rs crates/jit-core/src/lib.rs crates/slack-sim/src/lib.rs \
    && cargo build --release --locked \
    && install -D -m 0755 target/release/jit /out/jit \
    && mkdir -p /out/var/lib/jit /out/etc/jit

# ---------------------------------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="jit" \
      org.opencontainers.image.description="Just-in-time privileged access, approved in Slack" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /out/jit /jit
# The data directory, owned by the runtime user so a fresh named volume mounted here is writable
# (Docker copies the ownership into an empty volume). The SQLite database, its WAL and the
# single-instance lock file (jit.db.lock) live here.
COPY --from=builder --chown=65532:65532 /out/var/lib/jit /var/lib/jit
# The policy directory: mount jit.toml (and any files it references) here, read-only.
COPY --from=builder /out/etc/jit /etc/jit

ENV JIT_DATABASE_URL=sqlite:///var/lib/jit/jit.db \
    JIT_POLICY=/etc/jit/jit.toml \
    JIT_LISTEN=0.0.0.0:3000 \
    JIT_LOG_FORMAT=json

# distroless :nonroot already runs as this user; stated explicitly so runtimes and scanners see it.
USER 65532:65532
VOLUME ["/var/lib/jit"]
EXPOSE 3000

# No HEALTHCHECK: the image has no shell or curl. Orchestrators probe GET /healthz (liveness) and
# GET /readyz (readiness) on port 3000 instead.
# jit stops on SIGTERM and lets running jobs finish for up to 30 s: give `docker stop -t 45`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/jit"]
CMD ["serve"]
