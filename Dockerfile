# Both binaries in one small non-root image. Build: docker build -t portico:0.1.0 .
FROM rust:1.95-bookworm AS build
# Pingora vendors OpenSSL (perl, make); some -sys crates need cmake.
RUN apt-get update && apt-get install -y --no-install-recommends cmake perl make pkg-config && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --profile production --locked -p portico-controller -p portico-proxy \
 && install -D -m 0755 target/production/portico-controller target/production/portico-proxy -t /out/

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
EXPOSE 8080 8443 9901 10254
ENTRYPOINT ["/usr/local/bin/portico-proxy"]
