# The image-syncer container image, built with a daemon or builder:
#
#   docker build -t registry.example.com/tools/image-syncer:0.1.0 --build-arg VERSION=0.1.0 .
#   podman build ... / buildah bud ...   (same arguments)
#
# scripts/image.sh builds an equivalent image without a daemon from a binary
# built outside (README.md, "Container image").

# Build: the release binary with the Rust toolchain (Debian bookworm, glibc 2.36).
FROM docker.io/library/rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p image-syncer-cli \
 && install -D -m 0755 target/release/image-syncer /out/image-syncer

# Run: distroless cc has what the binary links (glibc, libgcc_s) and the CA
# certificates; the :nonroot variant runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="image-syncer" \
      org.opencontainers.image.source="https://example.invalid/image-syncer" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/image-syncer /usr/local/bin/image-syncer
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/image-syncer"]
