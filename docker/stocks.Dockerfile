# The stocks example app (examples/stocks): `stocks app|generate|check|setup`.
# Build from the repository root:
#   docker build -f docker/stocks.Dockerfile -t ordo-stocks:dev .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ordo-stocks \
 && cp target/release/stocks /

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /stocks /usr/local/bin/stocks
USER 65532:65532
EXPOSE 7000
ENTRYPOINT ["/usr/local/bin/stocks"]
