# syntax=docker/dockerfile:1
# Multi-stage build: dependencies compile in their own cached layer; the
# runtime image is distroless (glibc, CA certificates, no shell or package
# manager) and holds only the binary, its sample config and a data dir
# owned by the non-root user it runs as.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Build dependencies against a stub crate first, so source edits reuse them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src tests/it tests/bench \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && for stub in it/main bench/submit bench/l2 bench/features bench/rebuild bench/queue bench/pipeline; do \
         echo 'fn main() {}' > "tests/$stub.rs"; \
       done \
    && cargo build --release --locked \
    && rm -rf src tests
COPY src ./src
COPY tests ./tests
RUN touch src/main.rs src/lib.rs && cargo build --release --locked \
    && mkdir -p /out/var/lib/dedup2d/data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/dedup2d /usr/local/bin/dedup2d
COPY config/dedup2d.toml /etc/dedup2d/dedup2d.toml
COPY --from=build --chown=10001:10001 /out/var/lib/dedup2d /var/lib/dedup2d
# The uid the Helm chart's securityContext expects.
USER 10001:10001
WORKDIR /var/lib/dedup2d
ENV DEDUP2D_DATA_DIR=/var/lib/dedup2d/data \
    DEDUP2D_LISTEN=0.0.0.0:8000 \
    DEDUP2D_WORKER_METRICS_LISTEN=0.0.0.0:9108
EXPOSE 8000 9108
ENTRYPOINT ["dedup2d"]
CMD ["--config", "/etc/dedup2d/dedup2d.toml", "serve"]
