# ordo-operator image: static-ish Rust binary on distroless (non-root, no shell).
# Build from the repository root: docker build -f docker/operator.Dockerfile -t ordo-operator:dev .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ordo-operator \
 && cp target/release/ordo-operator /ordo-operator

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /ordo-operator /usr/local/bin/ordo-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ordo-operator"]
CMD ["run"]
