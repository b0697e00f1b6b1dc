# PlexSync's daemon as a sidecar: a static binary in an empty image.
#   docker build -t plexsync .
# See docker-compose.example.yml and README ("Run as a daemon").
FROM rust:1-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
# Alpine's Rust targets musl: the binary is static. No demo emulators.
RUN cargo build --release -p plexsync --no-default-features --locked \
    && cp target/release/plexsync /plexsync

FROM scratch
COPY --from=build /plexsync /plexsync
ENV PLEXSYNC_DATA_DIR=/data
VOLUME /data
EXPOSE 9977
# Reachable from other containers, so a token is required (PLEXSYNC_DAEMON_TOKEN).
ENTRYPOINT ["/plexsync", "daemon", "--listen", "0.0.0.0:9977"]
