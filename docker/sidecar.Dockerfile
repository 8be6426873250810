# ordo-sidecar image (target `runtime`, the default) and a tools image with `ordoctl` and a
# shell (target `tools`, used as the app container in the kind e2e suite).
# Build from the repository root:
#   docker build -f docker/sidecar.Dockerfile -t ordo-sidecar:dev .
#   docker build -f docker/sidecar.Dockerfile --target tools -t ordo-tools:dev .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ordo-sidecar -p ordoctl \
 && cp target/release/ordo-sidecar target/release/ordoctl /

FROM debian:bookworm-slim AS tools
COPY --from=build /ordoctl /usr/local/bin/ordoctl
USER 65532:65532
ENTRYPOINT []
CMD ["sleep", "infinity"]

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /ordo-sidecar /usr/local/bin/ordo-sidecar
COPY --from=build /ordoctl /usr/local/bin/ordoctl
USER 65532:65532
EXPOSE 7071 7072
ENTRYPOINT ["/usr/local/bin/ordo-sidecar"]
