# syntax=docker/dockerfile:1.7
# The project's two images, one target each. Base images are pinned, never `latest`: the Rust
# builder by version; distroless publishes no version tags, so its images track Debian 12 (pin
# them by digest, `@sha256:...`, where builds must be reproducible).
#
#   docker build --target operator   -t ghcr.io/sathvik/model-operator:0.1.0 .
#   docker build --target node-agent -t ghcr.io/sathvik/model-operator-node-agent:0.1.0 .
#
# The fastapi-pytorch runtime image is inference/Dockerfile. Both builds run
# hack/build-release.sh, which `make release-build` runs outside Docker too (CI has no engine).

FROM rust:1.95.0-bookworm AS builder
WORKDIR /src
# The toolchain layer (musl target, musl-gcc) is cached apart from the sources.
COPY hack/build-release.sh hack/build-release.sh
RUN hack/build-release.sh --prepare operator
COPY . .

FROM builder AS operator-build
# Cache mounts keep the registry and compiled dependencies between builds; the binary is copied
# out of the cache mount by the script itself.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    hack/build-release.sh operator /out

FROM builder AS node-agent-build
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    hack/build-release.sh node-agent /out

# The operator: one static musl binary on distroless/static (CA certificates, /etc/passwd, no
# shell, no libc), as the `nonroot` user (65532). Its root filesystem can be read-only: nothing
# is written outside the model-fetch volume. It is also the model-fetch init container image
# (`model-operator fetch`).
FROM gcr.io/distroless/static-debian12:nonroot AS operator
COPY --from=operator-build /out/model-operator /usr/local/bin/model-operator
USER 65532:65532
EXPOSE 8080 8081 6443
ENTRYPOINT ["/usr/local/bin/model-operator"]
CMD ["run"]

# The node agent: glibc, because it dlopen()s the driver's libnvidia-ml.so.1 at run time (the
# NVIDIA container runtime mounts it in), which a static musl binary cannot do. distroless/cc
# carries glibc and libgcc and nothing else. The image defaults to the `nonroot` user; the
# DaemonSet runs it as root with every capability dropped, because connecting to the kubelet's
# root-owned PodResources socket needs write permission on it.
FROM gcr.io/distroless/cc-debian12:nonroot AS node-agent
COPY --from=node-agent-build /out/node-agent /usr/local/bin/node-agent
EXPOSE 9400
ENTRYPOINT ["/usr/local/bin/node-agent"]
