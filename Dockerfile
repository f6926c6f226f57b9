# syntax=docker/dockerfile:1
# Multi-stage build: dependencies compile in their own cached layer, the
# runtime image holds only the binary and runs as a non-root user.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Build dependencies against a stub crate first, so source edits reuse them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src tests/it tests/bench \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > tests/it/main.rs && echo 'fn main() {}' > tests/bench/submit.rs && echo 'fn main() {}' > tests/bench/l2.rs && echo 'fn main() {}' > tests/bench/features.rs && echo 'fn main() {}' > tests/bench/rebuild.rs && echo 'fn main() {}' > tests/bench/queue.rs && echo 'fn main() {}' > tests/bench/pipeline.rs \
    && cargo build --release --locked \
    && rm -rf src tests
COPY src ./src
COPY tests ./tests
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/dedup2d --create-home dedup2d
COPY --from=build /src/target/release/dedup2d /usr/local/bin/dedup2d
COPY config/dedup2d.toml /etc/dedup2d/dedup2d.toml
USER 10001
WORKDIR /var/lib/dedup2d
ENV DEDUP2D_DATA_DIR=/var/lib/dedup2d/data \
    DEDUP2D_LISTEN=0.0.0.0:8000
EXPOSE 8000
ENTRYPOINT ["dedup2d"]
CMD ["--config", "/etc/dedup2d/dedup2d.toml", "serve"]
