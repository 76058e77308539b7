#!/usr/bin/env bash
# Builds the container image (Dockerfile) as genrt:latest with whichever engine answers:
# Docker first, then Podman. Extra arguments go to the build, e.g.
#
#   scripts/image.sh --build-arg WITH_MODEL=0
#   IMAGE=registry.example.com/genrt:1.2 scripts/image.sh
#
# Exits 2, with a message, when no engine runs here: a distinct status, so that a caller (the
# Makefile, CI on a machine without one) can tell "cannot build here" from a failed build.
# `info` rather than `command -v`, because a client without a running daemon is common (a
# Docker CLI without its engine) and would only fail later, mid-build, with a vaguer error.
set -euo pipefail
cd "$(dirname "$0")/.."

image=${IMAGE:-genrt:latest}

engine=
for candidate in docker podman; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" info >/dev/null 2>&1; then
    engine=$candidate
    break
  fi
done
if [ -z "$engine" ]; then
  echo "image: no container engine is available on this machine (neither \`docker info\` nor" \
    "\`podman info\` succeeds); build on a machine with Docker or Podman: docker build -t $image ." >&2
  exit 2
fi

echo "image: building $image with $engine"
# BuildKit for Docker: the Dockerfile's cache mounts need it (it is the default from Docker 23
# on, and setting it helps older engines). Podman (Buildah) supports them natively.
DOCKER_BUILDKIT=1 "$engine" build -t "$image" "$@" .
echo "image: built $image"
